"""Integration tests of the local lab: real namespaces, links, tc and traffic (root needed)."""

from __future__ import annotations

import fcntl
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from colo_fixtures.core.verdicts import LabError
from colo_fixtures.lab.embedded import EmbeddedLab
from colo_fixtures.lab.janitor import clean as clean_ledger
from colo_fixtures.lab.ledger import read_ledger
from colo_fixtures.lab.namespaces import (
    INGRESS,
    call_in_ns,
    connect_in_ns,
    netns_exists,
    ns_exec_argv,
    ns_socket,
)
from colo_fixtures.lab.topology import HostSpec, Topology, local_topology
from colo_fixtures.lab.vm_network import HostNetwork

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
    reason="needs root and /dev/net/tun to create namespaces and taps",
)

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
BR_STATE_FORWARDING = 3


def _topology() -> Topology:
    return local_topology(os.environ.get("PYTEST_XDIST_WORKER", "master"), uuid.uuid4().hex)


def _links(ns: str) -> dict[str, object]:
    """Link messages of a namespace by name (flags=0: never create a missing namespace)."""
    with IPRoute(netns=ns, flags=0) as ipr:
        return {link.get("ifname"): link for link in ipr.get_links()}


def _root_link_names() -> set[str]:
    with IPRoute() as ipr:
        return {link.get("ifname") for link in ipr.get_links()}


def _assert_gone(topo: Topology) -> None:
    for ns in topo.namespaces():
        assert not netns_exists(ns), f"namespace {ns} left behind"
    assert not any(topo.run_tag in name for name in _root_link_names())


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedLab]:
    topo = _topology()
    ledger = tmp_path_factory.mktemp("lab") / "ledger.jsonl"
    root_before = _root_link_names()
    the_lab = EmbeddedLab(topo, ledger=ledger)
    try:
        the_lab.create()
        yield the_lab
    finally:
        the_lab.destroy()
    _assert_gone(topo)
    assert _root_link_names() <= root_before, "a link was left in the root namespace"
    assert read_ledger(ledger) == []


# ---------------------------------------------------------------- structure


def test_namespaces_and_links_exist(lab: EmbeddedLab) -> None:
    topo = lab.topo
    for ns in topo.namespaces():
        assert netns_exists(ns)
    pri, sec, cli = (_links(host.netns) for host in (topo.primary, topo.secondary, topo.client))
    kinds = {
        "pri": {name: link.get(("linkinfo", "kind")) for name, link in pri.items()},
        "sec": {name: link.get(("linkinfo", "kind")) for name, link in sec.items()},
        "cli": {name: link.get(("linkinfo", "kind")) for name, link in cli.items()},
    }
    assert kinds["pri"] == {"lo": None, "br0": "bridge", "tap0": "tun", "rep0": "veth",
                            "ext0": "veth", "ifb0": "ifb"}
    assert kinds["sec"] == {"lo": None, "br0": "bridge", "tap0": "tun", "rep0": "veth",
                            "ext0": "veth"}
    assert kinds["cli"] == {"lo": None, "brx": "bridge", "xpri": "veth", "xsec": "veth"}
    for links in (pri, sec, cli):
        for name, link in links.items():
            assert link.get("flags") & 1, f"{name} is not up"
    assert pri["tap0"].get("master") == pri["br0"]["index"]
    assert pri["ext0"].get("master") == pri["br0"]["index"]
    assert sec["ext0"].get("master") == sec["br0"]["index"]
    assert sec["tap0"].get("master") is None, "the secondary's tap must not be enslaved yet"
    assert cli["xpri"].get("master") == cli["brx"]["index"]
    assert cli["xsec"].get("master") == cli["brx"]["index"]


def test_tap_is_a_plain_persistent_tap(lab: EmbeddedLab) -> None:
    """QEMU opens it with vnet_hdr=off: no vnet header, no packet info, tap mode."""
    for host in (lab.topo.primary, lab.topo.secondary):
        info = dict(_links(host.netns)["tap0"].get(("linkinfo", "data"))["attrs"])
        assert info["IFLA_TUN_TYPE"] == 2  # tap
        assert info["IFLA_TUN_PERSIST"] == 1
        assert info["IFLA_TUN_VNET_HDR"] == 0
        assert info["IFLA_TUN_PI"] == 0


