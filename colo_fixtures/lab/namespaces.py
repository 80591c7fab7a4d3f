"""Network namespaces with pyroute2: entering one (a call, a socket, a command's argv), the
netlink helpers the embedded lab builds with, removing recorded items (the ledger's
``netns``, ``link``, ``qdisc`` and ``filter`` kinds, named ``NS``, ``NS/IFNAME``,
``NS/DEV/ingress`` and ``NS/DEV/ingress/PRIO``), and vm-ft's output-path probe.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from colo_fixtures.core.verdicts import LabError, Unreachable

NETNS_DIR = Path("/run/netns")


INGRESS = 0xFFFF0000  # "ffff:", the ingress qdisc's handle and its filters' parent


TC_H_ROOT = 0xFFFFFFFF


ETH_P_IP = 0x0800  # the seed's "proto ip"


FILTER_PRIO = 10  # the seed's "pref 10"


FILTER_TARGET = 0x10020  # u32 classid ("flowid 1:20"); pyroute2 needs one, ingress ignores it


PLUG_HANDLE = 0x10000


RATE_HANDLE = 0x10000  # "1:", the replication link's tbf (--replication-rate)


PLUG_LIMIT = 32768


_GONE = frozenset({errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EINVAL})


KIND_HINTS = {
    "bridge": "module bridge missing (modprobe bridge)",
    "veth": "module veth missing (modprobe veth)",
    "ifb": "module ifb missing (modprobe ifb)",
    "tuntap": "no /dev/net/tun (modprobe tun)",
}


T = TypeVar("T")


def _netns_path(name: str) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad namespace name {name!r}")
    return NETNS_DIR / name


def netns_exists(name: str) -> bool:
    """True if the named namespace (``/run/netns/NAME``) exists."""
    return _netns_path(name).exists()


def call_in_ns(name: str, fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Run ``fn`` in a fresh helper thread that has entered namespace ``name``; return its result.

    setns() moves only the calling thread, and sockets, tap fds and sysctl files keep the
    namespace they were opened in, so what ``fn`` opens is usable from any thread afterwards.
    """
    path = _netns_path(name)
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                pr_netns.setns(fd, flags=0)
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=runner, name=f"netns:{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise LabError(f"helper thread in namespace {name} did not finish within {timeout:g}s")
    if "error" in box:
        error = box["error"]
        if isinstance(error, FileNotFoundError) and not path.exists():
            raise LabError(f"namespace {name} does not exist") from error
        raise error
    return box["value"]


def ns_socket(
    netns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM
) -> socket.socket:
    """A socket created inside ``netns`` (setns in a short-lived helper thread: sockets stay in
    the namespace they were created in), usable from any thread."""
    return call_in_ns(netns, lambda: socket.socket(family, type))


def connect_in_ns(netns: str, host: str, port: int, timeout: float) -> socket.socket:
    """TCP connect from inside ``netns`` with retries until ``timeout``; on timeout raise
    LabError naming netns/host/port and the last errno. The socket is returned blocking."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Unreachable(
                f"cannot connect from namespace {netns} to {host}:{port} "
                f"within {timeout:g}s: last error {last}"
            )
        sock = ns_socket(netns, family, socket.SOCK_STREAM)
        try:
            sock.settimeout(min(remaining, 2.0))
            sock.connect((host, port))
        except OSError as exc:
            sock.close()
            last = _errno_text(exc)
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            continue
        sock.settimeout(None)
        return sock


def ns_exec_argv(netns: str, argv: list[str]) -> list[str]:
    """argv that runs ``argv`` inside ``netns`` (nsenter execs, so the PID is the program's)."""
    _netns_path(netns)
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *argv]


def _errno_text(exc: BaseException) -> str:
    code = getattr(exc, "code", None) if isinstance(exc, NetlinkError) else None
    if code is None and isinstance(exc, OSError):
        code = exc.errno
    if isinstance(exc, TimeoutError) and code is None:
        return "timed out"
    if code:
        return f"{errno.errorcode.get(code, code)} ({os.strerror(code)})"
    return " ".join(str(exc).split()) or type(exc).__name__


