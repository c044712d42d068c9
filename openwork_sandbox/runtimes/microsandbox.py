"""The microsandbox runtime: the image booted as a detached microVM through the Python SDK.

- ``create``: ``Sandbox.create_with_progress`` (progress bar on a TTY) with ``detached=True``, the
  ``PullPolicy`` (``ALWAYS`` when replacing, so a moved tag is fetched again), ``registry_insecure``
  for loopback/plain-HTTP registries, ``Volume.bind`` mounts, the port published on the bind
  address, env, cpus and memory. Booting does not run the image's command, so the image's own
  ENTRYPOINT+CMD (from ``Image.inspect``) is started as a detached job; its id is kept in
  ``.state/<name>/sandbox.json`` so ``logs``, ``status`` and ``down`` find it from any process.
- ``start``: ``Sandbox.start`` then the same job again (jobs do not survive a stop).
- A VM that cannot boot is recognised (the SDK's "before agent relay became available", KVM lines
  in ``$MSB_HOME/sandboxes/<name>/logs/runtime.log``) and reported in one line with the log path
  and the Docker runtime as the way out. The sandbox is left for inspection.

The SDK is async and imported lazily: each public method runs one ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

from .. import console
from ..errors import WorkflowError
from ..state import RECORD_FILE, read_record, update_record
from .base import ABSENT, RUNNING, STOPPED, LaunchSpec, Runtime, RuntimeStatus
from .choice import DOCKER_HINT

LABEL_FP = "openwork-sandbox.fingerprint"
BOOT_FAILURE_MARK = "before agent relay became available"
KVM_LINE = re.compile(r"KVM_EXIT_\w+|KVM[^\n]*(error|fail)|/dev/kvm", re.IGNORECASE)


def msb_home() -> Path:
    """microsandbox's own state folder (its variable MSB_HOME, not a setting of this project)."""
    return Path(os.environ.get("MSB_HOME") or Path.home() / ".microsandbox")


def sandbox_log_dir(name: str) -> Path:
    return msb_home() / "sandboxes" / name / "logs"


def kvm_lines(name: str) -> list[str]:
    """KVM complaints in the sandbox's runtime and kernel logs (empty when there are none)."""
    found = []
    for log in ("runtime.log", "kernel.log"):
        try:
            text = (sandbox_log_dir(name) / log).read_text(errors="replace")
        except OSError:
            continue
        found += [line.strip() for line in text.splitlines() if KVM_LINE.search(line)]
    return found


def boot_failure_message(name: str, error: str) -> str | None:
    """One line saying this host cannot run microVMs and why, or None if ``error`` is something else."""
    kvm = kvm_lines(name)
    if BOOT_FAILURE_MARK not in error and not kvm:
        return None
    from .probe import microvm_support

    ok, why = microvm_support()
    cause = kvm[-1].split(": ", 1)[-1] if kvm else "the VM process exited before its agent answered"
    reason = f"{cause}; {why}" if not ok else cause
    return (f"this host cannot run microVMs: {reason}; see {sandbox_log_dir(name) / 'runtime.log'}; "
            f"{DOCKER_HINT}")


def _run(coro):
    return asyncio.run(coro)


def _sdk_error(exc: Exception, what: str) -> WorkflowError:
    return WorkflowError(f"microsandbox could not {what}: {exc}")


