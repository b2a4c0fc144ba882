"""The kernel benchmark's cases: for every attent_kernels op, its shapes, the methods compared
(``METHODS``), how inputs are made, the call that is timed, and the op's useful work (``WORK``,
one table of flops and bytes).

Every method returns a dict of named results (``norm_sq``, ``gram``, ``grad_weight``, ``loss``,
``fgrad_sq``) so that each can be checked against the reference before it is timed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import attent_kernels as ak
from attent_kernels import _cost
from attent_kernels.linear._reference import prefers_ghost

Tensor = torch.Tensor
Sizes = dict[str, int]
Inputs = dict[str, Tensor]
Results = dict[str, Tensor]
Call = Callable[[], Results]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PATHS = ("ghost", "direct", "auto")
IGNORE_INDEX = -100

METHODS = {
    "reference": 'the op with backend="reference" (plain PyTorch, float32 accumulation); ".ghost/.direct/.auto" name the linear path',
    "triton": 'the op with backend="triton" (CUDA only)',
    "func": "per-example gradients materialized with torch.func.vmap(grad(...)) over functional_call of the "
    "equivalent module, then normed; includes the module forward and backward this method needs",
    "opacus": "opacus.GradSampleModule on the equivalent module (nn.Linear, nn.Embedding, nn.LayerNorm): "
    "forward, backward, then the norms of p.grad_sample",
    "gemm": "the weight-gradient GEMM g^T x of the batch in the inputs' dtype (cuBLAS on CUDA): the yardstick "
    "of the linear ops (the x gemm column)",
    "singles": 'one linear_grad_norm_sq call per projection, backend="auto" (the reference on a CPU, Triton on '
    "CUDA): the layers' norms without the shared Gram of x (grouped op only)",
    "pytorch": "the plain PyTorch computation the fused op replaces: logits then F.cross_entropy, loss only "
    "(cross-entropy ops)",
}


@dataclass(frozen=True)
class Case:
    """One benchmark case: an op, a method (and linear path), sizes, dtype and device."""

    op: str
    method: str
    sizes: tuple[tuple[str, int], ...]
    dtype: str = "float32"
    device: str = "cpu"
    path: str = ""

    @property
    def size(self) -> Sizes:
        return dict(self.sizes)

    @property
    def shape_label(self) -> str:
        return "x".join(f"{name}{n}" for name, n in self.sizes)

    @property
    def method_label(self) -> str:
        return f"{self.method}.{self.path}" if self.path else self.method

    @property
    def id(self) -> str:
        return f"{self.op}-{self.method_label}-{self.shape_label}-{self.dtype}"

    def with_sizes(self, sizes: Sizes) -> Case:
        return dataclasses.replace(self, sizes=tuple(sizes.items()))


# ---------------------------------------------------------------------------------------------
# Useful work per op: (flops, bytes) from the sizes, the linear path and the input element size.
# The same figures serve every method of an op, so achieved rates are effective rates: the
# work the op must do divided by the time a method takes to deliver its result.
# ---------------------------------------------------------------------------------------------


def _linear_flops(B: int, T: int, d: int, p: int, path: str) -> float:
    """The ghost kernels form the lower triangle of the Grams (t >= s): T (T + 1) / 2 entries of
    d + p multiply-adds per example; the direct path 2 T d p."""
    ghost, direct = 1.0 * B * T * (T + 1) * (d + p), 2.0 * B * T * d * p
    return {"ghost": ghost, "direct": direct}.get(path, min(ghost, direct))


@dataclass(frozen=True)
class Work:
    """An op's useful work: the formula in words, and (flops, bytes) from (sizes, path, e), where
    e is the input element size in bytes."""

    formula: str
    flops_and_bytes: Callable[[Sizes, str, int], tuple[float, float]]


WORK: dict[str, Work] = {
    "linear_grad_norm_sq": Work(
        "flops: ghost B T (T + 1) (d + p) (the lower-triangle Grams), direct 2 B T d p, else the smaller; "
        "bytes: B T (d + p) e + 4 B",
        lambda s, path, e: (
            _linear_flops(s["B"], s["T"], s["d"], s["p"], path),
            s["B"] * s["T"] * (s["d"] + s["p"]) * e + 4 * s["B"],
        ),
    ),
    "grouped_linear_grad_norm_sq": Work(
        "as linear_grad_norm_sq with p -> 3 p (Q, K and V)",
        lambda s, path, e: (
            _linear_flops(s["B"], s["T"], s["d"], 3 * s["p"], path),
            s["B"] * s["T"] * (s["d"] + 3 * s["p"]) * e + 4 * s["B"],
        ),
    ),
    "linear_grad_gram": Work(
        "flops: min(B (B + 1) T^2 (d + p) (the lower triangle of pairs), 2 B d p (T + B)); bytes: B T (d + p) e + 4 B^2",
        lambda s, path, e: (
            min(1.0 * s["B"] * (s["B"] + 1) * s["T"] ** 2 * (s["d"] + s["p"]), 2.0 * s["B"] * s["d"] * s["p"] * (s["T"] + s["B"])),
            s["B"] * s["T"] * (s["d"] + s["p"]) * e + 4 * s["B"] ** 2,
        ),
    ),
    "linear_weight_grad_and_norm_sq": Work(
        "flops: 2 B d p (T + 1); bytes: B T (d + p) e + 4 d p + 4 B",
        lambda s, path, e: (
            2.0 * s["B"] * s["d"] * s["p"] * (s["T"] + 1),
            s["B"] * s["T"] * (s["d"] + s["p"]) * e + 4 * s["d"] * s["p"] + 4 * s["B"],
        ),
    ),
    "embedding_grad_norm_sq": Work(
        "flops: 2 B T d; bytes: B T (d e + 8) + 4 B",
        lambda s, path, e: (
            2.0 * s["B"] * s["T"] * s["d"],
            s["B"] * s["T"] * (s["d"] * e + 8) + 4 * s["B"],
        ),
    ),
    "norm_grad_norm_sq": Work(
        "flops: 4 B T d; bytes: 2 B T d e + 4 B",
        lambda s, path, e: (
            4.0 * s["B"] * s["T"] * s["d"],
            2 * s["B"] * s["T"] * s["d"] * e + 4 * s["B"],
        ),
    ),
    "cross_entropy_scores": Work(
        "flops: 5 B T V; bytes: B T (V e + 8) + 12 B",
        lambda s, path, e: (
            5.0 * s["B"] * s["T"] * s["V"],
            s["B"] * s["T"] * (s["V"] * e + 8) + 12 * s["B"],
        ),
    ),
    "linear_cross_entropy_scores": Work(
        "flops: B T V (2 d + 5); bytes: (B T + V) d e + 8 B T + 12 B",
        lambda s, path, e: (
            s["B"] * s["T"] * s["V"] * (2.0 * s["d"] + 5),
            (s["B"] * s["T"] + s["V"]) * s["d"] * e + 8 * s["B"] * s["T"] + 12 * s["B"],
        ),
    ),
    "mse_scores": Work(
        "flops: 3 B T D; bytes: 2 B T D e + 8 B",
        lambda s, path, e: (
            3.0 * s["B"] * s["T"] * s["D"],
            2 * s["B"] * s["T"] * s["D"] * e + 8 * s["B"],
        ),
    ),
}


def work(case: Case) -> tuple[float, float]:
    """(flops, bytes) of the case's op at its sizes."""
    return WORK[case.op].flops_and_bytes(case.size, case.path, DTYPES[case.dtype].itemsize)


