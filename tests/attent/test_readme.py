"""The README's plain-loop snippets run as written, with every strategy and with the published
recipe's scoring passes."""
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

README = Path(__file__).resolve().parents[2] / "README.md"
TEACHER_LINE = "teacher = attent.Teacher(len(ds), epochs=E)"


def _snippets() -> tuple[str, str]:
    """(the three-line loop, the refresh variant) from the README's python blocks."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    loop = next(block for block in blocks if TEACHER_LINE in block)
    refresh = next(block for block in blocks if "refresh_indices" in block and "for epoch in range(E)" in block)
    return loop, refresh


def _with_refresh(loop: str, refresh: str) -> str:
    """The loop with the refresh lines at the top of each epoch (the README's second snippet)."""
    lines = [line for line in refresh.splitlines() if line.strip() and "..." not in line and "for idx" not in line]
    head = "\n".join(lines[1:]) + "\n"  # without its own `for epoch` line
    return loop.replace("    for idx, (x, y) in loader:\n", head + "    for idx, (x, y) in loader:\n", 1)


def _namespace():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=generator)
    ds = TensorDataset(x, (x[:, 0] > 0).long())
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    return {"ds": ds, "model": model, "opt": torch.optim.SGD(model.parameters(), lr=0.1), "E": 4}


@pytest.mark.parametrize("strategy", [None, "hard", "soft", "random", "importance", "infobatch"])
def test_the_readme_loop_runs_with_every_strategy(strategy):
    """As written (the default strategy), and with each strategy named."""
    loop, _ = _snippets()
    namespace = _namespace()
    before = [p.detach().clone() for p in namespace["model"].parameters()]
    named = TEACHER_LINE if strategy is None else TEACHER_LINE.replace("epochs=E)", f'epochs=E, strategy="{strategy}")')
    exec(loop.replace(TEACHER_LINE, named), namespace)
    teacher = namespace["teacher"]
    assert teacher.stats["observed"] > 40 and teacher.stats["selections"] >= 1
    assert any(not torch.equal(p, q) for p, q in zip(namespace["model"].parameters(), before))
    assert len(namespace["loader"]) == 0  # the teacher's epochs are over: an empty epoch, not an error


@pytest.mark.parametrize("teacher_line", [
    "teacher = attent.Teacher.published(len(ds), epochs=E)",
    'teacher = attent.Teacher(len(ds), epochs=E, strategy="soft", refresh=0.5)',
])
def test_the_readme_refresh_hook_runs_the_scoring_passes(teacher_line):
    loop, refresh = _snippets()
    namespace = _namespace()
    exec(_with_refresh(loop, refresh).replace(TEACHER_LINE, teacher_line), namespace)
    teacher = namespace["teacher"]
    assert teacher.stats["refreshes"] >= 1
    assert int((teacher.score_steps >= 0).sum()) == 40
