"""The inventory profile's lab: the machines of an inventory file, reached over SSH.

Nothing is created on the hosts but what a COLO pair needs, and all of it is made from the
same data as the embedded lab (``Topology`` → ``HostSpec``): the VM's bridge, tap and the
primary's ifb redirection with ``HostNetwork`` (``ip``/``tc`` argv over SSH), a private
scratch directory per test under the inventory's ``scratch``, and the QEMU binary and
guest files staged once per session by content hash under ``<scratch>/stage``. The
workload's connections leave from the client host through SSH channels (``ssh -W``
style), or from this machine when the inventory has no client.

``InventoryHosts`` (one per session) checks each host once: SSH works, the tools are there,
the staged QEMU runs. ``InventoryLab`` (one per test) provisions and tears down.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colo_fixtures.config.inventory import Inventory
from colo_fixtures.core.verdicts import LabError, Unreachable
from colo_fixtures.lab.hosts import CommandError, Host, LocalHost
from colo_fixtures.lab.hosts.ssh import SshHost
from colo_fixtures.lab.ledger import write_entry
from colo_fixtures.lab.topology import HostSpec, Topology
from colo_fixtures.lab.vm_network import HostNetwork, run_undo

VM_ROLES = ("primary", "secondary")
TOOLS = {"qemu-img": "qemu-utils", "ip": "iproute2", "tc": "iproute2", "socat": "socat",
         "mktemp": "coreutils"}
FIRMWARE_PACKAGES = "qemu-system-data seabios ipxe-qemu"
PASSPHRASE_ENV = "COLO_SSH_KEY_PASSPHRASE"  # never a knob: knobs end up in reports


CLOCK_LIMIT_S = 0.002  # the largest clock offset a lab host may have: figures are ~10 ms


class InventoryLabError(LabError):
    """A lab host is not usable; the message names the host and the fix."""


def ssh_hosts(inventory: Inventory, accept_new: bool, passphrase: str | None) -> dict[str, Host]:
    """An SSH host per inventory role; without a client role, the client is this machine."""
    hosts: dict[str, Host] = {
        role: SshHost(f"{role} ({host.ssh})", role, host.ssh, host.key,
                      known_hosts=inventory.known_hosts, accept_new=accept_new,
                      passphrase=passphrase)
        for role, host in inventory.hosts.items()}
    hosts.setdefault("client", LocalHost("this machine", "client"))
    return hosts


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()[:16]


@dataclass
class InventoryHosts:
    """The inventory's hosts for a whole session: checked once, files staged once."""

    inventory: Inventory
    topo: Topology
    hosts: dict[str, Host]
    staged: dict[Path, Path] = field(default_factory=dict)  # local file -> path on the hosts

    clock_offsets: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def vm_hosts(self) -> list[Host]:
        return [self.hosts[role] for role in VM_ROLES]

    def check_clocks(self, limit: float = CLOCK_LIMIT_S) -> None:
        """Measure each remote host's clock against this machine's and refuse a lab whose
        offset may exceed ``limit``: the harness compares times taken on different hosts
        (a kill's moment on the victim, COLO_EXIT on the survivor, the client's operations
        here), and the figures it reports are tens of milliseconds."""
        problems = []
        for role, host in self.hosts.items():
            if not isinstance(host, SshHost):
                continue
            offset, rtt = self.clock_offsets[role] = host.clock_offset()
            if abs(offset) - rtt / 2 > limit:
                problems.append(f"{host.name}: clock {offset * 1000:+.1f} ms off this "
                                f"machine's (round trip {rtt * 1000:.1f} ms)")
        if problems:
            raise InventoryLabError(
                "; ".join(problems) + f": synchronise the lab's clocks (chrony or PTP) to "
                f"within {limit * 1000:g} ms; failover figures compare times across hosts")

    def check(self, firmware_dirs: Iterable[str]) -> None:
        """Every host answers over SSH; the VM hosts have the tools, the firmware, and a
        writable scratch directory. One InventoryLabError lists every problem found."""
        problems = []
        for role, host in self.hosts.items():
            try:
                host.run(["true"], timeout=30)
            except CommandError as exc:
                problems.append(str(exc))
                continue
            if role not in VM_ROLES:
                continue
            probe = 'for t; do command -v "$t" >/dev/null || echo "$t"; done'
            missing = host.run(["sh", "-c", probe, "sh", *TOOLS]).stdout.split()
            if missing:
                packages = " ".join(sorted({TOOLS[t] for t in missing}))
                problems.append(f"{host.name}: missing {', '.join(missing)} (apt-get install "
                                f"{packages} there)")
            absent = [d for d in firmware_dirs if not host.exists(Path(d))]
            if absent:
                problems.append(f"{host.name}: no firmware in {', '.join(absent)} (apt-get "
                                f"install {FIRMWARE_PACKAGES} there)")
            try:
                host.make_dir(self.inventory.scratch)
            except CommandError as exc:
                problems.append(f"{exc} (lab.scratch in {self.inventory.path})")
                continue
            if host.run(["test", "-w", str(self.inventory.scratch)], check=False).rc != 0:
                problems.append(f"{host.name}: {self.inventory.scratch} is not writable "
                                f"(lab.scratch in {self.inventory.path})")
        if problems:
            raise InventoryLabError("; ".join(problems))

    def stage(self, files: Iterable[Path]) -> dict[Path, Path]:
        """Copy each file to ``<scratch>/stage/<digest>-<name>`` on every VM host, unless it
        is there already (content-addressed, so a rebuilt QEMU gets a new path). Returns
        local path -> path on the hosts (the same on each)."""
        stage_dir = self.inventory.scratch / "stage"
        for local in files:
            if local in self.staged:
                continue
            remote = stage_dir / f"{file_digest(local)}-{local.name}"
            for host in self.vm_hosts:
                if host.exists(remote):
                    continue
                host.make_dir(stage_dir)
                part = remote.with_name(remote.name + ".part")
                assert isinstance(host, SshHost)
                host.put(local, part)
                mode = "755" if local.stat().st_mode & 0o100 else "644"
                host.run(["chmod", mode, str(part)])
                host.run(["mv", "-f", str(part), str(remote)])
            self.staged[local] = remote
        return dict(self.staged)

    def check_qemu(self, binary: Path) -> None:
        """The staged QEMU starts on every VM host (its shared libraries are there)."""
        for host in self.vm_hosts:
            result = host.run([str(binary), "--version"], check=False)
            if result.rc != 0:
                last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:]
                raise InventoryLabError(
                    f"{host.name}: the harness's QEMU does not run there: "
                    f"{last[0] if last else f'exit {result.rc}'} (install the libraries it "
                    "names, or build on a machine with the hosts' distribution)")

    def close(self) -> None:
        for host in self.hosts.values():
            if isinstance(host, SshHost):
                host.close()