# ---------------------------------------------------------------------------------------------
# Baselines on real modules.
# ---------------------------------------------------------------------------------------------


class SharedInputProjections(nn.Module):
    """Q, K and V projections reading the same x; the output is their concatenation."""

    def __init__(self, d: int, p: int) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(d, p, bias=False) for _ in range(3))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def per_example_grads(module: nn.Module, inputs: Tensor, out_grads: Tensor) -> dict[str, Tensor]:
    """name -> (B, *param.shape): gradients of l_i = sum(module(inputs[i]) * out_grads[i]) from
    torch.func.vmap(grad(...)) over functional_call."""
    params = {name: p.detach() for name, p in module.named_parameters()}

    def example_loss(params: dict[str, Tensor], inp: Tensor, out_grad: Tensor) -> Tensor:
        return (functional_call(module, params, (inp[None],)) * out_grad[None]).sum()

    return vmap(grad(example_loss), in_dims=(None, 0, 0))(params, inputs, out_grads)


def gemm(x: Tensor, g: Tensor) -> Call:
    """The batch's weight-gradient GEMM g^T x in the inputs' dtype: the yardstick of the linear ops."""
    x2, g2 = x.flatten(0, 1), g.flatten(0, 1)
    return lambda: {"grad_weight": g2.T @ x2}


