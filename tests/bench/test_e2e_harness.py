"""The end-to-end benchmark harness (`attent bench e2e --quick`): one quick run of a few methods
writes a complete record whose summary is the mean and sample standard deviation of its per-seed
numbers, and the summary statistics match hand computations."""
from __future__ import annotations

import datetime
import importlib
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
METHODS = ["full", "loss-hard", "random"]


@pytest.fixture(scope="module")
def harness():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        yield importlib.import_module("bench.e2e.run")


@pytest.fixture(scope="module")
def quick_record(harness, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "record_{task}.json"
    argv = ["--task", "icl_regression", "--quick", "--seeds", "2", "--methods", "loss-hard,random", "--json", str(out)]
    code = harness.main(argv)
    path = Path(str(out).replace("{task}", "icl_regression"))
    return code, argv, path, json.loads(path.read_text())


def test_quick_run_writes_a_complete_record(quick_record):
    code, argv, path, record = quick_record
    assert code == 0
    assert record["benchmark"] == "attent bench e2e" and record["argv"] == argv
    assert datetime.date.fromisoformat(record["date"])
    assert record["machine"]["cpu_model"] and record["machine"]["cpu_cores"] >= 1
    assert all(record["versions"][package] for package in ("torch", "timm", "attent"))
    assert "triton" in record["versions"]
    assert record["task"] == "icl_regression" and record["metric"] == "val_loss" and not record["higher_is_better"]
    sizes = record["sizes"]
    assert sizes["quick"] and sizes["seeds"] == 2 and sizes["epochs"] == 2
    assert sizes["train_examples"] == sizes["task_train_examples"] == 128
    assert list(record["methods"]) == METHODS and record["failed"] == {}
    assert [seed["seed"] for seed in record["per_seed"]] == [0, 1]
    for seed in record["per_seed"]:
        assert list(seed["runs"]) == METHODS
        assert seed["target"] == seed["runs"]["full"]["final"]
        assert seed["runs"]["full"]["examples_seen"] == 2 * 128
        for run in seed["runs"].values():
            assert run["curve"] and run["curve"][-1]["val_loss"] == run["final"]
            assert run["curve"][-1]["wall_time"] <= run["wall_time"]
    png = Path(record["plot"])
    assert png == path.with_suffix(".png") and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_is_mean_and_sample_std_over_the_seeds(quick_record):
    _, _, _, record = quick_record
    for method in METHODS:
        summary = record["summary"][method]
        assert summary["seeds"] == 2
        for field in ("final", "examples_seen", "selection_overhead", "wall_time", "time_to_target", "time_saved"):
            values = [seed["runs"][method][field] for seed in record["per_seed"]]
            values = [v for v in values if v is not None]
            stat = summary[field]
            assert stat["n"] == len(values)
            if len(values) == 2:  # by hand: mean (a + b) / 2, sample std |a - b| / sqrt(2)
                a, b = values
                assert stat["mean"] == pytest.approx((a + b) / 2, rel=1e-12, abs=1e-15)
                assert stat["std"] == pytest.approx(abs(a - b) / math.sqrt(2), rel=1e-12, abs=1e-15)
            elif len(values) == 1:
                assert (stat["mean"], stat["std"]) == (values[0], 0.0)
            else:
                assert (stat["mean"], stat["std"]) == (None, None)


def test_mean_std_by_hand(harness):
    # mean of 1, 2, 4 is 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9 over n - 1 = 2 gives 7/3
    assert harness.mean_std([1.0, 2.0, 4.0]) == pytest.approx({"mean": 7 / 3, "std": math.sqrt(7 / 3), "n": 3})
    assert harness.mean_std([5.0]) == {"mean": 5.0, "std": 0.0, "n": 1}
    assert harness.mean_std([]) == {"mean": None, "std": None, "n": 0}


def test_unreached_targets_and_failed_seeds_are_left_out(harness):
    def run(final, reached):
        return {"final": final, "time_to_target": reached, "time_saved": None if reached is None else 0.25,
                "examples_seen": 10, "selection_overhead": 0.1, "wall_time": 3.0}

    per_seed = [{"runs": {"full": run(0.9, 2.0), "fgrad-hard": run(0.8, None)}},
                {"runs": {"full": run(0.7, 4.0), "fgrad-hard": run(0.9, 3.0)}},
                {"runs": {"full": run(0.8, 6.0)}}]
    summary = harness.summarize_seeds(per_seed, ["full", "fgrad-hard"])
    assert summary["full"]["seeds"] == 3 and summary["fgrad-hard"]["seeds"] == 2
    assert summary["full"]["time_to_target"] == pytest.approx({"mean": 4.0, "std": 2.0, "n": 3})
    assert summary["fgrad-hard"]["final"] == pytest.approx({"mean": 0.85, "std": 0.05 * math.sqrt(2), "n": 2})
    assert summary["fgrad-hard"]["time_to_target"] == {"mean": 3.0, "std": 0.0, "n": 1}
    table = harness.format_summary(summary, "val_accuracy")
    assert "3.0 ± 0.0 (1/2)" in table and "85.00 ± 7.07" in table


@pytest.mark.parametrize(
    "argv",
    [["--task", "digits", "--methods", "full,best-guess"], ["--task", "all", "--json", "one.json"],
     ["--task", "scb", "--seeds", "0"], ["--task", "cifar"]],
)
def test_bad_arguments_exit_before_training(harness, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        harness.main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err
