"""The `attent` command: `attent demo`, `attent train --config run.yaml`, `attent bench ...`."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Sequence

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
BENCHES = ("kernels", "probe", "e2e")


def _run_bench(name: str, argv: list[str]) -> int:
    """Run bench/<name>/run.py's main(argv). The benchmarks live beside the package in a source
    checkout (they are not installed), so they are loaded from there by path."""
    script = BENCH_DIR / name / "run.py"
    if not script.is_file():
        raise SystemExit(f"attent bench {name}: {script} not found; benchmarks run from a source checkout")
    if str(BENCH_DIR.parent) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR.parent))
    spec = importlib.util.spec_from_file_location(f"bench.{name}.run", script)
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(spec.name)
    sys.modules[spec.name] = module  # while it runs: dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
        return int(module.main(argv) or 0)
    finally:
        if previous is None:
            sys.modules.pop(spec.name, None)
        else:
            sys.modules[spec.name] = previous


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="ViT on scikit-learn digits: full data vs AtteNT, side by side")
    demo.add_argument("--score", default="fgrad", choices=("loss", "fgrad", "gradnorm"))
    demo.add_argument("--strategy", default="hard", choices=("hard", "soft", "random", "infobatch", "importance"))
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's own)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="runs/demo", help="folder for the plot and metrics")
    demo.add_argument("--quick", action="store_true", help="a tiny run that finishes in seconds")

    train = sub.add_parser("train", help="train from a YAML run description")
    train.add_argument("--config", required=True, help="path to run.yaml")

    bench = sub.add_parser("bench", help="benchmarks: kernels, probe or e2e (extra options go to the benchmark)")
    bench.add_argument("which", choices=BENCHES)
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options for the benchmark (see its --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        options = dict(score=args.score, strategy=args.strategy, seed=args.seed, out_dir=args.out, quick=args.quick)
        if args.epochs is not None:
            options["epochs"] = args.epochs
        run_demo(**options)
        return 0
    if args.command == "train":
        from .config import run_from_config

        run_from_config(args.config)
        return 0
    return _run_bench(args.which, list(args.rest))


if __name__ == "__main__":
    raise SystemExit(main())
