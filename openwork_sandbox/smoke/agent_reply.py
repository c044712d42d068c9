"""What opencode's messages say about the agent's reply to one prompt (pure; ``smoke --prompt``).

What it reads of opencode's API:

- ``POST /session/<id>/prompt_async`` answers 204 at once; ``GET /session/<id>/message`` then lists
  the user message and an assistant message ``{info: {role: "assistant", parentID, providerID,
  modelID, time: {created, completed?}, error?}, parts: [...]}`` whose ``text`` parts grow as the
  tokens stream in (each with ``time.start``, in ms); ``info.time.completed`` is set when it is done.
- A provider that refuses for good (401, 403, a bad request) ends the message with ``info.error``:
  ``{"name": "APIError", "data": {"message", "statusCode", "responseBody", ...}}``.
- A provider that may recover (429, 5xx, not reachable) is retried with backoff: the message stays
  open and ``GET /session/status`` says ``{<id>: {"type": "retry", "attempt", "message"}}``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

FIRST_WORDS = 12


@dataclasses.dataclass(frozen=True)
class Reply:
    done: bool  # the assistant message is complete (or failed)
    text: str = ""  # the reply's text so far
    error: str | None = None  # why the provider refused, one line
    retrying: str | None = None  # opencode is retrying the provider: its reason, one line
    first_token_s: float | None = None  # the first text part's start after the prompt, by opencode's clock
    model: str | None = None  # provider/model that answered


def one_line(text: str, limit: int = 200) -> str:
    """``text`` with whitespace folded, cut to ``limit`` characters (``…`` marks a cut)."""
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_words(text: str, n: int = FIRST_WORDS) -> str:
    """The first ``n`` words of ``text`` (`` …`` when there are more)."""
    words = text.split()
    return " ".join(words[:n]) + (" …" if len(words) > n else "")


def describe_error(error: Any) -> str:
    """``info.error`` as one line: the status and the provider's own message."""
    if not isinstance(error, dict):
        return one_line(str(error))
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    message = data.get("message") or error.get("message") or error.get("name") or "unknown error"
    status = data.get("statusCode")
    name = error.get("name")
    head = f"{status} " if isinstance(status, int) else ""
    tail = f" ({name})" if name and name not in ("APIError", "UnknownError") else ""
    return one_line(f"{head}{message}{tail}")


def read_reply(messages: Any, status: Any, session_id: str, after_ms: float | None = None) -> Reply:
    """The state of the reply to the last user message in ``messages`` (opencode's list) given
    ``status`` (``GET /session/status``'s object)."""
    items = (
        [m for m in messages if isinstance(m, dict) and isinstance(m.get("info"), dict)]
        if isinstance(messages, list)
        else []
    )
    users = [m for m in items if m["info"].get("role") == "user"]
    user = users[-1] if users else None
    prompt_ms = ((user or {}).get("info", {}).get("time") or {}).get("created") or after_ms
    replies = [
        m
        for m in items
        if m["info"].get("role") == "assistant"
        and (user is None or m["info"].get("parentID") in (None, user["info"].get("id")))
    ]
    retry = (status or {}).get(session_id) if isinstance(status, dict) else None
    retrying = None
    if isinstance(retry, dict) and retry.get("type") == "retry":
        attempt = retry.get("attempt")
        retrying = one_line(
            f"{retry.get('message') or 'the provider failed'}" + (f" (attempt {attempt})" if attempt else "")
        )
    if not replies:
        return Reply(False, retrying=retrying)
    info, parts = replies[-1]["info"], replies[-1].get("parts") or []
    texts = [p for p in parts if isinstance(p, dict) and p.get("type") == "text" and not p.get("synthetic")]
    text = "".join(str(p.get("text") or "") for p in texts).strip()
    starts = [p.get("time", {}).get("start") for p in texts if (p.get("text") or "").strip()]
    starts = [s for s in starts if isinstance(s, (int, float))]
    first = (min(starts) - prompt_ms) / 1000 if starts and isinstance(prompt_ms, (int, float)) else None
    model = "/".join(x for x in (info.get("providerID"), info.get("modelID")) if x) or None
    error = describe_error(info["error"]) if info.get("error") else None
    done = bool(error) or bool((info.get("time") or {}).get("completed"))
    return Reply(done, text, error, retrying, max(first, 0.0) if first is not None else None, model)


def metrics(reply: Reply, seen_at: float | None, total: float) -> dict:
    """What ``smoke --prompt`` reports: first words, model, time to the first token (opencode's own
    timestamps, else when this client first saw text) and the total time, in seconds."""
    first = reply.first_token_s if reply.first_token_s is not None else seen_at
    return {
        "first_words": first_words(reply.text) if reply.text else None,
        "model": reply.model,
        "first_token_seconds": round(first, 3) if first is not None else None,
        "total_seconds": round(total, 3),
    }


_KEYISH = re.compile(r"\b(sk|key|pk|rk)[-_][A-Za-z0-9_\-]{8,}")


def scrub(text: str) -> str:
    """A provider's message with anything shaped like an API key masked (on top of redacting the
    values we know): some providers quote the key they were given."""
    return _KEYISH.sub(lambda m: m.group(1) + "-****", text)
