"""The package's layers: each subpackage imports only itself and the ones below it, and no
modules import one another in a cycle (read from the source, see ``import_layers``)."""

from __future__ import annotations

from pathlib import Path

from import_layers import cycles, import_graph, upward_imports

import colo_fixtures

# Bottom to top: the data flow settings → lab → QEMU → COLO pair → workload → evidence →
# report, with the pytest plugin on top and what every layer uses at the bottom.
LAYERS = ("core", "config", "lab", "sut", "workload", "evidence", "report", "plugin")
PACKAGE = Path(colo_fixtures.__file__).parent


def test_no_upward_import_and_no_cycle_in_the_package() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 40, sorted(graph)  # the whole package was read
    assert upward_imports(graph, "colo_fixtures", LAYERS) == []
    assert cycles(graph) == []


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_deliberate_upward_import_and_cycle_are_found(tmp_path: Path) -> None:
    package = _package(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "from pkg.low import b\n",
        "low/b.py": "def f():\n    from . import c  # a lazy import is a dependency too\n",
        "low/c.py": "import pkg.low.a\n",
        "high/__init__.py": "",
        "high/d.py": "from ..low.a import x\n",
        "low/e.py": "from pkg.high import d\n",
        "stray.py": "",
    })
    graph = import_graph(package)
    assert graph["pkg.low.b"] == {"pkg.low.c"}
    assert graph["pkg.high.d"] == {"pkg.low.a"}
    assert upward_imports(graph, "pkg", ("low", "high")) == [
        "pkg.low.e (low) imports pkg.high.d (high, a higher layer)",
        "pkg.stray is in no layer (one of: low, high)",
    ]
    assert cycles(graph) == [["pkg.low.a", "pkg.low.b", "pkg.low.c"]]


def test_the_package_as_it_is_passes_only_in_its_own_order() -> None:
    """The check can fail on the real package: reversed layers are all upward imports."""
    graph = import_graph(PACKAGE)
    assert upward_imports(graph, "colo_fixtures", tuple(reversed(LAYERS)))


def test_a_module_over_400_lines_says_why_at_its_top() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 400 and "Over 400 lines:" not in text[:text.find('"""', 3)]:
            long.append(f"{path.relative_to(PACKAGE)} ({text.count(chr(10))} lines)")
    assert long == [], "split them, or say why at the top ('Over 400 lines: ...')"
