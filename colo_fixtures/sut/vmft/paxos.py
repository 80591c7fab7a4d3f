"""vm-ft's RDMA Paxos (DARE) logs: parsed into records, then judged.

DARE writes one log per node (``dare_log_file``). The lines the harness reads, as
documented in COLO-FACTS §4::

    [1700000000:000123] [T3] Start election
    [1700000000:000456] [T3] Vote for p2
    [1700000000:000789] [T3] Votes: (0, 1, 2)
    [1700000000:000999] [T3] LEADER
    [1700000001:000001] [T3] Follow p2
    >> Connection establish <<
    [ERROR] dare_ibv.c/412/dare_init_ib_device() No HCAs available

and, with ``colo_debug=1``, one line per checkpoint from vm-ft's COLO::

    [LEADER 17] output_counter 42, 3ms
    [BACKUP 17] output_counter 42, 3ms

Node indices: the primary (Paxos leader) is p2, the secondary p1, the sentinel p0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

NODE_OF_ROLE = {"primary": 2, "secondary": 1, "sentinel": 0}

EVENT = re.compile(r"^\[(?P<sec>\d+):(?P<usec>\d+)\]\s+\[T(?P<term>\d+)\]\s+(?P<text>.*)$")
ERROR = re.compile(r"^\[ERROR\]\s+(?P<where>\S+)\s*(?P<text>.*)$")
CHECKPOINT = re.compile(
    r"^\[(?P<role>LEADER|BACKUP) (?P<n>\d+)\]\s+output_counter (?P<out>\d+),\s*(?P<ms>\d+)ms")
CONNECTED = ">> Connection establish <<"


@dataclass(frozen=True)
class DareRecord:
    """One meaningful line of a node's DARE log."""

    node: int
    line_number: int
    kind: str  # election | vote | votes | leader | follow | connected | error | checkpoint
    term: int | None = None
    time: float | None = None
    peer: int | None = None  # vote for / follow p<peer>
    voters: tuple[int, ...] = ()
    checkpoint: int | None = None
    role: str | None = None  # LEADER | BACKUP, on checkpoint lines
    text: str = ""


def parse_dare_log(text: str, node: int) -> list[DareRecord]:
    """Records of one node's log; lines the harness does not read are skipped."""
    records = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if record := _parse_line(line, node, number):
            records.append(record)
    return records


def _parse_line(line: str, node: int, number: int) -> DareRecord | None:
    if line == CONNECTED:
        return DareRecord(node, number, "connected", text=line)
    if match := ERROR.match(line):
        return DareRecord(node, number, "error", text=f"{match['where']} {match['text']}")
    if match := CHECKPOINT.match(line):
        return DareRecord(node, number, "checkpoint", checkpoint=int(match["n"]),
                          role=match["role"], text=line)
    match = EVENT.match(line)
    if not match:
        return None
    term, text = int(match["term"]), match["text"].strip()
    stamp = int(match["sec"]) + int(match["usec"]) / 1e6
    base = {"node": node, "line_number": number, "term": term, "time": stamp, "text": text}
    if text == "Start election":
        return DareRecord(kind="election", **base)
    if text == "LEADER":
        return DareRecord(kind="leader", **base)
    if peer := re.fullmatch(r"Vote for p(\d+)", text):
        return DareRecord(kind="vote", peer=int(peer[1]), **base)
    if peer := re.fullmatch(r"Follow p(\d+)", text):
        return DareRecord(kind="follow", peer=int(peer[1]), **base)
    if votes := re.fullmatch(r"Votes:\s*\(([\d,\s]*)\)", text):
        voters = tuple(int(v) for v in re.findall(r"\d+", votes[1]))
        return DareRecord(kind="votes", voters=voters, **base)
    return None


@dataclass
class PaxosReport:
    """The verdict on a group's logs: leaders by term, checkpoints by node, and errors."""

    leaders: dict[int, int] = field(default_factory=dict)  # term -> leader node
    checkpoints: dict[int, int] = field(default_factory=dict)  # node -> checkpoint lines
    errors: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors


def check_group(logs: dict[int, Iterable[DareRecord]], group_size: int = 3,
                leader: int = NODE_OF_ROLE["primary"]) -> PaxosReport:
    """Judge a Paxos group from each node's records (keyed by node index).

    Exactly one leader per term; the expected node (the primary) leads the last term;
    every follower of a term follows that term's leader; the leader's ``Votes`` hold a
    majority and each voter whose log is present voted for it in that term; no
    ``[ERROR]`` line; leader and backup report the same number of checkpoints (the last
    one may still be in flight on the backup).
    """
    report = PaxosReport()
    records = {node: list(items) for node, items in logs.items()}
    by_term: dict[int, list[DareRecord]] = {}
    for node, items in records.items():
        for record in items:
            if record.kind == "error":
                report.errors.append(f"p{node} line {record.line_number}: [ERROR] {record.text}")
            if record.term is not None:
                by_term.setdefault(record.term, []).append(record)
    for term in sorted(by_term):
        _check_term(term, by_term[term], records, group_size, report)
    if report.leaders:
        last = max(report.leaders)
        if report.leaders[last] != leader:
            report.errors.append(f"term {last}: p{report.leaders[last]} leads, expected the "
                                 f"primary p{leader}")
    else:
        report.errors.append("no node ever became LEADER")
    _check_checkpoints(records, leader, report)
    return report


