"""Pull an image with the microsandbox SDK, as ``up`` will, without booting it (push-image's proof).

The SDK has no pull of its own: ``Sandbox.create_with_progress`` pulls (with ``registry_auth``
and ``registry_ca_certs``; ``msb pull`` has no CA flag), and the creation is cancelled once the
image is in microsandbox's cache, so no VM is booted.

It runs in a child process (``python -m openwork_sandbox.sdk_pull``): the SDK opens its store
under ``MSB_HOME`` once per process, and a child sees the ``MSB_HOME`` of the moment. The request
(reference, login, CAs) arrives as JSON on stdin, never on the command line; the answer is one
JSON object on stdout: ``{"digest": …}`` or ``{"error": …}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

TIMEOUT = 900.0


def pull(ref: str, *, insecure: bool, username: str | None = None, password: str | None = None,
         ca_pems: list[bytes] | None = None, timeout: float = TIMEOUT) -> str | None:
    """Pull ``ref`` in a child process; returns the manifest digest, raises RuntimeError(reason)."""
    request = {"ref": ref, "insecure": insecure, "username": username, "password": password,
               "ca_pems": [p.decode("ascii", "replace") for p in (ca_pems or [])]}
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run([sys.executable, "-m", "openwork_sandbox.sdk_pull"], input=json.dumps(request),
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"no answer within {timeout:.0f}s") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise RuntimeError(tail[0][:300]) from None
    if answer.get("error"):
        raise RuntimeError(answer["error"])
    return answer.get("digest")


async def _pull(request: dict) -> str | None:
    from microsandbox import Image, PullEventType, PullPolicy, Sandbox

    from .registry_access import sdk_request_options

    ref = request["ref"]
    options = sdk_request_options({**request, "ca_pems": [p.encode() for p in request.get("ca_pems") or []]})
    name = f"owpull-{secrets.token_hex(4)}"
    session = Sandbox.create_with_progress(name, image=ref, pull_policy=PullPolicy.ALWAYS, **options)
    digest, complete = None, False
    try:
        async for ev in session.progress:
            if ev.event_type == PullEventType.RESOLVED and ev.manifest_digest:
                digest = ev.manifest_digest
            elif ev.event_type == PullEventType.COMPLETE:
                complete = True
                break
        # the image is recorded in the cache moments after COMPLETE (an older pull of the same tag
        # may still be there until then): wait for the record of what was resolved
        cached = None
        for _ in range(200 if complete else 0):
            with contextlib.suppress(Exception):
                cached = (await Image.get(ref)).manifest_digest
            if cached and (cached == digest or digest is None):
                break
            await asyncio.sleep(0.05)
        digest = digest or cached
    finally:
        if complete:
            session.cancel()
    if not complete:
        await session.result()  # raises the pull's own error
    with contextlib.suppress(BaseException):
        await session.result()
    with contextlib.suppress(BaseException):
        await Sandbox.remove(name)
    return digest


def main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        digest = asyncio.run(_pull(request))
    except Exception as exc:  # the SDK's errors: MicrosandboxError and its kin
        print(json.dumps({"error": " ".join(str(exc).split()) or exc.__class__.__name__}))
        return 1
    print(json.dumps({"digest": digest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
