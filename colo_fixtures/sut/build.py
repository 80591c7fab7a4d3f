"""Provide a qemu-system-x86_64: a given binary, a built tree, or Debian's 7.2 source patched.

Builds are cached by a hash of their inputs (source, patches, configure flags) in
the harness cache, under a lock, so parallel runs and xdist workers share one build.
Only the binary and the build log are kept; the source and object trees are deleted
after a successful build, except for a build asked to keep them (``keep_tree``: the base of
the mutants, ``colo_fixtures.sut.mutants``, rebuilt incrementally).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from colo_fixtures.sut.cache import DONE, cached_build, hash_parts, hash_tree

CONFIGURE_FLAGS: tuple[str, ...] = (
    "--target-list=x86_64-softmmu",
    "--without-default-features",
    "--enable-tcg",
    "--enable-kvm",
    "--enable-replication",
    "--enable-rdma",  # rdma: migration (the seed's qemu_rdma_* debug step); rdma-core libs
    "--enable-slirp",
    "--enable-fdt=system",
    "--disable-docs",
    "--disable-werror",
    "--enable-trace-backends=log",
)
# Firmware from Debian's qemu-system-data, seabios and ipxe-qemu packages.
FIRMWARE_DIRS: tuple[str, ...] = ("/usr/share/qemu", "/usr/share/seabios", "/usr/lib/ipxe/qemu")
BINARY_NAME = "qemu-system-x86_64"

REQUIRED_OBJECTS = ("colo-compare", "filter-mirror", "filter-redirector", "filter-rewriter",
                    "iothread")
REQUIRED_FORMATS = ("quorum", "replication", "nbd", "qcow2", "raw")
REQUIRED_TRACE_PREFIXES = ("colo_",)


class BuildError(RuntimeError):
    """A build failed; ``log`` is the kept build log."""

    def __init__(self, message: str, log: Path | None = None):
        super().__init__(message + (f" (log: {log})" if log else ""))
        self.log = log


@dataclass(frozen=True)
class QemuBuild:
    """A usable QEMU binary and where it came from."""

    binary: Path
    origin: str
    key: str = ""
    log: Path | None = None
    patches: tuple[str, ...] = ()
    ram_digests: bool = False  # traces colo_ram_digest (patches/qemu-7.2-ramcheck)
    tree: Path | None = None  # the kept cache entry whose src/ holds the built tree

    def firmware_args(self) -> list[str]:
        """``-L`` arguments for firmware of a binary built with a non-Debian datadir."""
        args: list[str] = []
        for directory in FIRMWARE_DIRS:
            if Path(directory).is_dir():
                args += ["-L", directory]
        return args


@dataclass(frozen=True)
class QemuCapabilities:
    """What a binary can do, probed once from its help output."""

    version: str
    objects: frozenset[str] = field(default_factory=frozenset)
    formats: frozenset[str] = field(default_factory=frozenset)
    trace_events: frozenset[str] = field(default_factory=frozenset)

    def missing(self) -> list[str]:
        """Human-readable list of COLO prerequisites this binary lacks."""
        gaps = [f"object {name}" for name in REQUIRED_OBJECTS if name not in self.objects]
        gaps += [f"block driver {name}" for name in REQUIRED_FORMATS if name not in self.formats]
        for prefix in REQUIRED_TRACE_PREFIXES:
            if not any(event.startswith(prefix) for event in self.trace_events):
                gaps.append(f"trace events {prefix}*")
        return gaps


def patch_series(patch_dir: Path) -> list[Path]:
    """Patches in order: as listed in ``series`` if present, else sorted ``*.patch``."""
    series = patch_dir / "series"
    if series.is_file():
        names = [line.strip() for line in series.read_text().splitlines()]
        names = [name for name in names if name and not name.startswith("#")]
        missing = [name for name in names if not (patch_dir / name).is_file()]
        if missing:
            raise BuildError(f"{series} lists missing patch(es): {', '.join(missing)}")
        return [patch_dir / name for name in names]
    return sorted(patch_dir.glob("*.patch"))


def probe_capabilities(binary: Path, timeout: float = 30) -> QemuCapabilities:
    """Ask the binary for its version, user-creatable objects, block formats and trace events."""

    def ask(*args: str) -> str:
        try:
            result = subprocess.run([str(binary), *args], capture_output=True, text=True,
                                    timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"cannot run {binary} {' '.join(args)}: {exc}") from None
        return result.stdout + result.stderr

    version_text = ask("--version")
    match = re.search(r"version (\S+)", version_text)
    if not match:
        raise BuildError(f"{binary} --version printed no version: {version_text.strip()[:200]}")
    objects = {line.strip() for line in ask("-object", "help").splitlines()[1:]}
    formats_line = next((line for line in ask("-drive", "format=help").splitlines()
                         if line.startswith("Supported formats:")), "")
    formats = set(formats_line.split(":", 1)[1].split()) if formats_line else set()
    events = {line.strip() for line in ask("-trace", "help").splitlines()}
    return QemuCapabilities(match.group(1), frozenset(objects), frozenset(formats),
                            frozenset(events))


def debian_source_version(package: str = "qemu-system-x86") -> str:
    """Source version of Debian's installed QEMU (the patched build matches the stock binary)."""
    try:
        result = subprocess.run(["dpkg-query", "-W", "-f=${source:Version}", package],
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise BuildError(f"{package} is not installed: run tools/bootstrap "
                         f"(or apt-get install {package})") from None
    return result.stdout.strip()


def run_logged(argv: list[str], log: Path, cwd: Path, what: str,
                env: dict[str, str] | None = None) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(argv)}    (in {cwd})\n")
        out.flush()
        result = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, check=False,
                                env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise BuildError(f"{what} failed (exit {result.returncode}): {first_error(log)}", log)


