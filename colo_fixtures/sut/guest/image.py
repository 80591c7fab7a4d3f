"""The guest image: kernel, initramfs (busybox, ``/init``, the agent), the boot parameters."""

from __future__ import annotations

import contextlib
import gzip
import ipaddress
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from colo_fixtures.config.settings import default_cache_dir
from colo_fixtures.sut.cache import CacheError, cached_build, hash_parts
from colo_fixtures.sut.guest.agent import AGENT_PORT

SRC_DIR = Path(__file__).resolve().parent / "src"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")
# Load order matters: each needs the ones before it (from COLO-FACTS).
MODULES: tuple[str, ...] = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "virtio_blk", "failover", "net_failover", "virtio_net",
)
AGENT_CFLAGS: tuple[str, ...] = ("-static", "-O2", "-pthread", "-Wall", "-Wextra", "-s")
# Bump when the image layout produced by this module changes (part of the cache key).
LAYOUT_VERSION = "1"



class GuestBuildError(RuntimeError):
    """The guest image could not be built; the message is one line with the fix."""


@dataclass(frozen=True)
class GuestImage:
    """A bootable guest: pass ``-kernel kernel -initrd initrd -append kernel_cmdline(...)``."""

    kernel: Path
    initrd: Path
    key: str
    kernel_version: str


# ---------------------------------------------------------------------------
# Building


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _query(argv: Sequence[str], fix: str) -> str:
    """Output of a quick host query; GuestBuildError naming ``fix`` if it fails."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise GuestBuildError(f"{argv[0]} not found; {fix}") from None
    if proc.returncode != 0:
        raise GuestBuildError(
            f"{' '.join(argv)} failed (exit {proc.returncode}): "
            f"{_one_line(proc.stderr or proc.stdout)}; {fix}"
        )
    return proc.stdout


def resolve_kernel_package() -> tuple[str, str]:
    """The real ``linux-image-<release>-cloud-amd64`` package behind the meta-package, and
    its candidate version (one ``apt-cache`` query, which takes seconds without a pkgcache)."""
    fix = "this needs a Debian host with apt (try apt-get update)"
    out = _query(["apt-cache", "show", "--no-all-versions", KERNEL_META_PACKAGE], fix)
    match = re.search(r"^Depends:.*?\b(linux-image-\d\S*-cloud-amd64)(?: \(= ([^)\s]+)\))?",
                      out, re.M)
    if not match:
        raise GuestBuildError(f"{KERNEL_META_PACKAGE} depends on no kernel package; {fix}")
    name, version = match.groups()
    if version is None:
        policy = _query(["apt-cache", "policy", name], fix)
        candidate = re.search(r"Candidate:\s*(\S+)", policy)
        version = candidate.group(1) if candidate else "(none)"
    if version == "(none)":
        raise GuestBuildError(f"no installable version of {name}; {fix}")
    return name, version


def _apt_signature() -> str:
    """Changes whenever apt's view of available packages may have changed."""
    parts = []
    for root in (Path("/var/lib/apt/lists"), Path("/etc/apt")):
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            with contextlib.suppress(OSError):
                st = path.stat()
                if stat.S_ISREG(st.st_mode):
                    parts.append(f"{path} {st.st_size} {st.st_mtime_ns}")
    return hash_parts(parts)


def _resolve_kernel_cached(cache_dir: Path) -> tuple[str, str]:
    """``resolve_kernel_package``, remembered in the cache until apt's lists change."""
    memo = cache_dir / "guest" / "kernel-package.json"
    signature = _apt_signature()
    with contextlib.suppress(OSError, ValueError, KeyError):
        data = json.loads(memo.read_text())
        if data["apt_signature"] == signature:
            return data["name"], data["version"]
    name, version = resolve_kernel_package()
    with contextlib.suppress(OSError):
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"apt_signature": signature, "name": name, "version": version}))
        tmp.replace(memo)
    return name, version


def is_static_elf(path: Path) -> bool:
    """True if ``path`` is a 64-bit little-endian ELF without a program interpreter."""
    with path.open("rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(
        struct.unpack_from("<I", table, i * phentsize)[0] != 3  # PT_INTERP
        for i in range(phnum)
    )


def _busybox_version() -> str:
    fix = "apt-get install busybox-static"
    if not BUSYBOX.is_file():
        raise GuestBuildError(f"{BUSYBOX} missing; {fix}")
    if not is_static_elf(BUSYBOX):
        raise GuestBuildError(f"{BUSYBOX} is not statically linked; {fix}")
    version = _query(["dpkg-query", "-W", "-f", "${Version}", "busybox-static"], fix).strip()
    return f"{version} sha256:{hash_parts([BUSYBOX.read_bytes()])}"


