"""The COLO run fixtures: a test's artifacts folder, ``start_colo`` (lab network, scratch,
the COLO pair) and ``colo``, and their teardown, which keeps every log and runs the log
analyzer. ``ColoRun`` is what a test holds: the pair, its lab, its clients and history.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from colo_fixtures.config.settings import Settings
from colo_fixtures.core.events import phase
from colo_fixtures.core.harness_log import harness_log
from colo_fixtures.core.verdicts import ClientTimeout, Unreachable
from colo_fixtures.core.waits import wait_for
from colo_fixtures.evidence.known_issues import explaining_line
from colo_fixtures.evidence.ramcheck import check_pair
from colo_fixtures.evidence.release_probe import check_output_compared
from colo_fixtures.lab.capture import Capture
from colo_fixtures.lab.embedded import EmbeddedLab
from colo_fixtures.lab.hosts import Host, namespace_hosts
from colo_fixtures.lab.inventory_lab import (
    InventoryHosts,
    InventoryLab,
)
from colo_fixtures.lab.janitor import clean as clean_ledger_file
from colo_fixtures.lab.ledger import LEDGER_NAME, read_ledger, run_alive, write_entry
from colo_fixtures.lab.topology import Topology, local_topology
from colo_fixtures.plugin.options import RUN_ID
from colo_fixtures.report import allure_glue as report
from colo_fixtures.report.plots import checkpoint_timeline, client_latency, pause_histogram
from colo_fixtures.sut.build import QemuBuild
from colo_fixtures.sut.colo_argv import VmConfig
from colo_fixtures.sut.colo_pair import ColoPair
from colo_fixtures.sut.disks import scratch_root
from colo_fixtures.sut.guest.agent import AGENT_PORT, AgentClient
from colo_fixtures.sut.guest.image import GuestImage, kernel_cmdline
from colo_fixtures.sut.logscan import Finding, miscompare_storm, scan, verdict_of
from colo_fixtures.sut.trace import checkpoints, read_trace
from colo_fixtures.workload.client import ClientPool, Workload
from colo_fixtures.workload.history import History
from colo_fixtures.workload.nemesis import Faults

STARTED_KEY = pytest.StashKey[list["ColoRun"]]()


def _safe_name(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[:120]


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, colo_settings: Settings) -> Iterator[Path]:
    """This test's artifact folder under ``<report-dir>/artifacts/``, emptied first, with the
    harness log (``harness.log``) written into it until the test's last teardown.

    If an earlier run of this test was killed, what its ledger still lists is removed
    first (the janitor's job, done here so emptying the folder loses no record)."""
    folder = colo_settings.report_dir / "artifacts" / _safe_name(request.node.nodeid)
    ledger = folder / LEDGER_NAME
    if read_ledger(ledger):
        if (pid := run_alive(ledger)) is not None:
            pytest.fail(f"{folder} belongs to a run that is still going (pid {pid}): use "
                        "another --report-dir for concurrent runs", pytrace=False)
        if left := clean_ledger_file(ledger):
            pytest.fail(f"an earlier killed run left {left} and they cannot be removed: "
                        f"see {ledger}", pytrace=False)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with harness_log(folder) as log:
        yield folder
    report.attach_file(log)


@dataclass
class ColoRun:
    """A test's COLO run: the running pair, its lab (embedded or inventory), the clients and
    their history, and a way to reach the guest agent."""

    topology: Topology
    lab: EmbeddedLab | InventoryLab
    pair: ColoPair
    artifacts: Path
    timeout: float
    clients: list[AgentClient] = field(default_factory=list)
    history: History = field(default_factory=History)
    workloads: list[Workload] = field(default_factory=list)
    colo_start_seconds: float = 0.0
    capture: Capture | None = None  # --pcap: tcpdump of the replication link
    log_sizes_at_fault: dict[Path, int] | None = None
    ramcheck: bool = False  # the QEMU traces RAM digests: compare them at every checkpoint
    client_count: int = 1  # concurrent clients of ``workload()`` (--colo-clients)
    ram_divergence_raised: bool = False  # the test already failed with the RAM check's verdict

    @property
    def faults(self) -> Faults:
        """The nemesis, recording into this lab's history."""
        return Faults(self.history, self._note_log_sizes)

    def _note_log_sizes(self) -> None:
        """At the first fault: how far each QEMU's logs went (what follows may be its
        consequences, which the log analyzer excuses)."""
        if self.log_sizes_at_fault is not None:
            return
        sizes: dict[Path, int] = {}
        for process in self.pair.processes:
            sizes.update(process.log_sizes())
        self.log_sizes_at_fault = sizes

    def connect(self, timeout: float | None = None, health: bool = True) -> socket.socket:
        """A TCP connection to the guest agent from the client host; ClientTimeout when the
        VM takes none (after a health check, unless ``health`` is False: a crashed guest is
        named as such). The client threads connect without it: the health check talks QMP,
        which is the test's thread's (it runs the check while it waits for the clients)."""
        try:
            return self.lab.connect(self.topology.vm_addr, AGENT_PORT, timeout or self.timeout)
        except Unreachable as exc:
            if health:
                self.pair.check_health()
            raise ClientTimeout(f"the guest agent took no connection: {exc}") from exc

    def agent(self, timeout: float | None = None) -> AgentClient:
        """A new agent client from the client namespace (closed at teardown)."""
        client = AgentClient(self.connect(timeout), timeout=timeout or self.timeout)
        self.clients.append(client)
        return client

    def workload(self, clients: int | None = None, **options: Any) -> ClientPool:
        """Start ``clients`` (default ``--colo-clients``) concurrent clients recording into
        this lab's history, each on its own connection and keys (stopped at teardown)."""
        pool = ClientPool.of(clients or self.client_count,
                             lambda: self.connect(5.0, health=False), self.history,
                             health=self.pair.check_health, **options)
        self.workloads += pool.clients
        pool.start()
        return pool

    @phase("check: read every written key back from the serving VM")
    def final_state(self) -> tuple[dict[str, tuple[int, str] | None], float]:
        """Every key the history wrote, read back from the VM now serving clients, and the
        monotonic time the reads began (``check(..., final_at=)``)."""
        agent = self.agent()
        started = time.monotonic()
        keys = sorted({op.key for op in self.history.ops if op.f == "write" and op.key})
        return {key: agent.get(key) for key in keys}, started

    @phase("boot: wait for the guest agent on both sides")
    def wait_agent_ready(self, timeout: float | None = None) -> None:
        """Wait for the agent on both consoles, for a PING round trip, then check that
        replies are released by comparison (``evidence.release_probe``).

        The primary prints ``ready``; the secondary's console may skip that line (a
        checkpoint can carry it past the moment), so there a heartbeat is the sign.
        """
        limit = timeout or self.timeout * 2
        signs = list(zip(self.pair.sides, ("colo-agent: ready", "colo-agent: hb="),
                         strict=True))

        def missing() -> list[str]:
            return [f"{side.name} {sign!r}" for side, sign in signs if not side.console_has(sign)]

        wait_for("the guest agent on both consoles", lambda: not missing(), limit,
                 health=self.pair.check_health, diagnosis=self.pair.diagnosis, interval=0.5,
                 seen=lambda: "not shown: " + ", ".join(missing()))
        self.agent(limit).ping()
        check_output_compared(self.agent(), self.pair)

    def write_metrics(self, name: str, metrics: dict[str, Any]) -> Path:
        """Write ``metrics`` as ``<name>.json`` in the artifacts and attach it."""
        path = self.artifacts / f"{name}.json"
        path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        report.attach_file(path, name)
        return path


# How the report names start_colo: its teardown carries every log, transcript and plot.
EVIDENCE_TITLE = "COLO lab and its evidence (logs, QMP, consoles, traces, plots)"


@pytest.fixture
@report.fixture_title(EVIDENCE_TITLE)
def start_colo(request: pytest.FixtureRequest, colo_settings: Settings, qemu_build: QemuBuild,
               guest_image: GuestImage, accel: str, artifacts: Path, worker_id_safe: str,
               lab_hosts: InventoryHosts | None) -> Iterator[Callable[..., ColoRun]]:
    """A factory: ``start_colo(checkpoint_delay_ms)`` builds the lab and starts COLO.

    The lab is the embedded one (namespaces) or, on the inventory profile, the inventory's
    hosts over SSH. Teardown stops both QEMUs, removes the lab's network and scratch,
    attaches every log, and fails the test if a console or QEMU stderr shows a known-bad
    pattern.
    """
    s = colo_settings
    started: list[ColoRun] = []
    request.node.stash[STARTED_KEY] = started  # for the failure report (see makereport)
    scratch: list[Path] = []
    ledger = artifacts / LEDGER_NAME

    def local_lab() -> tuple[EmbeddedLab, Path, dict[str, Host], dict[Path, Path]]:
        topo = local_topology(worker_id_safe, RUN_ID)
        lab = EmbeddedLab(topo, ledger=ledger, replication_mbit=s.replication_rate)
        lab.create()
        try:
            root = Path(tempfile.mkdtemp(prefix=f"colo-{topo.run_tag}-", dir=scratch_root()))
            write_entry(ledger, "created", "dir", str(root))
        except BaseException:
            lab.destroy()
            raise
        scratch.append(root)
        return lab, root, namespace_hosts(topo), {}

    def ssh_lab(hosts: InventoryHosts,
                ) -> tuple[InventoryLab, Path, dict[str, Host], dict[Path, Path]]:
        lab = InventoryLab(hosts, ledger=ledger)
        root = lab.create()
        return lab, root, hosts.hosts, hosts.staged

    def start(checkpoint_delay_ms: int | None = None, membuf_mib: int = 8,
              nic_resets: int = 0) -> ColoRun:
        where = "namespaces" if lab_hosts is None else "SSH hosts"
        with phase(f"provision: lab network and scratch ({where})"):
            lab, root, hosts, staged = local_lab() if lab_hosts is None else ssh_lab(lab_hosts)
        topo = lab.topo
        report.environment(**topo.environment({r: h.name for r, h in hosts.items()}))
        binary, kernel, initrd = (staged.get(path, path) for path in (
            qemu_build.binary, guest_image.kernel, guest_image.initrd))
        vm = VmConfig(binary, tuple(qemu_build.firmware_args()), accel, s.guest_memory,
                      kernel, initrd,
                      kernel_cmdline(f"{topo.vm_addr}/{topo.ext_prefix}", AGENT_PORT,
                                     membuf_mib=membuf_mib, nic_resets=nic_resets),
                      topo.vm_mac, runtime_trace=s.colo_trace)
        pair = ColoPair(vm, topo, hosts, lab, root, artifacts, s.wait_timeout)
        colo = ColoRun(topo, lab, pair, artifacts, s.wait_timeout,
                       ramcheck=qemu_build.ram_digests, client_count=s.colo_clients)
        started.append(colo)  # from here on teardown owns the lab, the QEMUs and the scratch
        if s.pcap:
            pri = topo.hosts["primary"]
            colo.capture = Capture(hosts["primary"], str(pri.rep_if), root / "replication.pcap",
                                   artifacts / f"replication-{len(started)}.pcap", ledger)
            with phase(f"capture: tcpdump on the primary's {pri.rep_if}"):
                colo.capture.start()
        colo.colo_start_seconds = pair.start(checkpoint_delay_ms or s.checkpoint_delay)
        return colo

    yield start

    failed = report.test_failed(request.node)
    keep = failed and s.keep_on_failure
    findings: list[Finding] = []
    with contextlib.ExitStack() as teardown:  # every step runs, even after an interrupt
        teardown.callback(remove_scratch, scratch, artifacts / LEDGER_NAME, keep)
        for colo in reversed(started):  # the stack runs the last pushed first
            teardown.callback(_tear_down, colo, artifacts, failed, keep, findings)
    known = [(f, k) for f in findings if (k := explaining_line(f.line)) is not None]
    if known:
        lines = [f"{finding}\n    known issue {issue.name}: {issue.reason}"
                 for finding, issue in known]
        (artifacts / "known-log-lines.txt").write_text("\n".join(lines) + "\n")
        report.attach_file(artifacts / "known-log-lines.txt")
        for finding, issue in known:
            request.node.user_properties.append((KNOWN_LINE_PROPERTY, issue.name))
            warnings.warn(f"known QEMU log line ({issue.name}): {finding}", stacklevel=1)
    findings = [f for f in findings if explaining_line(f.line) is None]
    if findings:  # also after a failed call: the analyzer's verdict is always reported
        raise verdict_of(findings)


def _tear_down(colo: ColoRun, artifacts: Path, failed: bool, keep: bool,
               findings: list[Finding]) -> None:
    """Save one COLO lab's evidence (and, on a failure, how it looked), then stop its QEMUs
    and capture and remove its network: each of these runs even if one before it raised."""
    try:
        if failed:  # a failure or a pytest-timeout: how the QEMUs looked at that moment
            with contextlib.suppress(Exception):
                (artifacts / "diagnosis.txt").write_text(colo.pair.diagnosis() + "\n")
            with contextlib.suppress(Exception):
                (artifacts / "network.txt").write_text(colo.lab.network_state() + "\n")
            if not (artifacts / "virtio.txt").exists():
                save_nic_state(colo.pair, artifacts)
            with contextlib.suppress(Exception):  # what QMP cannot show, read with gdb
                (artifacts / "net-state.txt").write_text(colo.pair.net_state() + "\n")
        findings += _collect_evidence(colo, artifacts)
    finally:
        with contextlib.ExitStack() as steps:  # run last pushed first
            steps.callback(report.attach_run, artifacts)
            if isinstance(colo.lab, InventoryLab):
                steps.callback(colo.lab.destroy, keep_scratch=keep)
            else:
                steps.callback(colo.lab.destroy)
            if colo.capture is not None:
                steps.callback(_quietly, colo.capture.stop)
            steps.callback(colo.pair.stop)


def save_nic_state(pair: ColoPair, folder: Path | None,
                   ) -> tuple[str | None, str, int | None]:
    """Each side's virtio-net queues, and the packets the serving side's tap carried toward
    the VM since its takeover, into ``folder/virtio.txt``: (survivor, queues, packets)."""
    serving = pair.primary_replica  # after a takeover, the secondary that took over
    survivor = serving.name if serving and serving.tap_tx_at_takeover is not None else None
    virtio = ""
    with contextlib.suppress(Exception):
        virtio = pair.virtio_net_state()
    tap = None
    with contextlib.suppress(Exception):
        tap = pair.tap_tx_since_takeover()
    if folder is not None and (virtio or tap is not None):
        taps = (f"{survivor}'s tap: {tap} packets toward the VM since the takeover\n"
                if tap is not None else "")
        (folder / "virtio.txt").write_text(virtio + "\n" + taps)
    return survivor, virtio, tap


def remove_scratch(scratch: list[Path], ledger: Path, keep: bool) -> None:
    """Remove the test's scratch directories (or say where they were kept)."""
    for root in scratch:
        if keep:
            print(f"\ncolo: kept scratch {root} (--keep-on-failure)")
        else:
            shutil.rmtree(root, ignore_errors=True)
            write_entry(ledger, "removed", "dir", str(root))


def _quietly(step: Callable[[], object]) -> None:
    """A teardown step whose failure must not hide the test's own result."""
    with contextlib.suppress(Exception):
        step()


def _collect_evidence(colo: ColoRun, artifacts: Path) -> list[Finding]:
    """Stop the clients, save the history, and scan every log (before the QEMUs stop:
    tearing one side down makes the other report I/O errors)."""
    for workload in colo.workloads:
        workload.stop()
    for client in colo.clients:
        client.close()
    if len(colo.history):
        colo.history.to_jsonl(artifacts / "history.jsonl")
    try:
        _plot_evidence(colo, artifacts)
    except Exception as exc:  # a plot is a view of the evidence, never the verdict
        warnings.warn(f"plots of {artifacts.name} failed: {exc!r}", stacklevel=1)
    faults = colo.history.faults()
    fault_at = faults[0].wall if faults else None
    sizes = colo.log_sizes_at_fault
    findings = []
    for process in colo.pair.processes:
        process.sync_logs()
        for log, kind in ((process.console_log, "console"), (process.stderr_log, "stderr")):
            # a log begun after the first fault (a resumed secondary) is all "after" it
            offset = None if sizes is None else sizes.get(log, 0)
            findings += scan(log, kind, fault_at=fault_at, fault_offset=offset,
                             colo_at=colo.pair.colo_started_at)
        if storm := miscompare_storm(process.trace_log):
            findings.append(storm)
    if colo.ramcheck and not colo.ram_divergence_raised:  # first: it explains a crash
        findings = check_pair(colo.pair, artifacts) + findings
    return findings


def _plot_evidence(colo: ColoRun, artifacts: Path) -> None:
    """PNG plots next to the logs: client latency around the faults, every primary's
    checkpoints over time, and their pause distribution."""
    if len(colo.history):
        client_latency(colo.history, artifacts / "client-latency.png")
    points = []
    for process in colo.pair.processes:  # only (former) primaries request checkpoints
        process.sync_logs()
        points += checkpoints(read_trace(process.trace_log))
    if points:
        points.sort(key=lambda c: c.requested)
        checkpoint_timeline(points, colo.history, artifacts / "checkpoint-timeline.png")
        pause_histogram(points, artifacts / "checkpoint-pauses.png")


@pytest.fixture
def colo(start_colo: Callable[..., ColoRun], colo_settings: Settings) -> ColoRun:
    """A COLO pair running with the configured checkpoint delay and the guest agent ready."""
    lab = start_colo(colo_settings.checkpoint_delay)
    lab.wait_agent_ready()
    return lab


KNOWN_LINE_PROPERTY = "colo_known_log_line"  # user property: a known line the analyzer met
