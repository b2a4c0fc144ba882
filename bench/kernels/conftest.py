"""Options of the kernel benchmark: which case set and which ops (`--kernel-set`, `--kernel-ops`)."""
from __future__ import annotations

import pytest
import torch

from bench.kernels._cases import CASE_SETS, cases


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attent kernels")
    group.addoption("--kernel-set", choices=CASE_SETS, default="full", help="quick: tiny shapes; full: the device's shapes")
    group.addoption("--kernel-ops", default="", help="comma-separated op names to run (default: every op)")


def benchmark_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        ops = [op for op in metafunc.config.getoption("kernel_ops").split(",") if op]
        selected = cases(metafunc.config.getoption("kernel_set"), benchmark_device(), ops or None)
        metafunc.parametrize("case", selected, ids=[case.id for case in selected])
