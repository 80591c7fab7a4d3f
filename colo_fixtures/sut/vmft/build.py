"""Build a vm-ft tree: rdma-paxos's ``libinterpose.so``, then the vm-ft QEMU linked with it.

The lab owns its vm-ft tree; the harness owns the mechanism and ships none of vm-ft's code,
patches or recipes. What differs between toolchains is data the user supplies:

- a patch directory (``--vmft-patches``), applied with ``patch -p1`` to a copy of the tree
  in the build cache, never to the user's tree;
- extra C flags (``--vmft-cflags``, default ``-fcommon`` for gcc >= 10). rdma-paxos's
  makefiles call ``gcc`` by name, so the flags reach it through a ``gcc``/``cc`` wrapper
  placed first on ``PATH``; QEMU gets them through ``--extra-cflags``;
- the Python 2 that QEMU 2.5's configure needs (``--python2``);
- extra configure flags (``--vmft-configure``, default ``--disable-guest-agent``).

The seed's steps, in order: ``make`` (serially) in ``rdma-paxos/target``, then in ``qemu/``
``./configure`` with the seed's flags and ``make``. The result is cached by a hash of the
tree, the patches and every flag, like the QEMU build; the built tree stays in the cache
because vm-ft runs from it (``qemu/`` as working directory, ``LD_LIBRARY_PATH`` on
``rdma-paxos/target``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from colo_fixtures.sut.build import BuildError, apply_patches, patch_series, run_logged
from colo_fixtures.sut.cache import cached_build, hash_parts, hash_tree

PAXOS_TARGET = Path("rdma-paxos/target")
RSM_INCLUDE = Path("rdma-paxos/src/include/rsm-interface")
LIBNL_INCLUDE = "/usr/include/libnl3"
LIBINTERPOSE = "libinterpose.so"
QEMU_BINARY = Path("qemu/x86_64-softmmu/qemu-system-x86_64")
# Build outputs and VCS data that do not define the tree's content.
IGNORED_PARTS = {".git", "__pycache__"}
IGNORED_SUFFIXES = {".o", ".d", ".so", ".a"}


def seed_configure_flags(tree: Path, cflags: tuple[str, ...]) -> list[str]:
    """The seed's configure line for the vm-ft QEMU, with paths into ``tree``."""
    ldflags = ("-Wl,--no-as-needed -lnl-3 -lnl-cli-3 -lnl-route-3 -lnl-3 -lnl-cli-3 "
               f"-lnl-route-3 -L{tree / PAXOS_TARGET} -linterpose")
    include = f"-I{tree / RSM_INCLUDE} -I{LIBNL_INCLUDE}"
    return ["--disable-werror", "--target-list=x86_64-softmmu",
            f"--extra-ldflags={ldflags}", f"--extra-cflags={' '.join((include, *cflags))}"]


@dataclass(frozen=True)
class VmftBuild:
    """A built vm-ft tree in the cache."""

    tree: Path  # the patched, built copy: qemu/, rdma-paxos/
    key: str
    log: Path
    patches: tuple[str, ...] = ()

    @property
    def qemu_binary(self) -> Path:
        return self.tree / QEMU_BINARY

    @property
    def library_dir(self) -> Path:
        """Where ``libinterpose.so`` is (``LD_LIBRARY_PATH`` at run time)."""
        return self.tree / PAXOS_TARGET

    @property
    def firmware_dir(self) -> Path:
        return self.tree / "qemu" / "pc-bios"


def check_tree(root: Path) -> None:
    """A vm-ft checkout has ``qemu/configure`` and ``rdma-paxos/target``; BuildError if not."""
    missing = [str(p) for p in (Path("qemu/configure"), PAXOS_TARGET) if not (root / p).exists()]
    if missing:
        raise BuildError(f"{root} is not a vm-ft tree: missing {', '.join(missing)} "
                         "(point --vmft-root / VMFT_ROOT at the checkout holding qemu/ and "
                         "rdma-paxos/)")


def python2_version(python: Path) -> str:
    """``major.minor`` of ``python``; BuildError if it does not run."""
    probe = "import sys; sys.stdout.write('%d.%d' % sys.version_info[:2])"
    try:
        result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                                timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"{python} does not run: {exc}") from None
    if result.returncode != 0:
        said = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"{python} does not run (exit {result.returncode}): {said[:200]}")
    return result.stdout.strip()


