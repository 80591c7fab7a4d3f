"""The lab inventory (TOML): which machines play which role, how to reach them, their wiring.

Example (see ``tools/inventory.example.toml``)::

    [lab]
    scratch = "/mnt/ramfs/colo"           # tmpfs for active/hidden disks and sockets
    vm_address = "192.168.100.10"         # the protected VM, on the external network
    vm_prefix = 24                        # its prefix length (default 24)

    [hosts.primary]
    ssh = "root@lab-a.example:22"         # user@host[:port]
    key = "~/.ssh/colo_lab"               # private key file
    replication = { interface = "ib0", address = "10.22.1.2" }
    external = { interface = "eth1", bridge = "br0", tap = "tap0" }

Roles: primary and secondary (required), sentinel (vm-ft's witness) and client (where the
workload runs; default: this machine). Every error names the file, the line and the fix,
on one line, and nothing is touched before the whole file is valid.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("primary", "secondary", "sentinel", "client")
REQUIRED_ROLES = ("primary", "secondary")
SSH_RE = re.compile(r"^(?P<user>[A-Za-z_][A-Za-z0-9_.-]*)@(?P<host>[A-Za-z0-9.:\[\]-]+?)"
                    r"(?::(?P<port>\d+))?$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")  # interface names (IFNAMSIZ)
LAB_KEYS = {"scratch", "vm_address", "vm_prefix", "known_hosts"}
HOST_KEYS = {"ssh", "key", "replication", "external"}
# Keys an inventory once had that nothing reads: vm-ft's group runs on the embedded lab only.
NOT_READ = {"vmft_root", "images", "rdma_device"}
REPLICATION_KEYS = {"interface", "address"}
EXTERNAL_KEYS = {"interface", "bridge", "tap", "address"}


class InventoryError(ValueError):
    """A bad inventory; the message is one line: file:line: what is wrong (how to fix it)."""


@dataclass(frozen=True)
class SshTarget:
    user: str
    host: str
    port: int = 22

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class InventoryHost:
    role: str
    ssh: SshTarget
    key: Path
    replication_if: str | None = None
    replication_addr: str | None = None
    external_if: str | None = None
    bridge: str | None = None
    tap: str | None = None
    external_addr: str | None = None


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: dict[str, InventoryHost]
    scratch: Path
    vm_address: str | None = None
    vm_prefix: int = 24
    known_hosts: Path | None = None

    def host(self, role: str) -> InventoryHost:
        try:
            return self.hosts[role]
        except KeyError:
            raise ValueError(f"{self.path}: no {role} host in the inventory") from None


class _Source:
    """The file's text, to give semantic errors the line of the key or table they concern."""

    def __init__(self, path: Path, text: str):
        self.path, self.lines = path, text.splitlines()

    def line_of(self, table: str, key: str | None = None) -> int:
        """Line of ``key`` inside ``[table]`` (or of the table header); 1 if not found."""
        name = r"\s*\.\s*".join(map(re.escape, table.split(".")))
        header = re.compile(rf"^\s*\[\s*{name}\s*\]")
        start = next((i for i, line in enumerate(self.lines) if header.match(line)), None)
        if start is None:
            return 1
        if key is None:
            return start + 1
        key_re = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for i in range(start + 1, len(self.lines)):
            if re.match(r"^\s*\[", self.lines[i]):
                break
            if key_re.match(self.lines[i]):
                return i + 1
        return start + 1

    def error(self, table: str, key: str | None, message: str) -> InventoryError:
        return InventoryError(f"{self.path}:{self.line_of(table, key)}: {message}")