def first_error(log: Path) -> str:
    """The first compiler/configure/patch error line of a build log, for a one-line report."""
    patterns = (r"error:", r"ERROR:", r"FAILED:", r"Hunk #\d+ FAILED", r"can't find file",
                r"^E: ", r"No such file", r"multiple definition of", r"undefined reference",
                r"\*\*\* .*Error \d+")
    lines = log.read_text(errors="replace").splitlines()
    for line in lines:
        if any(re.search(pattern, line) for pattern in patterns):
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "empty log"


def apply_patches(tree: Path, patches: list[Path], log: Path) -> None:
    """Apply each patch with ``patch -p1``; one that does not apply is a BuildError naming it."""
    for patch in patches:
        try:
            run_logged(["patch", "-p1", "--forward", "--batch", "-i", str(patch)], log, tree,
                        f"patch {patch.name}")
        except BuildError as exc:
            raise BuildError(f"{patch.name} does not apply to {tree.name}: "
                             f"{first_error(log)}", log) from exc


def compile_qemu(src: Path, entry: Path, patches: list[Path], keep_tree: bool = False) -> None:
    """Copy ``src`` into ``entry``, patch, configure, build; keep the binary and build.log
    (and the patched, built tree in ``entry/src`` with ``keep_tree``)."""
    log = entry / "build.log"
    log.write_text(f"QEMU build started {time.strftime('%F %T')}\nsource: {src}\n"
                   f"patches: {[p.name for p in patches]}\nflags: {' '.join(CONFIGURE_FLAGS)}\n")
    tree = entry / "src"
    shutil.copytree(src, tree, symlinks=True, ignore=shutil.ignore_patterns(".git", "build"))
    apply_patches(tree, patches, log)
    build_dir = tree / "build"
    build_dir.mkdir()
    run_logged(["../configure", *CONFIGURE_FLAGS], log, build_dir, "configure")
    jobs = str(os.cpu_count() or 2)
    run_logged(["ninja", "-j", jobs, BINARY_NAME], log, build_dir, "ninja")
    shutil.copy2(build_dir / BINARY_NAME, entry / BINARY_NAME)
    if not keep_tree:
        shutil.rmtree(tree)


def copy_build(tree_entry: Path, entry: Path) -> None:
    """A binary entry from a kept tree's build (no second compile)."""
    shutil.copy2(tree_entry / BINARY_NAME, entry / BINARY_NAME)
    shutil.copy2(tree_entry / "build.log", entry / "build.log")


def fetch_debian_source(version: str, cache_dir: Path) -> Path:
    """Debian's QEMU source tree for ``version`` (with Debian's patches), cached."""

    def fetch(entry: Path) -> None:
        log = entry / "fetch.log"
        log.touch()
        run_logged(["apt-get", "source", "--download-only", "-q", f"qemu={version}"], log,
                    entry, f"apt-get source qemu={version} (does tools/bootstrap's deb-src "
                    "entry exist? run tools/bootstrap)")
        dsc = next(entry.glob("*.dsc"))
        run_logged(["dpkg-source", "--no-check", "-x", dsc.name, "tree"], log, entry,
                    "dpkg-source -x")

    return cached_build(cache_dir, "qemu-src", hash_parts([version]), fetch) / "tree"


def build_qemu(source: Path, patches: list[Path], cache_dir: Path, source_id: str,
               keep_tree: bool = False) -> QemuBuild:
    """Build ``source`` with ``patches`` once per content hash (``source_id``: its hash).
    With ``keep_tree`` the built tree stays in the cache (kind ``qemu-tree``, same key) and
    the binary is copied from it; a tree kept earlier also serves a build without."""
    key = hash_parts([source_id, *[p.name + "\0" + p.read_text() for p in patches],
                      *CONFIGURE_FLAGS])
    tree_entry = cache_dir / "qemu-tree" / key
    if keep_tree:
        tree_entry = cached_build(cache_dir, "qemu-tree", key,
                                  lambda e: compile_qemu(source, e, patches, keep_tree=True))
    if (tree_entry / DONE).exists():
        entry = cached_build(cache_dir, "qemu", key, lambda e: copy_build(tree_entry, e))
    else:
        entry = cached_build(cache_dir, "qemu", key, lambda e: compile_qemu(source, e, patches))
    return QemuBuild(entry / BINARY_NAME, f"build of {source}", key, entry / "build.log",
                     tuple(p.name for p in patches), tree=tree_entry if keep_tree else None)


def provide_qemu(qemu_binary: Path | None, qemu_src: Path | None, patch_dir: Path,
                 cache_dir: Path, extra_patches: Path | None = None,
                 keep_tree: bool = False) -> QemuBuild:
    """The binary the settings ask for: given, built from a tree, or Debian's source patched
    (with ``patch_dir``'s series, then ``extra_patches``'s, if given); ``keep_tree``: see
    ``build_qemu``."""
    if qemu_binary is not None:
        return QemuBuild(qemu_binary, f"given binary {qemu_binary}")
    patches = patch_series(patch_dir) + (patch_series(extra_patches) if extra_patches else [])
    if qemu_src is not None:
        source_id = hash_tree(qemu_src, ignore=lambda rel: rel.parts[0] in (".git", "build"))
        return build_qemu(qemu_src, patches, cache_dir, source_id, keep_tree)
    version = debian_source_version()
    tree = fetch_debian_source(version, cache_dir)
    dsc = next(tree.parent.glob("*.dsc"))
    build = build_qemu(tree, patches, cache_dir, dsc.read_text(), keep_tree)
    return dataclasses.replace(build,
                               origin=f"Debian qemu {version} + {len(patches)} patch(es)")