def find_python2(given: Path | None) -> Path:
    """The Python 2 for QEMU 2.5's configure: ``given``, else python2/python2.7 on PATH."""
    if given:
        version = python2_version(given)
        if not version.startswith("2."):
            raise BuildError(f"--python2 {given} is Python {version}, not 2.x: QEMU 2.5's "
                             "configure needs Python 2")
        return given
    for name in ("python2", "python2.7"):
        found = shutil.which(name)
        with suppress(BuildError):  # e.g. a pyenv shim with no 2.x behind it
            if found and python2_version(Path(found)).startswith("2."):
                return Path(found)
    raise BuildError("no Python 2 on PATH: QEMU 2.5's configure needs one; Debian 12 has no "
                     "python2 package, so build 2.7 (e.g. pyenv install 2.7.18) and pass "
                     "--python2 PATH")


def write_compiler_wrappers(bin_dir: Path, cflags: tuple[str, ...]) -> None:
    """``gcc`` and ``cc`` scripts that run the real compiler with ``cflags`` appended."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("gcc", "cc"):
        real = shutil.which(name)
        if real is None:
            raise BuildError(f"{name} not found: apt-get install build-essential")
        script = bin_dir / name
        script.write_text("#!/bin/sh\n# written by the COLO harness: extra flags for vm-ft\n"
                          f"exec {shlex.quote(real)} \"$@\" {shlex.join(cflags)}\n")
        script.chmod(0o755)


def compile_vmft(src: Path, entry: Path, patches: list[Path], cflags: tuple[str, ...],
                 configure: tuple[str, ...], python2: Path) -> None:
    """Copy, patch, build rdma-paxos then QEMU into ``entry``; the log is ``entry/build.log``."""
    log = entry / "build.log"
    log.write_text(f"vm-ft build started {time.strftime('%F %T')}\nsource: {src}\n"
                   f"patches: {[p.name for p in patches]}\ncflags: {' '.join(cflags)}\n"
                   f"python2: {python2}\n")
    tree = entry / "tree"
    shutil.copytree(src, tree, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    apply_patches(tree, patches, log)
    wrappers = entry / "bin"
    write_compiler_wrappers(wrappers, cflags)
    env = {"PATH": f"{wrappers}{os.pathsep}{os.environ.get('PATH', '')}"}
    run_logged(["make", "-j1"], log, tree / PAXOS_TARGET, "rdma-paxos make", env)
    if not (tree / PAXOS_TARGET / LIBINTERPOSE).exists():
        raise BuildError(f"rdma-paxos make left no {PAXOS_TARGET / LIBINTERPOSE}", log)
    qemu = tree / "qemu"
    run_logged(["./configure", f"--python={python2}", *seed_configure_flags(tree, cflags),
                *configure], log, qemu, "vm-ft QEMU configure", env)
    run_logged(["make", "-j", str(os.cpu_count() or 2)], log, qemu, "vm-ft QEMU make", env)
    if not (tree / QEMU_BINARY).exists():
        raise BuildError(f"vm-ft QEMU make left no {QEMU_BINARY}", log)


def _ignored(rel: Path) -> bool:
    return bool(IGNORED_PARTS.intersection(rel.parts)) or rel.suffix in IGNORED_SUFFIXES


def build_vmft(root: Path, cache_dir: Path, patch_dir: Path | None = None,
               cflags: tuple[str, ...] = ("-fcommon",),
               configure: tuple[str, ...] = ("--disable-guest-agent",),
               python2: Path | None = None) -> VmftBuild:
    """Build ``root`` (a vm-ft checkout) once per content hash; BuildError with the first
    error line and the kept log when a step fails."""
    check_tree(root)
    patches = patch_series(patch_dir) if patch_dir is not None else []
    interpreter = find_python2(python2)
    key = hash_parts([hash_tree(root, ignore=_ignored),
                      *[p.name + "\0" + p.read_text() for p in patches],
                      *cflags, "\0", *configure, str(interpreter)])
    entry = cached_build(cache_dir, "vmft", key, lambda e: compile_vmft(
        root, e, patches, cflags, configure, interpreter))
    return VmftBuild(entry / "tree", key, entry / "build.log", tuple(p.name for p in patches))
