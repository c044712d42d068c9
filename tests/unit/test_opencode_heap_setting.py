"""OPENWORK_OPENCODE_HEAP_MIB: the setting, what `up` hands the sandbox, when it recreates one, and
where the pod carries it, against the in-memory runtime (tests/support/fake_runtime.py). What the
image makes of it (opencode's BUN_JSC_forceRAMSize) runs in tests/docker/test_boundary.py."""

from __future__ import annotations

import pytest

from openwork_sandbox.config import load_settings
from openwork_sandbox.core.errors import SettingsError
from openwork_sandbox.sandbox.up import up
from tests.support.fake_runtime import flow_settings
from tests.support.lifecycle import up_json

HEAP = "OPENWORK_OPENCODE_HEAP_MIB"


def test_off_by_default_and_a_bad_value_is_one_line_naming_it(tmp_path):
    (tmp_path / "empty.env").write_text("")
    loaded = lambda env: load_settings(environ=env, env_file=tmp_path / "empty.env", root=tmp_path)  # noqa: E731
    assert loaded({}).opencode_heap == 0
    assert loaded({HEAP: "512"}).opencode_heap == 512
    for bad in ("-1", "lots", "300000"):
        with pytest.raises(SettingsError) as info:
            loaded({HEAP: bad})
        assert info.value.exit_code == 2
        assert len(info.value.problems) == 1 and info.value.problems[0].startswith(f'{HEAP}="{bad}" (from environment)')


def test_up_hands_it_to_the_sandbox_only_when_set(fake_engine, tmp_path):
    settings = flow_settings(tmp_path)
    up(settings)
    assert HEAP not in fake_engine.runtime_for("docker", settings).spec.env
    (tmp_path / "b").mkdir()
    other = flow_settings(tmp_path / "b", **{HEAP: "256"})
    up(other)
    assert fake_engine.runtime_for("docker", other).spec.env[HEAP] == "256"


def test_setting_it_recreates_the_sandbox_and_unset_again_the_first_one_is_kept(fake_engine, tmp_path, capsys):
    first = flow_settings(tmp_path)
    up(first)
    port = str(first.port)
    assert up_json(flow_settings(tmp_path, OPENWORK_MICROSANDBOX_PORT=port, **{HEAP: "256"}), capsys)["action"] == (
        "recreated"
    )
    assert up_json(flow_settings(tmp_path, OPENWORK_MICROSANDBOX_PORT=port), capsys)["action"] == "recreated"
    assert up_json(flow_settings(tmp_path, OPENWORK_MICROSANDBOX_PORT=port), capsys)["action"] == "reused"


def test_the_pod_gives_it_to_opencodes_container(tmp_path):
    from openwork_sandbox.sandbox.manifests import manifests
    from tests.support.kube import kube_settings

    objs = manifests(kube_settings(tmp_path, **{HEAP: "384"}))
    (deploy,) = [o for o in objs if o["kind"] == "Deployment"]
    envs = {
        {e["name"]: e.get("value") for e in c["env"]}["OPENWORK_POD_ROLE"]: c["env"]
        for c in deploy["spec"]["template"]["spec"]["containers"]
    }
    assert {"name": HEAP, "value": "384"} in envs["agent"]
    assert all(e["name"] != HEAP for e in envs["server"])
