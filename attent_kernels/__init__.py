"""attent_kernels: per-example scoring ops. Tensors in, per-example numbers out.

Every op has an exact PyTorch reference (float32 accumulation, used on CPU and as the test
oracle) and a Triton kernel (used for CUDA tensors); ``backend=`` picks one explicitly.
"""
from .embedding import embedding_grad_norm_sq
from .linear import (
    grouped_linear_grad_norm_sq,
    linear_grad_gram,
    linear_grad_norm_sq,
    linear_weight_grad_and_norm_sq,
)
from .loss_scores import CEScores, MSEScores, cross_entropy_scores, linear_cross_entropy_scores, mse_scores
from .norm import norm_grad_norm_sq

__all__ = [
    "linear_grad_norm_sq",
    "grouped_linear_grad_norm_sq",
    "linear_grad_gram",
    "linear_weight_grad_and_norm_sq",
    "embedding_grad_norm_sq",
    "norm_grad_norm_sq",
    "cross_entropy_scores",
    "linear_cross_entropy_scores",
    "mse_scores",
    "CEScores",
    "MSEScores",
]
