"""A COLO pair: start, health, failover and resume over QMP (argv: ``colo_argv``).

The recipe is upstream's colo-proxy mode (docs/COLO-FT.txt of QEMU 7.2, COLO-FACTS §3):
the secondary starts first with ``-incoming``; the primary starts paused (``-S``) and
blocks until the secondary's proxy chardevs connect; NBD, the replication drive, the
x-colo capability and ``migrate`` bring both into COLO. After a failover the survivor
runs alone; ``resume`` starts a new secondary on the other host, copies the disk to it
with drive-mirror and starts COLO again, the survivor now being the primary.

Over 400 lines: one class whose steps (start, health, failover, resume, the NIC's state)
share the pair's state; each step is a method of a few dozen lines.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from colo_fixtures.core.events import phase
from colo_fixtures.core.verdicts import ColoNotRunning, Deadlock, HarnessError, NicBroken
from colo_fixtures.core.waits import wait_for
from colo_fixtures.lab.hosts import Host
from colo_fixtures.lab.ledger import LEDGER_NAME
from colo_fixtures.lab.topology import HostSpec, Topology
from colo_fixtures.sut.colo_argv import (
    VmConfig,
    primary_argv,
    proxy_chardevs,
    proxy_objects,
    secondary_argv,
)
from colo_fixtures.sut.disks import SecondaryDisks, make_primary_disk, make_secondary_disks
from colo_fixtures.sut.gdb_probe import net_state
from colo_fixtures.sut.logscan import scan
from colo_fixtures.sut.qemu import QemuError, QemuProcess, QmpTimeout, stop_all
from colo_fixtures.sut.trace import Checkpoint, checkpoints, colo_message

PROXY_OBJECTS = ("m0", "redire0", "redire1")


VIRTIO_NET_QUEUES = ("rx", "tx", "ctrl")  # one queue pair and the control queue


ANNOUNCE = {"initial": 50, "max": 550, "rounds": 5, "step": 100}


def describe_stall(points: list[Checkpoint], last_message: str | None,
                   accel: str = "tcg") -> str:
    """Name the known failure when the primary stops answering inside a checkpoint (the TCG
    deadlock only under TCG: under KVM the same place is a different stall)."""
    if not points:
        return "the primary stopped answering before its first checkpoint"
    last = points[-1]
    number = len(points)
    if last.resumed is None:
        where = f"after '{last_message}'" if last_message else "inside it"
        hint = ""
        if last_message == "vmstate-loaded" and accel != "tcg":
            hint = (f" (where stock QEMU 7.2 deadlocks under TCG, but this pair runs under "
                    f"{accel}: not that known bug)")
        elif last_message == "vmstate-loaded":
            hint = (": this is the TCG checkpoint deadlock of stock QEMU 7.2 (the migration "
                    "thread waits for the iothread lock it was handed; "
                    "patches/qemu-7.2/0001 fixes it)")
        return f"the primary hung in checkpoint #{number} {where}{hint}"
    return f"the primary stopped answering after {number} completed checkpoint(s)"


class Network(Protocol):
    """What the pair needs of the lab: moving the VM's tap on and off a host's bridge."""

    def attach_tap(self, role: str) -> None: ...

    def detach_tap(self, role: str) -> None: ...

    def tap_tx_packets(self, role: str) -> int: ...


@dataclass
class Replica:
    """One QEMU of the pair, the host it runs on, and what its configuration carries."""

    process: QemuProcess
    host: HostSpec
    proxy_chardevs: bool  # has mirror0, compare1, ... (born a primary, or added on resume)
    rewriter: bool  # has filter-rewriter rew0 (born a secondary)
    nbd_server: bool = False  # its NBD server runs (a secondary's, for the replication)
    primary_disk: Path | None = None  # the raw disk it was started with, if born a primary
    secondary_disks: SecondaryDisks | None = None  # base/active/hidden, if born a secondary
    tap_tx_at_takeover: int | None = None  # its tap's TX counter when it took over

    @property
    def name(self) -> str:
        return self.process.name


@dataclass(frozen=True)
class FailoverTimes:
    """Wall-clock stamps of one failover (seconds since the epoch)."""

    survivor: str
    commands_done: float
    colo_exit: float | None

    def since(self, fault: float) -> dict[str, float | None]:
        """Seconds from ``fault`` to the COLO_EXIT event and to the end of the commands."""
        return {"colo_exit_s": None if self.colo_exit is None else self.colo_exit - fault,
                "failover_done_s": self.commands_done - fault}


@dataclass(frozen=True)
class ColoStart:
    """One ``migrate`` into COLO: which QEMU was primary, which secondary, and when."""

    primary: QemuProcess
    secondary: QemuProcess
    at: float  # wall time just before ``migrate``


@dataclass
class ColoPair:
    """Primary and secondary QEMU of one COLO pair, placed on the lab's two hosts.

    ``scratch`` is a directory with the same path on every host (disks, sockets, and the
    logs of remote QEMUs); ``workdir`` is this machine's artifact folder."""

    vm: VmConfig
    topo: Topology
    hosts: dict[str, Host]
    network: Network
    scratch: Path
    workdir: Path
    timeout: float
    disk_mib: int = 64
    primary_replica: Replica | None = None
    secondary_replica: Replica | None = None
    retired: list[Replica] = field(default_factory=list)
    launches: int = 0
    colo_started_at: float | None = None  # wall time of the first ``migrate``
    starts: list[ColoStart] = field(default_factory=list)  # every ``migrate`` into COLO

    # ------------------------------------------------------------------ who is where

    @property
    def primary(self) -> QemuProcess:
        if self.primary_replica is None:
            raise HarnessError("no primary is running")
        return self.primary_replica.process

    @property
    def secondary(self) -> QemuProcess:
        if self.secondary_replica is None:
            raise HarnessError("no secondary is running (after a failover: resume first)")
        return self.secondary_replica.process

    @property
    def sides(self) -> tuple[QemuProcess, ...]:
        """The running members: (primary, secondary), or the survivor alone."""
        return tuple(r.process for r in (self.primary_replica, self.secondary_replica) if r)

    @property
    def processes(self) -> list[QemuProcess]:
        """Every QEMU this pair ever started, for teardown and log scanning."""
        replicas = [*self.retired, self.primary_replica, self.secondary_replica]
        return [r.process for r in replicas if r is not None]

    def _process(self, role: str, argv: list[str], host: HostSpec) -> QemuProcess:
        self.launches += 1
        name = role if self.launches <= 2 else f"{role}{self.launches - 1}"
        return QemuProcess(name, argv, self.workdir, self.scratch / "sock",
                           host=self.hosts[host.role], host_dir=self.scratch / "logs",
                           ledger=self.workdir / LEDGER_NAME)

    def _dir(self, host: HostSpec) -> Path:
        """A fresh directory on ``host`` under the scratch directory (which is on the hosts)."""
        path = self.scratch / f"{host.role}-{self.launches}"
        self.hosts[host.role].make_dir(path)
        return path

    # ------------------------------------------------------------------ start

    def start(self, checkpoint_delay_ms: int) -> float:
        """Start both sides and COLO; return seconds from ``migrate`` to both in COLO."""
        with phase("boot: secondary (incoming, NBD export) and primary (paused)"):
            primary, secondary = self._boot_pair()
        return self._begin_colo(primary, secondary, checkpoint_delay_ms)

    def _boot_pair(self) -> tuple[Replica, Replica]:
        pri_host, sec_host = self.topo.hosts["primary"], self.topo.hosts["secondary"]
        disk = make_primary_disk(self.hosts["primary"], self._dir(pri_host), self.disk_mib)
        secondary = self._launch_secondary(sec_host, pri_host, copy_of=disk)
        process = self._process("primary", primary_argv(self.vm, pri_host, self.topo.ports,
                                                        disk), pri_host)
        self.primary_replica = Replica(process, pri_host, proxy_chardevs=True, rewriter=False,
                                       primary_disk=disk)
        process.start()
        process.connect(self.timeout)
        self._enable_runtime_trace(process)
        return self.primary_replica, secondary

    def _launch_secondary(self, host: HostSpec, primary: HostSpec,
                          copy_of: Path | None) -> Replica:
        """Start a secondary on ``host`` with its NBD export ready for the primary."""
        disks = make_secondary_disks(self.hosts[host.role], self._dir(host), self.disk_mib,
                                     copy_of)
        process = self._process("secondary", secondary_argv(self.vm, host, primary,
                                                            self.topo.ports, disks), host)
        replica = Replica(process, host, proxy_chardevs=False, rewriter=True, nbd_server=True,
                          secondary_disks=disks)
        self.secondary_replica = replica
        process.start()
        process.connect(self.timeout)
        self._enable_runtime_trace(process)
        process.qmp("migrate-set-capabilities",
                    capabilities=[{"capability": "x-colo", "state": True}])
        process.qmp("nbd-server-start", addr={
            "type": "inet", "data": {"host": host.rep_addr, "port": str(self.topo.ports.nbd)}})
        process.qmp("nbd-server-add", device="parent0", writable=True)
        return replica

    def _enable_runtime_trace(self, process: QemuProcess) -> None:
        for pattern in self.vm.runtime_trace:
            process.qmp("trace-event-set-state", name=pattern, enable=True)

    @phase("start COLO: replication drive, x-colo, migrate, wait for COLO on both sides")
    def _begin_colo(self, primary: Replica, secondary: Replica, delay_ms: int) -> float:
        """Replication drive into the primary's quorum, x-colo, migrate; wait for COLO."""
        ports, sec_addr = self.topo.ports, secondary.host.rep_addr
        reply = primary.process.hmp(
            "drive_add -n buddy driver=replication,mode=primary,file.driver=nbd,"
            f"file.host={sec_addr},file.port={ports.nbd},file.export=parent0,"
            "node-name=replication0")
        if reply.strip() not in ("", "OK"):
            raise QemuError(f"{primary.name}: drive_add of the replication drive failed: "
                            f"{reply.strip()}")
        primary.process.qmp("x-blockdev-change", parent="colo-disk0", node="replication0")
        primary.process.qmp("migrate-set-capabilities",
                            capabilities=[{"capability": "x-colo", "state": True}])
        primary.process.qmp("migrate-set-parameters", **{"x-checkpoint-delay": delay_ms})
        started = time.monotonic()
        self.starts.append(ColoStart(primary.process, secondary.process, time.time()))
        if self.colo_started_at is None:
            self.colo_started_at = self.starts[0].at
        primary.process.qmp("migrate", uri=f"tcp:{sec_addr}:{ports.migration}")
        self.wait_colo(self.timeout)
        return time.monotonic() - started

    # ------------------------------------------------------------------ state and waits

    def colo_modes(self, timeout: float = 5) -> tuple[str, ...]:
        """``query-colo-status`` mode of each running side (primary first)."""
        return tuple(side.qmp("query-colo-status", timeout=timeout)["mode"]
                     for side in self.sides)

    def wait_colo(self, timeout: float) -> None:
        """Wait until the primary reports mode primary and the secondary mode secondary."""
        modes: tuple[str, ...] = ("?", "?")

        def running() -> bool:
            nonlocal modes
            modes = self.colo_modes()
            return modes == ("primary", "secondary")

        wait_for("COLO running on both sides", running, timeout, health=self.check_health,
                 seen=lambda: f"modes {modes}, primary migration status "
                              f"{self._migration_status()}",
                 diagnosis=self.diagnosis, verdict=ColoNotRunning, interval=0.05)

    def _migration_status(self) -> str:
        try:
            return str(self.primary.qmp("query-migrate", timeout=3).get("status"))
        except QemuError as exc:
            return f"unknown ({str(exc).splitlines()[0]})"

    def set_checkpoint_delay(self, delay_ms: int) -> None:
        """Change x-checkpoint-delay while COLO runs (this also forces a checkpoint)."""
        self.primary.qmp("migrate-set-parameters", **{"x-checkpoint-delay": delay_ms})

    def checkpoints(self) -> list[Checkpoint]:
        """The current primary's checkpoints so far, from its trace log."""
        return checkpoints(self.primary.trace_records())

    def check_health(self, timeout: float = 5) -> None:
        """Every running side alive, answering QMP, and its console free of fatal signs.

        Raises the typed verdict otherwise (a guest crash or memory divergence when it
        happens, not when some later wait runs out; a QMP that stops answering is a
        deadlock, named where the primary's trace shows it)."""
        for side in self.sides:
            self.check_side(side, timeout)

    def check_side(self, side: QemuProcess, timeout: float = 5) -> None:
        """``check_health`` for one QEMU: console clean, alive, QMP answering, NIC working."""
        side.sync_logs()
        findings = scan(side.console_log, "console")
        if findings:
            raise findings[0].verdict(f"{side.name} guest failed: {findings[0]}\n"
                                      f"{self.diagnosis()}")
        if not side.alive():
            raise QemuError(f"{side.name} died\n{self.diagnosis()}")
        try:
            side.qmp("query-status", timeout=timeout, diagnose=False)
            self._check_nic(side, timeout)
        except QmpTimeout:
            records = self.primary.trace_records()
            messages = [m for m in map(colo_message, records) if m]
            stall = describe_stall(checkpoints(records), messages[-1] if messages else None,
                                   self.vm.accel)
            raise Deadlock(f"{side.name} QMP unresponsive for {timeout:g}s: {stall}\n"
                           f"{self.diagnosis()}") from None

    @staticmethod
    def _virtio_nets(side: QemuProcess, timeout: float, diagnose: bool = True
                     ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Each virtio-net device of ``side``: its QOM path and ``x-query-virtio-status``."""
        for device in side.qmp("x-query-virtio", timeout=timeout, diagnose=diagnose):
            if device.get("name") == "virtio-net":
                yield device["path"], side.qmp("x-query-virtio-status", path=device["path"],
                                               timeout=timeout, diagnose=diagnose)

    def _check_nic(self, side: QemuProcess, timeout: float) -> None:
        """NicBroken if ``side``'s virtio-net device is marked broken (with the virtio error
        line of its stderr)."""
        for path, status in self._virtio_nets(side, timeout, diagnose=False):
            if status.get("broken"):
                lines = [line.strip() for line in side.stderr_log.read_text(
                    errors="replace").splitlines() if "virtio:" in line]
                raise NicBroken(f"{side.name}: virtio-net {path} is broken "
                                f"({lines[-1] if lines else 'no virtio error in its stderr'})"
                                f": it processes no packet\n{self.diagnosis()}")

    def wait_checkpoints(self, count: int, timeout: float) -> list[Checkpoint]:
        """Wait for ``count`` completed checkpoints in total, checking health meanwhile."""
        done: list[Checkpoint] = []

        def enough() -> list[Checkpoint] | None:
            nonlocal done
            done = [c for c in self.checkpoints() if c.resumed is not None]
            return done if len(done) >= count else None

        return wait_for(f"{count} completed checkpoints", enough, timeout,
                        health=self.check_health, seen=lambda: f"{len(done)} completed",
                        diagnosis=self.diagnosis, interval=0.5)

    # ------------------------------------------------------------------ failover

    def _exit_event(self, process: QemuProcess, since: float) -> float | None:
        with contextlib.suppress(QemuError):
            return process.wait_event("COLO_EXIT", timeout=self.timeout, since=since,
                                      health=lambda: self.check_side(process)).timestamp
        return None

    @phase("failover: the secondary takes over")
    def failover_to_secondary(self, since: float) -> FailoverTimes:
        """The primary is gone: the secondary takes over and the VM's network moves to it.

        ``since`` (wall clock, the fault) bounds which COLO_EXIT event counts.
        """
        survivor = self.secondary_replica
        if survivor is None:
            raise HarnessError("failover to the secondary: no secondary is running")
        process = survivor.process
        process.qmp("nbd-server-stop")
        survivor.nbd_server = False
        process.qmp("x-colo-lost-heartbeat")
        for obj in ("f2", "f1"):
            process.qmp("object-del", id=obj)
        for chardev in ("red1", "red0"):
            process.qmp("chardev-remove", id=chardev)
        self.network.attach_tap(survivor.host.role)
        with contextlib.suppress(Exception):  # evidence for a dead NIC, never the verdict
            survivor.tap_tx_at_takeover = self.network.tap_tx_packets(survivor.host.role)
        process.qmp("announce-self", **ANNOUNCE)
        done = time.time()
        if self.primary_replica is not None:
            self.retired.append(self.primary_replica)
        self.primary_replica, self.secondary_replica = survivor, None
        return FailoverTimes(process.name, done, self._exit_event(process, since))

    def quorum_child(self, node: str = "replication0") -> str:
        """The name (``children.N``) under which ``node`` hangs in the primary's quorum."""
        graph = self.primary.qmp("x-debug-query-block-graph")
        names = {n["id"]: n["name"] for n in graph["nodes"]}
        quorum = [e["child"] for e in graph["edges"]
                  if names.get(e["parent"]) == "colo-disk0" and e["name"] == "root"]
        for edge in graph["edges"]:
            if edge["parent"] in quorum and names.get(edge["child"]) == node:
                return edge["name"]
        raise QemuError(f"{self.primary.name}: {node} is not a child of quorum colo-disk0")

    @phase("failover: the primary continues alone")
    def failover_to_primary(self, since: float) -> FailoverTimes:
        """The secondary is gone: the primary drops replication and the proxy and runs alone."""
        survivor = self.primary_replica
        if survivor is None:
            raise HarnessError("failover to the primary: no primary is running")
        process = survivor.process
        process.qmp("x-blockdev-change", parent="colo-disk0", child=self.quorum_child())
        reply = process.hmp("drive_del replication0")
        if reply.strip():
            raise QemuError(f"{process.name}: drive_del replication0 failed: {reply.strip()}")
        for obj in ("comp0", "iothread1", *PROXY_OBJECTS):
            process.qmp("object-del", id=obj)
        process.qmp("x-colo-lost-heartbeat")
        done = time.time()
        if self.secondary_replica is not None:
            self.retired.append(self.secondary_replica)
        self.secondary_replica = None
        return FailoverTimes(process.name, done, self._exit_event(process, since))

    def wait_unresponsive(self, process: QemuProcess, heartbeat: float, misses: int) -> float:
        """The harness's heartbeat: QMP ``query-status`` every ``heartbeat`` seconds; return the
        wall time at which ``misses`` consecutive probes went unanswered (the peer is hung)."""
        missed = 0

        def hung() -> float | None:
            nonlocal missed
            try:
                process.qmp("query-status", timeout=heartbeat, diagnose=False)
            except QemuError:
                missed += 1
                return time.time() if missed >= misses else None
            missed = 0
            time.sleep(heartbeat)
            return None

        with phase(f"heartbeat: wait until {process.name} stops answering"):
            return wait_for(f"{process.name} to stop answering QMP ({misses} heartbeats "
                            "missed)", hung, self.timeout, verdict=HarnessError, interval=0,
                            seen=lambda: "it kept answering: not hung")

    # ------------------------------------------------------------------ resume

    @phase("resume: a new secondary, disk resynchronised, COLO restarted")
    def resume(self, checkpoint_delay_ms: int) -> dict[str, float]:
        """Start a new secondary on the other host, resynchronise its disk, restart COLO.

        Returns seconds spent in the disk mirror and from ``migrate`` to COLO running.
        """
        survivor = self.primary_replica
        if survivor is None or self.secondary_replica is not None:
            raise HarnessError("resume needs exactly one survivor running alone")
        other = next(spec for role, spec in self.topo.hosts.items()
                     if role in ("primary", "secondary") and spec.role != survivor.host.role)
        self.network.detach_tap(other.role)
        secondary = self._launch_secondary(other, survivor.host, copy_of=None)
        process = survivor.process
        mirror_started = time.monotonic()
        since = time.time()
        process.qmp("drive-mirror", device="colo-disk0", mode="existing", format="raw",
                    sync="full", target=f"nbd://{other.rep_addr}:{self.topo.ports.nbd}/parent0",
                    **{"job-id": "resync"})
        process.wait_event("BLOCK_JOB_READY", timeout=self.timeout * 5, since=since,
                           health=self.check_health,
                           match=lambda e: e.data.get("device") == "resync")
        process.qmp("stop")
        process.qmp("block-job-cancel", device="resync")
        process.wait_event("BLOCK_JOB_COMPLETED", timeout=self.timeout, since=since,
                           health=self.check_health,
                           match=lambda e: e.data.get("device") == "resync")
        mirror_seconds = time.monotonic() - mirror_started
        if not survivor.proxy_chardevs:
            for chardev_id, sock in proxy_chardevs(str(survivor.host.rep_addr),
                                                   self.topo.ports).items():
                process.qmp("chardev-add", id=chardev_id, backend={"type": "socket", "data": {
                    "addr": {"type": "inet", "data": {"host": sock["host"],
                                                      "port": str(sock["port"])}},
                    "server": sock["server"], **({"wait": False} if sock["server"] else {})}})
            survivor.proxy_chardevs = True
        for qom_type, props in proxy_objects():
            position = ({"insert": "before", "position": "id=rew0"}
                        if survivor.rewriter and props["id"] in PROXY_OBJECTS else {})
            process.qmp("object-add", **{"qom-type": qom_type, **props, **position})
        colo_seconds = self._begin_colo(survivor, secondary, checkpoint_delay_ms)
        return {"mirror_s": mirror_seconds, "migrate_to_colo_s": colo_seconds}

    # ------------------------------------------------------------------ disks

    def replica_of(self, process: QemuProcess) -> Replica:
        for replica in (self.primary_replica, self.secondary_replica):
            if replica is not None and replica.process is process:
                return replica
        raise HarnessError(f"{process.name} is not running in this pair")

    @contextlib.contextmanager
    def live_export(self, process: QemuProcess) -> Iterator[str]:
        """A temporary read-only NBD export of ``process``'s quorum node (what its guest sees),
        on its replication address; yields the nbd:// URI."""
        replica = self.replica_of(process)
        addr, port = replica.host.rep_addr, self.topo.ports.nbd
        started_server = not replica.nbd_server
        if started_server:
            process.qmp("nbd-server-start", addr={
                "type": "inet", "data": {"host": addr, "port": str(port)}})
        process.qmp("nbd-server-add", device="colo-disk0", name="live", writable=False)
        try:
            yield f"nbd://{addr}:{port}/live"
        finally:
            with contextlib.suppress(QemuError):
                process.qmp("nbd-server-remove", name="live")
            if started_server:
                with contextlib.suppress(QemuError):
                    process.qmp("nbd-server-stop")

    # ------------------------------------------------------------------ teardown

    def stop(self) -> None:
        """Stop every QEMU this pair started (primary first, so nothing fails over)."""
        stop_all(self.processes, timeout=5)

    def tap_tx_since_takeover(self) -> int | None:
        """Packets the serving side's tap carried toward the VM since it took over (None
        without a takeover)."""
        survivor = self.primary_replica
        if survivor is None or survivor.tap_tx_at_takeover is None:
            return None
        return self.network.tap_tx_packets(survivor.host.role) - survivor.tap_tx_at_takeover

    def net_state(self) -> str:
        """Each running QEMU's net state as gdb reads it (QEMUs on this machine only)."""
        parts = []
        for process in self.processes:
            if process.alive() and process.host.is_local and process.process is not None:
                parts.append(f"--- {process.name} (pid {process.process.pid})\n"
                             + net_state(process.process.pid))
        return "\n".join(parts) or "no QEMU of this machine is running"

    def diagnosis(self) -> str:
        return "\n".join(process.diagnosis() for process in self.processes)

    @staticmethod
    def _guest_avail(side: QemuProcess, path: str, queue: int) -> str:
        """`` avail=N``: the avail index the guest wrote into its ring (guest memory)."""
        try:
            element = side.qmp("x-query-virtio-queue-element", path=path, queue=queue,
                               timeout=2)
        except QemuError:  # e.g. an empty queue
            return ""
        return f" avail={element['avail']['idx']}"

    def virtio_net_state(self) -> str:
        """Each running side's virtio-net device and queues as QEMU sees them (broken flag,
        in-flight buffers, avail/used indexes): a guest that stops answering after a
        failover shows here whether its NIC's queues still move."""
        lines = []
        for side in self.sides:
            try:
                for path, status in self._virtio_nets(side, timeout=2):
                    driver = (status.get("status") or {}).get("statuses", ["?"])[-1]
                    lines.append(f"{side.name} {path}: broken={status.get('broken')} "
                                 f"started={status.get('started')} "
                                 f"vm-running={status.get('vm-running')} status={driver}")
                    count = int(status.get("num-vqs", 0))
                    names = VIRTIO_NET_QUEUES if count == len(VIRTIO_NET_QUEUES) else ()
                    for queue in range(count):
                        q = side.qmp("x-query-virtio-queue-status", path=path, queue=queue,
                                     timeout=2)
                        name = names[queue] if names else str(queue)
                        lines.append(
                            f"  queue {queue} {name}: inuse={q.get('inuse')} "
                            f"last-avail={q.get('last-avail-idx')} "
                            f"shadow-avail={q.get('shadow-avail-idx')} "
                            f"used={q.get('used-idx')} signalled-used={q.get('signalled-used')}"
                            f"{self._guest_avail(side, path, queue)}")
            except QemuError as exc:
                lines.append(f"{side.name}: virtio state unavailable: "
                             f"{str(exc).splitlines()[0]}")
            lines += self._socket_chardevs(side)
        return "\n".join(lines)

    @staticmethod
    def _socket_chardevs(side: QemuProcess) -> list[str]:
        """The side's socket chardevs (the proxy's links) and whether each is connected:
        a redirector whose socket is not connected drops the guest's packets silently."""
        try:
            chardevs = side.qmp("query-chardev", timeout=2)
        except QemuError as exc:
            return [f"  chardevs unavailable: {str(exc).splitlines()[0]}"]
        sockets = ("tcp:", "unix:", "disconnected:")  # "disconnected:tcp:..." when not connected
        return [f"  chardev {c['label']}: {c['filename']} frontend-open={c['frontend-open']}"
                for c in chardevs if str(c.get("filename", "")).startswith(sockets)]
