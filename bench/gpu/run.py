"""The GPU kernel benchmark: bfloat16 cases at the LLaMA-7B, ViT-B/16 and GPT-2-head shapes of the
kernels issue, each op's Triton kernel against the cuBLAS (or plain PyTorch) computation it
replaces, within a wall-time budget.

    python bench/gpu/run.py --out DIR                # the full set, about 4 minutes on an H100 / H200
    TRITON_INTERPRET=1 python bench/gpu/run.py --out DIR --quick   # small shapes: a smoke run, also on a CPU

Writes ``DIR/kernels-gpu.json`` (every row, the device, the versions, the measured roofline) and
``DIR/kernels-gpu.md`` (the table).

Timing: ``triton.testing.do_bench`` (CUDA events; the L2 cache is flushed before every repeat;
the median and the 20th / 80th percentiles of the repeats), after one untimed call that also
autotunes. On a machine without CUDA (``--quick`` only) a host clock times three calls: a smoke
run, not a measurement.
Columns: the useful flops and bytes of the op (ghost counted as the lower-triangle Gram it
computes, T (T + 1) (d + p) per example; each input read once, each output written once),
achieved TFLOP/s and GB/s, the roofline floor max(flops / bf16 matmul rate, bytes / copy
bandwidth) from rates measured in the same run, the time over that floor, the ratio to the
case's yardstick (the weight-gradient GEMM g^T x through cuBLAS in bfloat16 for the linear ops;
logits + F.cross_entropy for the cross-entropy ops), the peak extra memory of one call, the path
the cost model chose, the configuration the autotuner chose, and the largest difference from
the float32 reference relative to its largest entry.
The probe case times a training step of a LLaMA MLP block: the plain step (forward +
``losses.mean().backward()``, the yardstick) against ``GradNormProbe.backward`` on each
``weight_grad`` route (fused, separate, auto), its flops those of the step's six GEMMs, its
bytes the weights and activations each GEMM reads; its reference is the separate route on a
float32 copy of the block. The model probe cases time a bfloat16-autocast training step of a
GPT-2-small stack (Hugging Face, 12 blocks, d 768, T 512, B 8) and of a ViT-B/16 stack (12 blocks,
B 64): the plain step against ``GradNormProbe.score`` and ``GradNormProbe.backward`` (goals: score
at most 1.0x, backward at most 1.15x the plain step), checked against each example's own step.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import attent_kernels as ak  # noqa: E402
from attent import GradNormProbe  # noqa: E402
from attent_kernels import _cost  # noqa: E402
from attent_kernels.linear import _triton as linear_triton  # noqa: E402
from attent_kernels.loss_scores import _triton as loss_triton  # noqa: E402
from bench import record_info  # noqa: E402
from bench.kernels._timing import KERNELS, do_bench_stats, launched_configs  # noqa: E402

Tensor = torch.Tensor
Call = Callable[[], object]
DEVICE = record_info.device()
DTYPE = torch.bfloat16
ELEMENT = 2  # bytes of a bfloat16
MISMATCH = 2e-2  # largest relative difference a bfloat16 kernel may show (docstrings: about 1e-2)


@dataclasses.dataclass
class Method:
    """One timed computation of a case: its call, and what the cost model chose for it."""

    name: str
    call: Call
    path: str = "-"
    check: Callable[[object], Tensor] | None = None


@dataclasses.dataclass
class Case:
    """One op at one shape: its methods (the first is the yardstick), useful flops and bytes,
    and the float32 reference its Triton results are checked against."""

    op: str
    shape: str
    flops: float
    nbytes: float
    yardstick: str
    make: Callable[[], tuple[list[Method], Callable[[], Tensor]]]


def _randn(*shape: int, scale: float = 1.0) -> Tensor:
    return (scale * torch.randn(*shape, device=DEVICE)).to(DTYPE)


def _gemm(x: Tensor, g: Tensor) -> Call:
    """The weight-gradient GEMM g^T x of the batch in bfloat16 (cuBLAS): the yardstick."""
    x2, g2 = x.flatten(0, 1), g.flatten(0, 1)
    return lambda: g2.T @ x2


def _linear_case(label: str, B: int, T: int, d: int, p: int) -> list[Case]:
    shape = f"{label} B{B} T{T} d{d} p{p}"
    nbytes = B * T * (d + p) * ELEMENT + 4 * B

    def make_norms() -> tuple[list[Method], Callable[[], Tensor]]:
        x, g = _randn(B, T, d), _randn(B, T, p)
        methods = [Method("cublas g^T x", _gemm(x, g))]
        for path in ("auto", "ghost", "direct"):
            chosen = _cost.linear_path(B, T, d, [p]) if path == "auto" else path
            methods.append(Method(f"triton.{path}", lambda path=path: ak.linear_grad_norm_sq(x, g, path=path, backend="triton"), chosen, lambda r: r))
        return methods, lambda: ak.linear_grad_norm_sq(x, g, path="ghost", backend="reference")

    def make_fused() -> tuple[list[Method], Callable[[], Tensor]]:
        x, g = _randn(B, T, d), _randn(B, T, p)
        _, slices = linear_triton.batch_slices(B, d, p)
        auto = "fused" if _cost.fused_weight_grad_wins(B, T, d, p) else "separate"
        paths = {"fused": f"fused, slices={slices}", "separate": f"separate, norms {_cost.linear_path(B, T, d, [p])}"}
        methods = [Method("cublas g^T x", _gemm(x, g))]
        for path in ("auto", "fused", "separate"):
            chosen = paths[auto if path == "auto" else path]
            call = lambda path=path: ak.linear_weight_grad_and_norm_sq(x, g, path=path, backend="triton")
            methods.append(Method(f"triton.{path}", call, chosen, lambda r: r[1]))
        return methods, lambda: ak.linear_grad_norm_sq(x, g, path="ghost", backend="reference")

    ghost = B * T * (T + 1) * (d + p)
    direct = 2.0 * B * T * d * p
    return [
        Case("linear_grad_norm_sq", shape, min(ghost, direct), nbytes, "cublas g^T x", make_norms),
        Case("linear_weight_grad_and_norm_sq", shape, direct, nbytes + 4 * d * p, "cublas g^T x", make_fused),
    ]


def _grouped_case(B: int, T: int, d: int) -> Case:
    def make() -> tuple[list[Method], Callable[[], Tensor]]:
        x, fused = _randn(B, T, d), _randn(B, T, 3 * d)
        gs = list(fused.split(d, dim=-1))
        methods = [
            Method("cublas g^T x (fused qkv)", _gemm(x, fused)),
            Method("triton grouped", lambda: ak.grouped_linear_grad_norm_sq(x, gs, backend="triton"), _cost.linear_path(B, T, d, [d] * 3), lambda r: r),
            Method("triton grouped per layer", lambda: ak.grouped_linear_grad_norm_sq(x, gs, backend="triton", per_layer=True),
                   _cost.linear_path(B, T, d, [d] * 3), lambda r: r.sum(dim=0)),
            Method("triton 3 single calls", lambda: sum(ak.linear_grad_norm_sq(x, g, backend="triton") for g in gs),
                   _cost.linear_path(B, T, d, [d]), lambda r: r),
        ]
        return methods, lambda: ak.grouped_linear_grad_norm_sq(x, gs, path="ghost", backend="reference")

    return Case("grouped_linear_grad_norm_sq", f"ViT-B/16 qkv B{B} T{T} d{d} p3x{d}",
                B * T * (T + 1) * (d + 3 * d), B * T * 4 * d * ELEMENT + 4 * B, "cublas g^T x (fused qkv)", make)


def _gram_case(B: int, T: int, d: int) -> Case:
    def make() -> tuple[list[Method], Callable[[], Tensor]]:
        x, g = _randn(B, T, d), _randn(B, T, d)
        methods = [Method("cublas g^T x", _gemm(x, g))]
        auto = "pairs"  # the gram's auto never materializes (attent_kernels/_cost.py)
        for path in ("auto", "pairs", "materialize"):
            chosen = auto if path == "auto" else path
            methods.append(Method(f"triton.{path}", lambda path=path: ak.linear_grad_gram(x, g, path=path, backend="triton"), chosen, lambda r: r))
        return methods, lambda: ak.linear_grad_gram(x, g, backend="reference")

    return Case("linear_grad_gram", f"ViT-B/16 B{B} T{T} d{d} p{d}", min(B * (B + 1) * T * T * 2.0 * d, 2.0 * B * d * d * (T + B)),
                B * T * 2 * d * ELEMENT + 4 * B * B, "cublas g^T x", make)


def _norm_case(label: str, B: int, T: int, d: int) -> Case:
    def make() -> tuple[list[Method], Callable[[], Tensor]]:
        x_hat, g = _randn(B, T, d), _randn(B, T, d)
        methods = [
            Method("pytorch (g * x_hat).sum(1)", lambda: (g * x_hat).float().sum(dim=1).square().sum(dim=1)),
            Method("triton", lambda: ak.norm_grad_norm_sq(x_hat, g, bias=True, backend="triton"), "direct", lambda r: r),
        ]
        return methods, lambda: ak.norm_grad_norm_sq(x_hat, g, bias=True, backend="reference")

    return Case("norm_grad_norm_sq", f"{label} B{B} T{T} d{d}", 4.0 * B * T * d, 2 * B * T * d * ELEMENT + 4 * B,
                "pytorch (g * x_hat).sum(1)", make)


def _embedding_case(B: int, T: int, V: int, d: int) -> Case:
    def make() -> tuple[list[Method], Callable[[], Tensor]]:
        ids, g = torch.randint(0, V, (B, T), device=DEVICE), _randn(B, T, d)
        auto = "sorted" if _cost.embedding_sorts(B, T, d) else "pairs"
        methods = [Method("pytorch index_add (reference)", lambda: ak.embedding_grad_norm_sq(ids, g, backend="reference"))]
        for path in ("auto", "sorted", "pairs"):
            chosen = auto if path == "auto" else path
            methods.append(Method(f"triton.{path}", lambda path=path: ak.embedding_grad_norm_sq(ids, g, path=path, backend="triton"), chosen, lambda r: r))
        return methods, lambda: ak.embedding_grad_norm_sq(ids, g, backend="reference")

    return Case("embedding_grad_norm_sq", f"LLaMA-7B B{B} T{T} V{V} d{d}", 2.0 * B * T * d, B * T * (d * ELEMENT + 8) + 4 * B,
                "pytorch index_add (reference)", make)


def _probe_case(label: str, B: int, T: int, d: int, p: int) -> Case:
    """A training step of an MLP block (up d -> p, GELU, down p -> d, no bias) on (B,) per-example
    losses: the plain step, then ``GradNormProbe.backward`` on each ``weight_grad`` route, each on
    its own copy of the block (one probe per model)."""
    def make() -> tuple[list[Method], Callable[[], Tensor]]:
        torch.manual_seed(0)
        block = nn.Sequential(nn.Linear(d, p, bias=False), nn.GELU(), nn.Linear(p, d, bias=False)).to(DEVICE)
        x, y = _randn(B, T, d), _randn(B, T, d)

        def losses(model: nn.Module) -> Tensor:
            dtype = model[0].weight.dtype
            return (model(x.to(dtype)).float() - y.float()).square().mean(dim=(1, 2))

        def plain(model: nn.Module) -> Call:
            def step() -> None:
                model.zero_grad(set_to_none=True)
                losses(model).mean().backward()
            return step

        def probed(model: nn.Module, route: str) -> Call:
            probe = GradNormProbe(model, weight_grad=route)

            def step() -> Tensor:
                model.zero_grad(set_to_none=True)
                return probe.backward(losses(model))
            return step

        bf16 = block.to(DTYPE)
        wins = [_cost.fused_weight_grad_wins(B, T, d, p), _cost.fused_weight_grad_wins(B, T, p, d)]
        auto = "up {}, down {}".format(*("fused" if w else "separate" for w in wins)) if ak.uses_triton(x) else "separate (no Triton)"
        chosen = {"auto": auto, "fused": "fused", "separate": "separate"}
        methods = [Method("plain step", plain(bf16))]
        for route in ("fused", "separate", "auto"):
            methods.append(Method(f"probe.backward {route}", probed(copy.deepcopy(bf16), route), chosen[route], lambda r: r))
        return methods, probed(copy.deepcopy(bf16).float(), "separate")

    gemms = 6.0 * 2 * B * T * d * p
    nbytes = 3 * (2 * d * p + B * T * (2 * d + p)) * ELEMENT
    return Case("GradNormProbe.backward", f"{label} MLP B{B} T{T} d{d} p{p}", gemms, nbytes, "plain step", make)


class _ViTBlock(nn.Module):
    """A ViT-B/16 encoder block as timm writes it: pre-norm attention (one qkv Linear, SDPA), pre-norm MLP."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x: Tensor) -> Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class _ViT(nn.Module):
    """Patch-embedding convolution, class token and position embedding, a stack of blocks, final norm, head."""

    def __init__(self, depth: int, d: int, heads: int, patch: int, image: int, classes: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, (image // patch) ** 2 + 1, d))
        self.blocks = nn.Sequential(*[_ViTBlock(d, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def _gpt2_stack(B: int, T: int, depth: int, d: int, heads: int, V: int) -> tuple[nn.Module, Callable[[nn.Module, slice], Tensor]]:
    """Hugging Face GPT-2 (no dropout) and its per-example next-token losses on random ids."""
    import transformers

    config = transformers.GPT2Config(n_layer=depth, n_embd=d, n_head=heads, vocab_size=V, n_positions=T,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model, ids = transformers.GPT2LMHeadModel(config), torch.randint(0, V, (B, T), device=DEVICE)

    def losses(net: nn.Module, rows: slice) -> Tensor:
        logits = net(input_ids=ids[rows]).logits[:, :-1].float()
        token = F.cross_entropy(logits.flatten(0, 1), ids[rows, 1:].flatten(), reduction="none")
        return token.view(logits.shape[0], -1).mean(dim=1)

    return model, losses


def _vit_stack(B: int, depth: int, d: int, heads: int, patch: int, image: int) -> tuple[nn.Module, Callable[[nn.Module, slice], Tensor]]:
    """A ViT (``_ViT``) and its per-example cross-entropy losses on random images and labels."""
    model = _ViT(depth, d, heads, patch, image, classes=1000)
    images, labels = torch.randn(B, 3, image, image, device=DEVICE), torch.randint(0, 1000, (B,), device=DEVICE)

    def losses(net: nn.Module, rows: slice) -> Tensor:
        return F.cross_entropy(net(images[rows]).float(), labels[rows], reduction="none")

    return model, losses


def _model_probe_case(label: str, B: int, tokens: int, weights: int, build: Callable[[], tuple[nn.Module, Callable]]) -> Case:
    """A bfloat16-autocast training step of a whole model (float32 weights), the plain step
    (forward + ``losses.mean().backward()``, the yardstick) against ``GradNormProbe.score`` and
    ``GradNormProbe.backward`` (``weight_grad="auto"``) on a copy of it; the reference is each
    example's own step under the same autocast (a loop over single examples, float64 sums of the
    squared gradients). Flops: the step's GEMMs, 6 x tokens x ``weights`` (the matmul weights;
    attention's T^2 terms left out); bytes: those weights read by its three GEMMs per layer."""
    def make() -> tuple[list[Method], Callable[[], Tensor]]:
        torch.manual_seed(0)
        model, losses = build()
        model = model.to(DEVICE)
        probed = copy.deepcopy(model)
        probe = GradNormProbe(probed)

        def autocast_losses(net: nn.Module, rows: slice = slice(None)) -> Tensor:
            with torch.autocast(DEVICE.type, dtype=DTYPE):
                return losses(net, rows)

        def plain() -> None:
            model.zero_grad(set_to_none=True)
            autocast_losses(model).mean().backward()

        def score() -> Tensor:
            return probe.score(autocast_losses(probed))

        def backward() -> Tensor:
            probed.zero_grad(set_to_none=True)
            return probe.backward(autocast_losses(probed))

        def reference() -> Tensor:
            norms = []
            for i in range(B):
                model.zero_grad(set_to_none=True)
                autocast_losses(model, slice(i, i + 1)).sum().backward()
                norms.append(sum(p.grad.double().square().sum() for p in model.parameters() if p.grad is not None))
            model.zero_grad(set_to_none=True)
            return torch.stack(norms)

        methods = [Method("plain step", plain), Method("probe.score", score, "activation gradients only", lambda r: r),
                   Method("probe.backward", backward, "weight_grad=auto", lambda r: r)]
        return methods, reference

    return Case("GradNormProbe (model)", f"{label} B{B}, bf16 autocast", 6.0 * B * tokens * weights, 3 * weights * ELEMENT,
                "plain step", make)


def _targets(N: int, V: int) -> Tensor:
    targets = torch.randint(0, V, (N,), device=DEVICE)
    return torch.where(torch.rand(N, device=DEVICE) < 0.05, -100, targets)


def _head_case(N: int, d: int, V: int) -> Case:
    def make() -> tuple[list[Method], Callable[[], Tensor]]:
        hidden, weight, targets = _randn(N, d), _randn(V, d, scale=d**-0.5), _targets(N, V)
        _, slices = loss_triton._vocab_slices(N, V, loss_triton._HEAD_CONFIGS)
        methods = [
            Method("logits + F.cross_entropy", lambda: F.cross_entropy(hidden @ weight.T, targets, reduction="none")),
            Method("triton fused head", lambda: ak.linear_cross_entropy_scores(hidden, weight, targets, backend="triton").loss,
                   f"slices={slices}", lambda r: r),
        ]
        return methods, lambda: ak.linear_cross_entropy_scores(hidden, weight, targets, backend="reference").loss

    return Case("linear_cross_entropy_scores", f"GPT-2 head N{N} d{d} V{V}", 2.0 * N * V * d, (N + V) * d * ELEMENT + 8 * N,
                "logits + F.cross_entropy", make)


def _ce_case(N: int, V: int) -> Case:
    def make() -> tuple[list[Method], Callable[[], Tensor]]:
        logits, targets = _randn(N, V, scale=3.0), _targets(N, V)
        _, slices = loss_triton._vocab_slices(N, V, loss_triton._CE_CONFIGS)
        methods = [
            Method("F.cross_entropy", lambda: F.cross_entropy(logits, targets, reduction="none")),
            Method("triton", lambda: ak.cross_entropy_scores(logits, targets, backend="triton").loss, f"slices={slices}", lambda r: r),
        ]
        return methods, lambda: ak.cross_entropy_scores(logits, targets, backend="reference").loss

    return Case("cross_entropy_scores", f"GPT-2 logits N{N} V{V}", 5.0 * N * V, N * V * ELEMENT + 8 * N, "F.cross_entropy", make)


def cases(quick: bool) -> list[Case]:
    """The benchmark set, most important first, so that a budget cut drops the least."""
    if quick:
        return [*_linear_case("tiny", 2, 40, 32, 48), _grouped_case(2, 20, 32), _gram_case(3, 20, 32),
                _norm_case("tiny", 2, 20, 64), _embedding_case(2, 40, 30, 32), _head_case(40, 32, 300), _ce_case(40, 300),
                _probe_case("tiny", 2, 20, 32, 48),
                _model_probe_case("GPT-2 tiny (2 blocks, d 32, T 16)", 2, 16, 2 * 12 * 32**2 + 97 * 32,
                                  lambda: _gpt2_stack(2, 16, 2, 32, 2, 97)),
                _model_probe_case("ViT tiny (2 blocks, d 48, 32 px)", 2, 17, 2 * 12 * 48**2 + 3 * 8**2 * 48 + 1000 * 48,
                                  lambda: _vit_stack(2, 2, 48, 3, 8, 32))]
    llama = [
        case
        for B in (8, 32)
        for T in (512, 4096)
        for p in (4096, 11008)
        for case in _linear_case("LLaMA-7B", B, T, 4096, p)
    ]
    fused_first = sorted(llama, key=lambda c: c.op != "linear_weight_grad_and_norm_sq")
    vit = [case for p in (768, 2304, 3072) for case in _linear_case("ViT-B/16", 64, 197, 768, p)]
    return [
        *fused_first[:8], _head_case(8192, 768, 50257), _probe_case("LLaMA-7B", 8, 512, 4096, 11008),
        _model_probe_case("GPT-2-small (12 blocks, d 768, T 512)", 8, 512, 12 * 12 * 768**2 + 50257 * 768,
                          lambda: _gpt2_stack(8, 512, 12, 768, 12, 50257)),
        _model_probe_case("ViT-B/16 (12 blocks, d 768, 224 px)", 64, 197, 12 * 12 * 768**2 + 3 * 16**2 * 768 + 1000 * 768,
                          lambda: _vit_stack(64, 12, 768, 12, 16, 224)),
        *vit, *fused_first[8:],
        _grouped_case(64, 197, 768), _norm_case("LLaMA-7B", 8, 4096, 4096), _norm_case("ViT-B/16", 64, 197, 768),
        _embedding_case(8, 4096, 32000, 4096), _ce_case(8192, 50257), _gram_case(64, 197, 768),
    ]


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def _synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timing(call: Call, warmup_ms: int, rep_ms: int) -> dict:
    """Seconds {median, p20, p80, ...}: do_bench on CUDA, three host-timed calls elsewhere."""
    if DEVICE.type == "cuda":
        return do_bench_stats(call, warmup_ms, rep_ms)
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return {"median": statistics.median(seconds), "p20": min(seconds), "p80": max(seconds)}


def peak_extra_bytes(call: Call) -> int | None:
    if DEVICE.type != "cuda":
        return None
    _synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call()
    _synchronize()
    return torch.cuda.max_memory_allocated() - before


def roofline(quick: bool) -> dict:
    """The copy bandwidth (bytes read + written) and the bfloat16 matmul rate, measured here."""
    n = 2048 if quick or DEVICE.type != "cuda" else 8192
    src = torch.empty((1 << 28) >> (4 if quick else 0), dtype=torch.float32, device=DEVICE).fill_(1.0)
    dst = torch.empty_like(src)
    copy_s = timing(lambda: dst.copy_(src), 25, 200)["median"]
    a, b = _randn(n, n), _randn(n, n)
    matmul_s = timing(lambda: a @ b, 25, 200)["median"]
    return {
        "copy_GBps": 2 * src.numel() * 4 / copy_s / 1e9,
        "bf16_matmul_TFLOPs": 2.0 * n**3 / matmul_s / 1e12,
        "method": f"do_bench medians: dst.copy_(src) of {src.numel() * 4 >> 20} MiB float32 (2 x bytes / time); "
                  f"a @ b of random {n} x {n} bfloat16 (2 n^3 / time)",
    }


def _relative_error(result: Tensor, expected: Tensor) -> float:
    scale = float(expected.abs().max())
    return float((result.double() - expected.double()).abs().max()) / scale if scale else 0.0


def measure(case: Case, rates: dict, args: argparse.Namespace) -> list[dict]:
    methods, reference = case.make()
    expected = reference()
    floor = max(case.flops / (rates["bf16_matmul_TFLOPs"] * 1e12), case.nbytes / (rates["copy_GBps"] * 1e9))
    rows = []
    for method in methods:
        row = {"op": case.op, "shape": case.shape, "method": method.name, "path": method.path,
               "flops": case.flops, "bytes": case.nbytes, "floor_s": floor}
        try:
            result, row["config"] = launched_configs(method.call)
            _synchronize()
            if method.check is not None:
                row["rel_error"] = _relative_error(method.check(result), expected)
                row["status"] = "ok" if row["rel_error"] <= MISMATCH else "MISMATCH"
            else:
                row["status"] = "ok"
            row["time_s"] = timing(method.call, args.warmup_ms, args.rep_ms)
            row["peak_extra_bytes"] = peak_extra_bytes(method.call)
        except Exception as error:  # a failing method is a row, the run goes on
            row.update(status="failed", error=f"{type(error).__name__}: {error}"[:300])
        rows.append(row)
    base = next((r for r in rows if r["method"] == case.yardstick and "time_s" in r), None)
    for row in rows:
        if "time_s" in row:
            median = row["time_s"]["median"]
            row.update(TFLOPs=case.flops / median / 1e12, GBps=case.nbytes / median / 1e9, over_floor=median / floor)
            if base is not None:
                row["x_yardstick"] = median / base["time_s"]["median"]
    return rows


def markdown(rows: list[dict], rates: dict, device: str) -> str:
    def cell(row: dict, key: str, fmt: str) -> str:
        return format(row[key], fmt) if row.get(key) is not None else "-"

    lines = [
        f"Device: {device}; measured copy {rates['copy_GBps']:.0f} GB/s, bf16 matmul {rates['bf16_matmul_TFLOPs']:.0f} TFLOP/s. "
        "Times: do_bench medians (L2 flushed). x yardstick: time over the case's first row.",
        "",
        "| op | shape | method | path | ms (p20-p80) | TFLOP/s | GB/s | x floor | x yardstick | peak extra MiB | rel err | status | config |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        t = row.get("time_s")
        ms = f"{t['median'] * 1e3:.3f} ({t['p20'] * 1e3:.3f}-{t['p80'] * 1e3:.3f})" if t else "-"
        peak = f"{row['peak_extra_bytes'] / 2**20:.1f}" if row.get("peak_extra_bytes") is not None else "-"
        status = row["status"] if row["status"] != "failed" else f"failed: {row['error'][:80]}"
        lines.append(
            f"| {row['op']} | {row['shape']} | {row['method']} | {row['path']} | {ms} | {cell(row, 'TFLOPs', '.1f')} | "
            f"{cell(row, 'GBps', '.0f')} | {cell(row, 'over_floor', '.2f')} | {cell(row, 'x_yardstick', '.2f')} | {peak} | "
            f"{cell(row, 'rel_error', '.1e')} | {status} | {row.get('config', '-')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for kernels-gpu.json and kernels-gpu.md")
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke run")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds; cases not started by then are skipped")
    parser.add_argument("--max-configs", type=int, default=0,
                        help="autotune over at most this many configurations per kernel (0: all)")
    parser.add_argument("--warmup-ms", type=int, default=10)
    parser.add_argument("--rep-ms", type=int, default=40)
    args = parser.parse_args(argv)
    if DEVICE.type != "cuda" and not args.quick:
        parser.error("the full set needs a CUDA device; --quick runs anywhere")
    if args.max_configs:
        for kernel in KERNELS.values():
            kernel.configs = kernel.configs[: args.max_configs]
    start = time.perf_counter()
    rates = roofline(args.quick)
    device = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu (smoke run, host timer)"
    now = datetime.datetime.now(datetime.timezone.utc).astimezone()
    record = {
        "benchmark": "bench/gpu/run.py",
        "timestamp": now.isoformat(timespec="seconds"),
        "device": device,
        "machine": record_info.machine(DEVICE),
        "versions": record_info.versions(),
        "roofline": rates,
        "settings": {"quick": args.quick, "budget_s": args.budget, "max_configs": args.max_configs,
                     "warmup_ms": args.warmup_ms, "rep_ms": args.rep_ms, "dtype": "bfloat16",
                     "cost_model": {name: getattr(_cost, name) for name in dir(_cost) if name.isupper()}},
        "timing": __doc__.split("Timing:")[1].split("Columns:")[0].strip(),
        "columns": __doc__.split("Columns:")[1].strip(),
        "results": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for case in cases(args.quick):
        if time.perf_counter() - start > args.budget:
            record["results"].append({"op": case.op, "shape": case.shape, "method": "-", "path": "-", "status": "skipped (budget)"})
        else:
            record["results"].extend(measure(case, rates, args))
            if DEVICE.type == "cuda":
                torch.cuda.empty_cache()
            print(f"[{time.perf_counter() - start:6.1f} s] {case.op} {case.shape}", flush=True)
        # Written after every case, so that a run stopped at its time limit keeps what it measured.
        record["wall_s"] = time.perf_counter() - start
        (args.out / "kernels-gpu.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        (args.out / "kernels-gpu.md").write_text(markdown(record["results"], rates, device))
    print(markdown(record["results"], rates, device))
    bad = [row for row in record["results"] if row["status"] in ("failed", "MISMATCH")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
