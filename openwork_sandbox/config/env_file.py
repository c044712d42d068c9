"""The ``.env`` file: its values for ``load_settings``, and every problem in it as one line naming the
file and line: a line python-dotenv cannot parse, a missing or unreadable file that was asked for, a
key that looks like a misspelled setting. A secret's value is never shown.

The values are read with python-dotenv's ``dotenv_values``; ``os.environ`` is never touched.
"""

from __future__ import annotations

import difflib
import io
import re
import stat
from pathlib import Path

from openwork_sandbox.config.specs import ENV_FILE_VAR, KNOWN_NAMES, SPEC_BY_ENV, SPECS

_DOTENV_KEY = re.compile(r"""[ \t]*(?:export[ \t]+)?(?P<key>'[^'\n]*'|[^=#\s'"]+)[ \t]*(?P<eq>=[ \t]*)?""")
_DOTENV_QUOTED = {'"': re.compile(r'"(?:\\.|[^"\\])*"', re.S), "'": re.compile(r"'(?:\\'|[^'])*'", re.S)}
_DOTENV_NAME = re.compile(r"(?:export[ \t]+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)")
_DOTENV_END = re.compile(r"[ \t]*(?:#[^\r\n]*)?(?:\r?\n|$)")  # a CRLF file too, as python-dotenv reads it


def parse_dotenv(path: Path, text: str) -> tuple[list[str], dict[str, int]]:
    """``text`` (the file at ``path``) scanned with python-dotenv's grammar: one problem per line it
    cannot parse (python-dotenv would only log and skip it), and each key's line number.

    The grammar: blank lines and ``#`` comments; ``[export] KEY[=VALUE]`` where VALUE is unquoted (to
    the end of the line, ``# comment`` allowed) or single- or double-quoted (may span lines, backslash
    escapes); LF or CRLF line ends. A problem line shows at most 40 characters of the line, and none of
    the value of a secret setting or of a key that looks secret (``*KEY*``, ``*TOKEN*``, ...), nor of
    the lines after such a value whose quote never closed."""
    secret_keys = {s.env for s in SPECS if s.secret}
    secret_like = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)  # e.g. OPENAI_API_KEY
    problems, numbers = [], {}
    pos, line = 0, 1
    in_secret = False  # after a secret whose quote never closed: the next bad lines may be the rest of it
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        raw = text[pos:end]
        if not raw.strip() or raw.lstrip().startswith("#"):
            pos, line = end + 1, line + 1
            continue
        m = _DOTENV_KEY.match(text, pos, end)
        ok, after = m is not None, end
        if m:
            after = m.end()
            if m.group("eq") and after < end and text[after] in _DOTENV_QUOTED:
                quoted = _DOTENV_QUOTED[text[after]].match(text, after)
                after = quoted.end() if quoted else end
                ok = quoted is not None
            elif m.group("eq"):
                after = end  # unquoted: the rest of the line
            ok = ok and _DOTENV_END.match(text, after) is not None
        if ok:
            numbers[m.group("key").strip("'")] = line
            stop = _DOTENV_END.match(text, after).end()
            in_secret = False
        else:
            shown = raw.strip()
            named = _DOTENV_NAME.match(shown)  # a secret's value is hidden, with or without its '='
            if named and (named.group("key") in secret_keys or secret_like.search(named.group("key"))):
                rest = shown[named.end() :].lstrip()
                shown = named.group("key") + ("=…" if rest.startswith("=") else " …")
                in_secret = rest.lstrip("= \t")[:1] in ("'", '"')
            elif in_secret:
                shown = "…"  # hidden: it may be the rest of that secret's value
            elif len(shown) > 40:
                shown = shown[:37] + "..."
            problems.append(f"{path}:{line}: cannot parse {shown!r}: expected NAME=value")
            stop = end + 1
        line += text.count("\n", pos, stop)
        pos = stop
    return problems, numbers


def read_env_file(
    path: Path, explicit: bool, problems: list[str], *, source: str = ENV_FILE_VAR
) -> tuple[dict[str, str], dict[str, int]]:
    """The file's values (key -> value; keys without a value left out) and each key's line number.

    Problems are appended to ``problems``, each naming the file as ``source`` gave it (``--env-file``,
    ``OPENWORK_ENV_FILE``, or the default ``.env`` of the project folder when not ``explicit``): a
    missing file only when it was asked for, anything but a regular file (a folder; a FIFO, socket or
    device is never opened: reading one would hang every task), an unreadable one, each line
    :func:`parse_dotenv` finds; with any of them the values are empty."""
    from dotenv import dotenv_values

    named = f"{source}={path}" if explicit else f"{path} (the default .env of the project folder)"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if explicit:
            problems.append(f"{named}: no such file; create it (copy .env.example) or drop the setting")
        return {}, {}
    except OSError as exc:
        problems.append(f"{named}: cannot read it ({exc.strerror}); fix its permissions or drop the setting")
        return {}, {}
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
        fix = "point it at a settings file or drop the setting" if explicit else "move it away or make it a file"
        problems.append(f"{named} is {kind}; {fix} (see .env.example)")
        return {}, {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{named}: cannot read it ({exc.__class__.__name__}); fix its permissions or encoding")
        return {}, {}
    bad_lines, numbers = parse_dotenv(path, text)
    if bad_lines:  # the load fails anyway; don't let python-dotenv log its own warning too
        problems.extend(bad_lines)
        return {}, numbers
    values = {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}  # the text read above
    return values, numbers


def misspelled_keys(values: dict[str, str], lines: dict[str, int], label: str) -> list[str]:
    """One problem per ``OPENWORK*``/``OPENCODE*`` key of the file that is no setting but close to one
    (``did you mean ...?``); other unknown keys are the user's own and pass. ``label`` names the file."""
    problems = []
    for key in values:
        if (
            key not in SPEC_BY_ENV
            and key != ENV_FILE_VAR
            and (key.startswith("OPENWORK") or key.startswith("OPENCODE"))
        ):
            close = difflib.get_close_matches(key, KNOWN_NAMES, n=1, cutoff=0.8)
            if close:
                problems.append(
                    f"{key} (from {label}:{lines.get(key, '?')}): unknown setting; did you mean {close[0]}?"
                )
    return problems