@dataclass
class InventoryLab:
    """One test's share of the inventory lab: the VM network on the primary and the
    secondary, and a private scratch directory (the same path on both)."""

    lab_hosts: InventoryHosts
    ledger: Path | None = None
    networks: dict[str, HostNetwork] = field(default_factory=dict)
    scratch: Path | None = None
    recorded: dict[str, dict[str, Any]] = field(default_factory=dict)  # ledger names by role

    @property
    def topo(self) -> Topology:
        return self.lab_hosts.topo

    @property
    def hosts(self) -> dict[str, Host]:
        return self.lab_hosts.hosts

    def _spec(self, role: str) -> HostSpec:
        return self.topo.hosts[role]

    def create(self) -> Path:
        """Provision both VM hosts and make the scratch directory; returns it. On failure
        what was made is removed again."""
        try:
            for role in VM_ROLES:
                network = HostNetwork(self.hosts[role], self._spec(role))
                self.networks[role] = network
                network.provision(enslave_tap=role == "primary")
                self.recorded[role] = {"undo": [list(step) for step in network.undo]}
                self._record("created", "ssh-network", self.hosts[role], self.recorded[role])
            self.scratch = self._make_scratch()
        except BaseException:
            self.destroy()
            raise
        return self.scratch

    def _make_scratch(self) -> Path:
        root = self.lab_hosts.inventory.scratch
        first, *others = [self.hosts[role] for role in VM_ROLES]
        first.make_dir(root)
        made = first.run(["mktemp", "-d", "-p", str(root), f"colo-{self.topo.run_tag}-XXXXXX"])
        path = Path(made.stdout.strip())
        for host in others:  # the same name on every host (hosts may share a filesystem)
            host.run(["mkdir", "-p", "-m", "700", str(path)])
        for host in (first, *others):
            self._record("created", "ssh-dir", host, {"path": str(path)})
        return path

    def _record(self, op: str, kind: str, host: Host, what: dict[str, Any]) -> None:
        """A ledger line the janitor can act on: the host's SSH details and ``what``."""
        if self.ledger is None or not isinstance(host, SshHost):
            return
        name = json.dumps({**host.record(), **what}, sort_keys=True)
        write_entry(self.ledger, op, kind, name)

    def destroy(self, keep_scratch: bool = False) -> None:
        """Remove the VM network (in reverse) and the scratch directory; raise
        InventoryLabError naming what could not be removed."""
        failed = []
        for role in reversed(list(self.networks)):
            network = self.networks.pop(role)
            failed += network.teardown()
            if role in self.recorded:
                self._record("removed", "ssh-network", self.hosts[role], self.recorded.pop(role))
        if self.scratch is not None and not keep_scratch:
            for role in VM_ROLES:
                with contextlib.suppress(CommandError):
                    self.hosts[role].run(["rm", "-rf", "--", str(self.scratch)], timeout=60)
                self._record("removed", "ssh-dir", self.hosts[role], {"path": str(self.scratch)})
            self.scratch = None
        if failed:
            raise InventoryLabError("; ".join(failed))

    # -- what the pair and the suites use

    def attach_tap(self, role: str) -> None:
        self.networks[role].attach_tap()

    def detach_tap(self, role: str) -> None:
        self.networks[role].detach_tap()

    def tap_tx_packets(self, role: str) -> int:
        """Packets (sent and dropped) the VM's tap on that host carried toward the VM."""
        result = self.hosts[role].run(["ip", "-j", "-s", "link", "show", "dev",
                                       str(self._spec(role).tap)])
        tx = json.loads(result.stdout)[0]["stats64"]["tx"]
        return int(tx["packets"]) + int(tx["dropped"])

    def ifb_stats(self) -> dict[str, int]:
        """Counters of the primary's redirection: ifb0 rx/tx and tap0 rx."""
        spec = self._spec("primary")
        host = self.hosts["primary"]
        counters = {}
        for name, ifname in (("ifb", spec.ifb), ("tap", spec.tap)):
            result = host.run(["ip", "-j", "-s", "link", "show", "dev", str(ifname)])
            stats = json.loads(result.stdout)[0]["stats64"]
            counters[f"{name}_rx_packets"] = stats["rx"]["packets"]
            counters[f"{name}_tx_packets"] = stats["tx"]["packets"]
        return {key: counters[key] for key in ("ifb_rx_packets", "ifb_tx_packets",
                                               "tap_rx_packets")}

    def network_state(self) -> str:
        """Links (state, master, counters) and qdiscs of both VM hosts, for a diagnosis."""
        lines = []
        for role in VM_ROLES:
            host = self.hosts[role]
            lines.append(f"--- {role} ({host.name})")
            for argv in (["ip", "-s", "link"], ["tc", "-s", "qdisc", "show"]):
                result = host.run(argv, check=False)
                lines.append(result.stdout.rstrip() or result.stderr.strip())
        return "\n".join(lines)

    def connect(self, address: str, port: int, timeout: float) -> socket.socket:
        """A TCP connection from the client host (retried until ``timeout``)."""
        client = self.hosts["client"]
        if isinstance(client, SshHost):
            return connect_retrying(lambda t: client.connect_tcp(address, port, t),
                                    f"{client.name} to {address}:{port}", timeout)
        return connect_retrying(lambda t: socket.create_connection((address, port), t),
                                f"this machine to {address}:{port}", timeout)


