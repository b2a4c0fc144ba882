"""The probe's layer registry: one small rule per layer type, and the factored per-example gradients
the rules return.

A rule tells :class:`attent.GradNormProbe` how a layer's parameters get their per-example gradient
from the gradient of one of the layer's outputs, without ever forming that per-example gradient when
it is large. It runs in the layer's forward hook and returns :class:`Capture` objects: a tensor the
layer produced, and a function from that tensor's gradient to one :class:`Factor` per parameter.

Factors (B = examples; the batch sits at the probe's ``batch_dim`` unless a factor says otherwise):

- :class:`Outer` ``(a, b)``: the per-example gradient is ``sum_t a_t b_t^T`` over every position
  t, with ``a`` of shape (B, ..., rows) (or :class:`Ids`, one-hot rows given by token ids) and
  ``b`` of shape (B, ..., cols). Linear weights (a = output gradient, b = input), HF ``Conv1D``
  (a = input, b = output gradient), embeddings (a = the ids), patch-embedding convolutions.
  Norms go through the ghost/direct kernels of ``attent_kernels``.
- :class:`Diag` ``(x, g)``: the per-example gradient is ``sum_t x_t * g_t`` (elementwise), for the
  weight of LayerNorm/RMSNorm (x = the normalized input) or any scale vector.
- :class:`Direct` ``(v)``: the per-example gradient itself, summed over the positions: (B, ...,
  param.numel()) after flattening; for biases and for small loose parameters.

A user adds a layer type without touching the probe::

    @attent.register_layer(MyScale, params=("gamma",))
    def _my_scale(module, args, output):
        x = args[0]
        return Capture(output, lambda g: {"gamma": Diag(x, g)})

Built-in rules: ``nn.Linear`` (any leading dims, and subclasses), HF ``Conv1D``, ``nn.Embedding``,
``nn.LayerNorm``, RMSNorm variants (``nn.RMSNorm``, any class named ``*RMSNorm``/``*RmsNorm`` with
a ``weight`` and ``eps`` or ``variance_epsilon``: HF Llama's, timm's), ``nn.Conv2d`` whose stride
equals its kernel (patch embeddings), and ``nn.MultiheadAttention`` (its packed ``in_proj_weight``
through a re-implemented forward that exposes the projections; ``out_proj`` is then an ordinary
``nn.Linear`` call). Loose parameters (``cls_token``, ``pos_embed``) are handled by the probe itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Capture",
    "Outer",
    "Ids",
    "Diag",
    "Direct",
    "Factor",
    "LayerRule",
    "register_layer",
    "find_rule",
]


@dataclass(frozen=True)
class Ids:
    """One-hot rows given by integer ids: ``ids`` (B, ...) int, ``num`` rows; positions holding
    ``padding_idx`` contribute nothing (``nn.Embedding`` gives its padding row no gradient)."""

    ids: torch.Tensor
    num: int
    padding_idx: int | None = None


@dataclass(frozen=True)
class Outer:
    """Per-example gradient ``sum_t a_t b_t^T``: a (B, ..., rows) float or :class:`Ids`, b (B, ..., cols).

    ``batch_dim`` overrides the probe's batch dimension for these tensors (e.g. 0 for image patches)."""

    a: torch.Tensor | Ids
    b: torch.Tensor
    batch_dim: int | None = None


@dataclass(frozen=True)
class Diag:
    """Per-example gradient ``sum_t x_t * g_t`` (elementwise): x and g of the same shape (B, ..., n)."""

    x: torch.Tensor
    g: torch.Tensor
    batch_dim: int | None = None


@dataclass(frozen=True)
class Direct:
    """The per-example gradient itself: v (B, ..., k) with the parameter's numel dividing the
    non-batch part; every block of param.numel() trailing elements is one position, summed."""

    v: torch.Tensor
    batch_dim: int | None = None


Factor = Outer | Diag | Direct


