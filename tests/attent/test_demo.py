"""The demo (`attent demo`): the runs it makes (full data, the teacher and the random-subset
control at equal budgets), a result in plain sentences whose times are rows of its table, a plot
with a labelled axis, a target line and budget labels, a quick mode that draws no verdict, the same
qualities for the same seed, and bad options refused before any training."""
from __future__ import annotations

import contextlib
import io
import json
import re

import matplotlib.image
import pytest

import attent.demo
from attent.demo import PLOT_NAME, RESULT_NAME, TABLE_HEADER, TOLERANCE, run_demo
from attent.plots import Figure, plot_curves
from attent.trainer import FitResult

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEP = 1.0  # seconds per optimizer step of the stand-in runs (the table shows hundredths)
TEACHER = "teacher (soft, fgrad)"


def _table_rows(table: str) -> list[dict[str, str]]:
    """One dict per row of a format_table table, cells found by the header's column spans."""
    lines = table.splitlines()
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[1])]
    header = [lines[0][a:b].strip() for a, b in spans]
    assert tuple(header) == TABLE_HEADER
    return [{name: line[a:b].strip() for name, (a, b) in zip(header, spans)} for line in lines[2:]]


def _printed(**options):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        numbers = run_demo(**options)
    return numbers, printed.getvalue()


# ------------------------------------------------------------------ the reading, on stand-in runs

