"""A COLO pair: argv for both sides from data, the start sequence over QMP, and its waits.

The recipe is upstream's colo-proxy mode (docs/COLO-FT.txt of QEMU 7.2, see
COLO-FACTS §3): the secondary starts first with ``-incoming``, the primary starts
paused (``-S``) and blocks until the secondary's proxy chardevs connect; then NBD,
the replication drive, the x-colo capability and ``migrate`` bring both into COLO.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from colo_fixtures.disks import ReplicationDisks
from colo_fixtures.hosts import Host
from colo_fixtures.qemu import QemuError, QemuProcess
from colo_fixtures.topology import Topology
from colo_fixtures.trace import Checkpoint, checkpoints, colo_message, read_trace

TRACE_PATTERNS = ("colo_*",)


@dataclass(frozen=True)
class VmConfig:
    """Everything both sides' QEMU share: binary, accelerator, guest and its memory."""

    binary: Path
    firmware_args: tuple[str, ...]
    accel: str
    memory_mib: int
    kernel: Path
    initrd: Path
    cmdline: str
    trace_patterns: tuple[str, ...] = TRACE_PATTERNS


def common_argv(vm: VmConfig, name: str, topo: Topology) -> list[str]:
    """Machine, guest and NIC arguments identical on both sides (migration requires it)."""
    argv = [str(vm.binary), *vm.firmware_args, "-name", name, "-nodefaults",
            "-accel", vm.accel, "-machine", "pc", "-cpu", "qemu64", "-smp", "1",
            "-m", str(vm.memory_mib),
            "-kernel", str(vm.kernel), "-initrd", str(vm.initrd), "-append", vm.cmdline,
            "-netdev", f"tap,id=hn0,ifname={topo.hosts[name].tap},script=no,downscript=no,"
                       "vhost=off,vnet_hdr=off",
            "-device", f"virtio-net-pci,id=e0,netdev=hn0,mac={topo.vm_mac},romfile="]
    for pattern in vm.trace_patterns:
        argv += ["-trace", f"enable={pattern}"]
    return argv


def primary_argv(vm: VmConfig, topo: Topology, disks: ReplicationDisks) -> list[str]:
    """The primary: colo-compare and its proxy chardevs, a quorum over its disk, paused (-S)."""
    rep = topo.hosts["primary"].rep_addr
    ports = topo.ports
    local = "127.0.0.1"
    chardevs = [
        f"socket,id=mirror0,host={rep},port={ports.mirror},server=on,wait=off",
        f"socket,id=compare1,host={rep},port={ports.compare},server=on,wait=on",
        f"socket,id=compare0,host={local},port={ports.compare0},server=on,wait=off",
        f"socket,id=compare0-0,host={local},port={ports.compare0}",
        f"socket,id=compare_out,host={local},port={ports.compare_out},server=on,wait=off",
        f"socket,id=compare_out0,host={local},port={ports.compare_out}",
    ]
    objects = [
        "filter-mirror,id=m0,netdev=hn0,queue=tx,outdev=mirror0",
        "filter-redirector,id=redire0,netdev=hn0,queue=rx,indev=compare_out",
        "filter-redirector,id=redire1,netdev=hn0,queue=rx,outdev=compare0",
        "iothread,id=iothread1",
        "colo-compare,id=comp0,primary_in=compare0-0,secondary_in=compare1,"
        "outdev=compare_out0,iothread=iothread1",
    ]
    argv = common_argv(vm, "primary", topo)
    for chardev in chardevs:
        argv += ["-chardev", chardev]
    for obj in objects:
        argv += ["-object", obj]
    argv += ["-drive", "if=none,id=colo-disk0,driver=quorum,read-pattern=fifo,vote-threshold=1,"
                       f"children.0.file.filename={disks.primary},children.0.driver=raw",
             "-device", "virtio-blk-pci,id=vd0,drive=colo-disk0", "-S"]
    return argv


