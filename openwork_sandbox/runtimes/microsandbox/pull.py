"""Pulling with the microsandbox SDK: its registry arguments, and push-image's pull proof.

- :func:`sdk_registry_options` turns a runtime-neutral :class:`~openwork_sandbox.registry.access.PullAccess`
  (scheme, login, CAs) into the SDK's ``registry_insecure``, ``registry_auth`` and
  ``registry_ca_certs``; ``up``'s create and the proof below both use it.
- :func:`prove_pull` pulls a pushed image as ``up`` will, without booting it. The SDK has no pull
  of its own: ``Sandbox.create_with_progress`` pulls (``msb pull`` has no CA flag), and the
  creation is cancelled once the image is in microsandbox's cache, so no VM is booted. It runs in
  a child process (``python -m openwork_sandbox.runtimes.microsandbox.pull``): the SDK opens its
  store under ``MSB_HOME`` once per process, and a child sees the ``MSB_HOME`` of the moment. The
  request (reference, login, CAs) arrives as JSON on stdin, never on the command line; the answer
  is one JSON object on stdout: ``{"digest": …}`` or ``{"error": …}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from pathlib import Path

from openwork_sandbox.core import console, processes
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.registry.access import LOGIN_HINT, PullAccess, certs_hint, login_refused

TIMEOUT = 900.0  # seconds the pull proof's child may take


def sdk_registry_options(access: PullAccess) -> dict:
    """The SDK's pull arguments for ``access``: ``registry_insecure``, ``registry_auth``, ``registry_ca_certs``."""
    options: dict = {"registry_insecure": access.insecure}
    if access.username and access.password:
        from microsandbox import RegistryAuth

        options["registry_auth"] = RegistryAuth.basic(access.username, access.password)
    if access.ca_pems:
        options["registry_ca_certs"] = list(access.ca_pems)
    return options


def pull_failure_hint(host: str, text: str) -> str:
    """The way out of a microsandbox pull failure (its message is the SDK's text)."""
    lowered = text.lower()
    if "error sending request" in lowered or "certificate" in lowered:
        return f"is its CA trusted? {certs_hint(host)}"
    if login_refused(text):
        return LOGIN_HINT.format(host=host)
    return "push it first (invoke push-image) and check the registry answers (invoke doctor)"


def prove_pull(ref: str, host: str, access: PullAccess, expected_digest: str | None = None) -> tuple[bool, str]:
    """Pull ``ref`` from registry ``host`` with the microsandbox SDK, as ``up`` will (``access``: the
    same scheme, login and CAs), without booting it. Returns ``(True, how long it took)``, or
    ``(False, why it was skipped)`` where msb is not installed. Raises a one-line WorkflowError (with
    the way out) when the pull fails, or when it resolves to another digest than ``expected_digest``."""
    from openwork_sandbox.runtimes.probe import msb_path

    if not msb_path():
        return False, "skipped: microsandbox (msb) is not installed"
    started = time.monotonic()
    try:
        with console.heartbeat(f"microsandbox pull {ref}"):
            digest = _pull_in_child(ref, access)
    except RuntimeError as exc:
        text = str(exc)
        raise WorkflowError(
            f"microsandbox could not pull {ref} from registry {host}: {text[:300]}; {pull_failure_hint(host, text)}"
        ) from None
    if expected_digest and digest and digest != expected_digest:
        raise WorkflowError(
            f"microsandbox pulled {ref} as {digest}, but the push reported {expected_digest}: "
            "something else pushed to the tag; push again"
        )
    return True, f"pulled in {time.monotonic() - started:.1f}s"


def _pull_in_child(ref: str, access: PullAccess, timeout: float = TIMEOUT) -> str | None:
    """Pull ``ref`` in a child process (this module run as ``__main__``; the request on its stdin);
    returns the manifest digest (None when the SDK did not say), raises RuntimeError(one-line reason)
    on a failure, no answer within ``timeout`` seconds, or no answer at all."""
    request = {
        "ref": ref,
        "insecure": access.insecure,
        "username": access.username,
        "password": access.password,
        "ca_pems": [p.decode("ascii", "replace") for p in access.ca_pems],
    }
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = processes.python_module(__name__, input=json.dumps(request), env=env, timeout=timeout)
    except processes.CommandTimeout:
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
    """The child's pull: ``request`` (reference, scheme, login, CAs) pulled into microsandbox's cache
    through a sandbox creation cancelled once the pull is complete (nothing boots; the sandbox's record
    is removed). Returns the manifest digest it resolved (or the cache's); raises the SDK's errors."""
    from microsandbox import Image, PullEventType, PullPolicy, Sandbox

    ref = request["ref"]
    access = PullAccess(
        insecure=bool(request.get("insecure")),
        username=request.get("username"),
        password=request.get("password"),
        ca_pems=tuple(p.encode() for p in request.get("ca_pems") or ()),
    )
    name = f"owpull-{secrets.token_hex(4)}"
    session = Sandbox.create_with_progress(
        name, image=ref, pull_policy=PullPolicy.ALWAYS, **sdk_registry_options(access)
    )
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
    """The child process: a request as JSON on stdin, one JSON line on stdout (``{"digest": ...}``,
    exit 0, or ``{"error": ...}``, exit 1)."""
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
