"""Fast tests of the guest module: disk records, protocol parsing, cmdline, cpio, agent on host."""

from __future__ import annotations

import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest

from colo_fixtures.sut.guest.agent import (
    AgentClient,
    AgentError,
    parse_clock,
    parse_fields,
    parse_get,
    parse_pong,
    parse_put,
)
from colo_fixtures.sut.guest.image import (
    SRC_DIR,
    CpioEntry,
    is_static_elf,
    kernel_cmdline,
    newc_archive,
)
from colo_fixtures.sut.guest.records import KvRecord, disk_store, encode_record, parse_disk_records


def sector(seq: int, key: bytes, value: bytes, *, magic: bytes = b"COLOKV01",
           klen: int | None = None, crc_delta: int = 0) -> bytes:
    """A record sector made by hand from the documented layout (independent of guest.py)."""
    body = (magic + struct.pack("<QII", seq, len(key) if klen is None else klen, len(value))
            + key.ljust(64, b"\0") + value.ljust(256, b"\0"))
    assert len(body) == 344
    crc = (zlib.crc32(body) + crc_delta) & 0xFFFFFFFF
    return (body + struct.pack("<I", crc)).ljust(512, b"\0")


def image(*sectors: bytes, total: int = 16) -> bytes:
    data = bytes(512) + b"".join(sectors)
    return data.ljust(total * 512, b"\0")


# --- disk records -----------------------------------------------------------


def test_parse_valid_records_until_zero_sector():
    data = image(sector(1, b"a", b"x"), sector(2, b"b.c:d-e_f", b"!~"), sector(3, b"a", b"y"))
    assert parse_disk_records(data) == [
        KvRecord(1, "a", "x"), KvRecord(2, "b.c:d-e_f", "!~"), KvRecord(3, "a", "y")]
    assert disk_store(parse_disk_records(data))["a"] == KvRecord(3, "a", "y")


def test_parse_empty_and_short_images():
    assert parse_disk_records(b"") == []
    assert parse_disk_records(bytes(4096)) == []
    assert parse_disk_records(image(sector(1, b"k", b"v"))[:512 + 347]) == []


@pytest.mark.parametrize("bad", [
    sector(2, b"k", b"v", crc_delta=1),
    sector(3, b"k", b"v"),
    sector(2, b"k", b"v", magic=b"COLOKV02"),
    sector(2, b"k", b"v", klen=0),
    sector(2, b"k", b"v", klen=64),
])
def test_parse_stops_at_first_invalid_sector(bad: bytes):
    data = image(sector(1, b"k", b"v"), bad, sector(3, b"k", b"w"))
    assert parse_disk_records(data) == [KvRecord(1, "k", "v")]


def test_encode_record_matches_hand_made_layout():
    assert encode_record(7, "key", "value") == sector(7, b"key", b"value")
    assert encode_record(1, "k" * 63, "v" * 255) == sector(1, b"k" * 63, b"v" * 255)


# --- protocol parsing -------------------------------------------------------


def test_parse_replies():
    assert parse_pong("PONG 1234") == 1234
    assert parse_clock("CLOCK 1234567890123") == 1234567890123
    assert parse_put("OK 17") == 17
    assert parse_get("VAL 3 hello") == (3, "hello")
    assert parse_get("NONE") is None
    assert parse_fields("MEM rounds=5 errors=0 bytes=8388608", "MEM") == {
        "rounds": 5, "errors": 0, "bytes": 8388608}
    assert parse_fields("STAT keys=1 seq=2 uptime_ms=3 memrounds=4 memerrors=0", "STAT") == {
        "keys": 1, "seq": 2, "uptime_ms": 3, "memrounds": 4, "memerrors": 0}