def secondary_argv(vm: VmConfig, topo: Topology, disks: ReplicationDisks) -> list[str]:
    """The secondary: redirectors fed by the primary, a rewriter, replication over its base copy."""
    primary_rep = topo.hosts["primary"].rep_addr
    secondary_rep = topo.hosts["secondary"].rep_addr
    ports = topo.ports
    argv = common_argv(vm, "secondary", topo)
    argv += [
        "-chardev", f"socket,id=red0,host={primary_rep},port={ports.mirror},reconnect=1",
        "-chardev", f"socket,id=red1,host={primary_rep},port={ports.compare},reconnect=1",
        "-object", "filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red0",
        "-object", "filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red1",
        "-object", "filter-rewriter,id=rew0,netdev=hn0,queue=all",
        "-drive", f"if=none,id=parent0,file.filename={disks.secondary_base},driver=raw",
        "-drive", "if=none,id=childs0,driver=replication,mode=secondary,file.driver=qcow2,"
                  f"top-id=colo-disk0,file.file.filename={disks.active},"
                  f"file.backing.driver=qcow2,file.backing.file.filename={disks.hidden},"
                  "file.backing.backing=parent0",
        "-drive", "if=none,id=colo-disk0,driver=quorum,read-pattern=fifo,vote-threshold=1,"
                  "children.0=childs0",
        "-device", "virtio-blk-pci,id=vd0,drive=colo-disk0",
        "-incoming", f"tcp:{secondary_rep}:{ports.migration}",
    ]
    return argv


def describe_stall(records_trace: list[Checkpoint], last_message: str | None) -> str:
    """Name the known failure when the primary stops answering inside a checkpoint."""
    if not records_trace:
        return "the primary stopped answering before its first checkpoint"
    last = records_trace[-1]
    number = len(records_trace)
    if last.resumed is None:
        where = f"after '{last_message}'" if last_message else "inside it"
        hint = ""
        if last_message == "vmstate-loaded":
            hint = (": this is the TCG checkpoint deadlock of stock QEMU 7.2 (the migration "
                    "thread waits for the iothread lock it was handed; "
                    "patches/qemu-7.2/0001 fixes it)")
        return f"the primary hung in checkpoint #{number} {where}{hint}"
    return f"the primary stopped answering after {number} completed checkpoint(s)"


