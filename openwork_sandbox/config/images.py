"""Image references: ``[registry/]repository[:tag][@sha256:digest]``, parsed into :class:`ImageRef`.

The grammar is Docker's (distribution/reference), simplified: the first part is a registry only if it
has a '.' or ':', is ``localhost`` or is a bracketed IPv6 address, and the only digest accepted is sha256.
"""

from __future__ import annotations

import dataclasses
import re

from openwork_sandbox.config.values import Invalid, is_loopback

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
IMAGE_RE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
_EXAMPLE = "expected an image reference like 127.0.0.1:5000/openwork-microsandbox:dev"


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """A parsed image reference; ``str()`` gives it back in its written form."""

    registry: str | None  # None: Docker Hub (docker.io)
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, raw: str) -> ImageRef:
        """The reference ``raw`` (surrounding blanks ignored); :class:`~.values.Invalid` if it is none."""
        m = IMAGE_RE.match(raw.strip())
        if not m:
            raise Invalid(_EXAMPLE)
        domain, path = m.group("domain"), m.group("path")
        # "foo/bar": "foo" is a registry only if it looks like a host (has '.', ':' or is localhost)
        if domain and not ("." in domain or ":" in domain or domain == "localhost" or domain.startswith("[")):
            path, domain = f"{domain}/{path}", None
            if not re.fullmatch(rf"{_COMPONENT}(?:/{_COMPONENT})*", path):
                raise Invalid(_EXAMPLE)
        return cls(domain, path, m.group("tag"), m.group("digest"))

    @property
    def reference(self) -> str:
        """The tag, else the digest, else ``latest``: what a v2 manifest URL wants."""
        return self.tag or self.digest or "latest"

    @property
    def registry_host(self) -> str:
        """The registry's ``host[:port]``; ``docker.io`` when none is written."""
        return self.registry or "docker.io"

    @property
    def registry_is_loopback(self) -> bool:
        """Whether the registry is on this machine (its host, port aside, is loopback)."""
        host = (
            self.registry_host.rsplit(":", 1)[0].strip("[]")
            if not self.registry_host.startswith("[")
            else self.registry_host.split("]")[0].strip("[")
        )
        return is_loopback(host)

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}" if self.registry else self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def image(raw: str) -> str:
    """The parser of an image setting: the reference as written (stripped) once :meth:`ImageRef.parse` accepts it."""
    ImageRef.parse(raw)
    return raw.strip()
