"""Smoke results for people and for CI: terminal table, ``--json``, ``--junit`` XML, GitHub Actions.

Every text that leaves this module goes through :func:`redact`: the run's tokens are masked, and so
are values of JSON keys that look like secrets (``password``, ``token``...), e.g. the opencode
credentials that ``GET /workspaces`` returns.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from openwork_sandbox.core import console, gha
from openwork_sandbox.core.errors import WorkflowError

SYMBOL = {
    "passed": f"{console.OK} passed",
    "failed": f"{console.BAD} failed",
    "error": f"{console.BAD} error",
    "skipped": f"{console.SKIP} skipped",
}
_SECRET_KEY = re.compile(r'("(?:[A-Za-z_]*(?:password|token|secret)[A-Za-z_]*)"\s*:\s*")([^"\\]*)(")', re.IGNORECASE)
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def redact(text: str | None, secrets: Iterable[str]) -> str:
    """``text`` with every known secret masked, and secret-looking JSON values too."""
    if not text:
        return text or ""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, console.mask(secret))
    return _SECRET_KEY.sub(
        lambda m: m.group(1) + console.mask(m.group(2)) + m.group(3) if m.group(2) else m.group(0), text
    )


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def summary_line(report) -> str:
    """The run's last line: the verdict, the counts, the time and the URL."""
    c = report.counts
    parts = [f"{c['passed']} passed"]
    if c["failed"]:
        parts.append(f"{c['failed']} failed")
    if c["error"]:
        parts.append(f"{c['error']} error")
    if c["skipped"]:
        parts.append(f"{c['skipped']} skipped")
    verdict = "OK" if report.ok else ("UNREACHABLE" if report.unreachable else "FAILED")
    return f"smoke {verdict}: {', '.join(parts)} in {_seconds(report.total_seconds)} ({report.url})"


def table(report) -> str:
    """The terminal table: one row per check with its result, time and (redacted) detail."""
    rows = []
    for check in report.checks:
        note = check.detail if check.result == "passed" else check.message
        rows.append(
            [
                check.name,
                SYMBOL[check.result],
                _seconds(check.seconds) if check.ran else "",
                redact(note, report.secrets),
            ]
        )
    return console.format_table(rows, headers=["check", "result", "time", "detail"])


def failure_text(check, secrets: Iterable[str]) -> str:
    """Everything about one failed check: message, request, status, start of the body, hint."""
    lines = [check.message]
    if check.request:
        lines.append(f"request: {check.request}")
    if check.status is not None:
        lines.append(f"status:  {check.status}")
    if check.body is not None:
        lines.append(f"body:    {check.body or '(empty)'}")
    if check.hint:
        lines.append(f"hint:    {check.hint}")
    return redact("\n".join(lines), secrets)


def as_dict(report) -> dict[str, Any]:
    """The --json object: every check with its timing, the total, the verdict, the log tail."""
    checks = []
    for check in report.checks:
        d = check.as_dict()
        for key in ("detail", "message", "hint"):
            d[key] = redact(d[key], report.secrets)
        if d["http"]:
            d["http"]["body"] = redact(d["http"]["body"], report.secrets)
        if d.get("metrics"):
            d["metrics"] = {k: redact(v, report.secrets) if isinstance(v, str) else v for k, v in d["metrics"].items()}
        checks.append(d)
    return {
        "ok": report.ok,
        "exit_code": report.exit_code,
        "url": report.url,
        "mode": report.mode,
        "name": report.name,
        "runtime": report.runtime,
        "server": {"version": report.server_version, "opencodeVersion": report.opencode_version},
        "workspace_id": report.workspace_id,
        "counts": report.counts,
        "total_seconds": round(report.total_seconds, 4),
        "timings": {k: round(v, 4) for k, v in report.timings.items()},
        "checks": checks,
        "log": {"path": report.log_path, "tail": [redact(ln, report.secrets) for ln in report.log_tail]}
        if (report.log_tail or report.log_path)
        else None,
        "notes": [redact(n, report.secrets) for n in report.notes],
    }


def _xml_text(text: str) -> str:
    return _XML_BAD.sub("?", text)


