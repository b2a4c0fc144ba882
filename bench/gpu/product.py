"""The product path on a GPU, timed as a user runs it: ``fit`` with a teacher, and the score call
that replaces ``F.cross_entropy``.

    python bench/gpu/product.py --out DIR            # on CUDA: about 1-2 minutes
    python bench/gpu/product.py --out DIR --quick    # tiny shapes: a smoke run, also on a CPU

1. ``fit`` on the digits ViT (``attent.tasks``' digits task, its recipe, ``--epochs`` epochs) at
   budget ``--budget``: full data's shortened schedule, the default teacher (fgrad), a teacher
   fed loss, and one fed gradnorm (the probe in every training step). Each method runs twice in
   this process: the first run pays Triton's compiling and tuning (reported apart), the second
   is the steady state the goals speak of. Per run: ``fit``'s wall time, selection time and its
   share of the wall time, optimizer steps, median step time, and the process wall time around
   the call.
2. One score call at the training step's shapes and at an LM head's: ``F.cross_entropy``
   (``reduction="none"``, what the score replaces) against ``attent_kernels.cross_entropy_scores``
   with the host range check (``check_targets=True``, one synchronization) and without it (as
   ``fit``'s training steps call it), host + device time per call over ``--calls`` calls after
   warm-up, each call's result consumed the way ``fit`` keeps it (left on the device).

Writes ``DIR/product-gpu.json`` (every row, the device, the versions, the command) and
``DIR/product-gpu.md``; without ``--out``, ``runs/bench/``. Goals (the GPU product-path issue):
selection at most 2% of ``fit``'s wall time with the default teacher and with loss scores, at
most 5% with gradnorm, from the second run in a process; the score call no slower than
``F.cross_entropy`` at every shape. The GPT-2-small and ViT-B/16 probe rows are
``bench/gpu/run.py``'s.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import attent_kernels as ak  # noqa: E402
from attent.tasks import make_task  # noqa: E402
from attent.tasks.compare import FULL_DATA, Method, format_table, run_method  # noqa: E402
from bench import record_info  # noqa: E402

METHODS = [
    FULL_DATA,
    Method("default teacher (fgrad)"),
    Method("teacher fed loss", score="loss"),
    Method("teacher fed gradnorm", score="gradnorm"),
]
# (label, rows, classes): the digits step's logits and its short last batch, an LM step of a small
# vocabulary, the GPT-2 head's tokens (B 8 x T 512).
SCORE_SHAPES = [("digits step", 32, 10), ("digits last batch", 29, 10), ("LM B8 T128 V256", 1024, 256),
                ("GPT-2 head B8 T512", 4096, 50257)]
QUICK_SCORE_SHAPES = SCORE_SHAPES[:2]
GOALS = {"fgrad": 0.02, "loss": 0.02, "gradnorm": 0.05}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit_rows(task_name: str, *, budget: float, epochs: int | None, device: torch.device, quick: bool) -> list[dict]:
    """Each method's two runs in this process (see the module docstring)."""
    task = make_task(task_name, quick=quick)
    rows = []
    for method in METHODS:
        for attempt in (1, 2):
            _synchronize(device)
            start = time.perf_counter()
            result = run_method(task, method, seed=0, budget=budget, epochs=epochs, device=str(device))
            _synchronize(device)
            process = time.perf_counter() - start
            goal = None if method.kind == "full" else GOALS[method.score]
            rows.append({
                "method": method.name, "score": None if method.kind == "full" else method.score, "run": attempt,
                "process_wall_s": process, "fit_wall_s": result.wall_time, "selection_s": result.selection_time,
                "selection_share": result.selection_overhead, "steps": result.steps,
                "median_step_ms": 1e3 * statistics.median(result.step_times) if result.step_times else None,
                "final": result.final.get(task.metric), "goal_share": goal,
                "meets_goal": None if goal is None or attempt == 1 else result.selection_overhead <= goal,
            })
            print(f"{method.name:26s} run {attempt}: fit wall {result.wall_time:7.3f} s, selection "
                  f"{result.selection_time:7.3f} s ({100 * result.selection_overhead:5.1f}%), {result.steps} steps",
                  flush=True)
    return rows