@dataclass
class Capture:
    """A tensor a layer call produced, and how its gradient gives the layer's parameters'
    per-example gradients: ``factors(grad) -> {parameter name: Factor}`` (names relative to the
    module; a name the probe does not cover is ignored)."""

    tensor: torch.Tensor
    factors: Callable[[torch.Tensor], Mapping[str, Factor]]


LayerRule = Callable[[nn.Module, tuple, Any], "Capture | Sequence[Capture]"]
"""``rule(module, args, output)``: called in the module's forward hook with its positional inputs
and its output; returns the captures of this call (empty when nothing needs a gradient)."""


@dataclass(frozen=True)
class _Entry:
    rule: LayerRule
    params: tuple[str, ...]
    name: str
    forward: Callable[..., Any] | None = None
    check: Callable[[nn.Module], str | None] | None = None


_REGISTRY: dict[type, _Entry] = {}
_BY_NAME: list[tuple[Callable[[nn.Module], bool], _Entry]] = []


def register_layer(
    layer_type: type[nn.Module],
    *,
    params: Sequence[str],
    name: str | None = None,
    forward: Callable[..., Any] | None = None,
    check: Callable[[nn.Module], str | None] | None = None,
) -> Callable[[LayerRule], LayerRule]:
    """Register the probe's rule for a layer type (and its subclasses); use as a decorator.

    Args:
        layer_type: the module class.
        params: names of the module's own parameters the rule covers.
        name: how ``GradNormProbe.coverage`` describes it (default: the class name).
        forward: optional replacement ``forward(module, capture, *args, **kwargs)`` the probe
            installs while attached, for layers whose parameters are used inside a functional
            call (``capture(Capture)`` hands the probe a capture); the rule is then not called.
        check: optional ``check(module) -> None | reason``: a reason makes the module's
            parameters uncovered (a configuration the rule does not support).
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise TypeError(f"layer_type must be an nn.Module subclass, got {layer_type!r}")
    if isinstance(params, str) or not params:
        raise ValueError(f"params must be a non-empty sequence of parameter names, got {params!r}")

    def decorator(rule: LayerRule) -> LayerRule:
        _REGISTRY[layer_type] = _Entry(rule, tuple(params), name or layer_type.__name__, forward, check)
        return rule

    return decorator


def find_rule(module: nn.Module) -> _Entry | None:
    """The registered entry for ``module``'s class (the nearest registered base class), if any."""
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    for matches, entry in _BY_NAME:
        if matches(module):
            return entry
    return None


def _first_tensor(args: tuple, what: str) -> torch.Tensor:
    if not args or not isinstance(args[0], torch.Tensor):
        raise TypeError(f"{what}: expected a tensor as the first positional input")
    return args[0]


@register_layer(nn.Linear, params=("weight", "bias"), name="linear")
def _linear(module: nn.Linear, args: tuple, output: torch.Tensor) -> Capture:
    x = _first_tensor(args, "nn.Linear")
    return Capture(output, lambda g: {"weight": Outer(g, x), "bias": Direct(g)})


def _conv1d(module: nn.Module, args: tuple, output: torch.Tensor) -> Capture:
    x = _first_tensor(args, "Conv1D")
    return Capture(output, lambda g: {"weight": Outer(x, g), "bias": Direct(g)})


@register_layer(nn.Embedding, params=("weight",), name="embedding",
                check=lambda m: "max_norm renormalizes rows in place" if m.max_norm is not None else None)
def _embedding(module: nn.Embedding, args: tuple, output: torch.Tensor) -> Capture:
    ids = Ids(_first_tensor(args, "nn.Embedding"), module.num_embeddings, module.padding_idx)
    return Capture(output, lambda g: {"weight": Outer(ids, g)})


def _normalized(x: torch.Tensor, dims: int, eps: float, *, center: bool) -> torch.Tensor:
    """x normalized over its last ``dims`` dimensions, computed in float32."""
    xf = x.float()
    reduce = tuple(range(-dims, 0))
    if center:
        xf = xf - xf.mean(dim=reduce, keepdim=True)
    return xf * torch.rsqrt(xf.square().mean(dim=reduce, keepdim=True) + eps)


