"""The QEMU process layer against a real QEMU: QMP, transcript, events, waits, stop and kill."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from colo_fixtures.sut.accel import choose_accel, probe_kvm
from colo_fixtures.sut.build import QemuBuild
from colo_fixtures.sut.qemu import QemuError, QemuProcess, stop_all

QEMU = Path("/usr/bin/qemu-system-x86_64")
pytestmark = pytest.mark.skipif(not QEMU.exists(), reason="Debian's qemu-system-x86 missing")


def probe(tmp_path: Path, name: str = "probe") -> QemuProcess:
    return QemuProcess(name, [str(QEMU), "-accel", "tcg", "-nodefaults", "-m", "64", "-S"],
                       tmp_path / f"{name}-out", tmp_path / f"{name}-sock")


@pytest.fixture
def vm(tmp_path: Path):
    proc = probe(tmp_path)
    yield proc
    proc.kill()


@pytest.fixture
def two(tmp_path: Path):
    procs = [probe(tmp_path, "one"), probe(tmp_path, "two")]
    for proc in procs:
        proc.start()
        proc.connect(timeout=30)
    yield procs
    for proc in procs:
        proc.kill()


def test_qmp_transcript_and_events(vm: QemuProcess):
    vm.start()
    vm.connect(timeout=30)
    assert vm.qmp("query-status")["status"] == "prelaunch"
    vm.qmp("cont")
    event = vm.wait_event("RESUME", timeout=10)
    assert event.timestamp > 1_600_000_000
    with pytest.raises(QemuError, match="no-such-command failed"):
        vm.qmp("no-such-command")
    records = [json.loads(line) for line in vm.transcript.read_text().splitlines()]
    assert [r.get("execute") or r.get("event") for r in records][:3] == [
        "query-status", "cont", "RESUME"]
    assert "error" in records[-1]
    assert (vm.workdir / "probe-argv.txt").read_text().startswith(str(QEMU))
    assert vm.stop() == 0
    assert not vm.qmp_path.exists()
    assert not vm.alive()


def test_wait_timeout_is_diagnosed(vm: QemuProcess):
    vm.start()
    vm.connect(timeout=30)
    with pytest.raises(QemuError) as info:
        vm.wait_event("SHUTDOWN", timeout=0.5)
    message = str(info.value)
    assert message.startswith("probe: a SHUTDOWN event: not within 0.5s\n"), message
    assert "console tail" in message and "stderr tail" in message


def test_stopped_qemu_makes_qmp_time_out_with_diagnosis(vm: QemuProcess):
    vm.start()
    vm.connect(timeout=30)
    vm.signal(signal.SIGSTOP)
    try:
        with pytest.raises(QemuError, match="QMP unresponsive: query-status got no answer"):
            vm.qmp("query-status", timeout=1)
    finally:
        vm.signal(signal.SIGCONT)


def test_an_interrupt_inside_qemu_qmp_does_not_stop_the_teardown(two: list[QemuProcess]):
    """A SIGTERM (or Ctrl-C) can land inside qemu.qmp's writer task, as a CI run saw: the task
    dies and qemu.qmp raises the same KeyboardInterrupt again on disconnect. Stopping must
    still end every QEMU and remove its socket, without raising that interrupt twice."""
    first = two[0]
    client = first._qmp.client  # type: ignore[union-attr]
    send = client._do_send

    def interrupted(message: object) -> None:
        client._do_send = send
        raise KeyboardInterrupt("stopped by signal SIGTERM")

    client._do_send = interrupted
    with pytest.raises(KeyboardInterrupt):
        first.qmp("query-status")
    stop_all(two, timeout=2)
    assert not any(proc.alive() for proc in two)
    assert not any(proc.qmp_path.exists() for proc in two)


def test_an_interrupt_during_stop_still_stops_the_others(two: list[QemuProcess]):
    """Ctrl-C while the first QEMU is being asked to quit: it is killed anyway, the second
    is stopped too, and only then does the interrupt reach pytest."""
    qmp = two[0]._qmp

    def interrupted(command: str, arguments: object, timeout: float) -> None:
        raise KeyboardInterrupt("Ctrl-C")

    qmp.execute = interrupted  # type: ignore[union-attr, method-assign]
    with pytest.raises(KeyboardInterrupt, match="Ctrl-C"):
        stop_all(two, timeout=2)
    assert not any(proc.alive() for proc in two)
    assert not any(proc.qmp_path.exists() for proc in two)


def test_dead_qemu_is_reported_not_waited_for(tmp_path: Path):
    proc = QemuProcess("broken", [str(QEMU), "-no-such-option"], tmp_path / "o", tmp_path / "s")
    proc.start()
    with pytest.raises(QemuError, match="broken exited before QMP answered") as info:
        proc.connect(timeout=30)
    assert "-no-such-option" in str(info.value)
    proc.kill()


def test_auto_accel_falls_back_to_tcg_with_a_reason(tmp_path: Path):
    from colo_fixtures.sut.guest.image import build_guest

    kernel = build_guest().kernel
    qemu = QemuBuild(QEMU, "debian")
    ok, reason = probe_kvm(qemu, kernel, timeout=8)
    accel, why = choose_accel("auto", qemu, kernel, tmp_path)
    assert accel == ("kvm" if ok else "tcg")
    assert why == reason and reason
    again, cached = choose_accel("auto", qemu, kernel, tmp_path)
    assert again == accel and "cached" in cached
    assert choose_accel("tcg", qemu, kernel, tmp_path) == ("tcg", "requested with --accel tcg")


def test_auto_accel_falls_back_when_the_kvm_guest_cannot_boot(tmp_path: Path):
    """The fallback branch, forced with a real QEMU: a kernel that is not there."""
    qemu = QemuBuild(QEMU, "debian")
    bogus = tmp_path / "no-such-kernel"
    accel, why = choose_accel("auto", qemu, bogus, tmp_path)
    assert accel == "tcg"
    assert why.startswith(("QEMU with -accel kvm exited:", "/dev/kvm is missing")), why
    assert "cached" in choose_accel("auto", qemu, bogus, tmp_path)[1]


def test_a_vm_is_a_context_manager(tmp_path: Path) -> None:
    with probe(tmp_path) as vm:
        assert vm.qmp("query-status")["status"] == "prelaunch"
        pid = vm.process.pid  # type: ignore[union-attr]
    assert not vm.alive() and vm.killed is None  # it quit when asked
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_qmp_from_two_threads_is_serialised(vm: QemuProcess) -> None:
    """A client thread's health check and the test's own QMP command at the same moment:
    each waits its turn (before, one of them failed with "This event loop is already
    running", seen in a nightly run)."""
    import threading

    vm.start()
    vm.connect(timeout=30)
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(100):
                vm.qmp("query-status")
        except BaseException as exc:  # the test reports whatever it was
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
