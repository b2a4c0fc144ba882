"""The teacher study: teacher variants at equal budget against full data's shortened schedule and a
random subset, on the same seeds. Quality only (the mean of each run's last three evaluations);
wall times are recorded but the study reads quality at equal budget, which does not depend on the
machine's load.

    python -m bench.e2e.study --tasks digits,digits_augmented --budgets 0.25,0.5 --seeds 2 [--record]
    python -m bench.e2e.study --tasks digits_noisy --variants random-each,pool,pool-10,pool-soft,pool-loss,\
        learn-each,learn-hard-each,static,static-25 --seeds 3 --json bench/results/waste_study.json

On a waste testbed the variants that read a reference (pooled selection, the static filters, the
teachers fed learnability) share one reference model per seed, as the frontier's do.

Writes ``teacher_study.json`` (runs/bench/, or bench/results/ with --record): every run, and per
(task, budget, variant) the paired advantage over full data and over random (mean, std, n). A
record already there keeps its other tasks (each task holds the command that measured it), so the
study can be run one task at a time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from attent.schedules import IntervalSchedule, RatioSchedule  # noqa: E402
from attent.strategies import Hard, Importance, Soft  # noqa: E402
from attent.tasks import make_task  # noqa: E402
from attent.tasks.compare import FULL_DATA, Method, final_metric, format_table, run_method  # noqa: E402
from attent.tasks.frontier import Point, equal_budget  # noqa: E402
from bench import record_info  # noqa: E402
from bench.e2e.run import CONSTANT, METHODS, every_epoch, infobatch_near  # noqa: E402

DECREASING = RatioSchedule.incremental(1.0, 0.2)  # near full data first, pruned as examples are learned
VARIANTS: dict[str, Method] = {
    "full": FULL_DATA,
    "random-each": Method("random, every epoch", options={"strategy": "random", "ratio": CONSTANT},
                          extra=every_epoch, score="loss"),
    "default-v0": Method("the first Teacher() defaults (hard, cosine 0.2->0.8, 5-epoch held subsets after a full epoch)", score="fgrad",
                         options={"strategy": "hard", "ratio": RatioSchedule(), "interval": IntervalSchedule(), "warmup_epochs": 1,
                                  "reselect_each_epoch": False}),
    "hard-each": Method("hard top-k, every epoch (the former default)", options={"strategy": "hard", "ratio": CONSTANT},
                        extra=every_epoch),
    "hard-mix30-each": Method("hard + 30% random, every epoch",
                              options={"strategy": Hard(random_share=0.3), "ratio": CONSTANT},
                              extra=every_epoch),
    "soft-each": Method("soft (Gumbel-top-k), every epoch — the default", options={"strategy": "soft", "ratio": CONSTANT},
                        extra=every_epoch),
    "soft-loss-each": Method("soft (loss), every epoch", options={"strategy": "soft", "ratio": CONSTANT},
                             extra=every_epoch, score="loss"),
    "soft-loss-hot-each": Method("soft (loss) at temperature 4, every epoch",
                                 options={"strategy": Soft(temperature=4.0), "ratio": CONSTANT},
                                 extra=every_epoch, score="loss"),
    "hard-loss-each": Method("hard (loss), every epoch", options={"strategy": "hard", "ratio": CONSTANT}, extra=every_epoch,
                             score="loss"),
    "importance-each": Method("importance (fgrad), every epoch",
                              options={"strategy": Importance(), "ratio": CONSTANT}, extra=every_epoch),
    "soft-decreasing": Method("soft, every epoch, ratio 1.0 -> 0.2 shape",
                              options={"strategy": "soft", "ratio": DECREASING}, extra=every_epoch),
    "hard-mix30-decreasing": Method("hard + 30% random, every epoch, ratio 1.0 -> 0.2 shape",
                                    options={"strategy": Hard(random_share=0.3), "ratio": DECREASING},
                                    extra=every_epoch),
    "soft-hot-each": Method("soft at temperature 4, every epoch",
                            options={"strategy": Soft(temperature=4.0), "ratio": CONSTANT},
                            extra=every_epoch),
    "infobatch": Method("InfoBatch (prune ratio set for the budget)", budgeted=False, extra=infobatch_near, score="loss"),
    # The waste testbeds' variants: what the reference adds, per step or per epoch, and how much to keep.
    **{name: METHODS[name] for name in ("pool", "pool-25", "pool-10", "pool-soft", "static")},
    "static-25": Method("static filter by the reference (keep 25%), uniform", "static", options={"keep": 0.25},
                        score="loss"),
    "pool-loss": Method("pooled by the learner's loss, no reference (hard, keep 50%)", "pool",
                        options={"keep": 0.5, "when": "always"}, score="loss"),
    "learn-each": Method("per-epoch teacher fed learnability, soft, every epoch (the default teacher with a reference: "
                         "when='evidence')", options={"strategy": "soft", "ratio": CONSTANT, "when": "evidence"},
                         extra=every_epoch, score="learnability"),
    "learn-hard-each": Method("per-epoch teacher fed learnability, hard top-k, every epoch (when='evidence')",
                              options={"strategy": "hard", "ratio": CONSTANT, "when": "evidence"}, extra=every_epoch,
                              score="learnability"),
}


def merged_task(kept: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """A task's record with the variants just run (``fresh``) in place of the same variants of the
    ``kept`` one, its other variants' runs kept. Full data's runs must come out bit-identical in
    both (same seeds and budgets, same quality): otherwise the two runs are not paired and the
    merge is refused. The merged task lists every command that measured it (``argv``, oldest
    first) and the variants each re-measured (``merged``)."""
    def full_runs(task: dict[str, Any]) -> dict[tuple[float, int], float]:
        return {(p["budget"], p["seed"]): p["quality"] for p in task["points"] if p["method"] == "full"}

    old_full, new_full = full_runs(kept), full_runs(fresh)
    differs = sorted(key for key in old_full.keys() & new_full.keys() if old_full[key] != new_full[key])
    if not new_full or not old_full.keys() >= new_full.keys() or differs:
        raise SystemExit(f"--merge: full data's runs differ from the record's (budget, seed) "
                         f"{differs or sorted(new_full.keys() - old_full.keys())}: the runs are not paired; re-run the task "
                         f"whole")
    rerun = {p["method"] for p in fresh["points"]} - {"full"}
    points = [p for p in kept["points"] if p["method"] not in rerun]
    points += [p for p in fresh["points"] if p["method"] in rerun]
    infeasible = {key: why for key, why in kept.get("infeasible", {}).items() if key.split("@")[0] not in rerun}
    argvs = kept["argv"] if kept.get("argv") and isinstance(kept["argv"][0], list) else [kept.get("argv")]
    return {**kept, "points": points, "infeasible": {**infeasible, **fresh["infeasible"]},
            "argv": [*argvs, fresh["argv"]], "date": fresh["date"],
            "merged": [*kept.get("merged", []), {"date": fresh["date"], "variants": sorted(rerun)}]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="digits,digits_augmented")
    parser.add_argument("--budgets", default="0.25,0.5")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--merge", action="store_true",
                        help="re-run only these variants of a task the record holds: keep its other variants' runs, "
                             "after checking that full data's runs come out bit-identical (same seeds, same code path)")
    record_info.add_output_options(parser)
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    budgets = [float(b) for b in args.budgets.split(",") if b]
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    variants = ["full", *dict.fromkeys(v for v in variants if v != "full")]
    device = record_info.device()
    record: dict[str, Any] = {
        "benchmark": "teacher study", "date": datetime.date.today().isoformat(), "argv": argv,
        "device": device.type, "machine": record_info.machine(device), "versions": record_info.versions(),
        "variants": {name: VARIANTS[name].describe() for name in variants}, "tasks": {},
    }
    out = args.json or record_info.output_dir(args) / "teacher_study.json"
    kept_tasks: dict[str, Any] = {}
    if out.exists():
        kept = json.loads(out.read_text())
        kept_tasks = kept.get("tasks", {})
        record.update({key: value for key, value in kept.items() if key not in record})  # e.g. a hand-written note
        for task_name, task_record in kept_tasks.items():
            if task_name not in tasks or args.merge:
                task_record.setdefault("argv", kept.get("argv"))
                task_record.setdefault("date", kept.get("date"))
                record["tasks"][task_name] = task_record
                known = {v: VARIANTS[v].describe() if v in VARIANTS else d for v, d in kept.get("variants", {}).items()}
                record["variants"] = {**known, **record["variants"]}  # the record's order first, then new variants
    for name in tasks:
        points: list[Point] = []
        infeasible: dict[str, str] = {}
        for seed in range(args.seeds):
            task = make_task(name, seed=seed, quick=args.quick)
            reads = task.reference is not None and any(VARIANTS[v].needs_reference for v in variants)
            reference = task.reference.fit(task, seed) if reads else None
            for budget in budgets:
                for variant in variants:
                    try:
                        result = run_method(task, VARIANTS[variant], seed=seed, budget=budget, reference=reference)
                    except ValueError as error:  # a plan that cannot spend this budget (its full epochs exceed it)
                        infeasible[f"{variant}@{budget}"] = str(error)
                        print(f"[{name}] budget {budget}: {variant} infeasible: {error}", flush=True)
                        continue
                    points.append(Point(variant, budget, seed, final_metric(result.history, task.metric),
                                        result.wall_time, result.examples_seen, result.selection_overhead))
                    print(f"[{name}] seed {seed} budget {budget}: {variant} {points[-1].quality:.4f} "
                          f"({points[-1].examples} examples, {points[-1].wall_time:.1f} s)", flush=True)
        higher = task.higher_is_better
        entry = {"argv": argv, "date": record["date"], "metric": task.metric, "higher_is_better": higher,
                 "epochs": task.defaults.epochs, "train_examples": len(task.train), "points": [p.as_dict() for p in points],
                 "infeasible": infeasible}
        if args.merge and name in kept_tasks:
            entry = merged_task(kept_tasks[name], entry)
        shown = list(dict.fromkeys(p["method"] for p in entry["points"]))
        shown_budgets = sorted({p["budget"] for p in entry["points"]})
        runs = [Point(**p) for p in entry["points"]]
        readings = {str(b): {v: {"vs_full": equal_budget(runs, method=v, baseline="full", budget=b, higher_is_better=higher),
                                 "vs_random": equal_budget(runs, method=v, baseline="random-each", budget=b,
                                                           higher_is_better=higher)}
                             for v in shown} for b in shown_budgets}
        record["tasks"][name] = {**entry, "advantage": readings}
        def cell(stat: dict) -> str:
            return "-" if stat["n"] == 0 else f"{stat['mean']:+.4f} ± {stat['std']:.4f}"

        rows = [[v, *(cell(readings[str(b)][v]["vs_full"]) for b in budgets)] for v in variants]
        print(f"\n{name}: advantage over full data at the same budget ({task.metric}, positive = better)")
        print(format_table(["variant", *(f"b={b}" for b in budgets)], rows), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    raise SystemExit(main())
