"""`attent bench e2e`: the quality-vs-time frontier of every training method, the way a user decides.

    attent bench e2e --task digits                   # one task, every method, budgets 0.25..1, 3 seeds
    attent bench e2e --task all --record             # the five clean tasks, updating bench/results/
    attent bench e2e --task waste --record           # the five waste testbeds
    attent bench e2e --task scb --quick              # tiny tasks: a smoke run in seconds
    attent bench e2e --task digits --methods full,default,random --budgets 0.5,1 --seeds 2
    attent bench e2e --extend bench/results/e2e_prose_lm.json --seeds 5   # add seeds 3, 4 to a record

A run's budget b is the fraction of its recipe's ``epochs * N`` training examples it may process.
Full data at b is the shortened schedule a user would otherwise run (``round(b * epochs)``
epochs); a teacher at b shrinks its subsets over the recipe's epochs to spend b (InfoBatch, which
sizes its subsets from the scores, gets the prune ratio that approaches b and is recorded at what
it really spent; the published recipe has no budget and runs at b = 1 only). Every run of a seed
starts from the same initialization and data, with the task's optimizer and its warm-up + cosine
schedule over the optimizer steps the run takes.

Methods (``--methods``; ``full`` always runs, it is the baseline):

- ``full``: full data, the shortened schedule.
- ``default``: ``Teacher(N, epochs=E, budget=b, when="always")``, the library's default teacher
  told to select, fed fgrad: soft selection (Gumbel-top-k) re-drawn every epoch at the same share,
  no warm-up epoch (the variant the teacher study, ``bench/results/teacher_study.json``, found
  never far below a random subset on its four tasks). Every method's teacher here selects
  (``when="always"``): without a reference's evidence, ``fit``'s default (``when="evidence"``) would
  run full data's shortened schedule, the ``full`` rows.
- ``loss``, ``gradnorm``: the default teacher's schedule fed that score, under the strategy the
  study found best for it (``BEST_STRATEGY``; gradnorm was not in the study and takes fgrad's).
- ``hard``: the former default, hard top-k by fgrad re-selected every epoch.
- ``importance``: importance sampling by fgrad with unbiased weights, re-drawn every epoch.
- ``infobatch``: InfoBatch (loss score, rescaled soft pruning with annealing).
- ``random``: a uniform random subset, re-drawn every epoch.
- ``published``: ``Teacher.published`` (loss score, a scoring pass per cycle), b = 1.
- ``pool``, ``pool-25``, ``pool-10``: selection from a presampled pool by learnability (the
  learner's loss less the task's reference model's), hard, keeping 50% / 25% / 10% of the
  candidates each step (``attent.PoolSelection``; it selects only where the reference finds waste,
  else it runs full data's schedule and says so); ``pool-soft``: the same at 50%, Gumbel-soft.
- ``teach``, ``teach-hard``: the default teacher (``Teacher(N, epochs=E, budget=b)``: the same
  share every epoch, ``when="evidence"``) fed learnability from its training steps (stale scores,
  no candidate forwards; an example the learner has not been scored on takes the prior of
  :class:`attent.Teaching`: the learner's typical loss less its reference loss), soft (the
  default) or hard top-k.
- ``static``: a one-off static filter by the same reference (the half of the pool with the lowest
  reference loss), then full data's shortened schedule on it at the same number of examples.
- ``holdout``: full data with the reference's clean holdout added to the training set, at the
  same number of examples (the baseline that gets the reference's data).

The methods that read a reference (``pool*``, ``teach*``, ``static``) share one reference per seed, trained
and scored before the runs (``Task.reference``); its seconds are charged to every run that reads
it (cold: ``saving``) or left out (amortised: ``saving_amortised``). A clean task has no reference:
``static`` and ``holdout`` cannot run there, and ``pool`` runs uniform (no evidence of waste).

Per (method, budget, seed) the record holds the final quality (the mean of the last three
evaluations), wall time (training steps + scoring passes + selection; evaluation excluded),
examples processed, optimizer steps, selection overhead, the reference's seconds and the run's
cost by item (reference training and scoring, candidate forwards, refresh passes, training steps,
selection). Per task:

(a) each method's frontier (seed means per budget) and its plot, quality against wall time;
(b) time to full-data quality: the least wall time at which a method's frontier, interpolated
    linearly between its budgets, reaches the full-data b = 1 quality (seed mean) within one seed
    standard deviation, and its saving against full data's own frontier;
(c) quality at equal budget: each method minus full data at b = 0.5 and 0.25, paired by seed
    (mean ± sample std; positive = better), and the same against random.

Wall times are only comparable within a run on an otherwise idle machine: run it alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from attent.plots import plot_curves  # noqa: E402
from attent.schedules import IntervalSchedule, RatioSchedule  # noqa: E402
from attent.strategies import Importance, InfoBatch  # noqa: E402
from attent.tasks import CLEAN_TASKS, TASKS, WASTE_TASKS, Task, make_task  # noqa: E402
from attent.tasks.compare import (  # noqa: E402
    EVAL_POINTS,
    FULL_DATA,
    PUBLISHED,
    Method,
    final_metric,
    format_table,
    run_cost,
    run_method,
)
from attent.tasks.frontier import (  # noqa: E402
    Point,
    equal_budget,
    frontier,
    full_data_target,
    mean_std,
    saving,
    time_to_quality,
)
from bench import record_info  # noqa: E402

BASELINE = "full"
RANDOM = "random"
STATIC = "static"
HOLDOUT = "holdout"
BASELINES = (BASELINE, RANDOM, STATIC, HOLDOUT)  # each method is compared with these at equal budget
BUDGETS = (0.25, 0.5, 0.75, 1.0)
EQUAL_BUDGETS = (0.5, 0.25)
CONSTANT = RatioSchedule.constant(0.5)  # "the same share every epoch": the budget scales it


def every_epoch(epochs: int, budget: float) -> dict[str, Any]:
    """a selection point at every epoch (one cycle per teaching epoch), no warm-up epoch"""
    return {"cycles": None, "interval": IntervalSchedule.fixed(epochs), "reselect_each_epoch": True, "warmup_epochs": 0}


def infobatch_near(epochs: int, budget: float) -> dict[str, Any]:
    """prune ratio min(0.95, (1 - b) / (0.5 * 0.875)): about half the examples lie below the mean
    score and are pruned at that rate for 0.875 of the epochs; no warm-up epoch"""
    return {"strategy": InfoBatch(prune_ratio=min(0.95, max(0.0, (1.0 - budget) / (0.5 * 0.875))), delta=0.875),
            "warmup_epochs": 0}


# The strategy the teacher study (bench/results/teacher_study.json) found best for each score.
BEST_STRATEGY = {"loss": "soft", "fgrad": "soft", "gradnorm": "soft"}
METHODS: dict[str, Method] = {
    BASELINE: FULL_DATA,
    "default": Method("default teacher (fgrad, soft)"),
    **{score: Method(f"{score} ({BEST_STRATEGY[score]})", options={"strategy": BEST_STRATEGY[score]}, score=score)
       for score in ("loss", "gradnorm")},
    "hard": Method("fgrad, hard (the former default)", options={"strategy": "hard"}),
    "importance": Method("importance sampling (fgrad)", options={"strategy": Importance(), "ratio": CONSTANT},
                         extra=every_epoch),
    "infobatch": Method("InfoBatch", budgeted=False, extra=infobatch_near, score="loss"),
    RANDOM: Method("random subset", options={"strategy": "random", "ratio": CONSTANT}, extra=every_epoch, score="loss"),
    "published": PUBLISHED,
    "pool": Method("pooled learnability (hard, keep 50%)", "pool", options={"keep": 0.5}, score="learnability"),
    "pool-25": Method("pooled learnability (hard, keep 25%)", "pool", options={"keep": 0.25}, score="learnability"),
    "pool-10": Method("pooled learnability (hard, keep 10%)", "pool", options={"keep": 0.1}, score="learnability"),
    "pool-soft": Method("pooled learnability (soft, keep 50%)", "pool", options={"keep": 0.5, "strategy": "soft"},
                        score="learnability"),
    "teach": Method("per-epoch teacher fed learnability (soft: the default teacher with a reference)",
                    options={"when": "evidence"}, score="learnability"),
    "teach-hard": Method("per-epoch teacher fed learnability (hard top-k)", options={"when": "evidence", "strategy": "hard"},
                         score="learnability"),
    STATIC: Method("static filter by the reference (keep 50%), uniform", "static", options={"keep": 0.5}, score="loss"),
    HOLDOUT: Method("full data + the reference's holdout", "holdout", score="loss"),
}
CLEAN_METHODS = ("full", "default", "loss", "gradnorm", "hard", "importance", "infobatch", "random", "published")
WASTE_METHODS = ("full", "default", "random", "pool", "pool-25", "teach", "teach-hard", "static", "holdout")
EXTRA_VERSIONS = ("timm", "transformers", "scikit-learn", "matplotlib")
DEFINITIONS = (
    "quality: mean of a run's last three of 20 evaluations evenly spaced over its steps (at 90%, 95%, 100%); "
    "wall_time: training seconds (steps + scoring passes + selection, evaluation excluded); target: full-data b=1 "
    "quality (seed mean) less one seed std (plus for losses); time_to_quality: least wall time at which the method's frontier (seed means per budget, joined "
    "by straight lines in wall time) reaches the target; saving: 1 - time_to_quality / full data's own; "
    "advantage: method minus baseline at the same budget, per seed, sign turned so positive = better; mean and "
    "sample std (n - 1) over seeds; cold: the reference's training and scoring seconds added to each run that reads "
    "it; amortised (saving_amortised): left out"
)


class BenchSize(NamedTuple):
    """A task's benchmark size: ``epochs`` of the recipe (None: the task's) and ``train_examples``
    (None: the whole training set; else a fixed random subset, the same for every seed and method)."""

    epochs: int | None = None
    train_examples: int | None = None


BENCH_SIZES: dict[str, BenchSize] = {
    "digits": BenchSize(),
    "digits_augmented": BenchSize(),
    "stdlib_lm": BenchSize(),
    "scb": BenchSize(),
    "icl_regression": BenchSize(train_examples=4096),
    **{name: BenchSize() for name in WASTE_TASKS},
}
SUBSET_SEED = 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attent bench e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=(*TASKS, "all", "waste"),
                        help="the task, 'all' (the five clean tasks) or 'waste' (the five waste testbeds)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="comma-separated fractions in (0, 1]")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated, from {', '.join(METHODS)} (default: {', '.join(CLEAN_METHODS)} on a "
                        f"clean task, {', '.join(WASTE_METHODS)} on a waste testbed; full always runs)")
    parser.add_argument("--quick", action="store_true", help="the tiny tasks: a smoke run in seconds")
    parser.add_argument("--json", type=Path, default=None,
                        help="the record's path (default e2e_<task>.json in the output folder); with --task all it "
                        "must contain {task}")
    parser.add_argument("--extend", type=Path, default=None, metavar="RECORD",
                        help="run a record's task, methods and budgets for the seeds it lacks up to --seeds, add their "
                        "runs to it and recompute its readings (the record notes each extension and its conditions)")
    parser.add_argument("--reanalyse", type=Path, default=None, metavar="RECORD",
                        help="recompute a record's readings from its own per-run points (no training) and rewrite it")
    record_info.add_output_options(parser)
    return parser


def _listed(text: str, known: Sequence[str], what: str, parser: argparse.ArgumentParser) -> list[str]:
    asked = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in asked if name not in known]
    if unknown or not asked:
        parser.error(f"{what}: unknown or empty {unknown}; choose from {', '.join(known)}")
    return asked


def _budgets(text: str, parser: argparse.ArgumentParser) -> list[float]:
    try:
        budgets = sorted({float(b) for b in text.split(",") if b.strip()})
    except ValueError:
        parser.error(f"--budgets must be comma-separated numbers, got {text!r}")
    if not budgets or not all(0 < b <= 1 for b in budgets) or 1.0 not in budgets:
        parser.error(f"--budgets must lie in (0, 1] and include 1.0 (the full-data target), got {text!r}")
    return budgets


def _sized(task: Task, train_examples: int | None) -> Task:
    """The task with a fixed random subset of ``train_examples`` training examples (None or more
    than it has: unchanged)."""
    if train_examples is None or train_examples >= len(task.train):
        return task
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    keep = torch.sort(torch.randperm(len(task.train), generator=generator)[:train_examples]).values
    return dataclasses.replace(task, train=Subset(task.train, keep.tolist()))


def analyse(points: Sequence[Point], method_ids: Sequence[str], *, higher_is_better: bool) -> dict[str, Any]:
    """Frontiers, the target, each method's time to it and saving (cold, and amortised: without the
    reference's seconds), and equal-budget advantages over each baseline that ran."""
    target = full_data_target(points, baseline=BASELINE, higher_is_better=higher_is_better)
    curves = {m: frontier(points, m) for m in method_ids}
    full_time = time_to_quality(curves[BASELINE], target, higher_is_better=higher_is_better)
    methods = {}
    for m in method_ids:
        reached = time_to_quality(curves[m], target, higher_is_better=higher_is_better)
        amortised = time_to_quality(frontier(points, m, amortised=True), target, higher_is_better=higher_is_better)
        methods[m] = {
            "frontier": [dataclasses.asdict(p) for p in curves[m]],
            "time_to_quality": reached,
            "saving": saving(reached, full_time),
            "time_to_quality_amortised": amortised,
            "saving_amortised": saving(amortised, full_time),
            "selection_overhead": mean_std([p.selection_overhead for p in points if p.method == m]),
            **{f"vs_{'full' if base == BASELINE else base}": {
                str(b): equal_budget(points, method=m, baseline=base, budget=b, higher_is_better=higher_is_better)
                for b in EQUAL_BUDGETS} for base in BASELINES if base in method_ids or base in (BASELINE, RANDOM)},
        }
    return {"target": target, "full_time_to_quality": full_time, "methods": methods}


