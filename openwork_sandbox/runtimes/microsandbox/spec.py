"""A :class:`~openwork_sandbox.runtimes.base.LaunchSpec` as the microsandbox SDK's arguments, and
what the host's folders must offer for them.

- :func:`create_kwargs` is everything ``Sandbox.create_with_progress(name, **kwargs)`` gets: image,
  vCPUs, memory, env (:func:`guest_env`), labels (the fingerprint and the sandbox's marks), bind
  mounts, the network (:func:`network_config`), the pull policy and the registry's arguments.
- :func:`folders_without_xattrs` and :func:`no_xattr_message`: microsandbox needs user extended
  attributes on every bind's folder and in its own home, and says so only in obscure words; these
  name the folder and the way out before a boot.

The SDK is imported inside the functions.
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from typing import Any

from openwork_sandbox.registry.access import PullAccess
from openwork_sandbox.runtimes.base import HOST_ADDRESS_VAR, LaunchSpec
from openwork_sandbox.runtimes.microsandbox.pull import sdk_registry_options
from openwork_sandbox.runtimes.microsandbox.sdk import msb_home

LABEL_FP = "openwork-sandbox.fingerprint"  # the label holding the launch fingerprint: what the sandbox was made with
HOST_NAME = "host.microsandbox.internal"  # the host's loopback as the microVM sees it (allow-all only)
MARK_PREFIX = "openwork-sandbox."  # + a mark's key (state.ownership.marks) = its label
XATTR_MARK = "requires xattr write support"  # the SDK's words for a folder without extended attributes
XATTR_PROBE = "user.openwork-sandbox.probe"  # the attribute written and removed to test a folder
# the OPENWORK_MICROSANDBOX_NETWORK policies network_config turns into the SDK's policy: every one
NETWORK_POLICIES = frozenset({"allow-all", "public-only", "none"})


def network_config(spec: LaunchSpec):
    """The SDK's ``Network`` for ``spec``: its port published on its bind address, and the policy of
    OPENWORK_MICROSANDBOX_NETWORK: ``allow-all`` (upstream's choice: the host and the LAN, e.g. a
    model server, as from the Docker runtime), ``public-only`` (the SDK's own default) or ``none``
    (nothing outbound; the published port still answers). Raises KeyError for a policy not in
    :data:`NETWORK_POLICIES` (settings allow only these three)."""
    from microsandbox import Network, NetworkPolicy, NetworkProfile, PortBinding

    policies = {
        "allow-all": NetworkPolicy.allow_all,
        "public-only": lambda: NetworkPolicy.from_profiles([NetworkProfile.PUBLIC]),
        "none": NetworkPolicy,  # deny egress, allow ingress (to the published port)
    }
    return Network(
        policy=policies[spec.network](),
        ports=[PortBinding.tcp(spec.host_port, spec.guest_port, bind=spec.bind_address)],
    )


def guest_env(spec: LaunchSpec) -> dict[str, str]:
    """The microVM's environment: the spec's, and where the host is (OPENWORK_HOST_ADDRESS)."""
    return {**spec.env, HOST_ADDRESS_VAR: HOST_NAME}


def create_kwargs(spec: LaunchSpec) -> dict[str, Any]:
    """Everything ``Sandbox.create_with_progress(name, **kwargs)`` gets for ``spec``. No I/O but
    ``spec.pull_access()`` (the registry's login and CAs); it replaces a sandbox of the same name and
    boots it detached. ``pull_always`` pulls again (a tag may have moved); ``max_duration`` makes
    microsandbox itself stop an ephemeral sandbox when its time is up, whatever its job does."""
    from microsandbox import PullPolicy, Volume

    return dict(
        image=spec.image,
        cpus=math.ceil(spec.cpus),  # whole vCPUs (a fraction is a Docker limit)
        memory=spec.memory_mib,
        env=guest_env(spec),
        labels={LABEL_FP: spec.fingerprint, **{MARK_PREFIX + key: value for key, value in spec.marks.items()}},
        volumes={
            **{guest: Volume.bind(str(host)) for guest, host in spec.mounts.items()},
            **{guest: Volume.bind(str(host), readonly=True) for guest, host in spec.readonly_mounts.items()},
        },
        network=network_config(spec),
        pull_policy=PullPolicy.ALWAYS if spec.pull_always else PullPolicy.IF_MISSING,
        **sdk_registry_options(spec.pull_access() if spec.pull_access else PullAccess(spec.registry_plain_http)),
        replace=True,
        detached=True,
        **({"max_duration": float(spec.max_duration)} if spec.max_duration else {}),
    )


def takes_no_xattrs(folder: Path) -> bool:
    """Whether the filesystem of ``folder`` (or of its nearest existing parent) refuses user extended
    attributes (ENOTSUP). Writes and removes one attribute; any other error (e.g. no permission)
    counts as taking them, so only a sure refusal is reported."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        os.setxattr(folder, XATTR_PROBE, b"1")
        os.removexattr(folder, XATTR_PROBE)
    except OSError as exc:
        return exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP)
    return False


def folders_without_xattrs(spec: LaunchSpec) -> tuple[list[Path], bool]:
    """(the bind sources of ``spec``, whether MSB_HOME) on a filesystem that takes no user extended
    attributes (tmpfs before Linux 6.6, ramfs, some network filesystems): microsandbox needs them on
    a bind's folder and in its own home, where the microVM's root filesystem is put together.
    ``([], False)`` where the platform has no xattr calls."""
    if not hasattr(os, "setxattr"):
        return [], False
    return ([Path(host) for host in spec.mounts.values() if takes_no_xattrs(Path(host))], takes_no_xattrs(msb_home()))


def no_xattr_message(binds: list[Path], home: bool) -> str:
    """One line naming what lacks extended attributes (``binds``, and MSB_HOME when ``home``) and
    the setting that moves it to a filesystem that has them."""
    where = "(e.g. tmpfs before Linux 6.6, ramfs), which microVMs need; "
    if binds:
        return (
            f"microsandbox cannot bind {', '.join(str(p) for p in binds)}: its filesystem keeps no extended "
            f"attributes {where}put the state on ext4, xfs or btrfs: set OPENWORK_STATE_DIR (or "
            f"OPENWORK_MICROSANDBOX_WORKSPACE_DIR / OPENWORK_MICROSANDBOX_DATA_DIR) to a folder there"
            + (f"; microsandbox's own folder {msb_home()} too: set MSB_HOME to one there" if home else "")
        )
    return (
        f"microsandbox cannot put the microVM's root filesystem together in its own folder {msb_home()} "
        f"(MSB_HOME): that filesystem keeps no extended attributes {where}set MSB_HOME to a folder on ext4, "
        f"xfs or btrfs"
    )
