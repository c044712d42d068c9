"""The microsandbox runtime: the image booted as a detached microVM through the microsandbox SDK.

:class:`MicrosandboxRuntime` implements :class:`~openwork_sandbox.runtimes.base.Runtime`: each method
is a few SDK calls on the sandbox's handle, all on the object's one event loop (``sdk.SdkLoop``; a
task makes one object). What it delegates: the create arguments and the extended-attribute checks
(``spec``), the server job (``jobs``), msb's logs and the SDK's log reads (``logs``), pulling,
booting and its failures (``boot``), the refusal of another architecture's image
(``platform_check``), every boot's launch probe (``launch.booting``), the old layout's copy
(``copy``). The SDK is imported inside the methods.

Booting does not run the image's command, so every boot launches it as a detached job, whose id is
kept in ``.state/<name>/sandbox.json`` as a shortcut. A sandbox that failed is left for inspection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from openwork_sandbox.core import console
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, WorkflowError
from openwork_sandbox.core.platforms import host_platform
from openwork_sandbox.runtimes.base import (
    ABSENT,
    RUNNING,
    STOPPED,
    LaunchSpec,
    NetworkSupport,
    Runtime,
    RuntimeStatus,
)
from openwork_sandbox.runtimes.microsandbox import boot, jobs, logs
from openwork_sandbox.runtimes.microsandbox.copy import copy_folder, home_in_config
from openwork_sandbox.runtimes.microsandbox.launch import booting
from openwork_sandbox.runtimes.microsandbox.platform_check import check as check_platform
from openwork_sandbox.runtimes.microsandbox.sdk import SdkLoop
from openwork_sandbox.runtimes.microsandbox.spec import (
    LABEL_FP,
    NETWORK_POLICIES,
    folders_without_xattrs,
    no_xattr_message,
)
from openwork_sandbox.state.store import RECORD_FILE, read_record, update_record


class MicrosandboxRuntime(Runtime):
    """The sandbox ``name`` as a microVM of microsandbox, its record in ``state_dir``. Expected failures
    are one-line WorkflowErrors ("microsandbox could not <what>: ..." unless said otherwise)."""

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
        """Record the server job's id (None: forget it)."""
        update_record(self.state_dir, job_id=job_id)

    # --- inspection ---------------------------------------------------------------------------
    async def _handle(self):
        """The SDK's handle of the sandbox, or None when microsandbox has none of this name."""
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
        """``os/arch`` of ``st``'s image in microsandbox's cache (from an index, the platform it picked);
        the host's platform when the cache does not say or cannot be read."""
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
        """:meth:`Runtime.status`: running while the microVM runs, starts, drains or is paused (the
        server job's state in ``server_running`` and ``detail``); the fingerprint from its label."""
        from microsandbox import SandboxStatus

        async def go() -> RuntimeStatus:
            handle = await self._handle()
            if handle is None:
                return RuntimeStatus(ABSENT)
            config = handle.config() or {}
            fp = (config.get("labels") or {}).get(LABEL_FP)
            running = handle.status in (
                SandboxStatus.RUNNING,
                SandboxStatus.STARTING,
                SandboxStatus.DRAINING,
                SandboxStatus.PAUSED,
            )
            job = await jobs.job_info(handle, self.job_id()) if running else None
            server = bool(job and job.state in jobs.LIVE_JOB)
            detail = str(handle.status)
            if running and not server:
                detail += ", server job " + (f"{job.state} (exit code {job.exit_code})" if job else "not started")
            started = (job.started_at / 1000) if (job and job.started_at) else None
            return RuntimeStatus(
                RUNNING if running else STOPPED,
                image=jobs.image_of(handle),
                digest=config.get("manifest_digest"),
                started_at=started,
                fingerprint=fp,
                server_running=server if running else False,
                detail=detail,
            )

        return self._sdk.call(go(), f"read the state of {self.name}")

    def machine_fault(self) -> str | None:
        """None while the microVM runs; else "the microVM itself stopped (...)" with its logs' last
        fault line (``KVM_EXIT_SHUTDOWN``, a guest kernel panic) or that they say no more."""
        return None if self.status().state == RUNNING else logs.stopped_phrase(self.name)

    def describe(self) -> tuple[str, list[str], str]:
        """The base's, and when the microVM itself is not running (not only its server job): why, from
        its own logs, and where they are; the job's log does not say, it ends where the VM died."""
        state, lines, hint = super().describe()
        if not state.startswith(RUNNING):
            state += f"; {logs.stopped_phrase(self.name)}"
            hint += f"; the microVM's own logs: {logs.sandbox_log_dir(self.name)}"
        return state, lines, hint

    def network_support(self) -> NetworkSupport:
        """Every policy: the microVM has its own network stack, and microsandbox filters what leaves it
        (``spec.network_config``)."""
        return NetworkSupport(NETWORK_POLICIES)

    def is_alive(self) -> bool:
        """The microVM runs and so does its server job."""
        st = self.status()
        return st.state == RUNNING and bool(st.server_running)

    # --- create / start / stop / remove -------------------------------------------------------
    async def _launch_server(self, sb, spec: LaunchSpec) -> None:
        """:func:`jobs.launch_server`, its job's id recorded."""
        self._save_job(await jobs.launch_server(sb, spec))

    async def _create(self, spec: LaunchSpec) -> None:
        """One try: pull and boot, launch the server job, detach."""
        sb = await boot.pull_and_boot(self.name, spec)
        await self._launch_server(sb, spec)  # before detach(): detach consumes the Sandbox object
        await sb.detach()

    def create(self, spec: LaunchSpec) -> None:
        """:meth:`Runtime.create`. A bind folder or MSB_HOME without extended attributes is refused first
        (WorkflowError, exit 2), then an image that is one manifest of another architecture
        (``platform_check``, exit 1), before anything is pulled or made. A boot the microVM's CPU
        stopped on a host where microVMs boot (``logs.boot_fault``) is booted once more. Failures:
        ``boot.create_failure``."""
        from microsandbox import MicrosandboxError

        binds, home = folders_without_xattrs(spec)
        if binds or home:
            raise WorkflowError(no_xattr_message(binds, home), exit_code=EXIT_BAD_SETTINGS)
        check_platform(spec, str(host_platform()))  # one manifest of another architecture: before the pull

        def create_once():
            return self._create(spec)

        try:
            self._save_job(None)
            try:
                self._sdk.run(booting(create_once))
            except MicrosandboxError as exc:
                fault = logs.boot_fault(self.name, str(exc))
                if not fault:
                    raise
                console.info(f"the microVM {self.name} stopped while booting ({fault}); booting it again (2 of 2)")
                self._sdk.run(booting(create_once))
        except MicrosandboxError as exc:
            raise boot.create_failure(self.name, spec, exc) from None

    def start(self, spec: LaunchSpec) -> None:
        """:meth:`Runtime.start`: the microVM booted if it is not running, and the server job launched
        again (jobs do not survive a stop). Failures: ``boot.start_failure``; a WorkflowError too when
        there is no such sandbox."""
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
            raise boot.start_failure(self.name, exc) from None

    # --- state an older layout left in the microVM's home --------------------------------------
    def created_home(self) -> str | None:
        """The HOME in the microVM's config; None when it sets none, there is no such sandbox, or the
        SDK cannot say."""
        from microsandbox import MicrosandboxError

        async def go() -> dict:
            handle = await self._handle()
            return (handle.config() or {}) if handle is not None else {}

        try:
            return home_in_config(self._sdk.run(go()))
        except MicrosandboxError:
            return None

    def open_for_copy(self, spec: LaunchSpec | None) -> Callable[[], None]:
        """:meth:`Runtime.open_for_copy`. The SDK reads files from a running microVM only: a running one
        has its server job stopped (put back: launched again, when ``spec`` is given); a stopped one is
        booted without its server (put back: stopped). A WorkflowError when it cannot be booted: the
        old sandbox is then not replaced."""
        from microsandbox import MicrosandboxError

        if self.status().state == RUNNING:

            async def stop_server() -> None:
                await jobs.stop_job(await self._server_job(await self._existing()))

            self._sdk.call(stop_server(), f"stop the server in {self.name}")
            return (lambda: self._relaunch_server(spec)) if spec is not None else (lambda: None)

        async def boot_stopped() -> None:
            sb = await (await self._existing()).connect_or_start(detached=True)
            await sb.detach()

        try:
            self._sdk.run(booting(boot_stopped))
        except MicrosandboxError as exc:
            raise WorkflowError(
                f"the microVM {self.name} was made by an older version, which kept sessions and tokens in its "
                f"home, and cannot be started to copy them out ({exc}); it was not replaced. To replace it "
                f"without copying, run `invoke reset --keep-data` and then `invoke up`"
            ) from None
        return self.stop

    def copy_out(self, guest_dir: str, stage: Path, unit: str) -> list:
        """:meth:`Runtime.copy_out` through :func:`copy.copy_folder` over the SDK's ``sandbox.fs`` of the
        running microVM (see :meth:`open_for_copy`)."""
        src = str(PurePosixPath(guest_dir) / unit)

        async def go() -> list:
            sb = await (await self._existing()).connect(timeout=30)
            return await copy_folder(sb.fs, src, unit, stage, f"the microVM {self.name}")

        return self._sdk.call(go(), f"copy {src} out of the microVM {self.name}")

    def restart_server(self, spec: LaunchSpec) -> None:
        """:meth:`Runtime.restart_server` as ``docker restart`` restarts a container: the microVM stopped
        and booted again, its server launched as :meth:`start` does. Relaunching the job alone would not
        do: a job that died before passing SIGTERM on leaves what it started running, holding opencode's
        database and ports."""
        self.stop()
        self.start(spec)

    def _relaunch_server(self, spec: LaunchSpec) -> None:
        """The server job launched again in the running microVM (put back after :meth:`open_for_copy`
        stopped it, with its SIGTERM and grace); a microVM that stopped meanwhile is booted as
        :meth:`start` does."""
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
        """:meth:`Runtime.stop`: the microVM stopped, everything kept; False when it was not running."""
        from microsandbox import SandboxStatus

        async def go() -> bool:
            handle = await self._handle()
            if handle is None or handle.status in (SandboxStatus.STOPPED, SandboxStatus.CRASHED, SandboxStatus.CREATED):
                return False
            await handle.stop(timeout=15)
            return True

        return self._sdk.call(go(), f"stop {self.name}")

    def remove(self) -> bool:
        """:meth:`Runtime.remove`: the microVM destroyed (gracefully, else by force) and the job's record
        forgotten; False when there was none."""
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
        """msb's ``exec.log`` of the sandbox, and the `logs` commands."""
        return f"{logs.sandbox_log_dir(self.name) / 'exec.log'} (or: invoke logs; system: invoke logs --system)"

    def log_tail(self, lines: int = 40) -> list[str]:
        """The server job's last ``lines`` lines, else the sandbox's own log's; [] when there is no
        sandbox or the SDK cannot read them (never raises the SDK's errors)."""
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

    def stream_logs(
        self, *, follow: bool = False, tail: int | None = None, since_s: float | None = None, system: bool = False
    ) -> Iterator[str]:
        """The server job's log (``follow``: :func:`logs.follow_job`), or the system log (``follow``: the
        SDK's stream through :func:`logs.follow_system`). Raises WorkflowError when there is no such
        sandbox or server job, or the SDK cannot read them."""
        from microsandbox import LogReadSource

        since_ms = int((time.time() - since_s) * 1000) if since_s is not None else None

        async def read_system() -> list[str]:
            entries = await (await self._existing()).logs(tail=tail, since_ms=since_ms, sources=[LogReadSource.SYSTEM])
            return logs.system_lines(entries)

        async def open_system():
            return await (await self._existing()).log_stream(
                sources=[LogReadSource.SYSTEM], since_ms=since_ms, follow=True
            )

        async def server_job():
            job = await self._server_job(await self._existing())
            if job is None:
                raise WorkflowError(
                    f"no server job in {self.name} (the SDK lists none, and "
                    f"{self.state_dir / RECORD_FILE} names none): run `invoke up`"
                )
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
        """:meth:`Runtime.exec` in the running microVM through the SDK."""

        async def go() -> tuple[int, str]:
            sb = await (await self._existing()).connect(timeout=10)
            out = await sb.exec(argv[0], argv[1:], timeout=timeout)
            return out.exit_code, out.stdout_text + out.stderr_text

        return self._sdk.call(go(), f"run {argv[0]} in {self.name}")