def load_inventory(path: Path) -> Inventory:
    """Parse and validate ``path``; InventoryError (one line, with the line number) if bad."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read the inventory: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from(str(exc))
        raise InventoryError(f"{path}:{line}: not valid TOML: {str(exc).split(' (at')[0]}"
                             ) from None
    source = _Source(path, text)
    unknown = set(data) - {"lab", "hosts"}
    if unknown:
        name = sorted(unknown)[0]
        raise source.error(name, None, f"unknown table [{name}] (expected [lab] and "
                           "[hosts.<role>])")
    lab = _table(data.get("lab", {}), "lab", source)
    _no_unknown_keys(lab, LAB_KEYS, "lab", source)
    hosts_table = _table(data.get("hosts", {}), "hosts", source)
    hosts = {}
    for role, fields in hosts_table.items():
        if role not in ROLES:
            raise source.error(f"hosts.{role}", None, f"unknown role {role!r} (roles: "
                               f"{', '.join(ROLES)})")
        hosts[role] = _host(role, _table(fields, f"hosts.{role}", source), path.parent, source)
    for role in REQUIRED_ROLES:
        if role not in hosts:
            raise InventoryError(f"{path}:1: no [hosts.{role}] table: the lab needs a primary "
                                 "and a secondary")
    _no_duplicates(hosts, source)
    scratch = lab.get("scratch")
    if scratch is None:
        raise source.error("lab", None, "[lab] scratch is missing: a directory on every host "
                           "for disks and sockets, ideally on tmpfs (e.g. /mnt/ramfs/colo)")
    return Inventory(
        path=path, hosts=hosts,
        scratch=_abs_path(scratch, "lab", "scratch", source),
        vm_address=_address(lab["vm_address"], "lab", "vm_address", source)
        if "vm_address" in lab else None,
        vm_prefix=_prefix(lab.get("vm_prefix", 24), source),
        known_hosts=_local_file(lab["known_hosts"], path.parent, "lab", "known_hosts", source)
        if "known_hosts" in lab else None,
    )


def _prefix(value: Any, source: _Source) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= 30:
        raise source.error("lab", "vm_prefix", f"lab.vm_prefix = {value!r}: a prefix length "
                           "8..30 (e.g. 24)")
    return value


def _line_from(message: str) -> int:
    match = re.search(r"line (\d+)", message)
    return int(match[1]) if match else 1


def _table(value: Any, table: str, source: _Source) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise source.error(table, None, f"[{table}] must be a table")
    return value


def _no_unknown_keys(fields: dict[str, Any], allowed: set[str], table: str,
                     source: _Source) -> None:
    for key in fields:
        if key in NOT_READ:
            raise source.error(table, key, f"{table}.{key} is not read by the harness (vm-ft's "
                               "nodes run on the embedded lab only): remove it")
        if key not in allowed:
            raise source.error(table, key, f"unknown key {key!r} in [{table}] (known: "
                               f"{', '.join(sorted(allowed))})")


def _string(fields: dict[str, Any], key: str, table: str, source: _Source) -> str:
    value = fields[key]
    if not isinstance(value, str) or not value:
        raise source.error(table, key, f"{table}.{key} must be a non-empty string")
    return value


def _abs_path(value: Any, table: str, key: str, source: _Source) -> Path:
    if not isinstance(value, str) or not value.startswith("/"):
        raise source.error(table, key, f"{table}.{key} = {value!r}: an absolute path on the "
                           "lab hosts")
    return Path(value)


def _local_file(value: Any, base: Path, table: str, key: str, source: _Source) -> Path:
    if not isinstance(value, str) or not value:
        raise source.error(table, key, f"{table}.{key} must be a path")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise source.error(table, key, f"{table}.{key}: no such file {path}")
    return path


def _address(value: Any, table: str, key: str, source: _Source) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise source.error(table, key, f"{table}.{key} = {value!r} is not an IP address"
                           ) from None


def _ifname(value: Any, table: str, key: str, source: _Source) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise source.error(table, key, f"{table}.{key} = {value!r} is not an interface name "
                           "(1-15 letters, digits, _ . : -)")
    return value


def _host(role: str, fields: dict[str, Any], base: Path, source: _Source) -> InventoryHost:
    table = f"hosts.{role}"
    _no_unknown_keys(fields, HOST_KEYS, table, source)
    for key in ("ssh", "key"):
        if key not in fields:
            raise source.error(table, None, f"[{table}] needs {key} = ... "
                               + ("(user@host[:port])" if key == "ssh" else
                                  "(the SSH private key file)"))
    match = SSH_RE.match(_string(fields, "ssh", table, source))
    if not match:
        raise source.error(table, "ssh", f"{table}.ssh = {fields['ssh']!r}: expected "
                           "user@host[:port]")
    port = int(match["port"] or 22)
    if not 1 <= port <= 65535:
        raise source.error(table, "ssh", f"{table}.ssh port {port} is outside 1..65535")
    ssh = SshTarget(match["user"], match["host"].strip("[]"), port)
    key = _local_file(fields["key"], base, table, "key", source)
    rep = _table(fields.get("replication", {}), table, source)
    _no_unknown_keys(rep, REPLICATION_KEYS, table, source)
    ext = _table(fields.get("external", {}), table, source)
    _no_unknown_keys(ext, EXTERNAL_KEYS, table, source)
    if role != "client" and not rep:
        raise source.error(table, None, f"[{table}] needs replication = {{ interface = ..., "
                           "address = ... }}")
    if role in ("primary", "secondary") and not {"bridge", "tap"} <= set(ext):
        raise source.error(table, "external" if ext else None, f"[{table}] needs external = "
                           "{ interface = ..., bridge = ..., tap = ... } for the VM's network")
    return InventoryHost(
        role=role, ssh=ssh, key=key,
        replication_if=_ifname(rep["interface"], table, "replication", source)
        if "interface" in rep else None,
        replication_addr=_address(rep["address"], table, "replication", source)
        if "address" in rep else None,
        external_if=_ifname(ext["interface"], table, "external", source)
        if "interface" in ext else None,
        bridge=_ifname(ext["bridge"], table, "external", source) if "bridge" in ext else None,
        tap=_ifname(ext["tap"], table, "external", source) if "tap" in ext else None,
        external_addr=_address(ext["address"], table, "external", source)
        if "address" in ext else None,
    )


def _no_duplicates(hosts: dict[str, InventoryHost], source: _Source) -> None:
    seen: dict[str, str] = {}
    for role, host in hosts.items():
        for address in (host.replication_addr, host.external_addr):
            if address is None:
                continue
            if address in seen:
                raise source.error(f"hosts.{role}", None, f"address {address} of {role} is "
                                   f"also {seen[address]}'s: every address must be unique")
            seen[address] = role
