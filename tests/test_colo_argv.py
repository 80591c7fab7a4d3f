"""The argv of both COLO sides is built from data and matches the upstream recipe."""

from __future__ import annotations

from pathlib import Path

from colo_fixtures.colo import VmConfig, primary_argv, secondary_argv
from colo_fixtures.disks import ReplicationDisks
from colo_fixtures.topology import local_topology

VM = VmConfig(Path("/opt/qemu"), ("-L", "/usr/share/qemu"), "tcg", 256, Path("/g/vmlinuz"),
              Path("/g/initrd"), "console=ttyS0 colo.ip=192.168.100.10/24")
DISKS = ReplicationDisks(Path("/s/p/primary.raw"), Path("/s/s/base.raw"),
                         Path("/s/s/active.qcow2"), Path("/s/s/hidden.qcow2"), 64)


def options(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == flag]


def test_primary_argv():
    topo = local_topology("master", "abcdef")
    argv = primary_argv(VM, topo, DISKS)
    assert argv[0] == "/opt/qemu" and argv[-1] == "-S"
    assert options(argv, "-name") == ["primary"]
    assert options(argv, "-accel") == ["tcg"]
    assert "tap,id=hn0,ifname=tap0,script=no,downscript=no,vhost=off,vnet_hdr=off" in argv
    chardevs = options(argv, "-chardev")
    assert "socket,id=compare1,host=10.22.1.2,port=9004,server=on,wait=on" in chardevs
    assert "socket,id=mirror0,host=10.22.1.2,port=9003,server=on,wait=off" in chardevs
    objects = options(argv, "-object")
    assert [o.split(",")[0] for o in objects] == [
        "filter-mirror", "filter-redirector", "filter-redirector", "iothread", "colo-compare"]
    drive = options(argv, "-drive")[0]
    assert "driver=quorum" in drive and "children.0.file.filename=/s/p/primary.raw" in drive
    assert options(argv, "-trace") == ["enable=colo_*"]
    assert all(isinstance(word, str) for word in argv)


def test_secondary_argv():
    topo = local_topology("master", "abcdef")
    argv = secondary_argv(VM, topo, DISKS)
    assert options(argv, "-incoming") == ["tcp:10.22.1.3:8888"]
    assert options(argv, "-chardev") == [
        "socket,id=red0,host=10.22.1.2,port=9003,reconnect=1",
        "socket,id=red1,host=10.22.1.2,port=9004,reconnect=1"]
    replication = options(argv, "-drive")[1]
    assert "mode=secondary" in replication and "top-id=colo-disk0" in replication
    assert "file.file.filename=/s/s/active.qcow2" in replication
    assert "file.backing.file.filename=/s/s/hidden.qcow2" in replication
    assert "-S" not in argv


def test_both_sides_share_machine_and_guest():
    topo = local_topology("master", "abcdef")
    p, s = primary_argv(VM, topo, DISKS), secondary_argv(VM, topo, DISKS)
    for flag in ("-m", "-cpu", "-machine", "-kernel", "-initrd", "-append", "-device"):
        assert options(p, flag) == options(s, flag), flag


def test_worker_ports_and_addresses_follow_topology():
    topo = local_topology("gw2", "abcdef")
    argv = secondary_argv(VM, topo, DISKS)
    assert options(argv, "-incoming") == [f"tcp:10.22.3.3:{8888 + 20}"]
