"""Trace events: controlled through QMP, parsed from the -D log, and the COLO protocol checked.

Each checkpoint's message sequence is walked on both sides (checkpoint-request →
checkpoint-reply → vmstate-send → vmstate-size → vmstate-received → vmstate-loaded, with
the VM stopping and resuming around it), and after a failover the state machine
require → active → completed; the first event out of order fails the test.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
from pathlib import Path

import allure
import pytest

from colo_fixtures.sut.colo_argv import VmConfig, machine_argv
from colo_fixtures.sut.disks import scratch_root
from colo_fixtures.sut.guest.agent import AGENT_PORT
from colo_fixtures.sut.guest.image import kernel_cmdline
from colo_fixtures.sut.preflight import rdma_address
from colo_fixtures.sut.qemu import QemuError, QemuProcess
from colo_fixtures.sut.trace import check_protocol, check_rdma_migration

pytestmark = [pytest.mark.colo, pytest.mark.trace, allure.epic("COLO"), allure.feature("trace")]

DELAY_MS = 1000


def event_states(process, pattern: str) -> dict[str, bool]:
    return {e["name"]: e["state"] == "enabled"
            for e in process.qmp("trace-event-get-state", name=pattern)}


@allure.story("trace events are switched through QMP and read back")
def test_trace_event_state_via_qmp(start_colo):
    colo = start_colo(DELAY_MS)
    primary = colo.pair.primary
    for pattern in ("qemu_rdma*", "colo_compare*", "colo*"):
        primary.qmp("trace-event-set-state", name=pattern, enable=True)
        states = event_states(primary, pattern)
        assert states and all(states.values()), f"{pattern}: not all enabled: {states}"
    primary.qmp("trace-event-set-state", name="qemu_rdma*", enable=False)
    assert not any(event_states(primary, "qemu_rdma*").values())
    assert all(event_states(primary, "colo_compare*").values()), "disabling one touched another"
    with pytest.raises(QemuError, match='unknown event "no_such_event"'):
        primary.qmp("trace-event-set-state", name="no_such_event", enable=True)


@allure.story("every checkpoint follows the COLO protocol on both sides")
def test_checkpoint_protocol_on_both_sides(start_colo):
    colo = start_colo(DELAY_MS)
    colo.wait_agent_ready()
    agent = colo.agent()
    for i in range(10):  # traffic, so colo-compare adds checkpoints of its own
        agent.put(f"k{i}", "v")
        agent.ping()
    pair = colo.pair
    pair.wait_checkpoints(len(pair.checkpoints()) + 5, timeout=60)
    reports = {side.name: check_protocol(side.trace_records(), side.name)
               for side in pair.sides}
    colo.write_metrics("protocol", {name: vars(r) for name, r in reports.items()})
    primary, secondary = reports["primary"], reports["secondary"]
    assert primary.checkpoints >= 5
    # The secondary may be one step behind or ahead inside the checkpoint in flight.
    assert abs(primary.checkpoints - secondary.checkpoints) <= 1, reports


@allure.story("failover follows require → active → completed")
def test_failover_state_machine(start_colo):
    colo = start_colo(DELAY_MS)
    colo.wait_agent_ready()
    pair = colo.pair
    pair.wait_checkpoints(len(pair.checkpoints()) + 2, timeout=60)
    survivor = pair.secondary
    at = colo.faults.kill(pair.primary)
    pair.failover_to_secondary(since=at)
    report = check_protocol(survivor.trace_records(), "secondary")
    colo.write_metrics("failover-protocol", vars(report))
    assert report.failover == ("require", "active", "completed")
    assert report.checkpoints >= 2


def _wait(condition, what: str, timeout: float, *processes: QemuProcess) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or not all(p.alive() for p in processes):
            raise QemuError(f"{what} not within {timeout:g}s\n"
                            + "\n".join(p.diagnosis() for p in processes))
        time.sleep(0.2)


@pytest.mark.rdma
@allure.story("an rdma: migration walks the qemu_rdma_* sequence")
def test_rdma_migration_trace(qemu_build, guest_image, accel, artifacts, colo_settings):
    """The seed's debug step for real: migrate the guest over ``rdma:`` on this host's RDMA
    device with ``qemu_rdma*`` traced on both sides; both sides' events must follow the
    RDMA protocol and the guest must run on the destination."""
    s = colo_settings
    try:
        device, address = rdma_address(s.rdma_device)
    except ValueError as exc:
        pytest.skip(str(exc))
    vm = VmConfig(qemu_build.binary, tuple(qemu_build.firmware_args()), accel, s.guest_memory,
                  guest_image.kernel, guest_image.initrd,
                  kernel_cmdline("10.0.2.15/24", AGENT_PORT), "52:54:00:12:34:56",
                  trace_patterns=("qemu_rdma*",))
    with socket.socket() as probe:  # a free TCP port number for the RDMA CM listener
        probe.bind((address, 0))
        port = probe.getsockname()[1]
    uri = f"rdma:{address}:{port}"
    sockdir = Path(tempfile.mkdtemp(prefix="colo-rdma-", dir=scratch_root()))
    destination = QemuProcess("rdma-destination",
                              [*machine_argv(vm, "rdma-destination"), "-incoming", uri],
                              artifacts, sockdir)
    source = QemuProcess("rdma-source", machine_argv(vm, "rdma-source"), artifacts, sockdir)
    try:
        for process in (destination, source):
            process.start()
            process.connect(s.wait_timeout)
        _wait(lambda: source.console_has("colo-agent: ready"), "guest boot", s.wait_timeout * 2,
              source)
        started = time.monotonic()
        source.qmp("migrate", uri=uri)
        _wait(lambda: source.qmp("query-migrate").get("status") in ("completed", "failed"),
              "rdma migration", s.wait_timeout, source, destination)
        status = source.qmp("query-migrate")
        assert status["status"] == "completed", f"rdma migration: {status}"
        seconds = time.monotonic() - started
        assert destination.qmp("query-status")["status"] == "running"
    finally:
        for process in (source, destination):
            process.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
    sides = {side: check_rdma_migration(process.trace_records(), side)
             for side, process in (("source", source), ("destination", destination))}
    figures = {"device": device, "uri": uri, "seconds": round(seconds, 3),
               **{side: vars(report) for side, report in sides.items()}}
    (artifacts / "rdma-migration.json").write_text(json.dumps(figures, indent=2) + "\n")
    allure.attach(json.dumps(figures, indent=2), "rdma migration", allure.attachment_type.JSON)
    assert sides["source"].rounds >= 1 and sides["destination"].rounds >= 1
