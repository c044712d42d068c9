"""Every object `invoke manifests` renders is valid, strictly (no unknown field), against the API schemas
of the three newest Kubernetes minor versions kubernetes-validate ships; agent-sandbox's Sandbox against
its CRD's v1beta1 schema (tests/data, from kubernetes-sigs/agent-sandbox), its pod against the Pod's."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import kubernetes_validate.utils as kubernetes_validate  # a test dependency (pyproject's [test])
import pytest

from openwork_sandbox.sandbox.manifests import manifests
from tests.support.kube import kube_settings

SANDBOX_SCHEMA = Path(__file__).parent.parent / "data" / "agent-sandbox-v1beta1-sandbox.schema.json"


def newest_minors(n: int = 3) -> list[str]:
    minors = {kubernetes_validate.major_minor(v) for v in kubernetes_validate.all_versions()}  # "1.37"
    return sorted(minors, key=lambda m: tuple(int(p) for p in m.split(".")))[-n:]


VERSIONS = newest_minors()


def validate(obj: dict) -> None:
    for version in VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("network", ["allow-all", "public-only", "none"])
@pytest.mark.parametrize("tls", ["false", "true"])
def test_every_object_is_valid_for_the_newest_kubernetes_versions(tmp_path, capsys, network, tls):
    objs = manifests(kube_settings(tmp_path, OPENWORK_MICROSANDBOX_NETWORK=network, OPENWORK_TLS=tls))
    assert len(objs) == 7
    for obj in objs:
        validate(obj)


def test_the_validation_is_strict_and_can_fail(tmp_path, capsys):
    deploy = manifests(kube_settings(tmp_path))[4]
    assert deploy["kind"] == "Deployment"
    typo = copy.deepcopy(deploy)
    typo["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(typo)
    wrong = copy.deepcopy(deploy)
    wrong["spec"]["replicas"] = "1"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(wrong)


def strict(schema):
    """The CRD schema as the API server reads it with field validation Strict: an object with properties
    takes no other field (unless it says x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in out and not open_ended:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def sandbox_errors(obj: dict) -> list[str]:
    import jsonschema

    schema = strict(json.loads(SANDBOX_SCHEMA.read_text())["openAPIV3Schema"])
    return [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]


def test_agent_sandbox_format_is_valid_against_its_crd_and_the_pod_schema(tmp_path, capsys):
    secret, sandbox, policy = manifests(kube_settings(tmp_path), format="agent-sandbox")
    validate(secret)
    validate(policy)
    assert sandbox["apiVersion"] == "agents.x-k8s.io/v1beta1"
    assert sandbox_errors(sandbox) == []
    template = sandbox["spec"]["podTemplate"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", **template["metadata"]}}
    pod["spec"] = copy.deepcopy(template["spec"])
    # the volumes the controller adds from the claim templates, so the pod is whole
    pod["spec"]["volumes"] += [{"name": t["metadata"]["name"], "persistentVolumeClaim": {"claimName": "c"}}
                               for t in sandbox["spec"]["volumeClaimTemplates"]]  # fmt: skip
    validate(pod)
    wrong = copy.deepcopy(sandbox)
    wrong["spec"]["volumeClaimTemplate"] = wrong["spec"].pop("volumeClaimTemplates")
    assert any("volumeClaimTemplate" in e for e in sandbox_errors(wrong))
