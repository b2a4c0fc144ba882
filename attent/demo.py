"""`attent demo`: what a teacher buys on a real task, measured the way a user decides.

    from attent.demo import run_demo
    numbers = run_demo()   # about two minutes on a 2-core CPU

A ViT is trained from scratch on scikit-learn's digits (:func:`attent.tasks.digits`, the task's
recipe), every run from the same initialization, at budgets b (the fraction of the recipe's
``epochs * N`` training examples a run may process):

- full data at b = 1 (the recipe) and at the lower budgets: the shortened schedule a user would
  otherwise run (``floor(b * epochs * N)`` examples as whole epochs and a partial last one);
- the teacher (``Teacher(N, epochs=E, budget=b, when="always")``, the default strategy or the one
  asked for, fed the chosen score): the recipe's epochs on subsets that spend the same examples as
  full data at b. It is told to select: without a reference model's evidence of waste, ``fit``'s
  default teacher (``when="evidence"``) trains full data's shortened schedule instead, and says so;
  the demo shows what selection by the learner's own scores does here;
- the control a teacher must beat: a random subset redrawn every epoch at the same budgets
  (``strategy="random"``; left out when the teacher's strategy is itself random).

A strategy that sizes its own subsets from the scores (InfoBatch) cannot be held to a budget: it
runs once with its defaults and its row shows the share of the recipe it spent.

Each run's quality is the mean of its last three evaluations. The reading, in plain sentences:
the target is full data's b = 1 quality less ``TOLERANCE``; each method's time to it is the wall
time of its cheapest run (a row of the table) that reaches it, the full-data b = 1 run where none
below b = 1 does (at b = 1 every method trains every example); the teacher's saving is against
full data's shortened schedule; and its quality against full data and against the random subset
at each equal budget. Training is deterministic for a seed, so the qualities (and which rows reach
the target) are the same on every run. Wall times are the trainer's (training steps + scoring +
selection, evaluation excluded) with every optimizer step's training priced at one median step
time over the steps of all the demo's runs (``FitResult.wall_time_at_step_price``), scoring and
selection as measured: a training step of every method is the same work (same model, same batch
size), and one price keeps the machine's drifting speed out of the reading while each method's
real extra work stays in it. The plain wall-clock sums are in ``demo.json`` (``clock_wall_time``).

``quick`` is a smoke run (a tiny task at near-chance accuracy): it prints the table and plots,
and says plainly that it draws no verdict.
"""
from __future__ import annotations

import inspect
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from .plots import plot_curves
from .schedules import check_count
from .scores import SCORE_KINDS
from .strategies import STRATEGIES, Random, strategy_from
from .tasks import digits
from .tasks.compare import FULL_DATA, Method, final_metric, format_table, run_method
from .teacher import Teacher

__all__ = ["DEFAULT_BUDGETS", "PLOT_NAME", "RANDOM_SUBSET", "RESULT_NAME", "TABLE_HEADER", "TOLERANCE", "run_demo"]

PLOT_NAME = "frontier.png"
RESULT_NAME = "demo.json"
DEFAULT_BUDGETS = (0.75, 0.5, 0.25)
TABLE_HEADER = ("run", "budget", "epochs", "steps", "examples", "val acc %", "vs full data", "vs random",
                "wall time s", "selection %")
TOLERANCE = 0.005  # half a percentage point of accuracy: within it, a run matches the full-data quality
RANDOM_SUBSET = Method("random subset", options={"strategy": Random.name}, score="loss")  # reads no scores
SHARES = {0.25: "a quarter of the compute", 0.5: "half the compute", 0.75: "three quarters of the compute"}


@dataclass(frozen=True)
class _Run:
    """One row of the demo: ``label``'s run at ``budget`` (None: the strategy sized its own
    subsets; ``spent`` is then the share of the recipe it processed)."""

    label: str
    budget: float | None
    epochs: int
    steps: int
    examples: int
    spent: float
    quality: float
    wall_time: float
    clock_wall_time: float
    selection_overhead: float

    def budget_cell(self) -> str:
        return f"{self.budget:g}" if self.budget is not None else f"own ({self.spent:.2f})"

    def where(self) -> str:
        return f"b = {self.budget:g}" if self.budget is not None else f"its own budget ({self.spent:.2f})"


def _share(budget: float) -> str:
    return SHARES.get(budget, f"{100 * budget:g}% of the compute")


