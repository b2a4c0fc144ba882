"""What every benchmark record says about where it ran: the device, the machine and the versions."""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

__all__ = ["device", "machine", "versions", "device_label", "RESULTS_DIR", "RUNS_DIR", "add_output_options",
           "output_dir"]

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"  # the committed records behind the README's tables
RUNS_DIR = Path("runs") / "bench"  # where a run writes unless asked to update the records


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--record``: write into bench/results/ (the committed records); otherwise runs/bench/."""
    parser.add_argument("--record", action="store_true",
                        help=f"update the committed records in {RESULTS_DIR.relative_to(REPO)}/ (default: write "
                             f"to {RUNS_DIR}/ in the working directory)")
    parser.add_argument("--conditions", default="alone on the machine",
                        help="what else ran on the machine meanwhile, kept in the record beside it (wall times "
                             "depend on it; default: 'alone on the machine')")


def output_dir(args: argparse.Namespace) -> Path:
    """The folder a benchmark's default output goes to (see :func:`add_output_options`)."""
    return RESULTS_DIR if args.record else RUNS_DIR


def device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read(), re.MULTILINE)
        if found:
            return found.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    """CPU model and cores, torch threads, platform, and the GPU when ``device`` is CUDA."""
    machine = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "gpu": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        machine["gpu"] = {
            "name": props.name,
            "memory_GiB": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
        }
    return machine


def versions(*extra: str) -> dict:
    """Python, torch, and the installed versions of triton, opacus, pytest-benchmark, attent and ``extra`` packages."""
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("triton", "opacus", "pytest-benchmark", "attent", *extra):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    found["attent_commit"] = _commit()
    return found


def _commit() -> str | None:
    """The checkout's commit, with ``+modified`` when the library or benchmark code differs from it
    (None outside a git checkout)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "attent", "attent_kernels",
                                  "bench", ":!bench/results"], capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+modified" if changed else "")


def device_label(device: torch.device) -> str:
    """"cpu", or the GPU's name as a file-name-safe label."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
