"""Unit tests of the lab's data model (no I/O)."""

from __future__ import annotations

import dataclasses
import ipaddress
import uuid

import pytest

from colo_fixtures.lab.topology import (
    IFNAMSIZ,
    MAX_WORKERS,
    ROLES,
    SEED_MAC,
    Ports,
    local_topology,
    worker_index,
)

WORKERS = ["master", "gw0", "gw1", "gw2", "gw7", f"gw{MAX_WORKERS - 1}"]


def _all_ports(ports: Ports) -> set[int]:
    return set(dataclasses.asdict(ports).values())


@pytest.mark.parametrize("worker", WORKERS)
def test_interface_names_fit_the_kernel_limit(worker: str) -> None:
    topo = local_topology(worker, uuid.uuid4().hex)
    for host in topo.hosts.values():
        for name in (*host.interfaces(), host.ext_peer):
            assert name is None or 0 < len(name) <= IFNAMSIZ, name


def test_roles_and_names() -> None:
    topo = local_topology("gw3", "abcdef0123")
    assert topo.run_tag == "abcdef3"
    assert set(topo.hosts) == set(ROLES) - {"sentinel"}
    assert topo.sentinel is None and topo.rep_switch is None
    assert topo.namespaces() == ("colo-abcdef3-pri", "colo-abcdef3-sec", "colo-abcdef3-cli")
    pri, sec, cli = topo.primary, topo.secondary, topo.client
    assert (pri.tap, pri.bridge, pri.rep_if, pri.ext_if, pri.ifb) == (
        "tap0", "br0", "rep0", "ext0", "ifb0"
    )
    assert (sec.tap, sec.bridge, sec.rep_if, sec.ext_if, sec.ifb) == (
        "tap0", "br0", "rep0", "ext0", None
    )
    assert (cli.bridge, cli.tap, cli.rep_if, cli.rep_addr, cli.ext_if, cli.ifb) == (
        "brx", None, None, None, None, None
    )
    assert {pri.ext_peer, sec.ext_peer} == {"xpri", "xsec"}
    assert all(host.role == role for role, host in topo.hosts.items())


@pytest.mark.parametrize("worker", ["master", "gw0"])
def test_worker_zero_uses_the_seed_values(worker: str) -> None:
    topo = local_topology(worker)
    assert worker_index(worker) == 0
    assert topo.primary.rep_addr == "10.22.1.2"
    assert topo.secondary.rep_addr == "10.22.1.3"
    assert topo.rep_prefix == 24
    assert topo.ext_subnet == "192.168.100.0/24"
    assert topo.client_addr == "192.168.100.1"
    assert topo.vm_addr == "192.168.100.10"
    assert topo.vm_mac == SEED_MAC
    assert topo.ports == Ports()
    assert (topo.ports.migration, topo.ports.nbd) == (8888, 8889)


def test_addresses_lie_in_their_subnets() -> None:
    for worker in WORKERS:
        topo = local_topology(worker)
        ext = ipaddress.ip_network(topo.ext_subnet)
        assert ipaddress.ip_address(topo.client_addr) in ext
        assert ipaddress.ip_address(topo.vm_addr) in ext
        assert topo.client_addr != topo.vm_addr
        rep = ipaddress.ip_network(f"{topo.primary.rep_addr}/{topo.rep_prefix}", strict=False)
        assert ipaddress.ip_address(topo.secondary.rep_addr) in rep
        assert not rep.overlaps(ext)


def test_workers_differ_in_subnets_ports_and_mac() -> None:
    topos = [local_topology(worker) for worker in WORKERS if worker != "master"]
    assert len({t.ext_subnet for t in topos}) == len(topos)
    assert len({t.primary.rep_addr for t in topos}) == len(topos)
    assert len({t.vm_mac for t in topos}) == len(topos)
    seen: set[int] = set()
    for topo in topos:
        ports = _all_ports(topo.ports)
        assert len(ports) == len(dataclasses.fields(Ports))
        assert all(1024 < port < 65536 for port in ports)
        assert not ports & seen, "two workers share a port"
        seen |= ports