def _stand_in(qualities, selection_share=0.1, calls=None):
    """A run_method stand-in: each (method name, budget) ends at the quality given, with one
    STEP-second step per 32 examples and ``selection_share`` of extra selection time for teachers."""

    def run_method(task, method, *, seed, budget, epochs):
        if calls is not None:
            calls.append((method, budget))
        examples = round(budget * epochs * len(task.train))
        steps = -(-examples // 32)
        selection = 0.0 if method.kind == "full" else selection_share * steps * STEP
        quality = qualities[(method.name, budget)]
        return FitResult(history=[{"val_accuracy": quality}], selections=[], wall_time=steps * STEP + selection,
                         train_time=steps * STEP, selection_time=selection, eval_time=0.0, examples_seen=examples,
                         examples_scored=0, steps=steps, epochs_completed=epochs, stopped_early=False, out_dir=None,
                         step_times=[STEP] * steps)

    return run_method


SLOWER = {  # the teacher reaches the target first at b = 0.75, as full data does, with extra selection time
    ("full data", 1.0): 0.960, ("full data", 0.75): 0.957, ("full data", 0.5): 0.930, ("full data", 0.25): 0.800,
    (TEACHER, 0.75): 0.956, (TEACHER, 0.5): 0.940, (TEACHER, 0.25): 0.861,
    ("random subset", 0.75): 0.950, ("random subset", 0.5): 0.935, ("random subset", 0.25): 0.850,
}
FASTER = {**SLOWER, (TEACHER, 0.5): 0.9555}  # now the teacher's b = 0.5 run reaches the target


@pytest.fixture
def captured_figures(monkeypatch):
    """The figures the demo saves (they are still written)."""
    figures = []
    save = Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def test_the_result_is_plain_sentences_whose_times_are_rows_of_the_table(monkeypatch, tmp_path):
    monkeypatch.setattr(attent.demo, "run_method", _stand_in(SLOWER))
    numbers, printed = _printed(epochs=2, out_dir=tmp_path)
    rows = {(row["run"], row["budget"]): row for row in _table_rows(numbers["table"])}
    assert set(rows) == {("full data", "1"), *((name, b) for name in ("full data", TEACHER, "random subset")
                                               for b in ("0.75", "0.5", "0.25"))}
    full_075, teacher_075, recipe = rows[("full data", "0.75")], rows[(TEACHER, "0.75")], rows[("full data", "1")]
    target = 100 * (0.960 - TOLERANCE)
    assert numbers["target"] == pytest.approx(target / 100)
    saving = 1 - float(teacher_075["wall time s"]) / float(full_075["wall time s"])
    assert numbers["saving"] == pytest.approx(saving, abs=1e-3) and saving < 0
    assert numbers["result"] == [
        f"target: {target:.2f}% validation accuracy (full data at b = 1, the recipe, ends at 96.00%; within 0.5 points "
        "of it counts as reaching it)",
        f"full data's shortened schedule reaches it at b = 0.75 in {full_075['wall time s']} s",
        f"{TEACHER} reaches {target:.2f}% at b = 0.75 in {teacher_075['wall time s']} s: {-100 * saving:.1f}% slower "
        "than full data's shortened schedule",
        f"the random subset reaches {target:.2f}% only at b = 1, the full-data run, in {recipe['wall time s']} s: "
        f"{100 * (float(recipe['wall time s']) / float(full_075['wall time s']) - 1):.1f}% slower than full data's "
        "shortened schedule",
        f"at equal budget, {TEACHER} against full data's shortened schedule: +6.10 points at a quarter of the compute "
        "(b = 0.25), +1.00 points at half the compute (b = 0.5), -0.10 points at three quarters of the compute (b = 0.75)",
        f"at equal budget, {TEACHER} against the random subset: +1.10 points at a quarter of the compute (b = 0.25), "
        "+0.50 points at half the compute (b = 0.5), +0.60 points at three quarters of the compute (b = 0.75)",
    ]
    assert numbers["verdict"] == (f"{TEACHER} does not pay on this run: it reaches {target:.2f}% {-100 * saving:.1f}% "
                                  "slower than full data's shortened schedule; +6.1 points at a quarter of the compute "
                                  "(+1.1 against the random subset)")
    assert "\n".join(f"  {line}" for line in numbers["result"]) in printed and f"verdict: {numbers['verdict']}" in printed
    assert "saved" not in printed
    for row in rows.values():  # the table's comparisons are the rows' own differences
        same = {name: rows.get((name, row["budget"])) for name in ("full data", "random subset")}
        if row["run"] == TEACHER:
            for name, column in (("full data", "vs full data"), ("random subset", "vs random")):
                assert float(row[column]) == pytest.approx(float(row["val acc %"]) - float(same[name]["val acc %"]))
        assert (row["vs full data"] == "") == (row["run"] == "full data")


def test_a_teacher_that_reaches_the_target_at_a_lower_budget_pays(monkeypatch, tmp_path):
    monkeypatch.setattr(attent.demo, "run_method", _stand_in(FASTER))
    numbers, _ = _printed(epochs=2, out_dir=tmp_path)
    rows = {(row["run"], row["budget"]): row for row in _table_rows(numbers["table"])}
    saving = 1 - float(rows[(TEACHER, "0.5")]["wall time s"]) / float(rows[("full data", "0.75")]["wall time s"])
    assert saving > 0.2 and numbers["saving"] == pytest.approx(saving, abs=1e-3)
    assert numbers["time_to_target"][TEACHER] == {"run": TEACHER, "budget": 0.5,
                                                  "wall_time": pytest.approx(float(rows[(TEACHER, "0.5")]["wall time s"]), abs=0.005)}
    assert numbers["verdict"].startswith(f"{TEACHER} pays on this run: it reaches 95.50% {100 * saving:.1f}% faster "
                                         "than full data's shortened schedule; +6.1 points at a quarter of the compute")


def test_the_control_is_a_random_subset_redrawn_every_epoch_at_each_budget(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(attent.demo, "run_method", _stand_in(SLOWER, calls=calls))
    _printed(epochs=4, out_dir=tmp_path, budgets=(0.25, 0.75, 0.5))
    n = 1437
    controls = [(method, budget) for method, budget in calls if method.name == "random subset"]
    assert [budget for _, budget in controls] == [0.75, 0.5, 0.25]
    for method, budget in controls:
        teacher = method.teacher(n, epochs=4, seed=0, budget=budget)
        subsets = [set(teacher.select(epoch).indices.tolist()) for epoch in range(4)]
        assert teacher.strategy.name == "random" and len(set(map(frozenset, subsets))) == 4  # a new draw each epoch
        assert sum(map(len, subsets)) <= budget * 4 * n and all(len(s) >= 0.9 * budget * n for s in subsets)
    assert {method.name for method, _ in calls} == {"full data", TEACHER, "random subset"}


def test_a_random_teacher_has_no_separate_control(monkeypatch, tmp_path):
    qualities = {key: value for key, value in SLOWER.items() if key[0] != "random subset"}
    qualities = {("teacher (random, loss)" if name == TEACHER else name, b): q for (name, b), q in qualities.items()}
    monkeypatch.setattr(attent.demo, "run_method", _stand_in(qualities))
    numbers, _ = _printed(epochs=2, out_dir=tmp_path, strategy="random", score="loss")
    assert numbers["control"] is None and {r["label"] for r in numbers["runs"]} == {"full data", "teacher (random, loss)"}
    assert all(row["vs random"] == "" for row in _table_rows(numbers["table"]))
    assert "against the random subset" not in numbers["verdict"]


def test_a_strategy_that_sizes_its_own_subsets_runs_once_and_is_not_compared_at_equal_budget(monkeypatch, tmp_path):
    calls = []
    stand_in = _stand_in({**SLOWER, ("teacher (infobatch, loss)", 1.0): 0.961}, calls=calls)
    monkeypatch.setattr(attent.demo, "run_method", stand_in)
    numbers, _ = _printed(epochs=2, out_dir=tmp_path, strategy="infobatch", score="loss")
    (own,) = [(method, budget) for method, budget in calls if method.name == "teacher (infobatch, loss)"]
    assert not own[0].budgeted and own[0].teacher(1437, epochs=2, seed=0).strategy.name == "infobatch"
    row = next(row for row in _table_rows(numbers["table"]) if row["run"] == "teacher (infobatch, loss)")
    assert row["budget"] == "own (1.00)" and row["vs full data"] == "" and row["vs random"] == ""
    assert "teacher (infobatch, loss) runs at the budget its strategy sets itself: no equal-budget comparison" \
        in numbers["result"]
    assert numbers["equal_budget"] == {} and "points at" not in numbers["verdict"]


def test_the_plot_labels_its_axis_draws_the_target_and_names_each_point(monkeypatch, tmp_path, captured_figures):
    monkeypatch.setattr(attent.demo, "run_method", _stand_in(SLOWER))
    numbers, _ = _printed(epochs=2, out_dir=tmp_path)
    (figure,) = captured_figures
    (ax,) = figure.axes
    assert ax.get_ylabel() == "validation accuracy (%)" and ax.get_xlabel() == "wall time (s)"
    curves = {line.get_label(): line for line in ax.get_lines()}
    target = curves.pop("target: full data at b = 1 less 0.5 points")
    assert list(target.get_ydata()) == pytest.approx([100 * numbers["target"]] * 2)
    assert set(curves) == {"full data", TEACHER, "random subset"}
    runs = {(r["label"], r["budget"]): r for r in numbers["runs"]}
    recipe = runs[("full data", 1.0)]
    for name, line in curves.items():  # each line goes through its budgets and ends at the full-data b = 1 run
        points = sorted((r["wall_time"], 100 * r["quality"]) for (label, _), r in runs.items() if label == name)
        if name != "full data":
            points.append((recipe["wall_time"], 100 * recipe["quality"]))
        assert list(line.get_xdata()) == pytest.approx([x for x, _ in points])
        assert list(line.get_ydata()) == pytest.approx([y for _, y in points])
    texts = sorted(text.get_text() for text in ax.texts)
    assert texts == sorted(["b=1: full data, the recipe", *[f"b={b}" for b in ("0.25", "0.5", "0.75")] * 3])


@pytest.mark.parametrize("metric, label", [("val_accuracy", "validation accuracy"), ("val_ppl", "validation perplexity"),
                                           ("val_top5_error", "validation top5 error"), ("train_loss", "training loss")])
def test_run_plots_name_the_metric_not_its_key(metric, label, tmp_path, captured_figures):
    plot_curves({"run": [{"wall_time": 1.0, metric: 0.5}, {"wall_time": 2.0, metric: 0.7}]}, tmp_path / "p.png",
                metric=metric)
    assert captured_figures[0].axes[0].get_ylabel() == label


# ------------------------------------------------------------------ a real quick run

def _quick(out_dir):
    return _printed(score="loss", seed=3, out_dir=out_dir, quick=True, budgets=(0.5,))  # the quick recipe: 2 epochs


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo") / "nested"
    numbers, printed = _quick(out_dir)
    return out_dir, numbers, printed


def test_quick_demo_says_it_is_a_smoke_run_and_draws_no_verdict(quick_demo):
    _, numbers, printed = quick_demo
    assert printed.startswith("attent demo --quick (a smoke run: no verdict):")
    assert "recipe 2 epochs, seed 3" in printed and "teacher (soft, loss): the default teacher fed loss scores, told to select (when='always'" in printed
    assert numbers["table"] in printed and "draws no verdict" in printed
    assert "verdict:" not in printed and not re.search(r"faster|slower|saved|pays", printed)
    assert numbers["verdict"] is None and numbers["result"] is None and numbers["saving"] is None


def test_quick_demo_runs_full_data_the_teacher_and_the_control_at_equal_budgets(quick_demo):
    _, numbers, _ = quick_demo
    runs = {(r["label"], r["budget"]): r for r in numbers["runs"]}
    n = numbers["train_examples"]
    assert set(runs) == {("full data", 1.0), *((name, 0.5) for name in ("full data", "teacher (soft, loss)", "random subset"))}
    assert runs[("full data", 1.0)]["examples"] == 2 * n and runs[("full data", 0.5)]["examples"] == n
    for name in ("teacher (soft, loss)", "random subset"):
        assert runs[(name, 0.5)]["examples"] <= n and runs[(name, 0.5)]["epochs"] == 2
    rows = _table_rows(numbers["table"])
    assert [(row["run"], float(row["budget"])) for row in rows] == [(r["label"], r["budget"]) for r in numbers["runs"]]
    for row, run in zip(rows, numbers["runs"]):
        assert float(row["val acc %"]) == pytest.approx(100 * run["quality"], abs=0.005)
        assert int(row["examples"]) == run["examples"] and int(row["steps"]) == run["steps"]
        assert float(row["wall time s"]) == pytest.approx(run["wall_time"], abs=0.005)


def test_the_same_seed_gives_the_same_qualities(quick_demo, tmp_path):
    _, first, _ = quick_demo
    second, _ = _quick(tmp_path)
    assert [r["quality"] for r in second["runs"]] == [r["quality"] for r in first["runs"]]


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
     ({"seed": -1}, "seed"), ({"budgets": (1.0,)}, "budgets"), ({"budgets": (0.0,)}, "budgets"),
     ({"budgets": (1.5,)}, "budgets"), ({"budgets": ()}, "budgets"), ({"budgets": ("half",)}, "budgets"),
     ({"score": "learnability"}, "learnability' needs a reference model")],
)
def test_bad_options_raise_before_training(options, named, tmp_path, monkeypatch):
    monkeypatch.setattr(attent.demo, "run_method", pytest.fail)
    with pytest.raises(ValueError, match=named):
        run_demo(out_dir=tmp_path, quick=True, **options)
    assert not any(tmp_path.iterdir())