class MicrosandboxRuntime(Runtime):
    kind = "microsandbox"

    def job_id(self) -> str | None:
        """The server job's id, kept in ``.state/<name>/sandbox.json`` for other processes."""
        return read_record(self.state_dir).get("job_id")

    def _save_job(self, job_id: str | None) -> None:
        update_record(self.state_dir, job_id=job_id)

    # --- inspection ---------------------------------------------------------------------------
    async def _handle(self):
        from microsandbox import Sandbox, SandboxNotFoundError

        try:
            return await Sandbox.get(self.name)
        except SandboxNotFoundError:
            return None

    async def _job_info(self, handle) -> Any:
        job_id = self.job_id()
        if not job_id or handle is None:
            return None
        from microsandbox import MicrosandboxError

        try:
            return await (await handle.get_job(job_id)).inspect()
        except MicrosandboxError:
            return None

    def status(self) -> RuntimeStatus:
        from microsandbox import MicrosandboxError, SandboxStatus

        async def go() -> RuntimeStatus:
            handle = await self._handle()
            if handle is None:
                return RuntimeStatus(ABSENT)
            config = handle.config() or {}
            image = ((config.get("image") or {}).get("Oci") or {}).get("reference")
            fp = (config.get("labels") or {}).get(LABEL_FP)
            running = handle.status in (SandboxStatus.RUNNING, SandboxStatus.STARTING, SandboxStatus.DRAINING,
                                        SandboxStatus.PAUSED)
            job = await self._job_info(handle) if running else None
            server = bool(job and job.state in ("starting", "running"))
            detail = str(handle.status)
            if running and not server:
                detail += ", server job " + (f"{job.state} (exit code {job.exit_code})" if job else "not started")
            started = (job.started_at / 1000) if (job and job.started_at) else None
            return RuntimeStatus(RUNNING if running else STOPPED, image=image, digest=config.get("manifest_digest"),
                                 started_at=started, fingerprint=fp, server_running=server if running else False,
                                 detail=detail)

        try:
            return _run(go())
        except MicrosandboxError as exc:
            raise _sdk_error(exc, f"read the state of {self.name}") from None

    def is_alive(self) -> bool:
        st = self.status()
        return st.state == RUNNING and bool(st.server_running)

    # --- create / start / stop / remove -------------------------------------------------------
    async def _server_argv(self, image: str) -> tuple[list[str], str | None]:
        from microsandbox import Image

        detail = await Image.inspect(image)
        config = detail.config
        argv = list((config.entrypoint or []) if config else []) + list((config.cmd or []) if config else [])
        if not argv:
            raise WorkflowError(f"{image} has no ENTRYPOINT or CMD to start the server with: rebuild it (invoke build-image)")
        return argv, (config.working_dir or None) if config else None

    async def _launch_server(self, sb, spec: LaunchSpec) -> str:
        argv, workdir = await self._server_argv(spec.image)
        job = await sb.exec_detached(argv[0], argv[1:], env=dict(spec.env), cwd=workdir)
        self._save_job(job.id)
        return job.id

    async def _create(self, spec: LaunchSpec) -> None:
        from microsandbox import PortBinding, PullEventType, PullPolicy, Sandbox, Volume

        session = Sandbox.create_with_progress(
            self.name,
            image=spec.image,
            cpus=spec.cpus,
            memory=spec.memory_mib,
            env=dict(spec.env),
            labels={LABEL_FP: spec.fingerprint},
            volumes={guest: Volume.bind(str(host)) for guest, host in spec.mounts.items()},
            ports=[PortBinding.tcp(spec.host_port, spec.guest_port, bind=spec.bind_address)],
            pull_policy=PullPolicy.ALWAYS if spec.pull_always else PullPolicy.IF_MISSING,
            registry_insecure=spec.registry_plain_http,
            replace=True,
            detached=True,
        )
        layers: dict[int, int] = {}
        complete = False
        start = time.monotonic()
        with console.Progress(f"pulling {spec.image.rsplit('/', 1)[-1]}") as bar:
            async for ev in session.progress:
                if ev.event_type == PullEventType.RESOLVED and ev.total_download_bytes:
                    bar.update(0, ev.total_download_bytes)
                elif ev.event_type == PullEventType.LAYER_DOWNLOAD_PROGRESS and ev.layer_index is not None:
                    layers[ev.layer_index] = ev.downloaded_bytes or 0
                    bar.update(sum(layers.values()))
                elif ev.event_type == PullEventType.COMPLETE:
                    complete = True
                    break
        if layers:
            console.info(f"pulled {spec.image} ({console.human_bytes(sum(layers.values()))}) in "
                         f"{time.monotonic() - start:.1f}s")
        if complete:
            console.info(f"booting microVM {self.name} ...")
        sb = await session.result()
        await sb.detach()
        await self._launch_server(sb, spec)

    def create(self, spec: LaunchSpec) -> None:
        from microsandbox import ImageNotFoundError, ImagePullFailedError, MicrosandboxError

        try:
            self._save_job(None)
            _run(self._create(spec))
        except (ImagePullFailedError, ImageNotFoundError) as exc:
            raise WorkflowError(
                f"microsandbox could not pull {spec.image}: {exc}; push it first (invoke push-image) and check the "
                f"registry answers (invoke doctor)"
            ) from None
        except MicrosandboxError as exc:
            text = str(exc)
            if text.startswith(("image error", "registry error")):
                raise WorkflowError(
                    f"microsandbox could not pull {spec.image}: {text}; push it first (invoke push-image) and check "
                    f"the registry answers (invoke doctor)"
                ) from None
            raise WorkflowError(boot_failure_message(self.name, text) or f"microsandbox could not create "
                                f"{self.name}: {text}") from None

    def start(self, spec: LaunchSpec) -> None:
        from microsandbox import MicrosandboxError, Sandbox, SandboxStatus

        async def go() -> None:
            handle = await self._handle()
            if handle is None:
                raise WorkflowError(f"sandbox {self.name} is gone: run `invoke up` again to create it")
            if handle.status in (SandboxStatus.RUNNING, SandboxStatus.STARTING):
                sb = await handle.connect()
            else:
                console.info(f"starting microVM {self.name} ...")
                sb = await Sandbox.start(self.name, detached=True)
            await sb.detach()
            await self._launch_server(sb, spec)

        try:
            _run(go())
        except MicrosandboxError as exc:
            raise WorkflowError(boot_failure_message(self.name, str(exc)) or f"microsandbox could not start "
                                f"{self.name}: {exc}") from None

    def restart_server(self, spec: LaunchSpec) -> None:
        from microsandbox import MicrosandboxError

        async def go() -> None:
            handle = await self._handle()
            if handle is None:
                raise WorkflowError(f"sandbox {self.name} is gone: run `invoke up` again to create it")
            job_id = self.job_id()
            if job_id:
                try:
                    await (await handle.get_job(job_id)).kill()
                except MicrosandboxError:
                    pass  # already gone
            sb = await handle.connect()
            await self._launch_server(sb, spec)

        try:
            _run(go())
        except MicrosandboxError as exc:
            raise _sdk_error(exc, f"restart the server in {self.name}") from None

    def stop(self) -> bool:
        from microsandbox import MicrosandboxError, SandboxStatus

        async def go() -> bool:
            handle = await self._handle()
            if handle is None or handle.status in (SandboxStatus.STOPPED, SandboxStatus.CRASHED, SandboxStatus.CREATED):
                return False
            await handle.stop(timeout=15)
            return True

        try:
            return _run(go())
        except MicrosandboxError as exc:
            raise _sdk_error(exc, f"stop {self.name}") from None

    def remove(self) -> bool:
        from microsandbox import MicrosandboxError, Sandbox, SandboxStatus

        async def go() -> bool:
            handle = await self._handle()
            if handle is None:
                return False
            if handle.status not in (SandboxStatus.STOPPED, SandboxStatus.CRASHED, SandboxStatus.CREATED):
                try:
                    await handle.stop(timeout=15)
                except MicrosandboxError:
                    await handle.kill(timeout=10)
            await Sandbox.remove(self.name)
            return True

        try:
            removed = _run(go())
        except MicrosandboxError as exc:
            raise _sdk_error(exc, f"remove {self.name}") from None
        self._save_job(None)
        return removed

    # --- logs / exec --------------------------------------------------------------------------
    def log_hint(self) -> str:
        return f"{sandbox_log_dir(self.name) / 'exec.log'} (or: invoke logs; system: invoke logs --system)"

    @staticmethod
    def _lines(entries) -> list[str]:
        out: list[str] = []
        for entry in entries:
            data = entry.data if isinstance(entry.data, bytes) else bytes(entry.data)
            out += data.decode(errors="replace").splitlines()
        return out

    def log_tail(self, lines: int = 40) -> list[str]:
        from microsandbox import MicrosandboxError

        async def go() -> list[str]:
            handle = await self._handle()
            if handle is None:
                return []
            job_id = self.job_id()
            if job_id:
                try:
                    return self._lines(await (await handle.get_job(job_id)).logs(tail=lines))
                except MicrosandboxError:
                    pass
            return [e.text().rstrip("\n") for e in await handle.logs(tail=lines)]

        try:
            return _run(go())[-lines:]
        except MicrosandboxError:
            return []

    def stream_logs(self, *, follow: bool = False, tail: int | None = None, since_s: float | None = None,
                    system: bool = False) -> Iterator[str]:
        """Drive the SDK's async log stream from this synchronous generator (one event loop)."""
        from microsandbox import LogReadSource, MicrosandboxError

        since_ms = int((time.time() - since_s) * 1000) if since_s is not None else None

        async def open_stream():
            handle = await self._handle()
            if handle is None:
                raise WorkflowError(f"no microsandbox sandbox named {self.name}: run `invoke up` first")
            if system:
                if not follow:
                    entries = await handle.logs(tail=tail, since_ms=since_ms, sources=[LogReadSource.SYSTEM])
                    return [e.text().rstrip("\n") for e in entries]
                return await handle.log_stream(sources=[LogReadSource.SYSTEM], since_ms=since_ms, follow=True)
            job_id = self.job_id()
            if not job_id:
                raise WorkflowError(f"no server job recorded for {self.name} in {self.state_dir / RECORD_FILE}: run `invoke up`")
            job = await handle.get_job(job_id)
            if not follow:
                return self._lines(await job.logs(tail=tail, since=since_ms))
            return await job.log_stream(tail=tail, since=since_ms, follow=True)

        loop = asyncio.new_event_loop()
        try:
            try:
                stream = loop.run_until_complete(open_stream())
            except MicrosandboxError as exc:
                raise _sdk_error(exc, f"read the logs of {self.name}") from None
            if isinstance(stream, list):
                yield from stream
                return
            iterator = stream.__aiter__()
            while True:
                try:
                    entry = loop.run_until_complete(iterator.__anext__())
                except StopAsyncIteration:
                    return
                data = entry.data if hasattr(entry, "data") else b""
                text = data.decode(errors="replace") if isinstance(data, (bytes, bytearray)) else str(data)
                yield from text.rstrip("\n").splitlines() or [""]
        finally:
            loop.close()

    def exec(self, argv: list[str], *, timeout: float = 60) -> tuple[int, str]:
        from microsandbox import MicrosandboxError

        async def go() -> tuple[int, str]:
            handle = await self._handle()
            if handle is None:
                raise WorkflowError(f"no microsandbox sandbox named {self.name}: run `invoke up` first")
            sb = await handle.connect(timeout=10)
            out = await sb.exec(argv[0], argv[1:], timeout=timeout)
            return out.exit_code, out.stdout_text + out.stderr_text

        try:
            return _run(go())
        except MicrosandboxError as exc:
            raise _sdk_error(exc, f"run {argv[0]} in {self.name}") from None
