"""The one wait helper: a timeout, a health check while waiting, a typed verdict at the end.

Every wait of the harness on the system under test goes through ``wait_for``: it polls
``probe`` until it returns something other than None or False, runs ``health`` (which
raises its own verdict, e.g. a guest crash, the moment it sees one) at most every
``HEALTH_EVERY`` seconds, and on timeout raises ``verdict`` naming what it waited for,
the last thing the probe saw and the diagnosis (last QMP events, console and stderr tails).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from colo_fixtures.core.verdicts import QemuError, Verdict

T = TypeVar("T")
HEALTH_EVERY = 0.5
log = logging.getLogger("colo.wait")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, *,
             health: Callable[[], None] | None = None,
             diagnosis: Callable[[], str] | None = None,
             seen: Callable[[], str] | None = None,
             verdict: type[Verdict] = QemuError, interval: float = 0.1) -> T:
    """Wait up to ``timeout`` seconds for ``probe()`` to return a value (not None/False).

    ``seen`` describes the state at the timeout ("2 of 5 checkpoints"); ``diagnosis`` adds
    the evidence. A probe may sleep itself (``interval=0``)."""
    started = time.monotonic()
    deadline = started + timeout
    next_health = started
    log.debug("wait up to %gs: %s", timeout, what)
    while True:
        if health is not None and time.monotonic() >= next_health:
            try:
                health()
            except Exception as exc:
                log.warning("health check failed after %.3fs waiting for %s: %s",
                            time.monotonic() - started, what, type(exc).__name__)
                raise
            next_health = time.monotonic() + HEALTH_EVERY
        result = probe()
        if result is not None and result is not False:
            log.debug("waited %.3fs: %s", time.monotonic() - started, what)
            return result
        if time.monotonic() >= deadline:
            state = f" ({seen()})" if seen is not None else ""
            evidence = f"\n{diagnosis()}" if diagnosis is not None else ""
            log.warning("timed out after %gs: %s%s", timeout, what, state)
            raise verdict(f"{what}: not within {timeout:g}s{state}{evidence}")
        if interval:
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
