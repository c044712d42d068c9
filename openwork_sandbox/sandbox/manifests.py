"""``invoke manifests``: the configured sandbox as Kubernetes objects (:mod:`.kube`), on stdout as one
multi-document YAML stream or, with ``--output DIR``, one file per object.

It gathers what ``up`` would deliver (the sandbox's tokens, made and kept in ``.state/<name>/`` when
missing; the TLS certificate, made when TLS is on; the provider keys and opencode's config; opencode's
password, which the orchestrator would make and the pod's two containers share) and boots nothing. Errors, before anything is written: a name Kubernetes cannot take, an unknown ``--format`` or
an unset OPENWORK_SANDBOX_ENV variable (SettingsError, exit 2); no pushed digest for the image, or an
``--output`` folder holding files this task did not write (WorkflowError).
"""

from __future__ import annotations

from pathlib import Path

from openwork_sandbox.config import GUEST_PORT, Settings
from openwork_sandbox.core import console
from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, SettingsError, WorkflowError
from openwork_sandbox.sandbox import kube

FORMATS = ("kubernetes", "agent-sandbox")
MARK = "# written by `invoke manifests` (openwork-sandbox); rewritten on the next run\n"


def gather(settings: Settings) -> kube.KubeSandbox:
    """The sandbox's parts for :mod:`.kube`, made as ``up`` makes them (tokens, certificate)."""
    from openwork_sandbox.sandbox.launch import launch_spec
    from openwork_sandbox.state import secrets as sandbox_secrets
    from openwork_sandbox.state import tls
    from openwork_sandbox.state.pin import pinned_image
    from openwork_sandbox.state.store import SandboxState

    problem = kube.name_problem(settings.name)
    if problem:
        raise SettingsError([problem])
    image = pinned_image(settings)
    if "@sha256:" not in image:
        raise WorkflowError(
            f"OPENWORK_MICROSANDBOX_IMAGE={settings.image} was never pushed from here, and the manifests name the image by "
            "digest: run `invoke push-image` first (or set OPENWORK_MICROSANDBOX_IMAGE to repository@sha256:...)"
        )
    secrets = sandbox_secrets.gather(settings)
    tls.check(settings)
    token, host_token = SandboxState(settings).tokens()
    cert, made = tls.ensure(settings)
    if made:
        console.info(made)
    spec = launch_spec(settings, "kubernetes", token, host_token, secrets, cert)
    values = {"OPENWORK_TOKEN": token, "OPENWORK_HOST_TOKEN": host_token}
    server_files = {name: (values[var] + "\n").encode() for var, name in sandbox_secrets.TOKEN_FILES.items()}
    if cert is not None:
        server_files[tls.CERT_FILE], server_files[tls.KEY_FILE] = cert.cert_pem, cert.key_pem
    password = opencode_password(host_token)
    return kube.KubeSandbox(
        name=settings.name,
        image=image,
        port=GUEST_PORT,
        env=dict(spec.env),
        cpus=settings.cpus,
        memory_mib=settings.memory,
        network=settings.network,
        tls=cert is not None,
        marks=dict(spec.marks),
        server_files=server_files,
        agent_files={name: text.encode() for name, text in secrets.files().items()},
        shared_files={kube.OPENCODE_PASSWORD: (password + "\n").encode()},
    )


def opencode_password(host_token: str) -> str:
    """opencode's basic-auth password in the pod: an HMAC of the host token, so a render is the same
    each time and changes with it; knowing it (the agent does) tells nothing of the host token."""
    import hashlib
    import hmac

    return hmac.new(host_token.encode(), b"openwork-sandbox kubernetes opencode password", hashlib.sha256).hexdigest()


def ours(folder: Path) -> bool:
    """Whether every entry of ``folder`` is a file this task wrote (named *.yaml, starting with :data:`MARK`)."""
    for entry in folder.iterdir():
        if entry.is_symlink() or not entry.is_file() or entry.suffix != ".yaml":
            return False
        with entry.open("rb") as fh:
            if fh.read(len(MARK.encode())) != MARK.encode():
                return False
    return True


def check_output(output: Path) -> None:
    """Refuse (exit 2, one line) a path that is not a folder, or a folder holding anything but this task's files."""
    if output.exists() and (output.is_symlink() or not output.is_dir()):
        raise WorkflowError(f"--output {output} is not a folder: name a new or empty folder", EXIT_BAD_SETTINGS)
    if output.is_dir() and not ours(output):
        raise WorkflowError(
            f"--output {output} holds files `invoke manifests` did not write: name a new or empty folder",
            EXIT_BAD_SETTINGS,
        )


def write_folder(output: Path, objs: list[dict]) -> list[Path]:
    """One file per object (0600: the Secret's holds the tokens); this task's files no longer wanted go."""
    from openwork_sandbox.core.files import private_dir, write_atomic

    private_dir(output)
    wanted = {kube.file_name(i, o): o for i, o in enumerate(objs, 1)}
    for old in output.iterdir():
        if old.name not in wanted:
            old.unlink()
    paths = []
    for name, obj in wanted.items():
        write_atomic(output / name, MARK + kube.document(obj), mode=0o600)
        paths.append(output / name)
    return paths


def manifests(settings: Settings, *, output: str | None = None, format: str = "kubernetes") -> list[dict]:
    """Render the sandbox (``format``: :data:`FORMATS`) to stdout, or into ``output``; returns the objects."""
    if format not in FORMATS:
        raise SettingsError([f"--format {format} is not one of {', '.join(FORMATS)}"])
    folder = Path(output).expanduser() if output else None
    if folder is not None:
        check_output(folder)
    k = gather(settings)
    objs = kube.agent_sandbox(k) if format == "agent-sandbox" else kube.objects(k)
    kinds = ", ".join(o["kind"] for o in objs)
    if folder is None:
        console.emit_text(kube.stream(objs))
        console.info(f"manifests: {kinds} for {settings.name} ({k.image}); the Secret holds its tokens")
        return objs
    check_output(folder)  # again: the folder may have changed while the parts were gathered
    write_folder(folder, objs)
    console.info(f"manifests: {len(objs)} files in {folder} ({kinds}; {k.image}): kubectl apply -f {folder}")
    return objs
