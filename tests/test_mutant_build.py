"""Mutant builds on a kept tree, for real (patch, ninja, cc) on a tiny tree: the patch is
applied, only its file rebuilt, the binary cached, the tree restored; a build killed while
its mutant was applied is undone by the next one. And the score table from outcomes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from child_pytest import run_child

from colo_fixtures.report.mutation import read_outcomes, score_table, verdict_of
from colo_fixtures.sut.build import BINARY_NAME, BuildError, QemuBuild
from colo_fixtures.sut.cache import DONE
from colo_fixtures.sut.mutants import MARKER, Mutant, _restore, build_mutant

HELLO = '#include <stdio.h>\nint main(void) { puts("healthy"); return 0; }\n'
NINJA = f"""rule cc
  command = cc -o $out $in
build {BINARY_NAME}: cc ../hello.c
"""


def kept_tree(tmp_path: Path) -> QemuBuild:
    """A cache entry like build_qemu(keep_tree=True)'s: src/ with a built build/ in it."""
    entry = tmp_path / "cache" / "qemu-tree" / "basekey"
    (entry / "src" / "build").mkdir(parents=True)
    (entry / "src" / "hello.c").write_text(HELLO)
    (entry / "src" / "build" / "build.ninja").write_text(NINJA)
    subprocess.run(["ninja"], cwd=entry / "src" / "build", check=True, capture_output=True)
    (entry / DONE).write_text("done\n")
    return QemuBuild(entry / "src" / "build" / BINARY_NAME, "test", "basekey", tree=entry)


def mutant(tmp_path: Path, text: str = "mutated") -> Mutant:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(exist_ok=True)
    b.mkdir(exist_ok=True)
    (a / "hello.c").write_text(HELLO)
    (b / "hello.c").write_text(HELLO.replace("healthy", text))
    diff = subprocess.run(["diff", "-u", "a/hello.c", "b/hello.c"], cwd=tmp_path,
                          capture_output=True, text=True).stdout
    patch = tmp_path / f"{text}.patch"
    patch.write_text(f"Mutant: {text}\n\n{diff}")
    return Mutant(text, "colo-compare", "prints another word", "suites/x.py::t", "LostWrite",
                  True, patch)


def run(binary: Path) -> str:
    return subprocess.run([str(binary)], capture_output=True, text=True).stdout.strip()


def test_a_mutant_is_built_on_the_tree_which_is_restored_after(tmp_path: Path):
    base = kept_tree(tmp_path)
    one, two = mutant(tmp_path, "first"), mutant(tmp_path, "second")
    built = build_mutant(base, one, tmp_path / "cache")
    assert run(built) == "first"
    assert run(build_mutant(base, two, tmp_path / "cache")) == "second"
    assert (base.tree / "src" / "hello.c").read_text() == HELLO  # type: ignore[operator]
    assert not (base.tree / MARKER).exists()  # type: ignore[operator]
    assert build_mutant(base, one, tmp_path / "cache") == built  # cached: same entry
    log = (built.parent / "build.log").read_text()
    assert "patching file hello.c" in log and "cc -o" in log and "-R" in log


def test_a_tree_left_mutated_by_a_killed_build_is_restored_first(tmp_path: Path):
    base = kept_tree(tmp_path)
    tree = base.tree
    assert tree is not None
    left = mutant(tmp_path, "left")
    subprocess.run(["patch", "-p1", "-i", str(left.patch)], cwd=tree / "src", check=True,
                   capture_output=True)
    (tree / f"{MARKER}.patch").write_text(left.patch.read_text())
    (tree / MARKER).write_text("left\n")
    assert run(build_mutant(base, mutant(tmp_path, "next"), tmp_path / "cache")) == "next"
    assert (tree / "src" / "hello.c").read_text() == HELLO


def test_a_tree_that_neither_patch_direction_fits_is_refused(tmp_path: Path):
    base = kept_tree(tmp_path)
    tree = base.tree
    assert tree is not None
    (tree / "src" / "hello.c").write_text("int main(void) { return 1; }\n")
    (tree / f"{MARKER}.patch").write_text(mutant(tmp_path, "gone").patch.read_text())
    (tree / MARKER).write_text("gone\n")
    with pytest.raises(BuildError, match=r"left half-mutated by gone .* delete"):
        _restore(tree, tmp_path / "restore.log")


def test_a_base_without_a_tree_is_refused(tmp_path: Path):
    with pytest.raises(BuildError, match="kept no tree"):
        build_mutant(QemuBuild(tmp_path / "q", "given"), mutant(tmp_path), tmp_path)


def outcome(name: str, **changes) -> dict:
    base = {"mutant": name, "kind": "colo-compare", "test": "suites/t.py::test_x",
            "wanted": "LostWrite", "found": "LostWrite", "caught": True, "hung": False,
            "excused": False, "build_s": 3.0, "run_s": 20.0}
    return {**base, **changes}


def test_the_score_table_keeps_the_latest_outcome_of_each_mutant(tmp_path: Path):
    path = tmp_path / "mutants.jsonl"
    lines = [outcome("b", caught=False, found="QemuError"), outcome("a"), outcome("b")]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    table = score_table(read_outcomes(path))
    assert table.splitlines()[2].startswith("| `a` | colo-compare | `test_x` | LostWrite | caught")
    assert "Mutation score: 2 of 2 caught" in table
    assert verdict_of(outcome("c", caught=False, found="QemuError")) == "wrong diagnosis"
    assert verdict_of(outcome("c", caught=False, found=None)) == "missed"
    assert verdict_of(outcome("c", caught=False, hung=True, found=None)) == "hung"
    assert verdict_of(outcome("c", caught=False, excused=True, found=None)) == "excused"
    stale = read_outcomes(path, {"a": "now", "b": "now"})
    assert [o["mutant"] for o in stale] == []  # no outcome carries today's patch digests
    lines[1]["patch"] = "now"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [o["mutant"] for o in read_outcomes(path, {"a": "now"})] == ["a"]
    path.write_text("not json\n")
    with pytest.raises(ValueError, match=r"mutants.jsonl:1: not a mutant outcome"):
        read_outcomes(path)


def test_a_child_run_past_its_time_is_stopped_and_reported_hung(tmp_path: Path):
    slow = tmp_path / "test_slow.py"
    slow.write_text("import time\n\ndef test_sleeps():\n    time.sleep(60)\n")
    returncode, output, seconds = run_child(tmp_path / "run", str(slow), timeout=5)
    assert returncode is None and seconds < 30, (returncode, seconds, output[-2000:])
    assert (tmp_path / "run" / "child-pytest.log").exists()


def test_a_marker_whose_patch_never_applied_leaves_the_tree_as_it_is(tmp_path: Path):
    """Killed between writing the marker and patching: reversing must not apply it."""
    base = kept_tree(tmp_path)
    tree = base.tree
    assert tree is not None
    (tree / f"{MARKER}.patch").write_text(mutant(tmp_path, "never").patch.read_text())
    (tree / MARKER).write_text("never\n")
    _restore(tree, tmp_path / "restore.log")
    assert (tree / "src" / "hello.c").read_text() == HELLO and not (tree / MARKER).exists()