def _check_budgets(budgets: Sequence[float]) -> list[float]:
    """The lower budgets, largest first; budget 1 (the recipe, always run) may be listed and is dropped."""
    values = list(budgets)
    for b in values:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 < b <= 1.0:
            raise ValueError(f"budgets must be fractions of the recipe in (0, 1), got {b!r} in {values}")
    lower = sorted({float(b) for b in values} - {1.0}, reverse=True)
    if not lower:
        raise ValueError(f"budgets must hold at least one fraction below 1 (budget 1, the recipe, always runs), "
                         f"got {values}")
    return lower


def _time_to_target(runs: Sequence[_Run], label: str, recipe: _Run, target: float) -> _Run:
    """The cheapest run of ``label`` that reaches ``target``; the full-data b = 1 run (``recipe``)
    when none is cheaper (at b = 1 every method trains every example)."""
    return min([r for r in runs if r.label == label and r.quality >= target] + [recipe], key=lambda r: r.wall_time)


def _pace(arm: _Run, full: _Run) -> tuple[float, str]:
    """(saving, how the arm's time compares with full data's shortened schedule) in words."""
    saving = 1.0 - arm.wall_time / full.wall_time
    if round(100 * saving, 1) == 0:
        return saving, "as fast as full data's shortened schedule"
    return saving, f"{100 * abs(saving):.1f}% {'faster' if saving > 0 else 'slower'} than full data's shortened schedule"


def _reaches(name: str, arm: _Run, recipe: _Run, target: float, full: _Run) -> str:
    _, pace = _pace(arm, full)
    if arm is recipe:
        return f"{name} reaches {100 * target:.2f}% only at b = 1, the full-data run, in {arm.wall_time:.2f} s: {pace}"
    return f"{name} reaches {100 * target:.2f}% at {arm.where()} in {arm.wall_time:.2f} s: {pace}"


def _versus(a: dict[float, float], budgets: Sequence[float]) -> str:
    return ", ".join(f"{100 * a[b]:+.2f} points at {_share(b)} (b = {b:g})" for b in budgets if b in a)


def _reading(runs: Sequence[_Run], teacher: str, control: str | None, target: float) -> dict[str, Any]:
    """The demo's result from its rows: each method's cheapest row at the target, the teacher's
    saving, its equal-budget advantages over full data and the control, the sentences and the verdict."""
    recipe = next(r for r in runs if r.label == FULL_DATA.name and r.budget == 1.0)
    quality = {(r.label, r.budget): r.quality for r in runs}
    full = _time_to_target(runs, FULL_DATA.name, recipe, target)
    arms = [name for name in (teacher, control) if name is not None]
    reached = {name: _time_to_target(runs, name, recipe, target) for name in arms}
    budgets = sorted({r.budget for r in runs if r.label == teacher and r.budget is not None})
    over_full = {b: quality[(teacher, b)] - quality[(FULL_DATA.name, b)] for b in budgets}
    over_control = {b: quality[(teacher, b)] - quality[(control, b)] for b in budgets if (control, b) in quality}
    saving, pace = _pace(reached[teacher], full)
    full_line = (f"full data's shortened schedule reaches it at b = {full.budget:g} in {full.wall_time:.2f} s"
                 if full is not recipe else
                 f"no shortened schedule reaches it: full data needs the whole recipe, {full.wall_time:.2f} s")
    lines = [
        f"target: {100 * target:.2f}% validation accuracy (full data at b = 1, the recipe, ends at "
        f"{100 * recipe.quality:.2f}%; within {100 * TOLERANCE:g} points of it counts as reaching it)",
        full_line,
        *(_reaches(f"the {name}" if name == control else name, reached[name], recipe, target, full) for name in arms),
    ]
    if not budgets:
        lines.append(f"{teacher} runs at the budget its strategy sets itself: no equal-budget comparison")
    else:
        lines.append(f"at equal budget, {teacher} against full data's shortened schedule: {_versus(over_full, budgets)}")
    if over_control:
        lines.append(f"at equal budget, {teacher} against the {control}: {_versus(over_control, budgets)}")
    lowest = budgets[0] if budgets else None
    verdict = f"{teacher} {'pays' if round(100 * saving, 1) > 0 else 'does not pay'} on this run: it reaches {100 * target:.2f}% {pace}"
    if lowest is not None:
        verdict += f"; {100 * over_full[lowest]:+.1f} points at {_share(lowest)}"
        if lowest in over_control:
            verdict += f" ({100 * over_control[lowest]:+.1f} against the {control})"
    return {
        "target": target,
        "time_to_target": {name: {"run": run.label, "budget": run.budget, "wall_time": run.wall_time}
                           for name, run in {FULL_DATA.name: full, **reached}.items()},
        "saving": saving,
        "equal_budget": {str(b): a for b, a in over_full.items()},
        "versus_control": {str(b): a for b, a in over_control.items()},
        "result": lines,
        "verdict": verdict,
    }


