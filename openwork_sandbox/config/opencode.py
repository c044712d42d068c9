"""``OPENWORK_OPENCODE_CONFIG``: a JSON or JSONC file in opencode's own config format, read and
checked before anything starts.

:func:`load` parses JSONC (``//`` and ``/* */`` comments, trailing commas, as opencode does) and
checks the parts a sandbox depends on: an object at the top; ``provider`` an object of objects, each
one's ``options`` and ``models`` objects; ``model``/``small_model`` written ``provider/model``;
``enabled_providers``/``disabled_providers`` lists of names. A problem is one
:class:`~openwork_sandbox.core.errors.SettingsError` line naming the file.

The text goes into the sandbox as written (``state.secrets``), as the file opencode's
``OPENCODE_CONFIG`` names: the sandbox's base configuration, under what a project or the OpenWork UI
sets. opencode fills ``{env:NAME}`` from its own environment, so a key named that way has to be
passed in through ``OPENWORK_SANDBOX_ENV``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from openwork_sandbox.core.errors import SettingsError

SETTING = "OPENWORK_OPENCODE_CONFIG"
ENV_REF = re.compile(r"\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclasses.dataclass(frozen=True)
class OpencodeConfig:
    """The file at ``path``: its ``text`` (delivered as is) and ``data`` (parsed); ``repr`` shows neither."""

    path: Path
    text: str = dataclasses.field(repr=False)
    data: dict = dataclasses.field(repr=False)

    @property
    def providers(self) -> tuple[str, ...]:
        """Providers the file configures (``provider`` keys), in file order."""
        return tuple(self.data.get("provider") or {})

    @property
    def model(self) -> str | None:
        """``model`` (``provider/model``), or None when unset."""
        return self.data.get("model")

    @property
    def small_model(self) -> str | None:
        """``small_model`` (``provider/model``), or None when unset."""
        return self.data.get("small_model")

    @property
    def env_refs(self) -> tuple[str, ...]:
        """The variables the file names as ``{env:NAME}``, in order, once each."""
        return tuple(dict.fromkeys(ENV_REF.findall(self.text)))

    def base_urls(self) -> dict[str, str]:
        """``provider -> options.baseURL`` for each provider that sets one (the address it needs to reach)."""
        out = {}
        for name, entry in (self.data.get("provider") or {}).items():
            url = ((entry or {}).get("options") or {}).get("baseURL")
            if isinstance(url, str):
                out[name] = url
        return out

    def literal_keys(self) -> tuple[str, ...]:
        """Providers whose ``options.apiKey`` is written out rather than named as ``{env:NAME}``."""
        found = []
        for name, entry in (self.data.get("provider") or {}).items():
            key = ((entry or {}).get("options") or {}).get("apiKey")
            if isinstance(key, str) and key and not ENV_REF.fullmatch(key.strip()):
                found.append(name)
        return tuple(found)


class _JsoncError(ValueError):
    """A JSONC syntax error; its message starts ``line L, column C:`` (both from 1)."""

    def __init__(self, message: str, text: str, pos: int):
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        super().__init__(f"line {line}, column {col}: {message}")


def strip_jsonc(text: str) -> str:
    """JSON from JSONC: comments and trailing commas become spaces, so every position (and line and
    column in a message) is the same in both; :class:`_JsoncError` for a ``/*`` never closed."""
    out: list[str] = []
    last_comma: int | None = None  # index in ``out`` of a comma outside strings not yet followed by a value
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            last_comma = None
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise _JsoncError("a /* comment is never closed", text, i)
            out.append(re.sub(r"[^\n]", " ", text[i : j + 2]))
            i = j + 2
        else:
            if ch in "}]" and last_comma is not None:
                out[last_comma] = " "  # a trailing comma, as opencode's JSONC parser allows
            if ch == ",":
                last_comma = len(out)
            elif not ch.isspace():
                last_comma = None
            out.append(ch)
            i += 1
    return "".join(out)


def _parse(text: str) -> Any:
    """The JSONC ``text`` parsed; :class:`_JsoncError` where it is not valid."""
    stripped = strip_jsonc(text)
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise _JsoncError(exc.msg.lower(), stripped, exc.pos) from None


def _problem(data: Any) -> str | None:
    """The first thing wrong with the parsed config for a sandbox (see the module), or None."""
    if not isinstance(data, dict):
        return f"expected a JSON object at the top, got {type(data).__name__}"
    providers = data.get("provider")
    if providers is not None:
        if not isinstance(providers, dict):
            return '"provider" must be an object of providers, e.g. {"openai": {...}}'
        for name, entry in providers.items():
            if not isinstance(entry, dict):
                return f'"provider.{name}" must be an object'
            for key in ("options", "models"):
                if key in entry and not isinstance(entry[key], dict):
                    return f'"provider.{name}.{key}" must be an object'
    for key in ("model", "small_model"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or "/" not in value.strip("/")):
            return f'"{key}" must be written provider/model, e.g. "anthropic/claude-sonnet-4-5"'
    for key in ("enabled_providers", "disabled_providers"):
        value = data.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return f'"{key}" must be a list of provider names'
    return None


def load(path: Path, origin: str = "default") -> OpencodeConfig:
    """Read and check the file at ``path``; :class:`SettingsError` (one line naming it, and ``origin``
    unless it is ``default``) when it is missing, a folder, unreadable, not UTF-8, not JSON/JSONC or
    not a config a sandbox can use."""
    where = f"{SETTING}={path}" + (f" (from {origin})" if origin != "default" else "")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError([f"{where}: no such file; point it at opencode's config (JSON or JSONC)"]) from None
    except IsADirectoryError:
        raise SettingsError([f"{where}: is a folder; point it at a file such as opencode.json"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(
            [
                f"{where}: cannot read it ({getattr(exc, 'strerror', None) or exc.__class__.__name__}); "
                "fix its permissions or encoding (UTF-8)"
            ]
        ) from None
    try:
        data = _parse(text)
    except _JsoncError as exc:
        raise SettingsError([f"{where}: not valid JSON/JSONC at {exc}"]) from None
    problem = _problem(data)
    if problem:
        raise SettingsError([f"{where}: {problem}"])
    return OpencodeConfig(Path(path), text, data)
