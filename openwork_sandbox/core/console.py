"""Terminal output: human text on stderr, machine output (JSON) alone on stdout.

Progress: a bar on a TTY; off a TTY (a CI log) a plain line at least every
:data:`PLAIN_EVERY` seconds, so a log never sits silent while work goes on. :func:`heartbeat`
fills the silences of work that reports nothing itself (a pull, a health wait). Secrets go through
:func:`mask` before any print; under GitHub Actions they are also masked in the log (:mod:`gha`,
which prints through this module: this module imports nothing of the package).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

OK = "✓"
BAD = "✗"
SKIP = "-"
PLAIN_EVERY = 8.0  # seconds: off a TTY, the longest silence while work goes on (a line every 10 s is the promise)
_LOCK = threading.RLock()  # the heartbeat thread and the task print on one stream
_LAST_LINE = [time.monotonic()]  # when the last human line (or bar) was written


def is_tty(stream=None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal that can draw a bar (not ``TERM=dumb``)."""
    stream = stream or sys.stderr
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def info(message: str = "") -> None:
    """A line for the human, on stderr (stdout stays clean for --json)."""
    with _LOCK:
        print(message, file=sys.stderr, flush=True)
        _LAST_LINE[0] = time.monotonic()


def since_last_line() -> float:
    """Seconds since the last human line (or bar) was written."""
    return time.monotonic() - _LAST_LINE[0]


def emit_json(obj: Any) -> None:
    """The machine-readable result, alone on stdout."""
    try:
        json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `... --json | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def emit_text(text: str) -> None:
    """Machine output that is not JSON (``manifests``' YAML), alone on stdout."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left (`... | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def mask(secret: str | None) -> str:
    """Show enough of a secret to tell two apart, never enough to use it."""
    if not secret:
        return "(unset)"
    if len(secret) < 12:
        return "****"
    return f"{secret[:4]}…({len(secret)} chars)"


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None) -> str:
    """``rows`` as left-aligned columns, two spaces apart; ``headers`` get a dashed rule beneath."""
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
    """``n`` bytes in decimal units (``1.5 MB``); ``?`` for None."""
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    """A one-line progress bar on a TTY; elsewhere (a CI log) a plain line when the work starts,
    then one whenever :data:`PLAIN_EVERY` seconds passed since the last line, and one at the end.

    Use as a context manager: ``with Progress("opencode", total) as bar: bar.advance(n)``.
    """

    def __init__(self, label: str, total: int | None = None, stream=None, enabled: bool | None = None):
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = is_tty(self.stream) if enabled is None else enabled
        self.plain = not self.enabled and enabled is None  # off a TTY: plain lines (enabled=False: silent)
        self._last = 0.0
        self._start = time.monotonic()
        self._plain_at = 0.0
        if self.plain:
            self._plain_line("started" + (f" ({human_bytes(total)})" if total else ""))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(failed=exc_type is not None)

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
        elif self.plain and now - max(self._plain_at, _LAST_LINE[0]) >= PLAIN_EVERY:
            self._plain_line(f"{self._amount()}, {now - self._start:.0f}s")

    def _amount(self) -> str:
        if self.total:
            return f"{human_bytes(self.done)} of {human_bytes(self.total)} ({100 * self.done // self.total}%)"
        return human_bytes(self.done)

    def _plain_line(self, text: str) -> None:
        self._plain_at = time.monotonic()
        info(f"{self.label}: {text}")

    def _draw(self) -> None:
        width = 30
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "█" * int(frac * width) + "·" * (width - int(frac * width))
            text = f"\r{self.label:<28} {bar} {human_bytes(self.done)}/{human_bytes(self.total)}"
        else:
            text = f"\r{self.label:<28} {human_bytes(self.done)}"
        with _LOCK:
            self.stream.write(text)
            self.stream.flush()
            _LAST_LINE[0] = time.monotonic()

    def close(self, failed: bool = False) -> None:
        if self.enabled:
            self._draw()
            with _LOCK:
                self.stream.write("\n")
                self.stream.flush()
        elif self.plain:
            took = time.monotonic() - self._start
            self._plain_line(f"{'stopped' if failed else 'done'}, {self._amount()} in {took:.0f}s")


class Heartbeat:
    """A daemon thread that prints ``<what> (Ns)`` whenever nothing was printed for
    :data:`PLAIN_EVERY` seconds, until stopped: the log of a long silent step (a pull, a health
    wait) says what it waits for. ``what`` may be a callable (re-read at every line)."""

    def __init__(self, what: str | Callable[[], str], every: float | None = None):
        self.what, self.every = what, every or PLAIN_EVERY
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="openwork-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(min(0.25, self.every / 4)):
            if since_last_line() >= self.every:
                try:
                    what = self.what() if callable(self.what) else self.what
                except Exception:  # a describe callback must never break the task
                    what = "working"
                if not self._stop.is_set():
                    info(f"… {what} ({time.monotonic() - self.started:.0f}s)")


def heartbeat(what: str | Callable[[], str], every: float | None = None) -> Heartbeat:
    """``with heartbeat("pulling X"):``: a :class:`Heartbeat` for the block."""
    return Heartbeat(what, every)
