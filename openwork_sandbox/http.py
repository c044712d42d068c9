"""The one place HTTP sessions are made: which traffic may go through a proxy, which CAs are trusted.

- :func:`sandbox_session`: traffic to the sandbox (loopback or the connect host). Never through a
  proxy, whatever ``HTTP_PROXY``/``HTTPS_PROXY`` say, and no ``.netrc`` or ``REQUESTS_CA_BUNDLE``
  from the environment: the sandbox is ours and close by.
- :func:`outside_session`: traffic to the npm registry and to image registries. Honours
  ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` as curl and Docker do (requests' ``trust_env``), and
  trusts the system CAs plus, when given, a CA bundle (``verify=path``).

Every module that sends HTTP gets its session here; none builds a ``requests.Session`` itself.
"""

from __future__ import annotations

import requests

USER_AGENT = "openwork-sandbox"


def sandbox_session(*, user_agent: str = USER_AGENT) -> requests.Session:
    """A session for the sandbox's own server: no proxy, nothing read from the environment."""
    session = requests.Session()
    session.trust_env = False
    session.headers["User-Agent"] = user_agent
    return session


def outside_session(*, verify: bool | str = True, user_agent: str = USER_AGENT) -> requests.Session:
    """A session for registries on the network: proxies from the environment, system CAs (or ``verify``)."""
    session = requests.Session()
    session.trust_env = True
    session.verify = verify
    session.headers["User-Agent"] = user_agent
    return session
