"""The probe's layer registry: one small rule per layer type, each family in its own module.

Built-in rules (all exact, tested against per-example gradients):
- ``_linear``: ``nn.Linear`` (any leading dims, and subclasses); Hugging Face ``Conv1D``; the
  flattened (B·T, d) rows inside OPT's decoder layer (a declared layout).
- ``_embedding``: ``nn.Embedding`` and subclasses that override ``forward`` (the ids are read where
  ``F.embedding`` uses them: OPT's and BART's learned positions), ids shared by the batch (GPT-2's
  (1, T) positions), ``padding_idx``, ``max_norm``; ``nn.EmbeddingBag`` (sum/mean, offsets,
  per_sample_weights, padding_idx). Refused: ``scale_grad_by_freq``, 1-D ids, EmbeddingBag mode="max".
- ``_norm``: ``nn.LayerNorm`` (any ``normalized_shape``), ``nn.GroupNorm``, ``nn.InstanceNorm*d``,
  ``nn.BatchNorm*d`` in eval mode (refused in training mode), RMSNorm variants (``nn.RMSNorm``,
  Llama's, T5LayerNorm, timm's).
- ``_conv``: ``nn.Conv1d`` / ``2d`` / ``3d``, any stride, padding (and padding mode), dilation, groups;
  ``nn.ConvTranspose1d`` / ``2d`` / ``3d`` with one group (refused with more).
- ``_scale``: ``nn.PReLU``; timm's ``LayerScale`` / ``LayerScale2d`` (refused with inplace=True).
- ``_attention``: ``nn.MultiheadAttention`` through a re-implemented forward that exposes every
  projection (packed or kdim/vdim, bias_k/bias_v, add_zero_attn, out_proj); the batch layout inside
  torch's Transformer modules, from their ``batch_first``.
- ``_recurrent``: ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` (a step-by-step forward exposing the
  projections; refused: proj_size, packed sequences).
- ``_position_bias``: relative attention biases looked up once per forward, shared by the batch (and
  the layers): T5's, MT5's, UMT5's and MPNet's.
- ``_fused_qkv``: timm's ``EvaAttention`` (qkv weight with the concatenated q/v bias parameters).
  ``_calls.WeightCalls`` is the function mode these rules read their functional calls through.
Loose parameters (``cls_token``, ``pos_embed``: 3+ dims, size 1 at the batch dim) are handled by the
probe itself, and so are gains (``_gain``: 0-D/1-D parameters of modules without a rule, where the
forward multiplies them, ``p * x``), and subclasses that override a registered type's forward (timm's
LayerNorm2d, norm + activation layers): probed through the type's ``functional`` call on their
weight, whose other arguments must be the module's own. Rules for transformers/timm classes register only once those libraries are imported.

A rule is ``rule(module, args, output) -> Capture | [Capture]`` (see :mod:`attent.factors`),
registered with :func:`register_layer`; ``check(module) -> reason | None`` refuses configurations
the rule does not support, and ``forward=`` (or :func:`register_forward`) replaces the module's
forward while the probe is attached (for parameters used inside one functional call).
"""
from ..factors import Capture, Diag, Direct, Factor, Ids, LayerRule, Layout, Outer
from . import _attention, _conv, _embedding, _fused_qkv, _linear, _norm, _position_bias, _recurrent, _scale  # noqa: F401  (each registers its rules)
from ._calls import WeightCalls
from ._gain import GainProducts
from ._registry import (
    find_layout,
    find_rule,
    register_forward,
    register_layer,
    register_layer_matcher,
    register_layout,
    register_loaded_integrations,
    register_when_loaded,
)

__all__ = ["register_layer", "register_layer_matcher", "register_forward", "register_layout", "register_when_loaded", "find_rule",
           "find_layout", "register_loaded_integrations", "Capture", "Outer", "Ids", "Diag", "Direct", "Factor",
           "LayerRule", "Layout", "GainProducts", "WeightCalls"]
