"""Settings: the one table of settings, their parsing and precedence (flag > environment > .env >
default), and the opencode config file.

The rest of the package imports settings from here. Inside, each module imports only those below it:
``settings`` (``Settings``, ``load_settings``) over ``env_file`` (the ``.env`` file) and ``rules`` (checks
across settings), over ``specs`` (``SPECS``), over ``images`` (``ImageRef``), over ``values`` (the
parsers). ``opencode`` (the ``OPENWORK_OPENCODE_CONFIG`` file) stands apart and is imported by its path.
"""

from __future__ import annotations

from openwork_sandbox.config.images import ImageRef
from openwork_sandbox.config.rules import token_problems
from openwork_sandbox.config.settings import Settings, load_settings
from openwork_sandbox.config.specs import GUEST_PORT, SPEC_BY_FIELD, SPECS
from openwork_sandbox.config.values import is_loopback, parse_duration

__all__ = [
    "GUEST_PORT",
    "SPECS",
    "SPEC_BY_FIELD",
    "ImageRef",
    "Settings",
    "is_loopback",
    "load_settings",
    "parse_duration",
    "token_problems",
]
