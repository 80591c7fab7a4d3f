"""vm-ft fixtures: the lab's vm-ft tree built (session), and a group of three nodes
(primary, secondary, sentinel) on a three-host embedded lab with its Paxos leader elected.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from colo_fixtures.config.settings import Settings
from colo_fixtures.lab.embedded import EmbeddedLab
from colo_fixtures.lab.hosts import namespace_hosts
from colo_fixtures.lab.ledger import LEDGER_NAME, write_entry
from colo_fixtures.lab.topology import local_topology
from colo_fixtures.plugin.colo_run import remove_scratch
from colo_fixtures.plugin.options import RUN_ID
from colo_fixtures.report import allure_glue as report
from colo_fixtures.sut.build import BuildError
from colo_fixtures.sut.disks import scratch_root
from colo_fixtures.sut.guest.agent import AGENT_PORT
from colo_fixtures.sut.guest.image import GuestImage, kernel_cmdline
from colo_fixtures.sut.vmft.build import VmftBuild, build_vmft
from colo_fixtures.sut.vmft.group import VmftGroup
from colo_fixtures.sut.vmft.node import VmftVm


@pytest.fixture(scope="session")
def vmft_build(colo_settings: Settings) -> VmftBuild:
    """The lab's vm-ft tree built (rdma-paxos, then its QEMU), cached by content hash."""
    s = colo_settings
    if s.vmft_root is None:
        pytest.skip("no vm-ft tree: pass --vmft-root DIR or set VMFT_ROOT")
    try:
        build = build_vmft(s.vmft_root, s.cache_dir, s.vmft_patches, s.vmft_cflags,
                           s.vmft_configure, s.python2)
    except BuildError as exc:
        if exc.log:
            report.attach_file(exc.log, "vm-ft build log")
        pytest.fail(f"vm-ft build failed: {exc}", pytrace=False)
    report.environment(vmft_root=s.vmft_root, vmft_build_key=build.key,
                       vmft_patches=",".join(build.patches) or "none")
    return build


@pytest.fixture
def vmft_group(colo_settings: Settings, vmft_build: VmftBuild, guest_image: GuestImage,
               accel: str, artifacts: Path, worker_id_safe: str) -> Iterator[VmftGroup]:
    """Three vm-ft nodes (primary, secondary, sentinel) on a three-host lab, Paxos leader
    elected; the test starts COLO. Every node is stopped and the lab removed afterwards."""
    s = colo_settings
    topo = local_topology(worker_id_safe, RUN_ID, sentinel=True)
    vm = VmftVm(image=Path("/dev/null"), memory_mib=s.guest_memory, mac=topo.vm_mac,
                accel=accel, kernel=guest_image.kernel, initrd=guest_image.initrd,
                append=kernel_cmdline(f"{topo.vm_addr}/24", AGENT_PORT))
    ledger = artifacts / LEDGER_NAME
    with EmbeddedLab(topo, ledger=ledger):
        run_dir = Path(tempfile.mkdtemp(prefix=f"vmft-{topo.run_tag}-", dir=scratch_root()))
        write_entry(ledger, "created", "dir", str(run_dir))
        hosts = namespace_hosts(topo)
        group = VmftGroup(vmft_build, vm, topo, hosts, run_dir, artifacts, s.wait_timeout)
        try:
            group.start_nodes()
            group.wait_leader()
            yield group
        finally:
            with contextlib.ExitStack() as teardown:  # every step runs, even after an interrupt
                teardown.callback(remove_scratch, [run_dir], ledger, False)
                teardown.callback(report.attach_run, artifacts)
                teardown.callback(_save_dare_logs, group, artifacts)
                teardown.callback(group.stop)


def _save_dare_logs(group: VmftGroup, artifacts: Path) -> None:
    for node in group.nodes.values():
        if node.dare_log.exists():
            shutil.copy2(node.dare_log, artifacts / f"{node.role}-dare.log")
