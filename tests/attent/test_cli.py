"""The `attent` command: argument handling, `attent train`'s messages, and the benchmarks run from
a source checkout."""
import textwrap

import pytest

from attent import cli


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
])
def test_train_config_errors_name_the_key_and_value_without_a_traceback(tmp_path, capsys, text, message):
    assert cli.main(["train", "--config", _config(tmp_path, text)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_train_prints_what_it_runs_a_summary_and_where_it_wrote(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _config(tmp_path, """
        task: {name: digits, quick: true}
        score: loss
        teacher: {ratio: 0.5, interval: 1}
        epochs: 2
        progress: false
        """)
    assert cli.main(["train", "--config", path]) == 0
    out = capsys.readouterr().out
    assert "120 training examples, 2 epochs, teacher soft fed loss scores; writing to runs/run" in out
    assert "done: 2 epochs" in out and "val_accuracy" in out
    assert (tmp_path / "runs" / "run" / "metrics.jsonl").is_file()
