"""The inventory profile for real: the checkpoint and failover suites, unchanged, against
lab "machines" reached only over SSH (see ``lab_machines``)."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from child_pytest import stop
from lab_machines import machine_lab
from pyroute2 import IPRoute
from sshd_lab import requires_sshd

from colo_fixtures.config.inventory import load_inventory
from colo_fixtures.config.settings import Settings
from colo_fixtures.lab.hosts.ssh import SshHost
from colo_fixtures.lab.inventory_lab import (
    InventoryHosts,
    InventoryLab,
    InventoryLabError,
    ssh_hosts,
)
from colo_fixtures.lab.ledger import is_gone, read_ledger
from colo_fixtures.lab.namespaces import connect_in_ns, ns_exec_argv
from colo_fixtures.lab.topology import inventory_topology

ROOT = Path(__file__).resolve().parent.parent
SUITES = os.environ.get("COLO_TEST_INVENTORY_SUITES", "suites/test_checkpoint.py "
                        "suites/test_failover.py").split()

pytestmark = requires_sshd


def run_suites(ctl: str, inventory: Path, folder: Path, settings: Settings,
               *extra: str) -> tuple[subprocess.CompletedProcess[str], ET.Element]:
    junit = folder / "junit.xml"
    argv = [sys.executable, "-m", "pytest", *SUITES, "-m", "colo",
            "-p", "no:cacheprovider",
            "--colo-profile", "inventory", "--inventory", str(inventory),
            "--report-dir", str(folder / "reports"), "--cache-dir", str(settings.cache_dir),
            "--qemu-patches", str(settings.qemu_patches), "--accel", "tcg",
            f"--junitxml={junit}", *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLO_", "PYTEST_"))}
    log = folder / "pytest.log"
    with log.open("w") as out:
        run = subprocess.Popen(ns_exec_argv(ctl, argv), cwd=ROOT, env=env, text=True,
                               stdout=out, stderr=subprocess.STDOUT)
        try:
            run.wait(timeout=2400)
        finally:  # interrupted or timed out: SIGTERM lets the inner run's teardowns clean up
            stop(run)
    done = subprocess.CompletedProcess(run.args, run.returncode, log.read_text(), "")
    assert junit.exists(), f"pytest wrote no junit report: {done.stdout[-3000:]}"
    return done, ET.parse(junit).getroot()


@pytest.mark.timeout(2700)
def test_checkpoint_and_failover_suites_over_ssh(tmp_path: Path, colo_settings: Settings):
    with machine_lab(tmp_path) as lab:
        done, junit = run_suites(lab.controller, lab.inventory, tmp_path, colo_settings)
        suite = junit.find("testsuite") if junit.tag == "testsuites" else junit
        assert suite is not None
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        assert done.returncode == 0, (f"suites failed over SSH ({counts}):\n"
                                      f"{done.stdout[-4000:]}")
        assert counts["tests"] >= 2 and counts["failures"] == counts["errors"] == 0, counts
        skipped = [(case.get("name"), skip.get("message", "")[:200])
                   for case in suite.iter("testcase") for skip in case.iter("skipped")
                   if skip.get("type") != "pytest.xfail"]  # known issues are data, not skips
        assert not skipped, f"suite tests skipped on the inventory profile: {skipped}"
        # the harness left nothing on the machines
        leftovers = list(lab.scratch.glob("colo-*"))
        assert not leftovers, f"scratch left on the hosts: {leftovers}"


@pytest.fixture
def machines(tmp_path: Path):
    with machine_lab(tmp_path) as lab:
        yield lab


def lab_hosts_of(machines, inventory_file: Path | None = None) -> InventoryHosts:
    """The machines' hosts as the harness makes them, reached from the controller namespace
    (this test runs outside it)."""
    inventory = load_inventory(inventory_file or machines.inventory)
    hosts = ssh_hosts(inventory, False, None)
    for host in hosts.values():
        assert isinstance(host, SshHost)
        target = host.target
        host.sock_factory = lambda t=target: connect_in_ns(machines.controller, t.host, t.port, 2)
    return InventoryHosts(inventory, inventory_topology(inventory), hosts)


def links(ns: str) -> dict[str, int | None]:
    """Interface name -> master index in namespace ``ns``."""
    with IPRoute(netns=ns, flags=0) as ipr:
        return {link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_MASTER")
                for link in ipr.get_links()}


KILLED_RUN = """
import sys, time
from pathlib import Path
from colo_fixtures.config.inventory import load_inventory
from colo_fixtures.lab.inventory_lab import InventoryLab, InventoryHosts, ssh_hosts
from colo_fixtures.lab.ledger import write_entry
from colo_fixtures.lab.topology import inventory_topology
inventory = load_inventory(Path(sys.argv[1]))
hosts = InventoryHosts(inventory, inventory_topology(inventory), ssh_hosts(inventory, False, None))
hosts.check([])
ledger = Path(sys.argv[2])
scratch = InventoryLab(hosts, ledger=ledger).create()
primary = hosts.hosts["primary"]
sleeper = primary.spawn(["sleep", "600"], scratch / "sleep.log")
write_entry(ledger, "created", *primary.ledger_name(sleeper.pid))
print(scratch, sleeper.pid, flush=True)
time.sleep(600)
"""


def test_janitor_removes_what_a_killed_run_left_on_the_hosts(machines, tmp_path: Path):
    """A run on the inventory profile is SIGKILLed after provisioning both hosts and starting
    a process; tools/janitor, from the ledger alone, removes everything over SSH."""
    ledger = tmp_path / "artifacts" / "killed" / "ledger.jsonl"
    run = subprocess.Popen(ns_exec_argv(machines.controller, [
        sys.executable, "-c", KILLED_RUN, str(machines.inventory), str(ledger)]),
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = run.stdout.readline().split()  # type: ignore[union-attr]
    finally:
        run.kill()
        run.wait(timeout=30)
    assert len(line) == 2, "the run did not get as far as starting its process"
    scratch, pid = Path(line[0]), int(line[1])
    pri, sec = machines.namespaces["primary"], machines.namespaces["secondary"]
    assert {"br0", "tap0", "ifb0"} <= set(links(pri)) and {"br0", "tap0"} <= set(links(sec))
    assert scratch.is_dir() and not is_gone(pid)
    kinds = sorted({kind for kind, _ in read_ledger(ledger)})
    assert kinds == ["ssh-dir", "ssh-network", "ssh-process"]

    janitor = subprocess.run(ns_exec_argv(machines.controller, [
        str(ROOT / "tools" / "janitor"), "--report-dir", str(tmp_path)]),
        capture_output=True, text=True, timeout=120)
    assert janitor.returncode == 0, janitor.stdout + janitor.stderr
    assert "0 left" in janitor.stdout

    assert is_gone(pid)
    assert not scratch.exists()
    for ns in (pri, sec):
        left = links(ns)
        assert not {"br0", "tap0", "ifb0"} & set(left), left
        assert left["ext0"] is None  # back out of the bridge, as the lab had it
    assert read_ledger(ledger) == []


def test_a_pid_reused_after_the_run_is_not_killed(machines, tmp_path: Path):
    hosts = lab_hosts_of(machines)
    primary = hosts.hosts["primary"]
    assert isinstance(primary, SshHost)
    sleeper = primary.spawn(["sleep", "600"], tmp_path / "sleep.log")
    try:
        start = primary.start_ticks(sleeper.pid)
        assert start is not None
        assert not primary.kill_recorded(sleeper.pid, start + 1)  # another process's start
        assert not is_gone(sleeper.pid)
        assert primary.kill_recorded(sleeper.pid, start)
        sleeper.wait(timeout=10)
    finally:
        sleeper.kill()
        hosts.close()


def test_files_are_staged_once_by_content(machines, tmp_path: Path):
    hosts = lab_hosts_of(machines)
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\necho staged\n")
    tool.chmod(0o755)
    try:
        hosts.check([])
        staged = hosts.stage([tool])[tool]
        assert staged.parent == hosts.inventory.scratch / "stage"
        assert staged.read_bytes() == tool.read_bytes() and staged.stat().st_mode & 0o100
        assert hosts.hosts["secondary"].run([str(staged)]).stdout == "staged\n"
        tool.write_text("#!/bin/sh\necho changed\n")
        hosts.staged.clear()
        assert hosts.stage([tool])[tool] != staged  # new content, new path
    finally:
        hosts.close()


def test_an_unreachable_or_broken_host_is_named(machines, tmp_path: Path):
    text = machines.inventory.read_text().replace("root@10.23.0.3", "root@10.23.0.3:2200")
    broken = tmp_path / "broken.toml"
    broken.write_text(text)
    hosts = lab_hosts_of(machines, broken)
    try:
        with pytest.raises(InventoryLabError) as info:
            hosts.check(["/nonexistent/firmware"])
    finally:
        hosts.close()
    message = str(info.value)
    assert "secondary (root@10.23.0.3:2200): cannot reach" in message
    assert "primary (root@10.23.0.2:22): no firmware in /nonexistent/firmware" in message
    assert "\n" not in message


def test_lab_provisions_both_hosts_and_removes_everything(machines, tmp_path: Path):
    hosts = lab_hosts_of(machines)
    lab = InventoryLab(hosts, ledger=tmp_path / "ledger.jsonl")
    try:
        scratch = lab.create()
        assert scratch.is_dir() and scratch.parent == hosts.inventory.scratch
        pri = machines.namespaces["primary"]
        left = links(pri)
        assert left["tap0"] == left["ext0"] == next(i for i, n in _indexes(pri).items()
                                                if n == "br0")
        assert links(machines.namespaces["secondary"])["tap0"] is None  # until failover
        stats = lab.ifb_stats()
        assert set(stats) == {"ifb_rx_packets", "ifb_tx_packets", "tap_rx_packets"}
        state = lab.network_state()
        assert "tap0:" in state and "master br0" in state and "qdisc ingress" in state
        lab.attach_tap("secondary")
        assert links(machines.namespaces["secondary"])["tap0"] is not None
    finally:
        lab.destroy()
        hosts.close()
    assert not scratch.exists()
    assert not {"br0", "tap0", "ifb0"} & set(links(pri))
    assert read_ledger(tmp_path / "ledger.jsonl") == []


def _indexes(ns: str) -> dict[int, str]:
    with IPRoute(netns=ns, flags=0) as ipr:
        return {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def test_clock_offsets_are_measured_and_a_skewed_host_is_refused(machines, tmp_path: Path,
                                                                  monkeypatch):
    """The real measurement over SSH (the hosts share this machine's clock: the offset is
    within the round trip); a host whose clock is 50 ms off is refused, named, in one line."""
    hosts = lab_hosts_of(machines)
    try:
        hosts.check_clocks()
        assert set(hosts.clock_offsets) == {"primary", "secondary", "client"}
        for offset, rtt in hosts.clock_offsets.values():
            assert 0 < rtt < 0.5 and abs(offset) <= rtt / 2 + 0.002, (offset, rtt)
        skewed = hosts.hosts["secondary"]
        monkeypatch.setattr(skewed, "clock_offset", lambda: (0.050, 0.001))
        with pytest.raises(InventoryLabError) as info:
            hosts.check_clocks()
    finally:
        hosts.close()
    message = str(info.value)
    assert message.startswith("secondary (root@10.23.0.3:22): clock +50.0 ms off this "
                              "machine's (round trip 1.0 ms): synchronise"), message
    assert "primary" not in message and "\n" not in message
