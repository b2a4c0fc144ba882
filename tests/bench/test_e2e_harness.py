"""The frontier benchmark harness (`attent bench e2e --quick`): one quick run writes a complete
record whose frontiers, target, times to quality and equal-budget advantages follow from its own
per-run points, and bad arguments stop before any training."""
from __future__ import annotations

import datetime
import importlib
import json
import statistics
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARGV = ["--task", "icl_regression", "--quick", "--seeds", "2", "--methods", "random,importance", "--budgets", "0.5,1"]


@pytest.fixture(scope="module")
def harness():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        yield importlib.import_module("bench.e2e.run")


@pytest.fixture(scope="module")
def quick_record(harness, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "record_{task}.json"
    code = harness.main([*ARGV, "--json", str(out)])
    path = Path(str(out).replace("{task}", "icl_regression"))
    return code, path, json.loads(path.read_text())


def test_quick_run_writes_a_complete_record(quick_record):
    code, path, record = quick_record
    assert code == 0
    assert record["benchmark"] == "attent bench e2e" and record["argv"][:len(ARGV)] == ARGV
    assert datetime.date.fromisoformat(record["date"])
    assert record["machine"]["cpu_model"] and record["machine"]["cpu_cores"] >= 1
    assert all(record["versions"][package] for package in ("torch", "timm", "attent", "triton"))
    assert record["task"] == "icl_regression" and record["metric"] == "val_loss" and not record["higher_is_better"]
    assert record["sizes"]["budgets"] == [0.5, 1.0] and record["sizes"]["seeds"] == 2
    runs = {(p["method"], p["budget"], p["seed"]) for p in record["points"]}
    assert runs == {(m, b, s) for m in ("full", "random", "importance") for b in (0.5, 1.0) for s in (0, 1)}
    n, epochs = record["sizes"]["train_examples"], record["sizes"]["epochs"]
    full = {(p["budget"], p["seed"]): p for p in record["points"] if p["method"] == "full"}
    assert full[(1.0, 0)]["examples"] == epochs * n and full[(0.5, 0)]["examples"] == round(0.5 * epochs) * n
    assert all(p["examples"] <= p["budget"] * epochs * n for p in record["points"])
    png = Path(record["plot"])
    assert png == path.with_suffix(".png") and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_readings_follow_from_the_points(harness, quick_record):
    _, _, record = quick_record
    full_top = [p["quality"] for p in record["points"] if p["method"] == "full" and p["budget"] == 1.0]
    assert record["target"] == pytest.approx(statistics.fmean(full_top) + statistics.stdev(full_top))  # a loss: + std
    for method, reading in record["methods"].items():
        for row in reading["frontier"]:
            mine = [p for p in record["points"] if p["method"] == method and p["budget"] == row["budget"]]
            assert row["quality"] == pytest.approx(statistics.fmean(p["quality"] for p in mine))
            assert row["wall_time"] == pytest.approx(statistics.fmean(p["wall_time"] for p in mine))
        paired = [q["quality"] - p["quality"] for p in record["points"] for q in record["points"]
                  if p["method"] == method and q["method"] == "full" and p["budget"] == q["budget"] == 0.5
                  and p["seed"] == q["seed"]]
        assert reading["vs_full"]["0.5"]["mean"] == pytest.approx(statistics.fmean(paired))  # lower loss = positive
    assert record["methods"]["full"]["saving"] in (0.0, None)
    table = harness.format_part(record)
    assert "time to quality s" in table and "vs full b=0.5" in table


@pytest.mark.parametrize("argv", [
    ["--task", "digits", "--methods", "full,best-guess"], ["--task", "all", "--json", "one.json"],
    ["--task", "scb", "--seeds", "0"], ["--task", "cifar"], ["--task", "scb", "--budgets", "0.5"],
    ["--task", "scb", "--budgets", "0,1"],
])
def test_bad_arguments_exit_before_training(harness, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        harness.main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_reanalyse_recomputes_the_readings_from_the_points(harness, quick_record, tmp_path):
    _, path, record = quick_record
    copy = tmp_path / "copy.json"
    stale = dict(record, target=-1.0, methods={})
    copy.write_text(json.dumps(stale))
    assert harness.main(["--reanalyse", str(copy)]) == 0
    again = json.loads(copy.read_text())
    assert again["target"] == pytest.approx(record["target"]) and again["methods"] == record["methods"]
    assert again["reanalysed"]["argv"] == ["--reanalyse", str(copy)]


def test_extend_adds_the_missing_seeds_as_a_full_run_would(harness, quick_record, tmp_path):
    _, _, record = quick_record
    one_seed = list(ARGV)
    one_seed[one_seed.index("--seeds") + 1] = "1"
    path = tmp_path / "one_{task}.json"
    assert harness.main([*one_seed, "--json", str(path)]) == 0
    path = Path(str(path).replace("{task}", "icl_regression"))
    assert harness.main(["--extend", str(path), "--seeds", "2", "--conditions", "test"]) == 0
    extended = json.loads(path.read_text())
    quality = {(p["method"], p["budget"], p["seed"]): p["quality"] for p in record["points"]}
    assert {(p["method"], p["budget"], p["seed"]): p["quality"] for p in extended["points"]} == quality
    assert extended["sizes"]["seeds"] == 2 and sorted(extended["references"]) == sorted(record["references"])
    assert extended["extended"][-1]["seeds"] == [1] and extended["extended"][-1]["conditions"] == "test"
    points = [harness.Point(**p) for p in extended["points"]]
    readings = harness.analyse(points, list(extended["method_definitions"]), higher_is_better=extended["higher_is_better"])
    assert extended["methods"] == json.loads(json.dumps(readings["methods"]))
    with pytest.raises(SystemExit):
        harness.main(["--extend", str(path), "--seeds", "2"])


WASTE_ARGV = ["--task", "digits_off_target", "--quick", "--seeds", "2", "--methods", "pool,static,holdout",
              "--budgets", "0.5,1"]


@pytest.fixture(scope="module")
def waste_record(harness, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "waste.json"
    assert harness.main([*WASTE_ARGV, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_waste_runs_count_the_reference_and_the_candidates(waste_record):
    record = waste_record
    n, epochs = record["sizes"]["train_examples"], record["sizes"]["epochs"]
    assert set(record["references"]) == {"0", "1"}
    points = {(p["method"], p["budget"], p["seed"]): p for p in record["points"]}
    assert set(points) == {(m, b, s) for m in ("full", "pool", "static", "holdout") for b in (0.5, 1.0) for s in (0, 1)}
    for (method, budget, seed), point in points.items():
        cost, reference = point["cost"], record["references"][str(seed)]
        reads = method in ("pool", "static")
        assert point["reference_time"] == (pytest.approx(reference["cost"]["time"]) if reads else 0.0)
        assert cost["reference_train_examples"] == (reference["cost"]["train_examples"] if reads else 0)
        assert cost["train_examples"] == point["examples"] == int(budget * epochs * n)  # equal examples for every method
        assert cost["train_steps"] == point["steps"]
        if method == "pool" and reference["evidence"]["selects"]:  # keep 0.5: every kept example cost two forwards
            assert cost["candidate_forwards"] >= 2 * point["examples"] - 2 * record["sizes"]["batch_size"]
        else:
            assert cost["candidate_forwards"] == 0
    for method, reading in record["methods"].items():
        assert set(reading) >= {"saving", "saving_amortised", "vs_full", "vs_random", "vs_static", "vs_holdout"}
        for row in reading["frontier"]:
            mine = [p for p in record["points"] if p["method"] == method and p["budget"] == row["budget"]]
            cold = statistics.fmean(p["wall_time"] + p["reference_time"] for p in mine)
            assert row["wall_time"] == pytest.approx(cold) and row["steps"] == pytest.approx(statistics.fmean(p["steps"] for p in mine))


def test_a_clean_task_has_no_reference_so_pool_runs_uniform_and_static_cannot_run(harness, tmp_path):
    out = tmp_path / "clean.json"
    with pytest.warns(RuntimeWarning, match="trains uniformly"):
        assert harness.main(["--task", "icl_regression", "--quick", "--seeds", "1", "--methods", "pool,static",
                             "--budgets", "1", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["references"] == {} and set(record["infeasible"]) == {"static@1.0"}
    pool = [p for p in record["points"] if p["method"] == "pool"]
    full = [p for p in record["points"] if p["method"] == "full"]
    assert pool[0]["cost"]["candidate_forwards"] == 0 and pool[0]["quality"] == full[0]["quality"]


def test_readme_waste_tables_come_from_the_record(waste_record, tmp_path, capsys):
    tables = importlib.import_module("bench.e2e.readme_tables")
    table = tables.waste_table(waste_record)
    rows = {line.split(" | ")[0].strip("| *"): line for line in table.splitlines()[2:]}
    names = {m: d["name"] for m, d in waste_record["method_definitions"].items()}
    assert set(rows) == {names[m] for m in ("full", "pool", "static", "holdout")}
    pool = waste_record["methods"]["pool"]
    quality = {p["budget"]: p["quality"] for p in pool["frontier"]}
    assert rows[names["pool"]].split(" | ")[1:3] == [f"{100 * quality[0.5]:.2f}", f"{100 * quality[1.0]:.2f}"]
    goals = tables.waste_goals({"digits_off_target": waste_record})
    assert "digits ×10, off target (points)" in goals
    (tmp_path / "e2e_digits_off_target.json").write_text(json.dumps(waste_record))
    assert tables.main(["--tasks", "", "--waste", "digits_off_target", "--results", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert table in printed and goals in printed


def test_the_study_runs_the_waste_variants_with_one_reference_per_seed(tmp_path):
    """Every waste variant (pooled by learnability or by loss, per-epoch teachers fed learnability,
    the static filters) runs on a waste testbed: the ones that read the reference get it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        study = importlib.import_module("bench.e2e.study")
    variants = ["pool", "pool-loss", "learn-each", "learn-hard-each", "static", "static-25"]
    out = tmp_path / "study.json"
    assert study.main(["--tasks", "digits_noisy", "--quick", "--seeds", "1", "--budgets", "0.5", "--variants",
                       ",".join(variants), "--json", str(out)]) == 0
    task = json.loads(out.read_text())["tasks"]["digits_noisy"]
    assert task["infeasible"] == {}
    assert sorted(p["method"] for p in task["points"]) == sorted(["full", *variants])


def test_the_study_merges_re_run_variants_into_a_task_only_when_full_data_comes_out_bit_identical(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        study = importlib.import_module("bench.e2e.study")
    out = tmp_path / "study.json"
    base = ["--tasks", "digits_noisy", "--quick", "--seeds", "2", "--budgets", "0.5", "--json", str(out)]
    assert study.main([*base, "--variants", "random-each,learn-each"]) == 0
    first = json.loads(out.read_text())["tasks"]["digits_noisy"]
    assert study.main([*base, "--variants", "learn-hard-each,random-each", "--merge"]) == 0
    merged = json.loads(out.read_text())["tasks"]["digits_noisy"]
    kept = [p for p in first["points"] if p["method"] == "learn-each"]
    assert [p for p in merged["points"] if p["method"] == "learn-each"] == kept and len(kept) == 2
    assert sorted(p["method"] for p in merged["points"]) == sorted(["full", "random-each", "learn-each",
                                                                    "learn-hard-each"] * 2)
    assert set(merged["advantage"]["0.5"]) == {"full", "random-each", "learn-each", "learn-hard-each"}
    assert merged["advantage"]["0.5"]["learn-each"] == first["advantage"]["0.5"]["learn-each"]
    assert merged["argv"][0] == first["argv"] and "--merge" in merged["argv"][1]
    assert merged["merged"][0]["variants"] == ["learn-hard-each", "random-each"]
    record = json.loads(out.read_text())
    for point in record["tasks"]["digits_noisy"]["points"]:
        if point["method"] == "full" and point["seed"] == 1:
            point["quality"] += 1e-9
    out.write_text(json.dumps(record))
    with pytest.raises(SystemExit, match=r"full data's runs differ .*\(0.5, 1\).*not paired"):
        study.main([*base, "--variants", "learn-each", "--merge"])
