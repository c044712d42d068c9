"""`invoke manifests`: the sandbox as Kubernetes objects; secrets only in the Secret; refusals in one line."""

from __future__ import annotations

import base64
import json
import re

import pytest
import yaml

from openwork_sandbox.core.errors import SettingsError, WorkflowError
from openwork_sandbox.sandbox.manifests import manifests
from tests.support.kube import API_KEY, CONFIG, DIGEST, HOST_TOKEN, TOKEN
from tests.support.kube import kube_settings as settings_for
from tests.support.lifecycle import make_settings


def by_kind(objs):
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def test_the_objects_of_a_sandbox_from_its_settings_and_last_push(tmp_path, capsys):
    objs = manifests(settings_for(tmp_path))
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs == objs  # stdout is the same objects, as one YAML stream
    assert sorted(by_kind(objs)) == [
        ("Deployment", "k8s-unit"),
        ("NetworkPolicy", "k8s-unit"),
        ("PersistentVolumeClaim", "k8s-unit-data"),
        ("PersistentVolumeClaim", "k8s-unit-store"),
        ("PersistentVolumeClaim", "k8s-unit-workspace"),
        ("Secret", "k8s-unit-secrets"),
        ("Service", "k8s-unit"),
    ]
    deploy = by_kind(objs)[("Deployment", "k8s-unit")]
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    server, agent = pod["containers"]
    assert (server["name"], agent["name"]) == ("server", "agent")
    assert server["image"] == agent["image"] == "127.0.0.1:5000/owtest-k8s@" + DIGEST
    # the settings' 1.5 CPU and 3072 MiB are the pod's: a quarter to the server, the rest to the agent
    assert server["resources"] == {
        "requests": {"cpu": "375m", "memory": "768Mi"},
        "limits": {"cpu": "375m", "memory": "768Mi"},
    }
    assert agent["resources"]["limits"] == agent["resources"]["requests"] == {"cpu": "1125m", "memory": "2304Mi"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/health", "port": "openwork", "scheme": "HTTP"}
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "/global/health" in agent["livenessProbe"]["exec"]["command"][-1]
    for c in (server, agent):
        assert c["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 61001,
            "runAsGroup": 61001,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    assert pod["securityContext"]["fsGroup"] == 61001 and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["shareProcessNamespace"] is False and pod["automountServiceAccountToken"] is False
    env = {c["name"]: {e["name"]: e["value"] for e in c["env"]} for c in (server, agent)}
    assert env["server"]["OPENWORK_POD_ROLE"] == "server" and env["agent"]["OPENWORK_POD_ROLE"] == "agent"
    assert env["server"]["OPENWORK_TOKEN_FILE"] == "/srv/openwork/secrets/openwork-token"
    assert not any("TOKEN" in name for name in env["agent"])  # the agent is told of no token
    assert env["agent"]["HOME"] == "/data/home"
    mounts = {c["name"]: {m["mountPath"]: m["name"] for m in c["volumeMounts"]} for c in (server, agent)}
    assert mounts["server"] == {
        "/workspace": "workspace",
        "/srv/openwork/store": "store",
        "/data": "server-data",
        "/tmp": "server-tmp",
        "/srv/openwork/secrets": "server-secrets",
    }
    assert mounts["agent"] == {
        "/workspace": "workspace",
        "/data": "data",
        "/tmp": "agent-tmp",
        "/etc/openwork-sandbox": "agent-secrets",
    }
    items = {v["name"]: [i["key"] for i in v["secret"]["items"]] for v in pod["volumes"] if "secret" in v}
    assert items == {
        "server-secrets": ["opencode-password", "openwork-host-token", "openwork-token"],
        "agent-secrets": ["opencode-password", "opencode.jsonc", "sandbox.env"],
    }
    labels = deploy["metadata"]["labels"]
    assert labels["openwork-sandbox.org/sandbox"] == "k8s-unit"
    state_dir = str(tmp_path / "state" / "k8s-unit")
    assert deploy["metadata"]["annotations"]["openwork-sandbox.org/state-dir"] == state_dir
    assert (
        labels["openwork-sandbox.org/state-dir"] not in state_dir
        and len(labels["openwork-sandbox.org/state-dir"]) == 16
    )


def test_secrets_are_in_the_secret_and_nowhere_else(tmp_path, capsys):
    settings = settings_for(tmp_path, OPENWORK_TLS="true")
    for fmt in ("kubernetes", "agent-sandbox"):
        objs = manifests(settings, format=fmt)
        capsys.readouterr()
        key_pem = (tmp_path / "state" / "k8s-unit" / "tls" / "tls.key").read_text()
        secret = by_kind(objs)[("Secret", "k8s-unit-secrets")]
        files = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert files == {
            "openwork-token": TOKEN + "\n",
            "openwork-host-token": HOST_TOKEN + "\n",
            "sandbox.env": f"export ANTHROPIC_API_KEY='{API_KEY}'\n",
            "opencode.jsonc": CONFIG,
            "tls.crt": (tmp_path / "state" / "k8s-unit" / "tls" / "tls.crt").read_text(),
            "tls.key": key_pem,
            "opencode-password": files["opencode-password"],
        }
        assert re.fullmatch(r"[0-9a-f]{64}\n", files["opencode-password"])
        assert HOST_TOKEN not in files["opencode-password"]
        key_line = key_pem.splitlines()[1]
        others = json.dumps([o for o in objs if o["kind"] != "Secret"])
        for value in (TOKEN, HOST_TOKEN, API_KEY, "config-secret-9876", key_line, files["opencode-password"].strip()):
            assert value not in others
            assert base64.b64encode(value.encode()).decode()[:20] not in others
        pod = objs[1]["spec"]["podTemplate"]["spec"] if fmt == "agent-sandbox" else by_kind(objs)[("Deployment", "k8s-unit")]["spec"]["template"]["spec"]  # fmt: skip
        assert pod["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_the_tokens_are_made_and_kept_when_none_are_set(tmp_path, capsys):
    settings = settings_for(tmp_path, OPENWORK_TOKEN=None, OPENWORK_HOST_TOKEN=None)
    first = manifests(settings)[0]["data"]
    again = manifests(settings)[0]["data"]
    capsys.readouterr()
    stored = json.loads((tmp_path / "state" / "k8s-unit" / "tokens.json").read_text())
    assert base64.b64decode(first["openwork-token"]).decode() == stored["token"] + "\n"
    assert base64.b64decode(first["openwork-host-token"]).decode() == stored["host_token"] + "\n"
    assert first == again


@pytest.mark.parametrize(
    ("network", "egress"),
    [
        ("allow-all", [{}]),
        ("none", []),
    ],
)
def test_the_network_policy_follows_the_setting(tmp_path, capsys, network, egress):
    objs = manifests(settings_for(tmp_path, OPENWORK_MICROSANDBOX_NETWORK=network))
    policy = by_kind(objs)[("NetworkPolicy", "k8s-unit")]["spec"]
    assert policy["egress"] == egress
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8787}]}]
    assert policy["policyTypes"] == ["Ingress", "Egress"]


