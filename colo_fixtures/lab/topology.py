"""The lab as data: hosts, interface names, addresses and ports. No I/O here.

The embedded default ("local" profile) stands each lab host up as a network namespace
on this machine (see ``colo_fixtures.lab.embedded.EmbeddedLab``)::

    cli: brx (client_addr/24) ── xpri ══ ext0 ── pri: br0 ── tap0 (VM)   ifb0 (tap0 ingress)
                              └─ xsec ══ ext0 ── sec: br0    tap0 (enslaved at failover)
    pri: rep0 (10.22.x.2/24) ══════════════════ sec: rep0 (10.22.x.3/24)

With a sentinel (vm-ft's witness, ``local_topology(sentinel=True)``) the replication
network has three hosts, so it becomes a switch: a bridge ``brr`` in the client namespace
(no address there) joins each host's ``rep0`` (pri .2, sec .3, snt .4) through veths
``rpri``/``rsec``/``rsnt``. The sentinel has br0/tap0 like the others but no external link.

Per-xdist-worker isolation: the worker index ``n`` (0 for ``master`` and ``gw0``) offsets
the replication subnet (10.22.{1+n}.0/24, so worker 0 uses the seed's 10.22.1.2/.3), the
external subnet (192.168.{100+n}.0/24), every port (base + 10*n) and the last byte of the
VM's MAC. Namespace names carry a run tag (6 hex digits of the run id + the worker index),
so two concurrent pytest runs never collide.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from dataclasses import dataclass, replace

from colo_fixtures.config.inventory import Inventory

ROLES = ("primary", "secondary", "sentinel", "client")
MAX_WORKERS = 100
IFNAMSIZ = 15  # the kernel's interface-name limit, without the NUL
PORT_STEP = 10
SEED_MAC = "52:a4:00:12:78:66"
_WORKER_RE = re.compile(r"(?:master|gw(0|[1-9][0-9]*))")
_HEX_RE = re.compile(r"[0-9a-f]{6,}")


@dataclass(frozen=True)
class Ports:
    """TCP ports of one worker's COLO pair (upstream COLO-FT.txt numbering at worker 0).

    The bases differ modulo 10 and workers step by 10, so no two workers share a port.
    """

    migration: int = 8888  # secondary's -incoming tcp:REP_ADDR:PORT
    nbd: int = 8889  # secondary's nbd-server-start
    mirror: int = 9003  # primary chardev mirror0 (server) <- secondary red0
    compare: int = 9004  # primary chardev compare1 (server) <- secondary red1
    compare0: int = 9001  # primary-local compare0 (server) <- compare0-0
    compare_out: int = 9005  # primary-local compare_out (server) <- compare_out0

    def offset(self, n: int) -> Ports:
        """The same ports shifted for worker index ``n``."""
        return Ports(**{name: port + PORT_STEP * n for name, port in vars(self).items()})


@dataclass(frozen=True)
class HostSpec:
    """One lab host: its namespace and the names and addresses of its interfaces."""

    role: str  # "primary" | "secondary" | "sentinel" | "client"
    netns: str  # namespace name
    bridge: str  # "br0" (the VM's bridge on the host); client: the external bridge "brx"
    tap: str | None  # "tap0" on primary/secondary, None on client
    rep_if: str | None  # replication link interface, "rep0"; None on client
    rep_addr: str | None  # "10.22.1.2" primary, "10.22.1.3" secondary
    ext_if: str | None  # this host's veth end on the external network, enslaved to br0
    ifb: str | None  # "ifb0" on the primary only (the seed's redirection), else None
    ext_peer: str | None = None  # the client-side end of ext_if ("xpri"/"xsec"), on brx
    rep_peer: str | None = None  # with a replication switch: rep_if's end on it ("rpri")

    def interfaces(self) -> tuple[str, ...]:
        """Every interface name this host gets (besides lo)."""
        names = (self.bridge, self.tap, self.rep_if, self.ext_if, self.ifb)
        return tuple(name for name in names if name is not None)


@dataclass(frozen=True)
class Topology:
    """A whole lab for one run and one xdist worker."""

    run_tag: str  # short unique token for this run+worker, used in names
    hosts: dict[str, HostSpec]  # by role
    rep_prefix: int  # 24
    ext_subnet: str  # e.g. "192.168.100.0/24"
    client_addr: str  # "192.168.100.1" on the client's bridge brx
    vm_addr: str  # "192.168.100.10", the protected VM's address
    vm_mac: str  # the seed's "52:a4:00:12:78:66", last byte varied per worker
    ports: Ports
    rep_switch: str | None = None  # bridge in the client namespace joining 3+ rep links

    @property
    def primary(self) -> HostSpec:
        return self.hosts["primary"]

    @property
    def secondary(self) -> HostSpec:
        return self.hosts["secondary"]

    @property
    def client(self) -> HostSpec:
        return self.hosts["client"]

    def environment(self, host_names: dict[str, str]) -> dict[str, str]:
        """The lab as a report's environment shows it: hosts, links, addresses."""
        pri, sec = self.hosts["primary"], self.hosts["secondary"]
        return {
            "lab_hosts": ", ".join(f"{role}={name}" for role, name in sorted(host_names.items())),
            "lab_replication": f"{pri.rep_addr} <-> {sec.rep_addr} ({pri.rep_if}/{sec.rep_if})",
            "lab_vm_network": f"{self.vm_addr} on {self.ext_subnet}, bridge {pri.bridge}, tap "
                              f"{pri.tap}, ifb {pri.ifb} on the primary",
        }

    @property
    def sentinel(self) -> HostSpec | None:
        return self.hosts.get("sentinel")

    def replication_hosts(self) -> tuple[HostSpec, ...]:
        """Hosts on the replication network, in role order."""
        return tuple(self.hosts[r] for r in ROLES if r in self.hosts and self.hosts[r].rep_if)

    @property
    def ext_prefix(self) -> int:
        return ipaddress.ip_network(self.ext_subnet).prefixlen

    def host(self, role: str) -> HostSpec:
        """The host of ``role``; ValueError naming the known roles otherwise."""
        try:
            return self.hosts[role]
        except KeyError:
            raise ValueError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}") from None

    def namespaces(self) -> tuple[str, ...]:
        """Namespace names in role order (primary, secondary, [sentinel,] client)."""
        return tuple(self.hosts[role].netns for role in ROLES if role in self.hosts)


