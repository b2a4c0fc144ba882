"""The probe's layer registry: which rule covers which layer type.

A rule (``rule(module, args, output) -> Capture | [Capture]``, see :mod:`attent.factors`) runs in
the layer's forward hook and says how the layer's parameters get their per-example gradients from
the gradient of one of its outputs. Each layer family registers its own rules in its own module of
this package; a user adds a layer type the same way, without touching the probe::

    @attent.register_layer(MyScale, params=("gamma",))
    def _my_scale(module, args, output):
        x = args[0]
        return attent.Capture(output, lambda g: {"gamma": attent.Diag(x, g)})

A rule may also cover parameters of the module's submodules (dotted names, e.g. T5's
``relative_attention_bias.weight``): those submodules' own rules are then not used. A container
(``nn.TransformerEncoderLayer``, OPT's decoder layer) declares with :func:`register_layout` where
the layers inside it keep their examples. Rules for classes of libraries ``attent`` does not import
(transformers, timm) are registered with :func:`register_when_loaded`, run by
:func:`register_loaded_integrations` when a probe attaches and only for libraries already imported.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..factors import LayerRule, Layout

__all__ = ["register_layer", "register_layer_matcher", "find_rule", "first_tensor", "register_layout",
           "find_layout", "register_forward", "register_when_loaded", "register_loaded_integrations"]


@dataclass(frozen=True)
class _Entry:
    rule: LayerRule
    params: tuple[str, ...]
    name: str
    forward: Callable[..., Any] | None = None
    check: Callable[[nn.Module], str | None] | None = None
    layer_type: type | None = None
    functional: Callable[..., Any] | None = None


_REGISTRY: dict[type, _Entry] = {}
_BY_NAME: list[tuple[Callable[[nn.Module], bool], _Entry]] = []
_LAYOUTS: dict[type, Callable[[nn.Module], Layout]] = {}
_WHEN_LOADED: list[tuple[str, Callable[[ModuleType], None]]] = []


def register_layer(
    layer_type: type[nn.Module],
    *,
    params: Sequence[str],
    name: str | None = None,
    forward: Callable[..., Any] | None = None,
    check: Callable[[nn.Module], str | None] | None = None,
    functional: Callable[..., Any] | None = None,
) -> Callable[[LayerRule], LayerRule]:
    """Register the probe's rule for a layer type (and its subclasses); use as a decorator.

    The decorated function is the rule: ``rule(module, args, output) -> Capture | list[Capture]``,
    called in the module's forward hook with its positional inputs and its output; each
    :class:`attent.Capture` pairs a tensor the call produced with ``factors(grad) -> {parameter
    name: Outer | Diag | Direct}`` (see :mod:`attent.factors`)::

        @attent.register_layer(MyScale, params=("gamma",))
        def _my_scale(module, args, output):
            x = args[0]
            return attent.Capture(output, lambda g: {"gamma": attent.Diag(x, g)})

    Args:
        layer_type: the module class.
        params: names of the parameters the rule covers, relative to the module (its own, or
            dotted names of its submodules' parameters).
        name: how ``GradNormProbe.coverage`` describes it (default: the class name).
        forward: optional replacement ``forward(module, capture, *args, **kwargs)`` the probe
            installs while attached, for layers whose parameters are used inside a functional
            call (``capture(Capture)`` hands the probe a capture); the rule is then not called.
        check: optional ``check(module) -> None | reason``: a reason makes the module's
            parameters uncovered (a configuration the rule does not support).
        functional: the torch functional the type's forward calls with its ``weight`` (``F.linear``
            for ``nn.Linear``). A subclass that overrides ``forward`` (adds an activation, permutes)
            is then probed through that call: the rule gets the call's input and output, and the
            call's other arguments must be the module's own (its bias, eps, stride...). Without it
            such a subclass is refused.
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise TypeError(f"layer_type must be an nn.Module subclass, got {layer_type!r}")
    if isinstance(params, str) or not params:
        raise ValueError(f"params must be a non-empty sequence of parameter names, got {params!r}")

    def decorator(rule: LayerRule) -> LayerRule:
        _REGISTRY[layer_type] = _Entry(rule, tuple(params), name or layer_type.__name__, forward, check, layer_type,
                                       functional)
        return rule

    return decorator


def register_forward(
    layer_type: type[nn.Module],
    *,
    params: Sequence[str],
    name: str,
    forward: Callable[..., Any],
    check: Callable[[nn.Module], str | None] | None = None,
    functional: Callable[..., Any] | None = None,
) -> None:
    """Register a layer type whose parameters are covered by a replacement forward alone
    (``forward(module, capture, *args, **kwargs)``, see :func:`register_layer`); ``capture`` also
    carries ``layer`` (the module's name), ``layout`` (where its examples are), ``batch`` (the
    number of examples of the running forward pass) and ``forward`` (the module's own forward, to
    call from the replacement). ``functional``: set when the replacement reads the module's own
    functional calls (and so stays exact for subclasses that override ``forward``)."""
    register_layer(layer_type, params=params, name=name, forward=forward, check=check, functional=functional)(_no_rule)


def _no_rule(module: nn.Module, args: tuple, output: Any) -> list:
    return []


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
    matches: Callable[[nn.Module], bool], *, params: Sequence[str], name: str,
    check: Callable[[nn.Module], str | None] | None = None,
) -> Callable[[LayerRule], LayerRule]:
    """Register a rule for every module ``matches(module)`` accepts, for layer types that have no
    common base class (RMSNorm variants across libraries); tried after the class registry."""

    def decorator(rule: LayerRule) -> LayerRule:
        _BY_NAME.append((matches, _Entry(rule, tuple(params), name, None, check)))
        return rule

    return decorator


def register_layout(container_type: type[nn.Module], layout: Callable[[nn.Module], Layout]) -> None:
    """Declare where the layers inside a ``container_type`` module keep their examples:
    ``layout(container) -> Layout`` (e.g. from its ``batch_first`` flag). The nearest such
    container of a layer decides, unless the probe's ``batch_dim`` names a deeper prefix."""
    _LAYOUTS[container_type] = layout


def find_layout(module: nn.Module) -> Layout | None:
    """The layout ``module`` declares for the layers inside it, if its class registered one."""
    for cls in type(module).__mro__:
        if cls in _LAYOUTS:
            return _LAYOUTS[cls](module)
    return None


def register_when_loaded(library_module: str, register: Callable[[ModuleType], None]) -> None:
    """Run ``register(sys.modules[library_module])`` once that module is imported (checked when a
    probe attaches), so that ``import attent`` never imports transformers or timm itself."""
    _WHEN_LOADED.append((library_module, register))


def register_loaded_integrations() -> None:
    """Register the rules of every :func:`register_when_loaded` library module imported so far."""
    for entry in list(_WHEN_LOADED):
        library_module, register = entry
        if library_module in sys.modules:
            _WHEN_LOADED.remove(entry)
            register(sys.modules[library_module])


def first_tensor(args: tuple, what: str) -> torch.Tensor:
    """The first positional input of a layer call, which must be a tensor."""
    if not args or not isinstance(args[0], torch.Tensor):
        raise TypeError(f"{what}: expected a tensor as the first positional input")
    return args[0]
