"""What ``up`` boots and where: the runtime choice, the exposure and network checks and the launch spec.

:func:`launch_spec` is a function of the settings, the runtime and the tokens only (nothing is
booted or written); its ``fingerprint`` is what ``up`` compares with the running sandbox's to
decide whether to recreate it, and what ``status`` shows as "settings current".
"""

from __future__ import annotations

from openwork_sandbox.config import GUEST_PORT, SPEC_BY_FIELD, Settings, is_loopback
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, WorkflowError
from openwork_sandbox.runtimes import RUNNING, LaunchSpec, Runtime
from openwork_sandbox.runtimes.base import GUEST_DATA, GUEST_WORKSPACE, NetworkSupport
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


def placed(settings: Settings, rt: Runtime) -> Settings:
    """``settings`` with the connect host where ``rt`` runs the sandbox when that is another host (a
    swarm node, chosen now for a new sandbox: ``Runtime.place``), unless OPENWORK_CONNECT_HOST is set
    (a name clients use for it); unchanged for a runtime that runs it here. WorkflowError (one line)
    when no node fits."""
    import dataclasses

    from openwork_sandbox.registry.client import index_platforms
    from openwork_sandbox.state.pin import pinned_image

    image = pinned_image(settings)
    address = rt.place(image, settings.cpus, settings.memory, settings.port, lambda: index_platforms(settings, image))
    if address is None or settings.origin("connect_host") != "default":
        return settings
    return dataclasses.replace(settings, connect_host=address)


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


# what each OPENWORK_MICROSANDBOX_NETWORK policy lets the sandbox reach, where a runtime holds it
POLICY_REACH = {
    "allow-all": "the host, the LAN and the internet",
    "public-only": "the internet only",
    "none": "nothing outbound",
}
# said by `up` and `doctor` when the sandbox runs in the host's own network namespace (Docker host networking)
SHARED_NETWORK = (
    "the agent shares the host's network (host networking): it reaches the host's loopback services and the "
    "LAN as any program on the host does"
)


def network_refusal(
    settings: Settings, kind: str, support: NetworkSupport, microvm: tuple[bool, str]
) -> tuple[str, str] | None:
    """``(what cannot be enforced and why, what to do)`` when the runtime ``kind``, holding ``support``
    here, cannot hold OPENWORK_MICROSANDBOX_NETWORK; None when it holds it. ``microvm`` is
    ``choice.microvm_verdict`` for this host: where microVMs boot, the way out is the microsandbox
    runtime (it holds every policy); else it is named as the runtime that would. Pure."""
    policy = settings.network
    if policy in support.enforced:
        return None
    setting = f"OPENWORK_MICROSANDBOX_NETWORK={policy} (from {settings.origin('network')})"
    vm_boots, vm_why = microvm
    if settings.runtime != "auto":
        what = f"{setting} cannot be enforced by the {kind} runtime: {support.limit}"
    elif vm_boots:
        what = (
            f"{setting} cannot be enforced here: auto keeps the {kind} runtime this sandbox uses, and {support.limit}"
        )
    else:
        what = (
            f"{setting} cannot be enforced here: microVMs cannot boot here ({vm_why}), so auto chose the {kind} "
            f"runtime, and {support.limit}"
        )
    if vm_boots:
        way = "use the microsandbox runtime, which enforces it (OPENWORK_MICROSANDBOX_RUNTIME=microsandbox)"
    elif settings.runtime != "auto":
        way = f"the microsandbox runtime enforces it, on a host where microVMs boot (not this one: {vm_why})"
    else:
        way = "the microsandbox runtime enforces it, on a host where microVMs boot"
    return what, f"{way}; or set OPENWORK_MICROSANDBOX_NETWORK=allow-all"


def check_network(settings: Settings, rt: Runtime) -> str | None:
    """Stop ``up`` in one line (WorkflowError, exit 2) when ``rt`` cannot hold OPENWORK_MICROSANDBOX_NETWORK
    on this host (:func:`network_refusal`; a sandbox of this name that runs now is named too, since it
    does not hold it either); else :data:`SHARED_NETWORK` when the sandbox shares the host's network, or
    None. Asks the runtime only: nothing is created or changed."""
    support = rt.network_support()
    if settings.network in support.enforced:
        return SHARED_NETWORK if support.shares_host else None
    from openwork_sandbox.runtimes.probe import microvm_support

    what, way = network_refusal(settings, rt.kind, support, microvm_support())
    running = ""
    if rt.status().state == RUNNING:
        running = f"; the sandbox {settings.name} that runs now does not hold it either: `invoke down` stops it"
    raise WorkflowError(f"{what}; {way}{running}", exit_code=EXIT_BAD_SETTINGS)


