"""Fit the constants of the kernels' cost model (``attent_kernels/_cost.py``) to a GPU record of
``bench/gpu/run.py``, and check the paths ``auto`` would choose against the measured fastest.

    python bench/gpu/fit_cost.py                                   # the H200 record in bench/results
    python bench/gpu/fit_cost.py --record DIR/kernels-gpu.json --out bench/results/cost_fit_h200.json

The model (see ``_cost.py``): a kernel's time is the waves its grid runs in times each program's
time, ``waves * (work / RATE + PROGRAM_S)``, work in flops with operands padded to whole tiles;
the fused weight-gradient kernel pays ``FUSED_EXAMPLE_S`` per example a program walks (its
pipeline restarts) and ``FUSED_SLICE_S`` per element of the slices' sum; the weight-gradient
GEMM through cuBLAS is ``flops / GEMM_RATE + GEMM_LAUNCH_S``; the sorted embedding kernel adds
``SORT_S`` per id and sort pass (T log2 T per example). Each kernel's constants are a
non-negative least-squares fit of its measured medians in relative error (every row weighs
alike, whatever its size); ``RESIDENT_PROGRAMS`` is the value in 1..4 that fits best. The
tiles (``PAIR_BLOCK_T`` ...) are those the autotuner chose most often in the record.

Then, at every shape of the record, the path the fitted model picks against the path measured
fastest: the regret is the measured time of the pick over the fastest's, minus one (the goal:
within 5% everywhere). Prints both tables and writes the constants, every row's prediction and
every decision to ``--out`` (default ``bench/results/cost_fit_h200.json``); ``_cost.py`` holds
the constants, and a test keeps them equal to that file.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from attent.tasks.compare import format_table  # noqa: E402
from attent_kernels import _cost  # noqa: E402

RECORD = REPO / "bench" / "results" / "kernels-gpu-h200-2026-12-04.json"
OUT = REPO / "bench" / "results" / "cost_fit_h200.json"
SIGNIFICANT = 3  # digits the constants are kept to
REGRET_GOAL = 0.05


def _shape(label: str) -> dict[str, int]:
    return {key: int(value) for key, value in re.findall(r"\b([BTdpNV])(\d+)", label)}


def _median(row: dict) -> float:
    return float(row["time_s"]["median"])


def _rounded(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT}g}")


def _modal_tiles(rows: list[dict]) -> dict[str, int]:
    """The tiles the autotuner chose most often per kernel, from the record's config column."""
    chosen: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in rows:
        found = re.match(r"(\w+): (.*) w\d+ s\d+", row.get("config", ""))
        if found:
            chosen[found.group(1)][found.group(2)] += 1
    modal = {kernel: dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", counts.most_common(1)[0][0]))
             for kernel, counts in chosen.items()}
    return {
        "PAIR_BLOCK_T": modal["_ghost_norm_kernel"]["BLOCK_T"],
        "FEATURE_BLOCK": modal["_weight_grad_and_norm_kernel"]["BLOCK_P"],
        "FEATURE_BLOCK_T": modal["_direct_norm_kernel"]["BLOCK_T"],
    }


def _features(rows: list[dict]) -> dict[str, list[tuple[list[float], float, dict]]]:
    """Per kernel: (features, measured seconds, row) for the least-squares fit, the features the
    model's terms at the current _cost constants (tiles and resident programs set by the caller)."""
    out: dict[str, list] = collections.defaultdict(list)
    for row in rows:
        if row.get("status") != "ok":
            continue
        s, op, method = _shape(row["shape"]), row["op"], row["method"]
        if op in ("linear_grad_norm_sq", "linear_weight_grad_and_norm_sq") and method == "cublas g^T x":
            out["gemm"].append(([2.0 * s["B"] * s["T"] * s["d"] * s["p"], 1.0], _median(row), row))
        elif op == "linear_grad_norm_sq" and method in ("triton.ghost", "triton.direct"):
            kernel = method.split(".")[1]
            terms = (_cost.ghost_terms if kernel == "ghost" else _cost.direct_terms)(s["B"], s["T"], s["d"], [s["p"]])
            out[kernel].append((list(terms), _median(row), row))
        elif op == "linear_weight_grad_and_norm_sq" and method == "triton.fused":
            slices = int(re.search(r"slices=(\d+)", row["path"]).group(1))
            out["fused"].append((list(_cost.fused_terms(s["B"], s["T"], s["d"], s["p"], slices)), _median(row), row))
        elif op == "embedding_grad_norm_sq" and method in ("triton.pairs", "triton.sorted"):
            kernel = "embedding " + method.split(".")[1]
            terms = (_cost.embedding_pair_terms if kernel.endswith("pairs") else _cost.embedding_sorted_terms)(s["B"], s["T"], s["d"])
            out[kernel].append((list(terms), _median(row), row))
    return out


# Which constants each kernel's fitted coefficients are (seconds per feature unit: a rate is its inverse).
COEFFICIENTS = {
    "gemm": (("GEMM_RATE", True), ("GEMM_LAUNCH_S", False)),
    "ghost": (("GHOST_RATE", True), ("GHOST_PROGRAM_S", False)),
    "direct": (("DIRECT_RATE", True), ("DIRECT_PROGRAM_S", False)),
    "fused": (("FUSED_RATE", True), ("FUSED_EXAMPLE_S", False), ("FUSED_SLICE_S", False)),
    "embedding pairs": (("EMBEDDING_PAIR_RATE", True),),
    "embedding sorted": (("SORT_S", False),),
}


