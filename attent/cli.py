"""The `attent` command: `attent demo`, `attent train --config run.yaml`, `attent bench ...`."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn, Sequence

BENCHES = ("kernels", "probe", "e2e")
PACKAGE_PARENT = Path(__file__).resolve().parents[1]  # the checkout, when installed in development mode


def _checkout() -> Path | None:
    """The source checkout holding ``bench/``: the working directory or one above it, or the
    folder above the package when it is installed in development mode."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents, PACKAGE_PARENT):
        if (folder / "bench" / "record_info.py").is_file():
            return folder
    return None


def _run_bench(name: str, argv: list[str]) -> int:
    """Run ``python -m bench.<name>.run`` in the source checkout. The benchmarks are not part of
    the installed package (they need the repository's records and its bench/ folder)."""
    root = _checkout()
    if root is None:
        raise SystemExit(f"attent bench {name}: the benchmarks run from a source checkout of attent (a folder with "
                         f"bench/); cd into one, or clone the repository, then run `attent bench {name}` there")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    return subprocess.call([sys.executable, "-m", f"bench.{name}.run", *argv], cwd=root, env=env)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: what is wrong, and where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from .scores import SCORE_KINDS
    from .strategies import STRATEGIES

    parser = _Parser(prog="attent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="ViT on scikit-learn digits: full data, the teacher and a random subset at "
                                       "equal budgets, with a verdict in plain words")
    demo.add_argument("--score", default="fgrad", choices=SCORE_KINDS,
                      help="what the training steps feed the teacher (default fgrad: ||dloss/dlogits||; "
                           "learnability needs a reference model, which the demo does not train)")
    demo.add_argument("--strategy", default=None, choices=tuple(STRATEGIES),
                      help="the teacher's strategy, instead of the default teacher's")
    demo.add_argument("--budgets", default=None,
                      help="the budgets below 1, comma-separated fractions of the recipe's training examples "
                           "(default 0.75,0.5,0.25)")
    demo.add_argument("--epochs", type=int, default=None, help="the recipe's epochs (default: the task's own)")
    demo.add_argument("--seed", type=int, default=0,
                      help="model initialization, data order and the teachers' draws (default 0)")
    demo.add_argument("--out", default="runs/demo", help="folder for the plot and metrics")
    demo.add_argument("--quick", action="store_true",
                      help="a smoke run on a tiny task that finishes in seconds (no verdict)")

    train = sub.add_parser("train", help="train from a YAML run description")
    train.add_argument("--config", required=True, help="path to run.yaml")
    train.add_argument("--out", default=None, help="output folder when the config sets no out_dir "
                                                    "(default: runs/<config name>)")

    bench = sub.add_parser("bench", usage=f"attent bench {{{','.join(BENCHES)}}} [options of the benchmark]",
                           help="benchmarks, from a source checkout: kernels, probe or e2e",
                           description="Run a benchmark from a source checkout; the options after its name go to "
                                       "it (`attent bench kernels --help` lists them).")
    bench.add_argument("which", choices=BENCHES, help="the benchmark")
    return parser


def _train(config_path: str, out: str | None) -> int:
    from .config import build_run, load_config
    from .trainer import fit

    config = load_config(config_path)
    if "out_dir" not in config:
        config["out_dir"] = out or str(Path("runs") / Path(config_path).stem)
    arguments = build_run(config)
    teacher = arguments["teacher"]
    options = arguments["options"]
    budget = "" if options.budget == 1.0 else f" at budget {options.budget:g}"  # a teacher's budget is the run's
    print(f"attent train: {len(arguments['train_data'])} training examples, {options.epochs} epochs{budget}, "
          f"{'full data' if teacher is None else f'teacher {teacher.strategy.name} fed {options.score} scores'}; "
          f"writing to {options.out_dir}", flush=True)
    result = fit(arguments.pop("model"), arguments.pop("train_data"), **arguments)
    # the summary is the run's last record, the one metrics.jsonl ends with: the two show the same figures
    last = result.final
    metrics = ", ".join(f"{key} {value:.4g}" for key, value in last.items() if key.startswith("val_") or key == "train_loss")
    share = last["selection_time"] / last["wall_time"] if last["wall_time"] > 0 else 0.0
    print(f"attent train: done: {last['epoch']:g} epochs, {last['step']} steps, {last['examples_seen']} examples in "
          f"{last['wall_time']:.2f} s of training (selection {100 * share:.1f}% of it); {metrics}")
    uniform = next((record["uniform"] for record in result.selections if "uniform" in record), None)
    if uniform is not None:
        print(f"attent train: the teacher did not select, the run trained full data's shortened schedule: {uniform}")
    print(f"attent train: wrote {result.out_dir}/metrics.jsonl, checkpoint.pt and the plots")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    options = dict(score=args.score, strategy=args.strategy, seed=args.seed, out_dir=args.out, quick=args.quick)
    if args.budgets is not None:
        try:
            options["budgets"] = [float(b) for b in args.budgets.split(",") if b.strip()]
        except ValueError:
            raise ValueError(f"--budgets must be comma-separated numbers, got {args.budgets!r}") from None
    if args.epochs is not None:
        options["epochs"] = args.epochs
    run_demo(**options)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``attent`` command with ``argv`` (default: the process's arguments); returns the
    exit status. Errors in what the user asked for (a ValueError, a missing extra, a path that
    cannot be written) end the command with one line on stderr and status 2, not a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCHES:
        return _run_bench(argv[1], argv[2:])  # everything after the benchmark's name is its own
    args = _parser().parse_args(argv)
    try:
        return _demo(args) if args.command == "demo" else _train(args.config, args.out)
    except (ValueError, ImportError, OSError) as error:
        print(f"attent {args.command}: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
