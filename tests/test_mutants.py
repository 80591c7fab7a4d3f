"""The mutation suite: each mutant of ``patches/mutants/`` (one injected COLO bug, built on
the kept tree of the series + the RAM digest patch) must make its suite test fail with the
verdict of its kind, neither hang nor be excused by a known issue.

``make test`` runs the mutants marked ``Fast: yes``; ``COLO_MUTANTS=all`` (the nightly) runs
every one, ``COLO_MUTANTS=name,name`` those, ``none`` none. Each outcome is appended to
``reports/mutants.jsonl`` (``COLO_MUTANT_RESULTS``; ``tools/mutants`` prints the score
table from it).
"""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from child_pytest import run_child

from colo_fixtures.config.settings import DEFAULT_PATCHES, RAMCHECK_PATCHES, default_cache_dir
from colo_fixtures.core import verdicts
from colo_fixtures.core.verdicts import qualified_name
from colo_fixtures.sut.build import BuildError, QemuBuild, provide_qemu
from colo_fixtures.sut.mutants import (
    KINDS,
    Mutant,
    build_mutant,
    load_mutants,
    parse_mutant,
    patch_digest,
)

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = load_mutants(ROOT / "patches" / "mutants")
CHILD_TIMEOUT = 900  # seconds: a mutant run longer than this hung
RESULTS = Path(os.environ.get("COLO_MUTANT_RESULTS", ROOT / "reports" / "mutants.jsonl"))


def selected(mutants: list[Mutant], choice: str) -> list[Mutant]:
    """The mutants ``COLO_MUTANTS`` asks for: the fast ones (empty), all, or names."""
    if not choice:
        return [m for m in mutants if m.fast]
    if choice == "all":
        return mutants
    if choice == "none":
        return []
    names = {m.name: m for m in mutants}
    unknown = [n for n in choice.split(",") if n not in names]
    if unknown:
        raise pytest.UsageError(f"COLO_MUTANTS: no mutant {', '.join(unknown)} in "
                                f"patches/mutants/ (known: {', '.join(names)})")
    return [names[n] for n in choice.split(",")]


def failure_type(junit: Path) -> tuple[str, str]:
    """The verdict type name and the first line of the child run's first failure or error."""
    for case in ET.parse(junit).getroot().iter("testcase"):
        for problem in (*case.iter("failure"), *case.iter("error")):
            message = problem.get("message", "")
            return message.split(":", 1)[0], message.splitlines()[0][:300] if message else ""
    return "", ""


def test_every_mutant_names_a_verdict_and_a_suite_test():
    kinds = {m.kind for m in MUTANTS}
    assert len(MUTANTS) >= 8 and len(kinds) >= 8, sorted(kinds)
    for mutant in MUTANTS:
        assert isinstance(getattr(verdicts, mutant.verdict, None), type), mutant
        # tools/nightly checks --mutants names against the file names, before the venv
        assert mutant.patch.stem.split("-", 1)[1] == mutant.name, mutant.patch
        path, _, name = mutant.test.partition("::")
        assert (ROOT / path).is_file() and f"def {name.split('[')[0]}(" in (
            ROOT / path).read_text(), mutant


def test_a_mutant_without_its_header_is_refused(tmp_path: Path):
    patch = tmp_path / "99-x.patch"
    patch.write_text("Mutant: x\nKind: colo-compare\n\n--- a/f\n+++ b/f\n")
    with pytest.raises(BuildError, match="header lacks Injects, Test, Verdict, Fast"):
        parse_mutant(patch)
    patch.write_text("Mutant: x\nKind: nic\nInjects: a\nTest: t\nVerdict: V\nFast: no\n")
    with pytest.raises(BuildError, match=f"Kind 'nic' is none of {KINDS[0]}"):
        parse_mutant(patch)


@pytest.fixture(scope="module")
def mutant_base() -> QemuBuild:
    """The series + RAM digest build, its tree kept (the same key as --colo-ramcheck's)."""
    return provide_qemu(None, None, DEFAULT_PATCHES, default_cache_dir(), RAMCHECK_PATCHES,
                        keep_tree=True)


def record(mutant: Mutant, **outcome: object) -> None:
    """Append one outcome to RESULTS, keyed by the mutant's patch (a later edit of it makes
    this outcome stale for tools/mutants)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as results:
        results.write(json.dumps({
            "mutant": mutant.name, "kind": mutant.kind, "test": mutant.test,
            "wanted": mutant.verdict, "patch": patch_digest(mutant.patch), **outcome,
            "at": time.strftime("%FT%T")}) + "\n")


@pytest.mark.timeout(3600)  # a cold base tree, the mutant's build, then its suite test
@pytest.mark.parametrize("mutant", selected(MUTANTS, os.environ.get("COLO_MUTANTS", "")),
                         ids=lambda m: m.name)
def test_mutant_is_caught_with_its_verdict(mutant: Mutant, mutant_base: QemuBuild,
                                           tmp_path: Path):
    started = time.monotonic()
    try:
        binary = build_mutant(mutant_base, mutant, default_cache_dir())
    except BuildError as exc:  # recorded: an old "caught" must not outlive a broken mutant
        record(mutant, found="BuildError", caught=False, hung=False, excused=False,
               build_s=round(time.monotonic() - started, 1), run_s=0.0,
               message=str(exc).splitlines()[0][:300])
        raise
    built_s = time.monotonic() - started
    junit = tmp_path / "junit.xml"
    # the child's own pytest-timeout fires first: a hang gets its diagnosis and teardown
    returncode, output, run_s = run_child(
        tmp_path, mutant.test, "--qemu-binary", str(binary), "--colo-ramcheck",
        f"--junitxml={junit}", f"--timeout={CHILD_TIMEOUT - 120}", timeout=CHILD_TIMEOUT)
    found, first_line = failure_type(junit) if junit.exists() else ("", "")
    wanted = qualified_name(getattr(verdicts, mutant.verdict))
    caught = returncode == 1 and found == wanted
    excused = " xfailed" in output  # a known issue excused it: never for an injected bug
    record(mutant, found=found.rsplit(".", 1)[-1] or None, caught=caught,
           hung=returncode is None, excused=excused, build_s=round(built_s, 1),
           run_s=round(run_s, 1), message=first_line)
    assert returncode is not None, f"{mutant.name}: {mutant.test} hung ({CHILD_TIMEOUT}s)"
    assert returncode == 1, (f"{mutant.name} ({mutant.injects}) "
                             f"{'was excused by a known issue' if excused else 'went unnoticed'}"
                             f": {mutant.test} exited {returncode}\n{output[-3000:]}")
    assert found == wanted, (f"{mutant.name} caught with the wrong diagnosis: {first_line!r}, "
                             f"wanted {mutant.verdict}\n{output[-3000:]}")