def run_task(name: str, method_ids: Sequence[str], budgets: Sequence[float], *, seeds: int, quick: bool,
             first_seed: int = 0) -> dict[str, Any]:
    """Every method at every budget on task ``name`` for seeds ``first_seed`` .. ``seeds`` - 1."""
    size = BENCH_SIZES[name]
    points: list[Point] = []
    curves: dict[str, list[dict[str, float]]] = {}
    infeasible: dict[str, str] = {}
    references: dict[str, Any] = {}
    for seed in range(first_seed, seeds):
        whole = make_task(name, seed=seed, quick=quick)
        task = _sized(whole, None if quick else size.train_examples)
        epochs = task.defaults.epochs if quick or size.epochs is None else size.epochs
        reference = None
        if task.reference is not None and any(METHODS[m].needs_reference for m in method_ids):
            print(f"[{name}] seed {seed}: the reference model ...", flush=True)
            reference = task.reference.fit(task, seed)
            references[str(seed)] = {"cost": reference.cost.as_dict(), "evidence": dataclasses.asdict(reference.evidence),
                                     "val_losses": reference.val_losses}
        for method in method_ids:
            spec = METHODS[method]
            missing = ("no reference model" if spec.kind == "static" and reference is None else
                       "no clean holdout" if spec.kind == "holdout" and "holdout" not in task.info else None)
            for budget in spec.budgets(budgets):
                if missing:
                    infeasible[f"{method}@{budget}"] = f"task {name!r} has {missing}"
                    continue
                try:  # a plan whose full-data epochs alone exceed the budget cannot run at it
                    spec.teacher(len(task.train), epochs=epochs, seed=seed, budget=budget)
                except ValueError as error:
                    infeasible[f"{method}@{budget}"] = str(error)
                    continue
                print(f"[{name}] seed {seed}: {method} at budget {budget} ...", flush=True)
                result = run_method(task, spec, seed=seed, budget=budget, epochs=epochs, reference=reference)
                reads = spec.needs_reference and reference is not None
                points.append(Point(method, budget, seed, final_metric(result.history, task.metric), result.wall_time,
                                    result.examples_seen, result.selection_overhead, result.steps,
                                    reference.cost.time if reads else 0.0, run_cost(result, spec, reference)))
                if seed == 0:
                    curves[f"{method}@{budget}"] = [{k: r[k] for k in ("wall_time", "examples_seen", task.metric)}
                                                    for r in result.history]
    return {
        "task": name, "metric": task.metric, "higher_is_better": task.higher_is_better,
        "sizes": {"seeds": seeds, "budgets": list(budgets), "epochs": epochs, "train_examples": len(task.train),
                  "task_train_examples": len(whole.train), "val_examples": len(task.val),
                  "batch_size": task.defaults.batch_size, "eval_points": EVAL_POINTS,
                  "model_parameters": sum(p.numel() for p in task.model(0).parameters()), "quick": quick},
        "points": [p.as_dict() for p in points],
        "infeasible": infeasible,
        "references": references,
        "curves_seed0": curves,
        **analyse(points, method_ids, higher_is_better=task.higher_is_better),
    }


