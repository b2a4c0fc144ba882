"""attent: nonparametric teaching (AtteNT) of attention learners on fused per-example scores.

    teacher = attent.Teacher(len(data), epochs=E)                   # who to train on, and when
    attent.fit(model, data, loss="cross_entropy", optimizer=opt, epochs=E, teacher=teacher, score="fgrad")
    probe = attent.GradNormProbe(model)                              # exact per-example gradient norms

``import attent`` loads torch, numpy and tqdm only; the integrations (``attent.integrations.hf``,
``attent.integrations.timm``), the tasks, plots and YAML configs load their framework when used.

The scoring ops themselves (one per layer family, Triton on GPU) live in ``attent_kernels``.
"""
from . import optim
from .factors import Capture, Diag, Direct, Ids, Outer
from .layers import register_layer
from .pool import PoolSelection
from .probe import GradNormProbe
from .reference import Reference, ReferenceCost
from .schedules import EpochPlan, IntervalSchedule, RatioSchedule, TeachingPlan
from .scores import SCORE_KINDS, IndexedDataset, Objective, Scorer, score_batch, score_pass
from .strategies import STRATEGIES, Hard, Importance, InfoBatch, Random, Soft, Strategy, register_strategy
from .teacher import Selection, Teacher, TeacherSampler
from .teaching import EpochStart, Teaching
from .trainer import FitOptions, FitResult, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "Teacher",
    "TeacherSampler",
    "Selection",
    "Strategy",
    "STRATEGIES",
    "register_strategy",
    "Hard",
    "Soft",
    "Random",
    "Importance",
    "InfoBatch",
    "Teaching",
    "EpochStart",
    "Reference",
    "ReferenceCost",
    "PoolSelection",
    "Scorer",
    "SCORE_KINDS",
    "RatioSchedule",
    "IntervalSchedule",
    "TeachingPlan",
    "EpochPlan",
    "IndexedDataset",
    "Objective",
    "score_batch",
    "score_pass",
    "fit",
    "FitOptions",
    "optim",
    "evaluate",
    "FitResult",
    "GradNormProbe",
    "register_layer",
    "Capture",
    "Outer",
    "Ids",
    "Diag",
    "Direct",
]
