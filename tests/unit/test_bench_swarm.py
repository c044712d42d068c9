"""What scripts/bench-swarm reads and prints without a swarm (harness.bench.swarm): a cgroup's memory
under either cgroup version, and the table's per-node spread. The run itself needs the swarm lab
(root) and prints figures; it is not a test."""

from __future__ import annotations

from harness.bench import common, swarm

MIB = 2**20


def _v1_tree(root, cgroup, usage, inactive_file):
    folder = root / "memory" / cgroup
    folder.mkdir(parents=True)
    (folder / "memory.usage_in_bytes").write_text(f"{usage}\n")
    # a v1 memory.stat: the cgroup's own counters first, then the hierarchy's totals (the ones read)
    (folder / "memory.stat").write_text(
        f"cache 0\nrss 0\ninactive_file 0\ntotal_cache 9\ntotal_rss 7\ntotal_inactive_file {inactive_file}\n"
    )


def test_v1_memory_is_usage_less_the_hierarchy_s_inactive_file_pages(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "CGROUP_ROOT", tmp_path)
    _v1_tree(tmp_path, "openwork-lab-node2", usage=300 * MIB, inactive_file=20 * MIB)
    assert common.cgroup_memory_mib("/openwork-lab-node2") == 280.0


def test_v2_memory_is_memory_current_less_inactive_file(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "CGROUP_ROOT", tmp_path)
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    folder = tmp_path / "openwork-lab-node1" / "abc123"
    folder.mkdir(parents=True)
    (folder / "memory.current").write_text(f"{512 * MIB}\n")
    (folder / "memory.stat").write_text(f"anon {400 * MIB}\nfile {100 * MIB}\ninactive_file {112 * MIB}\n")
    assert common.cgroup_memory_mib("openwork-lab-node1/abc123") == 400.0


def test_a_cgroup_that_does_not_exist_has_no_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "CGROUP_ROOT", tmp_path)
    assert common.cgroup_memory_mib("openwork-lab-node9") is None
    assert swarm.node_memory(2) == {"node1": None, "node2": None}


def test_the_table_counts_each_node_s_sandboxes_from_status_s_node_field():
    box = dict(port=19611, up_exit=0, up_seconds=12.0, up_said="", healthy=True, memory_mib=270.0)
    result = dict(
        nodes=3,
        per_node=1,
        cpus=0.5,
        memory_mib=1024,
        start_slots=None,
        stagger=0.0,
        load_before=1.0,
        load_after=2.0,
        wall_seconds=14.0,
        reset_seconds=8.0,
        node_memory_before={"node1": 100.0, "node2": 10.0, "node3": None},
        node_memory_after={"node1": 640.0, "node2": 10.0, "node3": 50.0},
        sandboxes=[
            {**box, "name": "bench-swab-1", "node": "node1 (10.213.0.11)"},
            {**box, "name": "bench-swab-2", "node": "node1 (10.213.0.11)"},
            {**box, "name": "bench-swab-3", "node": None, "up_exit": 1, "healthy": False, "up_said": "no node fits"},
        ],
    )
    lines = swarm.table(result).splitlines()
    assert [line.split() for line in lines if line.startswith("node") and "sandboxes" not in line] == [
        ["node1", "2", "100", "640", "+540"],
        ["node2", "0", "10", "10", "+0"],
        ["node3", "0", "-", "50", "-"],
    ]
    assert "  up said: no node fits" in lines
    assert (
        "healthy: 2/3; all `up`s returned after 14.0 s; per `up` that returned 0: median 12.0 s, min 12.0 s, max 12.0 s"
        in lines
    )
