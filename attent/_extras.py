"""Optional dependencies: the core needs torch, triton, numpy and tqdm only; integrations, tasks,
plots and configs import their framework through :func:`require`, which names the extra to install
when it is missing."""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``, or raise an ImportError that says ``pip install 'attent[<extra>]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"this part of attent needs {module.split('.')[0]!r}, which is not installed: "
                          f"pip install 'attent[{extra}]'") from error