def _fmt(value: float | None, scale: float, digits: int) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _pm(stat: Mapping[str, Any], scale: float, digits: int) -> str:
    return "-" if not stat["n"] else f"{stat['mean'] * scale:+.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def format_part(part: Mapping[str, Any]) -> str:
    """The task's table: quality per budget, time to full-data quality and saving, equal-budget
    advantage over full data, selection overhead."""
    percent = part["metric"] == "val_accuracy"
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    budgets = part["sizes"]["budgets"]
    header = ["method", *(f"b={b}" for b in budgets), "time to quality s", "saving %", "amortised %",
              *(f"vs full b={b}" for b in EQUAL_BUDGETS), "steps b=0.25", "selection %"]
    rows = []
    for method, reading in part["methods"].items():
        by_budget = {p["budget"]: p for p in reading["frontier"]}
        steps = by_budget.get(0.25, {}).get("steps")
        rows.append([method, *(_fmt(by_budget[b]["quality"] if b in by_budget else None, scale, digits) for b in budgets),
                     _fmt(reading["time_to_quality"], 1.0, 1), _fmt(reading["saving"], 100.0, 1),
                     _fmt(reading.get("saving_amortised"), 100.0, 1),
                     *(_pm(reading["vs_full"][str(b)], scale, digits) for b in EQUAL_BUDGETS),
                     "-" if steps is None else f"{steps:.0f}", _fmt(reading["selection_overhead"]["mean"], 100.0, 1)])
    return format_table(header, rows)


