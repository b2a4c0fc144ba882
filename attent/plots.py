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

__all__ = ["METRIC_PREFERENCE", "default_metric", "metric_label", "plot_curves", "plot_run"]

# The metric a plot shows when none is named: the first one the history holds.
METRIC_PREFERENCE = ("val_accuracy", "val_ppl", "val_loss", "train_loss")
X_LABELS = {"wall_time": "wall time (s)", "examples_seen": "training examples seen", "step": "optimizer step",
            "epoch": "epoch"}
METRIC_LABELS = {"val_accuracy": "validation accuracy", "val_loss": "validation loss",
                 "val_ppl": "validation perplexity", "train_loss": "training loss"}


def default_metric(history: Sequence[Mapping[str, Any]]) -> str:
    """The first of METRIC_PREFERENCE present in the history's records."""
    for name in METRIC_PREFERENCE:
        if history and all(name in record for record in history):
            return name
    raise ValueError(f"history records hold none of {METRIC_PREFERENCE}")


def metric_label(metric: str) -> str:
    """An axis label for a history key: ``val_accuracy`` -> ``validation accuracy``, ``val_<name>``
    -> ``validation <name>``, any other key with its underscores as spaces."""
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric]
    if metric.startswith("val_"):
        return "validation " + metric[len("val_"):].replace("_", " ")
    return metric.replace("_", " ")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_curves(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    metric: str | None = None,
    x: str = "wall_time",
    title: str | None = None,
    y_label: str | None = None,
    target: float | None = None,
    target_label: str = "target",
    point_label: str | None = None,
) -> Path:
    """One line per run of ``metric`` against ``x`` (a history key, e.g. ``wall_time`` or
    ``examples_seen``), saved to ``path``.

    Args:
        runs: run name -> history (list of records).
        path: PNG file to write (its folder is created).
        metric: history key to plot (default: :func:`default_metric` of the first run).
        x: history key for the horizontal axis.
        title: figure title.
        y_label: the vertical axis' label (default: :func:`metric_label` of ``metric``).
        target: a horizontal dashed line at this value of ``metric``, named ``target_label`` in the legend.
        target_label: the legend entry of the target line.
        point_label: a record key whose text (when a record holds it) is written beside that
            record's point, in its run's colour (e.g. each point's budget).

    Returns:
        The written path.
    """
    if not runs:
        raise ValueError("runs is empty: pass at least one run name -> history")
    metric = metric or default_metric(next(iter(runs.values())))
    fig = Figure(figsize=(8.0, 5.0) if point_label is not None else (6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    drawn = {name: [r for r in history if _finite(r.get(x)) and _finite(r.get(metric))] for name, history in runs.items()}
    xs = [r[x] for records in drawn.values() for r in records]
    middle = (min(xs) + max(xs)) / 2 if xs else 0.0
    for index, (name, records) in enumerate(drawn.items()):
        if not records:
            continue
        (line,) = ax.plot([r[x] for r in records], [r[metric] for r in records], marker="o", markersize=3, label=name)
        for record in records if point_label is not None else ():
            if record.get(point_label) is not None:
                # labels of several runs at one budget lie close together: each run writes at its own height,
                # and points in the right half write to their left (inside the axes)
                right = record[x] > middle
                ax.annotate(str(record[point_label]), (record[x], record[metric]), xytext=(-4 if right else 4, 4 - 9 * index),
                            textcoords="offset points", ha="right" if right else "left", fontsize="x-small",
                            color=line.get_color(), bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none",
                                                          "alpha": 0.7})
    if target is not None:
        ax.axhline(target, color="0.4", linestyle="--", linewidth=1, label=target_label)
    ax.set_xlabel(X_LABELS.get(x, x))
    ax.set_ylabel(metric_label(metric) if y_label is None else y_label)
    if title:
        ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    if len(runs) > 1 or target is not None:
        ax.legend(fontsize="small")
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
