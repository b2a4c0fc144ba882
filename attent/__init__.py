"""attent: nonparametric teaching (AtteNT) of attention learners on fused per-example scores.

    teacher = attent.Teacher(len(data), score="fgrad", epochs=E)   # who to train on, and when
    attent.fit(model, data, loss="cross_entropy", optimizer=opt, epochs=E, teacher=teacher)
    probe = attent.GradNormProbe(model)                              # exact per-example gradient norms

The scoring ops themselves (one per layer family, Triton on GPU) live in ``attent_kernels``.
"""
from .factors import Capture, Diag, Direct, Ids, Outer
from .layers import register_layer
from .probe import GradNormProbe
from .schedules import EpochPlan, IntervalSchedule, RatioSchedule, TeachingPlan
from .scores import IndexedDataset, Objective, score_batch, score_pass
from .teacher import Selection, Teacher, TeacherSampler
from .trainer import FitResult, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "Teacher",
    "TeacherSampler",
    "Selection",
    "RatioSchedule",
    "IntervalSchedule",
    "TeachingPlan",
    "EpochPlan",
    "IndexedDataset",
    "Objective",
    "score_batch",
    "score_pass",
    "fit",
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
