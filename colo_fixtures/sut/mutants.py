"""Mutants: QEMU builds with one small injected COLO bug each, to measure what the suites catch.

A mutant is one patch in ``patches/mutants/`` whose header names what it breaks and how the
suites must catch it::

    Mutant: compare-payload-always-differs
    Kind: colo-compare
    Injects: every TCP/UDP/ICMP payload compares as different
    Test: suites/test_checkpoint.py::test_deterministic_replies_never_miscompare
    Verdict: SpuriousMiscompare
    Fast: yes

It is built on top of a kept, built tree (``build_qemu(keep_tree=True)``): the patch is
applied in that tree, ninja recompiles what it touched and relinks, the binary is cached by
(base key, patch), and the patch is reversed. Builds on one tree take turns under its lock;
a build killed half-way leaves a marker, and the next one reverses its patch first.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from colo_fixtures.sut.build import BINARY_NAME, BuildError, QemuBuild, first_error, run_logged
from colo_fixtures.sut.cache import cached_build, file_lock, hash_parts

FIELDS = ("Mutant", "Kind", "Injects", "Test", "Verdict", "Fast")
KINDS = ("colo-compare", "filter-rewriter", "filter-mirror", "filter-redirector",
         "RAM transfer (primary)", "RAM restore (secondary)", "replication (primary)",
         "replication (secondary)", "checkpoint timing", "failover")
MARKER = "MUTATED"  # in the tree entry: the name of the mutant applied, while it is


@dataclass(frozen=True)
class Mutant:
    """One injected bug and the diagnosis that must catch it."""

    name: str
    kind: str
    injects: str
    test: str  # the suite test (pytest node id) that must fail
    verdict: str  # the verdict type's name (colo_fixtures.core.verdicts) it must fail with
    fast: bool  # part of ``make test``; the others run in the nightly
    patch: Path


def parse_mutant(patch: Path) -> Mutant:
    """The mutant a patch file describes; a header field missing or wrong is a BuildError."""
    header = patch.read_text().split("\n---", 1)[0]
    fields = dict(re.findall(r"^(\w+): *(.+?) *$", header, re.M))
    missing = [name for name in FIELDS if name not in fields]
    if missing:
        raise BuildError(f"{patch}: header lacks {', '.join(missing)} (see "
                         "colo_fixtures/sut/mutants.py for the format)")
    if fields["Kind"] not in KINDS:
        raise BuildError(f"{patch}: Kind {fields['Kind']!r} is none of {', '.join(KINDS)}")
    if fields["Fast"] not in ("yes", "no"):
        raise BuildError(f"{patch}: Fast must be yes or no, not {fields['Fast']!r}")
    return Mutant(fields["Mutant"], fields["Kind"], fields["Injects"], fields["Test"],
                  fields["Verdict"], fields["Fast"] == "yes", patch)


def load_mutants(directory: Path) -> list[Mutant]:
    """Every ``*.patch`` of ``directory``, in name order."""
    return [parse_mutant(p) for p in sorted(directory.glob("*.patch"))]


def patch_digest(patch: Path) -> str:
    """A short digest of a mutant's patch file: which version of it an outcome is of."""
    return hash_parts([patch.read_text()])


def build_mutant(base: QemuBuild, mutant: Mutant, cache_dir: Path) -> Path:
    """The mutant's binary, built once on ``base``'s kept tree; its path."""
    if base.tree is None:
        raise BuildError(f"mutant {mutant.name}: the base build {base.key} kept no tree "
                         "(build it with keep_tree=True)")
    key = hash_parts([base.key, mutant.patch.name, mutant.patch.read_text()])
    entry = cached_build(cache_dir, "qemu", key,
                         lambda e: _build_on_tree(base.tree, mutant, e))  # type: ignore[arg-type]
    return entry / BINARY_NAME


def _build_on_tree(tree_entry: Path, mutant: Mutant, entry: Path) -> None:
    tree, log = tree_entry / "src", entry / "build.log"
    log.write_text(f"mutant {mutant.name} on {tree_entry}, started {time.strftime('%F %T')}\n")
    with file_lock(tree_entry / "mutate.lock", 3600, "mutant build"):
        _restore(tree_entry, log)
        shutil.copy(mutant.patch, tree_entry / f"{MARKER}.patch")
        (tree_entry / MARKER).write_text(mutant.name + "\n")
        try:
            run_logged(["patch", "-p1", "--forward", "--batch", "-i", str(mutant.patch)], log,
                       tree, f"mutant {mutant.name}: patch")
            jobs = str(os.cpu_count() or 2)
            run_logged(["ninja", "-j", jobs, BINARY_NAME], log, tree / "build",
                       f"mutant {mutant.name}: ninja")
            shutil.copy2(tree / "build" / BINARY_NAME, entry / BINARY_NAME)
        finally:
            _restore(tree_entry, log)


def _restore(tree_entry: Path, log: Path) -> None:
    """Reverse the mutant patch a build left applied (or half-applied), if any."""
    marker, patch = tree_entry / MARKER, tree_entry / f"{MARKER}.patch"
    if not marker.exists():
        return
    tree = tree_entry / "src"
    # --forward: a patch that looks not applied is refused, never applied (--batch alone
    # would take it for a reversed patch and apply it)
    reverse = ["patch", "-p1", "-R", "--forward", "--batch", "-i", str(patch)]
    if run_logged_ok([*reverse, "--dry-run"], log, tree):
        run_logged(reverse, log, tree, f"reverse {marker.read_text().strip()}")
    elif not run_logged_ok(["patch", "-p1", "--forward", "--dry-run", "--batch", "-i",
                            str(patch)], log, tree):
        raise BuildError(f"the tree {tree} is left half-mutated by "
                         f"{marker.read_text().strip()} ({first_error(log)}); delete "
                         f"{tree_entry} to rebuild it", log)
    marker.unlink()
    patch.unlink()


def run_logged_ok(argv: list[str], log: Path, cwd: Path) -> bool:
    """Whether ``argv`` succeeds (its output appended to ``log``)."""
    try:
        run_logged(argv, log, cwd, argv[0])
    except BuildError:
        return False
    return True