def worker_index(worker_id: str) -> int:
    """0 for "master" and "gw0", n for "gwN"; ValueError for anything else or n too large."""
    if not isinstance(worker_id, str) or not _WORKER_RE.fullmatch(worker_id):
        raise ValueError(
            f"bad xdist worker id {worker_id!r}: expected 'master' or 'gw<N>' (e.g. gw0)"
        )
    n = 0 if worker_id == "master" else int(worker_id[2:])
    if n >= MAX_WORKERS:
        raise ValueError(f"xdist worker id {worker_id!r}: at most {MAX_WORKERS} workers supported")
    return n


def run_tag(run_id: str | None, n: int) -> str:
    """First 6 hex digits of ``run_id`` (a fresh uuid4 if None) followed by the worker index."""
    if run_id is None:
        run_id = uuid.uuid4().hex
    digits = str(run_id).replace("-", "").lower()
    if not _HEX_RE.match(digits):
        raise ValueError(f"bad run id {run_id!r}: expected at least 6 hex digits (a uuid works)")
    return f"{digits[:6]}{n}"


def local_topology(worker_id: str = "master", run_id: str | None = None,
                   sentinel: bool = False) -> Topology:
    """The embedded default lab for one xdist worker of one run (see the module docstring);
    ``sentinel`` adds vm-ft's third host and turns the replication link into a switch."""
    n = worker_index(worker_id)
    tag = run_tag(run_id, n)
    rep_net = f"10.22.{1 + n}"
    ext_net = f"192.168.{100 + n}"
    hosts = {
        "primary": HostSpec(
            role="primary", netns=f"colo-{tag}-pri", bridge="br0", tap="tap0",
            rep_if="rep0", rep_addr=f"{rep_net}.2", ext_if="ext0", ifb="ifb0",
            ext_peer="xpri",
        ),
        "secondary": HostSpec(
            role="secondary", netns=f"colo-{tag}-sec", bridge="br0", tap="tap0",
            rep_if="rep0", rep_addr=f"{rep_net}.3", ext_if="ext0", ifb=None,
            ext_peer="xsec",
        ),
        "client": HostSpec(
            role="client", netns=f"colo-{tag}-cli", bridge="brx", tap=None,
            rep_if=None, rep_addr=None, ext_if=None, ifb=None,
        ),
    }
    switch = None
    if sentinel:
        hosts["sentinel"] = HostSpec(
            role="sentinel", netns=f"colo-{tag}-snt", bridge="br0", tap="tap0",
            rep_if="rep0", rep_addr=f"{rep_net}.4", ext_if=None, ifb=None,
        )
        switch = "brr"
        for role, short in (("primary", "pri"), ("secondary", "sec"), ("sentinel", "snt")):
            hosts[role] = replace(hosts[role], rep_peer=f"r{short}")
    topo = Topology(
        run_tag=tag,
        hosts=hosts,
        rep_prefix=24,
        ext_subnet=f"{ext_net}.0/24",
        client_addr=f"{ext_net}.1",
        vm_addr=f"{ext_net}.10",
        vm_mac=f"{SEED_MAC[:-2]}{int(SEED_MAC[-2:], 16) + n:02x}",
        ports=Ports().offset(n),
        rep_switch=switch,
    )
    _check_names(topo)
    return topo


