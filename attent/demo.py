"""`attent demo`: what a teacher buys on a real task, measured the way a user decides.

    from attent.demo import run_demo
    numbers = run_demo()   # about a minute on a 2-core CPU

A ViT is trained from scratch on scikit-learn's digits (:func:`attent.tasks.digits`, the task's
recipe), every run from the same initialization: full data at budget 1 (the recipe), full data at
the lower budgets (the shortened schedule a user would otherwise run: ``round(b * epochs)``
epochs) and the default teacher at the same budgets (``Teacher(N, epochs=E, budget=b)``: the
recipe's epochs on smaller subsets, the same number of training examples as full data at b). A
budget b is the fraction of the recipe's ``epochs * N`` training examples a run may process.

Each run's quality is the mean of its last three evaluations. The verdict reads the budgets:
quality at equal budget (teacher minus full data), and the saving at full-data quality: the wall
time at which each method's frontier (its runs ordered by time, the full-data b = 1 run closing
both, joined by straight lines) reaches the b = 1 quality less ``TOLERANCE``, teacher against full
data. Training is deterministic for a seed, so the qualities and the verdict are the same on every
run. Wall times are the trainer's (training steps + scoring + selection, evaluation excluded)
with every optimizer step's training priced at one median step time, taken over the steps of all
the demo's runs (``FitResult.wall_time_at_step_price``), scoring and selection as measured: a
training step of full data and of the teacher is the same work (same model, same batch size), and
one price keeps the machine's speed, which drifts from run to run (a shared host), out of the
verdict, while each method's real extra work (its scoring and selection) stays in it. The plain
wall-clock sums are in ``demo.json`` (``clock_wall_time``).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Sequence

from .plots import plot_curves
from .schedules import check_count, check_fraction
from .scores import SCORE_KINDS
from .strategies import STRATEGIES, strategy_from
from .tasks import digits
from .tasks.compare import FULL_DATA, Method, final_metric, format_table, run_method
from .tasks.frontier import Point, frontier, saving, time_to_quality

__all__ = ["PLOT_NAME", "RESULT_NAME", "TABLE_HEADER", "TOLERANCE", "run_demo"]

PLOT_NAME = "frontier.png"
RESULT_NAME = "demo.json"
TABLE_HEADER = ("run", "budget", "epochs", "examples", "val acc %", "vs full data, same budget", "wall time s",
                "selection overhead %")
TOLERANCE = 0.005  # half a percentage point of accuracy: within it, a run matches the full-data quality


def _row(point: Point, epochs: int, full_quality: dict[float, float]) -> list[str]:
    versus = "" if point.method == FULL_DATA.name else f"{100 * (point.quality - full_quality[point.budget]):+.2f}"
    return [point.method, f"{point.budget:g}", str(epochs), str(point.examples), f"{100 * point.quality:.2f}", versus,
            f"{point.wall_time:.1f}", f"{100 * point.selection_overhead:.1f}"]


def run_demo(
    *,
    score: str = "fgrad",
    strategy: str | None = None,
    budgets: Sequence[float] = (0.5, 0.25),
    seed: int = 0,
    out_dir: str | Path = "runs/demo",
    quick: bool = False,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Train the digits ViT on full data at budget 1 and at ``budgets``, and with the default
    teacher at ``budgets``; print the table and the verdict, plot the frontiers, return the numbers.

    Args:
        score: what the training steps feed the teacher, one of ``attent.SCORE_KINDS``.
        strategy: a name in ``attent.STRATEGIES`` instead of the default teacher's strategy.
        budgets: the lower budgets, fractions in (0, 1).
        seed: model initialization, data order and the teacher's draws (the same for every run).
        out_dir: folder for ``frontier.png`` and ``demo.json`` (created if missing).
        quick: the tiny digits task (120 training images, a one-block ViT, 2 epochs): seconds.
        epochs: the recipe's epochs (default: the task's, 40; 2 when ``quick``).

    Returns:
        ``{"task", "score", "strategy", "seed", "epochs", "quick", "train_examples", "val_examples",
        "runs", "target", "time_to_quality", "saving", "equal_budget", "verdict", "table", "plot",
        "record"}``: ``runs`` lists each run (method, budget, quality, wall time with its training
        steps priced at the demo's median step, examples, selection overhead, and
        ``clock_wall_time``, the plain wall-clock sum); ``target`` is the full-data b = 1 quality
        less ``TOLERANCE``;
        ``time_to_quality`` and ``saving`` read the frontiers (None: never reached);
        ``equal_budget`` maps each budget to the teacher's quality minus full data's.
    """
    if score not in SCORE_KINDS:
        raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}")
    if strategy is not None and strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {tuple(STRATEGIES)}, got {strategy!r}")
    budgets = sorted({check_fraction("budgets", b) for b in budgets} - {1.0}, reverse=True)
    if not budgets:
        raise ValueError("budgets must hold at least one fraction below 1")
    seed = check_count("seed", seed, 0)
    task = digits(quick=quick)
    epochs = task.defaults.epochs if epochs is None else check_count("epochs", epochs, 1)
    teacher = Method("default teacher", score=score, options={} if strategy is None else {"strategy": strategy})
    described = strategy_from(strategy).name if strategy is not None else "the default"
    model = task.model(seed)
    print(
        f"attent demo: a {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) "
        f"trained from scratch on scikit-learn digits ({len(task.train)} train / {len(task.val)} val images), "
        f"recipe {epochs} epochs, seed {seed}, every run from the same initialization:\n"
        f"  full data at budget 1 and at {', '.join(map(str, budgets))} (the shortened schedule)\n"
        f"  the default teacher (strategy {described}, fed {score} scores) at the same budgets\n"
        f"A budget is the fraction of the recipe's {epochs} x {len(task.train)} training examples a run may process. "
        f"Wall time counts training and every scoring/selection step, not evaluation; each training step is priced "
        f"at the median step time of all runs.",
        flush=True,
    )
    plan = [(FULL_DATA, 1.0), *((m, b) for b in budgets for m in (FULL_DATA, teacher))]
    results = {}
    for method, budget in plan:
        print(f"training: {method.name} at budget {budget} ...", flush=True)
        results[(method.name, budget)] = run_method(task, method, seed=seed, budget=budget, epochs=epochs)
    # one price for a training step in every run: the same model and batch size, the median over all runs' steps
    step_price = statistics.median(t for result in results.values() for t in result.step_times)
    priced = {key: result.wall_time_at_step_price(step_price) for key, result in results.items()}
    points = [Point(name, budget, seed, final_metric(result.history, task.metric), priced[(name, budget)],
                    result.examples_seen, result.selection_time / priced[(name, budget)])
              for (name, budget), result in results.items()]
    clock_times = {key: result.wall_time for key, result in results.items()}
    epochs_run = {key: result.epochs_completed for key, result in results.items()}
    full_quality = {p.budget: p.quality for p in points if p.method == FULL_DATA.name}
    top = next(p for p in points if p.method == FULL_DATA.name and p.budget == 1.0)
    target = top.quality - TOLERANCE
    curves = {name: frontier(points, name) for name in (FULL_DATA.name, teacher.name)}
    curves[teacher.name].append(curves[FULL_DATA.name][-1])  # a teacher at b = 1 trains every example: full data
    times = {name: time_to_quality(curve, target, higher_is_better=True) for name, curve in curves.items()}
    saved = saving(times[teacher.name], times[FULL_DATA.name])
    advantage = {b: next(p.quality for p in points if p.method == teacher.name and p.budget == b) - full_quality[b]
                 for b in budgets}
    table = format_table(TABLE_HEADER, [_row(p, epochs_run[(p.method, p.budget)], full_quality) for p in points])
    holds = [b for b in budgets if advantage[b] >= 0]
    verdict = (
        f"at equal budget the teacher is {', '.join(f'{100 * advantage[b]:+.2f} points at b={b:g}' for b in budgets)} "
        f"against full data's shortened schedule ({'ahead or level at ' + ', '.join(map(str, holds)) if holds else 'behind at every budget'}); "
        + (f"it reaches the full-data quality ({100 * target:.2f}%, b=1 less {100 * TOLERANCE:.1f} points) in "
           f"{times[teacher.name]:.1f} s against full data's {times[FULL_DATA.name]:.1f} s: "
           f"{100 * saved:+.1f}% wall time saved" if saved is not None else
           f"it does not reach the full-data quality ({100 * target:.2f}%) below budget 1: no time saved")
    )
    print(f"{table}\nverdict: {verdict}", flush=True)
    out = Path(out_dir)
    lines = {name: [{"wall_time": p.wall_time, task.metric: p.quality} for p in sorted(curve, key=lambda p: p.wall_time)]
             for name, curve in curves.items()}
    plot = plot_curves(lines, out / PLOT_NAME, metric=task.metric, x="wall_time",
                       title=f"digits ViT, seed {seed}: final accuracy vs wall time at budgets 1, "
                             f"{', '.join(map(str, budgets))}")
    record = out / RESULT_NAME
    numbers = {
        "task": task.name, "score": score, "strategy": described, "seed": seed, "epochs": epochs, "quick": quick,
        "train_examples": len(task.train), "val_examples": len(task.val),
        "runs": [{**p.as_dict(), "clock_wall_time": clock_times[(p.method, p.budget)]} for p in points],
        "target": target, "time_to_quality": times, "saving": saved,
        "equal_budget": {str(b): advantage[b] for b in budgets}, "verdict": verdict, "table": table,
        "plot": str(plot), "record": str(record),
    }
    record.write_text(json.dumps(numbers, indent=2) + "\n")
    print(f"wrote {plot} and {record}", flush=True)
    return numbers
