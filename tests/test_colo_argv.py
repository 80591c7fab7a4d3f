"""The argv of both COLO sides is built from data and matches the upstream recipe."""

from __future__ import annotations

import subprocess
from pathlib import Path

from colo_fixtures.lab.topology import local_topology
from colo_fixtures.sut.colo_argv import VmConfig, primary_argv, proxy_objects, secondary_argv
from colo_fixtures.sut.disks import SecondaryDisks

VM = VmConfig(Path("/opt/qemu"), ("-L", "/usr/share/qemu"), "tcg", 256, Path("/g/vmlinuz"),
              Path("/g/initrd"), "console=ttyS0 colo.ip=192.168.100.10/24", "52:a4:00:12:78:66")
DISK = Path("/s/p/primary.raw")
SECONDARY = SecondaryDisks(Path("/s/s/base.raw"), Path("/s/s/active.qcow2"),
                           Path("/s/s/hidden.qcow2"), 64)


def options(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == flag]


def both(worker: str = "master") -> tuple[list[str], list[str]]:
    topo = local_topology(worker, "abcdef")
    pri, sec = topo.hosts["primary"], topo.hosts["secondary"]
    return (primary_argv(VM, pri, topo.ports, DISK),
            secondary_argv(VM, sec, pri, topo.ports, SECONDARY))


def test_primary_argv():
    argv, _ = both()
    assert argv[0] == "/opt/qemu" and argv[-1] == "-S"
    assert options(argv, "-name") == ["primary"]
    assert options(argv, "-accel") == ["tcg"]
    assert "tap,id=hn0,ifname=tap0,script=no,downscript=no,vhost=off,vnet_hdr=off" in argv
    chardevs = options(argv, "-chardev")
    assert "socket,id=compare1,host=10.22.1.2,port=9004,server=on,wait=on" in chardevs
    assert "socket,id=mirror0,host=10.22.1.2,port=9003,server=on,wait=off" in chardevs
    assert "socket,id=compare0-0,host=127.0.0.1,port=9001" in chardevs
    objects = options(argv, "-object")
    assert [o.split(",")[0] for o in objects] == [t for t, _ in proxy_objects()]
    assert ("colo-compare,id=comp0,primary_in=compare0-0,secondary_in=compare1,"
            "outdev=compare_out0,iothread=iothread1") in objects
    drive = options(argv, "-drive")[0]
    assert "driver=quorum" in drive and "children.0.file.filename=/s/p/primary.raw" in drive
    assert options(argv, "-trace") == ["enable=colo_*"]
    assert all(isinstance(word, str) for word in argv)


def test_secondary_argv():
    _, argv = both()
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
    p, s = both()
    for flag in ("-m", "-cpu", "-machine", "-kernel", "-initrd", "-append", "-device"):
        assert options(p, flag) == options(s, flag), flag


def test_worker_ports_and_addresses_follow_topology():
    _, argv = both("gw2")
    assert options(argv, "-incoming") == [f"tcp:10.22.3.3:{8888 + 20}"]


def test_roles_swap_hosts_after_failover():
    """A new secondary on the old primary's host connects to the survivor's address."""
    topo = local_topology("master", "abcdef")
    pri, sec = topo.hosts["primary"], topo.hosts["secondary"]
    argv = secondary_argv(VM, pri, sec, topo.ports, SECONDARY)
    assert options(argv, "-incoming") == ["tcp:10.22.1.2:8888"]
    assert options(argv, "-chardev")[0] == "socket,id=red0,host=10.22.1.3,port=9003,reconnect=1"


def test_scratch_goes_to_tmpfs_only_when_it_has_room(tmp_path: Path):
    from colo_fixtures.sut.disks import scratch_root

    assert scratch_root(tmp_path) == tmp_path  # writable, with room
    assert scratch_root(tmp_path / "missing") == Path("/tmp")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)], check=True)
    try:
        assert scratch_root(tiny) == Path("/tmp")  # a full or small tmpfs is not used
    finally:
        subprocess.run(["umount", str(tiny)], check=True)
