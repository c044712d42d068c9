"""The pod `invoke manifests` renders passes Pod Security "restricted" (tests/support/pod_security.py: the
standard's rules, offline), in both formats; the checker refuses what the standard refuses."""

from __future__ import annotations

import copy

import pytest

from openwork_sandbox.sandbox.manifests import manifests
from tests.support.kube import kube_settings
from tests.support.pod_security import violations


def template(tmp_path, fmt: str, **env) -> dict:
    objs = manifests(kube_settings(tmp_path, **env), format=fmt)
    if fmt == "agent-sandbox":
        return objs[1]["spec"]["podTemplate"]
    (deploy,) = [o for o in objs if o["kind"] == "Deployment"]
    return deploy["spec"]["template"]


@pytest.mark.parametrize("fmt", ["kubernetes", "agent-sandbox"])
@pytest.mark.parametrize("tls", ["false", "true"])
def test_the_rendered_pod_passes_restricted(tmp_path, capsys, fmt, tls):
    assert violations(template(tmp_path, fmt, OPENWORK_TLS=tls)) == []


def test_the_checker_refuses_what_restricted_refuses(tmp_path, capsys):
    good = template(tmp_path, "kubernetes")
    cases = {
        "Running as Non-root user: server runAsUser 0": lambda s: s["containers"][0]["securityContext"].update(
            runAsUser=0
        ),
        "Running as Non-root: agent": lambda s: s["containers"][1]["securityContext"].update(runAsNonRoot=False),
        "Capabilities: server adds ['DAC_READ_SEARCH']": lambda s: s["containers"][0]["securityContext"][
            "capabilities"
        ].update(add=["DAC_READ_SEARCH"]),
        "Privilege Escalation: agent does not set allowPrivilegeEscalation: false": lambda s: s["containers"][1][
            "securityContext"
        ].pop("allowPrivilegeEscalation"),
        "Host Namespaces: hostPID": lambda s: s.update(hostPID=True),
        "Volume Types: tmp is ['hostPath']": lambda s: s["volumes"].append({"name": "tmp", "hostPath": {"path": "/"}}),
        "Seccomp: server Unconfined": lambda s: s["containers"][0]["securityContext"].update(
            seccompProfile={"type": "Unconfined"}
        ),
    }
    for expected, breaks in cases.items():
        bad = copy.deepcopy(good)
        breaks(bad["spec"])
        assert expected in violations(bad), expected
    # the pod as it was before (uid 0 with capabilities added) breaks four rules
    root = copy.deepcopy(good)
    for c in root["spec"]["containers"]:
        c["securityContext"].update(runAsUser=0, runAsNonRoot=False)
        c["securityContext"]["capabilities"]["add"] = ["CHOWN", "DAC_READ_SEARCH", "SETUID"]
    assert {v.split(":")[0] for v in violations(root)} == {
        "Capabilities (baseline)",
        "Running as Non-root",
        "Running as Non-root user",
        "Capabilities",
    }
