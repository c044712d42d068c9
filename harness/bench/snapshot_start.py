"""One ``invoke up`` as a user runs it, its microVM booted cold or restored from a disk snapshot: the
child process of ``bench-snapshot``.

    python -m harness.bench.snapshot_start KIND SNAPSHOT MARKS TASK-ARGS...

KIND ``cold``: the product's `up`, unchanged. KIND ``snapshot``: the same `up`, but the runtime's
boot (``boot.pull_and_boot``: ``Sandbox.create``) is replaced by ``Sandbox.restore(SNAPSHOT)`` with
the spec's binds, published port, network policy, vCPUs and memory (a disk snapshot carries none of
them); the server job, the token files, the record and the health wait are the product's. Either
way MARKS gets a JSON object of epoch seconds (``began``: this process's first line; ``boot_start``,
``boot_end``; ``healthy``: the first GET /health 200) and ``exit`` (the task's exit code), and the
process exits with that code. Bench-only: the product has no snapshot start (see the design note).
"""

from __future__ import annotations

import json
import sys
import time

BEGAN = time.time()


async def restore(snapshot: str, name: str, spec):
    """The running, not yet detached ``Sandbox`` ``name`` restored from the disk snapshot ``snapshot``
    with what ``create`` would have given it (``spec.create_kwargs``); the SDK's errors pass unchanged."""
    from microsandbox import Sandbox

    from openwork_sandbox.runtimes.microsandbox.spec import create_kwargs

    kw = create_kwargs(spec)
    net = kw["network"]
    return await Sandbox.restore(
        snapshot,
        name=name,
        cpus=kw["cpus"],
        memory=kw["memory"],
        volumes=kw["volumes"],
        ports=net.ports,
        network_policy=net.policy,
        **({"max_duration": kw["max_duration"]} if "max_duration" in kw else {}),
    )


def instrument(kind: str, snapshot: str, marks: dict) -> None:
    """Mark the boot's start and end and the first healthy answer in MARKS; for KIND ``snapshot`` boot
    by :func:`restore` instead of the runtime's create."""
    from openwork_sandbox.runtimes.microsandbox import boot
    from openwork_sandbox.sandbox import start_watch

    create, healthy = boot.pull_and_boot, start_watch._healthy

    async def timed_boot(name, spec):
        marks["boot_start"] = time.time()
        sb = await (create(name, spec) if kind == "cold" else restore(snapshot, name, spec))
        marks["boot_end"] = time.time()
        return sb

    def timed_healthy(*args, **kwargs):
        body = healthy(*args, **kwargs)
        marks.setdefault("healthy", time.time())
        return body

    boot.pull_and_boot = timed_boot
    start_watch._healthy = timed_healthy


def main(argv: list[str]) -> int:
    kind, snapshot, marks_path, *task = argv
    if kind not in ("cold", "snapshot") or not task:
        print("usage: snapshot_start cold|snapshot SNAPSHOT MARKS TASK-ARGS...", file=sys.stderr)
        return 2
    from invoke.main import program

    marks: dict = {"began": BEGAN}
    instrument(kind, snapshot, marks)
    code = 0
    try:
        program.run(["invoke", *task])
    except SystemExit as exc:  # the task boundary's exit code
        code = exc.code if isinstance(exc.code, int) else 1
    marks["exit"] = code
    with open(marks_path, "w") as f:
        json.dump(marks, f)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