@pytest.mark.parametrize(("parse", "reply"), [
    (parse_pong, "PONG"), (parse_pong, "PONG x"), (parse_pong, "ERR bad-request"),
    (parse_clock, "CLOCK"), (parse_clock, "PONG 5"),
    (parse_put, "ERR full"), (parse_put, "OK"), (parse_put, "OK 1 2"),
    (parse_get, "VAL 1"), (parse_get, "VAL x y"), (parse_get, "ERR io-sync:EIO"),
    (lambda r: parse_fields(r, "MEM"), "STAT keys=1"),
    (lambda r: parse_fields(r, "MEM"), "MEM rounds=x"),
    (lambda r: parse_fields(r, "MEM"), "MEM"),
])
def test_bad_replies_raise_agent_error_with_exact_reply(parse, reply: str):
    with pytest.raises(AgentError) as info:
        parse(reply)
    assert info.value.reply == reply


def serve_lines(sock: socket.socket, replies: list[bytes], received: list[bytes]) -> None:
    """The peer side: read a request line, send the next canned reply chunk(s), then close."""
    buf = b""
    for reply in replies:
        while b"\n" not in buf:
            chunk = sock.recv(1024)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        received.append(line)
        for i in range(len(reply)):  # one byte at a time: the client must reassemble lines
            sock.sendall(reply[i:i + 1])
    sock.close()


def test_client_over_socketpair():
    ours, theirs = socket.socketpair()
    received: list[bytes] = []
    replies = [b"PONG 5\n", b"OK 1\n", b"VAL 1 v\n", b"NONE\n", b"ERR full\n",
               b"MEM rounds=2 errors=0 bytes=8\n", b"STAT keys=1 seq=1 uptime_ms=9\n"]
    peer = threading.Thread(target=serve_lines, args=(theirs, replies, received))
    peer.start()
    with AgentClient(ours, timeout=5) as client:
        assert client.ping() == 5
        assert client.put("k", "v") == 1
        assert client.get("k") == (1, "v")
        assert client.get("other") is None
        with pytest.raises(AgentError) as info:
            client.put("k", "w")
        assert info.value.reply == "ERR full"
        assert info.value.request == "PUT k w"
        assert client.mem() == {"rounds": 2, "errors": 0, "bytes": 8}
        assert client.stat()["uptime_ms"] == 9
        with pytest.raises(ValueError):
            client.request("PUT a b\nPUT c d")
        with pytest.raises(ConnectionError):
            client.ping()
    peer.join(5)
    assert received == [b"PING", b"PUT k v", b"GET k", b"GET other", b"PUT k w", b"MEM",
                        b"STAT"]


def test_client_timeout():
    ours, theirs = socket.socketpair()
    with AgentClient(ours, timeout=0.2) as client, pytest.raises(TimeoutError):
        client.ping()
    theirs.close()


# --- kernel command line ----------------------------------------------------


def test_kernel_cmdline():
    line = kernel_cmdline("10.0.2.15/24")
    assert line.split() == ["console=ttyS0", "panic=-1", "loglevel=4", "colo.ip=10.0.2.15/24",
                            "colo.port=7000", "colo.membuf=8"]
    line = kernel_cmdline("192.168.7.2/16", port=7100, gateway="192.168.0.1", membuf_mib=2)
    assert {"colo.ip=192.168.7.2/16", "colo.port=7100", "colo.gw=192.168.0.1",
            "colo.membuf=2"} <= set(line.split())
    assert "colo.nicreset=100" in kernel_cmdline("10.0.2.15/24", nic_resets=100).split()
    with pytest.raises(ValueError, match="nic_resets"):
        kernel_cmdline("10.0.2.15/24", nic_resets=-1)


@pytest.mark.parametrize("kwargs", [
    {"ip_cidr": "10.0.2.15"}, {"ip_cidr": "10.0.2.300/24"}, {"ip_cidr": "10.0.2.15/33"},
    {"ip_cidr": "10.0.2.15/24", "port": 0}, {"ip_cidr": "10.0.2.15/24", "gateway": "x"},
    {"ip_cidr": "10.0.2.15/24", "membuf_mib": 0},
])
def test_kernel_cmdline_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        kernel_cmdline(**kwargs)


# --- initramfs pieces -------------------------------------------------------


