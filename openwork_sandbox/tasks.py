"""openwork-sandbox tasks: build the OpenWork image, push it, boot it, prove remote connect.

Each task turns its flags into one call of a helper in ``openwork_sandbox``; settings come from
flags, then the environment, then ``.env``, then defaults (see ``.env.example``).
Exit codes: 0 ok, 1 failed, 2 bad settings or usage, 3 nothing reachable, 130 interrupted.

The collection is :data:`ns`. It runs as the ``openwork-sandbox`` console program
(:mod:`openwork_sandbox.cli`), as this repository's ``invoke`` (the top-level ``tasks.py``
re-exports it), and inside another repository's collection::

    from invoke import Collection
    from openwork_sandbox.tasks import ns as sandbox

    ns = Collection()
    ns.add_collection(sandbox, name="sandbox")   # invoke sandbox.build-image sandbox.up ...

The project folder (where ``.env`` and ``.state/`` are) is the config value
``openwork_sandbox.project_root`` when set (``ns.configure({"openwork_sandbox": {"project_root":
PATH}})``, as this repository's ``tasks.py`` does with its own folder), else the current directory.
"""

from __future__ import annotations

from invoke import Collection, call, task
from invoke.exceptions import Exit

from openwork_sandbox.core.boundary import task_boundary

ENV_FILE_HELP = "read settings from this .env file instead of ./.env (or set OPENWORK_ENV_FILE)"
JSON_HELP = "print one JSON object on stdout instead of the human table"


def project_root(c) -> str | None:
    """The configured project folder, or None for the current directory."""
    try:
        return c.config.openwork_sandbox.project_root or None
    except AttributeError:  # a bare Context (tests) or a collection without our configuration
        return None


def _settings(c, env_file=None, deleting=False, **flags):
    from openwork_sandbox.config import load_settings
    from openwork_sandbox.sandbox.locate import at_recorded_address
    from openwork_sandbox.state.store import mask_settings

    settings = load_settings(flags, env_file=env_file, root=project_root(c), deleting=deleting)
    mask_settings(settings)  # under GitHub Actions: before anything could print a secret
    return at_recorded_address(settings)  # a swarm sandbox is reached at its node


def _finish(code: int, reason: str) -> None:
    """End a task that returns an exit code; ``reason`` is its one line for a CI annotation."""
    if code:
        exc = Exit(code=code)
        exc.reason = reason
        raise exc


@task(
    help={
        "env_file": ENV_FILE_HELP,
        "json": JSON_HELP,
        "runtime": "check for this runtime: auto|microsandbox|docker|swarm (OPENWORK_MICROSANDBOX_RUNTIME)",
    }
)
def doctor(c, runtime=None, json=False, env_file=None):
    """Check what this machine can run and which runtime auto picks."""
    with task_boundary("doctor"):
        from openwork_sandbox.sandbox.doctor import run_doctor

        _finish(
            run_doctor(_settings(c, env_file, runtime=runtime), as_json=json),
            "the chosen runtime cannot work on this machine (see the checks above)",
        )


@task(
    name="build-image",
    help={
        "env_file": ENV_FILE_HELP,
        "json": JSON_HELP,
        "image": "tag the built image with this reference (OPENWORK_MICROSANDBOX_IMAGE)",
        "base_image": "base image to build on (OPENWORK_BASE_IMAGE)",
        "platform": "platforms to build, e.g. linux/amd64,linux/arm64 (OPENWORK_PLATFORMS; default: this host's)",
    },
)
def build_image(c, image=None, base_image=None, json=False, env_file=None, platform=None):
    """Build the image from pinned, verified OpenWork programs."""
    with task_boundary("build-image"):
        from openwork_sandbox.core import gha
        from openwork_sandbox.image.multiplatform import build_image as build

        result = build(_settings(c, env_file, image=image, base_image=base_image, platform=platform), as_json=json)
        gha.append_summary(gha.build_summary(result))


@task(
    name="push-image",
    # the same call the command line makes for a bare `build-image`, so Invoke's dedupe builds once
    pre=[call(build_image, image=None, base_image=None, json=False, env_file=None, platform=None)],
    help={
        "env_file": ENV_FILE_HELP,
        "json": JSON_HELP,
        "image": "build and push this reference (OPENWORK_MICROSANDBOX_IMAGE)",
        "platform": "build and push these platforms as one image index, e.g. linux/amd64,linux/arm64 "
        "(OPENWORK_PLATFORMS)",
    },
)
def push_image(c, image=None, json=False, env_file=None, platform=None):
    """Push the image and prove the registry serves it."""
    with task_boundary("push-image"):
        from openwork_sandbox.core import gha
        from openwork_sandbox.image.push import push_image as push

        # the pre-task built the default reference: --image REF / --platform P are built (from cache) first
        result = push(
            _settings(c, env_file, image=image, platform=platform),
            as_json=json,
            build_first=image is not None or platform is not None,
        )
        gha.append_summary(gha.push_summary(result))


