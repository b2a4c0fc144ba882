"""`attent bench kernels`: run the kernel microbenchmarks (pytest-benchmark, ``test_kernels.py``),
print one side-by-side table of time and peak extra memory per op, shape and method, and write
the record as JSON (``kernels-<device>-<date>.json`` in ``runs/bench/``, or in ``bench/results/`` with ``--record``).

    attent bench kernels                 # the device's shapes (CPU: a few minutes)
    attent bench kernels --quick         # tiny shapes, seconds: checks that everything runs
    attent bench kernels --ops linear_grad_norm_sq,norm_grad_norm_sq --json out.json
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pytest  # noqa: E402

from bench import record_info  # noqa: E402
from bench.kernels import _memory, _roofline, _timing  # noqa: E402
from bench.kernels._cases import METHODS, OPS, WORK, Case, cases, work  # noqa: E402

TIMING = {
    "quick": ["--benchmark-min-rounds=1", "--benchmark-max-time=0.005", "--benchmark-warmup=off"],
    "full": ["--benchmark-min-rounds=3", "--benchmark-max-time=0.5", "--benchmark-warmup=off"],
}


class _Outcomes:
    """pytest plugin: the failure message of every case that failed, and collection errors."""

    def __init__(self) -> None:
        self.failures: dict[str, str] = {}
        self.collection_errors: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            case_id = report.nodeid.partition("[")[2].rstrip("]")
            crash = getattr(report.longrepr, "reprcrash", None)
            self.failures[case_id] = crash.message.splitlines()[0] if crash else str(report.longrepr).splitlines()[-1]

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collection_errors.append(str(report.longrepr))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attent bench kernels", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few rounds: a smoke run of every case")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON record (default: "
                                                                  "kernels-<device>-<date>.json in the output folder)")
    record_info.add_output_options(parser)
    parser.add_argument("--ops", default="", help=f"comma-separated ops (default: all of {', '.join(OPS)})")
    return parser


def _shapes(selected: list[Case]) -> dict[str, list[dict]]:
    """op -> its distinct sizes, in case order."""
    shapes: dict[str, list[dict]] = {}
    for case in selected:
        if case.size not in shapes.setdefault(case.op, []):
            shapes[case.op].append(case.size)
    return shapes


def _row(case: Case, stats: dict | None, extra: dict | None, failure: str | None, roofline: dict) -> dict:
    """One case's record; on CUDA the do_bench statistics replace pytest-benchmark's single round."""
    flops, nbytes = work(case)
    if stats and extra and "cuda_time_s" in extra:
        stats = extra["cuda_time_s"]
    row = {
        "case": case.id,
        "op": case.op,
        "method": case.method_label,
        "sizes": case.size,
        "dtype": case.dtype,
        "flops": flops,
        "bytes": nbytes,
        "status": "ok" if stats else "failed",
    }
    if not stats:
        row["error"] = failure or "did not run"
        return row
    median = stats["median"]
    floor = max(flops / (roofline["matmul_TFLOPs"][case.dtype] * 1e12), nbytes / (roofline["copy_GBps"] * 1e9))
    row.update(
        time_s={key: stats[key] for key in ("median", "min", "mean", "stddev")},
        rounds=stats["rounds"],
        peak_extra_bytes=extra["peak_extra_bytes"],
        path=extra["path"],
        config=extra["config"],
        achieved_GBps=nbytes / median / 1e9,
        achieved_TFLOPs=flops / median / 1e12,
        roofline_floor_s=floor,
        roofline_fraction=floor / median,
    )
    return row


def _baseline(rows: list[dict], methods: tuple[str, ...]) -> dict | None:
    """The first measured row of a group whose method is one of ``methods``."""
    for row in rows:
        if row["method"] in methods and row["status"] == "ok":
            return row
    return None


def _table(rows: list[dict], roofline: dict) -> str:
    """One table: a block per (op, shape, dtype), one line per method, time and memory side by side."""
    header = ["op", "shape", "dtype", "method", "path", "median ms", "+-%", "x ref time", "x gemm", "peak extra MiB", "x ref mem",
              "GB/s", "TFLOP/s", "% roofline"]
    lines: list[list[str]] = []
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["op"], tuple(row["sizes"].items()), row["dtype"]), []).append(row)
    for (op, sizes, dtype), members in groups.items():
        base = _baseline(members, ("reference", "reference.auto"))
        gemm = _baseline(members, ("gemm",))
        shape = "x".join(f"{name}{n}" for name, n in sizes)
        for row in members:
            cells = [op, shape, dtype, row["method"]]
            if row["status"] != "ok":
                lines.append(cells + ["", "failed"] + [""] * 8)
                continue
            t, mem = row["time_s"], row["peak_extra_bytes"]
            cells += [
                row["path"],
                f"{t['median'] * 1e3:.3f}",
                f"{100 * t['stddev'] / t['median']:.0f}" if t["median"] else "-",
                f"{t['median'] / base['time_s']['median']:.2f}" if base else "-",
                f"{t['median'] / gemm['time_s']['median']:.2f}" if gemm else "-",
                f"{mem / 2**20:.1f}",
                f"{mem / base['peak_extra_bytes']:.2f}" if base and base["peak_extra_bytes"] else "-",
                f"{row['achieved_GBps']:.2f}",
                f"{row['achieved_TFLOPs']:.3f}",
                f"{100 * row['roofline_fraction']:.1f}",
            ]
            lines.append(cells)
        lines.append([])
    widths = [max(len(header[i]), *(len(line[i]) for line in lines if line)) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) if i < 5 else cell.rjust(width) for i, (cell, width) in enumerate(zip(cells, widths)))

    rule = "-" * len(fmt(header))
    matmul = ", ".join(f"{dtype} {value:.3f}" for dtype, value in roofline["matmul_TFLOPs"].items())
    title = (f"roofline: copy {roofline['copy_GBps']:.1f} GB/s, matmul TFLOP/s {matmul}; x ref = ratio to the reference "
             "backend's row; x gemm = ratio to the weight-gradient GEMM g^T x (cuBLAS on CUDA); +-% = stddev / median")
    return "\n".join([title, rule, fmt(header), rule] + [fmt(line) if line else "" for line in lines[:-1]] + [rule])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = _parser().parse_args(argv)
    case_set = "quick" if args.quick else "full"
    ops = [op for op in args.ops.split(",") if op]
    device = record_info.device()
    try:
        selected = cases(case_set, device.type, ops or None)
    except ValueError as error:
        _parser().error(str(error))
    roofline = _roofline.measure(device, sorted({case.dtype for case in selected}), quick=args.quick)

    outcomes = _Outcomes()
    with tempfile.TemporaryDirectory() as scratch:
        raw_json = Path(scratch) / "pytest-benchmark.json"
        pytest_args = [
            str(HERE / "test_kernels.py"),
            "-q",
            "-p", "no:cacheprovider",
            "--benchmark-quiet",
            f"--rootdir={REPO}",
            f"--kernel-set={case_set}",
            f"--kernel-ops={','.join(ops)}",
            f"--benchmark-json={raw_json}",
            *TIMING[case_set],
        ]
        pytest_output = io.StringIO()
        with contextlib.redirect_stdout(pytest_output):
            exit_code = pytest.main(pytest_args, plugins=[outcomes])
        _memory.shutdown()
        raw = json.loads(raw_json.read_text()) if raw_json.exists() else {"benchmarks": []}
    if exit_code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) or outcomes.collection_errors:
        print(pytest_output.getvalue(), *outcomes.collection_errors, sep="\n", file=sys.stderr)
        return 2

    by_case = {bench["extra_info"]["case"]: bench for bench in raw["benchmarks"]}
    rows = []
    for case in selected:
        bench = by_case.get(case.id)
        rows.append(_row(case, bench and bench["stats"], bench and bench["extra_info"], outcomes.failures.get(case.id), roofline))
    print(_table(rows, roofline))
    for row in rows:
        if row["status"] != "ok":
            print(f"FAILED {row['case']}: {row['error']}")

    now = datetime.datetime.now(datetime.timezone.utc).astimezone()
    record = {
        "benchmark": "attent bench kernels",
        "command": " ".join(["attent bench kernels", *argv]),
        "date": now.date().isoformat(),
        "timestamp": now.isoformat(timespec="seconds"),
        "case_set": case_set,
        "device": device.type,
        "machine": {**record_info.machine(device), "conditions": args.conditions},
        "versions": record_info.versions(),
        "roofline": roofline,
        "methods": METHODS,
        "work_formulas": {op: WORK[op].formula for op in OPS},
        "timing": "CPU: pytest-benchmark rounds (iterations per round from its calibration) after an untimed call that "
        f"also checks the results against the reference backend; options {' '.join(TIMING[case_set])}. CUDA: "
        f"{_timing.METHOD}, after the same untimed, checked call",
        "memory_method": _memory.memory_method(device.type),
        "rates": "achieved GB/s and TFLOP/s = the op's useful bytes and flops (work_formulas, the same for every method) "
        "/ median time; % roofline = max(flops / matmul peak, bytes / copy bandwidth) / median time",
        "shapes": _shapes(selected),
        "results": rows,
    }
    out = args.json or record_info.output_dir(args) / f"kernels-{record_info.device_label(device)}-{record['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(row["status"] == "ok" for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
