"""A lab of "machines" on this one: network namespaces wired like real lab hosts, each
with its own OpenSSH server, and an inventory file describing them.

Unlike the embedded lab, nothing here is the harness's VM network: each machine has only
its cables, as a freshly installed lab host would; the harness (inventory profile) makes
the bridges, taps and ifb itself over SSH.

    ctl: brm 10.23.0.1/24 ── mgmt0 10.23.0.2 (pri), .3 (sec), .4 (cli)   (management)
    pri: rep0 10.22.1.2/24 ══════════════ sec: rep0 10.22.1.3/24         (replication)
    cli: brx 192.168.100.1/24 ── xpri ══ pri: ext0 ; xsec ══ sec: ext0    (external)

``ctl`` is the controller: pytest runs inside it and reaches the machines only over SSH.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from sshd_lab import Sshd, keygen, privsep_dir, public_key, start_sshd

from colo_fixtures.lab.namespaces import netns_exists
from colo_fixtures.lab.topology import HostSpec

MGMT = {"primary": "10.23.0.2", "secondary": "10.23.0.3", "client": "10.23.0.4"}
SHORT = {"primary": "pri", "secondary": "sec", "client": "cli"}
REPLICATION = {"primary": "10.22.1.2", "secondary": "10.22.1.3"}
CLIENT_ADDR, VM_ADDR = "192.168.100.1", "192.168.100.10"


@dataclass
class Machines:
    """The running machine lab: namespaces, servers, and the inventory describing it."""

    controller: str  # the namespace pytest runs in
    namespaces: dict[str, str]  # role -> namespace
    servers: dict[str, Sshd]
    inventory: Path
    key: Path
    scratch: Path


def _index(ipr: IPRoute, name: str) -> int:
    return ipr.link_lookup(ifname=name)[0]


def _up(ipr: IPRoute, *names: str) -> None:
    for name in names:
        ipr.link("set", index=_index(ipr, name), state="up")


def _address(ipr: IPRoute, name: str, address: str, prefix: int = 24) -> None:
    ipr.addr("add", index=_index(ipr, name), address=address, prefixlen=prefix)


def _wire(tag: str) -> tuple[str, dict[str, str]]:
    """Create the namespaces and cables; return the controller and role -> namespace."""
    ctl = f"colo-{tag}-ctl"
    namespaces = {role: f"colo-{tag}-{short}" for role, short in SHORT.items()}
    for name in (ctl, *namespaces.values()):
        pr_netns.create(name)
    with IPRoute(netns=ctl, flags=0) as ipr:
        ipr.link("add", ifname="brm", kind="bridge")
        _address(ipr, "brm", "10.23.0.1")
        _up(ipr, "lo", "brm")
        for role, ns in namespaces.items():
            end = f"m{SHORT[role]}"
            ipr.link("add", ifname=end, kind="veth", peer={"ifname": "mgmt0", "net_ns_fd": ns})
            ipr.link("set", index=_index(ipr, end), master=_index(ipr, "brm"))
            _up(ipr, end)
    for role, ns in namespaces.items():
        with IPRoute(netns=ns, flags=0) as ipr:
            _address(ipr, "mgmt0", MGMT[role])
            _up(ipr, "lo", "mgmt0")
    with IPRoute(netns=namespaces["primary"], flags=0) as ipr:
        ipr.link("add", ifname="rep0", kind="veth",
                 peer={"ifname": "rep0", "net_ns_fd": namespaces["secondary"]})
        _address(ipr, "rep0", REPLICATION["primary"])
        _up(ipr, "rep0")
    with IPRoute(netns=namespaces["secondary"], flags=0) as ipr:
        _address(ipr, "rep0", REPLICATION["secondary"])
        _up(ipr, "rep0")
    with IPRoute(netns=namespaces["client"], flags=0) as ipr:
        ipr.link("add", ifname="brx", kind="bridge")
        _address(ipr, "brx", CLIENT_ADDR)
        _up(ipr, "brx")
        for role in ("primary", "secondary"):
            end = f"x{SHORT[role]}"
            ipr.link("add", ifname=end, kind="veth",
                     peer={"ifname": "ext0", "net_ns_fd": namespaces[role]})
            ipr.link("set", index=_index(ipr, end), master=_index(ipr, "brx"))
            _up(ipr, end)
    return ctl, namespaces


def _inventory(folder: Path, scratch: Path, key: Path, known_hosts: Path) -> Path:
    vm_host = """
[hosts.{role}]
ssh = "root@{mgmt}"
key = "{key}"
replication = {{ interface = "rep0", address = "{rep}" }}
external = {{ interface = "ext0", bridge = "br0", tap = "tap0" }}
"""
    text = f"""# The machine lab of tests/lab_machines.py (generated)
[lab]
scratch = "{scratch}"
vm_address = "{VM_ADDR}"
known_hosts = "{known_hosts}"
"""
    for role in ("primary", "secondary"):
        text += vm_host.format(role=role, mgmt=MGMT[role], key=key, rep=REPLICATION[role])
    text += f"""
[hosts.client]
ssh = "root@{MGMT['client']}"
key = "{key}"
external = {{ interface = "brx", address = "{CLIENT_ADDR}" }}
"""
    path = folder / "lab.toml"
    path.write_text(text)
    return path


@contextmanager
def machine_lab(folder: Path) -> Iterator[Machines]:
    """The machine lab with an sshd per machine and its inventory; all removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    scratch = Path("/dev/shm") / f"colo-{tag}-scratch"
    with ExitStack() as stack:
        stack.callback(_remove, [f"colo-{tag}-{s}" for s in ("ctl", *SHORT.values())], scratch)
        ctl, namespaces = _wire(tag)
        stack.enter_context(privsep_dir())
        key = keygen(folder / "id_lab")
        servers = {}
        for role, ns in namespaces.items():
            spec = HostSpec(role=role, netns=ns, bridge="", tap=None, rep_if=None,
                            rep_addr=None, ext_if=None, ifb=None)
            servers[role] = start_sshd(spec, folder / f"sshd-{role}", [public_key(key)],
                                       address=MGMT[role])
            stack.callback(servers[role].stop)
        known_hosts = folder / "known_hosts"
        known_hosts.write_text("".join(s.host_key_line() for s in servers.values()))
        inventory = _inventory(folder, scratch, key, known_hosts)
        yield Machines(ctl, namespaces, servers, inventory, key, scratch)


def _remove(namespaces: list[str], scratch: Path) -> None:
    for name in namespaces:
        if netns_exists(name):
            pr_netns.remove(name)
    shutil.rmtree(scratch, ignore_errors=True)