SANDBOX_HELP = {
    "env_file": ENV_FILE_HELP,
    "name": "sandbox name (OPENWORK_MICROSANDBOX_NAME)",
}


@task(
    help={
        **SANDBOX_HELP,
        "json": JSON_HELP,
        "image": "image reference to boot (OPENWORK_MICROSANDBOX_IMAGE)",
        "runtime": "auto|microsandbox|docker|swarm (OPENWORK_MICROSANDBOX_RUNTIME)",
        "launch": "orchestrator|server: what the image starts (OPENWORK_LAUNCH)",
        "port": "host port to publish (OPENWORK_MICROSANDBOX_PORT)",
        "replace": "recreate the sandbox; state folders are kept (OPENWORK_MICROSANDBOX_REPLACE)",
        "follow": "stream the server's logs once it is up, until Ctrl+C (the sandbox keeps running)",
        "show_tokens": "print the tokens in clear instead of masked",
        "github_output": "GitHub Actions: write url, name, runtime, workspace-id to $GITHUB_OUTPUT and the tokens "
        "(masked) as OPENWORK_TOKEN/OPENWORK_HOST_TOKEN to $GITHUB_ENV for later steps",
    }
)
def up(
    c,
    name=None,
    image=None,
    runtime=None,
    launch=None,
    port=None,
    replace=False,
    follow=False,
    show_tokens=False,
    json=False,
    github_output=False,
    env_file=None,
):
    """Boot the sandbox with persistent state and wait until healthy."""
    with task_boundary("up"):
        import time

        from openwork_sandbox.core import gha
        from openwork_sandbox.sandbox.up import up as start

        if github_output:
            gha.require_export()  # before anything boots
        started = time.monotonic()
        # --replace is a switch; without it OPENWORK_MICROSANDBOX_REPLACE (or its default) decides
        settings = _settings(
            c, env_file, name=name, image=image, runtime=runtime, launch=launch, port=port, replace=replace or None
        )
        ep = start(settings, follow=follow, show_tokens=show_tokens, as_json=json)
        # the summary (and with --github-output the outputs): after the log stream when --follow
        gha.report_up(ep, image=settings.image, seconds=time.monotonic() - started, export=github_output)


@task(help=SANDBOX_HELP)
def down(c, name=None, env_file=None):
    """Stop the sandbox, keep its state."""
    with task_boundary("down"):
        from openwork_sandbox.sandbox.down import down as stop

        stop(_settings(c, env_file, name=name))


@task(help={**SANDBOX_HELP, "json": JSON_HELP})
def status(c, name=None, json=False, env_file=None):
    """Show the sandbox's runtime, state, image, URL, health, uptime."""
    with task_boundary("status"):
        from openwork_sandbox.sandbox.status import status as show

        _finish(show(_settings(c, env_file, name=name), as_json=json), "the sandbox is not running and healthy")


@task(
    help={
        **SANDBOX_HELP,
        "follow": "keep streaming new lines until Ctrl+C",
        "tail": "show only the last N lines",
        "since": "only lines newer than this: seconds, or 30s, 5m, 2h",
        "system": "show the VM/system log (boot, kernel) instead of the server's output",
    }
)
def logs(c, name=None, follow=False, tail=None, since=None, system=False, env_file=None):
    """Print (or follow) the server's log."""
    with task_boundary("logs"):
        from openwork_sandbox.sandbox.logs import logs as show_logs

        show_logs(_settings(c, env_file, name=name), follow=follow, tail=tail, since=since, system=system)


@task(
    help={
        **SANDBOX_HELP,
        "yes": "do not ask for confirmation (CI)",
        "keep_data": "remove the sandbox but keep the state folders",
        "stale": "instead: remove every ephemeral sandbox (smoke --ephemeral) whose job is gone or whose "
        "OPENWORK_EPHEMERAL_MAX_DURATION ran out, with its state folder (doctor lists them)",
    }
)
def reset(c, name=None, yes=False, keep_data=False, stale=False, env_file=None):
    """Remove the sandbox and delete its state folders."""
    with task_boundary("reset"):
        if stale:
            from openwork_sandbox.sandbox.leftovers import remove_stale

            remove_stale(_settings(c, env_file))
            return
        from openwork_sandbox.sandbox.reset import reset as remove

        remove(_settings(c, env_file, deleting=not keep_data, name=name), yes=yes, keep_data=keep_data)


