"""The probe's layer registry: one small rule per layer type, each family in its own module.

Built-in rules: ``nn.Linear`` (any leading dims, and subclasses) and Hugging Face ``Conv1D``
(``_linear``), ``nn.Embedding`` (``_embedding``), ``nn.LayerNorm`` and RMSNorm variants
(``_norm``), ``nn.Conv2d`` whose stride equals its kernel (``_conv``), and
``nn.MultiheadAttention``'s packed ``in_proj_weight`` through a re-implemented forward that exposes
the projections (``_attention``; ``out_proj`` is then an ordinary ``nn.Linear`` call). Loose
parameters (``cls_token``, ``pos_embed``) are handled by the probe itself.

A rule is ``rule(module, args, output) -> Capture | [Capture]`` (see :mod:`attent.factors`),
registered with :func:`register_layer`; ``check(module) -> reason | None`` refuses configurations
the rule does not support, and ``forward=`` replaces the module's forward while the probe is
attached (for parameters used inside one functional call).
"""
from ..factors import Capture, Diag, Direct, Factor, Ids, LayerRule, Layout, Outer
from . import _attention, _conv, _embedding, _linear, _norm, _position_bias, _scale  # noqa: F401  (each registers its rules)
from ._registry import (find_layout, find_rule, register_forward, register_layer, register_layer_matcher,
                        register_layout, register_loaded_integrations, register_when_loaded)

__all__ = ["register_layer", "register_layer_matcher", "register_forward", "register_layout", "register_when_loaded", "find_rule",
           "find_layout", "register_loaded_integrations", "Capture", "Outer", "Ids", "Diag", "Direct", "Factor",
           "LayerRule", "Layout"]