def test_vm_network_is_the_code_ssh_hosts_run(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """Bridge, tap and ifb redirect are made by ``HostNetwork`` as ``ip``/``tc`` commands in
    each namespace, as on an SSH lab host, and recorded in the ledger as before."""
    topo = _topology()
    the_lab = EmbeddedLab(topo, ledger=tmp_path / "ledger.jsonl")
    with caplog.at_level(logging.DEBUG, logger="colo.host"):
        the_lab.create()
    try:
        assert all(isinstance(the_lab.networks[role], HostNetwork)
                   for role in ("primary", "secondary"))
        commands = [r.getMessage() for r in caplog.records if r.name == "colo.host"]
        pri = topo.primary.netns
        assert f"{pri}: ip link add name br0 type bridge" in commands
        assert f"{pri}: ip tuntap add dev tap0 mode tap" in commands
        assert any(c.startswith(f"{pri}: tc filter add dev tap0 parent ffff:") for c in commands)
        assert ("link", f"{pri}/tap0") in the_lab.created
        assert ("filter", f"{pri}/tap0/ingress/10") in the_lab.created
    finally:
        the_lab.destroy()
    _assert_gone(topo)


def test_addresses(lab: EmbeddedLab) -> None:
    topo = lab.topo
    expected = [
        (topo.primary.netns, "rep0", topo.primary.rep_addr, topo.rep_prefix),
        (topo.secondary.netns, "rep0", topo.secondary.rep_addr, topo.rep_prefix),
        (topo.client.netns, "brx", topo.client_addr, 24),
    ]
    for ns, ifname, address, prefix in expected:
        with IPRoute(netns=ns, flags=0) as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            found = {(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(index=index)}
        assert found == {(address, prefix)}, (ns, ifname, found)


def test_ifb_redirection_is_installed(lab: EmbeddedLab) -> None:
    ns = lab.topo.primary.netns
    with IPRoute(netns=ns, flags=0) as ipr:
        tap = ipr.link_lookup(ifname="tap0")[0]
        ifb = ipr.link_lookup(ifname="ifb0")[0]
        qdiscs = {q.get("kind") for q in ipr.get_qdiscs(tap)}
        filters = ipr.get_filters(index=tap, parent=INGRESS)
        ifb_qdiscs = {q.get("kind") for q in ipr.get_qdiscs(ifb)}
    assert "ingress" in qdiscs
    redirects = []
    for msg in filters:
        options = msg.get_attr("TCA_OPTIONS")
        acts = options.get_attr("TCA_U32_ACT") if options else None
        if acts is None:
            continue
        act = acts.get_attr("TCA_ACT_PRIO_1")
        assert act.get_attr("TCA_ACT_KIND") == "mirred"
        redirects.append(act.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_MIRRED_PARMS"))
        assert msg.get("info") >> 16 == 10  # pref 10
        assert msg.get("info") & 0xFFFF == socket.htons(0x0800)  # proto ip
    assert len(redirects) == 1
    assert redirects[0]["ifindex"] == ifb
    assert redirects[0]["eaction"] == 1  # egress redirect
    assert isinstance(lab.plug_available, bool)
    assert "plug" not in ifb_qdiscs, "the plug probe must not leave its qdisc"


def test_network_state_shows_where_packets_go(lab: EmbeddedLab) -> None:
    """The diagnosis of a failed test: each host's links with master and counters, qdiscs."""
    state = lab.network_state()
    primary = state.split(f"--- secondary ({lab.topo.secondary.netns})")[0]
    assert f"--- primary ({lab.topo.primary.netns})" in primary
    assert "tap0: UP master=br0 rx=" in primary and "ext0: UP master=br0" in primary
    assert "qdisc ingress on tap0" in primary
    secondary = state.split(f"--- secondary ({lab.topo.secondary.netns})")[1]
    assert "tap0: UP master=- " in secondary.split("--- client")[0]


def test_second_create_is_refused_and_harmless(lab: EmbeddedLab) -> None:
    created = list(lab.created)
    with pytest.raises(LabError, match="already created"):
        lab.create()
    assert lab.created == created
    assert all(netns_exists(ns) for ns in lab.topo.namespaces())


def test_ledger_lists_everything_in_creation_order(lab: EmbeddedLab) -> None:
    assert lab.created[0] == ("netns", lab.topo.primary.netns)
    assert lab.ledger is not None and read_ledger(lab.ledger) == lab.created
    names = [name for _, name in lab.created]
    for ns in lab.topo.namespaces():
        assert names.index(ns) < names.index(f"{ns}/{'brx' if ns.endswith('cli') else 'br0'}")


# ---------------------------------------------------------------- behaviour


def test_attach_and_detach_secondary_tap(lab: EmbeddedLab) -> None:
    ns = lab.topo.secondary.netns
    try:
        lab.attach_tap("secondary")
        links = _links(ns)
        assert links["tap0"].get("master") == links["br0"]["index"]
        assert links["tap0"].get("flags") & 1
    finally:
        lab.detach_tap("secondary")
    assert _links(ns)["tap0"].get("master") is None


def test_attach_tap_rejects_client(lab: EmbeddedLab) -> None:
    with pytest.raises(ValueError, match="no tap"):
        lab.attach_tap("client")


def test_tcp_over_the_replication_link(lab: EmbeddedLab) -> None:
    pri, sec = lab.topo.primary, lab.topo.secondary
    port = lab.topo.ports.migration
    with ns_socket(sec.netns) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((sec.rep_addr, port))
        listener.listen(1)
        listener.settimeout(5)
        with connect_in_ns(pri.netns, sec.rep_addr, port, timeout=5) as client:
            server, peer = listener.accept()
            with server:
                assert peer[0] == pri.rep_addr
                client.sendall(b"ping")
                server.settimeout(5)
                assert server.recv(16) == b"ping"
                server.sendall(b"pong")
                client.settimeout(5)
                assert client.recv(16) == b"pong"


def test_replication_link_is_not_reachable_from_the_client(lab: EmbeddedLab) -> None:
    with pytest.raises(LabError) as info:
        connect_in_ns(lab.topo.client.netns, lab.topo.secondary.rep_addr, 1, timeout=0.3)
    assert "\n" not in str(info.value)


def test_connect_timeout_names_the_target(lab: EmbeddedLab) -> None:
    sec = lab.topo.secondary
    with pytest.raises(LabError) as info:
        connect_in_ns(lab.topo.primary.netns, sec.rep_addr, 9, timeout=0.3)
    message = str(info.value)
    assert lab.topo.primary.netns in message and f"{sec.rep_addr}:9" in message
    assert "ECONNREFUSED" in message and "\n" not in message


def test_ns_exec_argv_runs_inside_and_keeps_the_pid(lab: EmbeddedLab) -> None:
    ns = lab.topo.primary.netns
    argv = ns_exec_argv(ns, ["cat", "/proc/net/dev"])
    assert argv[:3] == ["nsenter", f"--net=/run/netns/{ns}", "--"]
    dev = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout
    assert "rep0:" in dev and "ifb0:" in dev and "eth0:" not in dev
    code = "import os; print(os.getpid())"
    proc = subprocess.Popen(ns_exec_argv(ns, [sys.executable, "-c", code]),
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=10)
    assert int(out) == proc.pid


def _open_tap(ns: str, ifname: str) -> int:
    """Open the persistent tap like QEMU does (inside its namespace); return the fd."""

    def opener() -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
        except OSError:
            os.close(fd)
            raise
        return fd

    return call_in_ns(ns, opener)


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _udp_frame(dst_mac: str, src_mac: str, src: str, dst: str, port: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload  # checksum 0: none
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    mac = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    return mac + b"\x08\x00" + ip + udp


def _wait_forwarding(ns: str, ifname: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = _links(ns)[ifname].get(("linkinfo", "slave_data", "IFLA_BRPORT_STATE"))
        if state == BR_STATE_FORWARDING:
            return
        assert time.monotonic() < deadline, f"{ns}/{ifname} bridge port state {state}"
        time.sleep(0.05)


def test_frames_from_the_vm_go_through_ifb_and_reach_the_client(lab: EmbeddedLab) -> None:
    """Frames written to tap0 (what QEMU does for the VM's output) enter tap0's ingress, are
    redirected to ifb0 and re-enter the stack, still reach br0, and arrive in the client."""
    topo = lab.topo
    pri, cli = topo.primary, topo.client
    brx_mac = _links(cli.netns)["brx"].get("address")
    count, port = 5, topo.ports.mirror
    with ns_socket(cli.netns, socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind((topo.client_addr, port))
        listener.settimeout(5)
        fd = _open_tap(pri.netns, "tap0")
        try:
            _wait_forwarding(pri.netns, "tap0")
            before = lab.ifb_stats()
            brx_before = lab.link_stats("client", "brx")
            for i in range(count):
                frame = _udp_frame(brx_mac, topo.vm_mac, topo.vm_addr, topo.client_addr, port,
                                   f"frame {i}".encode())
                assert os.write(fd, frame) == len(frame)
            received = sorted(listener.recvfrom(64)[0] for _ in range(count))
        finally:
            os.close(fd)
    assert received == sorted(f"frame {i}".encode() for i in range(count))
    after = lab.ifb_stats()
    delta = {key: after[key] - before.get(key, 0) for key in after}
    assert delta["tap_rx_packets"] >= count
    assert delta["ifb_rx_packets"] >= count
    assert delta["ifb_tx_packets"] >= count
    if "filter_packets" in after:
        assert delta["filter_packets"] >= count
    assert lab.link_stats("client", "brx")["rx_packets"] - brx_before["rx_packets"] >= count


def _is_arp_for(frame: bytes, address: str) -> bool:
    return frame[12:14] == b"\x08\x06" and frame[38:42] == socket.inet_aton(address)


def _frames_until(fd: int, match: Callable[[bytes], bool], poke: Callable[[], None],
                  timeout: float) -> bytes | None:
    """Read frames the host side sends into the tap (the VM's input), poking every 0.2 s,
    until one matches; None on timeout."""
    os.set_blocking(fd, False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        poke()
        readable, _, _ = select.select([fd], [], [], 0.2)
        while readable:
            try:
                frame = os.read(fd, 65536)
            except BlockingIOError:
                break
            if match(frame):
                return frame
    return None


def test_client_reaches_the_vm_side_through_primary_then_secondary(lab: EmbeddedLab) -> None:
    """The client's ARP for the VM arrives on the primary's tap; on the secondary's tap only
    once attach_tap("secondary") (failover) has put it on the secondary's bridge."""
    topo = lab.topo
    pri, sec = topo.primary, topo.secondary
    with ns_socket(topo.client.netns, socket.AF_INET, socket.SOCK_DGRAM) as client:

        def poke() -> None:
            client.sendto(b"hello vm", (topo.vm_addr, topo.ports.compare))

        def arp(frame: bytes) -> bool:
            return _is_arp_for(frame, topo.vm_addr)

        pri_fd = _open_tap(pri.netns, "tap0")
        sec_fd = _open_tap(sec.netns, "tap0")
        try:
            _wait_forwarding(pri.netns, "tap0")
            assert _frames_until(pri_fd, arp, poke, timeout=5) is not None
            assert _frames_until(sec_fd, arp, poke, timeout=0.6) is None
            lab.attach_tap("secondary")
            _wait_forwarding(sec.netns, "tap0")
            assert _frames_until(sec_fd, arp, poke, timeout=5) is not None
        finally:
            lab.detach_tap("secondary")
            os.close(pri_fd)
            os.close(sec_fd)


# ---------------------------------------------------------------- lifecycle and failures


def test_destroy_removes_everything_and_twice_is_fine(tmp_path: Path) -> None:
    topo = _topology()
    ledger = tmp_path / "ledger.jsonl"
    root_before = _root_link_names()
    lab = EmbeddedLab(topo, ledger=ledger)
    try:
        with lab:
            assert all(netns_exists(ns) for ns in topo.namespaces())
        _assert_gone(topo)
        assert lab.created == []
        lab.destroy()
        lab.destroy()
        assert read_ledger(ledger) == []
        assert _root_link_names() <= root_before
    finally:
        lab.destroy()


def test_destroy_tolerates_items_removed_behind_its_back(tmp_path: Path) -> None:
    topo = _topology()
    lab = EmbeddedLab(topo)
    try:
        lab.create()
        with IPRoute(netns=topo.primary.netns, flags=0) as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname="tap0")[0])  # takes qdisc + filter
        netns.remove(topo.client.netns)  # takes brx, xpri, xsec and the ext veths
        lab.destroy()
        _assert_gone(topo)
    finally:
        lab.destroy()


def test_clean_ledger_removes_what_a_killed_run_left(tmp_path: Path) -> None:
    topo = _topology()
    ledger = tmp_path / "ledger.jsonl"
    lab = EmbeddedLab(topo, ledger=ledger)
    try:
        lab.create()  # and then the run "dies" without destroy()
        assert clean_ledger(ledger) == []
        _assert_gone(topo)
        assert read_ledger(ledger) == []
    finally:
        lab.destroy()


@pytest.mark.parametrize("role", ["primary", "client"])
def test_collision_undoes_everything(tmp_path: Path, role: str) -> None:
    """A namespace left by someone else: create() fails with one clear line, removes all it
    made (for 'client' that is pri, sec and their links), and leaves the foreign one alone."""
    topo = _topology()
    foreign = topo.host(role).netns
    ledger = tmp_path / "ledger.jsonl"
    netns.create(foreign)
    lab = EmbeddedLab(topo, ledger=ledger)
    try:
        with pytest.raises(LabError) as info:
            lab.create()
        message = str(info.value)
        assert message == (
            f"namespace {foreign} already exists: a previous run left it; run tools/janitor"
        )
        assert lab.created == []
        assert read_ledger(ledger) == []
        assert netns_exists(foreign), "create() removed a namespace it did not make"
        for ns in topo.namespaces():
            assert ns == foreign or not netns_exists(ns), f"{ns} left after a failed create"
    finally:
        lab.destroy()
        if netns_exists(foreign):
            netns.remove(foreign)
    _assert_gone(topo)


def test_lab_methods_on_a_destroyed_lab_fail_clearly() -> None:
    topo = _topology()
    lab = EmbeddedLab(topo)
    with pytest.raises(LabError, match="does not exist"):
        lab.ifb_stats()
    with pytest.raises(LabError, match="does not exist"):
        ns_socket(topo.primary.netns)
    assert not netns_exists(topo.primary.netns), "a lookup must never create the namespace"


# ---------------------------------------------------------------- three hosts (vm-ft)


def _tcp_roundtrip(src: HostSpec, dst: HostSpec, port: int) -> str:
    """Connect src -> dst over the replication network; the source address dst saw."""
    with ns_socket(dst.netns) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((dst.rep_addr, port))
        listener.listen(1)
        listener.settimeout(5)
        with connect_in_ns(src.netns, str(dst.rep_addr), port, timeout=5) as client:
            server, peer = listener.accept()
            with server:
                client.sendall(b"paxos")
                server.settimeout(5)
                assert server.recv(16) == b"paxos"
            return peer[0]


def test_three_hosts_share_a_replication_switch(tmp_path: Path) -> None:
    topo = local_topology(os.environ.get("PYTEST_XDIST_WORKER", "master"), uuid.uuid4().hex,
                          sentinel=True)
    ledger = tmp_path / "ledger.jsonl"
    lab = EmbeddedLab(topo, ledger=ledger)
    try:
        with lab:
            snt = topo.sentinel
            assert snt is not None and netns_exists(snt.netns)
            cli_links = _links(topo.client.netns)
            switch = cli_links["brr"]["index"]
            for peer in ("rpri", "rsec", "rsnt"):
                assert cli_links[peer].get_attr("IFLA_MASTER") == switch
            with IPRoute(netns=topo.client.netns, flags=0) as ipr:
                assert ipr.get_addr(index=switch) == (), "the switch must carry no address"
            hosts = topo.replication_hosts()
            assert [h.role for h in hosts] == ["primary", "secondary", "sentinel"]
            for src in hosts:
                for dst in hosts:
                    if src is not dst:
                        assert _tcp_roundtrip(src, dst, topo.ports.migration) == src.rep_addr
            with pytest.raises(LabError):  # the client still cannot reach replication
                connect_in_ns(topo.client.netns, str(snt.rep_addr), 1, timeout=0.3)
        _assert_gone(topo)
        assert read_ledger(ledger) == []
    finally:
        lab.destroy()


def test_replication_rate_shapes_both_ends_of_the_link() -> None:
    """--replication-rate: a token bucket at the given rate on each end of the replication
    link (a slower lab network), gone with the lab."""
    topo = _topology()
    with EmbeddedLab(topo, replication_mbit=300) as shaped:
        for host in (shaped.topo.primary, shaped.topo.secondary):
            with IPRoute(netns=host.netns, flags=0) as ipr:
                index = ipr.link_lookup(ifname=host.rep_if)[0]
                qdiscs = [q for q in ipr.get_qdiscs(index) if q.get("kind") == "tbf"]
                assert len(qdiscs) == 1, f"no tbf on {host.netns}/{host.rep_if}"
                params = qdiscs[0].get_nested("TCA_OPTIONS", "TCA_TBF_PARMS")
                assert params["rate"] == 300_000_000 // 8, params
    _assert_gone(topo)
