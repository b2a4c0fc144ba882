"""Run descriptions for ``attent train --config run.yaml``: a task, a model, a teacher, an optimizer
and the training options, in one YAML file.

Example (every key but ``task`` is optional; omitted ones take the task's default recipe)::

    task: digits                 # a name in attent.tasks.TASKS, or {name: digits, quick: true},
                                 # or {factory: "my_pkg.tasks:make_task", <its keyword arguments>}
    seed: 0                      # task data, model initialization and training order
    model: {depth: 3}            # keyword overrides for the task's model factory
    score: fgrad                 # what training steps feed the teacher: loss | fgrad | gradnorm
    teacher:                     # omitted or null: full-data training
      strategy: hard             # or {name: soft, temperature: 0.5} (a strategy with its options)
      ratio: {kind: cosine, initial: 0.2, final: 0.8}   # or a number (constant ratio)
      interval: 5                # or {kind: incremental, initial: 5, maximum: 10}
      refresh: cycle             # ... any attent.Teacher argument; epochs and budget default to the run's
      when: always               # select without a reference model's evidence of waste; the default
                                 # (evidence) trains full data's shortened schedule here and says so
    # teacher: {published: complex, strategy: soft}    # the published recipes (Teacher.published)
    optimizer: {name: adamw, lr: 2.0e-3, weight_decay: 0.05}   # adamw | adam | sgd (+ their options)
    lr_scheduler: {name: warmup_cosine, warmup_epochs: 2}      # none or null: a constant rate
    epochs: 40
    budget: 0.5                  # the share of the recipe's epochs x N training examples the run may process:
                                 # full data runs the shortened schedule, a teacher plans its subsets to spend it
    batch_size: 32
    out_dir: runs/digits-fgrad   # relative paths are taken from the working directory
    amp: null                    # ... and any other attent.FitOptions field by name

``adamw`` decays matrices only (not biases, norms, position embeddings or class tokens), as the
tasks' recipes do; ``warmup_cosine`` is a per-epoch linear warm-up then cosine decay. Numbers in
YAML's exponent form without a dot (``1e-3``, which YAML reads as text) are read as numbers. Every
error names the key, the value and what was expected (a ValueError; ``attent train`` prints it
without a traceback).
"""
from __future__ import annotations

import importlib
import inspect
import numbers
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ._extras import require
from .optim import adamw, warmup_cosine, warmup_cosine_steps
from .schedules import IntervalSchedule, RatioSchedule
from .strategies import STRATEGIES, strategy_from
from .teacher import Teacher
from .trainer import FitOptions, FitResult, fit

__all__ = ["CONFIG_KEYS", "FIT_KEYS", "load_config", "build_run", "run_config", "run_from_config"]

# fit options a config may set by name: the fields of FitOptions (the rest of fit's arguments are
# built from the config).
FIT_KEYS: tuple[str, ...] = FitOptions.keys()
CONFIG_KEYS: tuple[str, ...] = ("task", "model", "teacher", "optimizer", "lr_scheduler") + FIT_KEYS
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("warmup_cosine", "none")
_EXPONENT_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _numbers(value: Any) -> Any:
    """The config with exponent-form strings (``1e-3``) read as floats."""
    if isinstance(value, str) and _EXPONENT_NUMBER.match(value):
        return float(value)
    if isinstance(value, Mapping):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"config {name} must be a mapping, got {type(value).__name__}: {value!r}")
    return dict(value)


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a run description (see the module docstring).

    Returns:
        The config as a dict, numbers read, unknown keys rejected.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    yaml = require("yaml", "config")
    with open(path) as f:
        try:
            config = yaml.safe_load(f)
        except yaml.YAMLError as error:
            mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
            where = "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
            raise ValueError(f"config {path} is not valid YAML{where}: {problem or ' '.join(str(error).split())}") from None
    if not isinstance(config, Mapping):
        raise ValueError(f"config {path} must hold a mapping of keys to values, got {type(config).__name__}")
    config = _numbers(config)
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"config {path} has unknown keys {unknown}; known keys are {list(CONFIG_KEYS)}")
    if "task" not in config:
        raise ValueError(f"config {path} needs a task: a name in attent.tasks.TASKS or {{factory: 'module:function'}}")
    return dict(config)


def _import(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"task factory must read 'module:function', got {target!r}")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"task factory {target!r} cannot be imported: {error}") from error


