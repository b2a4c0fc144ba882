"""The probe's layer registry: which rule covers which layer type.

A rule (``rule(module, args, output) -> Capture | [Capture]``, see :mod:`attent.factors`) runs in
the layer's forward hook and says how the layer's parameters get their per-example gradients from
the gradient of one of its outputs. Each layer family registers its own rules in its own module of
this package; a user adds a layer type the same way, without touching the probe::

    @attent.register_layer(MyScale, params=("gamma",))
    def _my_scale(module, args, output):
        x = args[0]
        return attent.Capture(output, lambda g: {"gamma": attent.Diag(x, g)})
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..factors import LayerRule

__all__ = ["register_layer", "register_layer_matcher", "find_rule", "first_tensor"]


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


def register_layer_matcher(
    matches: Callable[[nn.Module], bool], *, params: Sequence[str], name: str
) -> Callable[[LayerRule], LayerRule]:
    """Register a rule for every module ``matches(module)`` accepts, for layer types that have no
    common base class (RMSNorm variants across libraries); tried after the class registry."""

    def decorator(rule: LayerRule) -> LayerRule:
        _BY_NAME.append((matches, _Entry(rule, tuple(params), name)))
        return rule

    return decorator


def first_tensor(args: tuple, what: str) -> torch.Tensor:
    """The first positional input of a layer call, which must be a tensor."""
    if not args or not isinstance(args[0], torch.Tensor):
        raise TypeError(f"{what}: expected a tensor as the first positional input")
    return args[0]