def _sq_norms(per_example: list[Tensor]) -> Tensor:
    return sum(t.float().flatten(1).square().sum(dim=1) for t in per_example)


def func_norms(module: nn.Module, inputs: Tensor, out_grads: Tensor) -> Call:
    return lambda: {"norm_sq": _sq_norms(list(per_example_grads(module, inputs, out_grads).values()))}


def opacus_norms(module: nn.Module, inputs: Tensor, out_grads: Tensor) -> Call:
    from opacus import GradSampleModule

    sampled = GradSampleModule(module, batch_first=True, loss_reduction="sum")

    def call() -> Results:
        sampled.zero_grad(set_to_none=True)
        sampled(inputs).backward(out_grads)
        return {"norm_sq": _sq_norms([p.grad_sample for p in sampled.parameters()])}

    return call


def _on(module: nn.Module, like: Tensor) -> nn.Module:
    return module.to(device=like.device, dtype=like.dtype)


# ---------------------------------------------------------------------------------------------
# Inputs and methods per op.
# ---------------------------------------------------------------------------------------------


def _randn(gen: torch.Generator, dtype: torch.dtype, *shape: int, scale: float = 1.0) -> Tensor:
    return (scale * torch.randn(*shape, generator=gen, device=gen.device)).to(dtype)


def _targets(gen: torch.Generator, B: int, T: int, V: int) -> Tensor:
    targets = torch.randint(0, V, (B, T), generator=gen, device=gen.device)
    return torch.where(torch.rand(B, T, generator=gen, device=gen.device) < 0.05, IGNORE_INDEX, targets)


def _linear_inputs(s: Sizes, dtype: torch.dtype, gen: torch.Generator) -> Inputs:
    return {"x": _randn(gen, dtype, s["B"], s["T"], s["d"]), "g": _randn(gen, dtype, s["B"], s["T"], s["p"])}


def _grouped_inputs(s: Sizes, dtype: torch.dtype, gen: torch.Generator) -> Inputs:
    gs = {f"g{k}": _randn(gen, dtype, s["B"], s["T"], s["p"]) for k in range(3)}
    return {"x": _randn(gen, dtype, s["B"], s["T"], s["d"]), **gs}


def _embedding_inputs(s: Sizes, dtype: torch.dtype, gen: torch.Generator) -> Inputs:
    ids = torch.randint(0, s["V"], (s["B"], s["T"]), generator=gen, device=gen.device)
    return {"ids": ids, "g": _randn(gen, dtype, s["B"], s["T"], s["d"])}


def _norm_inputs(s: Sizes, dtype: torch.dtype, gen: torch.Generator) -> Inputs:
    x = _randn(gen, dtype, s["B"], s["T"], s["d"], scale=2.0)
    return {"x": x, "x_hat": F.layer_norm(x.float(), (s["d"],)).to(dtype), "g": _randn(gen, dtype, s["B"], s["T"], s["d"])}