def _task(spec: Any, seed: int) -> Any:
    from .tasks import make_task

    if isinstance(spec, str):
        return make_task(spec, seed=seed)
    options = _mapping("task", spec)
    if "factory" in options:
        return _import(options.pop("factory"))(seed=seed, **options)
    if "name" not in options:
        raise ValueError(f"config task must be a name or a mapping with 'name' or 'factory', got {spec!r}")
    name = options.pop("name")
    unknown = sorted(set(options) - {"quick"})
    if unknown:
        raise ValueError(f"config task {name!r} takes only 'quick' besides its name, got {unknown}")
    return make_task(name, seed=seed, quick=bool(options.get("quick", False)))


def _model(task: Any, overrides: Mapping[str, Any], seed: int) -> nn.Module:
    if not overrides:
        return task.model(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return task.model_factory(**overrides)
        except TypeError as error:
            raise ValueError(f"config model overrides {dict(overrides)} do not fit the {task.name!r} model: {error}") from error


def _schedule(kind: type, name: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        return value
    try:
        return kind(**value)
    except TypeError as error:
        fields = list(inspect.signature(kind).parameters)
        raise ValueError(f"config teacher {name} {dict(value)} must use the keys {fields}") from error


def _strategy(spec: Any) -> Any:
    if not isinstance(spec, Mapping):
        return spec
    options = dict(spec)
    name = options.pop("name", None)
    if name not in STRATEGIES:
        raise ValueError(f"config teacher strategy name must be one of {tuple(STRATEGIES)}, got {name!r}")
    try:
        return STRATEGIES[name](**options)
    except TypeError as error:
        fields = list(inspect.signature(STRATEGIES[name]).parameters)
        raise ValueError(f"config teacher strategy {name!r} takes the options {fields}, got {sorted(options)}") from error


def _teacher(spec: Any, num_examples: int, epochs: int, budget: float | None, seed: int) -> Teacher | None:
    """The config's teacher; it inherits the run's ``epochs``, ``seed`` and ``budget`` (when the
    config sets one) unless its own block sets them."""
    if spec is None:
        return None
    options = _mapping("teacher", spec)
    if "score" in options:
        raise ValueError(f"config teacher score: the score is a run option; write 'score: {options['score']}' at the "
                         "top level of the config")
    options.setdefault("seed", seed)
    if "strategy" in options:
        options["strategy"] = _strategy(options["strategy"])
    if budget is not None:
        if options.get("budget", budget) != budget:
            raise ValueError(f"config budget {budget} and teacher budget {options['budget']} differ: set the budget "
                             "once (a top-level budget reaches the teacher)")
        if "published" in options and budget != 1.0:
            raise ValueError(f"config budget {budget}: the published recipe (teacher published: "
                             f"{options['published']}) has no budget, it trains the whole recipe; remove the budget")
        if "published" not in options:
            chosen = strategy_from(options["strategy"]) if "strategy" in options else None
            if chosen is not None and chosen.sizes_own_subsets:
                raise ValueError(f"config budget {budget}: teacher strategy {chosen.name!r} sizes its own "
                                 "subsets from the scores, so no budget can be planned; remove the budget and set the "
                                 "strategy's options (strategy: {name: infobatch, prune_ratio: 0.5})")
            if isinstance(options.get("ratio"), numbers.Real):
                raise ValueError(f"config budget {budget} and teacher ratio {options['ratio']} both fix the subset "
                                 "sizes: remove one, or give the ratio's shape ({kind: cosine, initial: 0.2, final: "
                                 "0.8}), which the budget scales")
            options["budget"] = budget
    try:
        if "published" in options:
            recipe = options.pop("published")
            return Teacher.published(num_examples, epochs=options.pop("epochs", epochs), recipe=recipe, **options)
        options.setdefault("epochs", epochs)
        if "ratio" in options:
            options["ratio"] = _schedule(RatioSchedule, "ratio", options["ratio"])
        if "interval" in options:
            options["interval"] = _schedule(IntervalSchedule, "interval", options["interval"])
        return Teacher(num_examples, **options)
    except TypeError as error:
        fields = [name for name in inspect.signature(Teacher).parameters if name != "num_examples"]
        raise ValueError(f"config teacher takes the keys {fields}: {error}") from error


def _positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"config {name} must be a positive number, got {value!r} ({type(value).__name__})")
    return float(value)


def _optimizer(spec: Any, model: nn.Module, defaults: Any) -> torch.optim.Optimizer:
    options = _mapping("optimizer", spec)
    name = options.pop("name", "adamw")
    if name not in OPTIMIZERS:
        raise ValueError(f"config optimizer name must be one of {OPTIMIZERS}, got {name!r}")
    lr = _positive_number("optimizer lr", options.pop("lr", defaults.lr))
    if name == "adamw":
        weight_decay = options.pop("weight_decay", defaults.weight_decay)
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real) or weight_decay < 0:
            raise ValueError(f"config optimizer weight_decay must be a number >= 0, got {weight_decay!r}")
        if options:
            raise ValueError(f"config optimizer adamw takes lr and weight_decay, got also {sorted(options)}")
        return adamw(model, lr=lr, weight_decay=weight_decay)
    kind = torch.optim.Adam if name == "adam" else torch.optim.SGD
    try:
        return kind(model.parameters(), lr=lr, **options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config optimizer {name}: {error}") from error


def _lr_scheduler(spec: Any, optimizer: torch.optim.Optimizer, options: FitOptions, defaults: Any) -> Any:
    """The config's schedule: per epoch (``lr_scheduler_interval: epoch``, the default), or per
    optimizer step over the steps the run will take (``step``: a factory fit calls with them)."""
    if spec is None:
        return None
    spec = {"name": spec} if isinstance(spec, str) else _mapping("lr_scheduler", spec)
    name = spec.pop("name", "warmup_cosine")
    if name not in SCHEDULERS:
        raise ValueError(f"config lr_scheduler must be one of {SCHEDULERS}, got {name!r}")
    if name == "none":
        return None
    epochs = options.epochs
    warmup = spec.pop("warmup_epochs", min(defaults.warmup_epochs, epochs - 1))
    if spec:
        raise ValueError(f"config lr_scheduler warmup_cosine takes warmup_epochs only, got also {sorted(spec)}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < epochs:
        raise ValueError(f"config lr_scheduler warmup_epochs must be an integer in [0, epochs={epochs}), got {warmup!r}")
    if options.lr_scheduler_interval == "epoch":
        return warmup_cosine(optimizer, total=epochs, warmup=warmup)
    return warmup_cosine_steps(warmup / epochs)


def build_run(config: Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`attent.fit` keyword arguments a checked config describes (model, data, loss,
    optimizer, scheduler, teacher and ``options``, a checked :class:`attent.FitOptions`)."""
    values = {key: config[key] for key in FIT_KEYS if key in config}
    teacher_spec = config.get("teacher")
    if "budget" not in values and isinstance(teacher_spec, Mapping) and "budget" in teacher_spec:
        values["budget"] = teacher_spec["budget"]  # the run spends what its teacher plans
    try:
        FitOptions(**{"epochs": 1, **values})  # the options' own checks, before any work
    except ValueError as error:
        raise ValueError(f"config {error}") from None
    seed = values.get("seed", 0)
    task = _task(config["task"], seed)
    defaults = task.defaults
    values.setdefault("epochs", defaults.epochs)
    values.setdefault("batch_size", defaults.batch_size)
    values.setdefault("eval_every", defaults.eval_every)
    values.setdefault("max_grad_norm", defaults.max_grad_norm)
    values.setdefault("lr_scheduler_interval", "epoch")
    options = FitOptions(**values)
    model = _model(task, _mapping("model", config.get("model")), seed)
    optimizer = _optimizer(config.get("optimizer"), model, defaults)
    return dict(
        model=model, train_data=task.train, eval_data=task.val, loss=task.loss, optimizer=optimizer,
        lr_scheduler=_lr_scheduler(config.get("lr_scheduler", {}), optimizer, options, defaults),
        teacher=_teacher(teacher_spec, len(task.train), options.epochs, values.get("budget"), seed), options=options,
    )


def run_config(config: Mapping[str, Any]) -> FitResult:
    """Train as a checked config describes; returns the :class:`attent.trainer.FitResult`."""
    arguments = build_run(config)
    return fit(arguments.pop("model"), arguments.pop("train_data"), **arguments)


def run_from_config(path: str | os.PathLike) -> FitResult:
    """``attent train --config path``: read the YAML run description at ``path`` and train.

    Returns:
        The run's FitResult (``history[-1]`` holds the final evaluation).
    """
    return run_config(load_config(path))