def _gcc_version() -> str:
    out = _query(["gcc", "--version"], "apt-get install gcc libc6-dev")
    return out.splitlines()[0].strip()


def _cache_key(kernel_pkg: str, kernel_ver: str, busybox: str, gcc: str) -> str:
    return hash_parts([
        "guest", LAYOUT_VERSION,
        (SRC_DIR / "agent.c").read_bytes(), (SRC_DIR / "init").read_bytes(),
        kernel_pkg, kernel_ver, busybox, ",".join(MODULES), " ".join(AGENT_CFLAGS), gcc,
    ])


class _BuildLog:
    """Runs build commands with their output appended to ``build.log``, under a deadline."""

    def __init__(self, path: Path, deadline: float):
        self.path = path
        self.deadline = deadline

    def note(self, text: str) -> None:
        with self.path.open("a") as f:
            f.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")

    def run(self, argv: Sequence[str], cwd: Path, what: str, fix: str) -> None:
        self.note("$ " + " ".join(argv))
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise GuestBuildError(f"guest build timed out before {what}; log: {self.path}")
        with self.path.open("a") as log:
            try:
                proc = subprocess.run(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, timeout=remaining, check=False)
            except FileNotFoundError:
                raise GuestBuildError(f"{what}: {argv[0]} not found; {fix}") from None
            except subprocess.TimeoutExpired:
                raise GuestBuildError(f"{what} timed out; log: {self.path}") from None
        if proc.returncode != 0:
            last = self.path.read_text(errors="replace").strip().splitlines()[-1:]
            raise GuestBuildError(
                f"{what} failed (exit {proc.returncode}): {_one_line(''.join(last))}; "
                f"{fix}; log: {self.path}"
            )


def _find_module(modroot: Path, name: str) -> Path | None:
    for suffix in (".ko", ".ko.xz", ".ko.gz", ".ko.zst"):
        hits = sorted(modroot.rglob(name + suffix))
        if hits:
            return hits[0]
    return None


def _builtin_modules(modroot: Path) -> set[str]:
    path = modroot / "modules.builtin"
    if not path.is_file():
        return set()
    return {Path(line).name.split(".ko")[0] for line in path.read_text().split()}


def _module_bytes(path: Path) -> bytes:
    """The plain ELF object (busybox insmod cannot load compressed modules)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        raise GuestBuildError(f"{path.name} is zstd-compressed, which Python 3.11 cannot unpack")
    return data


def _collect_kernel(root: Path, log: _BuildLog) -> tuple[Path, str, dict[str, bytes]]:
    """``(vmlinuz, release, {module: object bytes})`` from an unpacked kernel package."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise GuestBuildError(f"no boot/vmlinuz-* in the kernel package; log: {log.path}")
    release = kernels[0].name.removeprefix("vmlinuz-")
    modroot = next((p for p in (root / "lib/modules" / release, root / "usr/lib/modules" / release)
                    if p.is_dir()), None)
    if modroot is None:
        raise GuestBuildError(f"no modules directory for {release} in the kernel package")
    builtin = _builtin_modules(modroot)
    modules: dict[str, bytes] = {}
    for name in MODULES:
        path = _find_module(modroot, name)
        if path is not None:
            modules[name] = _module_bytes(path)
            log.note(f"module {name}: {path.relative_to(root)} ({len(modules[name])} bytes)")
        else:
            log.note(f"module {name}: " + ("built in" if name in builtin else "ABSENT"))
    return kernels[0], release, modules


