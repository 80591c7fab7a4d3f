"""Both sides' QEMU command lines, from data: upstream's colo-proxy mode (docs/COLO-FT.txt
of QEMU 7.2, COLO-FACTS §3). The secondary listens with ``-incoming`` and redirects its
network through chardevs from the primary; the primary starts paused (``-S``), mirrors
its guest's packets to the secondary and compares both sides' output (colo-compare).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colo_fixtures.lab.topology import HostSpec, Ports
from colo_fixtures.sut.disks import SecondaryDisks

TRACE_PATTERNS = ("colo_*",)


@dataclass(frozen=True)
class VmConfig:
    """Everything both sides' QEMU share: binary, accelerator, guest, its memory and MAC."""

    binary: Path
    firmware_args: tuple[str, ...]
    accel: str
    memory_mib: int
    kernel: Path
    initrd: Path
    cmdline: str
    mac: str
    trace_patterns: tuple[str, ...] = TRACE_PATTERNS  # enabled on the command line
    runtime_trace: tuple[str, ...] = ()  # enabled through QMP once QEMU answers


def machine_argv(vm: VmConfig, name: str) -> list[str]:
    """Machine, guest kernel and trace arguments, without devices."""
    argv = [str(vm.binary), *vm.firmware_args, "-name", name, "-nodefaults",
            "-accel", vm.accel, "-machine", "pc", "-cpu", "qemu64", "-smp", "1",
            "-m", str(vm.memory_mib),
            "-kernel", str(vm.kernel), "-initrd", str(vm.initrd), "-append", vm.cmdline]
    for pattern in vm.trace_patterns:
        argv += ["-trace", f"enable={pattern}"]
    return argv


def common_argv(vm: VmConfig, name: str, host: HostSpec) -> list[str]:
    """Machine, guest and NIC arguments identical on both sides (migration requires it)."""
    return [*machine_argv(vm, name),
            "-netdev", f"tap,id=hn0,ifname={host.tap},script=no,downscript=no,"
                       "vhost=off,vnet_hdr=off",
            "-device", f"virtio-net-pci,id=e0,netdev=hn0,mac={vm.mac},romfile="]


def proxy_chardevs(rep_addr: str, ports: Ports) -> dict[str, dict[str, Any]]:
    """The primary's colo-proxy chardevs by id: (host, port, server) of each socket."""
    local = "127.0.0.1"
    return {
        "mirror0": {"host": rep_addr, "port": ports.mirror, "server": True},
        "compare1": {"host": rep_addr, "port": ports.compare, "server": True},
        "compare0": {"host": local, "port": ports.compare0, "server": True},
        "compare0-0": {"host": local, "port": ports.compare0, "server": False},
        "compare_out": {"host": local, "port": ports.compare_out, "server": True},
        "compare_out0": {"host": local, "port": ports.compare_out, "server": False},
    }


def proxy_objects() -> list[tuple[str, dict[str, str]]]:
    """The primary's colo-proxy objects in creation order: (qom-type, properties with id)."""
    return [
        ("filter-mirror", {"id": "m0", "netdev": "hn0", "queue": "tx", "outdev": "mirror0"}),
        ("filter-redirector", {"id": "redire0", "netdev": "hn0", "queue": "rx",
                               "indev": "compare_out"}),
        ("filter-redirector", {"id": "redire1", "netdev": "hn0", "queue": "rx",
                               "outdev": "compare0"}),
        ("iothread", {"id": "iothread1"}),
        ("colo-compare", {"id": "comp0", "primary_in": "compare0-0", "secondary_in": "compare1",
                          "outdev": "compare_out0", "iothread": "iothread1"}),
    ]


def primary_argv(vm: VmConfig, host: HostSpec, ports: Ports, disk: Path) -> list[str]:
    """The primary: colo-compare and its proxy chardevs, a quorum over its disk, paused (-S)."""
    argv = common_argv(vm, "primary", host)
    for chardev_id, sock in proxy_chardevs(str(host.rep_addr), ports).items():
        server = ",server=on,wait=on" if chardev_id == "compare1" else (
            ",server=on,wait=off" if sock["server"] else "")
        argv += ["-chardev", f"socket,id={chardev_id},host={sock['host']},port={sock['port']}"
                             f"{server}"]
    for qom_type, props in proxy_objects():
        argv += ["-object", ",".join([qom_type, *(f"{k}={v}" for k, v in props.items())])]
    argv += ["-drive", "if=none,id=colo-disk0,driver=quorum,read-pattern=fifo,vote-threshold=1,"
                       f"children.0.file.filename={disk},children.0.driver=raw",
             "-device", "virtio-blk-pci,id=vd0,drive=colo-disk0", "-S"]
    return argv


def secondary_argv(vm: VmConfig, host: HostSpec, primary: HostSpec, ports: Ports,
                   disks: SecondaryDisks) -> list[str]:
    """The secondary: redirectors fed by the primary, a rewriter, replication over its base."""
    argv = common_argv(vm, "secondary", host)
    argv += [
        "-chardev", f"socket,id=red0,host={primary.rep_addr},port={ports.mirror},reconnect=1",
        "-chardev", f"socket,id=red1,host={primary.rep_addr},port={ports.compare},reconnect=1",
        "-object", "filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red0",
        "-object", "filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red1",
        "-object", "filter-rewriter,id=rew0,netdev=hn0,queue=all",
        "-drive", f"if=none,id=parent0,file.filename={disks.base},driver=raw",
        "-drive", "if=none,id=childs0,driver=replication,mode=secondary,file.driver=qcow2,"
                  f"top-id=colo-disk0,file.file.filename={disks.active},"
                  f"file.backing.driver=qcow2,file.backing.file.filename={disks.hidden},"
                  "file.backing.backing=parent0",
        "-drive", "if=none,id=colo-disk0,driver=quorum,read-pattern=fifo,vote-threshold=1,"
                  "children.0=childs0",
        "-device", "virtio-blk-pci,id=vd0,drive=colo-disk0",
        "-incoming", f"tcp:{host.rep_addr}:{ports.migration}",
    ]
    return argv
