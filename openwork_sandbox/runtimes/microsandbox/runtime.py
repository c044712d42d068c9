# One module for now (over 400 lines): one Runtime implementation, one class over one SDK event loop, plus the
# pure functions that build its SDK arguments. The split it would take: boot-failure reading (kvm_lines,
# boot_failure_message) and create_kwargs/network_config into microsandbox_args.py; not now, while other
# branches change this runtime.
"""The microsandbox runtime: the image booted as a detached microVM through the Python SDK.

- ``create``: ``Sandbox.create_with_progress`` (progress bar on a TTY) with the arguments of
  :func:`create_kwargs` (a pure function): ``detached=True``, the ``PullPolicy`` (``ALWAYS`` when
  replacing, so a moved tag is fetched again), the registry's
  ``registry_insecure``/``registry_auth``/``registry_ca_certs`` (``registry_access``), ``Volume.bind`` mounts, a ``Network`` with the port published on the bind address and
  the policy of OPENWORK_MICROSANDBOX_NETWORK (:func:`network_config`), env, cpus and memory.
  Booting does not run the image's command, so the image's own ENTRYPOINT+CMD (from
  ``Image.inspect``) is started as a detached job. Its id is kept in ``.state/<name>/sandbox.json``
  as a shortcut; without it the job is found through the SDK (``list_jobs``, by its command).
- ``start``: ``connect_or_start`` then the same job again (jobs do not survive a stop);
  ``remove``: ``destroy``.
- A VM that cannot boot is recognised (the SDK's "before agent relay became available", KVM lines
  in ``$MSB_HOME/sandboxes/<name>/logs/runtime.log``) and reported in one line with the log path
  and the Docker runtime as the way out. The sandbox is left for inspection.
- Every boot (create, start, the boot for a copy) goes through ``microsandbox_launch.booting``: the
  SDK gives msb's launch probe 2 s, which a busy or slow host can miss; such a boot is tried again.

The SDK is async and imported lazily. A runtime object keeps one event loop for all its calls
(the SDK's handles and streams stay on the loop that made them); a task makes one runtime object.
"""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from openwork_sandbox.core import console
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, WorkflowError
from openwork_sandbox.state.store import RECORD_FILE, read_record, update_record
from openwork_sandbox.runtimes.base import (
    ABSENT,
    RUNNING,
    STOPPED,
    LaunchSpec,
    Runtime,
    RuntimeStatus,
)
from openwork_sandbox.runtimes.microsandbox import jobs, logs
from openwork_sandbox.runtimes.microsandbox.copy import copy_folder, home_in_config
from openwork_sandbox.runtimes.microsandbox.launch import booting, probe_failure_message
from openwork_sandbox.runtimes.microsandbox.sdk import SdkLoop
from openwork_sandbox.runtimes.microsandbox.spec import (
    LABEL_FP,
    XATTR_MARK,
    create_kwargs,
    folders_without_xattrs,
    no_xattr_message,
)


