"""The plugin's options (every knob of ``config.settings`` as an option, an ini key and
an environment variable), its markers, the validated settings and inventory, and the
SIGTERM policy.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import uuid

import pytest

from colo_fixtures.config.inventory import Inventory, InventoryError, load_inventory
from colo_fixtures.config.settings import KNOBS, Settings, SettingsError, load_settings
from colo_fixtures.lab.topology import Topology, inventory_topology

MARKERS = {
    "colo": "needs a real COLO pair (QEMU, namespaces, guest)",
    "checkpoint": "COLO checkpoint behaviour",
    "failover": "failover and resume",
    "disk": "disk consistency",
    "trace": "trace events and the COLO protocol",
    "paxos": "vm-ft RDMA Paxos logs",
    "rdma": "needs an RDMA device (skips with the preflight's reason otherwise)",
    "slow": "long-running variants (nightly)",
}


SETTINGS_KEY = pytest.StashKey[Settings]()


INVENTORY_KEY = pytest.StashKey[tuple[Inventory, Topology]]()


RUN_ID = uuid.uuid4().hex[:6]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("colo", "COLO harness (also from COLO_* environment and colo_* ini)")
    for knob in KNOBS:
        env = " or ".join((knob.env, *knob.env_aliases))
        if knob.flag:
            group.addoption(knob.option, action="store_const", const=True, default=None,
                            dest=knob.name, help=f"{knob.help} [env {env}; off: {knob.negation}]")
            group.addoption(knob.negation, action="store_const", const=False, dest=knob.name,
                            help=argparse.SUPPRESS)
        else:
            default = f"; default {knob.default}" if knob.default else ""
            group.addoption(knob.option, dest=knob.name, metavar=knob.metavar, default=None,
                            help=f"{knob.help} [env {env}, ini {knob.ini}{default}]")
        parser.addini(knob.ini, knob.help, default=None)


def pytest_configure(config: pytest.Config) -> None:
    """Markers; the settings and the inventory, validated once (a bad value is a usage error
    naming it); SIGTERM handled like Ctrl-C."""
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    cli = {knob.name: config.getoption(knob.name) for knob in KNOBS}
    ini = {knob.name: config.getini(knob.ini) for knob in KNOBS}
    try:
        config.stash[SETTINGS_KEY] = load_settings(cli, ini, os.environ)
    except SettingsError as exc:
        raise pytest.UsageError(str(exc)) from None
    settings = config.stash[SETTINGS_KEY]
    if settings.inventory is not None:
        try:
            inventory = load_inventory(settings.inventory)
            config.stash[INVENTORY_KEY] = (inventory, inventory_topology(inventory, RUN_ID))
        except (InventoryError, ValueError) as exc:
            raise pytest.UsageError(str(exc)) from None
        workers = config.getoption("numprocesses", None)
        if workers not in (None, 0, 1):
            raise pytest.UsageError(f"-n {workers} with --colo-profile inventory: the inventory "
                                    "is one lab and runs one COLO pair at a time (drop -n)")
    global _SIGTERM_OWNER
    if threading.current_thread() is threading.main_thread():
        _SIGTERM_OWNER = os.getpid()
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)


_SIGTERM_OWNER: int | None = None


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (a CI runner cancelling the job) ends the run like Ctrl-C: pytest stops and
    every fixture's teardown still stops the QEMUs and removes the lab. A process forked
    from pytest (pyroute2's namespace helpers) inherits this handler: it dies as usual."""
    if os.getpid() != _SIGTERM_OWNER:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")