CURRENT = object()  # launch_spec's server_cert default: the certificate there is now (state.tls.current)


def server_tls(cert) -> dict[str, str]:
    """The environment through which the image's openwork-server gate terminates TLS with ``cert`` (a
    :class:`.state.tls.ServerCert`, None: TLS off): it names the files ``state.tls.deliver`` writes into
    the server's read-only secrets folder (``state.secrets``); the key is never in any environment."""
    if cert is None:
        return {}
    from openwork_sandbox.state import tls
    from openwork_sandbox.state.secrets import SERVER_SECRETS_GUEST

    return {
        "OPENWORK_TLS": "1",
        "OPENWORK_TLS_CERT_FILE": f"{SERVER_SECRETS_GUEST}/{tls.CERT_FILE}",
        "OPENWORK_TLS_KEY_FILE": f"{SERVER_SECRETS_GUEST}/{tls.KEY_FILE}",
    }


def launch_spec(
    settings: Settings, kind: str, token: str, host_token: str, secrets=None, server_cert=CURRENT
) -> LaunchSpec:
    """What to boot for ``kind`` with these tokens. ``secrets`` (:class:`.state.secrets.SandboxSecrets`,
    gathered by ``up``; else what the settings would deliver now) go in through a read-only mount,
    never the environment; so does ``server_cert`` (``state.tls.ensure``'s; else the one there is
    now). The fingerprint covers every setting that needs a new sandbox to change."""
    # imported on call: the registry client and the pin are needed only when a spec is made
    from openwork_sandbox.registry.client import index_platforms, manifest_platform, pull_access_for_image
    from openwork_sandbox.state import secrets as sandbox_secrets
    from openwork_sandbox.state import tls
    from openwork_sandbox.state.pin import pinned_image

    secrets = sandbox_secrets.current(settings) if secrets is None else secrets
    server_cert = tls.current(settings) if server_cert is CURRENT else server_cert
    tls_env = server_tls(server_cert)

    env = {
        **sandbox_secrets.token_env(),  # the tokens themselves are files under the server's private folder
        "OPENWORK_APPROVAL_MODE": settings.approval_mode,
        "OPENWORK_CONNECT_HOST": settings.connect_host,
        "OPENWORK_LAUNCH": settings.launch,  # the image's entrypoint: orchestrator or server
    }
    if settings.offline:
        env["OPENCODE_DISABLE_MODELS_FETCH"] = "1"
    heap = SPEC_BY_FIELD["opencode_heap"]
    if settings.opencode_heap:
        env[heap.env] = str(settings.opencode_heap)  # opencode-gate sizes opencode's heap by it
    image = pinned_image(settings)  # the digest push-image pushed from here, else the tag
    env.update(persist.guest_env())  # HOME under /data, whatever the image's entrypoint does
    env.update(tls_env)
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
            **({"opencode_heap": settings.opencode_heap} if settings.opencode_heap != heap.default else {}),
            **({"launch": settings.launch} if settings.launch != "orchestrator" else {}),
            **({"secrets": secrets.digests()} if not secrets.empty else {}),
            **({"tls": server_cert.digest() if server_cert else "none yet"} if settings.tls_on else {}),
        }
    )
    mounts[sandbox_secrets.STORE_GUEST] = sandbox_secrets.store_dir(settings).resolve()
    readonly = {sandbox_secrets.SERVER_SECRETS_GUEST: sandbox_secrets.server_secrets_dir(settings).resolve()}
    if not secrets.empty:
        readonly[sandbox_secrets.GUEST_DIR] = sandbox_secrets.host_dir(settings).resolve()
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
        index_platforms=lambda: index_platforms(settings, image),
        image_platform=lambda: manifest_platform(settings, image),
        network=settings.network,
        readonly_mounts=readonly,
        marks=ownership.marks(
            str(settings.sandbox_state_dir), ephemeral=settings.ephemeral, max_duration=settings.ephemeral_max_duration
        ),
        max_duration=settings.ephemeral_max_duration if settings.ephemeral else None,
    )
