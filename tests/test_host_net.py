"""HostNetwork: the seed's VM network made with ip/tc argv through a Host, checked with
pyroute2 — through a namespace host and through SSH to an sshd in a namespace."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from sshd_lab import keygen, privsep_dir, public_key, requires_sshd, start_sshd

from colo_fixtures.config.inventory import SshTarget
from colo_fixtures.lab.hosts import CommandError, Host, LocalNamespaceHost
from colo_fixtures.lab.hosts.ssh import SshHost
from colo_fixtures.lab.namespaces import connect_in_ns
from colo_fixtures.lab.topology import HostSpec, local_topology
from colo_fixtures.lab.vm_network import HostNetwork

pytestmark = requires_sshd


@pytest.fixture
def bare_host() -> Iterator[HostSpec]:
    """A namespace with only its wiring: ext0 (a veth to ext1) and rep0 10.99.0.2/24 (a veth
    to the ssh side's 10.99.0.1 in a second namespace), like a freshly installed lab host."""
    tag = uuid.uuid4().hex[:6]
    host_ns, peer_ns = f"colo-{tag}-bare", f"colo-{tag}-peer"
    pr_netns.create(host_ns)
    pr_netns.create(peer_ns)
    try:
        with IPRoute(netns=host_ns, flags=0) as ipr:
            ipr.link("add", ifname="ext0", kind="veth", peer={"ifname": "ext1"})
            ipr.link("add", ifname="rep0", kind="veth",
                     peer={"ifname": "rep1", "net_ns_fd": peer_ns})
            rep = ipr.link_lookup(ifname="rep0")[0]
            ipr.addr("add", index=rep, address="10.99.0.2", prefixlen=24)
            for name in ("lo", "rep0", "ext1"):
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        with IPRoute(netns=peer_ns, flags=0) as ipr:
            rep = ipr.link_lookup(ifname="rep1")[0]
            ipr.addr("add", index=rep, address="10.99.0.1", prefixlen=24)
            ipr.link("set", index=rep, state="up")
        spec = replace(local_topology().primary, netns=host_ns, rep_addr="10.99.0.2",
                       ext_peer=peer_ns)  # ext_peer carries the peer namespace's name here
        yield spec
    finally:
        pr_netns.remove(host_ns)
        pr_netns.remove(peer_ns)


def links(ns: str) -> dict[str, dict]:
    with IPRoute(netns=ns, flags=0) as ipr:
        found = {}
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            found[link.get_attr("IFLA_IFNAME")] = {
                "index": link["index"], "master": link.get_attr("IFLA_MASTER"),
                "up": bool(link["flags"] & 1),
                "kind": info.get_attr("IFLA_INFO_KIND") if info else None}
        return found


def ingress_redirect(ns: str, dev: str) -> int | None:
    """The ifindex the u32 filter on ``dev``'s ingress redirects to (None if no filter)."""
    with IPRoute(netns=ns, flags=0) as ipr:
        index = ipr.link_lookup(ifname=dev)[0]
        for msg in ipr.get_filters(index=index, parent=0xFFFF0000):
            options = msg.get_attr("TCA_OPTIONS")
            acts = options.get_attr("TCA_U32_ACT") if options else None
            for act in acts.get_attrs("TCA_ACT_PRIO_1") if acts else []:
                parms = act.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_MIRRED_PARMS")
                return parms["ifindex"]
    return None


def backend(kind: str, spec: HostSpec, tmp_path: Path) -> Iterator[Host]:
    if kind == "namespace":
        yield LocalNamespaceHost(spec.netns, "primary", spec.netns)
        return
    key = keygen(tmp_path / "id")
    with privsep_dir():
        sshd = start_sshd(spec, tmp_path / "sshd", [public_key(key)])
        known = tmp_path / "known_hosts"
        known.write_text(sshd.host_key_line())
        host = SshHost("lab-a", "primary", SshTarget("root", sshd.address), key,
                       known_hosts=known, sock_factory=lambda: connect_in_ns(
                           str(spec.ext_peer), sshd.address, 22, timeout=5))
        try:
            yield host
        finally:
            host.close()
            sshd.stop()


@pytest.mark.parametrize("kind", ["namespace", "ssh"])
def test_provision_matches_the_seed_and_teardown_removes_it(bare_host, kind, tmp_path):
    for host in backend(kind, bare_host, tmp_path):
        net = HostNetwork(host, bare_host)
        net.provision(enslave_tap=True)
        made = links(bare_host.netns)
        bridge = made["br0"]["index"]
        assert made["br0"]["kind"] == "bridge" and made["br0"]["up"]
        assert made["tap0"]["kind"] == "tun" and made["tap0"]["master"] == bridge
        assert made["ext0"]["master"] == bridge and made["ext0"]["up"]
        assert made["ifb0"]["kind"] == "ifb" and made["ifb0"]["up"]
        assert ingress_redirect(bare_host.netns, "tap0") == made["ifb0"]["index"]
        net.detach_tap()
        assert links(bare_host.netns)["tap0"]["master"] is None
        net.attach_tap()
        assert links(bare_host.netns)["tap0"]["master"] == bridge
        assert net.teardown() == []
        left = links(bare_host.netns)
        assert set(left) == {"lo", "ext0", "ext1", "rep0"}
        assert left["ext0"]["master"] is None


def test_a_failed_step_is_named_and_undone(bare_host, tmp_path):
    spec = replace(bare_host, ext_if="nosuch0")
    net = HostNetwork(LocalNamespaceHost(spec.netns, "primary", spec.netns), spec)
    with pytest.raises(CommandError) as info:
        net.provision(enslave_tap=False)
    message = str(info.value)
    assert message.startswith(f"{spec.netns}: cannot put nosuch0 into br0: ")
    assert "\n" not in message
    assert set(links(spec.netns)) == {"lo", "ext0", "ext1", "rep0"}
    assert net.undo == []


def test_secondary_tap_stays_outside_the_bridge(bare_host, tmp_path):
    spec = replace(local_topology().secondary, netns=bare_host.netns)
    net = HostNetwork(LocalNamespaceHost(spec.netns, "secondary", spec.netns), spec)
    net.provision(enslave_tap=False)
    try:
        made = links(spec.netns)
        assert made["tap0"]["master"] is None and made["tap0"]["up"]
        assert "ifb0" not in made
    finally:
        assert net.teardown() == []
    assert os.path.exists(f"/run/netns/{spec.netns}")
