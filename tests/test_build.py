"""The build machinery: patch series, one-line errors, the content-addressed cache and its lock."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest

from colo_fixtures.sut.build import (
    BuildError,
    apply_patches,
    first_error,
    patch_series,
    probe_capabilities,
)
from colo_fixtures.sut.cache import CacheError, cached_build, file_lock, hash_parts, hash_tree

ROOT = Path(__file__).resolve().parent.parent


def make_patch(tmp_path: Path, name: str, old: str, new: str) -> Path:
    a, b = tmp_path / "a", tmp_path / "b"
    for side, text in ((a, old), (b, new)):
        side.mkdir(exist_ok=True)
        (side / "hello.c").write_text(text)
    diff = subprocess.run(["diff", "-u", "a/hello.c", "b/hello.c"], cwd=tmp_path,
                          capture_output=True, text=True).stdout
    patch = tmp_path / name
    patch.write_text(diff)
    return patch


def test_shipped_series_lists_the_four_fixes_in_order():
    patches = patch_series(ROOT / "patches" / "qemu-7.2")
    assert [p.name[:4] for p in patches] == ["0001", "0002", "0003", "0004"]
    for patch in patches:
        text = patch.read_text()
        assert "Cause:" in text and "Effect:" in text and "Fix:" in text


def test_series_naming_a_missing_patch_is_an_error(tmp_path: Path):
    (tmp_path / "series").write_text("0001-missing.patch\n")
    with pytest.raises(BuildError, match="lists missing patch"):
        patch_series(tmp_path)


def test_without_series_patches_are_sorted(tmp_path: Path):
    for name in ("0002-b.patch", "0001-a.patch"):
        (tmp_path / name).write_text("")
    assert [p.name for p in patch_series(tmp_path)] == ["0001-a.patch", "0002-b.patch"]


def test_apply_patches_and_name_the_one_that_fails(tmp_path: Path):
    good = make_patch(tmp_path, "good.patch", "int x = 1;\n", "int x = 2;\n")
    bad = make_patch(tmp_path, "bad.patch", "int y = 1;\n", "int y = 2;\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hello.c").write_text("int x = 1;\n")
    log = tmp_path / "build.log"
    apply_patches(tree, [good], log)
    assert (tree / "hello.c").read_text() == "int x = 2;\n"
    with pytest.raises(BuildError) as info:
        apply_patches(tree, [bad], log)
    assert "bad.patch does not apply" in str(info.value)
    assert "\n" not in str(info.value)


def test_first_error_finds_the_compiler_error(tmp_path: Path):
    log = tmp_path / "build.log"
    log.write_text("[1/3] Compiling a.c\n../migration/ram.c:1180:5: error: implicit declaration\n"
                   "FAILED: libqemu.a\nninja: build stopped\n")
    assert first_error(log).startswith("../migration/ram.c:1180:5: error:")


def test_hashes_change_with_content(tmp_path: Path):
    (tmp_path / "f").write_text("1")
    first = hash_tree(tmp_path)
    (tmp_path / "f").write_text("2")
    assert hash_tree(tmp_path) != first
    assert hash_parts(["a", "bc"]) != hash_parts(["ab", "c"])


def _build_once(cache: str, counter: str) -> None:
    def build(entry: Path) -> None:
        with open(counter, "a") as out:
            out.write("built\n")
        time.sleep(1)
        (entry / "artifact").write_text("ok")

    cached_build(Path(cache), "demo", "k1", build)


def test_cache_builds_once_across_processes(tmp_path: Path):
    counter = tmp_path / "count"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_build_once, args=(str(tmp_path), str(counter)))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert all(worker.exitcode == 0 for worker in workers)
    assert counter.read_text() == "built\n"
    assert (tmp_path / "demo" / "k1" / "artifact").read_text() == "ok"


def test_failed_build_is_rebuilt_not_reused(tmp_path: Path):
    def broken(entry: Path) -> None:
        (entry / "half").write_text("x")
        raise RuntimeError("compiler died")

    with pytest.raises(RuntimeError, match="compiler died"):
        cached_build(tmp_path, "demo", "k2", broken)
    assert (tmp_path / "demo" / "k2" / "half").exists()  # kept for inspection
    entry = cached_build(tmp_path, "demo", "k2", lambda e: (e / "whole").write_text("y"))
    assert (entry / "whole").exists() and not (entry / "half").exists()


def _contend(lock: str, queue) -> None:
    try:
        with file_lock(Path(lock), 1, "test build"):
            queue.put("acquired")
    except CacheError as exc:
        queue.put(str(exc))


def test_lock_wait_times_out_with_a_clear_error(tmp_path: Path):
    lock = tmp_path / "x.lock"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with file_lock(lock, 5, "test build"):
        proc = ctx.Process(target=_contend, args=(str(lock), queue))
        proc.start()
        message = queue.get(timeout=10)
        proc.join(10)
    assert message.startswith(f"waited 1s for the lock {lock} held by another test build")
    proc = ctx.Process(target=_contend, args=(str(lock), queue))
    proc.start()
    assert queue.get(timeout=10) == "acquired"
    proc.join(10)


@pytest.mark.skipif(not Path("/usr/bin/qemu-system-x86_64").exists(),
                    reason="Debian's qemu-system-x86 is not installed")
def test_probe_capabilities_of_debian_qemu():
    caps = probe_capabilities(Path("/usr/bin/qemu-system-x86_64"))
    assert caps.version.startswith("7.2")
    assert caps.missing() == []
    assert "colo_vm_state_change" in caps.trace_events


def test_probe_reports_what_a_binary_lacks(tmp_path: Path):
    fake = tmp_path / "qemu"
    fake.write_text("#!/bin/sh\necho 'QEMU emulator version 1.0'\n")
    fake.chmod(0o755)
    caps = probe_capabilities(fake)
    assert caps.version == "1.0"
    assert "object colo-compare" in caps.missing()
    assert "block driver replication" in caps.missing()


MICROVM = Path("/usr/bin/qemu-system-x86_64-microvm")  # Debian's: no replication driver


@pytest.mark.skipif(not MICROVM.exists(), reason="Debian's qemu-system-x86 is not installed")
def test_a_run_that_only_skips_for_lack_of_colo_exits_1(tmp_path: Path):
    """Each test skips with the reason; the run as a whole proved nothing and says so."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/test_checkpoint.py", "-m", "colo", "-rs",
         "-p", "no:cacheprovider", "--qemu-binary", str(MICROVM),
         "--report-dir", str(tmp_path / "reports")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 1, out[-3000:]
    assert "lacks COLO support: block driver replication" in out, out[-3000:]
    assert "nothing was proved, exit status 1" in out
    assert " skipped in " in out.splitlines()[-1] and "passed" not in out.splitlines()[-1]
