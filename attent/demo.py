"""`attent demo`: a ViT trained from scratch on scikit-learn's digits twice from the same
initialization, once on the full data and once with an AtteNT teacher, compared by wall time.

    from attent.demo import run_demo
    numbers = run_demo(score="fgrad", strategy="hard")   # about 2 minutes on a 2-core CPU

The task is :func:`attent.tasks.digits` (fixed train/validation split, the task's own recipe).
The teacher is ``Teacher(N, strategy=strategy, epochs=E, seed=seed)``, fed ``score``, with its
defaults, which are the published AtteNT schedule: one full-data epoch, then 10 cycles whose
selected ratio rises along a cosine from 0.2 to 0.8 (each cycle trains only on its subset, as the
cycles are shorter than the fixed 5-epoch interval), scored online from the training steps. On
average half the examples are trained on per epoch, so the run spends about half the training
steps of the full-data run; the table shows whether it still reaches the full-data run's final
accuracy and how much sooner.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .plots import plot_curves
from .schedules import check_count
from .scores import SCORE_KINDS
from .strategies import STRATEGIES
from .tasks import digits
from .tasks.compare import FULL_DATA, Method, RunSummary, format_table, run_method, summarize
from .teacher import Teacher

__all__ = ["PLOT_NAME", "RESULT_NAME", "TABLE_HEADER", "run_demo"]

PLOT_NAME = "accuracy_vs_time.png"
RESULT_NAME = "demo.json"
TABLE_HEADER = ("method", "final val acc %", "wall time s", "time to target s", "time saved %", "examples seen",
                "selection overhead %")


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}"


def _seconds(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}"


def _table_row(row: RunSummary) -> list[str]:
    return [row.method, _percent(row.final), _seconds(row.wall_time), _seconds(row.time_to_target),
            _percent(row.time_saved), str(row.examples_seen), _percent(row.selection_overhead)]


def _describe(teacher: Teacher, score: str) -> str:
    plan = teacher.plan
    strategy = teacher.strategy
    if plan.ratio is None:
        last = math.floor(strategy.delta * plan.epochs)
        subsets = f"below-mean examples pruned at rate {strategy.prune_ratio} until epoch {last}"
    else:
        subsets = (f"{plan.cycles} cycles of subsets whose ratio goes {plan.ratio.kind} "
                   f"{plan.ratio.initial} -> {plan.ratio.final}")
    return (f"score {score}, strategy {strategy.name}, {plan.warmup_epochs} full-data epoch(s) first, "
            f"then {subsets}")


def _run_record(row: RunSummary) -> dict[str, Any]:
    return {"final_accuracy": row.final, "wall_time": row.wall_time, "time_to_target": row.time_to_target,
            "time_saved": row.time_saved, "examples_seen": row.examples_seen,
            "selection_overhead": row.selection_overhead}


def run_demo(
    *,
    score: str = "fgrad",
    strategy: str = "hard",
    seed: int = 0,
    out_dir: str | Path = "runs/demo",
    quick: bool = False,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Train the digits ViT on the full data and with an AtteNT teacher, print the comparison,
    plot validation accuracy against wall time and return the numbers.

    Args:
        score: what the training steps feed the teacher, one of ``attent.SCORE_KINDS``
            (``"gradnorm"`` runs the training backward through ``attent.GradNormProbe``).
        strategy: the teacher's strategy, a name in ``attent.STRATEGIES``.
        seed: model initialization, data order and the teacher's draws (the same for both runs).
        out_dir: folder for ``accuracy_vs_time.png`` and ``demo.json`` (created if missing).
        quick: the tiny digits task (120 training images, a one-block ViT, 2 epochs): seconds.
        epochs: training epochs of both runs (default: the task's, 40; 2 when ``quick``).

    Returns:
        ``{"task", "score", "strategy", "seed", "epochs", "quick", "train_examples",
        "val_examples", "target_accuracy", "teacher", "runs", "table", "plot", "record"}``: ``runs``
        maps each method's name (``"full data"`` first, then ``"AtteNT"``) to its
        ``final_accuracy`` (fraction), ``wall_time``, ``time_to_target`` (seconds to reach the
        full-data run's final accuracy, None if never), ``time_saved`` (fraction of the full-data
        run's time to target, None if not reached), ``examples_seen`` and ``selection_overhead``
        (fraction of wall time); ``table`` is the printed table, ``plot`` and ``record`` the paths
        of the PNG and of the JSON copy of this dict.
    """
    if score not in SCORE_KINDS:
        raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {tuple(STRATEGIES)}, got {strategy!r}")
    seed = check_count("seed", seed, 0)
    task = digits(quick=quick)
    epochs = task.defaults.epochs if epochs is None else check_count("epochs", epochs, 1)
    attent = Method("AtteNT", "teacher", {"strategy": strategy}, score=score)
    teacher = attent.teacher(len(task.train), epochs=epochs, seed=seed)
    model = task.model(seed)
    print(
        f"attent demo: a {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) "
        f"trained from scratch on scikit-learn digits ({len(task.train)} train / {len(task.val)} val images), "
        f"{epochs} epochs, seed {seed}, twice from the same initialization:\n"
        f"  1. full data: every image every epoch\n"
        f"  2. AtteNT: {_describe(teacher, score)}\n"
        f"Wall time counts training and every scoring/selection step, not evaluation.",
        flush=True,
    )
    results = {}
    for method in (FULL_DATA, attent):
        print(f"training: {method.name} ...", flush=True)
        results[method.name] = run_method(task, method, seed=seed, epochs=epochs)
    rows = summarize(results, metric=task.metric, baseline=FULL_DATA.name)
    table = format_table(TABLE_HEADER, [_table_row(row) for row in rows])
    print(f"target: the full-data run's final validation accuracy, {100 * rows[0].final:.1f}%\n{table}", flush=True)
    out = Path(out_dir)
    plot = plot_curves({name: result.history for name, result in results.items()}, out / PLOT_NAME,
                       metric=task.metric, x="wall_time",
                       title=f"digits ViT: full data vs AtteNT ({score}, {strategy}), seed {seed}")
    record = out / RESULT_NAME
    numbers = {
        "task": task.name, "score": score, "strategy": strategy, "seed": seed, "epochs": epochs, "quick": quick,
        "train_examples": len(task.train), "val_examples": len(task.val), "target_accuracy": rows[0].final,
        "teacher": repr(teacher), "runs": {row.method: _run_record(row) for row in rows}, "table": table,
        "plot": str(plot), "record": str(record),
    }
    record.write_text(json.dumps(numbers, indent=2) + "\n")
    print(f"wrote {plot} and {record}", flush=True)
    return numbers
