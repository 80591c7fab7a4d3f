"""A running vm-ft group: three QEMUs (primary, secondary, sentinel), Paxos, then COLO.

Order of events: start the three nodes (each in its host's namespace, from its own run
directory, with vm-ft's environment); wait until the DARE logs show the primary (p2) as
leader of the group; run the seed's QMP steps to start COLO; checkpoints then show up as
``[LEADER n]`` / ``[BACKUP n]`` lines. ``paxos_report`` judges the logs at any point.
Needs an RDMA device: the suites reach this only after the preflight passed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from colo_fixtures.lab.hosts import Host
from colo_fixtures.lab.ledger import LEDGER_NAME
from colo_fixtures.lab.topology import Topology
from colo_fixtures.sut.disks import make_primary_disk, make_secondary_disks
from colo_fixtures.sut.qemu import QemuError, QemuProcess, stop_all
from colo_fixtures.sut.vmft.build import VmftBuild
from colo_fixtures.sut.vmft.node import (
    ROLES,
    VmftNode,
    VmftVm,
    colo_start_steps,
    paxos_node,
    vmft_node,
)
from colo_fixtures.sut.vmft.paxos import NodesConfig, PaxosReport, check_group, parse_dare_log


@dataclass
class VmftGroup:
    """Three vm-ft nodes on the lab's hosts; ``start`` brings up Paxos, then COLO."""

    build: VmftBuild
    vm: VmftVm
    topo: Topology
    hosts: dict[str, Host]
    run_dir: Path
    artifacts: Path
    timeout: float
    config: NodesConfig = field(default_factory=NodesConfig)
    nodes: dict[str, VmftNode] = field(default_factory=dict)
    processes: dict[str, QemuProcess] = field(default_factory=dict)

    def _vm_for(self, role: str) -> VmftVm:
        host = self.hosts[role]
        folder = self.run_dir / role
        folder.mkdir(parents=True, exist_ok=True)
        if role == "primary":
            return replace(self.vm, image=make_primary_disk(host, folder, 64))
        if role == "secondary":
            primary_disk = self.run_dir / "primary" / "primary.raw"
            disks = make_secondary_disks(host, folder, 64, primary_disk)
            return replace(self.vm, image=disks.base, active=disks.active, hidden=disks.hidden)
        return self.vm

    def start_nodes(self) -> None:
        """Start primary, secondary and sentinel (in that order: the secondary copies the
        primary's disk)."""
        for role in ROLES:
            node = vmft_node(role, self.run_dir, self.build.qemu_binary,
                             self.build.firmware_dir, self.build.library_dir,
                             self._vm_for(role), self.topo.host(role), self.topo.ports,
                             self.config)
            process = QemuProcess(role, node.argv, self.artifacts, self.run_dir / "sock",
                                  host=self.hosts[role], env=node.env, cwd=node.cwd,
                                  ledger=self.artifacts / LEDGER_NAME)
            self.nodes[role], self.processes[role] = node, process
            process.start()
        for process in self.processes.values():
            process.connect(self.timeout)

    def dare_logs(self) -> dict[int, str]:
        """Each node's DARE log (``dare_log_file``) with its stdout lines (checkpoints)."""
        logs = {}
        for role, node in self.nodes.items():
            text = node.dare_log.read_text(errors="replace") if node.dare_log.exists() else ""
            stderr = self.processes[role].stderr_log
            text += stderr.read_text(errors="replace") if stderr.exists() else ""
            logs[paxos_node(role)] = text
        return logs

    def paxos_report(self) -> PaxosReport:
        records = {node: parse_dare_log(text, node) for node, text in self.dare_logs().items()}
        return check_group(records, group_size=len(ROLES))

    def wait_leader(self) -> PaxosReport:
        """Until the primary leads a valid group; QemuError with the logs' verdict if not."""
        deadline = time.monotonic() + self.timeout
        while True:
            report = self.paxos_report()
            if report.leaders and not report.errors:
                return report
            dead = [r for r, p in self.processes.items() if not p.alive()]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"not within {self.timeout:g}s"
                raise QemuError(f"no Paxos leader ({why}): {'; '.join(report.errors[:3])}\n"
                                + "\n".join(p.diagnosis() for p in self.processes.values()))
            time.sleep(0.5)

    def start_colo(self, checkpoint_delay_ms: int) -> None:
        """The seed's QMP steps (3)-(5), then wait for the primary's migration in COLO."""
        for role, command, arguments in colo_start_steps(self.topo.secondary, self.topo.ports,
                                                         checkpoint_delay_ms):
            self.processes[role].qmp(command, **arguments)
        deadline = time.monotonic() + self.timeout
        while self.processes["primary"].qmp("query-migrate").get("status") != "colo":
            if time.monotonic() > deadline:
                raise QemuError(f"vm-ft primary not in COLO within {self.timeout:g}s\n"
                                + self.processes["primary"].diagnosis())
            time.sleep(0.2)

    def wait_checkpoints(self, count: int, timeout: float) -> PaxosReport:
        """Until leader and backup each logged ``count`` checkpoints."""
        deadline = time.monotonic() + timeout
        while True:
            report = self.paxos_report()
            if report.checkpoints and min(report.checkpoints.values()) >= count:
                return report
            if time.monotonic() > deadline:
                raise QemuError(f"fewer than {count} checkpoints within {timeout:g}s: "
                                f"{report.checkpoints}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop every node (quit, then SIGKILL) and reap it."""
        stop_all(list(self.processes.values()))