class ColoPair:
    """Primary and secondary QEMU of one COLO pair on two hosts."""

    def __init__(self, vm: VmConfig, topo: Topology, hosts: dict[str, Host],
                 disks: ReplicationDisks, workdir: Path, sockdir: Path, timeout: float):
        self.vm = vm
        self.topo = topo
        self.hosts = hosts
        self.disks = disks
        self.timeout = timeout
        self.primary = QemuProcess("primary", primary_argv(vm, topo, disks), workdir, sockdir,
                                   launcher=hosts["primary"].launcher)
        self.secondary = QemuProcess("secondary", secondary_argv(vm, topo, disks), workdir,
                                     sockdir, launcher=hosts["secondary"].launcher)
        self.colo_started_at: float | None = None

    @property
    def sides(self) -> tuple[QemuProcess, QemuProcess]:
        return self.primary, self.secondary

    def start(self, checkpoint_delay_ms: int) -> float:
        """Run the start sequence; return seconds from ``migrate`` to both sides in COLO."""
        ports = self.topo.ports
        secondary_rep = self.topo.hosts["secondary"].rep_addr
        self.secondary.start()
        self.secondary.connect(self.timeout)
        self.secondary.qmp("migrate-set-capabilities",
                           capabilities=[{"capability": "x-colo", "state": True}])
        self.secondary.qmp("nbd-server-start", addr={
            "type": "inet", "data": {"host": secondary_rep, "port": str(ports.nbd)}})
        self.secondary.qmp("nbd-server-add", device="parent0", writable=True)
        self.primary.start()
        self.primary.connect(self.timeout)
        reply = self.primary.hmp(
            "drive_add -n buddy driver=replication,mode=primary,file.driver=nbd,"
            f"file.host={secondary_rep},file.port={ports.nbd},file.export=parent0,"
            "node-name=replication0")
        if reply.strip() not in ("", "OK"):
            raise QemuError(f"primary: drive_add of the replication drive failed: {reply.strip()}")
        self.primary.qmp("x-blockdev-change", parent="colo-disk0", node="replication0")
        self.primary.qmp("migrate-set-capabilities",
                         capabilities=[{"capability": "x-colo", "state": True}])
        self.primary.qmp("migrate-set-parameters", **{"x-checkpoint-delay": checkpoint_delay_ms})
        started = time.monotonic()
        self.primary.qmp("migrate", uri=f"tcp:{secondary_rep}:{ports.migration}")
        self.wait_colo(self.timeout)
        self.colo_started_at = time.time()
        return time.monotonic() - started

    def colo_modes(self, timeout: float = 5) -> tuple[str, str]:
        """``query-colo-status`` mode of primary and secondary."""
        return tuple(side.qmp("query-colo-status", timeout=timeout)["mode"]  # type: ignore[return-value]
                     for side in self.sides)

    def wait_colo(self, timeout: float) -> None:
        """Wait until the primary reports mode primary and the secondary mode secondary."""
        deadline = time.monotonic() + timeout
        modes: tuple[str, str] = ("?", "?")
        while time.monotonic() < deadline:
            for side in self.sides:
                if not side.alive():
                    raise QemuError(f"{side.name} exited while COLO was starting\n"
                                    f"{self.diagnosis()}")
            modes = self.colo_modes()
            if modes == ("primary", "secondary"):
                return
            time.sleep(0.05)
        migration = self._migration_status()
        raise QemuError(f"COLO not running after {timeout:g}s: modes {modes}, primary migration "
                        f"status {migration}\n{self.diagnosis()}")

    def _migration_status(self) -> str:
        try:
            return str(self.primary.qmp("query-migrate", timeout=3).get("status"))
        except QemuError as exc:
            return f"unknown ({str(exc).splitlines()[0]})"

    def set_checkpoint_delay(self, delay_ms: int) -> None:
        """Change x-checkpoint-delay while COLO runs (this also forces a checkpoint)."""
        self.primary.qmp("migrate-set-parameters", **{"x-checkpoint-delay": delay_ms})

    def checkpoints(self) -> list[Checkpoint]:
        """The primary's checkpoints so far, from its trace log."""
        return checkpoints(read_trace(self.primary.trace_log))

    def check_responsive(self, timeout: float = 5) -> None:
        """Both sides alive and answering QMP within ``timeout``, else a diagnosed QemuError."""
        for side in self.sides:
            if not side.alive():
                raise QemuError(f"{side.name} died during COLO\n{self.diagnosis()}")
            try:
                side.qmp("query-status", timeout=timeout)
            except QemuError:
                records = read_trace(self.primary.trace_log)
                messages = [m for m in map(colo_message, records) if m]
                stall = describe_stall(checkpoints(records), messages[-1] if messages else None)
                raise QemuError(f"{side.name} QMP unresponsive for {timeout:g}s: {stall}\n"
                                f"{self.diagnosis()}") from None

    def wait_checkpoints(self, count: int, timeout: float) -> list[Checkpoint]:
        """Wait for ``count`` completed checkpoints in total, checking liveness each second."""
        deadline = time.monotonic() + timeout
        while True:
            done = [c for c in self.checkpoints() if c.resumed is not None]
            if len(done) >= count:
                return done
            if time.monotonic() > deadline:
                raise QemuError(f"only {len(done)} of {count} checkpoints within {timeout:g}s\n"
                                f"{self.diagnosis()}")
            self.check_responsive()
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop both sides (primary first, so the secondary does not fail over), then reap."""
        for side in self.sides:
            with contextlib.suppress(Exception):
                side.stop(timeout=5)

    def diagnosis(self) -> str:
        return "\n".join(side.diagnosis() for side in self.sides)