def _plot(part: Mapping[str, Any], path: Path) -> Path:
    """Each method's frontier: quality (seed mean) against wall time, one marker per budget."""
    metric = part["metric"]
    lines = {method: [{"wall_time": p["wall_time"], metric: p["quality"]} for p in reading["frontier"]]
             for method, reading in part["methods"].items()}
    return plot_curves(lines, path, metric=metric, x="wall_time",
                       title=f"{part['task']}: {metric} (mean of {part['sizes']['seeds']} seeds) vs wall time, budgets "
                             f"{', '.join(map(str, part['sizes']['budgets']))}")


def _output_path(template: Path | None, task: str, many: bool, folder: Path) -> Path:
    if template is None:
        return folder / f"e2e_{task}.json"
    if many and "{task}" not in str(template):
        raise ValueError(f"--json must contain {{task}} with --task all, got {template}")
    return Path(str(template).replace("{task}", task))


def reanalyse(path: Path) -> None:
    """Recompute ``path``'s readings from its points with the current :func:`analyse` and rewrite it
    (the runs themselves are not repeated); the record notes when and by what command."""
    record = json.loads(path.read_text())
    points = [Point(**p) for p in record["points"]]
    method_ids = list(dict.fromkeys(p.method for p in points))
    record.update(analyse(points, method_ids, higher_is_better=record["higher_is_better"]))
    record["reanalysed"] = {"date": datetime.date.today().isoformat(), "argv": ["--reanalyse", str(path)]}
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(format_part(record))
    print(f"rewrote {path}")


