"""Typed verdicts: what a failure means is its exception type, never its message text.

Four families, each with its own report category:

- ``ColoViolation``: COLO broke its promise (a lost write, a stale read, a failed write
  visible, memory or disk divergence, a guest crash, a deadlock, a miscompare storm).
  Nothing excuses one, in any phase of any test.
- ``SutFailure``: the system under test did not work (COLO never started, a QEMU died or
  refused a command, the client connection broke, the client got no answer). A known issue
  may excuse a ``SutFailure`` type it names, with its evidence.
- ``LabError``: the lab (namespaces, hosts, links, SSH) failed.
- ``HarnessError``: the harness itself failed or was misused.

Both failing families are ``AssertionError`` (the report shows them as failed); lab and
harness errors are not (the report shows them as broken). This module imports nothing of
the package: every layer may raise these.
"""

from __future__ import annotations

from typing import ClassVar


class Verdict(Exception):
    """A failure the harness can name. ``category`` is its report category."""

    category: ClassVar[str] = "Unclassified verdict"


class ColoViolation(Verdict, AssertionError):
    """COLO broke its promise: never excused."""

    category = "COLO violation"


class LostWrite(ColoViolation):
    category = "Lost acknowledged write"


class StaleRead(ColoViolation):
    category = "Stale or phantom read"


class FailedWriteVisible(ColoViolation):
    category = "Failed or never-written value visible"


class MemoryDivergence(ColoViolation):
    category = "Guest memory divergence"


class DiskDivergence(ColoViolation):
    category = "Replica disk divergence"


class GuestCrash(ColoViolation):
    category = "Guest crash"


class Deadlock(ColoViolation):
    category = "Deadlock (QEMU stopped answering)"


class MiscompareStorm(ColoViolation):
    category = "colo-compare miscompare storm"


class SutFailure(Verdict, AssertionError):
    """The system under test did not do what it must; a known issue may excuse its type."""

    category = "System under test failed"


class QemuError(SutFailure):
    """A QEMU refused a command, exited, or did not reach a state in time."""

    category = "QEMU failed"


class QmpTimeout(QemuError):
    """A QMP command got no answer in time (a hang inside a checkpoint is a ``Deadlock``)."""

    category = "QEMU stopped answering a command"


class ColoNotRunning(QemuError):
    category = "COLO did not start"


class NicBroken(SutFailure):
    """A side's virtio-net device is marked broken (a virtio_error): it processes nothing,
    colo-compare gets no packet of it, and a takeover by it leaves the guest offline."""

    category = "virtio-net device broken (NIC dead)"


class SecondaryOutputLost(SutFailure):
    """The secondary's output never reaches colo-compare: deterministic client replies are
    released only when a checkpoint flushes colo-compare's queue, not by comparison (their
    latency is the checkpoint period), so the NIC the secondary would take over with is
    already dead while the primary still serves."""

    category = "Secondary's output not compared (replies released by checkpoints)"


class SpuriousMiscompare(SutFailure):
    """colo-compare asked for checkpoints although the two sides' replies are the same
    (one client, each request waiting for its reply): COLO pays a checkpoint per reply,
    and a test that needs a moment without a checkpoint finds none."""

    category = "Spurious miscompare (colo-compare checkpoints for identical replies)"


class CheckpointTimingWrong(SutFailure):
    """Checkpoints do not come when ``x-checkpoint-delay`` says: the periodic interval is
    off, a period is skipped, or changing the delay does not force one."""

    category = "Checkpoint timing wrong (x-checkpoint-delay not honoured)"


class QemuLogError(SutFailure):
    category = "QEMU error in the logs"


class ConnectionBroken(SutFailure):
    category = "Client connection broken by failover"


class ClientTimeout(SutFailure):
    """The client got no answer in time: the VM's network or its guest stopped serving."""

    category = "Client got no answer (VM network dead)"


class MetricsRegression(SutFailure):
    category = "Metrics regression (COLO got slower)"


class LabError(Verdict, RuntimeError):
    category = "Lab error (hosts, network, SSH)"


class Unreachable(LabError):
    """An address took no TCP connection in time (the caller knows whether that address is
    the system under test: a VM's agent that stops answering is a ``ClientTimeout``)."""

    category = "Lab error: address unreachable"


class HarnessError(Verdict, RuntimeError):
    category = "Harness error"


def require_memory_clean(mem: dict[str, int], who: str) -> None:
    """Raise MemoryDivergence when a guest agent's memory check (``MEM``) counted errors."""
    if mem.get("errors", 0) != 0:
        raise MemoryDivergence(f"{who}'s guest memory check failed: {mem}")


FAMILIES: tuple[type[Verdict], ...] = (ColoViolation, SutFailure, LabError, HarnessError)


def verdict_types() -> list[type[Verdict]]:
    """Every verdict type, most specific first (a subclass before its base)."""
    found: list[type[Verdict]] = []

    def walk(cls: type[Verdict]) -> None:
        for sub in cls.__subclasses__():
            walk(sub)
        found.append(cls)

    for family in FAMILIES:
        walk(family)
    return found


def never_excused(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a verdict on COLO's promise, which nothing may excuse."""
    return isinstance(exc, ColoViolation)


def qualified_name(cls: type) -> str:
    """How Python (and so pytest and Allure) prints the type in a failure's first line."""
    return f"{cls.__module__}.{cls.__qualname__}"
