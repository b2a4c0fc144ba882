"""The `attent` command's argument handling and its dispatch to the benchmarks."""
import pytest

from attent import cli


def test_demo_rejects_unknown_score():
    with pytest.raises(SystemExit):
        cli.main(["demo", "--score", "nonsense"])


def test_bench_rejects_unknown_benchmark():
    with pytest.raises(SystemExit):
        cli.main(["bench", "nonsense"])


def test_bench_runs_main_of_its_script(tmp_path, monkeypatch):
    script_dir = tmp_path / "bench" / "kernels"
    script_dir.mkdir(parents=True)
    (script_dir / "run.py").write_text("def main(argv):\n    return 3 if argv == ['--quick'] else 1\n")
    monkeypatch.setattr(cli, "BENCH_DIR", tmp_path / "bench")
    assert cli.main(["bench", "kernels", "--quick"]) == 3


def test_bench_outside_a_checkout_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "BENCH_DIR", tmp_path / "missing")
    with pytest.raises(SystemExit, match="run.py not found"):
        cli.main(["bench", "e2e"])
