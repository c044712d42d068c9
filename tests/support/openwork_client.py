"""A client of the OpenWork API for the tests: sessions with messages through the proxy, issued tokens,
status codes; plain ``requests`` against a sandbox's URL."""

from __future__ import annotations

import requests

WS = "ws_c52ddf65534b"  # the /workspace workspace: ws_ + sha256("/workspace")[:12]


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def make_session(url: str, token: str, text: str) -> str:
    """A session with one user message (noReply: stored without asking a model), through the proxy."""
    base = f"{url}/w/{WS}/opencode"
    created = requests.post(f"{base}/session", json={"title": f"kept {text}"}, headers=auth(token), timeout=20)
    assert created.status_code == 200, created.text
    sid = created.json()["id"]
    msg = requests.post(
        f"{base}/session/{sid}/message",
        json={"noReply": True, "parts": [{"type": "text", "text": text}]},
        headers=auth(token),
        timeout=30,
    )
    assert msg.status_code == 200, msg.text
    return sid


def read_session(url: str, token: str, sid: str) -> tuple[dict, list[str]]:
    base = f"{url}/w/{WS}/opencode"
    got = requests.get(f"{base}/session/{sid}", headers=auth(token), timeout=20)
    assert got.status_code == 200, f"session {sid} is gone: {got.status_code} {got.text[:300]}"
    messages = requests.get(f"{base}/session/{sid}/message?limit=10", headers=auth(token), timeout=20)
    assert messages.status_code == 200, messages.text
    texts = [p.get("text") for m in messages.json() for p in m["parts"] if p.get("type") == "text"]
    return got.json(), texts


def issue_token(url: str, host_token: str) -> str:
    resp = requests.post(
        f"{url}/tokens",
        json={"scope": "collaborator", "label": "a colleague"},
        headers={"X-OpenWork-Host-Token": host_token},
        timeout=10,
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["token"]


def status_with(url: str, token: str) -> int:
    return requests.get(f"{url}/workspaces", headers=auth(token), timeout=10).status_code


def agent_shell(url: str, token: str, command: str, verify: bool | str = True) -> str:
    """What the agent's shell printed for ``command``, asked with ``token`` as a client would
    (``POST /w/<id>/opencode/session/<sid>/shell``: the real opencode runs it); ``verify``: a CA bundle for https."""
    ws = requests.get(f"{url}/workspaces", headers=auth(token), timeout=30, verify=verify).json()["items"][0]["id"]
    base = f"{url}/w/{ws}/opencode/session"
    sid = requests.post(base, json={"title": "probe"}, headers=auth(token), timeout=30, verify=verify).json()["id"]
    answer = requests.post(
        f"{base}/{sid}/shell",
        json={"agent": "build", "command": command},
        headers=auth(token),
        timeout=120,
        verify=verify,
    )
    assert answer.status_code == 200, answer.text[:300]
    messages = requests.get(f"{base}/{sid}/message", headers=auth(token), timeout=30, verify=verify).json()
    out = []
    for message in messages:
        for part in message.get("parts", []):
            state = part.get("state") or {}
            out.append(str(state.get("output") or (state.get("metadata") or {}).get("output") or ""))
    return "\n".join(out)
