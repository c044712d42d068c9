"""The one place HTTP sessions are made: which traffic may go through a proxy, which CAs are trusted.

- :func:`sandbox_session`: traffic to the sandbox (loopback or the connect host). Never through a
  proxy, whatever ``HTTP_PROXY``/``HTTPS_PROXY`` say, and no ``.netrc`` or ``REQUESTS_CA_BUNDLE``
  from the environment: the sandbox is ours and close by. Over https its certificate is verified
  (chain and host name) against ``verify``: a CA bundle's path (the sandbox's own CA,
  ``OPENWORK_TLS_CA``) or True for the system CAs; never switched off.
- :func:`sandbox_get`: one GET to the sandbox with the same rules, on the standard library's
  ``http.client``, for the quick checks of ``up``, ``status`` and ``doctor`` (which then need not
  import requests). A certificate that does not verify raises :class:`CertificateRejected` (one
  line, :func:`certificate_problem`), not one of :data:`SANDBOX_GET_ERRORS`: no wait outlasts it.
- :func:`outside_session`: traffic to the npm registry and to image registries. Honours
  ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` as curl and Docker do (requests' ``trust_env``), and
  trusts the system CAs plus, when given, a CA bundle (``verify=path``). A loopback host
  (``127.0.0.1``, ``::1``, ``localhost``: the local registry) is never sent through a proxy, as
  Docker's own HTTP stack does; ``NO_PROXY`` need not list it.

Every module that sends HTTP gets its session (or its one-shot GET) here; none builds a
``requests.Session`` itself. requests is imported only when a session is made.
"""

from __future__ import annotations

import functools
import http.client
import os
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from openwork_sandbox.core.errors import WorkflowError

if TYPE_CHECKING:
    import requests

USER_AGENT = "openwork-sandbox"
# what sandbox_get raises when no HTTP answer came (refused, reset, timeout, not HTTP)
SANDBOX_GET_ERRORS = (OSError, http.client.HTTPException, ValueError)


def _loopback_url(url: str | None) -> bool:
    from openwork_sandbox.config import is_loopback

    try:
        host = urlsplit(url or "").hostname
    except ValueError:
        return False
    return bool(host) and is_loopback(host)


class NoAnswer(TimeoutError):
    """The server accepted the connection but sent no HTTP answer (nor finished a TLS handshake) in time."""


class CertificateRejected(WorkflowError):
    """The server's TLS certificate did not verify (an unknown CA, another host's name, expired)."""


def _verify_error(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error behind ``exc`` (requests wraps it in urllib3's), or None."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        inner = [a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)]
        exc = getattr(exc, "reason", None) or (inner[0] if inner else None) or exc.__cause__ or exc.__context__
        seen += 1
    return None


def certificate_problem(exc: BaseException, url: str, verify: bool | str) -> str | None:
    """One line when ``exc`` is (or wraps) a failed certificate verification, else None: the
    server, OpenSSL's reason, what it was checked against and what to do."""
    found = _verify_error(exc)
    if found is None:
        return None
    parts = urlsplit(url)
    against = f"the CA bundle {verify}" if isinstance(verify, str) else "the system CAs"
    reason = (found.verify_message or found.reason or "verification failed").rstrip(".")
    return (
        f"the TLS certificate of {parts.scheme}://{parts.netloc} was rejected ({reason}; checked against {against}): "
        "set OPENWORK_TLS_CA to the CA bundle that signed it, or connect by a name the certificate holds"
    )


@functools.lru_cache(maxsize=8)
def _tls_context(cafile: str | None, _stamp: tuple[int, int] | None) -> ssl.SSLContext:
    """A client context that verifies the chain and the host name (``_stamp``: the file's size and
    mtime, so a CA made again is read again)."""
    return ssl.create_default_context(cafile=cafile)


def tls_context(verify: bool | str) -> ssl.SSLContext:
    """The client context for ``verify`` (True: the system CAs; a path: that CA bundle)."""
    if verify is True:
        return _tls_context(None, None)
    st = os.stat(verify)  # a missing bundle: OSError, as nothing answering
    return _tls_context(str(verify), (st.st_size, st.st_mtime_ns))


def sandbox_session(*, verify: bool | str = True, user_agent: str = USER_AGENT) -> requests.Session:
    """A session for the sandbox's own server: no proxy, nothing read from the environment, https
    verified against ``verify`` (a CA bundle's path, or True: the system CAs)."""
    import requests

    if verify is False:
        raise ValueError("the sandbox's certificate is always verified")
    session = requests.Session()
    session.trust_env = False
    session.verify = verify
    session.headers["User-Agent"] = user_agent
    return session


def sandbox_get(
    url: str, *, headers: dict[str, str] | None = None, timeout_s: float, verify: bool | str = True
) -> tuple[int, bytes]:
    """``(status, body)`` of one GET to the sandbox, never through a proxy, https verified against
    ``verify``; raises one of :data:`SANDBOX_GET_ERRORS` when no HTTP answer came (:class:`NoAnswer`
    when the connection was accepted and nothing answered within ``timeout_s``), and
    :class:`CertificateRejected` when the certificate did not verify."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout_s, context=tls_context(verify)
        )
    elif parts.scheme == "http":
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    else:
        raise ValueError(f"not an http(s) URL: {url}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("GET", path, headers={"User-Agent": USER_AGENT, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except ssl.SSLCertVerificationError as exc:
        raise CertificateRejected(certificate_problem(exc, url, verify) or str(exc)) from None
    except TimeoutError:
        if conn.sock is not None:  # connected: the server holds the request
            raise NoAnswer(f"{parts.netloc} accepted the connection and did not answer within {timeout_s:g}s") from None
        raise
    finally:
        conn.close()


@functools.cache
def _outside_session_class() -> type:
    """The session class of :func:`outside_session`, made once (requests is imported only here)."""
    import requests

    class OutsideSession(requests.Session):
        """Proxies from the environment, except for loopback hosts (reached directly); and its own CA
        bundle wins over ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, which requests' ``trust_env``
        would otherwise let replace ``session.verify`` (dropping a registry's private CA)."""

        def merge_environment_settings(self, url, proxies, stream, verify, cert):
            merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if _loopback_url(url):
                merged["proxies"] = {}
            if verify is None and self.verify is not True:
                merged["verify"] = self.verify
            return merged

        def rebuild_proxies(self, prepared_request, proxies):  # a redirect
            if _loopback_url(prepared_request.url):
                prepared_request.headers.pop("Proxy-Authorization", None)
                return {}
            return super().rebuild_proxies(prepared_request, proxies)

    return OutsideSession


def outside_session(*, verify: bool | str = True, user_agent: str = USER_AGENT) -> requests.Session:
    """A session for registries on the network: proxies from the environment, system CAs (or ``verify``)."""
    session = _outside_session_class()()
    session.trust_env = True
    session.verify = verify
    session.headers["User-Agent"] = user_agent
    return session
