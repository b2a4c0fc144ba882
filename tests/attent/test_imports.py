"""The core installs and imports without any framework; a missing extra names what to install; no
import circles inside the packages."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from attent._extras import require

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("transformers", "timm", "yaml", "sklearn", "matplotlib", "peft", "opacus", "accelerate")


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_attent_and_attent_kernels_load_no_framework():
    loaded = _run("import sys, attent, attent_kernels, attent.teaching, attent.probe, attent.optim; "
                  f"print(','.join(m for m in {FRAMEWORKS!r} if m in sys.modules))")
    assert loaded == ""


def test_a_missing_extra_names_the_pip_install():
    with pytest.raises(ImportError, match=r"needs 'no_such_module_here', which is not installed: pip install 'attent\[hf\]'"):
        require("no_such_module_here.sub", "hf")
    blocked = _run("import sys; sys.modules['yaml'] = None\n"
                   "from attent.config import load_config\n"
                   "try:\n    load_config(__file__ if False else 'pyproject.toml')\n"
                   "except ImportError as error:\n    print(error)")
    assert "pip install 'attent[config]'" in blocked


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports at its top level (not inside functions):
    for ``from x import y`` the submodule x.y when there is one, else x."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.update(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules and name != module}


@pytest.mark.parametrize("package", ["attent", "attent_kernels"])
def test_no_import_circles(package):
    """No module reaches itself through top-level imports (package __init__ files, which import
    their submodules to re-export them, are left out of the walk)."""
    files = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    modules = set(files)
    graph = {name: {t for t in _imports(path, modules) if files[t].name != "__init__.py"} for name, path in files.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return trail + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = [cycle for cycle in map(cycle_from, sorted(files)) if cycle]
    assert cycles == []
