"""GradNormProbe: exact per-example parameter-gradient norms of a whole model, streamed layer by layer.

    probe = attent.GradNormProbe(model)              # every trainable parameter
    losses = per_example_loss(model(batch))           # (B,), the forward runs under the probe
    sq = probe.score(losses)                          # (B,) ||d losses[i] / d theta||^2; .grad untouched
    sq = probe.backward(losses, reduction="mean")     # the training backward, norms as a by-product

How it works. While attached, every covered layer's forward hook runs its registry rule
(``attent.layers``), which keeps what the layer's per-example gradients need (its input, or the
token ids) and hooks the gradient of the layer's output. When that gradient arrives during the
backward pass, the layer's squared norms are computed at once with the ``attent_kernels`` ops (ghost
or direct path, Triton on a GPU) and the saved input is dropped: nothing of size B x (parameter
size) is formed, and memory is released as the backward walks down the model.

``score`` runs a backward pass that asks autograd for the gradients of the lowest probed layers'
outputs only (found by walking the graph), so no weight-gradient matmul runs and ``.grad`` is not
touched, and the pass stops below the lowest probed layer (a probe of the last blocks costs a
backward through those blocks). ``backward`` runs the ordinary ``backward()`` of the reduced loss;
the hooks see the reduced loss's output gradients (1/B of each example's for "mean") and the norms
are rescaled to each example's own loss.

The fused route (``weight_grad=``). In ``backward``, a probed ``nn.Linear`` can have its weight
gradient and its per-example norms formed in one pass over its input and output gradient
(``attent_kernels.linear_weight_grad_and_norm_sq``) instead of autograd's weight-gradient matmul
beside a separate norm computation: while attached, its forward runs through an autograd function
(``attent._probed_linear``) whose backward returns that weight gradient, which autograd accumulates
into ``.grad`` as it would its own (equal to it up to float rounding: the sum runs in float32 in a
different order). "auto" (the default) takes that route where the kernels run on Triton (CUDA
tensors), and the kernels' cost model then picks per call the fused kernel or the weight-gradient
GEMM followed by the norm kernels; on a CPU it keeps the separate route. "fused" forces it,
"separate" never takes it. A weight used more than once in the forward pass (a module called twice,
a tied head) gets its cross terms from the separate computation and its gradient from the plain
matmul. ``score`` forms no weight gradient on either route.

Examples must be independent in the forward pass (no BatchNorm in training mode, no cross-example
mixing), and ``losses[i]`` must be the loss of batch row i: the per-example gradient of example i is
then the gradient of losses[i] alone. Shared parameters (GPT-2's tied input/output embeddings, a
module called twice) get their cross terms.

Where the examples are. Every captured tensor's batch dimension is declared, never guessed from a
size that happens to equal B = len(losses): a rule may fix it (convolutions, attention), a container
declares it for the layers inside it (``nn.TransformerEncoderLayer``'s ``batch_first``; OPT's decoder
layer, which flattens its rows to (B·T, d)), and elsewhere it is the probe's ``batch_dim`` (0 unless
told). A tensor without B examples there is refused with an error that names the layer.

Layers the batch shares. The graph says where a layer's output holds one value for every example: it
reaches the loss broadcast over the batch dim (an elementwise op or an expand makes a dim of size B
from size 1 or from no dim), as relative-position buckets (T, T) looked up once per forward are. Such
a layer keeps no examples at its declared dim even where a size equals B (T == B), so it is never
read as batched: where every use of its output is a view (reshape, permute, transpose, clone, cast)
or a sum of shared tensors leading into adds, subtractions or expands over the batch, prehooks on
those sums keep their unreduced gradients, each example's slice is carried back through the views,
and the layer's factors are read once per example from its own slice (exact: the example's gradient
of the shared output is its slice of the broadcast's gradient); anything else (a squashing function
between, a matmul, a layer below a shared one) is refused by name.

Parameters owned by a module without a rule: loose ones, with at least 3 dims and size 1 in the
batch dimension (``cls_token``, ``pos_embed``, register tokens: activations broadcast over the batch)
are expanded to the batch while the owner runs, so their per-example gradient is read off directly,
once the graph shows that the expansion reaches the loss only through ops that keep the examples
apart (elementwise arithmetic, concatenation or slicing along another dim); gains, 0-D or 1-D
parameters of modules outside torch.nn (a ReZero scalar, CaiT's ``gamma_1``), are covered where the
owner's forward multiplies them elementwise (``p * x``, see ``attent.layers.GainProducts``). Any
other parameter is refused at attach time, and any use of a probed parameter that no layer call
records (a tied weight in a functional ``F.linear``, a gain used other than as a product) is refused
when the graph is scored, naming the parameter. A subclass that overrides a covered type's forward
is probed through the type's functional call on its weight, or refused.

Works under autocast, ``model.eval()``/``train()`` (with dropout on, the norms are those of that
forward pass) and gradient checkpointing (``score`` needs ``use_reentrant=False``; ``backward``
takes both). Under autocast a layer's matmul multiplies its float32 input cast to the autocast
dtype, so that rounded input is what its weight gradient is made of: the kernels get it, with the
16-bit output gradient, in 16 bits (they accumulate in float32), never float32 copies. The hooks
read no tensor value on the host (no device synchronization per layer).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import GradientEdge

from attent_kernels import accum_dtype

from . import _factor_norms
from ._probed_linear import PROBED_LINEAR_NODE, WEIGHT_GRAD_ROUTES, WeightGradRoute, fuses, probed_linear
from .factors import Capture, Diag, Direct, Factor, Ids, Layout, Outer
from .layers import GainProducts, WeightCalls, find_layout, find_rule, register_loaded_integrations

__all__ = ["GradNormProbe"]

_MARK = "attent.probe"
_ATTACHED: "weakref.WeakKeyDictionary[nn.Module, weakref.ReferenceType[GradNormProbe]]" = weakref.WeakKeyDictionary()


@dataclass(eq=False)
class _Record:
    """One layer call of one forward pass: what its hooked output's gradient is turned into."""

    layer: str
    params: dict[str, int]  # module-relative parameter name -> probed parameter key
    layout: Layout
    capture: Capture | None
    probe: "weakref.ReferenceType[GradNormProbe]"
    loose: bool = False
    fused: bool = False  # the capture is the output of a probed linear (``attent._probed_linear``)
    autocast: torch.dtype | None = None  # the autocast dtype the layer call ran under, None outside autocast

    def on_grad(self, grad: torch.Tensor | None) -> None:
        probe = self.probe()
        if probe is None or self.capture is None or probe._call is None:
            return  # a backward pass the probe does not run: the record lives as long as the graph
        if self.fused and probe._call.trains:
            return  # the layer's own backward consumes the gradient, with its weight gradient
        self.consume(probe._call, grad)

    def consume(self, call: "_Call", grad: torch.Tensor | None, weight_grads: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        """Hand the factors of ``grad`` to ``call`` (see ``_Call.consume``) and drop the saved inputs."""
        capture, self.capture = self.capture, None  # the saved inputs go as soon as the gradient has been used
        with torch.no_grad():
            try:
                rows = None if grad is None else call.plan.take(self)
                if grad is None:  # the graph reaches the output but passes it no gradient (its parameters get none)
                    factors = {}
                elif rows is None:
                    factors = capture.factors(grad)
                else:  # a layer the batch shares: its factors read once per example, then stacked
                    examples = [capture.factors(row) for row in rows]
                    factors = {local: _factor_norms.stacked([example[local] for example in examples])
                               for local in examples[0]}
            except (ValueError, TypeError, RuntimeError) as error:
                raise type(error)(f"GradNormProbe: layer {self.layer!r} ({', '.join(self.params)}): {error}") from error
            return call.consume(self, factors, weight_grads, None if capture.input is None else id(capture.input))


def _linear_parameter_grads(node: Any, grad_output: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
    """``attent._probed_linear.ParameterGrads`` for the probe: in a ``score`` call no parameter
    gradient is wanted; in a ``backward`` call the layer's record is consumed here, its weight
    gradient formed in the pass that computes its norms; outside the probe's calls (or once the
    record was consumed) the function computes the ordinary gradients."""
    for ref, _ in node.metadata.get(_MARK, ()):
        record = ref()
        probe = None if record is None else record.probe()
        call = None if probe is None else probe._call
        if call is None:
            continue
        if not call.trains:
            return False, None
        if record.capture is None:
            return True, None
        return True, record.consume(call, grad_output, weight_grads=("weight",)).get("weight")
    return True, None


@dataclass(eq=False)
class _Recorder:
    """What a layer's replacement forward gets as ``capture``: ``capture(Capture)`` records a capture;
    ``batch`` is the number of examples of the running forward pass (from the model's inputs),
    ``layout`` where the layer's tensors keep them, ``forward`` the module's own forward (as it was
    before the probe replaced it: another library's wrapper included)."""

    probe: "GradNormProbe"
    layer: str
    params: dict[str, int]
    layout: Layout
    loose: bool = False  # captures of a loose parameter expanded to the batch
    forward: Callable[..., Any] | None = None

    def __call__(self, capture: Capture) -> None:
        self.probe._record(self, capture)

    def run_rule(self, rule: Any, module: nn.Module, args: tuple, output: Any) -> None:
        """Record the captures ``rule(module, args, output)`` returns; its errors name the layer."""
        if self.probe._removed or not self.probe._recording(output):
            return
        try:
            captures = rule(module, args, output)
        except (ValueError, TypeError) as error:
            raise type(error)(f"GradNormProbe: layer {self.layer!r}: {error}") from error
        for capture in [captures] if isinstance(captures, Capture) else captures:
            self(capture)

    @property
    def batch(self) -> int:
        return self.probe._forward_batch(self.layer)


@dataclass
class _Call:
    """The state of one ``score``/``backward`` call."""

    probe: "GradNormProbe"
    batch: int
    shared: set[int]
    trains: bool  # a training backward (``.grad`` accumulates), not a ``score`` pass
    plan: "_SharedPlan"  # the per-example gradients of the layers the batch shares
    # id(Capture.input) -> how many of this pass's records read it, where more than one does
    input_readers: dict[int, int] = field(default_factory=dict)
    per_layer: dict[str, torch.Tensor] = field(default_factory=dict)
    stashed: dict[int, list[Factor]] = field(default_factory=dict)
    single: set[int] = field(default_factory=set)
    # the (layer, Outer, with its bias) weight factors waiting for the next reader of one input (id(Capture.input))
    held_input: int | None = None
    held: list[tuple[str, Outer, bool]] = field(default_factory=list)
    # the last float32 input rounded to an autocast dtype, (input, rounded), for its next readers (q, k, v)
    rounded: tuple[torch.Tensor, torch.Tensor] | None = None

    def add(self, layer: str, sq: torch.Tensor) -> None:
        sq = sq.to(accum_dtype(sq))
        self.per_layer[layer] = self.per_layer[layer] + sq if layer in self.per_layer else sq

    def _round(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``tensor`` rounded to ``dtype``, once for the readers of one input that arrive together."""
        if self.rounded is None or self.rounded[0] is not tensor or self.rounded[1].dtype != dtype:
            self.rounded = (tensor, tensor.to(dtype))
        return self.rounded[1]

    def _folded_biases(self, record: _Record, factors: dict[str, Factor], weight_grads: tuple[str, ...]) -> dict[str, str]:
        """{weight name: bias name} where the bias's Direct factor is the output gradient of the
        weight's factor (the very tensor: a linear map's g in its float Outer, a norm layer's g in
        its Diag): the bias norm ||sum_t g_t||^2 is then computed in the weight's norm kernel (one
        call, g read once) instead of by a reduction and a norm of its own. Not for shared
        parameters (their cross terms need the factors apart) nor for weights whose gradient the
        probe forms (``weight_grads``)."""
        params = self.probe._params
        own = {local: f for local, f in factors.items() if local in record.params and record.params[local] not in self.shared}
        folds: dict[str, str] = {}
        for weight, factor in own.items():
            if isinstance(factor, Outer) and not isinstance(factor.a, Ids) and weight not in weight_grads:
                sides = (factor.a, factor.b)
            elif isinstance(factor, Diag):
                sides = (factor.g,)
            else:
                continue
            for bias, direct in own.items():
                if not (isinstance(direct, Direct) and bias not in folds.values() and direct.batch_dim == factor.batch_dim
                        and any(direct.v is side for side in sides)):
                    continue
                bias_param = params[record.params[bias]]
                if (bias_param.numel() == direct.v.shape[-1] if isinstance(factor, Outer)
                        else bias_param.shape == params[record.params[weight]].shape):
                    folds[weight] = bias
                    break
        return folds

    def consume(self, record: _Record, factors: dict[str, Factor], weight_grads: tuple[str, ...] = (),
                input_key: int | None = None) -> dict[str, torch.Tensor]:
        """Add the squared norms of a record's factors to ``per_layer`` (a shared parameter's factors
        are stashed for ``finish``). For the parameters named in ``weight_grads`` (linear weights:
        float Outer factors), the summed gradient (p, d) is formed in the pass that computes the
        norms and returned, {name: float32 gradient}; a shared one is left out (its norms need the
        cross terms, its gradient is the caller's). A record whose capture's input other records
        of the pass read too (``input_key``, see ``Capture.input``) has its float Outer factors
        held while the records that arrive next read the same input (q, k and v, whose gradients
        come together); the held factors go through one grouped norm (``_group_norms``) when a
        record of anything else arrives (or the pass ends), so readers far apart in the backward
        (cross-attention layers reading one encoder output) hold nothing for long. A bias whose
        gradient sums the weight's output gradient is added in the weight's norm call
        (``_folded_biases``)."""
        probe = self.probe
        grads: dict[str, torch.Tensor] = {}
        if self.held_input is not None and self.held_input != input_key:
            self._group_norms()
        folds = self._folded_biases(record, factors, weight_grads)
        for local, key in record.params.items():
            if local not in factors:
                continue
            factor = factors[local]
            bias = local in folds
            if bias and isinstance(factor, Outer) and factors[folds[local]].v is factor.b:  # HF Conv1D: Outer(x, g), symmetric
                factor = Outer(factor.b, factor.a, factor.batch_dim)
            try:
                factor = _factor_norms.rounded_by_autocast(factor, record.autocast, self._round)
                factor = _factor_norms.canonical(factor, record.layout, probe._params[key].shape, self.batch)
            except ValueError as error:
                raise ValueError(f"GradNormProbe: layer {record.layer!r}, parameter {local!r}: {error}; if this layer "
                                 f"keeps its examples at another dimension, pass GradNormProbe(..., batch_dim="
                                 f"{{{record.layer!r}: dim}})") from None
            if key in self.shared:
                self.stashed.setdefault(key, []).append(factor)
                continue
            if key in self.single:
                raise RuntimeError(
                    f"GradNormProbe: parameter {probe._names[key]!r} was used twice in one backward pass by "
                    f"layers recorded during that pass (reentrant checkpointing); use use_reentrant=False")
            self.single.add(key)
            if local in folds.values():
                continue  # its norm comes with its weight's
            if (input_key in self.input_readers and local not in weight_grads and isinstance(factor, Outer)
                    and not isinstance(factor.a, Ids)):
                self.held_input = input_key
                self.held.append((record.layer, factor, bias))
                continue
            try:
                if local in weight_grads:
                    grads[local], sq = _factor_norms.weight_grad_and_norm_sq(factor, probe._weight_grad)
                else:
                    sq = _factor_norms.norm_sq(factor, bias=bias)
                self.add(record.layer, sq)
            except (ValueError, TypeError, RuntimeError) as error:
                raise type(error)(f"GradNormProbe: layer {record.layer!r}, parameter {local!r}: {error}") from error
        return grads

    def _group_norms(self) -> None:
        """The norms of the held Outer factors: those whose b is the same tensor (same memory,
        shape and strides) in one ``grouped_linear_grad_norm_sq`` call, x's Gram formed once, one
        row per layer; any other alone."""
        held, self.held, self.held_input = self.held, [], None
        same_b: dict[tuple, list[tuple[str, Outer, bool]]] = {}
        for layer, factor, bias in held:
            b = factor.b
            same_b.setdefault((b.data_ptr(), b.shape, b.stride(), b.dtype, b.device), []).append((layer, factor, bias))
        for entries in same_b.values():
            layers = [layer for layer, _, _ in entries]
            try:
                rows = _factor_norms.grouped_norm_sq([factor for _, factor, _ in entries], [bias for _, _, bias in entries])
            except (ValueError, TypeError, RuntimeError) as error:
                raise type(error)(f"GradNormProbe: layers {', '.join(map(repr, layers))} (reading one input): "
                                  f"{error}") from error
            for layer, row in zip(layers, rows):
                self.add(layer, row)

    def finish(self) -> None:
        probe = self.probe
        self._group_norms()  # the readers that came last in the pass
        self.rounded = None
        for key, factors in self.stashed.items():
            shape = probe._params[key].shape
            try:
                total = sum(_factor_norms.norm_sq(f) for f in factors)
                for i in range(len(factors)):
                    for j in range(i + 1, len(factors)):
                        total = total + 2 * _factor_norms.inner(factors[i], factors[j], shape)
            except (ValueError, TypeError, RuntimeError) as error:
                raise type(error)(f"GradNormProbe: layer {probe._owner[key]!r}, parameter {probe._names[key]!r} "
                                  f"(used {len(factors)} times): {error}") from error
            self.add(probe._owner[key], total)


_ELEMENTWISE = frozenset({"AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1", "MulBackward0", "DivBackward0"})
_PASS_THROUGH = frozenset({"ExpandBackward0", "ToCopyBackward0", "AliasBackward0", "CloneBackward0"})


class _BroadcastCheck:
    """Follows each expanded loose parameter through the graph (visited children first): it may pass
    through expand, casts and slices along a non-batch dim, and must end in elementwise arithmetic or
    a concatenation along a non-batch dim; any other consumer (indexing the batch dim, a reshape, a
    matmul) could mix its examples, and is listed in ``violations``."""

    def __init__(self, probe: "GradNormProbe") -> None:
        self.probe = probe
        self.sources: dict[Any, tuple[str, int, int]] = {}  # node -> (parameter, rank, batch dim)
        self.violations: list[str] = []

    def visit(self, node: Any, children: list, entries: list) -> None:
        for record, _ in entries:
            if record.loose:
                key = next(iter(record.params.values()))
                self.sources[node] = (self.probe._names[key], self.probe._params[key].dim(), record.layout.dim)
        for child in children:
            source = self.sources.get(child)
            if source is None:
                continue
            kind = type(node).__name__
            if kind in _PASS_THROUGH or (kind == "SliceBackward0" and self._other_dim(node, source)):
                self.sources[node] = source
            elif not (kind in _ELEMENTWISE or (kind == "CatBackward0" and self._other_dim(node, source))):
                self.violations.append(f"{source[0]} reaches {kind}")

    @staticmethod
    def _other_dim(node: Any, source: tuple[str, int, int]) -> bool:
        dim = node._saved_dim
        dim = dim - 2**64 if dim >= 2**63 else dim  # autograd keeps the dim as an unsigned int
        return dim % source[1] != source[2]


_BROADCASTING = _ELEMENTWISE | {"ExpandBackward0", "WhereBackward0", "MaximumBackward0", "MinimumBackward0"}


def _graph_metadata_available() -> bool:
    """Whether this torch's autograd nodes say the shapes of their forward op's outputs
    (``_input_metadata``), which the shared-input check reads."""
    node = (torch.zeros(1, requires_grad=True) * 2).grad_fn
    try:
        return tuple(node._input_metadata[0].shape) == (1,)
    except (AttributeError, IndexError, RuntimeError):
        return False


GRAPH_METADATA = _graph_metadata_available()


def _output_shape(node: Any, nr: int) -> tuple[int, ...] | None:
    """The shape of output ``nr`` of a graph node's forward op (None where the node does not say)."""
    try:
        return tuple(node._input_metadata[nr].shape)
    except (AttributeError, IndexError, RuntimeError):
        return None


_VIEWS = frozenset({"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "UnsqueezeBackward0",
                    "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2", "PermuteBackward0", "TransposeBackward0",
                    "TBackward0", "CloneBackward0", "AliasBackward0", "ToCopyBackward0"})
_SHARED_SUMS = frozenset({"AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1", "ExpandBackward0"})
_CARRIED_SUMS = frozenset({"AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1"})  # sums of shared tensors


def _output_dtype(node: Any, nr: int) -> torch.dtype:
    return node._input_metadata[nr].dtype


def _dim(value: int, rank: int) -> int:
    """A dim autograd saved (as an unsigned int where negative), in [0, rank)."""
    return (value - 2**64 if value >= 2**63 else value) % rank


def _through_view(node: Any, grad: torch.Tensor, index: int, child: tuple[Any, int]) -> torch.Tensor:
    """Per-example gradients (B, *out) of a view or sum node's output -> (B, *in) of its input
    ``index``, ``child`` (a sum's input summed over the dims it was broadcast along)."""
    kind, shape = type(node).__name__, _output_shape(*child)
    if kind in _CARRIED_SUMS:
        target = [1] * (grad.dim() - 1 - len(shape)) + list(shape)
        rows = grad.sum_to_size(grad.shape[0], *target).reshape(grad.shape[0], *shape)
        sign = _sign(node, index)
        return rows if sign == 1.0 else rows * sign
    if kind == "PermuteBackward0":
        dims = [_dim(d, len(shape)) for d in node._saved_dims]
        inverse = sorted(range(len(dims)), key=dims.__getitem__)
        return grad.permute(0, *(i + 1 for i in inverse))
    if kind == "TransposeBackward0":
        return grad.transpose(_dim(node._saved_dim0, len(shape)) + 1, _dim(node._saved_dim1, len(shape)) + 1)
    if kind == "TBackward0":
        return grad.transpose(1, 2) if grad.dim() == 3 else grad
    if kind == "ToCopyBackward0":
        return grad.to(_output_dtype(*child))
    return grad.reshape(grad.shape[0], *shape)  # views that keep the element order, clone, alias


def _sign(node: Any, index: int) -> float:
    """d output / d input ``index`` of an add, subtract or expand node (alpha for ``a + alpha * b``)."""
    if index == 1 and type(node).__name__ in ("AddBackward0", "SubBackward0"):
        alpha = getattr(node, "_saved_alpha", 1)
        return -alpha if type(node).__name__ == "SubBackward0" else alpha
    return 1.0


def _per_example(node: Any, index: int, grad: torch.Tensor, dim: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) per-example gradients of input ``index`` of a broadcasting sum ``node`` (the batch
    at ``dim`` of its output, the input of size 1 or absent there), from the gradient of its output."""
    target = [1] * (grad.dim() - len(shape)) + list(shape)
    rows = grad.movedim(dim, 0).sum_to_size(grad.shape[dim], *target[:dim], *target[dim + 1:])
    rows = rows.reshape(grad.shape[dim], *shape)
    sign = _sign(node, index)
    return rows if sign == 1.0 else rows * sign


@dataclass(eq=False)
class _SharedPlan:
    """How a pass gets the per-example gradients of the layers the batch shares: a prehook on each
    broadcasting sum (an add, subtract or expand over the batch dim) keeps its shared input's
    per-example gradients, unreduced; a prehook on each view between it and the layer carries them
    down (summed over the view's consumers); the layer's record then reads them (``take``)."""

    sums: list[tuple[Any, int, tuple[Any, int], int]] = field(default_factory=list)  # (node, input, child, dim)
    views: set[Any] = field(default_factory=set)
    records: dict[int, tuple[Any, int]] = field(default_factory=dict)  # id(record) -> its output (node, nr)
    reached: set[tuple[Any, int]] = field(default_factory=set)  # the outputs the views carry gradients to
    grads: dict[tuple[Any, int], torch.Tensor] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)

    def _add(self, key: tuple[Any, int], grad: torch.Tensor) -> None:
        self.grads[key] = self.grads[key] + grad if key in self.grads else grad

    def attach(self) -> None:
        by_node: dict[Any, list[tuple[int, tuple[Any, int], int]]] = {}
        for node, index, child, dim in self.sums:
            by_node.setdefault(node, []).append((index, child, dim))
        for node, inputs in by_node.items():
            def keep(grad_outputs: tuple, node: Any = node, inputs: list = inputs) -> None:
                with torch.no_grad():
                    for index, child, dim in inputs:
                        self._add(child, _per_example(node, index, grad_outputs[0], dim, _output_shape(*child)))
            self.handles.append(node.register_prehook(keep))
        for view in self.views:
            def carry(grad_outputs: tuple, view: Any = view) -> None:
                grad = self.grads.pop((view, 0), None)
                if grad is None:
                    return
                with torch.no_grad():
                    for index, (child, nr) in enumerate(view.next_functions):
                        if child is not None and (child, nr) in self.reached:
                            self._add((child, nr), _through_view(view, grad, index, (child, nr)))
            self.handles.append(view.register_prehook(carry))

    def take(self, record: "_Record") -> torch.Tensor | None:
        """The (B, *output) per-example gradients of a shared record's output (None for any other)."""
        key = self.records.get(id(record))
        if key is None:
            return None
        if key not in self.grads:
            raise RuntimeError("the backward pass reached this layer the batch shares before the broadcasts above it "
                               "(its per-example gradients were not kept)")
        return self.grads.pop(key)

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.grads.clear()


class _SharedCheck:
    """Finds the tensors the batch shares, from the graph (never from sizes): where an elementwise op
    or an expand broadcasts an input over a dim of size B (the input has size 1 there, or no such
    dim), whatever produced that input holds one value for every example, so a probed layer below it
    whose declared batch dim is that dim keeps no examples there, even where a size equals B (relative
    position buckets (T, T) with T == B). Such a layer gets a shared rule (``plan``) where its output
    reaches every one of its uses through views (reshape, permute, transpose, clone, casts) into
    adds, subtractions or expands over the batch: its per-example gradient is then its example's
    slice of the unreduced gradient of those sums, exactly. Any other is refused by name."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.edges: list[tuple[Any, int, tuple[Any, int], tuple[int, ...], tuple[int, ...], set[int]]] = []
        self.consumers: dict[tuple[Any, int], list[tuple[Any, int]]] = {}
        self.summed: set[tuple[Any, int, tuple[Any, int]]] = set()  # (node, input, child) of the summed broadcasts

    def visit(self, node: Any, below: dict[Any, bool]) -> None:
        """Note who consumes each output below ``node``, and the inputs of ``node`` it broadcasts over
        a dim of size B that have probed layers below."""
        for index, (child, nr) in enumerate(node.next_functions):
            if child is not None and below.get(child):
                self.consumers.setdefault((child, nr), []).append((node, index))
        if self.batch < 2 or type(node).__name__ not in _BROADCASTING:
            return
        out = _output_shape(node, 0)
        for index, (child, nr) in enumerate(node.next_functions):
            shape = None if out is None or child is None or not below.get(child) else _output_shape(child, nr)
            if shape is None or len(shape) > len(out):
                continue
            offset = len(out) - len(shape)
            dims = {k for k, size in enumerate(out) if size == self.batch and (k < offset or shape[k - offset] == 1)}
            if dims:
                self.edges.append((node, index, (child, nr), shape, out, dims))

    def plan(self, waiting: dict[Any, list[tuple["_Record", int]]], below: dict[Any, bool]) -> _SharedPlan:
        """The shared rule's hooks for every shared layer; raises naming the first that cannot have one
        (each graph node explored once per broadcast dim)."""
        plan, seen = _SharedPlan(), {}
        plan.sums = [(node, index, child, dim) for node, index, child, _, _, dims in self.edges for dim in dims
                     if type(node).__name__ in _SHARED_SUMS]
        self.summed = {(node, index, child) for node, index, child, _ in plan.sums}
        for node, _, child, shape, out, dims in self.edges:
            for dim in dims:
                explored = seen.setdefault(dim, set())
                summed = type(node).__name__ in _SHARED_SUMS
                stack = [(child, summed)]  # (output, reached through views from a summed broadcast)
                while stack:
                    (current, nr), viewed = stack.pop()
                    if (current, nr) in explored:
                        continue
                    explored.add((current, nr))
                    entries = [record for record, n in waiting.get(current, ()) if n == nr
                               and not record.layout.flattened and record.layout.dim == dim]
                    if entries:  # what lies below a shared layer is shared too, and is not a view of it
                        self._shared_rule(plan, entries, (current, nr), viewed, dim, node, shape, out)
                    kind = type(current).__name__
                    view = (not entries and viewed and (kind in _VIEWS or kind in _CARRIED_SUMS)
                            and self._uses_are_shared((current, nr), plan))
                    if view:
                        plan.views.add(current)
                        plan.reached.update((c, n) for c, n in current.next_functions if c is not None and below.get(c))
                    stack.extend(((c, n), view) for c, n in current.next_functions if c is not None and below.get(c))
        return plan

    def _uses_are_shared(self, output: tuple[Any, int], plan: _SharedPlan) -> bool:
        """Whether every use of ``output`` is a summed broadcast of it or a view already carrying."""
        return all((user, index, output) in self.summed or user in plan.views
                   for user, index in self.consumers.get(output, ()))

    def _shared_rule(self, plan: _SharedPlan, records: list["_Record"], output: tuple[Any, int], viewed: bool,
                     dim: int, node: Any, shape: tuple[int, ...], out: tuple[int, ...]) -> None:
        for record in records:
            if viewed and self._uses_are_shared(output, plan):
                plan.records[id(record)] = output
                continue
            raise ValueError(
                f"GradNormProbe: layer {record.layer!r} computes a tensor the batch shares: it reaches the loss "
                f"broadcast over the batch ({type(node).__name__} takes shape {shape} to {out}, dim {dim} of size "
                f"{self.batch} made by the broadcast), so its tensors hold no examples at dim {dim}, whatever their "
                f"sizes, and not every use of its output is a view added (or expanded) over the batch, where its "
                f"per-example gradients could be read. Register a rule that expands its output to the batch before "
                f"the broadcast (as the T5 relative-bias rule does), or leave its parameters out with params=")


def _overrides(module: nn.Module, entry: Any) -> bool:
    """Whether ``module`` is a subclass instance whose class replaces the registered type's forward."""
    return entry.layer_type is not None and type(module).forward is not entry.layer_type.forward


def _same(value: Any, own: Any) -> bool:
    if isinstance(value, torch.Tensor) or isinstance(own, torch.Tensor) or value is None or own is None:
        return value is own
    if isinstance(own, (tuple, list)):
        return tuple(value) == tuple(own) if isinstance(value, (tuple, list)) else all(v == value for v in own)
    return value == own


def _through_functional(module: nn.Module, capture: _Recorder, *args: Any, **kwargs: Any) -> Any:
    """The forward of a subclass that overrides a registered layer type's forward: it runs as written,
    and its call of the type's functional on the module's weight is probed with the type's rule (the
    call's input and output), provided the call's other arguments are the module's own."""
    entry = find_rule(module)

    def handle(func: Any, arguments: dict) -> torch.Tensor:
        output = func(**arguments)
        other = [name for name, value in arguments.items()
                 if name not in ("input", "weight", "momentum", "training") and hasattr(module, name)
                 and not _same(value, getattr(module, name))]
        if other:
            raise ValueError(f"GradNormProbe: layer {capture.layer!r} ({type(module).__name__}) calls {func.__name__} "
                             f"with {', '.join(other)} other than its own; register a rule for it")
        capture.run_rule(entry.rule, module, (arguments["input"],), output)
        return output

    with WeightCalls(entry.functional, module.weight, handle):
        return capture.forward(*args, **kwargs)


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


class GradNormProbe:
    """Exact per-example squared gradient norms ||d l_i / d theta||^2 over a set of parameters.

    Args:
        model: the module; the probe hooks its layers until ``remove()`` (or the end of a ``with``
            block).
        params: the parameters to cover: None (every parameter with ``requires_grad``), or an
            iterable of parameters or of their names in ``model.named_parameters()``.
        allow_uncovered: leave out parameters no rule covers (listed in ``coverage``) instead of
            raising an error that names them.
        batch_dim: where the probed layers keep their examples, for layers no container declares
            (``nn.TransformerEncoderLayer`` does, from its ``batch_first``): None (dim 0), an int
            (every layer, and the model's inputs), or {module-name prefix: dim} (the longest prefix
            of a layer's name decides, "" for the model; e.g. ``{"emb": 1}`` for an embedding that
            reads (T, B) ids in front of a sequence-first encoder). Never guessed from sizes: a
            layer whose tensors do not hold len(losses) examples there is refused, naming it.
        weight_grad: how ``backward`` forms the weight gradients of probed ``nn.Linear`` layers
            (the module docstring, "The fused route"): "auto" (fused where the kernels run on
            Triton and their cost model says it wins; on a CPU, "separate"), "fused" (the weight
            gradient and the norms from one pass of ``linear_weight_grad_and_norm_sq``, on every
            device) or "separate" (autograd's matmul, the norms beside it).

    Attributes:
        per_layer: {layer name: (B,) float32} from the last call (shared parameters appear under
            their first owner's name; loose parameters under their own name).
        coverage: {parameter name: how it is covered ("linear", "embedding", ..., "direct", "gain") or
            "uncovered: <reason>"}.
        layer_of: {covered parameter name: the ``per_layer`` entry its squared norm is added to}.
        batch_dim: the {module-name prefix: dim} map given (an int n is {"": n}; None is {}).
    """

    def __init__(
        self,
        model: nn.Module,
        params: Iterable[nn.Parameter | str] | None = None,
        *,
        allow_uncovered: bool = False,
        batch_dim: int | Mapping[str, int] | None = None,
        weight_grad: WeightGradRoute = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not GRAPH_METADATA:
            raise RuntimeError(f"GradNormProbe needs autograd nodes that say their outputs' shapes (_input_metadata), "
                               f"which torch {torch.__version__} lacks: without them it cannot tell a layer the batch "
                               f"shares from a batched one; install a newer torch")
        if weight_grad not in WEIGHT_GRAD_ROUTES:
            raise ValueError(f"weight_grad must be one of {WEIGHT_GRAD_ROUTES}, got {weight_grad!r}")
        self._weight_grad = weight_grad
        dims = {} if batch_dim is None else {"": batch_dim} if isinstance(batch_dim, int) else batch_dim
        if not isinstance(dims, Mapping) or not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in dims.items()):
            raise ValueError(f"batch_dim must be None, a non-negative int or {{module-name prefix: int}}, got {batch_dim!r}")
        self.model, self.batch_dim = model, dict(dims)
        root = find_layout(model)
        self._input_dim = self.batch_dim.get("", root.dim if root is not None else 0)
        self.per_layer: dict[str, torch.Tensor] = {}
        self.coverage: dict[str, str] = {}
        self.layer_of: dict[str, str] = {}
        self._params, self._names = self._resolve(model, params)
        self._owner: dict[int, str] = {}
        self._handles: list[Any] = []
        self._forwards: list[tuple[nn.Module, Any]] = []
        self._swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
        self._batch: int | None = None
        self._input_sizes: set[int] = set()
        self._call: _Call | None = None
        self._removed = False
        self._all_trainable = params is None
        register_loaded_integrations()
        taken = next((name for name, m in model.named_modules() if _ATTACHED.get(m, lambda: None)() is not None), None)
        if taken is not None:
            raise RuntimeError(f"GradNormProbe: a probe is already attached to {taken or 'the model'!r}; remove() it "
                               f"first (two probes on one module would see each other's hooks)")
        for module in model.modules():
            _ATTACHED[module] = weakref.ref(self)
        try:
            self._attach(allow_uncovered)
        except BaseException:
            self.remove()
            raise
        self._signature = self._current_signature()

    @staticmethod
    def _resolve(model: nn.Module, params: Iterable[nn.Parameter | str] | None) -> tuple[dict[int, nn.Parameter], dict[int, str]]:
        named = dict(model.named_parameters())
        by_id = {id(p): name for name, p in named.items()}
        if params is None:
            chosen = [p for p in named.values() if p.requires_grad]
        else:
            if isinstance(params, (str, torch.Tensor)):
                raise TypeError("params must be an iterable of parameters or parameter names, not a single one")
            chosen = []
            for item in params:
                if isinstance(item, str):
                    if item not in named:
                        raise ValueError(f"params: {item!r} is not a parameter of the model")
                    item = named[item]
                if not isinstance(item, torch.Tensor) or id(item) not in by_id:
                    raise ValueError("params: every entry must be a parameter of the model (or its name)")
                if not item.requires_grad:
                    raise ValueError(f"params: {by_id[id(item)]!r} does not require grad")
                chosen.append(item)
        if not chosen:
            raise ValueError("GradNormProbe: no parameter to probe (nothing requires grad, or params is empty)")
        return {id(p): p for p in chosen}, {id(p): by_id[id(p)] for p in chosen}

    def _attach(self, allow_uncovered: bool) -> None:
        covered: dict[int, list[str]] = {}
        reasons: dict[int, str] = {}
        claimed: set[tuple[int, str]] = set()  # (submodule, name) covered by an ancestor's rule
        rule_modules: list[tuple[str, nn.Module, Any, dict[str, int]]] = []
        for name, module in self.model.named_modules():
            own = {local: id(p) for local, p in module.named_parameters(recurse=False)
                   if id(p) in self._params and (id(module), local) not in claimed}
            entry = find_rule(module)
            reason = None if entry is None else (entry.check(module) if entry.check else None)
            if reason is None and entry is not None and entry.functional is None and _overrides(module, entry):
                reason = (f"overrides {entry.layer_type.__name__}.forward, which its rule relies on; register a rule "
                          f"for {type(module).__name__}")
            if entry is None or reason is not None:
                for local, key in own.items():
                    if reason is not None:
                        reasons.setdefault(key, f"{type(module).__name__}.{local}: {reason}")
                continue
            mine = {local: key for local, key in own.items() if local in entry.params}
            for local in entry.params:
                owner_path, _, leaf = local.rpartition(".")
                sub = module.get_submodule(owner_path) if owner_path and _has_submodule(module, owner_path) else None
                p = None if sub is None else sub._parameters.get(leaf)
                if p is not None and id(p) in self._params:
                    mine[local] = id(p)
                    claimed.add((id(sub), leaf))
            for local, key in own.items():
                if local not in entry.params:
                    reasons.setdefault(key, f"{type(module).__name__}.{local}: not covered by its rule")
            for key in mine.values():
                covered.setdefault(key, []).append(entry.name)
                self._owner.setdefault(key, name)
            if mine:
                rule_modules.append((name, module, entry, mine))

        loose: dict[nn.Module, tuple[str, dict[str, int]]] = {}
        gains: dict[nn.Module, tuple[str, dict[str, int]]] = {}
        for name, module in self.model.named_modules():
            layout = self._layout_of(name)
            for local, p in module.named_parameters(recurse=False):
                key = id(p)
                if key not in self._params or key in covered or key in reasons:
                    continue  # not probed, covered, or its module's rule refused it
                if p.dim() >= 3 and not layout.flattened and p.dim() > layout.dim and p.shape[layout.dim] == 1:
                    loose.setdefault(module, (name, {}))[1][local] = key
                    covered[key] = ["direct"]
                    self._owner[key] = self._names[key]
                elif p.dim() <= 1 and not type(module).__module__.startswith("torch.nn"):
                    gains.setdefault(module, (name, {}))[1][local] = key
                    covered[key] = ["gain"]
                    self._owner[key] = name
                else:
                    reasons.setdefault(key, f"{type(module).__name__}.{local}: no rule registered "
                                            f"(attent.register_layer), and a parameter of shape {tuple(p.shape)} is "
                                            f"neither provably broadcast over the batch (3 or more dims, size 1 at the "
                                            f"batch dimension) nor a 0-D/1-D gain of a module outside torch.nn")

        uncovered = [key for key in self._params if key not in covered]
        if uncovered and not allow_uncovered:
            listed = "; ".join(f"{self._names[k]} ({reasons[k]})" for k in uncovered)
            raise ValueError(f"GradNormProbe: no rule covers these trainable parameters: {listed}. Register a rule "
                             f"with attent.register_layer, leave them out with params=, or pass allow_uncovered=True")
        for key in self._params:
            how = covered.get(key)
            self.coverage[self._names[key]] = "+".join(how) if how else f"uncovered: {reasons[key]}"
        for key in uncovered:
            del self._params[key]
        self.layer_of = {self._names[key]: self._owner[key] for key in self._params}

        self._shared = {key for key, how in covered.items() if len(how) > 1 and key in self._params}
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_input, with_kwargs=True))
        self._handles.append(self.model.register_forward_hook(self._after_model, always_call=True))
        for name, module in self.model.named_modules():
            declared = find_layout(module)
            if declared is not None:
                self._handles.append(module.register_forward_pre_hook(
                    lambda mod, args, kwargs, name=name, declared=declared: self._check_fed(name, declared, args, kwargs),
                    with_kwargs=True))
        for name, module, entry, mine in rule_modules:
            self._hook_layer(_Recorder(self, name, mine, self._layout_of(name)), module, entry)
        for module, (name, params) in loose.items():
            self._hook_loose(module, _Recorder(self, name, params, self._layout_of(name)))
        for module, (name, params) in gains.items():
            self._hook_gains(module, _Recorder(self, name, params, self._layout_of(name)))

    def _layout_of(self, name: str) -> Layout:
        """Where the layer ``name`` keeps its examples: the deeper of the longest ``batch_dim`` prefix
        of its name and its nearest container with a declared layout (the prefix on a tie)."""
        parts = name.split(".") if name else []
        depth, layout = -1, Layout(0)
        for prefix, dim in self.batch_dim.items():
            p = prefix.split(".") if prefix else []
            if parts[:len(p)] == p and len(p) > depth:
                depth, layout = len(p), Layout(dim)
        for level in range(len(parts) - 1, -1, -1):
            declared = find_layout(self.model.get_submodule(".".join(parts[:level])))
            if declared is not None:
                return declared if level > depth else layout
        return layout

    def _on_model_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        dim = self._input_dim
        tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.dim() > dim]
        self._input_sizes = {t.shape[dim] for t in tensors}
        batched = self._input_sizes - {1}
        self._batch = batched.pop() if len(batched) == 1 else (1 if self._input_sizes == {1} else None)

    def _check_fed(self, container: str, declared: Layout, args: tuple, kwargs: dict) -> None:
        """A container with a declared layout fed a probed layer's output as it is: the two must agree
        on where the examples are (an embedding reading (T, B) ids in front of a sequence-first encoder
        without batch_dim={"emb": 1} would otherwise read T as B when T == B)."""
        for tensor in (*args, *kwargs.values()):
            node = tensor.grad_fn if isinstance(tensor, torch.Tensor) else None
            for ref, _ in getattr(node, "metadata", {}).get(_MARK, ()):
                record = ref()
                if (record is not None and record.probe() is self and not record.layout.flattened
                        and record.layout.dim != declared.dim):
                    raise ValueError(f"GradNormProbe: layer {record.layer!r} keeps its examples at dim "
                                     f"{record.layout.dim} and feeds {container or 'the model'!r}, whose examples are at "
                                     f"dim {declared.dim}; pass GradNormProbe(..., batch_dim={{{record.layer!r}: "
                                     f"{declared.dim}}})")

    def _after_model(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._batch, self._input_sizes = None, set()  # a later call of a submodule alone does not reuse it

    def _forward_batch(self, layer: str) -> int:
        """The number of examples of the running forward pass, for a layer that expands a tensor the
        batch shares (a loose parameter, shared ids); raises ValueError naming the layer if unknown."""
        if self._batch is None:
            why = (f"the model's tensor inputs do not tell it (sizes at dim {self._input_dim}: "
                   f"{sorted(self._input_sizes)}); pass GradNormProbe(..., batch_dim={{'': dim}}) with the dimension "
                   f"of the inputs' examples") if self._input_sizes else "it runs outside a call of the probed model"
            raise ValueError(f"GradNormProbe: layer {layer!r} needs the batch size of this forward pass, and {why}")
        return self._batch

    def _recording(self, output: Any) -> bool:
        return torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad

    def _record(self, recorder: _Recorder, capture: Capture) -> None:
        if self._removed or not self._recording(capture.tensor):
            return
        tensor = capture.tensor
        device = tensor.device.type
        record = _Record(recorder.layer, recorder.params, recorder.layout, capture, weakref.ref(self), recorder.loose,
                         fused=isinstance(tensor.grad_fn, PROBED_LINEAR_NODE),
                         autocast=torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None)
        tensor.register_hook(lambda grad: record.on_grad(grad))
        tensor.grad_fn.metadata.setdefault(_MARK, []).append((weakref.ref(record), tensor.output_nr))

    def _replace_forward(self, module: nn.Module, forward: Callable[..., Any]) -> None:
        """Run ``forward`` as ``module``'s forward while the probe is attached (``remove`` restores it)."""
        self._forwards.append((module, module.__dict__.get("forward")))
        module.forward = forward

    def _hook_layer(self, recorder: _Recorder, module: nn.Module, entry: Any) -> None:
        replacement = entry.forward or (_through_functional if _overrides(module, entry) else None)
        if replacement is not None:
            recorder.forward = module.forward
            self._replace_forward(module, lambda *args, **kwargs: replacement(module, recorder, *args, **kwargs))
            return
        if self._weight_grad != "separate" and self._routes_weight_grad(module, entry, recorder):
            self._replace_forward(module, lambda input: self._linear_forward(module, input))
        self._handles.append(module.register_forward_hook(lambda mod, args, output: recorder.run_rule(entry.rule, mod, args, output)))

    @staticmethod
    def _routes_weight_grad(module: nn.Module, entry: Any, recorder: _Recorder) -> bool:
        """Whether the probe may compute ``module``'s weight gradient itself (``weight_grad``): an
        ``nn.Linear`` running ``nn.Linear.forward`` (no override, no other library's instance
        wrapper) whose weight is probed."""
        return (entry.layer_type is nn.Linear and type(module).forward is nn.Linear.forward
                and "forward" not in module.__dict__ and "weight" in recorder.params)

    def _linear_forward(self, module: nn.Linear, input: torch.Tensor) -> torch.Tensor:
        """``nn.Linear.forward``, through ``attent._probed_linear`` where the call takes the fused route."""
        weight, bias = module.weight, module.bias
        if self._removed or not torch.is_grad_enabled() or not fuses(self._weight_grad, input, weight):
            return F.linear(input, weight, bias)
        return probed_linear(input, weight, bias, _linear_parameter_grads)

    def _hook_loose(self, module: nn.Module, recorder: _Recorder) -> None:
        dim = recorder.layout.dim

        def expand(mod: nn.Module, args: tuple) -> None:
            if self._removed or not torch.is_grad_enabled():
                return
            batch = recorder.batch
            for local, key in recorder.params.items():
                parameter = self._params[key]
                shape = list(parameter.shape)
                shape[dim] = batch
                expanded = parameter.expand(shape)
                self._swapped.append((mod, local, parameter))
                mod._parameters[local] = expanded
                one = _Recorder(self, self._names[key], {local: key}, recorder.layout, loose=True)
                one(Capture(expanded, lambda g, local=local: {local: Direct(g)}))

        def restore(mod: nn.Module, args: tuple, output: Any) -> None:
            self._restore_swapped(mod)

        self._handles.append(module.register_forward_pre_hook(expand))
        self._handles.append(module.register_forward_hook(restore, always_call=True))

    def _hook_gains(self, module: nn.Module, recorder: _Recorder) -> None:
        """Run the owner's forward under a mode that captures its products ``p * x`` with its gains."""
        original = module.forward
        gains = {key: local for local, key in recorder.params.items()}

        def forward(*args: Any, **kwargs: Any) -> Any:
            with GainProducts(gains, recorder):
                return original(*args, **kwargs)

        self._replace_forward(module, forward)

    def _restore_swapped(self, module: nn.Module | None = None) -> None:
        """Put the loose parameters expanded for a forward pass back (those of ``module``, or all)."""
        keep = []
        for mod, local, parameter in self._swapped:
            if module is None or mod is module:
                mod._parameters[local] = parameter
            else:
                keep.append((mod, local, parameter))
        self._swapped = keep

    def _current_signature(self) -> tuple:
        params = tuple(sorted((name, id(p), p.requires_grad) for name, p in self.model.named_parameters()
                              if id(p) in self._params or (self._all_trainable and p.requires_grad)))
        return params

    def _check_usable(self, losses: Any) -> int:
        if self._removed:
            raise RuntimeError("GradNormProbe: the probe was removed; attach a new one")
        if self._current_signature() != self._signature:
            raise RuntimeError("GradNormProbe: the model's trainable parameters changed after the probe was attached "
                               "(added, replaced, or requires_grad switched); attach a new probe")
        if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
            shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
            raise ValueError(f"losses must be a 1-D tensor of per-example losses (B,), got {shape}")
        if not losses.is_floating_point():
            raise ValueError(f"losses must be floating point, got {losses.dtype}")
        if not losses.requires_grad or losses.grad_fn is None:
            raise ValueError("losses does not require grad: run the forward pass with gradients enabled, with the model attached to this probe")
        return losses.shape[0]

    def _pending(self, losses: torch.Tensor, batch: int) -> tuple[list[GradientEdge], list[_Record], bool,
                                                                 dict[int, int], _SharedPlan]:
        """Walk the graph below ``losses`` once (post-order): the records waiting for a gradient, and the
        gradient edges ``score`` asks for, the hooked outputs with no other hooked output below them.
        Also says whether records of this probe that were already consumed hang in the graph, how
        many graph edges reach each probed parameter, and the plan for the layers the batch shares."""
        waiting: dict[Any, list[tuple[_Record, int]]] = {}
        below: dict[Any, bool] = {}  # node -> a waiting record at or below it
        param_edges: dict[int, int] = {}
        broadcast = _BroadcastCheck(self)
        shared = _SharedCheck(batch)
        consumed = False
        stack = [(losses.grad_fn, False)]
        while stack:
            node, children_done = stack.pop()
            children = [child for child, _ in node.next_functions if child is not None]
            if not children_done:
                if node not in below:
                    stack.append((node, True))
                    stack.extend((child, False) for child in children if child not in below)
                continue
            if node in below:
                continue
            for child in children:
                key = id(getattr(child, "variable", None))
                if key in self._params:
                    param_edges[key] = param_edges.get(key, 0) + 1
            entries = []
            for ref, nr in getattr(node, "metadata", {}).get(_MARK, ()):
                record = ref()
                if record is None or record.probe() is not self:
                    continue
                if record.capture is None:
                    consumed = True
                else:
                    entries.append((record, nr))
            broadcast.visit(node, children, entries)
            if entries:
                waiting[node] = entries
            below[node] = bool(entries) or any(below[child] for child in children)
            shared.visit(node, below)
        if broadcast.violations:
            raise RuntimeError(f"GradNormProbe: loose parameters, expanded to the batch while their owner runs, must "
                               f"reach the loss through ops that keep the examples apart (elementwise arithmetic, "
                               f"concatenation or slicing along another dim, expand, casts); instead "
                               f"{'; '.join(sorted(set(broadcast.violations)))}. Register a rule for the owner, or "
                               f"leave the parameter out with params=")
        plan = shared.plan(waiting, below)
        edges, records = [], []
        for node, entries in waiting.items():
            records.extend(record for record, _ in entries)
            if not any(below[child] for child, _ in node.next_functions if child is not None):
                edges.extend(GradientEdge(node, nr) for nr in sorted({nr for _, nr in entries}))
        return edges, records, consumed, param_edges, plan

    def _run(self, losses: torch.Tensor, batch: int, scale: float, trains: bool, pass_fn) -> torch.Tensor:
        edges, records, consumed, param_edges, plan = self._pending(losses, batch)
        if not records and consumed:
            raise RuntimeError("GradNormProbe: this graph was already scored (a forward pass can be scored or "
                               "backpropagated once); run the forward pass again")
        uses: dict[int, int] = {}
        for record in records:
            for key in record.params.values():
                uses[key] = uses.get(key, 0) + 1
        outside = [f"{self._names[key]} ({n} uses, {uses.get(key, 0)} in its layers' calls)"
                   for key, n in param_edges.items() if n > uses.get(key, 0)]
        if outside:
            raise RuntimeError(f"GradNormProbe: parameters used outside the layer calls that record them (a functional "
                               f"call such as F.linear(h, emb.weight), a gain used other than as p * x, or a module "
                               f"whose forward was bypassed) would get no per-example gradient there: "
                               f"{'; '.join(outside)}. Register a rule for the module that uses them, or leave them "
                               f"out with params=")
        shared = self._shared | {key for key, n in uses.items() if n > 1}
        readers: dict[int, int] = {}
        for record in records:
            if record.capture.input is not None:
                readers[id(record.capture.input)] = readers.get(id(record.capture.input), 0) + 1
        self._call = _Call(self, batch, shared, trains, plan, {key: n for key, n in readers.items() if n > 1})
        plan.attach()
        try:
            pass_fn(edges, records)
            call = self._call
            if not call.single and not call.stashed:
                raise RuntimeError("GradNormProbe: losses does not depend on any probed layer (was the forward run "
                                   "through this probe's model, with gradients enabled?)")
            with torch.no_grad():
                call.finish()
        finally:
            plan.detach()
            self._call = None
            self._restore_swapped()
            for record in records:
                record.capture = None
        names = list(call.per_layer)
        rows = torch.stack([call.per_layer[name] for name in names])  # one division and one sum for all the layers
        rows = rows if scale == 1.0 else rows / scale**2
        self.per_layer = dict(zip(names, rows.unbind(0)))
        return rows.sum(dim=0)

    def _empty(self, losses: torch.Tensor) -> torch.Tensor:
        """The result for a batch of 0 examples: (0,), no backward pass."""
        self.per_layer = {}
        return torch.zeros(0, device=losses.device)

    def score(self, losses: torch.Tensor) -> torch.Tensor:
        """(B,) float32 ||d losses[i] / d theta||^2 over the probed parameters.

        Runs a backward pass of ``losses.sum()`` that computes activation gradients only, from the
        loss down to the lowest probed layer: no weight-gradient matmul, ``.grad`` untouched. The
        graph is consumed (a forward pass can be scored once).

        Args:
            losses: (B,) per-example losses of a forward pass run through the probed model;
                losses[i] is the loss of batch row i (B = 0 gives a (0,) result).

        Returns:
            (B,) float32 (float64 for a float64 model), detached.
        """
        batch = self._check_usable(losses)
        if batch == 0:
            return self._empty(losses)

        def activation_backward(edges: list[GradientEdge], records: list[_Record]) -> None:
            if not edges:
                raise RuntimeError("GradNormProbe: losses does not depend on any probed layer recorded in the forward "
                                   "pass (with reentrant checkpointing the forward records nothing: use "
                                   "use_reentrant=False for score, or backward)")
            try:
                torch.autograd.grad(losses, edges, grad_outputs=torch.ones_like(losses), allow_unused=True)
            except RuntimeError as error:
                if "compatible with .grad()" in str(error):
                    raise RuntimeError("GradNormProbe.score needs non-reentrant checkpointing (use_reentrant=False); "
                                       "backward works with both") from error
                raise

        return self._run(losses, batch, 1.0, False, activation_backward)

    def backward(self, losses: torch.Tensor, reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
        """The ordinary training backward of ``losses.mean()`` (or ``.sum()``): ``.grad`` of every
        parameter accumulates what ``reduced.backward()`` gives (exactly on the separate route, up
        to float rounding where ``weight_grad`` takes the fused route); returns (B,) float32
        ||d losses[i] / d theta||^2 over the probed parameters (each example's own loss, whatever
        the reduction).

        Args:
            losses: (B,) per-example losses of a forward pass run through the probed model;
                losses[i] is the loss of batch row i (B = 0: a (0,) result, no backward, .grad unchanged).
            reduction: "mean" or "sum".
        """
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        batch = self._check_usable(losses)
        if batch == 0:
            return self._empty(losses)
        scale = 1.0 / batch if reduction == "mean" else 1.0
        reduced = losses.mean() if reduction == "mean" else losses.sum()
        return self._run(losses, batch, scale, True, lambda edges, records: reduced.backward())

    def remove(self) -> None:
        """Detach every hook and restore the model; idempotent."""
        self._removed = True
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, previous in self._forwards:
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        self._forwards.clear()
        self._restore_swapped()
        for module in self.model.modules():
            if _ATTACHED.get(module, lambda: None)() is self:
                del _ATTACHED[module]

    def __enter__(self) -> "GradNormProbe":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __del__(self) -> None:
        if not getattr(self, "_removed", True):
            self.remove()
