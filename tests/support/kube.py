"""Settings of one sandbox for `invoke manifests` tests: known secrets (to look for), a recorded push."""

from __future__ import annotations

from tests.support.lifecycle import make_settings

DIGEST = "sha256:" + "ab" * 32
TOKEN = "client-token-" + "q" * 40
HOST_TOKEN = "host-token-" + "z" * 40
API_KEY = "sk-provider-key-0123456789"
CONFIG = '{"provider": {"x": {"options": {"apiKey": "config-secret-9876"}}}}\n'


def kube_settings(tmp_path, **env):
    """``k8s-unit`` with TOKEN, HOST_TOKEN, a provider key and an opencode config; ``image`` pushed as
    DIGEST. A value of None in ``env`` leaves that setting unset."""
    from openwork_sandbox.state.pin import record_push

    config = tmp_path / "opencode.jsonc"
    config.write_text(CONFIG)
    base = {
        "OPENWORK_MICROSANDBOX_NAME": "k8s-unit",
        "OPENWORK_MICROSANDBOX_IMAGE": "127.0.0.1:5000/owtest-k8s:stack",
        "OPENWORK_TOKEN": TOKEN,
        "OPENWORK_HOST_TOKEN": HOST_TOKEN,
        "OPENWORK_SANDBOX_ENV": "ANTHROPIC_API_KEY",
        "ANTHROPIC_API_KEY": API_KEY,
        "OPENWORK_OPENCODE_CONFIG": str(config),
        "OPENWORK_MICROSANDBOX_CPUS": "1.5",
        "OPENWORK_MICROSANDBOX_MEMORY": "3072",
    }
    merged = {k: v for k, v in {**base, **env}.items() if v is not None}
    settings = make_settings(tmp_path, **merged)
    record_push(settings, DIGEST)
    return settings
