"""The `attent` command: `attent demo`, `attent train --config run.yaml`, `attent bench ...`."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="ViT on scikit-learn digits: full data vs the default teacher at equal budgets")
    demo.add_argument("--score", default="fgrad", choices=("loss", "fgrad", "gradnorm"))
    demo.add_argument("--strategy", default=None, choices=("hard", "soft", "random", "importance"),
                      help="instead of the default teacher's strategy")
    demo.add_argument("--budgets", default="0.5,0.25", help="the budgets below 1, comma-separated (default 0.5,0.25)")
    demo.add_argument("--epochs", type=int, default=None, help="the recipe's epochs (default: the task's own)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="runs/demo", help="folder for the plot and metrics")
    demo.add_argument("--quick", action="store_true", help="a tiny run that finishes in seconds")

    train = sub.add_parser("train", help="train from a YAML run description")
    train.add_argument("--config", required=True, help="path to run.yaml")
    train.add_argument("--out", default=None, help="output folder when the config sets no out_dir "
                                                    "(default: runs/<config name>)")

    bench = sub.add_parser("bench", help="benchmarks, from a source checkout: kernels, probe or e2e "
                                         "(extra options go to the benchmark; --help lists them)")
    bench.add_argument("which", choices=BENCHES)
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options for the benchmark (see its --help)")
    return parser


def _train(config_path: str, out: str | None) -> int:
    from .config import build_run, load_config
    from .trainer import fit

    try:
        config = load_config(config_path)
        if "out_dir" not in config:
            config["out_dir"] = out or str(Path("runs") / Path(config_path).stem)
        arguments = build_run(config)
    except (ValueError, ImportError) as error:
        print(f"attent train: {error}", file=sys.stderr)
        return 2
    teacher = arguments["teacher"]
    options = arguments["options"]
    print(f"attent train: {len(arguments['train_data'])} training examples, {options.epochs} epochs, "
          f"{'full data' if teacher is None else f'teacher {teacher.strategy.name} fed {options.score} scores'}; "
          f"writing to {options.out_dir}", flush=True)
    result = fit(arguments.pop("model"), arguments.pop("train_data"), **arguments)
    final = {key: value for key, value in result.final.items() if key.startswith("val_") or key == "train_loss"}
    metrics = ", ".join(f"{key} {value:.4g}" for key, value in final.items())
    print(f"attent train: done: {result.epochs_completed} epochs, {result.steps} steps, {result.examples_seen} "
          f"examples in {result.wall_time:.1f} s (selection {100 * result.selection_overhead:.1f}%); {metrics}")
    print(f"attent train: wrote {result.out_dir}/metrics.jsonl, checkpoint.pt and the plots")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        try:
            budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
        except ValueError:
            raise SystemExit(f"attent demo: --budgets must be comma-separated numbers, got {args.budgets!r}") from None
        options = dict(score=args.score, strategy=args.strategy, budgets=budgets, seed=args.seed, out_dir=args.out,
                       quick=args.quick)
        if args.epochs is not None:
            options["epochs"] = args.epochs
        run_demo(**options)
        return 0
    if args.command == "train":
        return _train(args.config, args.out)
    return _run_bench(args.which, list(args.rest))


if __name__ == "__main__":
    raise SystemExit(main())