def _check_term(term: int, records: list[DareRecord], logs: dict[int, list[DareRecord]],
                group_size: int, report: PaxosReport) -> None:
    leaders = sorted({r.node for r in records if r.kind == "leader"})
    if len(leaders) > 1:
        report.errors.append(f"term {term}: two leaders, {', '.join(f'p{n}' for n in leaders)}")
        return
    if not leaders:
        return
    leader = leaders[0]
    report.leaders[term] = leader
    for record in records:
        if record.kind == "follow" and record.peer != leader:
            report.errors.append(f"term {term}: p{record.node} follows p{record.peer}, but "
                                 f"p{leader} leads")
    tallies = [r for r in records if r.kind == "votes" and r.node == leader]
    if not tallies:
        report.errors.append(f"term {term}: leader p{leader} logged no Votes")
        return
    voters = set(tallies[-1].voters)
    if len(voters) <= group_size // 2:
        report.errors.append(f"term {term}: leader p{leader} has votes of "
                             f"{sorted(voters)}, not a majority of {group_size}")
    for voter in sorted(voters - {leader}):
        if voter not in logs:
            continue
        voted = any(r.kind == "vote" and r.term == term and r.peer == leader
                    for r in logs[voter])
        if not voted:
            report.errors.append(f"term {term}: p{leader} counts a vote of p{voter}, whose "
                                 f"log has no 'Vote for p{leader}'")


def _check_checkpoints(logs: dict[int, list[DareRecord]], leader: int,
                       report: PaxosReport) -> None:
    """The primary's LEADER lines against the secondary's BACKUP lines (the sentinel has
    no VM and logs none)."""
    backup = NODE_OF_ROLE["secondary"]
    for node, records in logs.items():
        role = "LEADER" if node == leader else "BACKUP"
        report.checkpoints[node] = sum(1 for r in records if r.kind == "checkpoint"
                                       and r.role == role)
    if leader in logs and backup in logs:
        led, backed = report.checkpoints[leader], report.checkpoints[backup]
        if not led - 1 <= backed <= led:
            report.errors.append(f"checkpoints disagree: leader p{leader} logged {led}, "
                                 f"backup p{backup} {backed}")


# ------------------------------------------------------------------ nodes.local.cfg

SYNC_IDLE = 1  # checkpoint when the guest is idle (the seed's default)
SYNC_PERIOD = 2  # checkpoint every x-checkpoint-delay


DARE_FLOATS = ("hb_period", "rc_info_period", "retransmit_period", "log_pruning_period")


@dataclass(frozen=True)
class DareTimers:
    """``dare_global_config``: DARE's timers (the seed's DEBUG values)."""

    hb_period: float = 0.1  # heartbeat period, s
    elec_timeout_low: int = 1_000_000  # election timeout range, us
    elec_timeout_high: int = 3_000_000
    rc_info_period: float = 0.05  # checking for new connections, s
    retransmit_period: float = 0.04  # s
    log_pruning_period: float = 0.05  # s


@dataclass(frozen=True)
class NodesConfig:
    """rdma-paxos's ``nodes.local.cfg``, every key of COLO-FACTS §4 with the seed's values."""

    db_name: str = "node_test"
    req_log: int = 1
    sys_log: int = 1
    stat_log: int = 1
    control_tsc: int = 1
    colo_debug: int = 1  # per-checkpoint "[LEADER n] output_counter" lines
    colo_gettime: int = 0
    recheck_num: int = 10
    e1000_speedup: int = 1
    batching: int = 1
    sync_type: int = SYNC_IDLE
    dare: DareTimers = field(default_factory=DareTimers)

    def validate(self) -> None:
        """ValueError naming the first bad key."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.db_name):
            raise ValueError(f"nodes.local.cfg db_name {self.db_name!r}: letters, digits, _ . -")
        for name in ("req_log", "sys_log", "stat_log", "control_tsc", "colo_debug",
                     "colo_gettime", "e1000_speedup", "batching"):
            if getattr(self, name) not in (0, 1):
                raise ValueError(f"nodes.local.cfg {name} = {getattr(self, name)!r}: 0 or 1")
        if not isinstance(self.recheck_num, int) or self.recheck_num < 0:
            raise ValueError(f"nodes.local.cfg recheck_num = {self.recheck_num!r}: an int >= 0")
        if self.sync_type not in (SYNC_IDLE, SYNC_PERIOD):
            raise ValueError(f"nodes.local.cfg sync_type = {self.sync_type!r}: 1 (idle check) "
                             "or 2 (fixed period, x-checkpoint-delay)")
        d = self.dare
        for name in DARE_FLOATS:
            if not getattr(d, name) > 0:
                raise ValueError(f"dare_global_config {name} = {getattr(d, name)!r}: seconds > 0")
        if not 0 < d.elec_timeout_low < d.elec_timeout_high:
            raise ValueError(f"dare_global_config elec_timeout_low/high = "
                             f"{d.elec_timeout_low}/{d.elec_timeout_high}: 0 < low < high (us)")

    def render(self) -> str:
        """The file in libconfig syntax (ints as ints, periods as floats)."""
        self.validate()
        lines = ["# nodes.local.cfg written by the COLO harness (rdma-paxos, libconfig format)",
                 f'db_name = "{self.db_name}";']
        lines += [f"{name} = {getattr(self, name)};" for name in (
            "req_log", "sys_log", "stat_log", "control_tsc", "colo_debug", "colo_gettime",
            "recheck_num", "e1000_speedup", "batching", "sync_type")]
        lines.append("dare_global_config = {")
        for name, value in vars(self.dare).items():  # libconfig types are strict
            shown = repr(float(value)) if name in DARE_FLOATS else str(int(value))
            lines.append(f"    {name} = {shown};")
        lines.append("};")
        return "\n".join(lines) + "\n"
