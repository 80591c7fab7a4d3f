"""Plots (PNG) of a test's evidence: what a lab engineer looks at first in the report.

- ``client_latency``: every client operation's latency over time, faults and failover
  marks drawn as vertical lines: the gap around a failover is visible at a glance.
- ``checkpoint_timeline``: each checkpoint's pause over time, with the faults.
- ``pause_histogram``: the distribution of checkpoint pauses.
- ``run_figures``: a whole run's watched figures, one dot per test (``metrics.png``).

Times are seconds relative to the first fault (or to the first event without a fault).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt

from colo_fixtures.sut.trace import Checkpoint
from colo_fixtures.workload.history import FAULTS, History, Op

COLORS = {"ok": "tab:green", "fail": "tab:red", "timeout": "tab:purple", "info": "tab:orange"}


def _origin(history: History, fallback: float) -> float:
    faults = history.faults()
    return faults[0].wall if faults else fallback


def _nemesis_lines(axes: plt.Axes, ops: Sequence[Op], origin: float) -> None:
    for op in ops:
        fault = op.f in FAULTS
        axes.axvline(op.wall - origin, color="tab:red" if fault else "grey",
                     linestyle="--" if fault else ":", linewidth=1)
        axes.annotate(f"{op.f} {op.value or ''}".strip(), (op.wall - origin, 1.0),
                      xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                      va="top", ha="right", color="tab:red" if fault else "grey")


def client_latency(history: History, path: Path, title: str = "client operations") -> Path:
    """Latency (ms) of each completed client operation against its start time."""
    ops = history.ops
    started: dict[str, Op] = {}
    points: dict[str, list[tuple[float, float]]] = {kind: [] for kind in COLORS}
    for op in ops:
        if op.process == "nemesis":
            continue
        if op.type == "invoke":
            started[op.process] = op
        elif (begin := started.pop(op.process, None)) is not None and op.type in points:
            points[op.type].append((begin.wall, (op.time - begin.time) * 1000))
    first = min((w for kind in points.values() for w, _ in kind), default=0.0)
    origin = _origin(history, first)
    figure, axes = plt.subplots(figsize=(9, 4))
    for kind, values in points.items():
        if values:
            axes.scatter([w - origin for w, _ in values], [ms for _, ms in values], s=8,
                         color=COLORS[kind], label=f"{kind} ({len(values)})")
    _nemesis_lines(axes, [op for op in ops if op.process == "nemesis"], origin)
    if any(points.values()):
        axes.set_yscale("log")
        axes.legend(loc="upper left", fontsize=8)
    else:
        _empty(axes, "no client operation completed")
    axes.set_xlabel("seconds from the first fault" if history.faults() else "seconds")
    axes.set_ylabel("latency (ms)")
    axes.set_title(title)
    return _save(figure, path)


def checkpoint_timeline(points: Sequence[Checkpoint], history: History, path: Path,
                        title: str = "checkpoints") -> Path:
    """Each completed checkpoint's pause (ms) against the time the VM stopped for it."""
    done = [c for c in points if c.pause is not None and c.stopped is not None]
    origin = _origin(history, done[0].stopped if done else 0.0)  # type: ignore[arg-type]
    figure, axes = plt.subplots(figsize=(9, 4))
    if done:
        axes.stem([c.stopped - origin for c in done],  # type: ignore[operator]
                  [c.pause * 1000 for c in done])  # type: ignore[operator]
    else:
        _empty(axes, "no checkpoint completed")
    _nemesis_lines(axes, [op for op in history.ops if op.process == "nemesis"], origin)
    axes.set_xlabel("seconds from the first fault" if history.faults() else "seconds")
    axes.set_ylabel("primary pause (ms)")
    axes.set_title(f"{title}: {len(done)} completed")
    return _save(figure, path)


def pause_histogram(points: Sequence[Checkpoint], path: Path,
                    title: str = "checkpoint pauses") -> Path:
    """How the checkpoints' pauses (ms) are distributed."""
    pauses = [c.pause * 1000 for c in points if c.pause is not None]
    figure, axes = plt.subplots(figsize=(6, 4))
    if pauses:
        axes.hist(pauses, bins=min(30, max(5, len(pauses) // 2)), color="tab:blue")
    else:
        _empty(axes, "no checkpoint completed")
    axes.set_xlabel("primary pause (ms)")
    axes.set_ylabel("checkpoints")
    axes.set_title(f"{title} (n={len(pauses)})")
    return _save(figure, path)


def run_figures(values: dict[str, list[float]], units: dict[str, str], path: Path,
                title: str = "this run's figures (one dot per test)") -> Path:
    """Every watched figure of a run on one time axis (ms, log scale): which ones moved."""
    figure, axes = plt.subplots(figsize=(9, 0.45 * max(len(values), 4) + 1.2))
    if not values:
        _empty(axes, "no test wrote figures")
    names = sorted(values)
    for row, name in enumerate(names):
        scale = 1000.0 if units.get(name) == "s" else 1.0
        points = [max(v * scale, 0.01) for v in values[name]]
        axes.scatter(points, [row] * len(points), s=18, color="tab:blue", alpha=0.7)
    axes.set_yticks(range(len(names)), names, fontsize=8)
    if values:
        axes.set_xscale("log")
    axes.set_xlabel("ms")
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def _empty(axes: plt.Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, transform=axes.transAxes, ha="center", va="center")


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
