"""Plots of a test's evidence: PNG files with the data drawn, from hand-made histories."""

from __future__ import annotations

import struct
from pathlib import Path

from colo_fixtures.report.plots import checkpoint_timeline, client_latency, pause_histogram
from colo_fixtures.sut.trace import Checkpoint
from colo_fixtures.workload.history import History

PNG = b"\x89PNG\r\n\x1a\n"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> tuple[float, float]:
        return self.now, self.now + 1_700_000_000

    def tick(self, seconds: float) -> None:
        self.now += seconds


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG), f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def failover_history() -> History:
    clock = Clock()
    history = History(clock)
    for i in range(40):
        if i == 20:
            history.nemesis("kill", "primary")
            clock.tick(0.3)
            history.nemesis("failover-done", "secondary")
        op = history.invoke("client-1", "write", "k", f"w{i}", conn=1)
        clock.tick(0.4 if i == 20 else 0.01)
        history.complete(op, "ok" if i != 21 else "timeout", error=None if i != 21 else "timeout")
        clock.tick(0.05)
    return history


def test_client_latency_plot(tmp_path: Path):
    path = client_latency(failover_history(), tmp_path / "latency.png")
    width, height = png_size(path)
    assert (width, height) == (900, 400)
    assert path.stat().st_size > 10_000  # axes, 40 points, two marks: not an empty canvas


def test_checkpoint_plots(tmp_path: Path):
    points = [Checkpoint(requested=10.0 * i, stopped=10.0 * i + 0.001,
                         resumed=10.0 * i + 0.05 + 0.001 * i) for i in range(1, 20)]
    points.append(Checkpoint(requested=300.0, stopped=300.001, resumed=None))  # unfinished
    timeline = checkpoint_timeline(points, History(), tmp_path / "timeline.png")
    histogram = pause_histogram(points, tmp_path / "pauses.png")
    assert png_size(timeline) == (900, 400) and png_size(histogram) == (600, 400)
    assert timeline.stat().st_size > 10_000 and histogram.stat().st_size > 5_000


def test_plots_of_nothing_are_still_files(tmp_path: Path):
    """A test that stops before any operation still gets (empty) plots, not a crash."""
    assert png_size(client_latency(History(), tmp_path / "a.png"))
    assert png_size(checkpoint_timeline([], History(), tmp_path / "b.png"))
    assert png_size(pause_histogram([], tmp_path / "c.png"))
