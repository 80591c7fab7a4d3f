"""The SSH host backend against real OpenSSH servers in the lab's namespaces.

pytest runs in the root namespace; the server listens on the secondary's replication
address inside its namespace, so connections are opened from the primary's namespace, on
the other end of the replication link (``sock_factory``, the backend's ProxyCommand-like
hook). Every test uses its own known_hosts file.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd_lab import Sshd, keygen, privsep_dir, public_key, requires_sshd, start_sshd

from colo_fixtures.config.inventory import SshTarget
from colo_fixtures.lab.embedded import EmbeddedLab
from colo_fixtures.lab.hosts.base import CommandError
from colo_fixtures.lab.hosts.ssh import SshError, SshHost
from colo_fixtures.lab.namespaces import connect_in_ns
from colo_fixtures.lab.topology import Topology, local_topology
from colo_fixtures.sut.qemu import QemuProcess
from colo_fixtures.sut.qmp import SyncQmp

pytestmark = requires_sshd
PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, Sshd, Path]]:
    """A lab whose secondary runs sshd; (topology, server, client key with a passphrase)."""
    folder = tmp_path_factory.mktemp("ssh")
    topo = local_topology(os.environ.get("PYTEST_XDIST_WORKER", "master"), uuid.uuid4().hex)
    key = keygen(folder / "id_colo", PASSPHRASE)
    with EmbeddedLab(topo, ledger=folder / "ledger.jsonl"), privsep_dir():
        sshd = start_sshd(topo.secondary, folder / "sshd", [public_key(key)])
        try:
            yield topo, sshd, key
        finally:
            sshd.stop()


def host_for(lab, tmp_path: Path, *, known: bool = True, **kw) -> SshHost:
    topo, sshd, key = lab
    known_hosts = tmp_path / "known_hosts"
    if known and not known_hosts.exists():
        known_hosts.write_text(sshd.host_key_line())
    options = {"known_hosts": known_hosts, "passphrase": PASSPHRASE, "connect_timeout": 5,
               "sock_factory": lambda: connect_in_ns(topo.primary.netns, sshd.address,
                                                     sshd.port, timeout=5)}
    options.update(kw)
    return SshHost("lab-b", "secondary", SshTarget("root", sshd.address, sshd.port),
                   options.pop("key", key), **options)


def test_run_returns_rc_stdout_stderr_and_quotes_every_word(lab, tmp_path):
    host = host_for(lab, tmp_path)
    words = ["a b", "c;d", "$(touch /tmp/pwned)", "e'f", "*"]
    result = host.run(["printf", "%s\\n", *words])
    assert result.rc == 0 and result.stdout.splitlines() == words
    assert not Path("/tmp/pwned").exists()
    failed = host.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (failed.rc, failed.stdout, failed.stderr) == (3, "out\n", "err\n")
    with pytest.raises(CommandError, match=r"^lab-b: ls /nonexistent exited 2: ls: cannot"):
        host.run(["ls", "/nonexistent"])
    # the network namespace is the secondary's: its replication address is local there
    assert lab[1].address in host.run(["ip", "-4", "-o", "addr", "show", "rep0"]).stdout
    host.close()


def test_sessions_run_none_of_this_machines_start_up_files_and_a_hanging_one_is_named(
        lab, tmp_path):
    """The test sshd's sessions see an empty home (this machine's ~/.bashrc is not run); a
    host whose ~/.bashrc hangs gets a timeout that points at the start-up files."""
    host = host_for(lab, tmp_path)
    home = host.run(["sh", "-c", 'ls -A "$HOME"; echo "home=$HOME"']).stdout
    assert home.splitlines() == [f"home={Path.home()}"], home
    bashrc = lab[1].folder / "home" / ".bashrc"
    bashrc.write_text("sleep 30\n")
    try:
        with pytest.raises(CommandError, match=r"true timed out after 2s .*start-up files"):
            host.run(["true"], timeout=2)
    finally:
        bashrc.unlink()
    host.close()


def test_one_connection_is_reused(lab, tmp_path):
    host = host_for(lab, tmp_path)
    first = host.client()
    for _ in range(3):
        host.run(["true"])
    assert host.client() is first
    host.close()


def test_timeout_is_a_clear_error(lab, tmp_path):
    host = host_for(lab, tmp_path)
    with pytest.raises(CommandError, match=r"^lab-b: sleep timed out after 0.5s \(sleep 30\)$"):
        host.run(["sleep", "30"], timeout=0.5)
    host.close()


def test_unknown_host_key_is_refused_and_nothing_written(lab, tmp_path):
    host = host_for(lab, tmp_path, known=False)
    with pytest.raises(SshError) as info:
        host.run(["true"])
    message = str(info.value)
    assert "host key of root@10.22." in message and "is unknown" in message
    assert "ssh-keyscan" in message and "--ssh-accept-new" in message and "\n" not in message
    assert not (tmp_path / "known_hosts").exists()


def test_accept_new_is_explicit_and_remembered(lab, tmp_path):
    host = host_for(lab, tmp_path, known=False, accept_new=True)
    assert host.run(["echo", "hi"]).stdout == "hi\n"
    host.close()
    remembered = (tmp_path / "known_hosts").read_text()
    assert remembered.startswith(lab[1].address + " ssh-ed25519 ")
    strict = host_for(lab, tmp_path)  # no accept_new: the saved key is enough now
    assert strict.run(["true"]).rc == 0
    strict.close()


def test_changed_host_key_is_refused(lab, tmp_path):
    other = keygen(tmp_path / "impostor")
    fake = public_key(other).split()[:2]
    (tmp_path / "known_hosts").write_text(f"{lab[1].address} {fake[0]} {fake[1]}\n")
    with pytest.raises(SshError, match=r"does not match .*known_hosts: refusing to connect"):
        host_for(lab, tmp_path).run(["true"])


def test_unreachable_host(lab, tmp_path):
    topo = lab[0]
    host = host_for(lab, tmp_path, sock_factory=lambda: connect_in_ns(
        topo.primary.netns, str(topo.secondary.rep_addr), 2222, timeout=2))
    with pytest.raises(SshError, match=r"^lab-b: cannot reach root@10\.22\.\d+\.3:22: .*"
                                       r"ECONNREFUSED.*check the address"):
        host.run(["true"])


def test_unauthorized_key_and_wrong_passphrase(lab, tmp_path):
    stranger = keygen(tmp_path / "stranger")
    with pytest.raises(SshError, match=r"refused key .*stranger.*authorized_keys"):
        host_for(lab, tmp_path, key=stranger, passphrase=None).run(["true"])
    with pytest.raises(SshError) as info:
        host_for(lab, tmp_path, passphrase="wrong " + PASSPHRASE).run(["true"])
    assert "cannot load SSH key" in str(info.value)
    assert PASSPHRASE not in str(info.value)


def test_spawn_signal_wait_and_only_our_pids(lab, tmp_path):
    host = host_for(lab, tmp_path)
    log = tmp_path / "sleeper.log"
    process = host.spawn(["sh", "-c", "echo started in $PWD with $COLO_X; exec sleep 300"],
                         log, env={"COLO_X": "a b"}, cwd=Path("/tmp"))
    assert process.poll() is None and host.pids == [process.pid]
    text = ""
    for _ in range(50):
        if text := host.read_bytes(log).decode():
            break
    assert text == "started in /tmp with a b\n"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == -signal.SIGTERM
    assert process.poll() == -signal.SIGTERM and not host.alive(process.pid)
    with pytest.raises(CommandError, match=r"pid 1 was not started by the harness"):
        host.signal(1, "KILL")
    host.close()


def test_sftp_put_and_fetch(lab, tmp_path):
    host = host_for(lab, tmp_path)
    local = tmp_path / "up.bin"
    local.write_bytes(os.urandom(100_000))
    remote = tmp_path / "remote.bin"
    host.put(local, remote)
    assert host.exists(remote) and not host.exists(tmp_path / "nothing")
    host.fetch(remote, tmp_path / "down" / "back.bin")
    assert (tmp_path / "down" / "back.bin").read_bytes() == local.read_bytes()
    with pytest.raises(FileNotFoundError):
        host.read_bytes(tmp_path / "nothing")
    host.close()


def test_fetch_copies_a_rewritten_file_of_the_same_size(lab, tmp_path):
    """A disk image copied twice has the same size both times: the second copy is the new
    content (a clean-clone CI run once judged a stale copy of the survivor's disk)."""
    host = host_for(lab, tmp_path)
    remote, copy = tmp_path / "disk.raw", tmp_path / "here" / "disk.raw"
    try:
        remote.write_bytes(b"old" * 1000)
        host.fetch(remote, copy)
        remote.write_bytes(b"new" * 1000)
        host.fetch(remote, copy)
        assert copy.read_bytes() == b"new" * 1000
        with pytest.raises(FileNotFoundError):
            host.fetch(tmp_path / "absent", copy)
    finally:
        host.close()


def test_follow_copies_only_what_a_log_grew_by(lab, tmp_path):
    """Logs are followed again and again: the copy grows by the new bytes, a log that was
    replaced (shorter) is copied whole, and an empty log still gives an (empty) copy."""
    host = host_for(lab, tmp_path)
    remote, copy = tmp_path / "growing.log", tmp_path / "here" / "growing.log"
    try:
        remote.write_bytes(b"")
        host.follow(remote, copy)
        assert copy.read_bytes() == b""
        remote.write_bytes(b"line 1\n")
        host.follow(remote, copy)
        with remote.open("ab") as log:
            log.write(b"line 2\n")
        host.follow(remote, copy)
        assert copy.read_bytes() == b"line 1\nline 2\n"
        assert host.size(remote) == 14 and host.size(tmp_path / "absent") == 0
        remote.write_bytes(b"new\n")
        host.follow(remote, copy)
        assert copy.read_bytes() == b"new\n"
    finally:
        host.close()


def test_qemu_process_on_an_ssh_host(lab, tmp_path):
    """QemuProcess runs unchanged on an SSH host: spawned remotely, QMP through the SSH
    channel, its logs written on the host and synced into the local workdir."""
    host = host_for(lab, tmp_path)
    remote_dir = tmp_path / "remote-logs"
    qemu = QemuProcess("remote", ["qemu-system-x86_64", "-machine", "none", "-nodefaults",
                                  "-S"], tmp_path / "local", tmp_path / "sock", host=host,
                       host_dir=remote_dir)
    try:
        qemu.start()
        qemu.connect(timeout=20)
        assert qemu.qmp("query-status")["status"] == "prelaunch"
        assert qemu.full_argv()[qemu.full_argv().index("-D") + 1] == str(
            remote_dir / "remote-trace.log")
        qemu.qmp("human-monitor-command", **{"command-line": "info version"})
        qemu.signal(signal.SIGSTOP)
        qemu.signal(signal.SIGCONT)
        assert qemu.alive()
    finally:
        qemu.stop(timeout=10)
        host.close()
    assert not qemu.alive()
    qemu.sync_logs()
    assert (tmp_path / "local" / "remote-qmp.jsonl").exists()
    assert (tmp_path / "local" / "remote-stderr.log").exists()


def test_qmp_to_a_remote_qemu_through_the_ssh_channel(lab, tmp_path):
    host = host_for(lab, tmp_path)
    sock_path = tmp_path / "remote.qmp"
    process = host.spawn(["qemu-system-x86_64", "-machine", "none", "-display", "none",
                      "-nodefaults", "-qmp", f"unix:{sock_path},server=on,wait=off"],
                     tmp_path / "qemu.log")
    try:
        for _ in range(100):
            if host.run(["test", "-S", str(sock_path)], check=False).rc == 0:
                break
        qmp = SyncQmp("remote")
        qmp.connect(host.connect_unix(sock_path), timeout=10)
        try:
            assert qmp.execute("query-status", {}, 10)["status"] in ("prelaunch", "running")
            assert "qemu" in qmp.execute("query-version", {}, 10)
        finally:
            qmp.close()
    finally:
        process.kill()
        assert process.wait(10) == -signal.SIGKILL
        host.close()
