"""The README: its plain-loop snippets run as written, with every strategy and with the published
recipe's scoring passes; its first screen says where the teacher pays, from the records, and shows
the demo as it now runs."""
import json
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import attent

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


# ------------------------------------------------------------------ the first screen and the demo

FIRST_SCREEN_END = "## Using it"
DEMO_PLOT = "bench/results/demo_frontier.png"


def _first_screen() -> str:
    """The README up to its usage section, whitespace collapsed (the README wraps its lines)."""
    return " ".join(README.read_text().split(FIRST_SCREEN_END)[0].split())


def test_the_first_screen_says_where_the_teacher_pays_from_the_records():
    """The sentence `python -m bench.e2e.readme_tables` prints from the committed frontier records:
    re-recording a task changes it, and the README with it."""
    from bench.e2e.readme_tables import RESULTS, TASK_ORDER, first_screen

    records = {task: json.loads((RESULTS / f"e2e_{task}.json").read_text()) for task in TASK_ORDER
               if (RESULTS / f"e2e_{task}.json").exists()}
    records = {task: record for task, record in records.items() if "methods" in record}
    assert records and first_screen(records) in _first_screen()


def test_the_first_screen_shows_the_demo_output_in_its_current_form():
    """The demo's printed table in the README has the demo's current columns and rows (full data,
    the default teacher and the random-subset control at every default budget), its result and
    verdict lines, its plot, and the options it takes (every registered strategy)."""
    from attent.demo import DEFAULT_BUDGETS, TABLE_HEADER

    text = README.read_text().split(FIRST_SCREEN_END)[0]
    block = next(b for b in re.findall(r"```text\n(.*?)```", text, re.DOTALL) if b.startswith("attent demo:"))
    lines = block.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("run "))
    assert tuple(re.split(r"\s{2,}", lines[header].strip())) == TABLE_HEADER
    rows = {tuple(re.split(r"\s{2,}", line.strip())[:2]) for line in lines[header + 2:] if re.match(r"^[a-z]", line)
            and not line.startswith(("result:", "verdict:", "wrote"))}
    assert ("full data", "1") in rows
    for budget in DEFAULT_BUDGETS:
        assert {("full data", f"{budget:g}"), ("teacher (soft, fgrad)", f"{budget:g}"),
                ("random subset", f"{budget:g}")} <= rows
    assert any(line.startswith("verdict: teacher (soft, fgrad) ") for line in lines)
    assert any(line.startswith("result:") for line in lines) and "saved" not in block
    assert f"]({DEMO_PLOT})" in text and (README.parent / DEMO_PLOT).read_bytes()[:4] == b"\x89PNG"
    assert f"--strategy {{{','.join(attent.STRATEGIES)}}}" in _first_screen()
