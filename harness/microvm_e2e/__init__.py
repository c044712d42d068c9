"""Every task on the real microsandbox runtime, end to end: one line per step, figures last.

    scripts/microvm-e2e            the scenario (inside the emulated host: scripts/microvm-host e2e)
    scripts/microvm-e2e --avx      the real orchestrator in a microVM without AVX: `up` must end with
                                   the one line naming it (OPENWORK_MICROSANDBOX_IMAGE: the real image)

It runs from a checkout, inside `scripts/microvm-host` (an emulated host where microVMs boot), with
``OPENWORK_MICROSANDBOX_IMAGE`` naming the e2e image that `scripts/microvm-image` built (loaded into
the local Docker engine by the harness) and ``OPENWORK_MICROSANDBOX_RUNTIME=microsandbox`` (the
default here; ``docker`` runs the same scenario against the Docker runtime, e.g. on a development
machine). Every step is an `invoke` task run as a user would, in its own process, with only the
settings below; the scenario checks what the task printed (``--json``) and what the sandbox serves
(real HTTP on 127.0.0.1):

 1. doctor        picks the runtime under test
 2. seed          the image under the run's tag in the registry on 127.0.0.1:5000: the harness put it
                  in that registry's storage, so the tag is made through the registry's API; elsewhere
                  plain `docker push` (push-image, after a build-image, the slowest step here, comes at 13)
 3. up            cold: create, the server job from the image's own entrypoint, the published port,
                  the /workspace and /data binds (a file put in the workspace on the host is read
                  back through opencode), HOME=/data/home (opencode's database lands in the data
                  folder), the start gate's line in the log
 4. smoke         every check passes
 5. status        running, healthy, settings current
 6. logs          the server log; `logs --follow` (stopped after its first lines with Ctrl+C);
                  `logs --system`
 7. down, up      stopped, then started again (the server relaunched)
 8. up --replace  a session and an issued token made through the API survive the new sandbox
 9. migration     a sandbox made the old way (HOME unset: state in the guest's /root, the legacy
                  entrypoint) is replaced by `up`, its state copied out through the runtime first
10. non-root      `up` run by a user who is not root: every file under .state/<name>/ is theirs
11. reset         the sandbox and its state folder are gone
12. smoke --ephemeral
13. prepare, push-image, up of the pushed digest: build-image offline in this host, push-image (the
                  v2 proof and the SDK's pull proof), and `up` boots the digest it recorded
14. microvm tests the suite's tests that need a booted microVM (pytest -m microvm), on this host
15. docker pair   (microsandbox runs only) cold up, warm up and smoke with the Docker runtime in the same host
The last line gives the figures. Exit 0 only when every step held; the output of a task that
failed goes to stderr (its last lines) and to the run's log folder (printed at the end).

Under the harness the guest's engine loads the image while the first steps run (they need only the
registry's copy); a step that runs docker waits for that load (MICROVM_HOST_IMAGE_LOAD_RC).
Knobs: OPENWORK_HEALTH_TIMEOUT (default here 900 s: an emulated host is many times slower),
OPENWORK_REQUEST_TIMEOUT (default here 120 s; also the scenario's own requests), OPENWORK_MICROSANDBOX_CPUS
(2); the emulated host gives these three its own (scripts/microvm-host: 900 s, 300 s, one vCPU),
MICROVM_E2E_KEEP=1 keeps the temporary folder, MICROVM_E2E_STEPS=STEP,... (as --only) runs only those
steps, in the scenario's order (scripts/microvm-host passes MICROVM_E2E_* into the emulated host).
A failed run copies its task logs and the microVMs' own logs (runtime, kernel, exec) to
$MICROVM_HOST_OUT/e2e-logs when the harness gives that folder.

Modules: ``cli`` (the command line and the steps' order), ``scenario`` (the sandbox, running tasks),
``steps_tasks``, ``steps_image``, ``steps_state``, ``steps_host`` (the steps), ``guest`` (what the
emulated host's harness gives), ``outcome`` (how a step ends, how the scenario speaks).
"""
