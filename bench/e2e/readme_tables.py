"""The README's time-to-quality tables, printed from the committed records (no training):

    python -m bench.e2e.readme_tables                 # every e2e_<task>.json, teacher_study.json and waste_study.json
    python -m bench.e2e.readme_tables --tasks digits,scb

Per task (``bench/results/e2e_<task>.json``): each method's quality at every budget (seed mean),
its time to the full-data target and saving against full data's own frontier, its paired
advantage over full data at b = 0.5 and 0.25 and over the random subset at 0.25, and its
selection overhead. Then the goal tally of the default teacher over the tasks, and the teacher
study (``bench/results/teacher_study.json``): each variant's advantage over full data per task and
budget, and how often and by how much it is behind the random subset. Last, the first screen's
sentence: where the default teacher pays, task by task.

The waste testbeds (``e2e_<testbed>.json`` for ``WASTE_ORDER``) get their own table: each method's
quality per budget, its saving at full-data quality cold (the reference's seconds counted) and
amortised (left out), its paired advantage over full data, over the static filter and over the
holdout-added baseline, its optimizer steps and candidate forwards at b = 0.25, and its selection
overhead; then the pooled default against the goals, testbed by testbed; and the waste-testbed
study (``bench/results/waste_study.json``, the same table as the teacher study's).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = REPO / "bench" / "results"
TASK_ORDER = ("digits", "digits_augmented", "scb", "icl_regression", "stdlib_lm")
TASK_LABELS = {"digits": "digits", "digits_augmented": "digits ×10", "scb": "SCB", "icl_regression": "ICL regression",
               "stdlib_lm": "stdlib LM"}
WASTE_ORDER = ("digits_noisy", "digits_flipped", "digits_off_target", "prose_lm", "icl_corrupted")
TASK_LABELS.update({"digits_noisy": "digits ×10, 30% noisy labels", "digits_flipped": "digits ×10, 3→5 and 9→7 flips",
                    "digits_off_target": "digits ×10, off target", "prose_lm": "prose LM (30% prose, 70% code)",
                    "icl_corrupted": "ICL regression seen once, 30% corrupted"})
DEFAULT = "default"
POOL_DEFAULT = "pool"
REFERENCE_DEFAULT = "teach"  # the default teacher with a reference: per-epoch, fed learnability
GOAL_METHODS = (POOL_DEFAULT, REFERENCE_DEFAULT, "teach-hard")  # the selecting methods held to the waste goals
SAVING_GOAL = 0.30


def _scale(record: Mapping[str, Any]) -> tuple[float, int, str]:
    """(scale, decimals, unit) of a record's metric: accuracy in percentage points, losses as they are."""
    return (100.0, 2, "points") if record["metric"] == "val_accuracy" else (1.0, 4, "loss")