def connect_retrying(open_socket: Callable[[float], socket.socket], what: str,
                     timeout: float) -> socket.socket:
    """``open_socket(per_try_timeout)`` until it works or ``timeout`` runs out; then a
    TimeoutError naming ``what`` and the last error. The socket is returned blocking."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            sock = open_socket(min(remaining, 2.0))
        except OSError as exc:
            last = str(exc) or type(exc).__name__
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            continue
        sock.settimeout(None)
        return sock
    raise Unreachable(f"cannot connect from {what} within {timeout:g}s: last error {last}")


REMOTE_KINDS = ("ssh-process", "ssh-dir", "ssh-network")  # in the order they are cleaned


def clean_remote(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Remove what a killed run left on SSH hosts (ledger items of ``REMOTE_KINDS``, in
    creation order): QEMUs by PID and start time, scratch directories, then the VM network
    by its recorded undo steps. Returns the items that could not be removed."""
    hosts: dict[str, SshHost] = {}
    failed = []
    ordered = sorted(reversed(items), key=lambda item: REMOTE_KINDS.index(item[0]))
    try:
        for kind, name in ordered:
            try:
                record = json.loads(name)
                host = hosts.get(record["ssh"])
                if host is None:
                    host = hosts[record["ssh"]] = SshHost.from_record(
                        record, os.environ.get(PASSPHRASE_ENV))
                if kind == "ssh-process":
                    host.kill_recorded(int(record["pid"]), record["start"])
                elif kind == "ssh-dir":
                    host.run(["rm", "-rf", "--", record["path"]], timeout=60)
                elif run_undo(host, [("undo", argv) for _, argv in record["undo"]]):
                    failed.append((kind, name))
            except (CommandError, ValueError, KeyError, TypeError):
                failed.append((kind, name))
    finally:
        for host in hosts.values():
            host.close()
    return failed
