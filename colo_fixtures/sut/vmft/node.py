"""vm-ft launch mode: argv, environment and working directory of the three vm-ft nodes.

As the seed runs them (COLO-FACTS §4): the role comes from ``-name primary|secondary|
sentinel`` (Paxos node index 2, 1, 0); QEMU runs in a ``qemu/`` directory because it reads
``../rdma-paxos/target/nodes.local.cfg``; ``LD_LIBRARY_PATH`` holds ``libinterpose.so``;
``group_size``, ``dare_log_file`` and ``mgid`` come from the environment; the NIC is an
e1000; QMP is on a unix socket, never stdio (DARE, e1000 and the RDMA channel print there).

Each node gets its own run directory that mirrors the layout vm-ft expects, so the
generated ``nodes.local.cfg`` never touches the built tree::

    <run>/<role>/qemu/                            working directory
    <run>/<role>/rdma-paxos/target/nodes.local.cfg
    <run>/<role>/dare.log                         dare_log_file

vm-ft adds no QMP commands: COLO starts with the seed's QMP steps (``colo_start_steps``)
and fails over manually with ``x-colo-lost-heartbeat``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colo_fixtures.lab.topology import HostSpec, Ports
from colo_fixtures.sut.vmft.paxos import NODE_OF_ROLE, NodesConfig

ROLES = ("primary", "secondary", "sentinel")
MIRROR_SOCK = "/dev/shm/mirror.sock"  # fixed in vm-ft: one secondary per host
REDIRECTOR_SOCK = "/dev/shm/redirector.sock"
DEFAULT_MGID = "ff0e::ffff:e101:101"  # the IB multicast group the nodes find each other on
CONFIG_PATH = Path("rdma-paxos/target/nodes.local.cfg")


@dataclass(frozen=True)
class VmftVm:
    """The protected VM as vm-ft runs it (the seed's devices)."""

    image: Path  # the primary's and the secondary's base disk (raw)
    active: Path | None = None  # the secondary's qcow2 active and hidden layers
    hidden: Path | None = None
    memory_mib: int = 2048
    smp: int = 2
    mac: str = "52:a4:00:12:78:66"
    accel: str = "kvm"
    kernel: Path | None = None  # direct kernel boot (the harness's tiny guest); else -boot c
    initrd: Path | None = None
    append: str = ""


@dataclass(frozen=True)
class VmftNode:
    """Everything needed to start one vm-ft QEMU (``QemuProcess`` adds QMP and logs)."""

    role: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    config: Path
    dare_log: Path


def vmft_env(role: str, library_dir: Path, dare_log: Path, group_size: int = 3,
             mgid: str = DEFAULT_MGID, inherited: str | None = None) -> dict[str, str]:
    """The environment vm-ft reads; ``inherited`` is the caller's ``LD_LIBRARY_PATH``."""
    if role not in ROLES:
        raise ValueError(f"unknown vm-ft role {role!r}: expected one of {', '.join(ROLES)}")
    if group_size < len(ROLES):
        raise ValueError(f"group_size {group_size}: vm-ft needs at least 3 nodes")
    path = str(library_dir) + (f"{os.pathsep}{inherited}" if inherited else "")
    return {"LD_LIBRARY_PATH": path, "group_size": str(group_size),
            "dare_log_file": str(dare_log), "mgid": mgid}


def _common(binary: Path, firmware: Path, role: str, vm: VmftVm) -> list[str]:
    accel = ["-enable-kvm"] if vm.accel == "kvm" else ["-machine", "accel=tcg"]
    boot = ["-boot", "c"]
    if vm.kernel is not None:
        boot = ["-kernel", str(vm.kernel), "-append", vm.append]
        boot += ["-initrd", str(vm.initrd)] if vm.initrd is not None else []
    return [str(binary), "-L", str(firmware), "-name", role, *accel, *boot,
            "-m", str(vm.memory_mib), "-smp", str(vm.smp), "-cpu", "qemu64,+kvmclock",
            "-device", "piix3-usb-uhci", "-global", "kvm-apic.vapic=false"]


def _nic(host: HostSpec, vm: VmftVm, nic_id: bool) -> list[str]:
    if host.tap is None:
        raise ValueError(f"{host.role} host {host.netns} has no tap for the VM's e1000")
    device = f"e1000,{'id=e0,' if nic_id else ''}netdev=hn0,mac={vm.mac}"
    return ["-netdev", f"tap,id=hn0,ifname={host.tap},script=no,downscript=no,vhost=off",
            "-device", device]


def primary_argv(binary: Path, firmware: Path, vm: VmftVm, host: HostSpec) -> list[str]:
    """The seed's primary: quorum over the raw image, e1000 on the tap, paused (-S)."""
    drive = ("if=virtio,id=colo-disk0,driver=quorum,read-pattern=fifo,vote-threshold=1,"
             f"children.0.file.filename={vm.image},children.0.driver=raw")
    return [*_common(binary, firmware, "primary", vm), "-drive", drive, "-S",
            *_nic(host, vm, nic_id=True)]


def secondary_argv(binary: Path, firmware: Path, vm: VmftVm, host: HostSpec,
                   ports: Ports) -> list[str]:
    """The seed's secondary: replication over active/hidden qcow2 layers, the fixed
    ``/dev/shm`` chardevs with filter-redirector, incoming on the replication address."""
    if vm.active is None or vm.hidden is None or host.rep_addr is None:
        raise ValueError("the vm-ft secondary needs active and hidden disks and a "
                         "replication address")
    replication = ("if=virtio,id=active-disk0,driver=replication,mode=secondary,"
                   "file.driver=qcow2,top-id=active-disk0,"
                   f"file.file.filename={vm.active},file.backing.driver=qcow2,"
                   f"file.backing.file.filename={vm.hidden},file.backing.backing=colo-disk0")
    return [
        *_common(binary, firmware, "secondary", vm),
        "-drive", f"if=none,id=colo-disk0,file.filename={vm.image},driver=raw,node-name=node0",
        "-drive", replication,
        *_nic(host, vm, nic_id=False),
        "-chardev", f"socket,id=red0,path={MIRROR_SOCK}",
        "-chardev", f"socket,id=red1,path={REDIRECTOR_SOCK}",
        "-object", "filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red0",
        "-object", "filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red1",
        "-incoming", f"tcp:{host.rep_addr}:{ports.migration}",
    ]


def sentinel_argv(binary: Path, firmware: Path, vm: VmftVm) -> list[str]:
    """The witness: the vm-ft QEMU only hosts its DARE node (index 0); no guest devices,
    paused, small."""
    small = VmftVm(image=vm.image, memory_mib=128, smp=1, accel=vm.accel, kernel=None)
    return [*_common(binary, firmware, "sentinel", small), "-S"]


def prepare_node(run_dir: Path, role: str, config: NodesConfig) -> tuple[Path, Path, Path]:
    """Create ``<run_dir>/<role>/qemu`` and the node's nodes.local.cfg; (cwd, cfg, dare log)."""
    node_dir = run_dir / role
    cwd = node_dir / "qemu"
    cwd.mkdir(parents=True, exist_ok=True)
    cfg = node_dir / CONFIG_PATH
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(config.render())
    return cwd, cfg, node_dir / "dare.log"


def vmft_node(role: str, run_dir: Path, binary: Path, firmware: Path, library_dir: Path,
              vm: VmftVm, host: HostSpec, ports: Ports, config: NodesConfig | None = None,
              group_size: int = 3, mgid: str = DEFAULT_MGID) -> VmftNode:
    """One node ready to start: its argv, environment, working directory and config."""
    if role not in ROLES:
        raise ValueError(f"unknown vm-ft role {role!r}: expected one of {', '.join(ROLES)}")
    cwd, cfg, dare_log = prepare_node(run_dir, role, config or NodesConfig())
    if role == "primary":
        argv = primary_argv(binary, firmware, vm, host)
    elif role == "secondary":
        argv = secondary_argv(binary, firmware, vm, host, ports)
    else:
        argv = sentinel_argv(binary, firmware, vm)
    env = vmft_env(role, library_dir, dare_log, group_size, mgid,
                   os.environ.get("LD_LIBRARY_PATH"))
    return VmftNode(role, argv, env, cwd, cfg, dare_log)


def colo_start_steps(secondary: HostSpec, ports: Ports, checkpoint_delay_ms: int
                     ) -> list[tuple[str, str, dict[str, Any]]]:
    """The seed's QMP steps (3)-(5) as ``(role, command, arguments)``, in order."""
    addr = secondary.rep_addr
    if addr is None:
        raise ValueError(f"secondary {secondary.netns} has no replication address")
    buddy = (f"drive_add -n buddy driver=replication,mode=primary,file.driver=nbd,"
             f"file.host={addr},file.port={ports.nbd},file.export=colo-disk0,node-name=node0")
    return [
        ("secondary", "nbd-server-start",
         {"addr": {"type": "inet", "data": {"host": addr, "port": str(ports.nbd)}}}),
        ("secondary", "nbd-server-add", {"device": "colo-disk0", "writable": True}),
        ("primary", "human-monitor-command", {"command-line": buddy}),
        ("primary", "x-blockdev-change", {"parent": "colo-disk0", "node": "node0"}),
        ("primary", "migrate-set-capabilities",
         {"capabilities": [{"capability": "x-colo", "state": True}]}),
        ("primary", "migrate-set-parameters", {"x-checkpoint-delay": checkpoint_delay_ms}),
        ("primary", "migrate", {"uri": f"tcp:{addr}:{ports.migration}"}),
    ]


def paxos_node(role: str) -> int:
    """DARE's node index of a vm-ft role (primary 2, secondary 1, sentinel 0)."""
    return NODE_OF_ROLE[role]