def read_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """(name, mode, data, rdev) of each member, checking magic and 4-byte alignment."""
    members, off = [], 0
    while True:
        assert off % 4 == 0 and data[off:off + 6] == b"070701"
        fields = [int(data[off + 6 + 8 * i:off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name = data[off + 110:off + 110 + namesize - 1].decode()
        off += 110 + namesize
        off += -off % 4
        if name == "TRAILER!!!":
            return members
        members.append((name, mode, data[off:off + size], (rmaj, rmin)))
        off += size + (-size % 4)


def test_newc_archive_round_trip():
    entries = [
        CpioEntry("dev", stat.S_IFDIR | 0o755),
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n"),
        CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"/bin/busybox"),
        CpioEntry("odd", stat.S_IFREG | 0o644, b"12345"),
    ]
    assert read_newc(newc_archive(entries)) == [(e.name, e.mode, e.data, e.rdev) for e in entries]


def test_is_static_elf(tmp_path: Path):
    assert not is_static_elf(Path(sys.executable).resolve())
    (tmp_path / "text").write_text("not an ELF")
    assert not is_static_elf(tmp_path / "text")
    busybox = Path("/bin/busybox")
    if busybox.is_file() and shutil.which("file"):
        described = subprocess.run(["file", "-L", str(busybox)], capture_output=True, text=True)
        assert is_static_elf(busybox) == ("statically linked" in described.stdout)


# --- the real agent, run on the host against a file -------------------------


@pytest.fixture(scope="module")
def agent_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("gcc"):
        pytest.skip("gcc not installed (apt-get install gcc libc6-dev)")
    out = tmp_path_factory.mktemp("agent") / "colo-agent"
    proc = subprocess.run(["gcc", "-O2", "-pthread", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                           str(SRC_DIR / "agent.c")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


class HostAgent:
    """colo-agent as a host process on an ephemeral port; always killed on exit."""

    def __init__(self, binary: Path, disk: Path):
        self.proc = subprocess.Popen(
            [str(binary), "--port", "0", "--disk", str(disk), "--membuf-mib", "1"],
            stdout=subprocess.PIPE, text=True)
        self.ready = self.proc.stdout.readline().strip()
        assert self.ready.startswith("colo-agent: ready port="), self.ready
        self.port = int(self.ready.split()[2].removeprefix("port="))

    def client(self) -> AgentClient:
        return AgentClient.connect("127.0.0.1", self.port, timeout=5)

    def __enter__(self) -> HostAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()


def test_agent_on_host_file(agent_binary: Path, tmp_path: Path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(512 * 12))  # room for records 1..11
    with HostAgent(agent_binary, disk) as agent, agent.client() as c:
        assert agent.ready.endswith("replayed=0")
        assert c.ping() > 0
        assert c.put("a", "1") == 1
        assert c.get("a") == (1, "1")
        assert c.get("b") is None
        for bad in ["PUT a", "PUT a b c", "PUT bad/key v", "GET", "get a", "PUT  a b", "x" * 2000]:
            assert c.request(bad) == "ERR bad-request", bad
        assert c.ping() > 0  # still in sync after the over-long line

        seqs: list[int] = []

        def writer(n: int) -> None:
            with agent.client() as own:
                seqs.extend(own.put(f"t{n}.{i}", f"v{i}") for i in range(2))

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(seqs) == list(range(2, 10))
        assert c.put("a", "2") == 10
        assert c.put("z", "3") == 11
        with pytest.raises(AgentError) as info:
            c.put("y", "4")
        assert info.value.reply == "ERR full"
        assert c.stat()["keys"] == 10 and c.stat()["seq"] == 11
        assert c.mem()["bytes"] == 1 << 20 and c.mem()["errors"] == 0

    records = parse_disk_records(disk.read_bytes())
    assert [r.seq for r in records] == list(range(1, 12))
    assert disk_store(records)["a"] == KvRecord(10, "a", "2")

    with HostAgent(agent_binary, disk) as agent, agent.client() as c:
        assert agent.ready.endswith("replayed=11")
        assert c.get("a") == (10, "2")
        assert c.stat()["keys"] == 10