class MicrosandboxRuntime(Runtime):
    kind = "microsandbox"

    def __init__(self, name: str, state_dir: Path):
        super().__init__(name, state_dir)
        self._sdk = SdkLoop()  # every SDK call of this object: the SDK's handles stay on the loop that made them

    def close(self) -> None:
        """Close this object's event loop (a later call opens a new one)."""
        self._sdk.close()

    def job_id(self) -> str | None:
        """The server job's id as recorded in ``.state/<name>/sandbox.json`` (a shortcut)."""
        return read_record(self.state_dir, strict=False).get("job_id")

    def _save_job(self, job_id: str | None) -> None:
        update_record(self.state_dir, job_id=job_id)

    # --- inspection ---------------------------------------------------------------------------
    async def _handle(self):
        from microsandbox import Sandbox, SandboxNotFoundError

        try:
            return await Sandbox.get(self.name)
        except SandboxNotFoundError:
            return None

    async def _server_job(self, handle):
        """:func:`jobs.server_job` with the recorded id."""
        return await jobs.server_job(handle, self.job_id())

    async def _existing(self):
        """The handle, or a WorkflowError saying there is no such sandbox."""
        handle = await self._handle()
        if handle is None:
            raise WorkflowError(f"no microsandbox sandbox named {self.name}: run `invoke up` to create it")
        return handle

    def platform(self, st: RuntimeStatus) -> str | None:
        """``os/arch`` of the image in microsandbox's cache (from an index, the platform it picked)."""
        if not st.image:
            return None

        async def go() -> str | None:
            from microsandbox import Image, MicrosandboxError

            try:
                image = await Image.get(st.image)
            except MicrosandboxError:
                return None
            return f"{image.os}/{image.architecture}" if image.os and image.architecture else None

        try:
            return self._sdk.run(go()) or super().platform(st)
        except Exception:  # the cache could not be read: the platform it boots is the host's
            return super().platform(st)

    def status(self) -> RuntimeStatus:
        from microsandbox import SandboxStatus

        async def go() -> RuntimeStatus:
            handle = await self._handle()
            if handle is None:
                return RuntimeStatus(ABSENT)
            config = handle.config() or {}
            fp = (config.get("labels") or {}).get(LABEL_FP)
            running = handle.status in (SandboxStatus.RUNNING, SandboxStatus.STARTING, SandboxStatus.DRAINING,
                                        SandboxStatus.PAUSED)
            job = await jobs.job_info(handle, self.job_id()) if running else None
            server = bool(job and job.state in jobs.LIVE_JOB)
            detail = str(handle.status)
            if running and not server:
                detail += ", server job " + (f"{job.state} (exit code {job.exit_code})" if job else "not started")
            started = (job.started_at / 1000) if (job and job.started_at) else None
            return RuntimeStatus(RUNNING if running else STOPPED, image=jobs.image_of(handle),
                                 digest=config.get("manifest_digest"), started_at=started, fingerprint=fp,
                                 server_running=server if running else False, detail=detail)

        return self._sdk.call(go(), f"read the state of {self.name}")

    def machine_fault(self) -> str | None:
        """When the microVM itself is not running: its logs' last fault line (KVM_EXIT_SHUTDOWN, a
        guest kernel panic), else that it stopped with no reason logged."""
        return None if self.status().state == RUNNING else logs.stopped_phrase(self.name)

    def describe(self) -> tuple[str, list[str], str]:
        """The base's, and when the microVM itself is not running (not only its server job): why, from
        its own logs, and where they are (a job's log ends mid-line when its VM dies under it)."""
        state, lines, hint = super().describe()
        if not state.startswith(RUNNING):
            state += f"; {logs.stopped_phrase(self.name)}"
            hint += f"; the microVM's own logs: {logs.sandbox_log_dir(self.name)}"
        return state, lines, hint

    def is_alive(self) -> bool:
        st = self.status()
        return st.state == RUNNING and bool(st.server_running)

    # --- create / start / stop / remove -------------------------------------------------------
    async def _launch_server(self, sb, spec: LaunchSpec) -> None:
        """:func:`jobs.launch_server`, its job's id recorded."""
        self._save_job(await jobs.launch_server(sb, spec))

    async def _create(self, spec: LaunchSpec) -> None:
        from microsandbox import PullEventType, Sandbox

        session = Sandbox.create_with_progress(self.name, **create_kwargs(spec))
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
        await self._launch_server(sb, spec)  # before detach(): detach consumes the Sandbox object
        await sb.detach()

    def create(self, spec: LaunchSpec) -> None:
        from microsandbox import ImageNotFoundError, ImagePullFailedError, MicrosandboxError

        binds, home = folders_without_xattrs(spec)
        if binds or home:
            raise WorkflowError(no_xattr_message(binds, home), exit_code=EXIT_BAD_SETTINGS)
        def boot():
            return self._create(spec)

        try:
            self._save_job(None)
            try:
                self._sdk.run(booting(boot))
            except MicrosandboxError as exc:
                fault = logs.boot_fault(self.name, str(exc))
                if not fault:
                    raise
                console.info(f"the microVM {self.name} stopped while booting ({fault}); booting it again (2 of 2)")
                self._sdk.run(booting(boot))
        except (ImagePullFailedError, ImageNotFoundError) as exc:
            raise WorkflowError(
                f"microsandbox could not pull {spec.image}: {exc}; push it first (invoke push-image) and check the "
                f"registry answers (invoke doctor)"
            ) from None
        except MicrosandboxError as exc:
            text = str(exc)
            if text.startswith(("image error", "registry error")):
                from openwork_sandbox.config import ImageRef
                from openwork_sandbox.runtimes.microsandbox.pull import pull_failure_hint

                raise WorkflowError(f"microsandbox could not pull {spec.image}: {text}; "
                                    f"{pull_failure_hint(ImageRef.parse(spec.image).registry_host, text)}") from None
            if XATTR_MARK in text:  # checked before the boot; a folder may have changed since
                binds, home = folders_without_xattrs(spec)
                if binds or home:
                    raise WorkflowError(no_xattr_message(binds, home), exit_code=EXIT_BAD_SETTINGS) from None
            raise WorkflowError(probe_failure_message(f"create {self.name}", text)
                                or logs.boot_failure_message(self.name, text)
                                or f"microsandbox could not create {self.name}: {text}") from None

    def start(self, spec: LaunchSpec) -> None:
        from microsandbox import MicrosandboxError, SandboxStatus

        async def go() -> None:
            handle = await self._existing()
            if handle.status not in (SandboxStatus.RUNNING, SandboxStatus.STARTING):
                console.info(f"starting microVM {self.name} ...")
            sb = await handle.connect_or_start(detached=True)
            await self._launch_server(sb, spec)  # before detach(): detach consumes the Sandbox object
            await sb.detach()

        try:
            self._sdk.run(booting(go))
        except MicrosandboxError as exc:
            raise WorkflowError(probe_failure_message(f"start {self.name}", exc)
                                or logs.boot_failure_message(self.name, str(exc))
                                or f"microsandbox could not start {self.name}: {exc}") from None

    # --- state an older layout left in the microVM's home --------------------------------------
    def created_home(self) -> str | None:
        """The HOME in the microVM's config (its env: a list of {key, value}, or a mapping)."""
        from microsandbox import MicrosandboxError

        async def go() -> dict:
            handle = await self._handle()
            return (handle.config() or {}) if handle is not None else {}

        try:
            return home_in_config(self._sdk.run(go()))
        except MicrosandboxError:
            return None

    def open_for_copy(self, spec: LaunchSpec | None) -> Callable[[], None]:
        """The SDK reads files from a running VM only: a running one has its server job stopped (and
        relaunched when putting it back); a stopped one is booted (booting does not start the server)
        and stopped again."""
        from microsandbox import MicrosandboxError

        if self.status().state == RUNNING:
            async def stop_server() -> None:
                await jobs.stop_job(await self._server_job(await self._existing()))

            self._sdk.call(stop_server(), f"stop the server in {self.name}")
            return (lambda: self._relaunch_server(spec)) if spec is not None else (lambda: None)

        async def boot() -> None:
            sb = await (await self._existing()).connect_or_start(detached=True)
            await sb.detach()

        try:
            self._sdk.run(booting(boot))
        except MicrosandboxError as exc:
            raise WorkflowError(
                f"the microVM {self.name} was made by an older version, which kept sessions and tokens in its "
                f"home, and cannot be started to copy them out ({exc}); it was not replaced. To replace it "
                f"without copying, run `invoke reset --keep-data` and then `invoke up`") from None
        return self.stop

    def copy_out(self, guest_dir: str, stage: Path, unit: str) -> list:
        """:func:`copy_folder` over the SDK's ``sandbox.fs`` of the running microVM."""
        src = str(PurePosixPath(guest_dir) / unit)

        async def go() -> list:
            sb = await (await self._existing()).connect(timeout=30)
            return await copy_folder(sb.fs, src, unit, stage, f"the microVM {self.name}")

        return self._sdk.call(go(), f"copy {src} out of the microVM {self.name}")

    def restart_server(self, spec: LaunchSpec) -> None:
        """As `docker restart` restarts a container: the microVM is stopped and booted again, and the
        server launched as `start` launches it. Stopping only the server job does not do for a start
        that went wrong: a job stopped (or dead) before it passed SIGTERM on leaves what it started
        running, holding opencode's database and ports; in a microVM nested under emulation a start
        relaunched so never became healthy in 1800 s."""
        self.stop()
        self.start(spec)

    def _relaunch_server(self, spec: LaunchSpec) -> None:
        """The server job launched again in the running microVM (after open_for_copy stopped it there,
        with its SIGTERM and grace); a microVM that stopped meanwhile is booted as `start` does."""
        from microsandbox import SandboxStatus

        async def go() -> bool:
            handle = await self._existing()
            if handle.status not in (SandboxStatus.RUNNING, SandboxStatus.STARTING):
                return False
            await jobs.stop_job(await self._server_job(handle))
            await self._launch_server(await handle.connect(), spec)
            return True

        if not self._sdk.call(go(), f"restart the server in {self.name}"):
            self.start(spec)  # the microVM itself stopped under its server: boot it as `start` does

    def stop(self) -> bool:
        from microsandbox import SandboxStatus

        async def go() -> bool:
            handle = await self._handle()
            if handle is None or handle.status in (SandboxStatus.STOPPED, SandboxStatus.CRASHED, SandboxStatus.CREATED):
                return False
            await handle.stop(timeout=15)
            return True

        return self._sdk.call(go(), f"stop {self.name}")

    def remove(self) -> bool:
        from microsandbox import MicrosandboxError

        async def go() -> bool:
            handle = await self._handle()
            if handle is None:
                return False
            try:
                await handle.destroy(timeout=15)  # stop (gracefully), then remove
            except MicrosandboxError:
                handle = await self._handle()
                if handle is not None:
                    await handle.destroy(force=True, timeout=10)
            return True

        removed = self._sdk.call(go(), f"remove {self.name}")
        self._save_job(None)
        return removed

    # --- logs / exec --------------------------------------------------------------------------
    def log_hint(self) -> str:
        return f"{logs.sandbox_log_dir(self.name) / 'exec.log'} (or: invoke logs; system: invoke logs --system)"

    def log_tail(self, lines: int = 40) -> list[str]:
        from microsandbox import MicrosandboxError

        async def go() -> list[str]:
            handle = await self._handle()
            if handle is None:
                return []
            job = await self._server_job(handle)
            if job is not None:
                try:
                    return logs.entry_lines(await job.logs(tail=lines))
                except MicrosandboxError:
                    pass
            return logs.system_lines(await handle.logs(tail=lines))

        try:
            return self._sdk.run(go())[-lines:]
        except MicrosandboxError:
            return []

    def stream_logs(self, *, follow: bool = False, tail: int | None = None, since_s: float | None = None,
                    system: bool = False) -> Iterator[str]:
        """The server job's log (``follow``: :func:`logs.follow_job`), or the system log (``follow``: the
        SDK's stream through :func:`logs.follow_system`). Raises WorkflowError when there is no such
        sandbox or server job, or the SDK cannot read them."""
        from microsandbox import LogReadSource

        since_ms = int((time.time() - since_s) * 1000) if since_s is not None else None

        async def read_system() -> list[str]:
            entries = await (await self._existing()).logs(tail=tail, since_ms=since_ms,
                                                          sources=[LogReadSource.SYSTEM])
            return logs.system_lines(entries)

        async def open_system():
            return await (await self._existing()).log_stream(sources=[LogReadSource.SYSTEM], since_ms=since_ms,
                                                             follow=True)

        async def server_job():
            job = await self._server_job(await self._existing())
            if job is None:
                raise WorkflowError(f"no server job in {self.name} (the SDK lists none, and "
                                    f"{self.state_dir / RECORD_FILE} names none): run `invoke up`")
            return job

        async def read_job() -> list[str]:
            return logs.entry_lines(await (await server_job()).logs(tail=tail, since=since_ms))

        what = f"read the logs of {self.name}"
        if system and follow:
            yield from logs.follow_system(self._sdk, self._sdk.call(open_system(), what))
        elif system:
            yield from self._sdk.call(read_system(), what)
        elif follow:
            yield from logs.follow_job(self._sdk, self._sdk.call(server_job(), what), self.name, tail, since_ms)
        else:
            yield from self._sdk.call(read_job(), what)

    def exec(self, argv: list[str], *, timeout: float = 60) -> tuple[int, str]:
        async def go() -> tuple[int, str]:
            sb = await (await self._existing()).connect(timeout=10)
            out = await sb.exec(argv[0], argv[1:], timeout=timeout)
            return out.exit_code, out.stdout_text + out.stderr_text

        return self._sdk.call(go(), f"run {argv[0]} in {self.name}")