def junit_xml(report) -> str:
    """JUnit XML: one testcase per check with its time; <failure> for a failed check, <error> for
    readiness (health), <skipped> with the reason; the server log tail in <system-err>."""
    c = report.counts
    attrs = {
        "name": "openwork-smoke",
        "tests": str(len(report.checks)),
        "failures": str(c["failed"]),
        "errors": str(c["error"]),
        "skipped": str(c["skipped"]),
        "time": f"{report.total_seconds:.3f}",
    }
    suites = ET.Element("testsuites", attrs)
    suite = ET.SubElement(
        suites,
        "testsuite",
        {
            **attrs,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
            "hostname": socket.gethostname(),
        },
    )
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("url", report.url),
        ("mode", report.mode),
        ("sandbox", report.name),
        ("runtime", report.runtime),
        ("server.version", report.server_version),
        ("opencode.version", report.opencode_version),
        ("workspace.id", report.workspace_id),
    ):
        if value:
            ET.SubElement(props, "property", {"name": key, "value": _xml_text(redact(str(value), report.secrets))})
    log_text = _log_text(report)
    for check in report.checks:
        case = ET.SubElement(
            suite, "testcase", {"classname": "openwork.smoke", "name": check.name, "time": f"{check.seconds:.3f}"}
        )
        if check.metrics:  # e.g. prompt-answered's first words and times, as pytest's record_property
            case_props = ET.SubElement(case, "properties")
            for key, value in check.metrics.items():
                if value is not None:
                    ET.SubElement(
                        case_props, "property", {"name": key, "value": _xml_text(redact(str(value), report.secrets))}
                    )
        if check.result in ("failed", "error"):
            tag = "failure" if check.result == "failed" else "error"
            el = ET.SubElement(
                case,
                tag,
                {
                    "message": _xml_text(redact(check.message, report.secrets)),
                    "type": "CheckFailed" if tag == "failure" else "NotReady",
                },
            )
            el.text = _xml_text(failure_text(check, report.secrets))
            if log_text:
                ET.SubElement(case, "system-err").text = log_text
        elif check.result == "skipped":
            ET.SubElement(case, "skipped", {"message": _xml_text(redact(check.message, report.secrets))})
        elif check.detail:
            ET.SubElement(case, "system-out").text = _xml_text(redact(check.detail, report.secrets))
    if log_text:
        ET.SubElement(suite, "system-err").text = log_text
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _log_text(report) -> str:
    if not report.log_tail and not report.log_path:
        return ""
    head = f"last {len(report.log_tail)} lines of the server log" + (f" ({report.log_path})" if report.log_path else "")
    return _xml_text("\n".join([head, *(redact(ln, report.secrets) for ln in report.log_tail)]))


def write_junit(report, path: str | os.PathLike) -> Path:
    """Write :func:`junit_xml` to ``path``; a one-line WorkflowError when it cannot be written."""
    target = Path(path).expanduser()
    try:
        target.write_text(junit_xml(report), encoding="utf-8")
    except OSError as exc:
        raise WorkflowError(f"--junit {path}: cannot write it ({exc.strerror}); pick a writable path") from None
    return target


def markdown(report) -> str:
    """A Markdown table for $GITHUB_STEP_SUMMARY."""
    icon = {"passed": "✅", "failed": "❌", "error": "❌", "skipped": "⏭️"}
    lines = [
        f"### OpenWork smoke: {'passed' if report.ok else 'FAILED'}",
        "",
        f"`{report.url}` ({report.mode}"
        + (f", server {report.server_version}" if report.server_version else "")
        + f"), {_seconds(report.total_seconds)}",
        "",
        "| check | result | time | detail |",
        "| --- | --- | --- | --- |",
    ]
    for check in report.checks:
        note = check.detail if check.result == "passed" else check.message
        note = gha.cell(redact(note, report.secrets))
        lines.append(
            f"| {check.name} | {icon[check.result]} {check.result} | "
            f"{_seconds(check.seconds) if check.ran else ''} | {note} |"
        )
    if report.log_path:
        lines += ["", f"Server log: `{report.log_path}`"]
    return "\n".join(lines) + "\n"


def publish(report, *, junit: str | None = None, as_json: bool = False) -> None:
    """Print the table (stderr), failure details, the log tail on failure; write --junit; under GitHub
    Actions add ::error:: annotations and the step summary; with --json the object alone on stdout."""
    secrets = report.secrets
    if not as_json:  # --json replaces the table; failures, log tail and summary still go to stderr
        console.info(table(report))
    for check in report.checks:
        if check.result in ("failed", "error"):
            console.info("")
            console.info(f"{console.BAD} {check.name}: " + failure_text(check, secrets).replace("\n", "\n    "))
    for note in report.notes:
        console.info(f"{console.BAD} {redact(note, secrets)}")
    if not report.ok and (report.log_tail or report.log_path) and not report.log_printed:
        title = f"server log, last {len(report.log_tail)} lines" + (
            f" (full log: {report.log_path})" if report.log_path else ""
        )
        console.info("")
        gha.print_group(title, [redact(ln, secrets) for ln in report.log_tail])
    console.info(summary_line(report))
    if junit:
        path = write_junit(report, junit)
        console.info(f"JUnit report: {path}")
    for check in report.checks:  # the gha calls do nothing outside GitHub Actions
        if check.result in ("failed", "error"):
            gha.annotate(f"smoke {check.name}", failure_text(check, secrets))
    for note in report.notes:
        gha.annotate("smoke teardown", redact(note, secrets))
    gha.append_summary(markdown(report))
    if as_json:
        console.emit_json(as_dict(report))