def _row(run: _Run, runs: Sequence[_Run], teacher: str, control: str | None) -> list[str]:
    quality = {(r.label, r.budget): r.quality for r in runs}

    def against(other: str | None) -> str:
        if run.label in (FULL_DATA.name, other) or run.budget is None or (other, run.budget) not in quality:
            return ""
        return f"{100 * (run.quality - quality[(other, run.budget)]):+.2f}"

    return [run.label, run.budget_cell(), str(run.epochs), str(run.steps), str(run.examples), f"{100 * run.quality:.2f}",
            against(FULL_DATA.name), against(control) if run.label == teacher else "", f"{run.wall_time:.2f}",
            f"{100 * run.selection_overhead:.1f}"]


def _plot(runs: Sequence[_Run], teacher: str, control: str | None, target: float | None, path: Path, title: str) -> Path:
    """Accuracy against wall time, one line per method through its budgets, ending at the full-data
    b = 1 run (labelled once, on full data's line); the target as a dashed line."""
    recipe = next(r for r in runs if r.label == FULL_DATA.name and r.budget == 1.0)

    def point(run: _Run, label: str | None) -> dict[str, Any]:
        return {"wall_time": run.wall_time, "accuracy": 100 * run.quality, "label": label}

    lines = {}
    for name in (FULL_DATA.name, teacher, control):
        own = sorted((r for r in runs if r.label == name and r is not recipe), key=lambda r: r.wall_time)
        if name is None or not own and name != FULL_DATA.name:
            continue
        tail = [point(recipe, "b=1: full data, the recipe" if name == FULL_DATA.name else None)]
        lines[name] = [point(r, f"b={r.budget:g}" if r.budget is not None else f"own budget, spent {r.spent:.2f}")
                       for r in own] + ([] if any(r.budget is None for r in own) else tail)
    return plot_curves(lines, path, metric="accuracy", x="wall_time", title=title, y_label="validation accuracy (%)",
                       target=None if target is None else 100 * target,
                       target_label=f"target: full data at b = 1 less {100 * TOLERANCE:g} points", point_label="label")