@task(
    auto_shortflags=False,  # -h would otherwise be --host-token, not help
    help={
        **SANDBOX_HELP,
        "url": "smoke this server instead of the sandbox's own URL, e.g. https://staging.example:8787",
        "token": "client token (OPENWORK_TOKEN; default: the sandbox's)",
        "host_token": "host token (OPENWORK_HOST_TOKEN; default: the sandbox's)",
        "ephemeral": "boot a fresh sandbox under a unique name, smoke it, always remove it",
        "persistence": "also check that a file written in the workspace appears on the host",
        "junit": "write a JUnit XML report to this path",
        "json": JSON_HELP,
        "runtime": "runtime for --ephemeral: auto|microsandbox|docker|swarm (OPENWORK_MICROSANDBOX_RUNTIME)",
        "image": "image for --ephemeral (OPENWORK_MICROSANDBOX_IMAGE)",
        "port": "host port of the sandbox (OPENWORK_MICROSANDBOX_PORT)",
        "keep_session": "keep the OpenCode session the smoke test creates (by default it is deleted afterwards)",
        "prompt": "also send this text to the agent and wait for its reply (the model's answer, through the proxy)",
    },
)
def smoke(
    c,
    name=None,
    url=None,
    token=None,
    host_token=None,
    ephemeral=False,
    persistence=False,
    junit=None,
    json=False,
    runtime=None,
    image=None,
    port=None,
    keep_session=False,
    prompt=None,
    env_file=None,
):
    """Prove a remote client can connect and run an OpenCode session.

    Exit codes: 0 all checks passed, 1 a check failed, 2 bad settings or usage,
    3 nothing reachable at the URL.
    """
    with task_boundary("smoke"):
        from openwork_sandbox.sandbox.up import up as boot
        from openwork_sandbox.smoke.modes import run_smoke

        settings = _settings(
            c, env_file, name=name, token=token, host_token=host_token, runtime=runtime, image=image, port=port
        )
        _finish(
            run_smoke(
                settings,
                url=url,
                ephemeral=ephemeral,
                persistence=persistence,
                junit=junit,
                as_json=json,
                keep_session=keep_session,
                prompt=prompt,
                boot=boot,
            ),
            "the smoke checks failed (see the annotations above)",
        )


@task(
    help={
        **SANDBOX_HELP,
        "output": "write the archive here (default .state/backups/<name>-<UTC time>.tar.gz); never overwrites",
        "workspace": "also put the workspace folder in the archive (by default only what the sandbox keeps in /data "
        "and its tokens)",
    }
)
def backup(c, name=None, output=None, workspace=False, env_file=None):
    """Write one archive of the sandbox's data (a consistent database copy, tokens, configs), also while it runs."""
    with task_boundary("backup"):
        from openwork_sandbox.sandbox.backup import backup as write_backup

        write_backup(_settings(c, env_file, name=name), output=output, workspace=workspace)


@task(
    help={
        **SANDBOX_HELP,
        "path": "the archive `invoke backup` wrote",
        "force": "restore over a sandbox that holds data; what was there is kept beside it as "
        "<folder>.before-restore-<time>",
    }
)
def restore(c, path, name=None, force=False, env_file=None):
    """Put a backup back into the sandbox name, every file verified first; then `invoke up`."""
    with task_boundary("restore"):
        from openwork_sandbox.sandbox.restore import restore as put_back

        put_back(_settings(c, env_file, name=name), path, force=force)


@task(
    help={
        **SANDBOX_HELP,
        "output": "write one file per object into this folder (new, empty, or holding only files this task "
        "wrote) instead of one YAML stream on stdout",
        "format": "kubernetes (Secret, PVCs, Deployment, Service, NetworkPolicy) or agent-sandbox (Secret, "
        "agents.x-k8s.io Sandbox, NetworkPolicy)",
    }
)
def manifests(c, name=None, output=None, format="kubernetes", env_file=None):
    """Print the sandbox as Kubernetes objects (YAML for kubectl apply).

    Its tokens, provider keys and TLS key are in the Secret, in no other object.
    """
    with task_boundary("manifests"):
        from openwork_sandbox.sandbox.manifests import manifests as render

        render(_settings(c, env_file, name=name), output=output, format=format)


def _smoke_help() -> str:
    from openwork_sandbox.smoke.checks import describe  # declarations only: no HTTP client imported

    return f"\n\n    The checks, in order:\n\n{describe('      ')}\n"


smoke.__doc__ = smoke.__doc__.rstrip() + _smoke_help()

ns = Collection(doctor, build_image, push_image, up, down, status, logs, reset, smoke, backup, restore, manifests)
ns.configure({"openwork_sandbox": {"project_root": None}})
