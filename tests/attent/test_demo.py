"""The demo (`attent demo`): a quick run's printed table and verdict agree with the numbers it
returns and records, the same seed gives the same qualities and verdict, the plot is a real PNG,
and bad options are refused before any training."""
from __future__ import annotations

import contextlib
import io
import json

import matplotlib.image
import pytest

from attent.demo import PLOT_NAME, RESULT_NAME, TABLE_HEADER, TOLERANCE, run_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _table_rows(table: str) -> list[dict[str, str]]:
    """One dict per row of a format_table table (cells are separated by two spaces or more)."""
    lines = table.splitlines()
    header = [cell.strip() for cell in lines[0].split("  ") if cell.strip()]
    assert tuple(header) == TABLE_HEADER
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.split("  ") if cell.strip()]
        if len(cells) == len(header) - 1:  # the full-data rows leave "vs full data" empty
            cells.insert(5, "")
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells)))
    return rows


def _demo(out_dir):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        numbers = run_demo(score="loss", seed=3, out_dir=out_dir, quick=True, epochs=4, budgets=(0.5, 0.25))
    return numbers, printed.getvalue()


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo") / "nested"
    numbers, printed = _demo(out_dir)
    return out_dir, numbers, printed


def test_quick_demo_prints_what_it_runs_its_table_and_verdict(quick_demo):
    _, numbers, printed = quick_demo
    assert printed.startswith("attent demo:")
    assert "recipe 4 epochs, seed 3" in printed and "fed loss scores" in printed
    assert numbers["table"] in printed and f"verdict: {numbers['verdict']}" in printed


def test_quick_demo_runs_full_data_and_the_teacher_at_equal_budgets(quick_demo):
    _, numbers, _ = quick_demo
    runs = {(r["method"], r["budget"]): r for r in numbers["runs"]}
    n = numbers["train_examples"]
    assert set(runs) == {("full data", 1.0), ("full data", 0.5), ("full data", 0.25), ("default teacher", 0.5),
                         ("default teacher", 0.25)}
    assert runs[("full data", 1.0)]["examples"] == 4 * n and runs[("full data", 0.5)]["examples"] == 2 * n
    assert runs[("full data", 0.25)]["examples"] == n
    for budget in (0.5, 0.25):
        assert runs[("default teacher", budget)]["examples"] <= budget * 4 * n
        advantage = runs[("default teacher", budget)]["quality"] - runs[("full data", budget)]["quality"]
        assert numbers["equal_budget"][str(budget)] == pytest.approx(advantage)
    assert numbers["target"] == pytest.approx(runs[("full data", 1.0)]["quality"] - TOLERANCE)
    rows = _table_rows(numbers["table"])
    assert [(row["run"], float(row["budget"])) for row in rows] == [(r["method"], r["budget"]) for r in numbers["runs"]]
    for row, run in zip(rows, numbers["runs"]):
        assert float(row["val acc %"]) == pytest.approx(100 * run["quality"], abs=0.005)
        assert int(row["examples"]) == run["examples"]
        assert float(row["wall time s"]) == pytest.approx(run["wall_time"], abs=0.05)


def test_the_same_seed_gives_the_same_qualities_and_verdict(quick_demo, tmp_path):
    _, first, _ = quick_demo
    second, _ = _demo(tmp_path)
    assert [r["quality"] for r in second["runs"]] == [r["quality"] for r in first["runs"]]
    assert second["equal_budget"] == first["equal_budget"]
    assert second["verdict"].split(" it reaches")[0] == first["verdict"].split(" it reaches")[0]


def test_quick_demo_writes_a_png_and_its_record(quick_demo):
    out_dir, numbers, _ = quick_demo
    plot = out_dir / PLOT_NAME
    assert numbers["plot"] == str(plot)
    assert plot.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(plot)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert json.loads((out_dir / RESULT_NAME).read_text()) == json.loads(json.dumps(numbers))


@pytest.mark.parametrize(
    "options, named",
    [({"score": "margin"}, "score"), ({"strategy": "best"}, "strategy"), ({"epochs": 0}, "epochs"),
     ({"seed": -1}, "seed"), ({"budgets": (1.0,)}, "budgets"), ({"budgets": (0.0,)}, "budgets")],
)
def test_bad_options_raise_before_training(options, named, tmp_path):
    with pytest.raises(ValueError, match=named):
        run_demo(out_dir=tmp_path, quick=True, **options)
    assert not any(tmp_path.iterdir())
