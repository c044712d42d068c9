"""Every task on the real microsandbox runtime, end to end: one line per step, figures last.

The command line of scripts/microvm-e2e (the package's docstring lists the steps): the scenario,
``--only STEP,...`` (or MICROVM_E2E_STEPS) for some of its steps in its order, ``--avx`` for the
real orchestrator without AVX. Exit 0 only when every step held; 1 when one failed; 2 usage (no
image, no such step); 75 when a step failed at an emulation fault (the nested microVM stopped by its
emulated CPU).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from harness.common import EXIT_EMULATION_FAULT, LOCAL_REGISTRY, back_to_caller_cwd
from harness.microvm_e2e import steps_host as host
from harness.microvm_e2e import steps_image as image_steps
from harness.microvm_e2e import steps_state as state
from harness.microvm_e2e import steps_tasks as tasks
from harness.microvm_e2e.guest import emulation_fault, seeded_manifest
from harness.microvm_e2e.outcome import StepFailed, StepSkipped, note, say
from harness.microvm_e2e.scenario import Scenario


def avx_scenario(runtime: str, image: str) -> int:
    """The real orchestrator where the CPU has no AVX: `up` ends with the one line naming it."""
    sc = Scenario(runtime, image, keep=bool(os.environ.get("MICROVM_E2E_KEEP")))
    sc.settings_env["OPENWORK_MICROSANDBOX_IMAGE"] = image
    for key in (
        "OPENWORK_ORCHESTRATOR_BIN_PATH",
        "OPENWORK_SERVER_BIN",
        "OPENWORK_OPENCODE_BIN",
        "OPENWORK_BASE_IMAGE",
    ):
        sc.settings_env.pop(key)
    started = time.monotonic()
    try:
        if image.startswith(LOCAL_REGISTRY + "/") and seeded_manifest(image) is None:
            sc.docker("push", image)
        proc = sc.task("up", check=False)
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        from openwork_sandbox.sandbox.avx import no_avx_message

        wanted = no_avx_message("0.18.1").split(";")[0]
        ok = proc.returncode == 1 and wanted in last and "panic(" not in proc.stderr
        say(
            f"{'✓' if ok else '✗'} real orchestrator without AVX ({time.monotonic() - started:.1f}s): "
            f"up exited {proc.returncode}, last line: {last}"
        )
        if not ok:
            print("\n".join(proc.stderr.splitlines()[-30:]), file=sys.stderr)
        return 0 if ok else 1
    finally:
        sc.cleanup()


def main() -> int:
    """The scenario, its ``--avx`` variant or (``--start-old-layout``) the migration step's helper process;
    returns the exit code."""
    parser = argparse.ArgumentParser(prog="microvm-e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--avx", action="store_true", help="the real orchestrator in a sandbox without AVX")
    parser.add_argument("--only", metavar="STEP,STEP", help="run only these steps (e.g. doctor,seed,up,smoke)")
    parser.add_argument("--start-old-layout", metavar="IMAGE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.start_old_layout:
        return state.start_old_layout(args.start_old_layout)
    runtime = os.environ.get("OPENWORK_MICROSANDBOX_RUNTIME") or "microsandbox"
    image = os.environ.get("OPENWORK_MICROSANDBOX_IMAGE")
    if not image:
        note("set OPENWORK_MICROSANDBOX_IMAGE to the e2e image (scripts/microvm-image prints it)")
        return 2
    if args.avx:
        return avx_scenario(runtime, image)
    sc = Scenario(runtime, image, keep=bool(os.environ.get("MICROVM_E2E_KEEP")))
    # push-image (a build-image first, the slowest step under emulation) goes after the microVM steps,
    # which boot the loaded image pushed with plain `docker push` (seed), so a slow host reaches them
    steps = [
        ("doctor", tasks.doctor),
        ("seed", image_steps.seed),
        ("up", tasks.up_cold),
        ("smoke", tasks.smoke),
        ("boundary", tasks.boundary),
        ("status", tasks.status),
        ("logs", tasks.logs),
        ("down + up", tasks.down_up),
        ("up --replace", tasks.replace),
        ("migration", state.migration),
        ("non-root user", state.nonroot),
        ("reset", tasks.reset),
        ("smoke --ephemeral", tasks.ephemeral),
        ("prepare", image_steps.prepare),
        ("push-image", image_steps.push_image),
        ("up of the pushed digest", image_steps.up_pushed),
        ("microvm tests", host.microvm_tests),
    ]
    if runtime == "microsandbox":
        steps.append(("docker pair", host.docker_pair))
    only = args.only or os.environ.get("MICROVM_E2E_STEPS", "").strip()
    if only:
        wanted = {w.strip() for w in only.split(",")}
        unknown = wanted - {label for label, _ in steps}
        if unknown:
            note(f"no such step: {', '.join(sorted(unknown))} (the steps: {', '.join(label for label, _ in steps)})")
            shutil.rmtree(sc.tmp, ignore_errors=True)
            return 2
        steps = [(label, step) for label, step in steps if label in wanted]
    note(f"runtime {runtime}, image {image}, sandbox {sc.name}, logs in {sc.log_dir}")
    failed, faulted = 0, False
    try:
        for label, step in steps:
            if failed:
                say(f"- {label}: skipped (an earlier step failed)")
                continue
            began = time.monotonic()
            try:
                detail = step(sc)
                say(f"✓ {label} ({time.monotonic() - began:.1f}s): {detail}")
            except StepSkipped as exc:
                say(f"- {label}: skipped ({exc})")
            except StepFailed as exc:
                failed += 1
                say(f"✗ {label} ({time.monotonic() - began:.1f}s): {exc}")
                fault = emulation_fault(str(exc))
                if fault:
                    say(f"  (an emulation fault: {fault})")
                    faulted = True
            except Exception as exc:  # a step that broke is a failed step, with its traceback
                import traceback

                traceback.print_exc()
                failed += 1
                say(f"✗ {label} ({time.monotonic() - began:.1f}s): {exc.__class__.__name__}: {exc}")
    finally:
        if failed:
            sc.keep = True
            note(f"kept {sc.tmp} (task logs in {sc.log_dir})")
        sc.cleanup()
        say(sc.figures_line())
    if faulted:
        say(f"the scenario stopped at an emulation fault, not a failure of the project (exit {EXIT_EMULATION_FAULT})")
        return EXIT_EMULATION_FAULT
    return 1 if failed else 0


def script() -> None:
    """Run the command line of this process and exit with its code (``python -m harness.microvm_e2e``)."""
    back_to_caller_cwd()
    sys.exit(main())
