"""The vm-ft group orchestration, run for real with this machine's patched QEMU 7.2.

There is no vm-ft build here (no RDMA, no Python 2), so the group runs the harness's QEMU
in vm-ft's layout: a tree whose ``qemu/x86_64-softmmu/qemu-system-x86_64`` is the patched
7.2 binary. That proves what does not depend on DARE: the three nodes start in their own
namespaces from their run directories with vm-ft's environment, the seed's argv (quorum
primary, e1000 on the tap, replication secondary with the fixed ``/dev/shm`` chardevs and
filter-redirector, paused sentinel) is accepted by a real QEMU, the seed's QMP steps 3-5
run, and ``wait_leader`` fails loudly, with a diagnosis, when no DARE log shows a leader.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_fixtures.config.settings import DEFAULT_PATCHES, default_cache_dir
from colo_fixtures.lab.embedded import EmbeddedLab
from colo_fixtures.lab.hosts import namespace_hosts
from colo_fixtures.lab.topology import local_topology
from colo_fixtures.sut.build import FIRMWARE_DIRS, provide_qemu
from colo_fixtures.sut.disks import scratch_root
from colo_fixtures.sut.guest.agent import AGENT_PORT
from colo_fixtures.sut.guest.image import GuestImage, kernel_cmdline
from colo_fixtures.sut.qemu import QemuError
from colo_fixtures.sut.vmft.build import QEMU_BINARY, VmftBuild
from colo_fixtures.sut.vmft.group import VmftGroup
from colo_fixtures.sut.vmft.node import MIRROR_SOCK, REDIRECTOR_SOCK, VmftVm

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture(scope="module")
def stand_in_build(tmp_path_factory: pytest.TempPathFactory) -> VmftBuild:
    """vm-ft's layout around the harness's patched QEMU 7.2 (built or cached)."""
    qemu = provide_qemu(None, None, DEFAULT_PATCHES, default_cache_dir())
    tree = tmp_path_factory.mktemp("vmft-layout")
    binary = tree / QEMU_BINARY
    binary.parent.mkdir(parents=True)
    binary.symlink_to(qemu.binary)
    firmware = tree / "qemu" / "pc-bios"
    firmware.mkdir()
    for folder in map(Path, FIRMWARE_DIRS):
        for item in folder.glob("*") if folder.is_dir() else ():
            if not (firmware / item.name).exists():
                (firmware / item.name).symlink_to(item)
    (tree / "rdma-paxos" / "target").mkdir(parents=True)
    return VmftBuild(tree, "stand-in", tree / "build.log")


@pytest.fixture
def shm_sockets() -> Iterator[list[socket.socket]]:
    """Listeners on vm-ft's fixed secondary chardev paths (libinterpose serves them in vm-ft)."""
    paths = [Path(MIRROR_SOCK), Path(REDIRECTOR_SOCK)]
    if any(p.exists() for p in paths):
        pytest.skip(f"{MIRROR_SOCK} or {REDIRECTOR_SOCK} exists: a vm-ft secondary may be "
                    "running on this machine")
    listeners = []
    try:
        for path in paths:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            sock.listen(4)
            listeners.append(sock)
        yield listeners
    finally:
        for sock in listeners:
            sock.close()
        for path in paths:
            path.unlink(missing_ok=True)


@pytest.fixture
def group(stand_in_build: VmftBuild, image: GuestImage, shm_sockets,
          tmp_path: Path) -> Iterator[VmftGroup]:
    topo = local_topology(os.environ.get("PYTEST_XDIST_WORKER", "master"), sentinel=True)
    vm = VmftVm(image=Path("/dev/null"), memory_mib=256, mac=topo.vm_mac, accel="tcg",
                kernel=image.kernel, initrd=image.initrd,
                append=kernel_cmdline(f"{topo.vm_addr}/24", AGENT_PORT))
    with EmbeddedLab(topo, ledger=tmp_path / "ledger.jsonl"):
        run_dir = Path(tempfile.mkdtemp(prefix=f"vmft-{topo.run_tag}-", dir=scratch_root()))
        hosts = namespace_hosts(topo)
        the_group = VmftGroup(stand_in_build, vm, topo, hosts, run_dir, tmp_path / "artifacts",
                              timeout=20)
        try:
            yield the_group
        finally:
            the_group.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
        assert not any(p.alive() for p in the_group.processes.values())


def test_three_nodes_start_with_the_seed_argv_and_colo_starts(group: VmftGroup):
    group.start_nodes()
    processes = group.processes
    assert list(processes) == ["primary", "secondary", "sentinel"]
    for role, process in processes.items():
        assert process.qmp("query-name") == {"name": role}
        node = group.nodes[role]
        environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
        assert f"dare_log_file={node.dare_log}".encode() in environ
        assert b"group_size=3" in environ
        assert Path(f"/proc/{process.pid}/cwd").resolve() == node.cwd.resolve()
        assert Path(f"/proc/{process.pid}/ns/net").resolve() != Path("/proc/self/ns/net").resolve()
    assert processes["primary"].qmp("query-status")["status"] == "prelaunch"
    assert processes["sentinel"].qmp("query-status")["status"] == "prelaunch"
    assert processes["secondary"].qmp("query-status")["status"] == "inmigrate"
    peripherals = {p["name"] for p in processes["primary"].qmp("qom-list",
                                                               path="/machine/peripheral")}
    assert "e0" in peripherals  # the seed's e1000,id=e0
    blocks = {b["device"]: b for b in processes["primary"].qmp("query-block")}
    assert blocks["colo-disk0"]["inserted"]["drv"] == "quorum"
    # The seed's QMP steps 3-5 run on a real QEMU and the primary reaches COLO.
    group.start_colo(1000)
    assert processes["primary"].qmp("query-migrate")["status"] == "colo"


def test_no_dare_log_means_no_leader_and_a_diagnosis(group: VmftGroup):
    group.timeout = 2
    group.start_nodes()
    with pytest.raises(QemuError) as info:
        group.wait_leader()
    message = str(info.value)
    assert message.startswith("no Paxos leader (not within 2s): no node ever became LEADER")
    assert "primary" in message and "console" in message  # each node's diagnosis follows