def inventory_topology(inventory: Inventory, run_id: str | None = None) -> Topology:
    """The lab of an inventory (``--colo-profile inventory``): its hosts' own interfaces and
    addresses, the seed's ports, ``ifb0`` on the primary. ``netns`` is empty: these hosts
    are machines reached over SSH. Without a client host, the client is this machine."""
    if inventory.vm_address is None:
        raise ValueError(f"{inventory.path}: [lab] vm_address is missing: the protected VM's "
                         "address on the external network (e.g. 192.168.100.10)")
    hosts = {}
    for role, host in inventory.hosts.items():
        vm_host = role in ("primary", "secondary")
        hosts[role] = HostSpec(
            role=role, netns="", bridge=host.bridge or host.external_if or "",
            tap=host.tap if vm_host else None, rep_if=host.replication_if,
            rep_addr=host.replication_addr, ext_if=host.external_if if vm_host else None,
            ifb="ifb0" if role == "primary" else None)
    if "client" not in hosts:
        hosts["client"] = HostSpec(role="client", netns="", bridge="", tap=None, rep_if=None,
                                   rep_addr=None, ext_if=None, ifb=None)
    network = ipaddress.ip_interface(f"{inventory.vm_address}/{inventory.vm_prefix}").network
    client = inventory.hosts.get("client")
    topo = Topology(
        run_tag=run_tag(run_id, 0), hosts=hosts, rep_prefix=24, ext_subnet=str(network),
        client_addr=(client.external_addr or "") if client else "",
        vm_addr=inventory.vm_address, vm_mac=SEED_MAC, ports=Ports())
    _check_names(topo)
    return topo


def _check_names(topo: Topology) -> None:
    """Interface names must fit the kernel's limit; fail early with the offending name."""
    for host in topo.hosts.values():
        for name in (*host.interfaces(), host.ext_peer, host.rep_peer):
            if name is not None and len(name) > IFNAMSIZ:
                raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ} characters")
