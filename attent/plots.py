"""Plots of training runs, written as PNG files (matplotlib, no display needed).

A run is described by its ``history`` (one record per evaluation, as in ``FitResult.history``) and
its ``selections`` (one record per selection point, as in ``FitResult.selections``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from ._extras import require

Figure = require("matplotlib.figure", "plots").Figure  # noqa: N816 (the class, imported)

__all__ = ["METRIC_PREFERENCE", "default_metric", "plot_curves", "plot_run"]

# The metric a plot shows when none is named: the first one the history holds.
METRIC_PREFERENCE = ("val_accuracy", "val_ppl", "val_loss", "train_loss")
X_LABELS = {"wall_time": "wall time (s)", "examples_seen": "training examples seen", "step": "optimizer step",
            "epoch": "epoch"}


def default_metric(history: Sequence[Mapping[str, Any]]) -> str:
    """The first of METRIC_PREFERENCE present in the history's records."""
    for name in METRIC_PREFERENCE:
        if history and all(name in record for record in history):
            return name
    raise ValueError(f"history records hold none of {METRIC_PREFERENCE}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_curves(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    metric: str | None = None,
    x: str = "wall_time",
    title: str | None = None,
) -> Path:
    """One line per run of ``metric`` against ``x`` (a history key, e.g. ``wall_time`` or
    ``examples_seen``), saved to ``path``.

    Args:
        runs: run name -> history (list of records).
        path: PNG file to write (its folder is created).
        metric: history key to plot (default: :func:`default_metric` of the first run).
        x: history key for the horizontal axis.
        title: figure title.

    Returns:
        The written path.
    """
    if not runs:
        raise ValueError("runs is empty: pass at least one run name -> history")
    metric = metric or default_metric(next(iter(runs.values())))
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for name, history in runs.items():
        points = [(r[x], r[metric]) for r in history if _finite(r.get(x)) and _finite(r.get(metric))]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, label=name)
    ax.set_xlabel(X_LABELS.get(x, x))
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(runs) > 1:
        ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _plot_ratio(selections: Sequence[Mapping[str, Any]], path: Path) -> Path:
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.step([s["step"] for s in selections], [s["ratio"] for s in selections], where="post", marker="o", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("selected ratio")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    return path


def _plot_histograms(selections: Sequence[Mapping[str, Any]], path: Path) -> Path:
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    drawn = [s for s in selections if s.get("histogram") and s["histogram"]["counts"]]
    for k, selection in enumerate(drawn):
        counts, edges = selection["histogram"]["counts"], selection["histogram"]["edges"]
        shade = 0.15 + 0.8 * k / max(1, len(drawn) - 1)
        ax.stairs(counts, edges, color=(0.1, 0.3, 0.8, shade), label=f"epoch {selection['epoch']}")
    ax.set_xlabel("score")
    ax.set_ylabel("examples")
    ax.set_title("scores held by the teacher at each selection")
    ax.grid(alpha=0.3)
    if 0 < len(drawn) <= 12:
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path


def plot_run(
    history: Sequence[Mapping[str, Any]],
    selections: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    metric: str | None = None,
) -> list[Path]:
    """Write a run's plots to ``out_dir``: ``metric_vs_time.png``, ``metric_vs_examples.png``,
    ``ratio.png`` (selected ratio over steps) and, when the selections carry score histograms,
    ``score_histograms.png`` (one curve per selection point).

    Returns:
        The written paths.
    """
    out_dir = Path(out_dir)
    metric = metric or default_metric(history)
    runs = {"run": history}
    written = [
        plot_curves(runs, out_dir / "metric_vs_time.png", metric=metric, x="wall_time"),
        plot_curves(runs, out_dir / "metric_vs_examples.png", metric=metric, x="examples_seen"),
    ]
    if selections:
        written.append(_plot_ratio(selections, out_dir / "ratio.png"))
        if any(s.get("histogram") for s in selections):
            written.append(_plot_histograms(selections, out_dir / "score_histograms.png"))
    return written
