"""Preflight: can this host run vm-ft? One line per missing item, naming the fix.

What vm-ft needs beyond the embedded COLO lab (COLO-FACTS §4): an RDMA device whose IB
port 2 is active (DARE hard-codes port 2), the seed's output path (an ifb device fed by an
ingress ``u32``/``mirred`` redirect, and a ``plug`` qdisc on it), a Python 2 for QEMU 2.5's
configure, the Debian build dependencies of rdma-paxos and the vm-ft QEMU, and a vm-ft tree.

The traffic-control items are probed for real: in a throwaway network namespace the check
creates a dummy device and ``ifb0``, adds the ingress qdisc and the redirect filter, then
a ``plug`` qdisc, and removes the namespace again. ``rdma`` tests need only the device;
``paxos`` tests (a vm-ft group) need everything.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from colo_fixtures.sut.build import BuildError
from colo_fixtures.sut.vmft.build import check_tree, find_python2

SYS_INFINIBAND = Path("/sys/class/infiniband")
VMFT_PORT = 2  # DARE opens IB port 2, gid index 0
INCLUDE_DIRS = (Path("/usr/include"), Path("/usr/include/x86_64-linux-gnu"))
# header -> Debian package: what rdma-paxos and the vm-ft QEMU compile against
HEADERS = {
    "ev.h": "libev-dev",
    "db.h": "libdb-dev",
    "libconfig.h": "libconfig-dev",
    "infiniband/verbs.h": "libibverbs-dev",
    "rdma/rdma_cma.h": "librdmacm-dev",
    "libnl3/netlink/netlink.h": "libnl-3-dev",
    "libnl3/netlink/route/link.h": "libnl-route-3-dev",
    "libnl3/netlink/cli/utils.h": "libnl-cli-3-dev",
}
# Which checks each marker needs.
SCOPES = {
    "rdma": ("rdma device",),
    "paxos": ("rdma device", "ifb", "mirred redirect", "plug qdisc", "python2",
              "build libraries", "vm-ft tree"),
}


@dataclass(frozen=True)
class Check:
    """One preflight item: ``ok`` with what was found, or the problem and its fix."""

    name: str
    ok: bool
    detail: str  # what was found, or what is wrong and how to fix it

    def line(self) -> str:
        return f"{self.name}: {self.detail}"


@dataclass(frozen=True)
class Preflight:
    checks: tuple[Check, ...]

    def missing(self, scope: str | None = None) -> list[Check]:
        """Failed checks, all or those the marker ``scope`` needs."""
        names = SCOPES[scope] if scope is not None else None
        return [c for c in self.checks if not c.ok and (names is None or c.name in names)]

    def skip_reason(self, scopes: Iterable[str]) -> str | None:
        """One string for ``pytest.skip`` naming every missing item of ``scopes``, or None."""
        lines: list[str] = []
        for scope in scopes:
            lines += [c.line() for c in self.missing(scope) if c.line() not in lines]
        return "vm-ft preflight: " + "; ".join(lines) if lines else None


def _devices(sys_dir: Path) -> list[str]:
    return sorted(p.name for p in sys_dir.iterdir()) if sys_dir.is_dir() else []


def check_rdma(device: str | None, sys_dir: Path = SYS_INFINIBAND) -> Check:
    """An RDMA device (``device`` or the first) with IB port 2 ACTIVE."""
    name = "rdma device"
    devices = _devices(sys_dir)
    if not devices:
        return Check(name, False, f"no RDMA device under {sys_dir}: vm-ft needs an InfiniBand "
                     "HCA with its driver (rdma-core, or MLNX_OFED as in the seed)")
    chosen = device or devices[0]
    if chosen not in devices:
        return Check(name, False, f"{chosen} not found under {sys_dir} (present: "
                     f"{', '.join(devices)}): pass --rdma-device with one of them")
    state_file = sys_dir / chosen / "ports" / str(VMFT_PORT) / "state"
    if not state_file.is_file():
        return Check(name, False, f"{chosen} has no port {VMFT_PORT}, which DARE hard-codes: "
                     "use a dual-port HCA (or another device with --rdma-device)")
    state = state_file.read_text().strip()  # e.g. "4: ACTIVE"
    if "ACTIVE" not in state:
        return Check(name, False, f"{chosen} port {VMFT_PORT} is {state}: check the cable "
                     "and that a subnet manager runs (opensm)")
    return Check(name, True, f"{chosen} port {VMFT_PORT} {state}")


def check_headers(include_dirs: Iterable[Path] = INCLUDE_DIRS) -> Check:
    dirs = tuple(include_dirs)
    missing = sorted({pkg for header, pkg in HEADERS.items()
                      if not any((d / header).is_file() for d in dirs)})
    if missing:
        return Check("build libraries", False, f"headers missing: run tools/bootstrap "
                     f"(apt-get install {' '.join(missing)})")
    return Check("build libraries", True, f"{len(HEADERS)} headers found")


def check_python2(given: Path | None) -> Check:
    try:
        return Check("python2", True, str(find_python2(given)))
    except BuildError as exc:
        return Check("python2", False, str(exc))


def check_vmft_tree(root: Path | None) -> Check:
    if root is None:
        return Check("vm-ft tree", False, "none given: pass --vmft-root DIR or set VMFT_ROOT "
                     "to a vm-ft checkout")
    try:
        check_tree(root)
    except BuildError as exc:
        return Check("vm-ft tree", False, str(exc))
    return Check("vm-ft tree", True, str(root))


def check_traffic_control() -> list[Check]:
    """Probe ifb, the ingress u32/mirred redirect and a plug qdisc in a throwaway namespace."""
    from colo_fixtures.lab.namespaces import probe_output_path  # pyroute2 only when probing

    if os.geteuid() != 0:
        reason = "not checked: network namespaces need root (run as root)"
        return [Check(n, False, reason) for n in ("ifb", "mirred redirect", "plug qdisc")]
    return [Check(name, ok, detail) for name, ok, detail in probe_output_path()]


def run_preflight(vmft_root: Path | None = None, python2: Path | None = None,
                  rdma_device: str | None = None) -> Preflight:
    """Every check, in the order a lab engineer would fix them."""
    return Preflight((check_rdma(rdma_device), *check_traffic_control(), check_python2(python2),
                      check_headers(), check_vmft_tree(vmft_root)))


def rdma_address(device: str | None, sys_dir: Path = SYS_INFINIBAND) -> tuple[str, str]:
    """(device, IPv4 address) of the RDMA device's network interface (IPoIB or RoCE), which
    an ``rdma:`` migration URI needs; ValueError saying what is missing."""
    from pyroute2 import IPRoute

    devices = _devices(sys_dir)
    chosen = device or (devices[0] if devices else None)
    if chosen is None or chosen not in devices:
        raise ValueError(f"RDMA device {chosen or '(none)'} not under {sys_dir}")
    netdevs = sorted(p.name for p in (sys_dir / chosen / "device" / "net").glob("*"))
    with IPRoute() as ipr:
        for name in netdevs:
            for index in ipr.link_lookup(ifname=name):
                for addr in ipr.get_addr(index=index, family=socket.AF_INET):
                    return chosen, addr.get_attr("IFA_ADDRESS")
    raise ValueError(f"{chosen}'s network interface ({', '.join(netdevs) or 'none found'}) has "
                     "no IPv4 address: give its IPoIB/RoCE interface one for rdma: migration")
