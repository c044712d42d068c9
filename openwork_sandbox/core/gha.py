"""GitHub Actions (``GITHUB_ACTIONS=true``): the one module that writes workflow commands and files.

- :func:`mask`: ``::add-mask::`` for every secret a task reads or generates, before anything
  could print it (settings tokens and the registry password when settings are loaded, through
  :func:`openwork_sandbox.state.store.mask_settings`; generated or stored tokens when the sandbox's state
  hands them out). This module knows nothing of settings or state: they hand it their secrets.
- :func:`error`: the ``::error title=<task>::<reason>`` a failed task ends with (written at the
  task boundary, :func:`openwork_sandbox.core.boundary.task_boundary`); :func:`annotate` for one failed
  smoke check (its details keep their lines).
- :func:`group`: long output (build log, pushed layers, server log tail) folded in ``::group::``;
  :func:`print_group` prints a block of lines (a log tail) that way.
- :func:`append_summary` and the ``*_summary`` builders: a short Markdown section per task in
  ``$GITHUB_STEP_SUMMARY``.
- :func:`export_sandbox`: ``up --github-output`` writes the URL, name and runtime to
  ``$GITHUB_OUTPUT`` and the (masked) tokens to ``$GITHUB_ENV`` for the job's later steps.

Workflow commands go to stderr with the rest of the human output (the runner reads both streams),
so ``--json`` keeps stdout to itself. Outside GitHub Actions every function here does nothing,
except :func:`group`, which prints a plain title line where asked.
"""

from __future__ import annotations

import contextlib
import os
import secrets as _secrets
from collections.abc import Iterable

_MASKED: set[str] = set()


def active() -> bool:
    """Whether this runs under GitHub Actions (``GITHUB_ACTIONS=true``)."""
    return os.environ.get("GITHUB_ACTIONS") == "true"


def _command(line: str) -> None:
    from openwork_sandbox.core import console

    console.info(line)


def escape_data(text: str) -> str:
    """``text`` as a workflow command's data: ``%``, CR and LF escaped, so it stays one command."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """``text`` as a workflow command's property value (``title=``): also ``:`` and ``,`` escaped."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def mask(*values: str | None) -> None:
    """Tell the runner to hide each value in the log from now on (once per value and process)."""
    if not active():
        return
    for value in values:
        if value and value not in _MASKED and value.strip():
            _MASKED.add(value)
            _command(f"::add-mask::{escape_data(value)}")


def annotate(title: str, text: str) -> None:
    """``::error title=TITLE::TEXT``; a multi-line TEXT stays multi-line in the annotation."""
    if active():
        _command(f"::error title={escape_property(title)}::{escape_data(text)}")


def error(title: str, reason: str) -> None:
    """``::error title=TITLE::REASON`` (several lines become one, joined with '; ')."""
    annotate(title, "; ".join(line.strip() for line in (reason or "failed").splitlines() if line.strip()))


@contextlib.contextmanager
def group(title: str, *, plain_title: bool = False):
    """Fold what is printed inside under ``title`` in the Actions log; elsewhere print
    ``--- title ---`` when ``plain_title`` (a log tail), else nothing (a build log)."""
    if active():
        _command(f"::group::{escape_data(title)}")
        try:
            yield
        finally:
            _command("::endgroup::")
        return
    if plain_title:
        from openwork_sandbox.core import console

        console.info(f"--- {title} ---")
    yield


def print_group(title: str, lines: Iterable[str]) -> None:
    """Print a block of lines (a log tail), folded under GitHub Actions."""
    from openwork_sandbox.core import console

    lines = list(lines)
    with group(title, plain_title=True):
        for line in lines:
            console.info(line)


def append_summary(markdown: str) -> None:
    """Append a section to ``$GITHUB_STEP_SUMMARY`` (a one-line note when the file cannot be written)."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not active() or not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(markdown if markdown.endswith("\n") else markdown + "\n")
    except OSError as exc:
        from openwork_sandbox.core import console

        console.info(f"could not append to GITHUB_STEP_SUMMARY ({exc.strerror})")


# --- step summaries --------------------------------------------------------------------------------


def cell(value: object) -> str:
    """``value`` as the text of one Markdown table cell (a '|' escaped, lines joined)."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(title: str, rows: Iterable[tuple[str, object]]) -> str:
    lines = [f"### {title}", "", "| | |", "| --- | --- |"]
    for key, value in rows:
        lines.append(f"| {key} | {cell(value)} |")
    return "\n".join(lines) + "\n"