def _ce_inputs(s: Sizes, dtype: torch.dtype, gen: torch.Generator) -> Inputs:
    return {"logits": _randn(gen, dtype, s["B"], s["T"], s["V"], scale=3.0), "targets": _targets(gen, s["B"], s["T"], s["V"])}


def _head_inputs(s: Sizes, dtype: torch.dtype, gen: torch.Generator) -> Inputs:
    return {
        "hidden": _randn(gen, dtype, s["B"], s["T"], s["d"]),
        "weight": _randn(gen, dtype, s["V"], s["d"], scale=s["d"] ** -0.5),
        "targets": _targets(gen, s["B"], s["T"], s["V"]),
    }


def _mse_inputs(s: Sizes, dtype: torch.dtype, gen: torch.Generator) -> Inputs:
    return {"pred": _randn(gen, dtype, s["B"], s["T"], s["D"]), "target": _randn(gen, dtype, s["B"], s["T"], s["D"])}


def _ce_results(scores: ak.CEScores) -> Results:
    return {"loss": scores.loss, "fgrad_sq": scores.fgrad_sq}


def _per_example_mean(token_loss: Tensor, targets: Tensor) -> Tensor:
    valid = targets != IGNORE_INDEX
    return token_loss.float().sum(dim=1) / valid.sum(dim=1).clamp(min=1)


def _cross_entropy_loss(logits: Tensor, targets: Tensor) -> Results:
    """logits (B, T, V) -> per-example mean token loss with F.cross_entropy."""
    B, T, V = logits.shape
    token_loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    return {"loss": _per_example_mean(token_loss.reshape(B, T), targets)}


Method = Callable[[Inputs, Case], Call]


def _linear_methods() -> dict[str, Method]:
    def kernel(i: Inputs, c: Case) -> Call:
        return lambda: {"norm_sq": ak.linear_grad_norm_sq(i["x"], i["g"], path=c.path, backend=c.method)}

    def module(i: Inputs) -> nn.Module:
        return _on(nn.Linear(i["x"].shape[-1], i["g"].shape[-1], bias=False), i["x"])

    return {
        "reference": kernel,
        "triton": kernel,
        "gemm": lambda i, c: gemm(i["x"], i["g"]),
        "func": lambda i, c: func_norms(module(i), i["x"], i["g"]),
        "opacus": lambda i, c: opacus_norms(module(i), i["x"], i["g"]),
    }


def _grouped_methods() -> dict[str, Method]:
    def kernel(i: Inputs, c: Case) -> Call:
        gs = [i["g0"], i["g1"], i["g2"]]
        return lambda: {"norm_sq": ak.grouped_linear_grad_norm_sq(i["x"], gs, backend=c.method)}

    def module(i: Inputs) -> nn.Module:
        return _on(SharedInputProjections(i["x"].shape[-1], i["g0"].shape[-1]), i["x"])

    def out_grads(i: Inputs) -> Tensor:
        return torch.cat([i["g0"], i["g1"], i["g2"]], dim=-1)

    def singles(i: Inputs, c: Case) -> Call:
        return lambda: {"norm_sq": sum(ak.linear_grad_norm_sq(i["x"], i[f"g{k}"]) for k in range(3))}

    return {
        "reference": kernel,
        "triton": kernel,
        "singles": singles,
        "gemm": lambda i, c: gemm(i["x"], out_grads(i)),
        "func": lambda i, c: func_norms(module(i), i["x"], out_grads(i)),
        "opacus": lambda i, c: opacus_norms(module(i), i["x"], out_grads(i)),
    }


def _gram_methods() -> dict[str, Method]:
    def kernel(i: Inputs, c: Case) -> Call:
        return lambda: {"gram": ak.linear_grad_gram(i["x"], i["g"], backend=c.method)}

    def func(i: Inputs, c: Case) -> Call:
        layer = _on(nn.Linear(i["x"].shape[-1], i["g"].shape[-1], bias=False), i["x"])

        def call() -> Results:
            flat = per_example_grads(layer, i["x"], i["g"])["weight"].float().flatten(1)
            return {"gram": flat @ flat.T}

        return call

    return {"reference": kernel, "triton": kernel, "gemm": lambda i, c: gemm(i["x"], i["g"]), "func": func}


