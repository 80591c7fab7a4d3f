"""Known issues excuse only the call phase of a covered test, only the SUT failure types they
name, and only with their evidence on the survivor; a COLO violation is never excused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from colo_fixtures.core import verdicts
from colo_fixtures.core.verdicts import ClientTimeout, ColoViolation, LostWrite, SutFailure
from colo_fixtures.evidence.known_issues import (
    KNOWN_ISSUES,
    Evidence,
    KnownIssue,
    explaining_line,
    frozen_survivor_nic,
    on_survivor_log,
    rewriter_offset_not_carried,
    virtio_queues,
)

ROOT = Path(__file__).resolve().parent.parent
VIOLATIONS = sorted(cls.__name__ for cls in verdicts.verdict_types()
                    if issubclass(cls, ColoViolation))
BROKEN_NIC = ("2026-11-28T21:51:35.998773Z qemu-system-x86_64: virtio: zero sized buffers "
              "are not allowed\n")
# The stand-in test module covers what a takeover test is (any parametrization).
TAKEOVER_TESTS = ("suites/test_failover.py::test_repeated_cycles[*",)
# A log-line issue and a NIC-state issue for the tests (no live entry is either since 0003
# fixed the virtio bug); the stand-in test module adds the same ones to the plugin's list.
FROZEN_ISSUE_ARGS = dict(
    name="standin-frozen-nic", reason="a stand-in NIC-state issue: " + "x" * 80,
    since="2026-12-02", evidence_text="the survivor's queues frozen, TX pending, packets on "
                                      "its tap")
LINE_ISSUE_ARGS = dict(
    name="standin-virtio-line", reason="a stand-in log-line issue: " + "x" * 80,
    since="2026-12-02", excuses=(ClientTimeout,),
    evidence_text="the line in the survivor's own stderr",
    log_line=r"qemu-system-\w+: virtio: zero sized buffers are not allowed")
LINE_ISSUE = KnownIssue(tests=TAKEOVER_TESTS,
                        evidence=on_survivor_log(r"virtio: zero sized buffers"),
                        **LINE_ISSUE_ARGS)  # type: ignore[arg-type]
FROZEN = """\
secondary /machine/peripheral/e0/virtio-backend: broken=False started=True vm-running=True status=ok
  queue 0 rx: inuse=0 last-avail=26 shadow-avail=256 used=26 signalled-used=0 avail=256
  queue 1 tx: inuse=0 last-avail=28 shadow-avail=31 used=28 signalled-used=0 avail=31
  queue 2 ctrl: inuse=0 last-avail=9 shadow-avail=9 used=9 signalled-used=0
"""
# What the rewriter-offset issue's evidence looks like (trace lines of a CI run, 2026-12-02):
# the earlier survivor kept offset 1434413 after its takeover; the last survivor's guest
# sends its own sequence numbers (offset 0), 1434402 ahead of what the client acknowledges.
KEPT_OFFSET = """\
10582@1796200436.959479:colo_failover_set_state new state completed
10582@1796200437.155871:colo_filter_rewriter_pkt_info handle_primary_tcp_pkt: src/dst: \
192.168.100.1/192.168.100.1 p: seq/ack=4171538915/294322933  flags=0x18
10582@1796200437.155891:colo_filter_rewriter_conn_offset : offset=1434413
"""
UNTRANSLATED = """\
10648@1796200452.777006:colo_failover_set_state new state completed
10648@1796200453.787983:colo_filter_rewriter_pkt_info handle_primary_tcp_pkt: src/dst: \
192.168.100.1/192.168.100.1 p: seq/ack=4171539251/294323238  flags=0x18
10648@1796200453.787991:colo_filter_rewriter_conn_offset : offset=0
10648@1796200454.667910:colo_filter_rewriter_pkt_info handle_secondary_tcp_pkt: src/dst: \
192.168.100.10/192.168.100.10 p: seq/ack=295757640/4171539251  flags=0x18
10648@1796200454.667935:colo_filter_rewriter_conn_offset : offset=0
"""
HEALTHY = """\
primary /machine/peripheral/e0/virtio-backend: broken=False started=True vm-running=True status=ok
  queue 0 rx: inuse=0 last-avail=41 shadow-avail=289 used=41 signalled-used=41
  queue 1 tx: inuse=0 last-avail=43 shadow-avail=43 used=43 signalled-used=43
  queue 2 ctrl: inuse=0 last-avail=9 shadow-avail=9 used=9 signalled-used=9
