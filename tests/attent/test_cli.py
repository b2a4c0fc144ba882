"""The `attent` command: argument handling (every error one line, no traceback), `attent train`'s
messages and summary, and the benchmarks run from a source checkout."""
import json
import re
import textwrap

import pytest

import attent.trainer
from attent import cli
from attent.strategies import STRATEGIES, Random


def _exit_status(argv) -> int:
    """cli.main's status, whether it returns it or argparse exits with it."""
    try:
        return cli.main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize("argv, message", [
    (["demo", "--budgets", "1.5"], "attent demo: budgets must be fractions of the recipe in (0, 1), got 1.5 in [1.5]"),
    (["demo", "--budgets", "1"], "attent demo: budgets must hold at least one fraction below 1"),
    (["demo", "--budgets", "0.5,abc"], "attent demo: --budgets must be comma-separated numbers, got '0.5,abc'"),
    (["demo", "--budgets", ","], "attent demo: budgets must hold at least one fraction below 1"),
    (["demo", "--epochs", "0"], "attent demo: epochs must be an integer >= 1, got 0"),
    (["demo", "--seed", "-1"], "attent demo: seed must be an integer >= 0, got -1"),
    (["demo", "--score", "learnability"], "attent demo: score 'learnability' needs a reference model"),
    (["demo", "--epochs", "two"], "attent demo: argument --epochs: invalid int value: 'two'"),
    (["demo", "--score", "margin"], "attent demo: argument --score: invalid choice: 'margin'"),
    (["demo", "--strategy", "best"], "attent demo: argument --strategy: invalid choice: 'best'"),
    (["demo", "--frobnicate"], "attent: unrecognized arguments: --frobnicate"),
    (["demo", "--out", __file__], f"attent demo: out_dir {__file__!r} exists and is not a folder"),
    (["bench", "nonsense"], "attent bench: argument which: invalid choice: 'nonsense'"),
    ([], "attent: the following arguments are required: command"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_every_error_is_one_line_without_a_traceback(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert _exit_status(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1, captured.err
    assert not any(tmp_path.iterdir())  # refused before any training


def test_bench_help_lists_the_benchmarks_without_a_stray_positional(capsys):
    assert _exit_status(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "rest" not in out and "usage: attent bench {kernels,probe,e2e} [options of the benchmark]" in out


def test_every_demo_option_has_help_and_the_strategies_come_from_the_registry(monkeypatch):
    monkeypatch.setitem(STRATEGIES, "every-third", Random)  # a strategy registered later; removed after the test
    parser = cli._parser()
    demo = parser._subparsers._group_actions[0].choices["demo"]
    options = {action.dest: action for action in demo._actions if action.dest != "help"}
    assert set(options) == {"score", "strategy", "budgets", "epochs", "seed", "out", "quick"}
    assert all(action.help for action in options.values())
    assert tuple(options["strategy"].choices) == tuple(STRATEGIES)
    assert {"infobatch", "importance", "hard", "soft", "random", "every-third"} <= set(options["strategy"].choices)


def test_demo_rejects_unknown_score():
    with pytest.raises(SystemExit):
        cli.main(["demo", "--score", "nonsense"])


def test_bench_rejects_unknown_benchmark():
    with pytest.raises(SystemExit):
        cli.main(["bench", "nonsense"])


def _checkout(root):
    (root / "bench" / "kernels").mkdir(parents=True)
    (root / "bench" / "record_info.py").write_text("")
    (root / "bench" / "kernels" / "run.py").write_text(textwrap.dedent("""
        import sys
        from pathlib import Path
        Path("ran.txt").write_text(" ".join(sys.argv[1:]))
        raise SystemExit(3)
        """))
    return root


def test_bench_runs_its_module_in_the_checkout_found_from_the_working_directory(tmp_path, monkeypatch):
    root = _checkout(tmp_path / "repo")
    (root / "sub").mkdir()
    monkeypatch.chdir(root / "sub")
    monkeypatch.setattr(cli, "PACKAGE_PARENT", tmp_path / "elsewhere")
    assert cli.main(["bench", "kernels", "--quick", "--ops", "x"]) == 3
    assert (root / "ran.txt").read_text() == "--quick --ops x"  # run with the checkout as its folder
    assert cli.main(["bench", "kernels", "--help"]) == 3  # the benchmark's own help
    assert (root / "ran.txt").read_text() == "--help"


def test_bench_outside_a_checkout_says_where_to_run_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "PACKAGE_PARENT", tmp_path / "elsewhere")
    with pytest.raises(SystemExit, match="run from a source checkout of attent"):
        cli.main(["bench", "e2e"])


def _config(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.mark.parametrize("text, message", [
    ("task: {name: digits, quick: true}\nepochs: two\n", "config epochs must be a positive integer, got 'two' (str)"),
    ("task: {name: digits, quick: true}\noptimizer: {lr: fast}\n", "config optimizer lr must be a positive number, got 'fast' (str)"),
    ("task: {name: digits, quick: true}\nbatch_size: 0\n", "config batch_size must be a positive integer, got 0 (int)"),
    ("task: {name: digits, quick: true}\nprogress: maybe\n", "config progress must be true or false, got 'maybe'"),
    ("task: [digits\n", "is not valid YAML"),
    ("task: {name: digits, quick: true}\nbudget: 0.5\nteacher: {published: complex}\n",
     "config budget 0.5: the published recipe (teacher published: complex) has no budget"),
    ("task: {name: digits, quick: true}\nbudget: 0.5\nteacher: {strategy: infobatch}\n",
     "config budget 0.5: teacher strategy 'infobatch' sizes its own subsets"),
])
def test_train_config_errors_name_the_key_and_value_without_a_traceback(tmp_path, capsys, text, message):
    assert cli.main(["train", "--config", _config(tmp_path, text)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_train_prints_what_it_runs_a_summary_and_where_it_wrote(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _config(tmp_path, """
        task: {name: digits, quick: true}
        score: loss
        teacher: {ratio: 0.5, interval: 1, when: always}
        epochs: 2
        progress: false
        """)
    assert cli.main(["train", "--config", path]) == 0
    out = capsys.readouterr().out
    assert "120 training examples, 2 epochs, teacher soft fed loss scores; writing to runs/run" in out
    assert "done: 2 epochs" in out and "val_accuracy" in out
    assert (tmp_path / "runs" / "run" / "metrics.jsonl").is_file()


def test_the_default_teacher_without_a_reference_says_it_ran_full_datas_schedule(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _config(tmp_path, """
        task: {name: digits, quick: true}
        score: loss
        budget: 0.5
        teacher: {strategy: soft}
        epochs: 2
        progress: false
        """)
    with pytest.warns(RuntimeWarning, match="trains uniformly"):
        assert cli.main(["train", "--config", path]) == 0
    out = capsys.readouterr().out
    assert "the teacher did not select, the run trained full data's shortened schedule: no reference model" in out
    assert "done: 1 epochs" in out and " 120 examples in " in out


def test_train_summary_shows_the_figures_metrics_jsonl_ends_with(tmp_path, capsys, monkeypatch):
    """The summary is read from the run's last record, whatever else FitResult's totals count
    (here, as when plotting was counted, 100 s more)."""
    fit = attent.trainer.fit

    def fit_with_later_work(*args, **kwargs):
        result = fit(*args, **kwargs)
        result.wall_time += 100.0
        return result

    monkeypatch.setattr(attent.trainer, "fit", fit_with_later_work)
    monkeypatch.chdir(tmp_path)
    path = _config(tmp_path, """
        task: {name: digits, quick: true}
        score: loss
        teacher: {interval: 1, when: always}
        epochs: 2
        progress: false
        """)
    assert cli.main(["train", "--config", path]) == 0
    summary = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("attent train: done:"))
    last = [json.loads(line) for line in (tmp_path / "runs" / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [record for record in last if record["event"] == "eval"][-1]
    assert f"{last['epoch']:g} epochs, {last['step']} steps, {last['examples_seen']} examples in " \
           f"{last['wall_time']:.2f} s of training (selection {100 * last['selection_time'] / last['wall_time']:.1f}% " \
           f"of it); train_loss {last['train_loss']:.4g}, val_loss {last['val_loss']:.4g}, " \
           f"val_accuracy {last['val_accuracy']:.4g}" in summary


def test_a_top_level_budget_reaches_the_teacher(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _config(tmp_path, """
        task: {name: digits, quick: true}
        score: loss
        budget: 0.25
        teacher: {strategy: soft, when: always}
        epochs: 4
        progress: false
        """)
    assert cli.main(["train", "--config", path]) == 0
    out = capsys.readouterr().out
    assert "120 training examples, 4 epochs at budget 0.25, teacher soft fed loss scores" in out
    records = [json.loads(line) for line in (tmp_path / "runs" / "run" / "metrics.jsonl").read_text().splitlines()]
    examples = [record["examples_seen"] for record in records if record["event"] == "eval"]
    assert re.search(rf"{examples[-1]} examples in", out)
    assert 0.9 * 0.25 * 4 * 120 <= examples[-1] <= 0.25 * 4 * 120  # the teacher spent the budget, over 4 epochs
    assert len(examples) == 4
