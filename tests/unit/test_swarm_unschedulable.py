"""The swarm runtime's answer to a task swarm cannot schedule (another host placed on the same node
meanwhile): one line with the scheduler's words and the way out, the new service removed first; a
start keeps the service. Swarm's answers stated by hand (no engine)."""

from __future__ import annotations

import pytest

from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.runtimes.swarm import cluster
from openwork_sandbox.runtimes.swarm.runtime import SwarmRuntime

SAYS = "no suitable node (insufficient resources on 1 node)"


@pytest.fixture
def rt(tmp_path, monkeypatch):
    runtime = SwarmRuntime("sb", tmp_path)
    runtime.removed = 0

    def remove() -> bool:
        runtime.removed += 1
        return True

    monkeypatch.setattr(runtime, "remove", remove)
    return runtime


def test_a_task_swarm_keeps_pending_is_one_line_and_a_new_service_is_removed(rt, monkeypatch):
    monkeypatch.setattr(cluster, "unschedulable", lambda name: SAYS)
    with pytest.raises(WorkflowError) as err:
        rt._refuse_unschedulable("sb cannot start on node node2 (10.0.0.2)", remove=True, wait=0)
    assert err.value.message == (
        f"sb cannot start on node node2 (10.0.0.2): swarm says {SAYS}; free that node (invoke down another "
        "sandbox there), or lower OPENWORK_MICROSANDBOX_CPUS / OPENWORK_MICROSANDBOX_MEMORY"
    )
    assert rt.removed == 1


def test_a_start_keeps_its_service_and_says_how_to_stop_trying(rt, monkeypatch):
    monkeypatch.setattr(cluster, "unschedulable", lambda name: SAYS)
    with pytest.raises(WorkflowError) as err:
        rt._refuse_unschedulable("sb cannot start", remove=False, wait=0)
    assert err.value.message.endswith("(invoke down stops trying)") and rt.removed == 0


def test_a_task_scheduled_in_time_is_no_refusal(rt, monkeypatch):
    answers = iter([SAYS, None])
    monkeypatch.setattr(cluster, "unschedulable", lambda name: next(answers))
    rt._refuse_unschedulable("sb cannot start", remove=True, wait=5)
    assert rt.removed == 0