def error_reason(exc: BaseException, hint: str | None = None) -> str:
    """One line: the errno (or exception text) plus, for 'missing feature' errors, the hint."""
    text = _errno_text(exc)
    code = exc.code if isinstance(exc, NetlinkError) else getattr(exc, "errno", None)
    if hint and code in (errno.EOPNOTSUPP, errno.ENOENT, errno.ENODEV):
        return f"{hint} [{text}]"
    return text


@contextmanager
def lab_step(what: str, hint: str | None = None) -> Iterator[None]:
    """Turn any low-level error inside the block into ``LabError("WHAT: REASON")``."""
    try:
        yield
    except LabError:
        raise
    except (OSError, NetlinkError, ValueError, RuntimeError) as exc:
        raise LabError(f"{what}: {error_reason(exc, hint)}") from exc


def quiet_ipv6() -> None:
    """In the calling thread's namespace: links made from now on get no IPv6 (no link-local
    address, no router solicitations, MLD or DAD), so the only traffic on the lab's wires is
    what tests and VMs send. Bridged IPv6 frames of the VM still pass."""
    path = Path("/proc/sys/net/ipv6/conf/default/disable_ipv6")
    if path.exists():  # absent when the kernel has no IPv6
        path.write_text("1\n")


def _open_ipr(name: str) -> IPRoute | None:
    """An IPRoute bound to namespace ``name``, or None if it does not exist.

    flags=0 matters: pyroute2 0.9's default (O_CREAT) silently creates a missing namespace.
    """
    if not netns_exists(name):
        return None
    try:
        return IPRoute(netns=name, flags=0)
    except FileNotFoundError:
        return None


@contextmanager
def ipr_in(name: str) -> Iterator[IPRoute]:
    ipr = _open_ipr(name)
    if ipr is None:
        raise LabError(f"namespace {name} does not exist (was the lab created?)")
    try:
        yield ipr
    finally:
        ipr.close()


def link_index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def require_index(ipr: IPRoute, ns: str, ifname: str) -> int:
    index = link_index(ipr, ifname)
    if index is None:
        raise LabError(f"no interface {ifname} in namespace {ns}")
    return index


def stats64(ipr: IPRoute, index: int) -> dict[str, int]:
    stats = ipr.get_links(index)[0].get("stats64") or {}
    return {key: int(value) for key, value in stats.items()}


def action_packets(msg: Any) -> int | None:
    """Packets counted by the first action of a u32 filter dump message, if present."""
    try:
        stats = (
            msg.get_attr("TCA_OPTIONS")
            .get_attr("TCA_U32_ACT")
            .get_attr("TCA_ACT_PRIO_1")
            .get_attr("TCA_ACT_STATS")
            .get_attr("TCA_STATS_BASIC")
        )
        return int(stats["packets"])
    except (AttributeError, KeyError, TypeError):
        return None


_NAME_PARTS = {"link": 2, "qdisc": 3, "filter": 4}  # NS/IFNAME, NS/DEV/ingress, NS/DEV/ingress/PRIO


def _split(name: str, parts: int) -> list[str]:
    fields = name.split("/")
    if len(fields) != parts or not all(fields):
        raise ValueError(f"bad ledger name {name!r}")
    return fields


def _remove(kind: str, name: str, iprs: dict[str, IPRoute | None]) -> bool:
    """Remove one recorded item; False if it was already gone. ``iprs`` caches IPRoutes."""
    if kind == "netns":
        ipr = iprs.pop(name, None)
        if ipr is not None:
            ipr.close()
        if not netns_exists(name):
            return False
        try:
            pr_netns.remove(name)
        except FileNotFoundError:
            return False
        return True
    ns = name.split("/", 1)[0]
    if ns not in iprs:
        iprs[ns] = _open_ipr(ns)
    ipr = iprs[ns]
    if ipr is None:
        return False
    if kind not in _NAME_PARTS:
        raise ValueError(f"unknown ledger kind {kind!r}")
    fields = _split(name, _NAME_PARTS[kind])
    index = link_index(ipr, fields[1])
    if index is None:
        return False
    try:
        if kind == "link":
            ipr.link("del", index=index)
        elif kind == "qdisc":
            ipr.tc("del", "ingress", index, INGRESS)
        else:
            ipr.tc("del-filter", index=index, parent=INGRESS, prio=int(fields[3]))
    except NetlinkError as exc:
        if exc.code in _GONE:
            return False
        raise
    return True