def run_demo(
    *,
    score: str = "fgrad",
    strategy: str | None = None,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    seed: int = 0,
    out_dir: str | Path = "runs/demo",
    quick: bool = False,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Train the digits ViT on full data at budget 1 and at ``budgets``, and with the teacher and
    the random-subset control at ``budgets``; print the table and the result in sentences, plot
    accuracy against wall time, return the numbers.

    Args:
        score: what the training steps feed the teacher, one of ``attent.SCORE_KINDS`` but
            ``"learnability"`` (it needs a reference model, which the demo does not train).
        strategy: a name in ``attent.STRATEGIES`` instead of the default teacher's strategy.
        budgets: the lower budgets, fractions in (0, 1) (a 1 among them is dropped: b = 1 always runs).
        seed: model initialization, data order and the teachers' draws (the same for every run).
        out_dir: folder for ``frontier.png`` and ``demo.json`` (created if missing).
        quick: a smoke run on the tiny digits task (120 training images, a one-block ViT, 2
            epochs): seconds, accuracies near chance, no verdict.
        epochs: the recipe's epochs (default: the task's, 40; 2 when ``quick``).

    Returns:
        ``{"task", "score", "strategy", "teacher", "control", "seed", "epochs", "quick",
        "train_examples", "val_examples", "runs", "table", "target", "time_to_target", "saving",
        "equal_budget", "versus_control", "result", "verdict", "plot", "record"}``: ``runs`` lists
        each row (label, budget (None: the strategy's own), epochs, optimizer steps, examples, spent
        share of the recipe, quality, wall time with its training steps priced at the demo's median
        step, ``clock_wall_time`` (the plain sum) and selection overhead); ``target`` is the
        full-data b = 1 quality less ``TOLERANCE``; ``time_to_target`` names each method's cheapest
        row that reaches it; ``saving`` is 1 - the teacher's time / full data's;
        ``equal_budget`` and ``versus_control`` map each budget to the teacher's quality minus full
        data's and the control's; ``result`` holds the printed sentences. With ``quick`` the
        reading keys (``target`` to ``verdict``) are None.
    """
    if score not in SCORE_KINDS:
        raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}")
    if score == "learnability":
        raise ValueError("score 'learnability' needs a reference model (attent.Reference), which the demo does not "
                         "train; pass it to attent.fit(..., score='learnability', reference=...) instead")
    if strategy is not None and strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {tuple(STRATEGIES)}, got {strategy!r}")
    budgets = _check_budgets(budgets)
    seed = check_count("seed", seed, 0)
    epochs = None if epochs is None else check_count("epochs", epochs, 1)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a folder")
    task = digits(quick=quick)
    epochs = task.defaults.epochs if epochs is None else epochs
    chosen = strategy_from(strategy if strategy is not None else inspect.signature(Teacher).parameters["strategy"].default)
    teacher = Method(f"teacher ({chosen.name}, {score})", options={"strategy": chosen.name}, score=score,
                     budgeted=not chosen.sizes_own_subsets)
    control = None if chosen.name == Random.name else RANDOM_SUBSET
    model = task.model(seed)
    n = len(task.train)
    print(
        f"attent demo{' --quick (a smoke run: no verdict)' if quick else ''}: a {type(model).__name__} "
        f"({sum(p.numel() for p in model.parameters()):,} parameters) trained from scratch on scikit-learn digits "
        f"({n} train / {len(task.val)} val images), recipe {epochs} epochs, seed {seed}, every run from the same "
        f"initialization:\n"
        f"  full data at budget 1 (the recipe) and at {', '.join(map(str, budgets))} (the shortened schedule)\n"
        + (f"  {teacher.name}: the {'default ' if strategy is None else ''}teacher fed {score} scores, told to select "
           f"(when='always': without a reference, fit's default trains full data's schedule instead), "
           + ("at the same budgets\n" if teacher.budgeted else "once, at the budget its strategy sets itself\n"))
        + (f"  the control, a {control.name} redrawn every epoch, at the same budgets\n" if control is not None else "")
        + f"A budget is the fraction of the recipe's {epochs} x {n} training examples a run may process. Wall time "
          f"counts training and every scoring/selection step, not evaluation; each training step is priced at the "
          f"median step time of all runs.",
        flush=True,
    )
    plan = [(FULL_DATA, 1.0)]
    for budget in budgets:
        plan += [(FULL_DATA, budget), *((m, budget) for m in (teacher, control) if m is not None and m.budgeted)]
    if not teacher.budgeted:
        plan.append((teacher, None))
    results = {}
    for method, budget in plan:
        print(f"training: {method.name} at {'its own budget' if budget is None else f'budget {budget}'} ...",
              flush=True)
        results[(method.name, budget)] = run_method(task, method, seed=seed, budget=1.0 if budget is None else budget,
                                                    epochs=epochs)
    # one price for a training step in every run: the same model and batch size, the median over all runs' steps
    step_price = statistics.median(t for result in results.values() for t in result.step_times)
    runs = []
    for (name, budget), result in results.items():
        priced = result.wall_time_at_step_price(step_price)
        runs.append(_Run(name, budget, result.epochs_completed, result.steps, result.examples_seen,
                         result.examples_seen / (epochs * n), final_metric(result.history, task.metric), priced,
                         result.wall_time, result.selection_time / priced if priced > 0 else 0.0))
    control_name = None if control is None else control.name
    table = format_table(TABLE_HEADER, [_row(r, runs, teacher.name, control_name) for r in runs])
    top = next(r for r in runs if r.label == FULL_DATA.name and r.budget == 1.0)
    reading = None if quick else _reading(runs, teacher.name, control_name, top.quality - TOLERANCE)
    print(table, flush=True)
    if reading is None:
        print(f"quick: a smoke run ({n} training images, a one-block ViT, {epochs} epochs) that shows every run "
              f"trains, is timed and plotted; at this size the accuracies are near chance, so it draws no verdict "
              f"(run without --quick for one)", flush=True)
    else:
        print("result:\n" + "\n".join(f"  {line}" for line in reading["result"]) + f"\nverdict: {reading['verdict']}",
              flush=True)
    title = (f"digits ViT, seed {seed}, recipe {epochs} epochs: accuracy for the wall time spent"
             + ("\n(quick: a smoke run, no verdict)" if quick else ""))
    plot = _plot(runs, teacher.name, control_name, None if reading is None else reading["target"], out / PLOT_NAME,
                 title)
    record = out / RESULT_NAME
    keys = ("target", "time_to_target", "saving", "equal_budget", "versus_control", "result", "verdict")
    numbers = {
        "task": task.name, "score": score, "strategy": chosen.name, "teacher": teacher.name, "control": control_name,
        "seed": seed, "epochs": epochs, "quick": quick, "train_examples": n, "val_examples": len(task.val),
        "runs": [asdict(r) for r in runs], "table": table,
        **{key: None if reading is None else reading[key] for key in keys},
        "plot": str(plot), "record": str(record),
    }
    record.write_text(json.dumps(numbers, indent=2) + "\n")
    print(f"wrote {plot} and {record}", flush=True)
    return numbers
