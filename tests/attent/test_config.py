"""YAML run descriptions (attent.config): parsing, the objects they build, and a run end to end."""
import json
import textwrap

import pytest
import torch

from attent.config import build_run, load_config, run_from_config
from attent.schedules import RatioSchedule
from attent.strategies import Soft


def _write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_run_from_config_trains_the_described_run(tmp_path):
    path = _write(tmp_path, f"""
        task: {{name: digits, quick: true}}
        seed: 2
        score: loss
        teacher:
          strategy: hard
          ratio: 0.5
          interval: 1
          warmup_epochs: 1
          when: always
        optimizer: {{name: adamw, lr: 3e-3, weight_decay: 0.01}}
        epochs: 3
        batch_size: 16
        eval_every: null
        progress: false
        out_dir: {tmp_path / "out"}
        """)
    result = run_from_config(path)
    # 120 training examples: a full epoch, then two epochs on the 60 highest-loss ones
    assert [r["examples_seen"] for r in result.history] == [120, 180, 240]
    assert [s["ratio"] for s in result.selections] == [1.0, 0.5, 0.5]
    events = [json.loads(line)["event"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert events.count("eval") == 3 and "val_accuracy" in result.final


def test_build_run_builds_teacher_optimizer_and_scheduler(tmp_path):
    config = load_config(_write(tmp_path, """
        task: {name: digits, quick: true}
        teacher:
          strategy: {name: soft, temperature: 0.5}
          ratio: {kind: cosine, initial: 0.3, final: 0.9}
          interval: {kind: incremental, initial: 1, maximum: 2}
          refresh: cycle
        optimizer: {name: sgd, lr: 1e-1, momentum: 0.9}
        lr_scheduler: null
        model: {depth: 2}
        epochs: 5
        """))
    run = build_run(config)
    teacher = run["teacher"]
    assert teacher.strategy == Soft(temperature=0.5) and teacher.refresh == "cycle" and teacher.plan.epochs == 5
    assert teacher.plan.ratio == RatioSchedule("cosine", 0.3, 0.9)
    assert isinstance(run["optimizer"], torch.optim.SGD) and run["optimizer"].defaults["lr"] == 0.1
    assert run["optimizer"].defaults["momentum"] == 0.9 and run["lr_scheduler"] is None
    options = run["options"]
    assert len(run["model"].blocks) == 2 and options.epochs == 5 and options.batch_size == 32


def test_task_defaults_fill_what_the_config_leaves_out(tmp_path):
    run = build_run(load_config(_write(tmp_path, "task: {name: digits, quick: true}\n")))
    assert run["teacher"] is None and run["options"].epochs == 2 and run["loss"] == "cross_entropy"
    assert isinstance(run["optimizer"], torch.optim.AdamW) and run["optimizer"].defaults["lr"] == 2e-3
    assert run["lr_scheduler"] is not None and run["options"].lr_scheduler_interval == "epoch"


def test_published_recipe_and_user_task_factory(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import TensorDataset
        from attent.tasks import Task, TrainDefaults

        def tiny(*, seed, width):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(30, 4, generator=g)
            data = TensorDataset(x, (x[:, 0] > 0).long())
            return Task(name="tiny", train=data, val=data, model_factory=lambda: torch.nn.Linear(4, width),
                        loss="cross_entropy", metric="val_accuracy",
                        defaults=TrainDefaults(epochs=4, batch_size=8, lr=0.1, weight_decay=0.0, warmup_epochs=0,
                                               eval_every=None))
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = load_config(_write(tmp_path, """
        task: {factory: "my_tasks:tiny", width: 2}
        teacher: {published: complex, strategy: soft}
        progress: false
        """))
    run = build_run(config)
    teacher = run["teacher"]
    assert teacher.strategy.name == "soft" and teacher.refresh == "cycle" and teacher.plan.reselect_each_epoch
    assert run["model"].out_features == 2 and len(run["train_data"]) == 30 and teacher.plan.epochs == 4


def test_a_top_level_budget_reaches_the_teacher_and_a_teacher_budget_the_run(tmp_path):
    """The teacher inherits the run's budget as it inherits its epochs; a budget set only in the
    teacher block is the run's too (fit checks that the two agree)."""
    for text in ("budget: 0.5\nteacher: {strategy: soft}\n", "teacher: {strategy: soft, budget: 0.5}\n",
                 "budget: 0.5\nteacher: {strategy: soft, budget: 0.5}\n"):
        run = build_run(load_config(_write(tmp_path, "task: {name: digits, quick: true}\nepochs: 4\n" + text)))
        assert run["teacher"].budget == 0.5 and run["options"].budget == 0.5, text
        assert run["teacher"].plan.epochs == 4
    full = build_run(load_config(_write(tmp_path, "task: {name: digits, quick: true}\nbudget: 0.5\n")))
    assert full["teacher"] is None and full["options"].budget == 0.5
    published = build_run(load_config(_write(tmp_path, "task: {name: digits, quick: true}\nbudget: 1.0\n"
                                                       "teacher: {published: complex}\n")))
    assert published["teacher"].budget is None and published["options"].budget == 1.0


@pytest.mark.parametrize("text, match", [
    ("task: {name: digits, quick: true}\nbudget: 0.5\nteacher: {budget: 0.25}\n",
     r"config budget 0.5 and teacher budget 0.25 differ"),
    ("task: {name: digits, quick: true}\nbudget: 0.5\nteacher: {ratio: 0.3}\n",
     r"config budget 0.5 and teacher ratio 0.3 both fix the subset sizes"),
    ("task: {name: digits, quick: true}\nteacher: {strategy: {name: infobatch, prune_ratio: 0.3}, budget: 0.5}\n",
     r"config budget 0.5: teacher strategy 'infobatch' sizes its own subsets"),
    ("task: {name: digits, quick: true}\nbudget: 0.5\nteacher: {published: simple}\n",
     r"the published recipe \(teacher published: simple\) has no budget"),
    ("task: digits\nepoch: 3\n", r"unknown keys \['epoch'\]"),
    ("epochs: 3\n", "needs a task"),
    ("task: {name: digits, quick: true}\noptimizer: {name: lion}\n", "optimizer name must be one of"),
    ("task: {name: digits, quick: true}\noptimizer: {name: adamw, betas: [0.9, 0.95]}\n", "takes lr and weight_decay"),
    ("task: {factory: no_such_module_here:make}\n", "cannot be imported"),
    ("task: {name: digits, quick: true}\nmodel: {wings: 2}\n", "do not fit the 'digits' model"),
    ("task: {name: digits, quick: true}\nlr_scheduler: step\n", "lr_scheduler must be one of"),
    ("task: {name: digits, quick: true}\nteacher: {ratio: {kind: cosine, start: 0.1}}\n", "must use the keys"),
    ("- task\n", "must hold a mapping"),
    ("task: {name: digits, quick: true}\nteacher: {score: loss}\n", "write 'score: loss' at the top level"),
    ("task: {name: digits, quick: true}\nteacher: {strategy: {name: soft, heat: 2}}\n", r"takes the options \['temperature', 'normalize'\]"),
    ("task: {name: digits, quick: true}\nteacher: {strategy: {name: best}}\n", "strategy name must be one of"),
    ("task: {name: digits, quick: true}\nteacher: {rate: 0.5}\n", "config teacher takes the keys"),
    ("task: {name: digits, quick: true}\nscore: margin\n", "config score must be one of"),
    ("task: {name: digits, quick: true}\nepochs: 3\nlr_scheduler: {warmup_epochs: 3}\n", r"warmup_epochs must be an integer in \[0, epochs=3\)"),
])
def test_bad_configs_raise_value_errors(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        build_run(load_config(_write(tmp_path, text)))


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