def test_public_only_reaches_the_internet_and_dns_but_no_private_range(tmp_path, capsys):
    objs = manifests(settings_for(tmp_path, OPENWORK_MICROSANDBOX_NETWORK="public-only"))
    to_ip, to_dns = by_kind(objs)[("NetworkPolicy", "k8s-unit")]["spec"]["egress"]
    v4 = to_ip["to"][0]["ipBlock"]
    assert v4["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8"} <= set(v4["except"])
    assert to_dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def test_agent_sandbox_format_is_a_sandbox_with_claim_templates(tmp_path, capsys):
    objs = manifests(settings_for(tmp_path), format="agent-sandbox")
    assert [o["kind"] for o in objs] == ["Secret", "Sandbox", "NetworkPolicy"]
    sandbox = objs[1]
    assert sandbox["apiVersion"] == "agents.x-k8s.io/v1beta1"
    assert [t["metadata"]["name"] for t in sandbox["spec"]["volumeClaimTemplates"]] == ["workspace", "data", "store"]
    volumes = {v["name"] for v in sandbox["spec"]["podTemplate"]["spec"]["volumes"]}
    assert volumes == {"server-data", "server-tmp", "agent-tmp", "server-secrets", "agent-secrets"}  # + the claims
    assert [c["name"] for c in sandbox["spec"]["podTemplate"]["spec"]["containers"]] == ["server", "agent"]


def test_output_writes_one_file_per_object_and_refuses_a_folder_of_other_files(tmp_path, capsys):
    settings = settings_for(tmp_path)
    out = tmp_path / "k8s"
    manifests(settings, output=str(out))
    names = sorted(p.name for p in out.iterdir())
    assert names[0] == "01-secret-k8s-unit-secrets.yaml" and len(names) == 7
    assert all((out / n).stat().st_mode & 0o077 == 0 for n in names)
    assert capsys.readouterr().out == ""
    manifests(settings, output=str(out), format="agent-sandbox")  # its own files: rewritten
    assert len(list(out.iterdir())) == 3
    (out / "mine.txt").write_text("x")
    with pytest.raises(WorkflowError, match=r"^--output .* holds files `invoke manifests` did not write") as exc:
        manifests(settings, output=str(out))
    assert exc.value.exit_code == 2 and (out / "mine.txt").read_text() == "x"


def test_refusals_name_the_setting_in_one_line(tmp_path, capsys):
    with pytest.raises(SettingsError, match="OPENWORK_MICROSANDBOX_NAME=Bad_Name cannot name Kubernetes objects"):
        manifests(settings_for(tmp_path, OPENWORK_MICROSANDBOX_NAME="Bad_Name"))
    settings = make_settings(tmp_path, OPENWORK_MICROSANDBOX_NAME="k8s-unit")
    with pytest.raises(WorkflowError, match="was never pushed from here.*invoke push-image"):
        manifests(settings)
    with pytest.raises(SettingsError, match="--format helm is not one of kubernetes, agent-sandbox"):
        manifests(settings, format="helm")
    unset = settings_for(tmp_path, ANTHROPIC_API_KEY="")
    with pytest.raises(SettingsError, match="ANTHROPIC_API_KEY is named in OPENWORK_SANDBOX_ENV"):
        manifests(unset, output=str(tmp_path / "never"))
    assert not (tmp_path / "never").exists() and capsys.readouterr().out == ""
