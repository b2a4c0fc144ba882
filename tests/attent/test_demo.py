"""The demo (`attent demo`): a quick run's printed table agrees with the numbers it returns and
records, the plot is a real PNG, and bad options are refused before any training."""
from __future__ import annotations

import contextlib
import io
import json
import math

import matplotlib.image
import pytest

from attent.demo import PLOT_NAME, RESULT_NAME, TABLE_HEADER, run_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _table_rows(table: str) -> dict[str, dict[str, str]]:
    """method -> column -> cell of a format_table table (cells are separated by two spaces or more)."""
    lines = table.splitlines()
    header = [cell.strip() for cell in lines[0].split("  ") if cell.strip()]
    assert tuple(header) == TABLE_HEADER
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.split("  ") if cell.strip()]
        assert len(cells) == len(header), line
        rows[cells[0]] = dict(zip(header, cells))
    return rows


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo") / "nested"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        numbers = run_demo(score="loss", strategy="soft", seed=3, out_dir=out_dir, quick=True, epochs=3)
    return out_dir, numbers, printed.getvalue()


def test_quick_demo_prints_what_it_runs_and_its_table(quick_demo):
    _, numbers, printed = quick_demo
    assert printed.startswith("attent demo:")
    assert "3 epochs, seed 3" in printed and "score loss, strategy soft" in printed
    assert numbers["table"] in printed


def test_quick_demo_table_agrees_with_the_returned_numbers(quick_demo):
    _, numbers, _ = quick_demo
    assert (numbers["score"], numbers["strategy"], numbers["seed"], numbers["epochs"]) == ("loss", "soft", 3, 3)
    assert list(numbers["runs"]) == ["full data", "AtteNT"]
    full, attent = numbers["runs"]["full data"], numbers["runs"]["AtteNT"]
    assert numbers["target_accuracy"] == full["final_accuracy"]
    # full data: 3 epochs over every training image; AtteNT trains on a subset after its warm-up epoch
    assert full["examples_seen"] == 3 * numbers["train_examples"]
    assert numbers["train_examples"] <= attent["examples_seen"] < full["examples_seen"]
    assert full["time_saved"] == 0.0
    if attent["time_to_target"] is None:
        assert attent["time_saved"] is None
    else:
        assert attent["time_saved"] == pytest.approx(1 - attent["time_to_target"] / full["time_to_target"])

    rows = _table_rows(numbers["table"])
    assert list(rows) == ["full data", "AtteNT"]
    for name, run in numbers["runs"].items():
        row = rows[name]
        assert float(row["final val acc %"]) == pytest.approx(100 * run["final_accuracy"], abs=0.05)
        assert float(row["wall time s"]) == pytest.approx(run["wall_time"], abs=0.05)
        assert int(row["examples seen"]) == run["examples_seen"]
        assert float(row["selection overhead %"]) == pytest.approx(100 * run["selection_overhead"], abs=0.05)
        if run["time_to_target"] is None:
            assert (row["time to target s"], row["time saved %"]) == ("never", "-")
        else:
            assert float(row["time to target s"]) == pytest.approx(run["time_to_target"], abs=0.05)
            assert float(row["time saved %"]) == pytest.approx(100 * run["time_saved"], abs=0.05)
    assert 0 < attent["selection_overhead"] < 1 and math.isfinite(attent["wall_time"])


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
     ({"seed": -1}, "seed")],
)
def test_bad_options_raise_before_training(options, named, tmp_path):
    with pytest.raises(ValueError, match=named):
        run_demo(out_dir=tmp_path, quick=True, **options)
    assert not any(tmp_path.iterdir())