def build_summary(result: dict) -> str:
    """The step-summary section of ``build-image`` from its result."""
    from openwork_sandbox.core.console import human_bytes

    versions = result.get("versions", {})
    return _table(
        f"OpenWork image built: `{result['image']}`",
        [
            ("image id", f"`{result['image_id']}`"),
            ("size", f"{human_bytes(result['size'])} (programs {human_bytes(result['binaries_size'])})"),
            ("base", f"`{result['base_image']}` ({result['arch']})"),
            *[(name, versions.get(name, "?")) for name in ("openwork", "openwork-server", "opencode")],
            ("downloaded", human_bytes(result.get("downloaded_bytes"))),
            ("docker cache", f"{result.get('cache_hits', 0)} of {result.get('build_steps', 0)} steps"),
            ("seconds", f"{result['seconds']:.1f}"),
        ],
    )


def push_summary(result: dict) -> str:
    """The step-summary section of ``push-image`` from its result."""
    from openwork_sandbox.core.console import human_bytes

    return _table(
        f"OpenWork image pushed: `{result['image']}`",
        [
            ("digest", f"`{result['digest']}`"),
            ("pin it", f"`{result['pinned']}`"),
            (
                "layers sent",
                f"{result['layers_pushed']} of {result['layers']} "
                f"({human_bytes(result['bytes_pushed'])} of {human_bytes(result['image_bytes'])})",
            ),
            ("registry check", "manifest and every blob served"),
            ("msb pull", result.get("msb_pull_detail", "")),
            ("seconds", f"{result['seconds']:.1f}"),
        ],
    )


def up_summary(endpoint, *, image: str, seconds: float) -> str:
    """The step-summary section of ``up`` for the sandbox at ``endpoint``."""
    return _table(
        f"OpenWork sandbox up: `{endpoint.name}`",
        [
            ("URL", endpoint.url),
            ("runtime", endpoint.runtime),
            ("image", f"`{image}`"),
            ("workspace", endpoint.workspace_id or "(none)"),
            ("seconds", f"{seconds:.1f}"),
        ],
    )


# --- up --github-output ----------------------------------------------------------------------------

OUTPUT_FILES = ("GITHUB_OUTPUT", "GITHUB_ENV")


def export_problem() -> str | None:
    """Why ``--github-output`` cannot work here (None when it can)."""
    if not active():
        return "--github-output works only under GitHub Actions (GITHUB_ACTIONS=true); drop the flag"
    missing = [name for name in OUTPUT_FILES if not os.environ.get(name)]
    if missing:
        return f"--github-output: {' and '.join(missing)} not set by the runner; drop the flag"
    return None


def _append_values(variable: str, values: dict[str, str]) -> None:
    """Append ``NAME<<DELIMITER`` blocks (GitHub's multi-line form, with a random delimiter, so no
    value can inject another variable)."""
    with open(os.environ[variable], "a", encoding="utf-8") as fh:
        for name, value in values.items():
            delimiter = f"ghadelimiter_{_secrets.token_hex(16)}"
            if delimiter in value:  # pragma: no cover  (a 128-bit random string)
                raise ValueError("delimiter collision")
            fh.write(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")


def require_export() -> None:
    """A one-line error (exit 2) when ``--github-output`` cannot work here."""
    problem = export_problem()
    if problem:
        from openwork_sandbox.core.errors import EXIT_BAD_SETTINGS, WorkflowError

        raise WorkflowError(problem, exit_code=EXIT_BAD_SETTINGS)


def report_up(endpoint, *, image: str, seconds: float, export: bool = False) -> None:
    """After ``up``: its step-summary section, and with ``export`` (``--github-output``) the outputs."""
    append_summary(up_summary(endpoint, image=image, seconds=seconds))
    if export:
        export_sandbox(endpoint)


def export_sandbox(endpoint) -> None:
    """``up --github-output``: ``url``, ``name``, ``runtime``, ``workspace-id`` as step outputs; the
    tokens (masked first) as ``OPENWORK_TOKEN``/``OPENWORK_HOST_TOKEN`` in the job's environment.

    Tokens never go to ``$GITHUB_OUTPUT``: outputs can travel to other jobs (GitHub drops those
    holding a masked value anyway); ``$GITHUB_ENV`` reaches only the later steps of this job, on
    this runner, where the sandbox is.
    """
    require_export()
    mask(endpoint.token, endpoint.host_token)
    _append_values(
        "GITHUB_OUTPUT",
        {
            "url": endpoint.url,
            "name": endpoint.name,
            "runtime": endpoint.runtime,
            "workspace-id": endpoint.workspace_id or "",
        },
    )
    _append_values("GITHUB_ENV", {"OPENWORK_TOKEN": endpoint.token, "OPENWORK_HOST_TOKEN": endpoint.host_token})
    from openwork_sandbox.core import console

    console.info(
        "exported url, name, runtime, workspace-id to $GITHUB_OUTPUT and the tokens (masked) as "
        "OPENWORK_TOKEN / OPENWORK_HOST_TOKEN to $GITHUB_ENV"
    )
