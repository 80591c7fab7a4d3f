"""The embedded default lab: network namespaces standing in for the lab hosts.

``EmbeddedLab(topology).create()`` builds, entirely inside namespaces (nothing is made in the
root namespace, not even transiently)::

    pri: lo, br0, tap0 (enslaved to br0), rep0 (10.22.x.2), ext0 (enslaved to br0), ifb0,
         ingress qdisc on tap0 + u32 match-all filter with a mirred egress redirect to ifb0
    sec: lo, br0, tap0 (up, NOT enslaved until attach_tap), rep0 (10.22.x.3), ext0 (on br0)
    cli: lo, brx (client_addr/24), xpri (peer of pri's ext0), xsec (peer of sec's ext0)

Links get no IPv6 (``disable_ipv6`` defaults to 1 in the lab's namespaces), so the hosts put
no router solicitations, MLD or DAD frames on the VM's network and the ifb counters count
only the VM's traffic; the VM's own IPv6 frames are still bridged.

Every item is recorded when made, in ``EmbeddedLab.created`` and as a JSON line in the optional
ledger file, and ``destroy()`` removes exactly those items in reverse order. Ledger lines look
like ``{"op": "created", "kind": "link", "name": "colo-ab12cd0-pri/rep0", ...}``; kinds and
names are ``netns NS``, ``link NS/IFNAME``, ``qdisc NS/DEV/ingress``, ``filter
NS/DEV/ingress/PRIO``; ``janitor.clean(path)`` removes what a killed run left.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from colo_fixtures.core.verdicts import LabError
from colo_fixtures.lab.hosts.base import CommandError
from colo_fixtures.lab.hosts.local import LocalNamespaceHost
from colo_fixtures.lab.namespaces import (
    INGRESS,
    KIND_HINTS,
    PLUG_HANDLE,
    PLUG_LIMIT,
    RATE_HANDLE,
    TC_H_ROOT,
    action_packets,
    call_in_ns,
    connect_in_ns,
    ipr_in,
    lab_step,
    link_index,
    netns_exists,
    quiet_ipv6,
    remove_items,
    require_index,
    stats64,
)
from colo_fixtures.lab.topology import HostSpec, Topology
from colo_fixtures.lab.vm_network import HostNetwork


class EmbeddedLab:
    """Creates the topology's namespaces and links; destroys exactly what it created."""

    def __init__(self, topo: Topology, ledger: Path | None = None, replication_mbit: int = 0):
        self.topo = topo
        self.ledger = Path(ledger) if ledger is not None else None
        self.replication_mbit = replication_mbit  # 0: the veth's full speed
        self.created: list[tuple[str, str]] = []
        self.plug_available: bool = False
        self.networks: dict[str, HostNetwork] = {}  # role -> its VM network

    def __enter__(self) -> EmbeddedLab:
        self.create()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    # -- create

    def create(self) -> None:
        """Build the whole lab; on any failure undo what was made and raise a one-line LabError."""
        if self.created:
            raise LabError(f"lab {self.topo.run_tag} is already created: destroy() it first")
        try:
            self._build()
        except BaseException as exc:
            left = remove_items(self.created)
            self._forget_removed(left)
            if not isinstance(exc, Exception):
                raise
            message = str(exc) if isinstance(exc, LabError) else f"cannot create lab: {exc!r}"
            if left:
                message += f" (and could not undo {', '.join(n for _, n in left)})"
            raise LabError(message) from exc

    def _build(self) -> None:
        """Namespaces and cables with pyroute2, then each VM host's network (bridge, tap,
        ifb redirect) with ``HostNetwork``, the code an SSH lab host runs."""
        topo = self.topo
        pri, sec, cli = topo.primary, topo.secondary, topo.client
        vm_hosts = [h for h in (pri, sec, topo.sentinel) if h is not None]
        iprs: dict[str, IPRoute] = {}
        try:
            for host in [*vm_hosts, cli]:
                iprs[host.netns] = self._make_netns(host.netns)
            if topo.rep_switch is None:
                self._make_replication_link(iprs[pri.netns], iprs[sec.netns], pri, sec)
            else:
                self._make_replication_switch(iprs, cli)
            self._make_client_bridge(iprs[cli.netns], cli)
            for host in (pri, sec):
                self._make_ext_link(iprs[host.netns], iprs[cli.netns], host, cli)
            for host in vm_hosts:
                self._make_vm_network(host)
            self.plug_available = self._probe_plug(iprs[pri.netns], pri)
        finally:
            for ipr in iprs.values():
                ipr.close()

    def _make_vm_network(self, host: HostSpec) -> None:
        network = HostNetwork(LocalNamespaceHost(host.netns, host.role, host.netns), host)
        try:
            network.provision(enslave_tap=host is self.topo.primary)
        except CommandError as exc:
            raise LabError(str(exc)) from None
        finally:  # what was made goes with the namespace; recorded all the same
            for kind, name in network.made:
                self._record(kind, f"{host.netns}/{name}")
        self.networks[host.role] = network

    def _make_netns(self, name: str) -> IPRoute:
        if netns_exists(name):
            raise LabError(
                f"namespace {name} already exists: a previous run left it; run tools/janitor"
            )
        with lab_step(f"cannot create namespace {name}"):
            try:
                pr_netns.create(name)
            except FileExistsError:
                raise LabError(
                    f"namespace {name} already exists: a previous run left it; run tools/janitor"
                ) from None
        self._record("netns", name)
        with lab_step(f"cannot turn IPv6 autoconfiguration off in {name}"):
            call_in_ns(name, quiet_ipv6)
        with lab_step(f"cannot open namespace {name}"):
            ipr = IPRoute(netns=name, flags=0)
        with lab_step(f"cannot set lo up in {name}"):
            ipr.link("set", index=require_index(ipr, name, "lo"), state="up")
        return ipr

    def _add_link(self, ipr: IPRoute, ns: str, ifname: str, kind: str, **spec: Any) -> int:
        """Create one link inside ``ns``, record it and return its index."""
        if link_index(ipr, ifname) is not None:  # tuntap "add" would silently reuse an existing tap
            raise LabError(f"interface {ifname} already exists in namespace {ns}")
        with lab_step(f"cannot create {kind} device {ifname} in {ns}", KIND_HINTS.get(kind)):
            ipr.link("add", ifname=ifname, kind=kind, **spec)
        self._record("link", f"{ns}/{ifname}")
        return require_index(ipr, ns, ifname)

    def _set(self, ipr: IPRoute, ns: str, ifname: str, **spec: Any) -> None:
        words = " ".join(f"{key}={value}" for key, value in spec.items())
        with lab_step(f"cannot set {words} on {ns}/{ifname}"):
            ipr.link("set", index=require_index(ipr, ns, ifname), **spec)

    def _add_addr(self, ipr: IPRoute, ns: str, ifname: str, address: str, prefix: int) -> None:
        with lab_step(f"cannot add address {address}/{prefix} to {ns}/{ifname}"):
            index = require_index(ipr, ns, ifname)
            ipr.addr("add", index=index, address=address, prefixlen=prefix)

    def _make_replication_link(
        self, ipr: IPRoute, peer_ipr: IPRoute, host: HostSpec, peer: HostSpec
    ) -> None:
        ifname, peer_ifname = _need(host.rep_if, host, "rep_if"), _need(peer.rep_if, peer, "rep_if")
        self._add_veth(ipr, host.netns, ifname, peer.netns, peer_ifname)
        prefix = self.topo.rep_prefix
        self._add_addr(ipr, host.netns, ifname, _need(host.rep_addr, host, "rep_addr"), prefix)
        self._add_addr(peer_ipr, peer.netns, peer_ifname, _need(peer.rep_addr, peer, "rep_addr"),
                       prefix)
        self._set(ipr, host.netns, ifname, state="up")
        self._set(peer_ipr, peer.netns, peer_ifname, state="up")
        if self.replication_mbit:
            self._limit_rate(ipr, host.netns, ifname)
            self._limit_rate(peer_ipr, peer.netns, peer_ifname)

    def _limit_rate(self, ipr: IPRoute, ns: str, ifname: str) -> None:
        """A token bucket as the root qdisc of ``ifname``: at most ``replication_mbit``
        Mbit/s leave it (10 ms of burst). It goes with the link."""
        rate = self.replication_mbit * 1_000_000 // 8  # bytes per second
        with lab_step(f"cannot limit {ns}/{ifname} to {self.replication_mbit} Mbit/s",
                   "module sch_tbf missing (modprobe sch_tbf)"):
            ipr.tc("add", "tbf", require_index(ipr, ns, ifname), RATE_HANDLE, rate=rate,
                   burst=max(rate // 100, 16_384), latency="100ms")

    def _make_replication_switch(self, iprs: dict[str, IPRoute], cli: HostSpec) -> None:
        """Three or more hosts: each host's rep_if joins the bridge ``rep_switch`` in the
        client namespace (which gets no address on it)."""
        switch, cli_ipr = _need(self.topo.rep_switch, cli, "rep_switch"), iprs[cli.netns]
        bridge = self._add_link(cli_ipr, cli.netns, switch, "bridge")
        self._set(cli_ipr, cli.netns, switch, state="up")
        for host in self.topo.replication_hosts():
            ipr, ifname = iprs[host.netns], _need(host.rep_if, host, "rep_if")
            peer = _need(host.rep_peer, host, "rep_peer")
            self._add_veth(ipr, host.netns, ifname, cli.netns, peer)
            self._add_addr(ipr, host.netns, ifname, _need(host.rep_addr, host, "rep_addr"),
                           self.topo.rep_prefix)
            self._set(cli_ipr, cli.netns, peer, master=bridge)
            self._set(cli_ipr, cli.netns, peer, state="up")
            self._set(ipr, host.netns, ifname, state="up")

    def _add_veth(self, ipr: IPRoute, ns: str, ifname: str, peer_ns: str, peer_name: str) -> None:
        """A veth pair created directly inside ``ns`` with its peer inside ``peer_ns``."""
        self._add_link(ipr, ns, ifname, "veth", peer={"ifname": peer_name, "net_ns_fd": peer_ns})
        self._record("link", f"{peer_ns}/{peer_name}")

    def _make_client_bridge(self, ipr: IPRoute, cli: HostSpec) -> None:
        self._add_link(ipr, cli.netns, cli.bridge, "bridge")
        self._add_addr(ipr, cli.netns, cli.bridge, self.topo.client_addr, self.topo.ext_prefix)
        self._set(ipr, cli.netns, cli.bridge, state="up")

    def _make_ext_link(
        self, ipr: IPRoute, cli_ipr: IPRoute, host: HostSpec, cli: HostSpec
    ) -> None:
        ext, peer = _need(host.ext_if, host, "ext_if"), _need(host.ext_peer, host, "ext_peer")
        self._add_veth(ipr, host.netns, ext, cli.netns, peer)  # into br0 by HostNetwork
        self._set(cli_ipr, cli.netns, peer,
                  master=require_index(cli_ipr, cli.netns, cli.bridge))
        self._set(ipr, host.netns, ext, state="up")
        self._set(cli_ipr, cli.netns, peer, state="up")

    def _probe_plug(self, ipr: IPRoute, host: HostSpec) -> bool:
        """Can a ``plug`` qdisc (sch_plug, vm-ft's output buffer) be added on ifb0? Not left."""
        ns, ifb = host.netns, _need(host.ifb, host, "ifb")
        index = require_index(ipr, ns, ifb)
        try:
            ipr.tc("add", "plug", index, PLUG_HANDLE, limit=PLUG_LIMIT)
        except NetlinkError:
            return False
        with lab_step(f"cannot delete the probe plug qdisc on {ns}/{ifb}"):
            ipr.tc("del", index=index, handle=PLUG_HANDLE, parent=TC_H_ROOT)
        return True

    # -- ledger

    def _record(self, kind: str, name: str) -> None:
        self.created.append((kind, name))
        self._write_ledger("created", kind, name)

    def _write_ledger(self, op: str, kind: str, name: str) -> None:
        if self.ledger is None:
            return
        entry = {"op": op, "kind": kind, "name": name, "run_tag": self.topo.run_tag,
                 "pid": os.getpid(), "time": round(time.time(), 3)}
        with self.ledger.open("a") as out:
            out.write(json.dumps(entry) + "\n")

    def _forget_removed(self, left: list[tuple[str, str]]) -> None:
        """Drop removed items from ``created`` (and log them in the ledger); keep ``left``."""
        for kind, name in reversed(self.created):
            if (kind, name) not in left:
                self._write_ledger("removed", kind, name)
        self.created = list(left)

    # -- destroy

    def destroy(self) -> None:
        """Remove everything recorded, in reverse order; already-gone items are fine.

        Safe to call twice. Raises LabError only if some item exists but cannot be removed
        (those stay in ``created`` for a retry or the janitor).
        """
        left = remove_items(self.created)
        self._forget_removed(left)
        if not self.created:
            self.networks = {}
        if left:
            raise LabError(f"could not remove {', '.join(f'{k} {n}' for k, n in left)}")

    # -- use

    def attach_tap(self, role: str) -> None:
        """Put that host's tap into its bridge (the secondary's at a takeover)."""
        self._network(role).attach_tap()

    def detach_tap(self, role: str) -> None:
        """Take that host's tap out of its bridge (it stays up)."""
        self._network(role).detach_tap()

    def _network(self, role: str) -> HostNetwork:
        self._vm_host(role)
        if role not in self.networks:
            raise LabError(f"lab {self.topo.run_tag} has no VM network on {role}: create() it")
        return self.networks[role]

    def connect(self, address: str, port: int, timeout: float) -> socket.socket:
        """A TCP connection from the client namespace (retried until ``timeout``)."""
        return connect_in_ns(self.topo.client.netns, address, port, timeout)

    def ifb_stats(self) -> dict[str, int]:
        """Counters of the primary's redirection: ifb0 rx/tx, tap0 rx and the mirred action."""
        host = self.topo.primary
        ns, tap, ifb = host.netns, _need(host.tap, host, "tap"), _need(host.ifb, host, "ifb")
        with ipr_in(ns) as ipr:
            ifb_stats = stats64(ipr, require_index(ipr, ns, ifb))
            tap_index = require_index(ipr, ns, tap)
            tap_stats = stats64(ipr, tap_index)
            with lab_step(f"cannot dump filters on {ns}/{tap}"):
                filters = ipr.get_filters(index=tap_index, parent=INGRESS)
        result = {
            "ifb_rx_packets": ifb_stats.get("rx_packets", 0),
            "ifb_tx_packets": ifb_stats.get("tx_packets", 0),
            "tap_rx_packets": tap_stats.get("rx_packets", 0),
        }
        counts = [n for n in map(action_packets, filters) if n is not None]
        if counts:
            result["filter_packets"] = sum(counts)
        return result

    def network_state(self) -> str:
        """Every host's links (state, bridge master, packet counters) and qdiscs, for a
        failed test's diagnosis: where did the client's packets stop?"""
        lines = []
        for role, host in self.topo.hosts.items():
            lines.append(f"--- {role} ({host.netns})")
            try:
                with ipr_in(host.netns) as ipr:
                    names = {link["index"]: link.get_attr("IFLA_IFNAME")
                             for link in ipr.get_links()}
                    for link in ipr.get_links():
                        stats = link.get("stats64") or {}
                        master = names.get(link.get_attr("IFLA_MASTER"), "-")
                        state = "UP" if link["flags"] & 1 else "DOWN"
                        lines.append(
                            f"{link.get_attr('IFLA_IFNAME')}: {state} master={master} "
                            f"rx={stats.get('rx_packets', 0)} tx={stats.get('tx_packets', 0)} "
                            f"rx_dropped={stats.get('rx_dropped', 0)} "
                            f"tx_dropped={stats.get('tx_dropped', 0)}")
                    for qdisc in ipr.get_qdiscs():
                        lines.append(f"qdisc {qdisc.get_attr('TCA_KIND')} on "
                                     f"{names.get(qdisc['index'], qdisc['index'])}")
            except Exception as exc:  # evidence is best effort
                lines.append(f"(unavailable: {exc})")
        return "\n".join(lines)

    def tap_tx_packets(self, role: str) -> int:
        """Packets (sent and dropped) the VM's tap on that host carried toward the VM."""
        host = self.topo.host(role)
        stats = self.link_stats(role, _need(host.tap, host, "tap"))
        return stats.get("tx_packets", 0) + stats.get("tx_dropped", 0)

    def link_stats(self, role: str, ifname: str) -> dict[str, int]:
        """The kernel's 64-bit counters (rx_packets, tx_bytes, ...) of ``ifname`` on that host."""
        host = self.topo.host(role)
        with ipr_in(host.netns) as ipr:
            return stats64(ipr, require_index(ipr, host.netns, ifname))

    def _vm_host(self, role: str) -> HostSpec:
        host = self.topo.host(role)
        if host.tap is None:
            raise ValueError(f"role {role!r} has no tap (only primary and secondary do)")
        return host


def _need(value: str | None, host: HostSpec, field: str) -> str:
    if value is None:
        raise LabError(f"topology: {host.role} has no {field}")
    return value
