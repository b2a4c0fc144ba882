"""`attent bench e2e`: every training method on the same task and the same seeds, compared by the
wall time each needs to reach the full-data run's final metric.

    attent bench e2e --task digits                   # the task at its benchmark size, 3 seeds
    attent bench e2e --task all --record             # the four tasks, updating bench/results/
    attent bench e2e --task scb --quick              # tiny tasks, 2 epochs: seconds
    attent bench e2e --task digits --methods full,fgrad-hard,infobatch --seeds 2 --json out.json

Methods (``--methods``, comma-separated; ``full`` always runs, it is the baseline):

- ``full``: every example every epoch.
- ``<score>-<strategy>`` for score in loss, fgrad, gradnorm and strategy in hard, soft: AtteNT,
  ``Teacher(N, strategy=strategy, epochs=E, seed=s)`` fed ``score`` with its default schedule (one
  full-data epoch, 10 cycles, ratio cosine 0.2 -> 0.8, fixed interval 5), scored online from the
  training steps (``gradnorm`` needs ``attent.probe``).
- ``published``: ``Teacher.published(N, epochs=E, seed=s)``, the published code's recipe (loss
  score, the same schedule, every example re-scored by a forward pass at each selection point).
- ``infobatch``: InfoBatch, ``strategy="infobatch"`` with prune ratio 0.5, delta 0.875, loss score,
  no warm-up epoch (a first epoch without scores prunes nothing, as InfoBatch does).
- ``random``: a uniform random subset at the AtteNT schedule's ratio.

For each seed s, every method trains a model initialized from s on the task drawn from s, with
the task's recipe (optimizer, per-epoch learning-rate schedule, batch size, evaluation points).
The target of seed s is the final metric of its full-data run; a method's time to target is the
first evaluation at which it reaches it (wall time: training steps plus every scoring pass and
selection, evaluation excluded), time saved = 1 - that / the full-data run's own. Tables give the
mean +- sample standard deviation (n - 1; 0 for one seed) over seeds; time to target and time
saved average over the seeds that reached the target and say how many did when not all.

Sizes: without ``--quick`` each task runs at ``BENCH_SIZES`` (its own recipe's epochs, and a fixed
random subset of the training set where the whole one does not fit the budget), chosen so that the
four tasks, every method and 3 seeds take about 40 minutes on an otherwise idle 2-core CPU (other
work on the machine distorts every wall time: run the benchmark alone). The record
(``e2e_<task>.json`` in ``runs/bench/``, or in ``bench/results/`` with ``--record``; the plot
beside it as ``.png``) holds the sizes, the machine,
the versions, the command line, the per-seed numbers and curves, and the summary.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from attent.plots import plot_curves  # noqa: E402
from attent.strategies import InfoBatch  # noqa: E402
from attent.tasks import TASKS, Task, make_task  # noqa: E402
from attent.tasks.compare import FULL_DATA, PUBLISHED, Method, RunSummary, format_table, run_method, summarize  # noqa: E402
from bench import record_info  # noqa: E402

BASELINE = "full"
SCORES = ("loss", "fgrad", "gradnorm")
TEACHER_STRATEGIES = ("hard", "soft")
METHODS: dict[str, Method] = {
    BASELINE: FULL_DATA,
    **{f"{score}-{strategy}": Method(f"AtteNT {score} {strategy}", "teacher", {"strategy": strategy}, score=score)
       for score in SCORES for strategy in TEACHER_STRATEGIES},
    "published": PUBLISHED,
    "infobatch": Method("InfoBatch", "teacher", {"strategy": InfoBatch(prune_ratio=0.5, delta=0.875), "warmup_epochs": 0},
                        score="loss"),
    "random": Method("random subset", "teacher", {"strategy": "random"}, score="loss"),
}
# The per-seed numbers a summary averages, in table order.
FIELDS = ("final", "time_to_target", "time_saved", "examples_seen", "selection_overhead", "wall_time")
# History keys kept in the record's curves.
CURVE_KEYS = ("epoch", "step", "wall_time", "examples_seen")
EXTRA_VERSIONS = ("timm", "transformers", "scikit-learn", "matplotlib")
DEFINITIONS = (
    "target: the same seed's full-data final metric; time_to_target: training wall seconds (steps + scoring passes "
    "+ selection, evaluation excluded) at the first evaluation reaching it; time_saved: 1 - time_to_target / "
    "full-data time_to_target; selection_overhead: selection seconds / wall seconds; summary: mean and sample std "
    "(n - 1) over seeds, None values (never reached) and failed seeds left out, n counts the values used"
)


class BenchSize(NamedTuple):
    """A task's benchmark size: ``epochs`` per run (None: the task's recipe) and ``train_examples``
    (None: the whole training set; else a fixed random subset of that many, the same for every seed
    and method)."""

    epochs: int | None = None
    train_examples: int | None = None


# Measured on the 2-core CPU (a full-data epoch with its evaluations, machine otherwise idle): digits
# 0.5 s, scb 1.2 s, icl_regression 2.65 s (8,192 prompts), stdlib_lm 3.6 s; an AtteNT run costs about
# 0.55 of a full-data run, a gradnorm step 1.6 times a loss-scored one, the published recipe about
# 0.65, InfoBatch 0.75: one seed of the eleven methods costs about 6.9 full-data runs. At these sizes
# a seed takes about 140 s (digits) + 165 s (scb) + 185 s (icl_regression) + 300 s (stdlib_lm), and
# 3 seeds about 40 minutes. Every task keeps its own recipe; only icl_regression trains on half its
# prompts.
BENCH_SIZES: dict[str, BenchSize] = {
    "digits": BenchSize(),
    "stdlib_lm": BenchSize(),
    "scb": BenchSize(),
    "icl_regression": BenchSize(train_examples=4096),
}
SUBSET_SEED = 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attent bench e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=(*TASKS, "all"), help="the task, or all four")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)} (default: all; full always runs)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the task's BENCH_SIZES)")
    parser.add_argument("--quick", action="store_true", help="the tiny tasks at their 2 epochs: a smoke run in seconds")
    parser.add_argument("--json", type=Path, default=None,
                        help="the record's path (default e2e_<task>.json in the output folder); with --task all it "
                        "must contain {task}")
    record_info.add_output_options(parser)
    return parser


def _method_ids(text: str, parser: argparse.ArgumentParser) -> list[str]:
    asked = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in asked if name not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    return [BASELINE, *dict.fromkeys(name for name in asked if name != BASELINE)]


def _sized(task: Task, train_examples: int | None) -> Task:
    """The task with a fixed random subset of ``train_examples`` training examples (None or more
    than it has: unchanged)."""
    if train_examples is None or train_examples >= len(task.train):
        return task
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    keep = torch.sort(torch.randperm(len(task.train), generator=generator)[:train_examples]).values
    return dataclasses.replace(task, train=Subset(task.train, keep.tolist()))


def mean_std(values: Sequence[float]) -> dict[str, float | int | None]:
    """``{"mean", "std", "n"}`` of ``values``: the sample standard deviation (n - 1 in the
    denominator), 0 for one value; mean and std None for none."""
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize_seeds(per_seed: Sequence[Mapping[str, Any]], method_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """method -> field -> :func:`mean_std` over the seeds' ``runs[method][field]`` (seeds where
    the method failed, and None values (target never reached), are left out; ``n`` counts the rest),
    plus ``seeds``: the number of seeds the method ran on."""
    summary = {}
    for method in method_ids:
        runs = [seed["runs"][method] for seed in per_seed if method in seed["runs"]]
        stats = {field: mean_std([run[field] for run in runs if run[field] is not None]) for field in FIELDS}
        summary[method] = {"seeds": len(runs), **stats}
    return summary


def _cell(stat: Mapping[str, Any], seeds: int, scale: float, digits: int) -> str:
    if stat["n"] == 0:
        return "never" if seeds else "-"
    text = f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"
    return text if stat["n"] == seeds else f"{text} ({stat['n']}/{seeds})"


def format_summary(summary: Mapping[str, Mapping[str, Any]], metric: str) -> str:
    """The summary as a table, one row per method (mean ± std over seeds)."""
    percent = metric == "val_accuracy"
    header = ["method", f"final {metric}{' %' if percent else ''}", "time to target s", "time saved %", "examples seen",
              "selection overhead %", "wall time s"]
    formats = {"final": (100.0, 2) if percent else (1.0, 4), "time_to_target": (1.0, 1), "time_saved": (100.0, 1),
               "examples_seen": (1.0, 0), "selection_overhead": (100.0, 1), "wall_time": (1.0, 1)}
    rows = [[method, *(_cell(stats[field], stats["seeds"], *formats[field]) for field in FIELDS)]
            for method, stats in summary.items()]
    return format_table(header, rows)


def _seed_run(row: RunSummary, history: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Any]:
    return {
        "final": row.final, "time_to_target": row.time_to_target, "time_saved": row.time_saved,
        "examples_seen": row.examples_seen, "selection_overhead": row.selection_overhead, "wall_time": row.wall_time,
        "curve": [{key: record[key] for key in (*CURVE_KEYS, metric)} for record in history],
    }


def run_task(name: str, method_ids: Sequence[str], *, seeds: int, epochs: int | None, quick: bool) -> dict[str, Any]:
    """Every method on task ``name`` for seeds 0 .. ``seeds`` - 1: the record's task part (sizes,
    per-seed numbers, failures, summary). A method that raises is recorded under ``failed`` (the
    baseline's failure is raised)."""
    size = BENCH_SIZES[name]
    train_examples = None if quick else size.train_examples
    epochs = epochs if epochs is not None or quick else size.epochs
    per_seed, failed = [], {}
    for seed in range(seeds):
        whole = make_task(name, seed=seed, quick=quick)
        task = _sized(whole, train_examples)
        run_epochs = task.defaults.epochs if epochs is None else epochs
        results = {}
        for method in method_ids:
            print(f"[{name}] seed {seed}: {method} ...", flush=True)
            try:
                results[method] = run_method(task, METHODS[method], seed=seed, epochs=run_epochs)
            except Exception as error:  # a failing method is recorded and the others still run
                if method == BASELINE:
                    raise
                failed.setdefault(method, {})[seed] = f"{type(error).__name__}: {error}"
                print(f"[{name}] seed {seed}: {method} FAILED: {failed[method][seed]}", flush=True)
        rows = summarize(results, metric=task.metric, baseline=BASELINE)
        runs = {row.method: _seed_run(row, results[row.method].history, task.metric) for row in rows}
        per_seed.append({"seed": seed, "target": rows[0].final, "runs": runs})
    return {
        "task": name,
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "sizes": {"seeds": seeds, "epochs": run_epochs, "train_examples": len(task.train),
                  "task_train_examples": len(whole.train),
                  "val_examples": len(task.val), "batch_size": task.defaults.batch_size,
                  "eval_every": task.defaults.eval_every,
                  "model_parameters": sum(p.numel() for p in task.model(0).parameters()), "quick": quick},
        "per_seed": per_seed,
        "failed": failed,
        "summary": summarize_seeds(per_seed, method_ids),
    }


def _output_path(template: Path | None, task: str, many: bool, folder: Path) -> Path:
    if template is None:
        return folder / f"e2e_{task}.json"
    if many and "{task}" not in str(template):
        raise ValueError(f"--json must contain {{task}} with --task all, got {template}")
    return Path(str(template).replace("{task}", task))


def _plot(part: Mapping[str, Any], path: Path) -> Path:
    """The first seed's curves of every method: the task's metric against training wall time
    (20 colours, so that no two of the eleven methods share one)."""
    curves = {method: run["curve"] for method, run in part["per_seed"][0]["runs"].items()}
    palette = matplotlib.cycler(color=matplotlib.colormaps["tab20"].colors)
    with matplotlib.rc_context({"axes.prop_cycle": palette}):
        return plot_curves(curves, path, metric=part["metric"], x="wall_time",
                           title=f"{part['task']}, seed 0: {part['metric']} vs training wall time")


def _record(part: Mapping[str, Any], *, argv: Sequence[str], device: torch.device, machine: Mapping[str, Any],
            versions: Mapping[str, Any], method_ids: Sequence[str], plot: Path) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.timezone.utc).astimezone()
    return {
        "benchmark": "attent bench e2e",
        "date": now.date().isoformat(),
        "timestamp": now.isoformat(timespec="seconds"),
        "argv": list(argv),
        "device": device.type,
        "machine": dict(machine),
        "versions": dict(versions),
        "methods": {method: METHODS[method].describe() for method in method_ids},
        "definitions": DEFINITIONS,
        **part,
        "plot": str(plot),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    method_ids = _method_ids(args.methods, parser)
    tasks = list(TASKS) if args.task == "all" else [args.task]
    try:
        outputs = {task: _output_path(args.json, task, len(tasks) > 1, record_info.output_dir(args)) for task in tasks}
    except ValueError as error:
        parser.error(str(error))
    device = record_info.device()
    machine, versions = record_info.machine(device), record_info.versions(*EXTRA_VERSIONS)
    any_failed = False
    for task in tasks:
        part = run_task(task, method_ids, seeds=args.seeds, epochs=args.epochs, quick=args.quick)
        sizes = part["sizes"]
        print(f"\n{task}: {sizes['epochs']} epochs, {sizes['train_examples']} training examples, {args.seeds} "
              f"seed(s); target = the same seed's full-data final {part['metric']}")
        print(format_summary(part["summary"], part["metric"]))
        for method, seeds_failed in part["failed"].items():
            print(f"FAILED {method} (seeds {sorted(seeds_failed)}): {next(iter(seeds_failed.values()))}")
        any_failed = any_failed or bool(part["failed"])
        out = outputs[task]
        plot = _plot(part, out.with_suffix(".png"))
        record = _record(part, argv=argv, device=device, machine=machine, versions=versions, method_ids=method_ids,
                         plot=plot)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {out} and {plot}")
    return 1 if any_failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