@dataclass(frozen=True)
class CpioEntry:
    """One member of a newc archive; ``data`` is the content or a symlink's target."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc_archive(entries: Iterable[CpioEntry]) -> bytes:
    """A newc ("070701") cpio archive, owned by root, mtime 0, with the trailer."""
    out = bytearray()
    for ino, entry in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = entry.name.lstrip("/").encode() + b"\0"
        trailer = entry.name == "TRAILER!!!"
        fields = (
            0 if trailer else ino, entry.mode, 0, 0, 2 if stat.S_ISDIR(entry.mode) else 1, 0,
            len(entry.data), 0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
        )
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out += header + name + _pad4(len(header) + len(name))
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)


def _initramfs_entries(agent: bytes, modules: dict[str, bytes]) -> list[CpioEntry]:
    applets = _query([str(BUSYBOX), "--list-full"], "apt-get install busybox-static").split()
    links = sorted(a for a in applets if a != "bin/busybox")
    dirs = {"bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run",
            "root", "etc", "lib", "lib/modules"}
    dirs |= {str(Path(a).parent) for a in links}
    entries = [CpioEntry(d, stat.S_IFDIR | 0o755) for d in sorted(dirs)]
    entries += [
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
        CpioEntry("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes()),
        CpioEntry("init", stat.S_IFREG | 0o755, (SRC_DIR / "init").read_bytes()),
        CpioEntry("sbin/colo-agent", stat.S_IFREG | 0o755, agent),
    ]
    entries += [CpioEntry(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, data)
                for name, data in modules.items()]
    entries += [CpioEntry(a, stat.S_IFLNK | 0o777, b"/bin/busybox") for a in links]
    return entries


def _build_into(entry: Path, kernel_pkg: str, kernel_ver: str, deadline: float) -> None:
    """Fill ``entry``; the unpacked package is deleted even on failure, the log kept."""
    work = entry / "work"
    work.mkdir()
    try:
        _build_steps(entry, work, kernel_pkg, kernel_ver, _BuildLog(entry / "build.log", deadline))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_steps(entry: Path, work: Path, kernel_pkg: str, kernel_ver: str,
                 log: _BuildLog) -> None:
    started = time.monotonic()
    log.run(["apt-get", "download", f"{kernel_pkg}={kernel_ver}"], work,
            f"downloading {kernel_pkg} {kernel_ver}",
            "check access to the Debian mirror, or run apt-get update")
    debs = sorted(work.glob("*.deb"))
    if not debs:
        raise GuestBuildError(f"apt-get download left no .deb in {work}; log: {log.path}")
    log.run(["dpkg-deb", "-x", str(debs[0]), "root"], work, "unpacking the kernel package",
            "apt-get install dpkg")
    vmlinuz, release, modules = _collect_kernel(work / "root", log)
    shutil.copyfile(vmlinuz, entry / "vmlinuz")
    log.run(["gcc", *AGENT_CFLAGS, "-o", str(work / "colo-agent"), str(SRC_DIR / "agent.c")],
            work, "compiling colo-agent", "apt-get install gcc libc6-dev")
    archive = newc_archive(_initramfs_entries((work / "colo-agent").read_bytes(), modules))
    (entry / "initrd.img").write_bytes(gzip.compress(archive, compresslevel=9, mtime=0))
    manifest = {
        "kernel_package": kernel_pkg, "kernel_package_version": kernel_ver,
        "kernel_version": release, "modules": sorted(modules),
        "modules_not_loadable": [m for m in MODULES if m not in modules],
        "initrd_bytes": (entry / "initrd.img").stat().st_size,
        "build_seconds": round(time.monotonic() - started, 2),
    }
    (entry / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.note(f"built in {manifest['build_seconds']}s: {json.dumps(manifest)}")


def build_guest(cache_dir: Path | None = None, timeout: float = 1800) -> GuestImage:
    """Build (once, cached, under the cache lock) or find the guest image.

    The log is ``<entry>/build.log``. Raises GuestBuildError (one line naming what failed
    and how to fix it) on failure.
    """
    cache_dir = cache_dir or default_cache_dir()
    deadline = time.monotonic() + timeout
    kernel_pkg, kernel_ver = _resolve_kernel_cached(cache_dir)
    key = _cache_key(kernel_pkg, kernel_ver, _busybox_version(), _gcc_version())
    try:
        entry = cached_build(
            cache_dir, "guest", key,
            lambda d: _build_into(d, kernel_pkg, kernel_ver, deadline), timeout=timeout,
        )
    except CacheError as e:
        raise GuestBuildError(_one_line(str(e))) from e
    except OSError as e:
        raise GuestBuildError(f"guest build failed: {_one_line(str(e))}") from e
    manifest = json.loads((entry / "manifest.json").read_text())
    return GuestImage(entry / "vmlinuz", entry / "initrd.img", key, manifest["kernel_version"])


def kernel_cmdline(ip_cidr: str, port: int = AGENT_PORT, gateway: str | None = None,
                   membuf_mib: int = 8, nic_resets: int = 0) -> str:
    """Kernel command line for the guest: serial console, reboot on panic, agent settings;
    ``nic_resets``: /init resets and re-probes virtio-net that often before using it."""
    if "/" not in ip_cidr:
        raise ValueError(f"ip_cidr needs a prefix length, e.g. 10.0.2.15/24: {ip_cidr!r}")
    iface = ipaddress.IPv4Interface(ip_cidr)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    if membuf_mib < 1:
        raise ValueError(f"membuf_mib must be >= 1: {membuf_mib}")
    if nic_resets < 0:
        raise ValueError(f"nic_resets must be >= 0: {nic_resets}")
    args = ["console=ttyS0", "panic=-1", "loglevel=4", f"colo.ip={iface.with_prefixlen}",
            f"colo.port={port}", f"colo.membuf={membuf_mib}"]
    if gateway is not None:
        args.append(f"colo.gw={ipaddress.IPv4Address(gateway)}")
    if nic_resets:
        args.append(f"colo.nicreset={nic_resets}")
    return " ".join(args)