def _stat(stat: Mapping[str, Any] | None, scale: float, digits: int) -> str:
    if not stat or not stat.get("n"):
        return "-"
    return f"{stat['mean'] * scale:+.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _value(value: float | None, scale: float, digits: int) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def frontier_table(record: Mapping[str, Any]) -> str:
    """The markdown table of one task's frontier record."""
    scale, digits, _ = _scale(record)
    budgets = record["sizes"]["budgets"]
    names = {m: d["name"] for m, d in record["method_definitions"].items()}
    header = ["method", *(f"b={b:g}" for b in budgets), "time to target s", "saving", "vs full b=0.5", "vs full b=0.25",
              "vs random b=0.25", "selection"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, reading in record["methods"].items():
        quality = {p["budget"]: p["quality"] for p in reading["frontier"]}
        label = f"**{names.get(method, method)}**" if method == DEFAULT else names.get(method, method)
        saved = reading["saving"]
        cells = [label, *(_value(quality.get(b), scale, digits) for b in budgets),
                 "never" if reading["time_to_quality"] is None else f"{reading['time_to_quality']:.1f}",
                 "-" if saved is None else f"{100 * saved:+.0f}%",
                 _stat(reading["vs_full"].get("0.5"), scale, digits), _stat(reading["vs_full"].get("0.25"), scale, digits),
                 _stat(reading["vs_random"].get("0.25"), scale, digits),
                 f"{100 * reading['selection_overhead']['mean']:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _candidates(record: Mapping[str, Any], method: str, budget: float) -> str:
    """Mean candidate forwards of a method's runs at ``budget`` ("-" when none ran there)."""
    runs = [p["cost"]["candidate_forwards"] for p in record["points"]
            if p["method"] == method and p["budget"] == budget and p.get("cost")]
    return "-" if not runs else f"{sum(runs) / len(runs):.0f}"


def waste_table(record: Mapping[str, Any]) -> str:
    """The markdown table of one waste testbed's frontier record."""
    scale, digits, _ = _scale(record)
    budgets = record["sizes"]["budgets"]
    names = {m: d["name"] for m, d in record["method_definitions"].items()}
    header = ["method", *(f"b={b:g}" for b in budgets), "saving cold", "saving amortised", "vs full b=0.5",
              "vs full b=0.25", "vs static b=0.25", "vs holdout b=0.25", "steps b=0.25", "candidates b=0.25", "selection"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, reading in record["methods"].items():
        rows = {p["budget"]: p for p in reading["frontier"]}
        label = (f"**{names.get(method, method)}**" if method in (POOL_DEFAULT, REFERENCE_DEFAULT)
                 else names.get(method, method))
        steps = rows.get(0.25, {}).get("steps")
        cells = [label, *(_value(rows[b]["quality"] if b in rows else None, scale, digits) for b in budgets),
                 *("never" if reading.get(key) is None else f"{100 * reading[key]:+.0f}%"
                   for key in ("saving", "saving_amortised")),
                 _stat(reading["vs_full"].get("0.5"), scale, digits), _stat(reading["vs_full"].get("0.25"), scale, digits),
                 _stat(reading.get("vs_static", {}).get("0.25"), scale, digits),
                 _stat(reading.get("vs_holdout", {}).get("0.25"), scale, digits),
                 "-" if steps is None else f"{steps:.0f}", _candidates(record, method, 0.25),
                 f"{100 * reading['selection_overhead']['mean']:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def waste_goals(records: Mapping[str, Mapping[str, Any]]) -> str:
    """Each selecting method (``GOAL_METHODS``) on each waste testbed against the goals: its saving
    at full-data quality (cold and amortised; goal >= 30% cold), its best quality against the best
    on full data's frontier, and its paired advantage over the static filter and the holdout-added
    baseline."""
    header = ["testbed", "method", "saving cold (goal ≥ 30%)", "saving amortised", "best vs best full",
              "vs static b=0.5", "vs holdout b=0.5", "reference seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, record in records.items():
        scale, digits, unit = _scale(record)
        sign = 1.0 if record["higher_is_better"] else -1.0
        names = {m: d["name"] for m, d in record["method_definitions"].items()}
        seconds = [r["cost"]["time"] for r in record.get("references", {}).values()]
        for method in GOAL_METHODS:
            reading = record["methods"].get(method)
            if reading is None:
                continue
            best = {m: max((sign * p["quality"] for p in record["methods"][m]["frontier"]), default=None)
                    for m in (method, "full")}
            gap = None if None in best.values() else best[method] - best["full"]
            lines.append("| " + " | ".join([
                f"{TASK_LABELS.get(record['task'], task)} ({unit})", names.get(method, method),
                *("never reached" if reading.get(key) is None else f"{100 * reading[key]:+.0f}%"
                  for key in ("saving", "saving_amortised")),
                "-" if gap is None else f"{gap * scale:+.{digits}f}",
                _stat(reading.get("vs_static", {}).get("0.5"), scale, digits),
                _stat(reading.get("vs_holdout", {}).get("0.5"), scale, digits),
                "-" if not seconds else f"{sum(seconds) / len(seconds):.1f}"]) + " |")
    return "\n".join(lines)


def _heading(record: Mapping[str, Any]) -> str:
    scale, digits, _ = _scale(record)
    sizes, machine = record["sizes"], record["machine"]
    side = "less" if record["higher_is_better"] else "plus"
    full = record["full_time_to_quality"]
    return (f"{TASK_LABELS.get(record['task'], record['task'])} ({record['metric']}), recipe {sizes['epochs']} epochs × "
            f"{sizes['train_examples']} examples, {sizes['seeds']} seeds, {record['date']}, "
            f"{machine.get('conditions', 'conditions not recorded')}; target {_value(record['target'], scale, digits)} "
            f"(full data b=1 {side} one std; full data reaches it in {_value(full, 1.0, 1)} s):")


def goal_tally(records: Mapping[str, Mapping[str, Any]]) -> str:
    """The default teacher against the issue's goals, task by task."""
    header = ["task", "saving at full-data quality (goal ≥ 30%)", "vs full b=0.5", "vs full b=0.25", "vs random b=0.5",
              "vs random b=0.25", "selection overhead (goal ≤ 2%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, record in records.items():
        scale, digits, unit = _scale(record)
        reading = record["methods"].get(DEFAULT)
        if reading is None:
            continue
        saved = reading["saving"]
        lines.append("| " + " | ".join([
            f"{TASK_LABELS.get(task, task)} ({unit})", "never reached" if saved is None else f"{100 * saved:+.0f}%",
            *(_stat(reading[side].get(b), scale, digits) for side in ("vs_full", "vs_random") for b in ("0.5", "0.25")),
            f"{100 * reading['selection_overhead']['mean']:.1f}%"]) + " |")
    return "\n".join(lines)


def first_screen(records: Mapping[str, Mapping[str, Any]]) -> str:
    """The README's first-screen sentence: for each task, how much sooner or later the default
    teacher reaches full-data quality than full data's shortened schedule, and on how many tasks
    it pays (at least ``SAVING_GOAL`` sooner)."""
    readings = sorted(((TASK_LABELS.get(task, task), record["methods"][DEFAULT]["saving"])
                       for task, record in records.items() if DEFAULT in record["methods"]),
                      key=lambda reading: float("inf") if reading[1] is None else -reading[1])
    timed = [f"{100 * abs(saved):.0f}% {'faster' if saved > 0 else 'slower'}"
             + (" than full data's shortened schedule" if not index else "") + f" on {label}"
             for index, (label, saved) in enumerate((r for r in readings if r[1] is not None))]
    never = [label for label, saved in readings if saved is None]
    if never:
        timed.append(f"{'' if timed else 'it '}does not reach it below the full recipe on {' or '.join(never)}")
    listed = timed[0] if len(timed) == 1 else ", ".join(timed[:-1]) + " and " + timed[-1]
    paying = [label for label, saved in readings if saved is not None and saved >= SAVING_GOAL]
    dates = sorted({record["date"] for record in records.values()})
    seeds = sorted({record["sizes"]["seeds"] for record in records.values()})
    return (f"On the {len(readings)} tasks recorded (`bench/results/e2e_*.json`, {' to '.join(map(str, seeds))} seeds "
            f"each, {', '.join(dates)}), the default teacher reaches full-data quality {listed}: it pays (at least "
            f"{100 * SAVING_GOAL:.0f}% faster) on {'none' if not paying else ', '.join(paying)} of them.")


def study_table(study: Mapping[str, Any], tasks: Sequence[str]) -> str:
    """Each variant's advantage over full data per task and budget (points for accuracy, loss
    otherwise; positive = better), and its cells behind the random subset."""
    tasks = [t for t in tasks if t in study["tasks"]]
    budgets = ("0.25", "0.5")
    variants = [v for v in study["variants"] if v != "full"]
    header = ["variant", *(f"{TASK_LABELS.get(t, t)} b={b}" for t in tasks for b in budgets), "behind random (cells)",
              "worst vs random"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in variants:
        cells, behind, measured, worst = [], 0, 0, None
        for task in tasks:
            record = study["tasks"][task]
            scale, digits, unit = _scale(record)
            digits = 1 if scale == 100.0 else 3
            for b in budgets:
                reading = record["advantage"][b].get(variant)
                cells.append(_stat(reading and reading["vs_full"], scale, digits))
                versus = reading and reading["vs_random"]
                if versus and versus["n"] and variant != "random-each":
                    measured += 1
                    behind += versus["mean"] < 0
                    # compared across tasks in units of each task's full-data seed spread at that budget
                    spread = max(record["advantage"][b]["random-each"]["vs_full"]["std"], 1e-12)
                    if worst is None or versus["mean"] / spread < worst[0]:
                        worst = (versus["mean"] / spread, f"{versus['mean'] * scale:+.{digits}f} {unit}, "
                                                          f"{TASK_LABELS.get(task, task)} b={b}")
        name = study["variants"][variant]["name"]
        lines.append("| " + " | ".join([name, *cells, "-" if not measured else f"{behind} of {measured}",
                                        "-" if worst is None else worst[1]]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e.readme_tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASK_ORDER))
    parser.add_argument("--waste", default=",".join(WASTE_ORDER), help="the waste testbeds' records to print")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the folder of the records")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    records = {}
    for task in tasks:
        path = args.results / f"e2e_{task}.json"
        if not path.exists():
            print(f"({path} not found)\n")
            continue
        record = json.loads(path.read_text())
        if "methods" not in record:
            print(f"({path} was written by the former harness: no frontier)\n")
            continue
        records[task] = record
        print(_heading(record) + "\n\n" + frontier_table(record) + "\n")
    if records:
        print("Default teacher against the goals:\n\n" + goal_tally(records) + "\n")
        print("The README's first screen:\n\n" + first_screen(records) + "\n")
    waste = {}
    for task in (t for t in args.waste.split(",") if t):
        path = args.results / f"e2e_{task}.json"
        if path.exists():
            waste[task] = json.loads(path.read_text())
            print(_heading(waste[task]) + "\n\n" + waste_table(waste[task]) + "\n")
    if waste:
        print("The selecting methods against the goals (cold: the reference's seconds counted):\n\n"
              + waste_goals(waste) + "\n")
    for name, title, wanted in (("teacher_study.json", "Teacher study", tasks),
                                ("waste_study.json", "Waste-testbed study", list(waste) or WASTE_ORDER)):
        path = args.results / name
        study = json.loads(path.read_text()) if path.exists() else {"tasks": {}}
        studied = [task for task in wanted if task in study["tasks"]]
        if studied:  # the study's tasks among those asked for, else nothing to print
            print(f"{title} (advantage over full data at the same budget, mean ± std over seeds):\n\n"
                  + study_table(study, studied) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