def _weight_grad_methods() -> dict[str, Method]:
    def kernel(i: Inputs, c: Case) -> Call:
        def call() -> Results:
            grad_weight, norm_sq = ak.linear_weight_grad_and_norm_sq(i["x"], i["g"], backend=c.method)
            return {"grad_weight": grad_weight, "norm_sq": norm_sq}

        return call

    def func(i: Inputs, c: Case) -> Call:
        layer = _on(nn.Linear(i["x"].shape[-1], i["g"].shape[-1], bias=False), i["x"])

        def call() -> Results:
            per_example = per_example_grads(layer, i["x"], i["g"])["weight"]
            return {"grad_weight": per_example.sum(dim=0), "norm_sq": _sq_norms([per_example])}

        return call

    return {"reference": kernel, "triton": kernel, "gemm": lambda i, c: gemm(i["x"], i["g"]), "func": func}


def _embedding_methods() -> dict[str, Method]:
    def kernel(i: Inputs, c: Case) -> Call:
        return lambda: {"norm_sq": ak.embedding_grad_norm_sq(i["ids"], i["g"], backend=c.method)}

    def module(i: Inputs, c: Case) -> nn.Module:
        return _on(nn.Embedding(c.size["V"], i["g"].shape[-1]), i["g"])

    return {
        "reference": kernel,
        "triton": kernel,
        "func": lambda i, c: func_norms(module(i, c), i["ids"], i["g"]),
        "opacus": lambda i, c: opacus_norms(module(i, c), i["ids"], i["g"]),
    }


def _norm_methods() -> dict[str, Method]:
    def kernel(i: Inputs, c: Case) -> Call:
        return lambda: {"norm_sq": ak.norm_grad_norm_sq(i["x_hat"], i["g"], bias=True, backend=c.method)}

    def module(i: Inputs) -> nn.Module:
        return _on(nn.LayerNorm(i["x"].shape[-1]), i["x"])

    return {
        "reference": kernel,
        "triton": kernel,
        "func": lambda i, c: func_norms(module(i), i["x"], i["g"]),
        "opacus": lambda i, c: opacus_norms(module(i), i["x"], i["g"]),
    }


def _ce_methods() -> dict[str, Method]:
    def kernel(i: Inputs, c: Case) -> Call:
        return lambda: _ce_results(ak.cross_entropy_scores(i["logits"], i["targets"], backend=c.method))

    return {"reference": kernel, "triton": kernel, "pytorch": lambda i, c: lambda: _cross_entropy_loss(i["logits"], i["targets"])}


def _head_methods() -> dict[str, Method]:
    def kernel(i: Inputs, c: Case) -> Call:
        return lambda: _ce_results(ak.linear_cross_entropy_scores(i["hidden"], i["weight"], i["targets"], backend=c.method))

    def logits_then_loss(i: Inputs, c: Case) -> Call:
        return lambda: _cross_entropy_loss(i["hidden"] @ i["weight"].T, i["targets"])

    return {"reference": kernel, "triton": kernel, "pytorch": logits_then_loss}


def _mse_methods() -> dict[str, Method]:
    def op(i: Inputs, c: Case) -> Call:
        def call() -> Results:
            scores = ak.mse_scores(i["pred"], i["target"])
            return {"loss": scores.loss, "fgrad_sq": scores.fgrad_sq}

        return call

    def func(i: Inputs, c: Case) -> Call:
        def example_loss(pred: Tensor, target: Tensor) -> Tensor:
            return (pred.float() - target.float()).square().sum()

        per_example = vmap(grad(example_loss))

        def call() -> Results:
            grads = per_example(i["pred"], i["target"])
            count = i["pred"][0].numel()
            return {"loss": (i["pred"].float() - i["target"].float()).square().flatten(1).sum(1) / count, "fgrad_sq": _sq_norms([grads])}

        return call

    return {"reference": op, "func": func}