def _per_call_us(call: Callable[[], object], calls: int, device: torch.device) -> float:
    """Host + device microseconds per call: ``calls`` calls queued back to back after a warm-up,
    timed to the last one's end (what a training loop that never waits on the score sees)."""
    for _ in range(5):
        call()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        call()
    _synchronize(device)
    return 1e6 * (time.perf_counter() - start) / calls


def score_rows(device: torch.device, *, calls: int, quick: bool) -> list[dict]:
    """``F.cross_entropy`` against ``cross_entropy_scores`` (checked and unchecked) per shape."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    for label, n, classes in QUICK_SCORE_SHAPES if quick else SCORE_SHAPES:
        logits = torch.randn(n, classes, generator=generator).to(device)
        targets = torch.randint(0, classes, (n,), generator=generator).to(device)
        methods = {
            "F.cross_entropy": lambda z=logits, y=targets: F.cross_entropy(z, y, reduction="none"),
            "cross_entropy_scores": lambda z=logits, y=targets: ak.cross_entropy_scores(z, y),
            "cross_entropy_scores unchecked": lambda z=logits, y=targets: ak.cross_entropy_scores(z, y, check_targets=False),
        }
        times = {name: _per_call_us(call, calls, device) for name, call in methods.items()}
        yardstick = times["F.cross_entropy"]
        for name, us in times.items():
            rows.append({"shape": label, "rows": n, "classes": classes, "method": name, "us_per_call": us,
                         "x_f_cross_entropy": us / yardstick})
            print(f"{label:22s} {name:32s} {us:9.1f} us/call ({us / yardstick:.2f}x F.cross_entropy)", flush=True)
    return rows


def markdown(record: dict) -> str:
    fit_table = format_table(
        ["method", "run", "fit wall s", "selection s", "share", "goal", "steps", "median step ms", "final"],
        [[r["method"], str(r["run"]), f"{r['fit_wall_s']:.3f}", f"{r['selection_s']:.3f}",
          f"{100 * r['selection_share']:.1f}%", "-" if r["goal_share"] is None else f"<= {100 * r['goal_share']:.0f}%",
          str(r["steps"]), "-" if r["median_step_ms"] is None else f"{r['median_step_ms']:.2f}",
          "-" if r["final"] is None else f"{r['final']:.4f}"] for r in record["fit"]],
    )
    score_table = format_table(
        ["shape", "method", "us per call", "x F.cross_entropy"],
        [[r["shape"], r["method"], f"{r['us_per_call']:.1f}", f"{r['x_f_cross_entropy']:.2f}"] for r in record["score_calls"]],
    )
    return (f"Device: {record['device_label']}; {record['date']}; `{record['command']}`\n\n"
            f"fit (selection share: run 1 pays compiling and tuning; the goals hold from run 2)\n\n```\n{fit_table}\n```\n\n"
            f"score calls (host + device per call, results left on the device)\n\n```\n{score_table}\n```\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/bench)")
    parser.add_argument("--task", default="digits", help="the fit task (default: digits)")
    parser.add_argument("--budget", type=float, default=0.5, help="the fit runs' budget (default 0.5)")
    parser.add_argument("--epochs", type=int, default=8, help="the fit runs' epochs (default 8)")
    parser.add_argument("--calls", type=int, default=200, help="score calls timed per method and shape (default 200)")
    parser.add_argument("--quick", action="store_true", help="the task's quick version and small shapes: a smoke run")
    args = parser.parse_args(argv)
    device = record_info.device()
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python bench/gpu/product.py", *(argv if argv is not None else sys.argv[1:])]),
        "device_label": record_info.device_label(device), "machine": record_info.machine(device),
        "versions": record_info.versions(), "quick": args.quick,
        "fit": fit_rows(args.task, budget=args.budget, epochs=args.epochs if not args.quick else None, device=device,
                        quick=args.quick),
        "score_calls": score_rows(device, calls=args.calls if not args.quick else 3, quick=args.quick),
    }
    out = args.out if args.out is not None else record_info.RUNS_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / "product-gpu.json").write_text(json.dumps(record, indent=1, default=float) + "\n")
    (out / "product-gpu.md").write_text(markdown(record))
    print(f"wrote {out / 'product-gpu.json'} and {out / 'product-gpu.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
