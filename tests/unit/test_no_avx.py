"""A CPU without AVX (issue 19, item 3): `doctor` says so, `up` ends with one line naming it.

The real orchestrator 0.18.1 (Bun) dies on such a CPU with Bun's crash report. Here the host has
AVX, so the Docker test boots an image whose command prints that report
(``tests/data/bun-crash-no-avx.txt``: the lines measured in the nested microVM, see
shared/docs/microvm-under-emulation.md) and exits 132, as the real one does there; the product
reads it through the real log path (``docker logs``). Inside the emulated host
(`scripts/microvm-e2e`) the same is checked with the real orchestrator in a real microVM.
"""

from __future__ import annotations

from tests.support.paths import DATA, STANDINS

CRASH = DATA / "bun-crash-no-avx.txt"
LINE = "this CPU has no AVX: openwork-orchestrator 0.18.1 cannot run here"


def test_cpu_flags_come_from_proc_cpuinfo(tmp_path):
    from openwork_sandbox.runtimes.probe import cpu_flags, cpu_has_avx, cpu_virtualization_flag

    with_avx = tmp_path / "a"
    with_avx.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 svm\nbugs\t\t:\n")
    nested = tmp_path / "b"  # what the microVM nested in an emulated host reports
    nested.write_text("processor\t: 0\nflags\t\t: fpu sse4_1 sse4_2 popcnt hypervisor\n")
    assert cpu_has_avx("x86_64", cpu_flags(with_avx)) is True
    assert cpu_has_avx("x86_64", cpu_flags(nested)) is False
    assert cpu_has_avx("aarch64", cpu_flags(nested)) is None
    assert cpu_has_avx("x86_64", cpu_flags(tmp_path / "missing")) is None
    assert cpu_virtualization_flag(with_avx) == "svm" and cpu_virtualization_flag(nested) is None


def test_doctor_row_without_avx(tmp_path):
    from openwork_sandbox.runtimes.choice import HostFacts
    from openwork_sandbox.sandbox.doctor import check_avx
    from tests.support.lifecycle import make_settings

    settings = make_settings(tmp_path)
    no_avx = HostFacts("Linux", "x86_64", avx=False)
    row = check_avx(settings, no_avx)
    assert not row.ok and row.detail == LINE and "OPENWORK_ORCHESTRATOR_BIN_PATH" in row.fix
    assert check_avx(settings, HostFacts("Linux", "x86_64", avx=True)).ok
    own = make_settings(tmp_path, OPENWORK_ORCHESTRATOR_BIN_PATH=str(STANDINS / "standin_openwork_orchestrator.py"))
    assert check_avx(own, no_avx).ok  # the user's own build is baked: doctor only says it must not need AVX