def _fit_kernel(samples: list[tuple[list[float], float, dict]], kernel: str) -> tuple[dict[str, float], float]:
    """Non-negative least squares of the measured times in relative error; the embedding's sorted
    kernel first takes off its walk (the direct kernel's work at the fitted direct rate)."""
    features = np.array([f for f, _, _ in samples], dtype=float)
    times = np.array([t for _, t, _ in samples], dtype=float)
    coefficients, _ = nnls(features / times[:, None], np.ones(len(times)))
    values = {}
    for (name, is_rate), coefficient in zip(COEFFICIENTS[kernel], coefficients):
        values[name] = (1.0 / coefficient if coefficient > 0 else math.inf) if is_rate else coefficient
    error = float(np.sqrt(np.mean((features @ coefficients / times - 1.0) ** 2)))
    return values, error


def fit(rows: list[dict]) -> dict:
    """The constants (tiles, resident programs, rates and overheads) and the fit's errors."""
    tiles = _modal_tiles(rows)
    best = None
    for resident in (1, 2, 3, 4):
        with _cost.constants(RESIDENT_PROGRAMS=resident, **tiles):
            samples = _features(rows)
            kernels = {kernel: _fit_kernel(samples[kernel], kernel) for kernel in COEFFICIENTS if kernel in samples}
        total = sum(error**2 * len(samples[k]) for k, (_, error) in kernels.items())
        if best is None or total < best[0]:
            best = (total, resident, kernels)
    _, resident, kernels = best
    constants = {"RESIDENT_PROGRAMS": resident, **tiles}
    for values, _ in kernels.values():
        constants.update({name: _rounded(value) for name, value in values.items()})
    return {"constants": constants, "rms_relative_error": {k: error for k, (_, error) in kernels.items()}}


def decisions(rows: list[dict]) -> list[dict]:
    """At every shape of the record with a choice: the path the model picks, the measured fastest,
    and the regret of the pick."""
    by_case: dict[tuple[str, str], dict[str, float]] = collections.defaultdict(dict)
    for row in rows:
        if row.get("status") == "ok":
            by_case[(row["op"], row["shape"])][row["method"]] = _median(row)
    out = []
    for (op, label), times in by_case.items():
        s = _shape(label)
        if op == "linear_grad_norm_sq":
            routes = {"ghost": times.get("triton.ghost"), "direct": times.get("triton.direct")}
            pick = _cost.linear_path(s["B"], s["T"], s["d"], [s["p"]])
        elif op == "linear_weight_grad_and_norm_sq":
            routes = {"fused": times.get("triton.fused"), "separate": times.get("triton.separate")}
            pick = "fused" if _cost.fused_weight_grad_wins(s["B"], s["T"], s["d"], s["p"]) else "separate"
        elif op == "embedding_grad_norm_sq":
            routes = {"pairs": times.get("triton.pairs"), "sorted": times.get("triton.sorted")}
            pick = "sorted" if _cost.embedding_sorts(s["B"], s["T"], s["d"]) else "pairs"
        elif op == "linear_grad_gram":
            routes = {"pairs": times.get("triton.pairs"), "materialize": times.get("triton.materialize")}
            pick = "pairs"  # the gram's auto never materializes (see _cost)
        else:
            continue
        if any(t is None for t in routes.values()):
            continue
        fastest = min(routes, key=routes.get)
        out.append({"op": op, "shape": label, "measured_s": routes, "fastest": fastest, "pick": pick,
                    "regret": routes[pick] / routes[fastest] - 1.0})
    return out


def predictions(rows: list[dict]) -> list[dict]:
    """Every fitted row's measured and predicted seconds."""
    out = []
    for kernel, samples in _features(rows).items():
        for features, seconds, row in samples:
            predicted = _cost.predict(kernel, features)
            out.append({"kernel": kernel, "shape": row["shape"], "measured_s": seconds, "predicted_s": predicted,
                        "relative_error": predicted / seconds - 1.0})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", type=Path, default=RECORD, help=f"a bench/gpu/run.py record (default {RECORD.name})")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the fit goes (default {OUT.relative_to(REPO)})")
    args = parser.parse_args(argv)
    record = json.loads(args.record.read_text())
    rows = record["results"]
    fitted = fit(rows)
    with _cost.constants(**fitted["constants"]):
        rows_out, chosen = predictions(rows), decisions(rows)
    print(format_table(["kernel", "shape", "measured ms", "predicted ms", "error"],
                       [[r["kernel"], r["shape"], f"{1e3 * r['measured_s']:.3f}", f"{1e3 * r['predicted_s']:.3f}",
                         f"{100 * r['relative_error']:+.0f}%"] for r in rows_out]))
    print()
    print(format_table(["op", "shape", "fastest", "auto picks", "regret"],
                       [[d["op"], d["shape"], d["fastest"], d["pick"], f"{100 * d['regret']:.1f}%"] for d in chosen]))
    worst = max(d["regret"] for d in chosen)
    print(f"\nconstants: {fitted['constants']}\nworst regret {100 * worst:.1f}% (goal <= {100 * REGRET_GOAL:.0f}%)")
    out = {"record": str(args.record.relative_to(REPO)) if args.record.is_relative_to(REPO) else str(args.record),
           "device": record.get("device"), "record_versions": record.get("versions"),
           "command": " ".join(["python bench/gpu/fit_cost.py", *(argv if argv is not None else sys.argv[1:])]),
           **fitted, "predictions": rows_out, "decisions": chosen, "worst_regret": worst}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if worst <= REGRET_GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
