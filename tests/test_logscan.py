"""The log analyzer: what fails a test, what is benign, and what only a fault excuses."""

from __future__ import annotations

from pathlib import Path

from colo_fixtures.core.verdicts import MiscompareStorm
from colo_fixtures.report.categories import categorise, exception_message
from colo_fixtures.sut.logscan import line_time, miscompare_storm, scan, verdict_of

CONSOLE = """\
[    1.0] Linux version 6.1.0
colo-agent: hb=1 uptime_ms=1000 keys=0 seq=0 memrounds=20 memerrors=0
[   35.446457] general protection fault, probably for non-canonical address 0xdead: 0000 [#1]
[   35.447379] Kernel panic - not syncing: Attempted to kill the idle task!
colo-agent: MEMCHECK FAIL round=12 index=4096 expected=0x1 got=0x2
"""
STDERR = """\
2026-11-28T17:59:37.276779Z qemu-system-x86_64: -chardev socket,id=compare1,host=10.22.1.2,\
port=9004,server=on,wait=on: info: QEMU waiting for connection on: disconnected:tcp:10.22.1.2:9004
2026-11-28T17:59:37.202232Z qemu-system-x86_64: Unable to connect character device red0: \
Failed to connect to '10.22.1.2:9003': Connection refused
2026-11-28T18:18:08.049967Z qemu-system-x86_64: Can't receive COLO message: Input/output error
2026-11-28T18:18:09.000000Z qemu-system-x86_64: warning: something harmless
"""


def test_console_patterns(tmp_path: Path):
    console = tmp_path / "c.log"
    console.write_text(CONSOLE)
    names = [f.pattern for f in scan(console, "console")]
    assert names == ["guest general protection fault", "guest kernel panic",
                     "guest memory divergence"]
    assert str(scan(console, "console")[0]).startswith("guest general protection fault: c.log:3:")


def test_stderr_startup_noise_is_benign_but_colo_errors_are_not(tmp_path: Path):
    stderr = tmp_path / "e.log"
    stderr.write_text(STDERR)
    findings = scan(stderr, "stderr")
    assert [f.line_number for f in findings] == [3]


def test_fault_consequences_are_excused_only_after_the_fault(tmp_path: Path):
    stderr = tmp_path / "e.log"
    stderr.write_text(STDERR)
    fault = line_time("2026-11-28T18:18:08.000000Z x")
    assert fault is not None
    assert scan(stderr, "stderr", fault_at=fault) == []
    assert len(scan(stderr, "stderr", fault_at=fault + 1)) == 1  # the error came before it


def test_allow_list_and_missing_file(tmp_path: Path):
    stderr = tmp_path / "e.log"
    stderr.write_text(STDERR)
    assert scan(stderr, "stderr", allow=(r"Can't receive",)) == []
    assert scan(tmp_path / "absent.log", "console") == []



def test_a_secondary_losing_its_primary_mid_checkpoint_is_a_fault_consequence(tmp_path: Path):
    stderr = tmp_path / "e.log"
    stderr.write_text("2026-11-28T19:45:41.631623Z qemu-system-x86_64: Load VM's live state "
                      "(ram) error\n"
                      # the primary killed while it sent RAM (CI, 2026-11-29)
                      "2026-11-28T19:45:41.631700Z qemu-system-x86_64: Unknown combination of "
                      "migration flags: 0x0\n"
                      "2026-11-28T19:45:41.631800Z qemu-system-x86_64: error while loading "
                      "state section id 1(ram)\n")
    assert len(scan(stderr, "stderr")) == 3
    assert scan(stderr, "stderr", fault_at=line_time("2026-11-28T19:45:41.000000Z x")) == []


def test_unstamped_consequences_are_placed_by_the_log_size_at_the_fault(tmp_path: Path):
    # QEMU does not stamp messages reported while a QMP command runs (seen in CI on
    # 2026-11-28: "Can't receive COLO message" with no timestamp after a kill).
    before = ("2026-11-28T18:18:00.000000Z qemu-system-x86_64: Unable to connect character "
              "device red0: Failed to connect to '10.22.1.2:9003': Connection refused\n")
    after = "qemu-system-x86_64: Can't receive COLO message: Input/output error\n"
    stderr = tmp_path / "e.log"
    stderr.write_text(before + after)
    size_at_fault = len(before.encode())
    assert scan(stderr, "stderr", fault_offset=size_at_fault) == []
    early = scan(stderr, "stderr", fault_offset=size_at_fault + 1)  # written before the fault
    assert [f.line_number for f in early] == [2]
    assert len(scan(stderr, "stderr")) == 1  # no fault at all: an error
    # a line that is not a known consequence is an error wherever it is
    stderr.write_text(before + "qemu-system-x86_64: Assertion `x' failed\n")
    assert len(scan(stderr, "stderr", fault_offset=0)) == 1


def test_a_mirror_without_a_secondary_is_benign_only_before_colo_starts(tmp_path: Path):
    """Traffic that reaches the primary before ``migrate`` cannot be mirrored (no secondary
    yet): benign then; the same message once COLO runs is a packet the secondary missed."""
    stderr = tmp_path / "e.log"
    stderr.write_text(
        "2026-11-29T00:41:48.431260Z qemu-system-x86_64: filter mirror send failed"
        "(Operation not permitted)\n")
    before, after = (line_time(f"2026-11-29T00:41:{s}.000000Z x") for s in ("49", "48"))
    assert before is not None and after is not None
    assert scan(stderr, "stderr", colo_at=before) == []
    assert [f.pattern for f in scan(stderr, "stderr", colo_at=after)] == ["QEMU error"]
    assert len(scan(stderr, "stderr")) == 1


def test_a_miscompare_storm_in_a_primary_trace_is_a_finding(tmp_path: Path):
    """A few miscompares are normal; the limit's worth is a storm, named with its count."""
    trace = tmp_path / "primary-trace.log"
    normal = "4201@1795923130.439290:colo_compare_main : packet same and release packet\n"
    differ = "4201@1795923130.5:colo_compare_main : packet different\n"
    udp = "4201@1795923130.6:colo_compare_udp_miscompare primary pkt size = 60\n"
    trace.write_text(normal * 100 + differ * 3 + udp)
    assert miscompare_storm(trace, limit=10) is None
    trace.write_text(normal + differ * 8 + udp * 2)
    storm = miscompare_storm(trace, limit=10)
    assert storm is not None and storm.line_number == 2
    assert str(storm).startswith("colo-compare miscompare storm: primary-trace.log:2: "
                                 "10 miscompares (limit 10)")
    verdict = verdict_of([storm])
    assert isinstance(verdict, MiscompareStorm)
    assert categorise("failed", exception_message(verdict)) == "colo-compare miscompare storm"
    assert miscompare_storm(tmp_path / "missing.log") is None