def _norm_capture(output: torch.Tensor, x_hat: Callable[[], torch.Tensor]) -> Capture:
    return Capture(output, lambda g: {"weight": Diag(x_hat(), g), "bias": Direct(g)})


@register_layer(nn.LayerNorm, params=("weight", "bias"), name="layernorm")
def _layer_norm(module: nn.LayerNorm, args: tuple, output: torch.Tensor) -> Capture:
    x = _first_tensor(args, "nn.LayerNorm")
    return _norm_capture(output, lambda: _normalized(x, len(module.normalized_shape), module.eps, center=True))


def _rms_eps(module: nn.Module, x: torch.Tensor) -> float:
    eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
    return torch.finfo(x.dtype).eps if eps is None else float(eps)


def _rms_norm(module: nn.Module, args: tuple, output: torch.Tensor) -> Capture:
    x = _first_tensor(args, type(module).__name__)
    dims = len(getattr(module, "normalized_shape", None) or (module.weight.shape))
    return _norm_capture(output, lambda: _normalized(x, dims, _rms_eps(module, x), center=False))


def _looks_like_rms_norm(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    has_eps = hasattr(module, "eps") or hasattr(module, "variance_epsilon")
    return name.endswith("rmsnorm") and has_eps and isinstance(getattr(module, "weight", None), nn.Parameter)


_BY_NAME.append((_looks_like_rms_norm, _Entry(_rms_norm, ("weight", "bias"), "rmsnorm")))
if hasattr(nn, "RMSNorm"):
    register_layer(nn.RMSNorm, params=("weight",), name="rmsnorm")(_rms_norm)


def _patch_conv_reason(module: nn.Conv2d) -> str | None:
    if tuple(module.stride) != tuple(module.kernel_size):
        return f"stride {tuple(module.stride)} differs from kernel_size {tuple(module.kernel_size)}"
    if module.padding not in ((0, 0), "valid") or module.groups != 1 or tuple(module.dilation) != (1, 1):
        return "padding, groups or dilation other than the defaults"
    return None


@register_layer(nn.Conv2d, params=("weight", "bias"), name="conv2d-patch", check=_patch_conv_reason)
def _patch_conv(module: nn.Conv2d, args: tuple, output: torch.Tensor) -> Capture:
    x = _first_tensor(args, "nn.Conv2d")

    def factors(g: torch.Tensor) -> dict[str, Factor]:
        # Non-overlapping patches: output position l reads exactly patch l of the input.
        patches = F.unfold(x, module.kernel_size, stride=module.stride).transpose(1, 2)  # (B, L, C*kh*kw)
        g_flat = g.flatten(2).transpose(1, 2)  # (B, L, out)
        return {"weight": Outer(g_flat, patches, batch_dim=0), "bias": Direct(g_flat, batch_dim=0)}

    return Capture(output, factors)


def _mha_reason(module: nn.MultiheadAttention) -> str | None:
    if not module._qkv_same_embed_dim:
        return "separate q/k/v projection weights (kdim/vdim differ from embed_dim)"
    if module.bias_k is not None or module.add_zero_attn:
        return "bias_k/bias_v or add_zero_attn"
    return None


def _mha_forward(module: nn.MultiheadAttention, capture: Callable[[Capture], None], *args: Any, **kwargs: Any):
    """nn.MultiheadAttention's forward with its input projection as explicit linear maps."""
    from ._mha import multi_head_attention  # imported here: _mha builds on this module's factors

    return multi_head_attention(module, capture, *args, **kwargs)


register_layer(nn.MultiheadAttention, params=("in_proj_weight", "in_proj_bias"), name="mha-in-proj",
               forward=_mha_forward, check=_mha_reason)(lambda module, args, output: [])


def _register_optional() -> None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return
    register_layer(Conv1D, params=("weight", "bias"), name="conv1d")(_conv1d)


_register_optional()