"""


def test_every_known_issue_is_complete_and_names_existing_tests():
    for issue in KNOWN_ISSUES:
        assert issue.excuses and all(issubclass(t, SutFailure) for t in issue.excuses)
        assert len(issue.reason) > 80 and issue.since.startswith("2026-"), issue.name
        for pattern in issue.tests:
            path, name = pattern.split("::")
            function = name.split("[")[0]
            assert f"def {function}(" in (ROOT / path).read_text(), pattern


def test_a_known_issue_cannot_excuse_a_colo_violation():
    with pytest.raises(ValueError, match="never excused"):
        KnownIssue("x", "r", "2026-12-02", ("t",), (LostWrite,), frozen_survivor_nic,  # type: ignore[arg-type]
                   "none")


def test_known_log_lines_are_recognised_and_others_are_not():
    issues = (LINE_ISSUE,)
    assert explaining_line(BROKEN_NIC.strip(), issues) is LINE_ISSUE
    assert explaining_line("qemu-system-x86_64: Can't receive COLO message", issues) is None
    assert explaining_line(BROKEN_NIC.strip()) is None, \
        "0003 fixed the zero-sized-buffers bug: the line is a failure again, not a known issue"


def test_the_virtio_error_line_is_a_broken_nic(tmp_path: Path):
    """What 0003 fixed, should it come back: the analyzer names it NicBroken."""
    from colo_fixtures.sut.logscan import scan, verdict_of

    log = tmp_path / "secondary-stderr.log"
    log.write_text(BROKEN_NIC)
    assert isinstance(verdict_of(scan(log, "stderr")), verdicts.NicBroken)


def test_virtio_queues_are_parsed_per_side():
    queues = virtio_queues(HEALTHY + FROZEN)
    assert queues["secondary"]["tx"] == {"last_avail": 28, "shadow_avail": 31, "used": 28,
                                         "signalled": 0, "avail": 31}
    assert queues["primary"]["ctrl"]["avail"] is None


def test_the_frozen_nic_needs_every_piece_of_its_evidence_on_the_survivor():
    """The signature seen in CI (2026-11-29), on the survivor, with the client's packets on
    its tap; without any one of these it is not this known issue."""
    ev = Evidence(survivor="secondary", virtio=HEALTHY + FROZEN, tap_tx_since_failover=12)
    assert "12 packets reached its tap" in (frozen_survivor_nic(ev) or "")
    # the client's packets never reached the survivor's tap: a harness or lab bug
    assert frozen_survivor_nic(Evidence("secondary", virtio=FROZEN,
                                        tap_tx_since_failover=0)) is None
    assert frozen_survivor_nic(Evidence("secondary", virtio=FROZEN)) is None
    # the freeze on the side that did not survive
    assert frozen_survivor_nic(Evidence("primary", virtio=HEALTHY + FROZEN,
                                        tap_tx_since_failover=12)) is None
    # TX not pending: nothing the guest offered was left unprocessed
    idle = FROZEN.replace("shadow-avail=31 used=28 signalled-used=0 avail=31",
                          "shadow-avail=28 used=28 signalled-used=0 avail=28")
    assert frozen_survivor_nic(Evidence("secondary", virtio=idle,
                                        tap_tx_since_failover=12)) is None
    # one queue signalled: the NIC moves
    moving = FROZEN.replace("used=26 signalled-used=0", "used=26 signalled-used=26")
    assert frozen_survivor_nic(Evidence("secondary", virtio=moving,
                                        tap_tx_since_failover=12)) is None
    assert frozen_survivor_nic(Evidence()) is None


def rewriter_evidence(tmp_path: Path, earlier: str, survivor: str,
                      later: str | None = None) -> Evidence:
    logs = {}
    traces = [("secondary", earlier), ("secondary3", survivor)]
    if later is not None:  # more cycles after the stall, with a survivor in step
        traces.append(("secondary5", later))
    for name, text in traces:
        (tmp_path / f"{name}-trace.log").write_text(text)
        logs[name] = [tmp_path / f"{name}-stderr.log", tmp_path / f"{name}-trace.log"]
    return Evidence(survivor=traces[-1][0], logs=logs)


def test_the_rewriter_offset_issue_needs_the_offset_kept_and_then_missing(tmp_path: Path):
    found = rewriter_offset_not_carried(rewriter_evidence(tmp_path, KEPT_OFFSET, UNTRANSLATED))
    assert found == ("secondary3-trace.log: the guest sends seq 295757640 at offset=0 while "
                     "the client acknowledges 294323238, 1434402 apart; secondary-trace.log: "
                     "offset 1434413 kept after its takeover")
    # no earlier survivor translated anything after its takeover
    before_takeover = "".join(KEPT_OFFSET.splitlines(True)[1:]) + KEPT_OFFSET.splitlines()[0]
    assert rewriter_offset_not_carried(rewriter_evidence(tmp_path, before_takeover,
                                                         UNTRANSLATED)) is None
    # the survivor translates the connection too: whatever broke it, not this issue
    carried = UNTRANSLATED.replace("offset=0", "offset=1434413")
    assert rewriter_offset_not_carried(rewriter_evidence(tmp_path, KEPT_OFFSET, carried)) is None
    # the guest's sequence numbers match the client's acks: the connection is in step
    in_step = UNTRANSLATED.replace("seq/ack=295757640/", "seq/ack=294323238/")
    assert rewriter_offset_not_carried(rewriter_evidence(tmp_path, KEPT_OFFSET, in_step)) is None
    assert rewriter_offset_not_carried(Evidence()) is None


def test_the_rewriter_evidence_is_found_at_a_survivor_before_the_last(tmp_path: Path):
    """A nightly runs 16 cycles: the connection stalls at cycle 3 and the cycles go on, so
    the last survivor is not the one whose guest sends untranslated sequence numbers."""
    in_step = UNTRANSLATED.replace("seq/ack=295757640/", "seq/ack=294323238/")
    found = rewriter_offset_not_carried(rewriter_evidence(tmp_path, KEPT_OFFSET, UNTRANSLATED,
                                                          later=in_step))
    assert found is not None and found.startswith("secondary3-trace.log: the guest sends")
    assert rewriter_offset_not_carried(rewriter_evidence(tmp_path, KEPT_OFFSET, in_step,
                                                         later=in_step)) is None


# ------------------------------------------------------------ the plugin, end to end

STANDIN = '''
import pytest
from colo_fixtures.core import verdicts
from colo_fixtures.evidence import known_issues
from colo_fixtures.plugin.colo_run import STARTED_KEY

known_issues.KNOWN_ISSUES += (
    known_issues.KnownIssue(
        tests={TAKEOVER_TESTS!r}, evidence=known_issues.frozen_survivor_nic,
        **{{**{FROZEN_ARGS}, "excuses": (verdicts.ClientTimeout,)}}),
    known_issues.KnownIssue(
        tests={TAKEOVER_TESTS!r},
        evidence=known_issues.on_survivor_log(r"virtio: zero sized buffers"),
        **{{**{LINE_ARGS}, "excuses": (verdicts.ClientTimeout,)}}),
)

CASES = {CASES!r}
TRACED = True  # the rewriter-offset evidence in the traces


class Process:
    def __init__(self, name, folder):
        self.name = name
        self.stderr_log = folder / f"{{name}}-stderr.log"
        self.console_log = folder / f"{{name}}-console.log"
        self.trace_log = folder / f"{{name}}-trace.log"

    def sync_logs(self):
        pass


class Replica:
    def __init__(self, process, tap):
        self.process, self.name, self.tap_tx_at_takeover = process, process.name, tap


class Pair:
    """What the plugin reads of a COLO pair after a takeover by the secondary."""

    def __init__(self, folder, tap):
        self.processes = [Process("primary", folder), Process("secondary", folder)]
        self.primary_replica = Replica(self.processes[1], 100)
        self.tap = tap

    def virtio_net_state(self):
        return {HEALTHY!r} + {FROZEN!r}

    def tap_tx_since_takeover(self):
        return self.tap


class Lab:
    def __init__(self, pair):
        self.pair = pair


def raise_(name):
    raise getattr(verdicts, name)(f"{{name}} raised on purpose")


@pytest.fixture
def standin(request, artifacts):
    name, phase, tap = CASES[request.node.callspec.id]
    (artifacts / "secondary-stderr.log").write_text({BROKEN_NIC!r})
    if TRACED:
        (artifacts / "primary-trace.log").write_text({KEPT_OFFSET!r})
        (artifacts / "secondary-trace.log").write_text({UNTRANSLATED!r})
    request.node.stash[STARTED_KEY] = [Lab(Pair(artifacts, tap))]
    if phase == "setup":
        raise_(name)
    yield name, phase
    if phase == "teardown":
        raise_(name)


@pytest.mark.parametrize("case", list(CASES))
def test_repeated_cycles(standin, case):
    name, phase = standin
    if phase == "call" and name:
        raise_(name)
'''


def standin(cases: dict[str, tuple[str, str, int]], template: str = STANDIN) -> str:
    args = {k: v for k, v in LINE_ISSUE_ARGS.items() if k != "excuses"}
    return template.format(CASES=cases, HEALTHY=HEALTHY, FROZEN=FROZEN, BROKEN_NIC=BROKEN_NIC,
                           LINE_ARGS=repr(args), FROZEN_ARGS=repr(FROZEN_ISSUE_ARGS),
                           TAKEOVER_TESTS=TAKEOVER_TESTS, KEPT_OFFSET=KEPT_OFFSET,
                           UNTRANSLATED=UNTRANSLATED)


def run_standin(tmp_path: Path, cases: dict[str, tuple[str, str, int]], *args: str,
                template: str = STANDIN) -> dict[str, set[str]]:
    """Run the stand-in test with the real plugin; the outcome words of each case (and
    ``_stdout``, the run's output, and ``_rc``, its exit code)."""
    (tmp_path / "suites").mkdir(exist_ok=True)
    (tmp_path / "suites" / "test_failover.py").write_text(standin(cases, template))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_failover.py", "-rA", "-p",
         "no:cacheprovider", "--report-dir", str(tmp_path / "reports"),
         "--rootdir", str(tmp_path), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    outcomes: dict[str, set[str]] = {case: set() for case in cases}
    for line in result.stdout.splitlines():
        word, _, rest = line.partition(" ")
        for case in cases:
            if rest.startswith(f"suites/test_failover.py::test_repeated_cycles[{case}]"):
                outcomes[case].add(word)
    outcomes["_stdout"] = {result.stdout}
    outcomes["_rc"] = {str(result.returncode)}
    return outcomes


def test_no_colo_violation_is_excused_in_any_phase(tmp_path: Path):
    """Every ColoViolation type, in call, setup and teardown of a test four known issues
    cover, with a known log line in the survivor's stderr and the frozen-NIC state on the
    survivor: a failure (call) or an error (setup, teardown), never an xfail."""
    cases = {f"{name}-{phase}": (name, phase, 12) for name in VIOLATIONS
             for phase in ("call", "setup", "teardown")}
    outcomes = run_standin(tmp_path, cases)
    out = outcomes.pop("_stdout").pop()
    outcomes.pop("_rc")
    for case, words in outcomes.items():
        want = "FAILED" if case.endswith("-call") else "ERROR"
        assert want in words and "XFAIL" not in words, (case, words, out)
    assert "is a COLO violation: no known issue excuses it" in out


def test_a_sut_failure_is_excused_only_in_call_and_only_with_its_evidence(tmp_path: Path):
    cases = {
        "timeout-call": ("ClientTimeout", "call", 12),  # the frozen NIC, all evidence
        "timeout-no-packets": ("ClientTimeout", "call", 0),  # the packets never arrived
        "timeout-setup": ("ClientTimeout", "setup", 12),
        "timeout-teardown": ("ClientTimeout", "teardown", 12),
        "qemu-error-call": ("QemuError", "call", 12),  # a type no issue names
        "passes": ("", "call", 12),
    }
    outcomes = run_standin(tmp_path, cases)
    out = outcomes.pop("_stdout").pop()
    assert outcomes["timeout-call"] == {"XFAIL"}, out
    assert "known issue standin-virtio-line (secondary-stderr.log:1)" in out
    assert "known issue standin-frozen-nic (virtio.txt: secondary" in out
    assert outcomes["timeout-setup"] == {"ERROR"}, out
    assert "ERROR" in outcomes["timeout-teardown"], out
    assert outcomes["qemu-error-call"] == {"FAILED"}, out
    assert "excuses only ClientTimeout, not QemuError" in out
    assert outcomes["passes"] == {"PASSED"}, out
    # the frozen NIC (all its evidence) excuses the first; the log line the one whose
    # client packets never reached the tap (a broken device explains that too)
    assert outcomes["timeout-no-packets"] == {"XFAIL"}, out
    assert "standin-frozen-nic: excused 1 failure(s)" in out, out
    assert "standin-virtio-line: excused 1 failure(s)" in out, out


def test_the_frozen_nic_without_client_packets_on_the_tap_is_a_failure(tmp_path: Path):
    """No known log line this time: the frozen-NIC issue alone decides, and the client's
    packets never reached the survivor's tap (a harness or lab bug looks like this)."""
    cases = {"frozen-with-packets": ("ClientTimeout", "call", 12),
             "frozen-no-packets": ("ClientTimeout", "call", 0)}
    template = STANDIN.replace("(artifacts / \"secondary-stderr.log\").write_text", "len")
    outcomes = run_standin(tmp_path, cases, template=template)
    out = outcomes["_stdout"].pop()
    assert outcomes["frozen-with-packets"] == {"XFAIL"}, out
    assert "known issue standin-frozen-nic (virtio.txt: secondary" in out
    assert outcomes["frozen-no-packets"] == {"FAILED"}, out
    assert "standin-frozen-nic: its evidence is missing" in out
    assert outcomes["_rc"] == {"1"}


def test_runxfail_excuses_nothing(tmp_path: Path):
    cases = {"timeout-call": ("ClientTimeout", "call", 12)}
    outcomes = run_standin(tmp_path, cases, "--runxfail")
    assert outcomes["timeout-call"] == {"FAILED"}, outcomes["_stdout"]


def test_a_strict_node_id_issue_fails_the_run_when_its_test_passes(tmp_path: Path):
    """The cycles test's own issue: its symptom (a broken connection) is excused; when the
    test passes, the issue is gone and the run says to remove it."""
    issue = next(i for i in KNOWN_ISSUES if i.strict)
    cases = {"opened-since-checkpoint": ("", "call", 0)}
    outcomes = run_standin(tmp_path, cases)
    out = outcomes["_stdout"].pop()
    assert outcomes["opened-since-checkpoint"] == {"FAILED"}, out
    assert f"[XPASS(strict)] known issue {issue.name} no longer happens" in out
    cases = {"opened-since-checkpoint": ("ConnectionBroken", "call", 0)}
    outcomes = run_standin(tmp_path, cases)
    out = outcomes["_stdout"].pop()
    assert outcomes["opened-since-checkpoint"] == {"XFAIL"}, out
    assert f"known issue {issue.name} (secondary-trace.log: the guest sends seq" in out
    # without the trace evidence the broken connection is a failure, not this issue
    untraced = STANDIN.replace("TRACED = True", "TRACED = False")
    outcomes = run_standin(tmp_path, cases, template=untraced)
    out = outcomes["_stdout"].pop()
    assert outcomes["opened-since-checkpoint"] == {"FAILED"}, out
    assert f"{issue.name}: its evidence is missing" in out


def test_a_verdict_type_not_named_by_the_issue_is_reported_with_the_reason(tmp_path: Path):
    cases = {"opened-since-checkpoint": ("QemuError", "call", 0)}
    outcomes = run_standin(tmp_path, cases)
    out = outcomes["_stdout"].pop()
    assert outcomes["opened-since-checkpoint"] == {"FAILED"}, out
    assert "rewriter-offset-lost-at-resume excuses only ConnectionBroken, not QemuError" \
        in out


def test_client_timeout_is_a_sut_failure():
    assert issubclass(ClientTimeout, SutFailure) and not issubclass(ClientTimeout,
                                                                      ColoViolation)