@dataclass(frozen=True)
class OpSpec:
    """How to benchmark one op: inputs, methods, and the sizes of each case set."""

    make_inputs: Callable[[Sizes, torch.dtype, torch.Generator], Inputs]
    methods: dict[str, Method]
    quick: Sizes
    cpu: list[Sizes]
    gpu: list[Sizes]
    has_paths: bool = False


def _sizes(names: str, *rows: tuple[int, ...]) -> list[Sizes]:
    return [dict(zip(names.split(), row)) for row in rows]


LLAMA, VIT = (8, 1024, 4096), (64, 197, 768)

OPS: dict[str, OpSpec] = {
    "linear_grad_norm_sq": OpSpec(
        _linear_inputs,
        _linear_methods(),
        quick=_sizes("B T d p", (4, 8, 16, 12))[0],
        cpu=_sizes("B T d p", (16, 32, 256, 256), (16, 32, 768, 768), (16, 256, 256, 256), (16, 256, 768, 768)),
        gpu=_sizes("B T d p", (*LLAMA, 4096), (*LLAMA, 11008), (*VIT, 768), (*VIT, 2304), (*VIT, 3072)),
        has_paths=True,
    ),
    "grouped_linear_grad_norm_sq": OpSpec(
        _grouped_inputs,
        _grouped_methods(),
        quick=_sizes("B T d p", (4, 8, 16, 8))[0],
        cpu=_sizes("B T d p", (8, 64, 256, 256)),
        gpu=_sizes("B T d p", (*VIT, 768), (*LLAMA, 4096)),
    ),
    "linear_grad_gram": OpSpec(
        _linear_inputs,
        _gram_methods(),
        quick=_sizes("B T d p", (4, 8, 16, 12))[0],
        cpu=_sizes("B T d p", (16, 32, 256, 256)),
        gpu=_sizes("B T d p", (*VIT, 768)),
    ),
    "linear_weight_grad_and_norm_sq": OpSpec(
        _linear_inputs,
        _weight_grad_methods(),
        quick=_sizes("B T d p", (4, 8, 16, 12))[0],
        cpu=_sizes("B T d p", (16, 128, 512, 512)),
        gpu=_sizes("B T d p", (*LLAMA, 4096), (*LLAMA, 11008), (*VIT, 3072)),
    ),
    "embedding_grad_norm_sq": OpSpec(
        _embedding_inputs,
        _embedding_methods(),
        quick=_sizes("B T V d", (4, 8, 50, 16))[0],
        cpu=_sizes("B T V d", (16, 256, 8000, 256)),
        gpu=_sizes("B T V d", (8, 1024, 32000, 4096)),
    ),
    "norm_grad_norm_sq": OpSpec(
        _norm_inputs,
        _norm_methods(),
        quick=_sizes("B T d", (4, 8, 16))[0],
        cpu=_sizes("B T d", (16, 256, 768)),
        gpu=_sizes("B T d", LLAMA, VIT),
    ),
    "cross_entropy_scores": OpSpec(
        _ce_inputs,
        _ce_methods(),
        quick=_sizes("B T V", (4, 8, 100))[0],
        cpu=_sizes("B T V", (8, 128, 8000)),
        gpu=_sizes("B T V", (8, 1024, 50257)),
    ),
    "linear_cross_entropy_scores": OpSpec(
        _head_inputs,
        _head_methods(),
        quick=_sizes("B T d V", (4, 8, 16, 100))[0],
        cpu=_sizes("B T d V", (8, 128, 256, 8000), (2, 128, 768, 50257)),
        gpu=_sizes("B T d V", (8, 1024, 768, 50257)),
    ),
    "mse_scores": OpSpec(
        _mse_inputs,
        _mse_methods(),
        quick=_sizes("B T D", (4, 8, 16))[0],
        cpu=_sizes("B T D", (64, 128, 64)),
        gpu=_sizes("B T D", (*VIT, 768)),
    ),
}

