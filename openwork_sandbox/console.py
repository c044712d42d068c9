"""Terminal output: human text on stderr, machine output (JSON) alone on stdout.

Progress bars only on a TTY; quiet otherwise. Secrets go through :func:`mask` before any print.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Iterable, Sequence

OK = "✓"
BAD = "✗"
SKIP = "-"


def is_tty(stream=None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def info(message: str = "") -> None:
    """A line for the human, on stderr (stdout stays clean for --json)."""
    print(message, file=sys.stderr, flush=True)


def emit_json(obj: Any) -> None:
    """The machine-readable result, alone on stdout."""
    try:
        json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `... --json | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def mask(secret: str | None) -> str:
    """Show enough of a secret to tell two apart, never enough to use it."""
    if not secret:
        return "(unset)"
    if len(secret) < 12:
        return "****"
    return f"{secret[:4]}…({len(secret)} chars)"


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None) -> str:
    cells = [[str(c) for c in r] for r in rows]
    if headers:
        cells.insert(0, [str(h) for h in headers])
    if not cells:
        return ""
    widths = [max(len(r[i]) if i < len(r) else 0 for r in cells) for i in range(max(len(r) for r in cells))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
        if headers and n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None) -> None:
    info(format_table(rows, headers))


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    """A one-line progress bar on a TTY; silent elsewhere (CI logs stay readable).

    Use as a context manager: ``with Progress("opencode", total) as bar: bar.advance(n)``.
    """

    def __init__(self, label: str, total: int | None = None, stream=None, enabled: bool | None = None):
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = is_tty(self.stream) if enabled is None else enabled
        self._last = 0.0
        self._start = time.monotonic()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def advance(self, n: int) -> None:
        self.done += n
        self.update(self.done)

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or (self.total and done >= self.total)):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        width = 30
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "█" * int(frac * width) + "·" * (width - int(frac * width))
            text = f"\r{self.label:<28} {bar} {human_bytes(self.done)}/{human_bytes(self.total)}"
        else:
            text = f"\r{self.label:<28} {human_bytes(self.done)}"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


def github_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def group(title: str, lines: Iterable[str]) -> None:
    """Print a block of lines (a log tail), folded under GitHub Actions."""
    lines = list(lines)
    if github_actions():
        info(f"::group::{title}")
    else:
        info(f"--- {title} ---")
    for line in lines:
        info(line)
    if github_actions():
        info("::endgroup::")