def remove_items(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Remove recorded items in reverse order, skipping what is already gone.

    Returns the items that could not be removed (empty on success). Never raises for
    already-gone items; other failures are left in the returned list.
    """
    failed: list[tuple[str, str]] = []
    iprs: dict[str, IPRoute | None] = {}
    try:
        for kind, name in reversed(items):
            try:
                _remove(kind, name, iprs)
            except Exception:  # keep going: remove as much as possible, report the rest
                failed.append((kind, name))
    finally:
        for ipr in iprs.values():
            if ipr is not None:
                ipr.close()
    failed.reverse()
    return failed


def probe_output_path() -> list[tuple[str, bool, str]]:
    """vm-ft's output path, tried for real in a throwaway namespace that is always removed.

    Returns ``(item, ok, detail)`` for ``ifb`` (an ifb device), ``mirred redirect`` (the
    seed's ingress qdisc with a u32 match-all mirred redirect into it) and ``plug qdisc``
    (``sch_plug`` on the ifb device, vm-ft's output buffer).
    """
    name = f"colo-probe-{os.getpid()}-{threading.get_ident() % 10000}"
    results: list[tuple[str, bool, str]] = []
    pr_netns.create(name)
    try:
        with ipr_in(name) as ipr:
            try:
                ipr.link("add", ifname="ifb0", kind="ifb")
                ipr.link("add", ifname="probe0", kind="veth", peer={"ifname": "probe1"})
                ifb = require_index(ipr, name, "ifb0")
                dummy = require_index(ipr, name, "probe0")
                for index in (ifb, dummy):
                    ipr.link("set", index=index, state="up")
                results.append(("ifb", True, "ifb device created"))
            except (NetlinkError, OSError, LabError) as exc:
                return [("ifb", False, f"cannot create an ifb device: {error_reason(exc)}; "
                         "load the module (modprobe ifb) or use a kernel with CONFIG_IFB"),
                        ("mirred redirect", False, "not checked: needs ifb"),
                        ("plug qdisc", False, "not checked: needs ifb")]
            try:
                ipr.tc("add", "ingress", dummy, INGRESS)
                ipr.tc("add-filter", "u32", dummy, parent=INGRESS, prio=FILTER_PRIO,
                       protocol=ETH_P_IP, target=FILTER_TARGET, keys=["0x0/0x0+0"],
                       action={"kind": "mirred", "direction": "egress", "action": "redirect",
                               "ifindex": ifb})
                results.append(("mirred redirect", True, "ingress u32 mirred redirect added"))
            except (NetlinkError, OSError) as exc:
                results.append(("mirred redirect", False, f"ingress u32 mirred redirect "
                                f"refused: {error_reason(exc)}; load sch_ingress, cls_u32 and "
                                "act_mirred (modprobe) or use a kernel that has them"))
            try:
                ipr.tc("add", "plug", ifb, PLUG_HANDLE, limit=PLUG_LIMIT)
                results.append(("plug qdisc", True, "plug qdisc added on ifb0"))
            except (NetlinkError, OSError) as exc:
                results.append(("plug qdisc", False, f"plug qdisc refused: {error_reason(exc)}; "
                                "vm-ft buffers output with sch_plug: modprobe sch_plug, or "
                                f"use a kernel with CONFIG_NET_SCH_PLUG (this one: "
                                f"{os.uname().release})"))
    finally:
        pr_netns.remove(name)
    return results