def extend(path: Path, seeds: int, conditions: str, argv: Sequence[str]) -> None:
    """Run ``path``'s task, methods and budgets for its missing seeds up to ``seeds`` - 1, add the
    runs (points, references, seed curves stay seed 0's) and recompute the readings."""
    record = json.loads(path.read_text())
    have = record["sizes"]["seeds"]
    if seeds <= have:
        raise ValueError(f"{path} already holds seeds 0 .. {have - 1}; --seeds must exceed {have}")
    method_ids = list(record["method_definitions"])
    part = run_task(record["task"], method_ids, record["sizes"]["budgets"], seeds=seeds,
                    quick=record["sizes"]["quick"], first_seed=have)
    points = [Point(**p) for p in record["points"]] + [Point(**p) for p in part["points"]]
    record["points"] = [p.as_dict() for p in points]
    record["references"] = {**record.get("references", {}), **part["references"]}
    record["infeasible"] = {**record["infeasible"], **part["infeasible"]}
    record["sizes"]["seeds"] = seeds
    record.update(analyse(points, method_ids, higher_is_better=record["higher_is_better"]))
    now = datetime.datetime.now(datetime.timezone.utc).astimezone()
    record.setdefault("extended", []).append({"timestamp": now.isoformat(timespec="seconds"), "argv": list(argv),
                                              "seeds": list(range(have, seeds)), "conditions": conditions})
    record["plot"] = str(_plot(record, path.with_suffix(".png")))
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(format_part(record))
    print(f"added seeds {have} .. {seeds - 1} to {path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(argv)
    if args.reanalyse is not None:
        reanalyse(args.reanalyse)
        return 0
    if args.extend is not None:
        try:
            extend(args.extend, args.seeds, args.conditions, argv)
        except ValueError as error:
            parser.error(str(error))
        return 0
    if args.task is None:
        parser.error("--task is required (or --extend / --reanalyse RECORD)")
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    budgets = _budgets(args.budgets, parser)
    tasks = list(CLEAN_TASKS) if args.task == "all" else list(WASTE_TASKS) if args.task == "waste" else [args.task]
    if args.methods is not None:
        _listed(args.methods, list(METHODS), "--methods", parser)
    try:
        outputs = {task: _output_path(args.json, task, len(tasks) > 1, record_info.output_dir(args)) for task in tasks}
    except ValueError as error:
        parser.error(str(error))
    device = record_info.device()
    machine, versions = record_info.machine(device), record_info.versions(*EXTRA_VERSIONS)
    for task in tasks:
        default = WASTE_METHODS if task in WASTE_TASKS else CLEAN_METHODS
        asked = _listed(args.methods, list(METHODS), "--methods", parser) if args.methods is not None else list(default)
        method_ids = [BASELINE, *dict.fromkeys(m for m in asked if m != BASELINE)]
        part = run_task(task, method_ids, budgets, seeds=args.seeds, quick=args.quick)
        sizes = part["sizes"]
        print(f"\n{task}: recipe {sizes['epochs']} epochs, {sizes['train_examples']} training examples, {args.seeds} "
              f"seed(s); target {part['metric']} {part['target']:.4f} (full data b=1 less one std)")
        print(format_part(part))
        out = outputs[task]
        plot = _plot(part, out.with_suffix(".png"))
        now = datetime.datetime.now(datetime.timezone.utc).astimezone()
        record = {"benchmark": "attent bench e2e", "date": now.date().isoformat(),
                  "timestamp": now.isoformat(timespec="seconds"), "argv": argv, "device": device.type,
                  "machine": {**machine, "conditions": args.conditions}, "versions": dict(versions),
                  "method_definitions": {m: METHODS[m].describe() for m in method_ids}, "definitions": DEFINITIONS,
                  **part, "plot": str(plot)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {out} and {plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
