"""Smoke test of the kernel benchmark harness (`attent bench kernels --quick`): every public op
has cases, every case runs and is checked, one table is printed and the JSON record is complete."""
from __future__ import annotations

import datetime
import importlib
import json
from pathlib import Path

import pytest
import torch

import attent_kernels

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def harness():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        yield importlib.import_module("bench.kernels.run"), importlib.import_module("bench.kernels._cases")


def test_quick_run_prints_one_table_and_writes_the_record(harness, tmp_path, capsys, monkeypatch):
    """One quick run of every case, with one method made wrong on purpose: that case is reported
    as failed (and fails the run), every other case is measured and recorded."""
    run, cases_module = harness

    def wrong_mse(inputs, case):
        zeros = torch.zeros(inputs["pred"].shape[0])
        return lambda: {"loss": zeros, "fgrad_sq": zeros}

    monkeypatch.setitem(cases_module.OPS["mse_scores"].methods, "func", wrong_mse)
    out = tmp_path / "kernels.json"
    assert run.main(["--quick", "--json", str(out)]) == 1
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())

    helpers = {"accum_dtype", "uses_triton"}  # the dtype rule and the backend predicate, not scoring ops
    public_ops = {name for name in attent_kernels.__all__
                  if callable(getattr(attent_kernels, name)) and name[0].islower() and name not in helpers}
    assert set(cases_module.OPS) == public_ops
    device = "cuda" if torch.cuda.is_available() else "cpu"
    expected = cases_module.cases("quick", device)
    assert [row["case"] for row in record["results"]] == [case.id for case in expected]
    methods = {(row["op"], row["method"].split(".")[0]) for row in record["results"]}
    for op in ("linear_grad_norm_sq", "embedding_grad_norm_sq", "norm_grad_norm_sq"):
        assert {(op, "reference"), (op, "func"), (op, "opacus")} <= methods
    assert {row["method"] for row in record["results"] if row["op"] == "linear_grad_norm_sq"} >= {
        "reference.ghost", "reference.direct", "reference.auto"
    }

    failed = [row for row in record["results"] if row["status"] != "ok"]
    assert [row["case"] for row in failed] == ["mse_scores-func-B4xT8xD16-float32"]
    assert "mse_scores-func" in failed[0]["error"] and "FAILED mse_scores-func" in printed
    for row in record["results"]:
        if row["status"] == "ok":
            assert row["time_s"]["median"] > 0 and row["rounds"] >= 1
            assert isinstance(row["peak_extra_bytes"], int) and row["peak_extra_bytes"] >= 0
            assert row["flops"] > 0 and row["bytes"] > 0 and row["achieved_GBps"] > 0 and row["roofline_floor_s"] > 0

    assert datetime.date.fromisoformat(record["date"])
    assert record["case_set"] == "quick" and record["device"] == device
    machine, versions = record["machine"], record["versions"]
    assert machine["cpu_model"] and machine["cpu_cores"] >= 1 and "gpu" in machine
    assert machine["conditions"] == "alone on the machine"
    assert record["command"] == f"attent bench kernels --quick --json {out}"
    assert {row["method"] for row in record["results"] if row["op"] == "grouped_linear_grad_norm_sq"} >= {"reference", "singles"}
    assert versions["python"] and versions["torch"] == torch.__version__ and {"triton", "opacus"} <= set(versions)
    assert record["roofline"]["copy_GBps"] > 0 and record["roofline"]["matmul_TFLOPs"]["float32"] > 0
    assert set(record["shapes"]) == public_ops and set(record["work_formulas"]) == public_ops
    assert "fresh process" in record["memory_method"] or "max_memory_allocated" in record["memory_method"]

    header = [line for line in printed.splitlines() if "median ms" in line and "peak extra MiB" in line]
    assert len(header) == 1, printed
    table_rows = [line for line in printed.splitlines() if line.split()[:1] and line.split()[0] in public_ops]
    assert len(table_rows) == len(record["results"])
    assert f"wrote {out}" in printed