def test_worker_offsets() -> None:
    topo = local_topology("gw2")
    assert topo.primary.rep_addr == "10.22.3.2"
    assert topo.ext_subnet == "192.168.102.0/24"
    assert topo.ports.migration == 8888 + 20
    assert topo.vm_mac == "52:a4:00:12:78:68"


def test_mac_is_a_valid_unicast_local_address() -> None:
    for worker in WORKERS:
        octets = [int(part, 16) for part in local_topology(worker).vm_mac.split(":")]
        assert len(octets) == 6 and all(0 <= o <= 255 for o in octets)
        assert octets[0] & 1 == 0  # unicast


@pytest.mark.parametrize(
    "bad", ["", "gw", "gw-1", "gw01", "GW1", "worker1", "gw1 ", "master0", f"gw{MAX_WORKERS}"]
)
def test_bad_worker_id_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        local_topology(bad)
    assert "\n" not in str(info.value)
    assert "worker" in str(info.value)


@pytest.mark.parametrize("bad", ["", "xyz", "12345", "not-a-uuid"])
def test_bad_run_id_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="run id"):
        local_topology("gw0", bad)


def test_uuid_with_dashes_is_accepted() -> None:
    run_id = str(uuid.uuid4())
    assert local_topology("gw5", run_id).run_tag == run_id.replace("-", "")[:6] + "5"


def test_different_run_ids_never_share_namespace_names() -> None:
    names: dict[str, str] = {}
    for _ in range(200):
        run_id = uuid.uuid4().hex
        if run_id[:6] in {n[:6] for n in names.values()}:
            continue  # a 1-in-16M prefix clash of the random ids themselves
        for worker in ("gw0", "gw1", "gw10"):
            for ns in local_topology(worker, run_id).namespaces():
                assert ns not in names, (ns, names.get(ns), run_id)
                names[ns] = run_id


def test_default_run_ids_are_fresh() -> None:
    tags = {local_topology().run_tag for _ in range(50)}
    assert len(tags) == 50


def test_tags_of_workers_in_one_run_differ() -> None:
    run_id = uuid.uuid4().hex
    tags = [local_topology(worker, run_id).run_tag for worker in ("gw1", "gw11", "gw2", "gw12")]
    assert len(set(tags)) == len(tags)


def test_topology_is_frozen() -> None:
    topo = local_topology()
    with pytest.raises(dataclasses.FrozenInstanceError):
        topo.vm_addr = "1.2.3.4"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        topo.primary.tap = "tap9"  # type: ignore[misc]


def test_unknown_role() -> None:
    with pytest.raises(ValueError, match="unknown role 'witness': expected one of primary, "
                                         "secondary, sentinel, client"):
        local_topology().host("witness")
    with pytest.raises(ValueError, match="unknown role 'sentinel'"):
        local_topology().host("sentinel")  # only with sentinel=True


def test_three_hosts_for_vm_ft() -> None:
    topo = local_topology("gw1", "abcdef0123", sentinel=True)
    assert set(topo.hosts) == set(ROLES)
    assert topo.namespaces() == ("colo-abcdef1-pri", "colo-abcdef1-sec", "colo-abcdef1-snt",
                                 "colo-abcdef1-cli")
    snt = topo.host("sentinel")
    assert (snt.rep_if, snt.rep_addr, snt.ext_if, snt.ifb, snt.tap) == (
        "rep0", "10.22.2.4", None, None, "tap0")
    assert topo.rep_switch == "brr"
    assert [(h.role, h.rep_addr, h.rep_peer) for h in topo.replication_hosts()] == [
        ("primary", "10.22.2.2", "rpri"), ("secondary", "10.22.2.3", "rsec"),
        ("sentinel", "10.22.2.4", "rsnt")]