CASE_SETS = ("quick", "full")


def cases(case_set: str, device: str, ops: list[str] | None = None) -> list[Case]:
    """Every case of ``case_set`` on ``device``: "quick" (tiny shapes, seconds) or "full" (CPU
    shapes sized for a small machine on CPU; the GPU shapes of the kernels issue, float32 and
    bfloat16, on CUDA). The triton method is included on CUDA only."""
    if case_set not in CASE_SETS:
        raise ValueError(f"case_set must be one of {CASE_SETS}, got {case_set!r}")
    unknown = sorted(set(ops or ()) - set(OPS))
    if unknown:
        raise ValueError(f"unknown ops {unknown}; known: {sorted(OPS)}")
    on_cuda = device.startswith("cuda")
    dtypes = ("float32", "bfloat16") if on_cuda and case_set == "full" else ("float32",)
    selected = []
    for op, spec in OPS.items():
        if ops and op not in ops:
            continue
        shapes = [spec.quick] if case_set == "quick" else (spec.gpu if on_cuda else spec.cpu)
        for sizes in shapes:
            for dtype in dtypes:
                for method in spec.methods:
                    if method == "triton" and not on_cuda:
                        continue
                    paths = PATHS if spec.has_paths and method in ("reference", "triton") else ("",)
                    for path in paths:
                        selected.append(Case(op, method, tuple(sizes.items()), dtype, device, path))
    return selected


def chosen_path(case: Case) -> str:
    """The algorithm the case's call runs: its explicit path, else what its backend's rule picks
    (the Triton cost model of attent_kernels/_cost.py, or the reference's flop count)."""
    if case.method not in ("reference", "triton"):
        return "-"
    s, triton = case.size, case.method == "triton"
    if case.op in ("linear_grad_norm_sq", "grouped_linear_grad_norm_sq"):
        widths = [s["p"]] * (3 if case.op.startswith("grouped") else 1)
        if case.path not in ("", "auto"):
            return case.path
        if triton:
            return _cost.linear_path(s["B"], s["T"], s["d"], widths)
        return "ghost" if prefers_ghost(s["T"], s["d"], sum(widths)) else "direct"
    if case.op == "linear_weight_grad_and_norm_sq":
        fused = not triton or _cost.fused_weight_grad_wins(s["B"], s["T"], s["d"], s["p"])
        return "fused" if fused else "separate"
    if case.op == "linear_grad_gram":
        return "pairs" if triton else "materialize"
    if case.op == "embedding_grad_norm_sq":
        if not triton:
            return "index_add"
        return "sorted" if _cost.embedding_sorts(s["B"], s["T"], s["d"]) else "pairs"
    return "-"


@dataclass
class Run:
    """A built case: its inputs (on the device) and the call that is timed."""

    inputs: Inputs
    call: Call


def build(case: Case) -> Run:
    """Make the case's inputs (seeded, so every method of a case sees the same values) and its
    method's call on them; module set-up happens here, untimed."""
    spec = OPS[case.op]
    gen = torch.Generator(device=case.device).manual_seed(0)
    inputs = spec.make_inputs(case.size, DTYPES[case.dtype], gen)
    return Run(inputs, spec.methods[case.method](inputs, case))


def reference_results(case: Case, inputs: Inputs) -> Results:
    """The reference backend's results (default path) on the same inputs: what every method must match."""
    reference = dataclasses.replace(case, method="reference", path="auto" if OPS[case.op].has_paths else "")
    return OPS[case.op].methods["reference"](inputs, reference)()


def warmup_case(case: Case) -> Case:
    """The same op and method at the op's quick sizes: run once first to load code and lazy state."""
    return case.with_sizes(OPS[case.op].quick)
