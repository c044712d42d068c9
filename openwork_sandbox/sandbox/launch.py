"""What ``up`` boots and where: the runtime choice, the exposure check and the launch spec.

:func:`launch_spec` is a function of the settings, the runtime and the tokens only (nothing is
booted or written); its ``fingerprint`` is what ``up`` compares with the running sandbox's to
decide whether to recreate it, and what ``status`` shows as "settings current".
"""

from __future__ import annotations

from openwork_sandbox.config import GUEST_PORT, Settings, is_loopback
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, WorkflowError
from openwork_sandbox.runtimes import LaunchSpec
from openwork_sandbox.runtimes.base import GUEST_DATA, GUEST_WORKSPACE
from openwork_sandbox.state import ownership, persist
from openwork_sandbox.state.store import MIN_PUBLIC_TOKEN_LEN, SandboxState, fingerprint, secret_digest


def choose_runtime(settings: Settings, state: SandboxState | None = None) -> tuple[str, str]:
    """``(runtime, why)`` for ``up`` by the one rule (:mod:`.runtimes.choice`): ``auto`` keeps the
    runtime this sandbox already uses, else microsandbox where microVMs boot, else Docker. A runtime
    this host cannot run (e.g. an explicit ``microsandbox`` without KVM) fails here, before any boot."""
    from openwork_sandbox.runtimes.probe import choose_runtime as choose

    recorded = (state or SandboxState(settings)).record().get("runtime")
    picked = choose(settings.runtime, recorded)
    if picked.kind is None or not picked.usable:
        raise WorkflowError(picked.reason)
    if settings.runtime != "auto":
        return picked.kind, f"{picked.reason} (OPENWORK_MICROSANDBOX_RUNTIME from {settings.origin('runtime')})"
    return picked.kind, picked.reason


def check_exposure(settings: Settings) -> None:
    """A port published beyond loopback needs tokens of at least ``MIN_PUBLIC_TOKEN_LEN`` characters:
    else WorkflowError, exit 2, naming the setting (never its value)."""
    if is_loopback(settings.bind_address):
        return
    for env, value in (("OPENWORK_TOKEN", settings.token), ("OPENWORK_HOST_TOKEN", settings.host_token)):
        if value and len(value) < MIN_PUBLIC_TOKEN_LEN:
            raise WorkflowError(
                f"{env} has {len(value)} characters but OPENWORK_CONNECT_HOST={settings.connect_host} publishes the port "
                f"beyond loopback: use at least {MIN_PUBLIC_TOKEN_LEN} characters, or unset it to have one generated",
                exit_code=EXIT_BAD_SETTINGS,
            )


def launch_spec(settings: Settings, kind: str, token: str, host_token: str, secrets=None) -> LaunchSpec:
    """What to boot for ``kind`` with these tokens. ``secrets`` (:class:`.state.secrets.SandboxSecrets`,
    gathered by ``up``; else what the settings would deliver now) go in through a read-only mount,
    never the environment. The fingerprint covers every setting that needs a new sandbox to change."""
    # imported on call: the registry client and the pin are needed only when a spec is made
    from openwork_sandbox.registry.client import pull_access_for_image
    from openwork_sandbox.state import secrets as sandbox_secrets
    from openwork_sandbox.state.pin import pinned_image

    secrets = sandbox_secrets.current(settings) if secrets is None else secrets

    env = {
        "OPENWORK_TOKEN": token,
        "OPENWORK_HOST_TOKEN": host_token,
        "OPENWORK_APPROVAL_MODE": settings.approval_mode,
        "OPENWORK_CONNECT_HOST": settings.connect_host,
    }
    if settings.offline:
        env["OPENCODE_DISABLE_MODELS_FETCH"] = "1"
    image = pinned_image(settings)  # the digest push-image pushed from here, else the tag
    env.update(persist.guest_env())  # HOME under /data, whatever the image's entrypoint does
    mounts = {GUEST_WORKSPACE: settings.workspace_dir.resolve(), GUEST_DATA: settings.data_dir.resolve()}
    fp = fingerprint(
        {
            "runtime": kind,
            "image": image,
            "port": settings.port,
            "bind": settings.bind_address,
            "connect_host": settings.connect_host,
            "mounts": {k: str(v) for k, v in mounts.items()},
            "approval": settings.approval_mode,
            "offline": settings.offline,
            "cpus": settings.cpus,
            "memory": settings.memory,
            "token": secret_digest(token),
            "host_token": secret_digest(host_token),
            "layout": persist.LAYOUT,
            # only when not the default, so sandboxes made before this setting existed are kept
            **({"network": settings.network} if settings.network != "allow-all" else {}),
            **({"secrets": secrets.digests()} if not secrets.empty else {}),
        }
    )
    readonly = {} if secrets.empty else {sandbox_secrets.GUEST_DIR: sandbox_secrets.host_dir(settings).resolve()}
    return LaunchSpec(
        name=settings.name,
        image=image,
        host_port=settings.port,
        bind_address=settings.bind_address,
        guest_port=GUEST_PORT,
        mounts=mounts,
        env=env,
        cpus=settings.cpus,
        memory_mib=settings.memory,
        registry_plain_http=settings.registry_plain_http,
        fingerprint=fp,
        pull_always=settings.replace,
        pull_access=lambda: pull_access_for_image(settings, image),
        network=settings.network,
        readonly_mounts=readonly,
        marks=ownership.marks(
            str(settings.sandbox_state_dir), ephemeral=settings.ephemeral, max_duration=settings.ephemeral_max_duration
        ),
        max_duration=settings.ephemeral_max_duration if settings.ephemeral else None,
    )
