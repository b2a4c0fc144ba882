"""attent_kernels: per-example scoring ops. Tensors in, per-example numbers out.

Every op has an exact PyTorch reference (float32 accumulation, used on CPU and as the test
oracle) and a Triton kernel (used for CUDA tensors); ``backend=`` ("auto", "triton" or
"reference", on every op) picks one explicitly, and :func:`uses_triton` says which one a call runs.

Conventions shared by every op:
- accumulation and results in float32, float64 if any input is float64 (:func:`accum_dtype`, the
  rule ``attent`` follows too);
- outputs never require grad: scores are numbers, not part of a graph (every op runs under
  ``torch.no_grad``, whichever backend runs it);
- ``bias`` is the layer's bias: a keyword flag, False by default, where only its presence
  matters (the gradient-norm and Gram ops: True adds the bias gradient's term), the bias tensor
  itself where its value does (``linear_cross_entropy_scores``, whose logits need it);
- the Triton kernels' dot precision: 16-bit for any 16-bit input (mixed with float32 too),
  TF32 for float32 when ``torch.backends.cuda.matmul.allow_tf32`` is on (``linear`` docstring).
"""
from ._checks import accum_dtype
from ._dispatch import uses_triton
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
    "accum_dtype",
    "uses_triton",
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
