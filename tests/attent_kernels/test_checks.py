"""Bad input to every public op: a ValueError whose message names the op, the argument and the shapes."""
from __future__ import annotations

import pytest
import torch

from attent_kernels import (
    cross_entropy_scores,
    embedding_grad_norm_sq,
    grouped_linear_grad_norm_sq,
    linear_cross_entropy_scores,
    linear_grad_gram,
    linear_grad_norm_sq,
    linear_weight_grad_and_norm_sq,
    mse_scores,
    norm_grad_norm_sq,
)


def f(*shape: int) -> torch.Tensor:
    return torch.ones(*shape)


def ids(*shape: int, high: int = 3) -> torch.Tensor:
    return torch.arange(int(torch.tensor(shape).prod())).reshape(shape) % high


# (id, call, fragments the message must contain)
BAD_INPUT = [
    # linear family
    ("x rank 1", lambda: linear_grad_norm_sq(f(5), f(5)), ["linear_grad_norm_sq", "x must be 2-D or 3-D", "(5)"]),
    ("x rank 4", lambda: linear_grad_norm_sq(f(2, 3, 4, 5), f(2, 3, 4, 6)), ["x must be 2-D or 3-D", "(2, 3, 4, 5)"]),
    ("batch mismatch", lambda: linear_grad_norm_sq(f(3, 4), f(2, 5)), ["x has shape (3, 4)", "g has shape (2, 5)", "batch dimension"]),
    ("sequence mismatch", lambda: linear_grad_norm_sq(f(2, 3, 4), f(2, 5, 6)), ["x has shape (2, 3, 4)", "g has shape (2, 5, 6)", "sequence"]),
    ("x 3-D g 2-D", lambda: linear_grad_norm_sq(f(2, 3, 4), f(2, 6)), ["x has shape (2, 3, 4)", "g has shape (2, 6)"]),
    ("integer x", lambda: linear_grad_norm_sq(ids(2, 3), f(2, 4)), ["x must be a floating-point tensor", "torch.int64", "(2, 3)"]),
    ("integer g", lambda: linear_grad_norm_sq(f(2, 3), ids(2, 4)), ["g must be a floating-point tensor", "(2, 4)"]),
    ("x not a tensor", lambda: linear_grad_norm_sq([[1.0]], f(1, 1)), ["x must be a torch.Tensor", "list"]),
    ("mask shape", lambda: linear_grad_norm_sq(f(2, 3, 4), f(2, 3, 5), mask=f(2, 4)), ["mask has shape (2, 4)", "(2, 3, 4)", "(2, 3)"]),
    ("mask for 2-D x", lambda: linear_grad_norm_sq(f(2, 4), f(2, 5), mask=f(2, 4)), ["mask has shape (2, 4)", "mask of shape (2)"]),
    ("mask not a tensor", lambda: linear_grad_norm_sq(f(2, 4), f(2, 5), mask=[True, False]), ["mask must be a torch.Tensor", "list"]),
    ("mask not 0/1", lambda: linear_grad_norm_sq(f(2, 4), f(2, 5), mask=torch.tensor([1.0, 0.5])), ["mask", "only 0 and 1"]),
    ("unknown path", lambda: linear_grad_norm_sq(f(2, 4), f(2, 5), path="fast"), ["path must be one of", "'fast'"]),
    ("grouped empty", lambda: grouped_linear_grad_norm_sq(f(2, 4), []), ["grouped_linear_grad_norm_sq", "gs must hold at least one"]),
    ("grouped second g", lambda: grouped_linear_grad_norm_sq(f(2, 3, 4), [f(2, 3, 5), f(2, 2, 5)]), ["gs[1] has shape (2, 2, 5)", "x has shape (2, 3, 4)"]),
    ("grouped integer g", lambda: grouped_linear_grad_norm_sq(f(2, 4), [f(2, 5), ids(2, 5)]), ["gs[1] must be a floating-point tensor"]),
    ("grouped biases", lambda: grouped_linear_grad_norm_sq(f(2, 4), [f(2, 5), f(2, 3)], biases=[True]), ["biases has 1 entries", "gs has 2"]),
    ("gram x2 only", lambda: linear_grad_gram(f(2, 4), f(2, 5), x2=f(3, 4)), ["linear_grad_gram", "both x2 and g2"]),
    ("gram mask2 alone", lambda: linear_grad_gram(f(2, 4), f(2, 5), mask2=f(2)), ["mask2 needs x2 and g2"]),
    ("gram features", lambda: linear_grad_gram(f(2, 4), f(2, 5), x2=f(3, 6), g2=f(3, 5)), ["x2 (3, 6)", "x (2, 4)", "feature sizes"]),
    ("gram second batch", lambda: linear_grad_gram(f(2, 4), f(2, 5), x2=f(3, 4), g2=f(2, 5)), ["x has shape (3, 4)", "g2 has shape (2, 5)"]),
    ("gram mask2 shape", lambda: linear_grad_gram(f(2, 4), f(2, 5), x2=f(3, 2, 4), g2=f(3, 2, 5), mask2=f(3, 3)), ["mask has shape (3, 3)", "(3, 2)"]),
    ("weight grad rank", lambda: linear_weight_grad_and_norm_sq(f(4), f(4)), ["linear_weight_grad_and_norm_sq", "x must be 2-D or 3-D", "(4)"]),
    # embedding
    ("float ids", lambda: embedding_grad_norm_sq(f(2, 3), f(2, 3, 4)), ["embedding_grad_norm_sq", "ids must be an integer tensor", "torch.float32", "(2, 3)"]),
    ("bool ids", lambda: embedding_grad_norm_sq(torch.ones(2, 3, dtype=torch.bool), f(2, 3, 4)), ["ids must be an integer tensor", "torch.bool"]),
    ("ids rank 3", lambda: embedding_grad_norm_sq(ids(2, 3, 4), f(2, 3, 4, 5)), ["ids must be 1-D or 2-D", "(2, 3, 4)"]),
    ("ids and g", lambda: embedding_grad_norm_sq(ids(2, 3), f(2, 4, 5)), ["ids has shape (2, 3)", "g has shape (2, 4, 5)"]),
    ("ids and 2-D g", lambda: embedding_grad_norm_sq(ids(2, 3), f(2, 5)), ["ids has shape (2, 3)", "g has shape (2, 5)"]),
    ("integer embedding g", lambda: embedding_grad_norm_sq(ids(2, 3), ids(2, 3, 4)), ["g must be a floating-point tensor", "(2, 3, 4)"]),
    ("embedding mask", lambda: embedding_grad_norm_sq(ids(2, 3), f(2, 3, 4), mask=f(3, 2)), ["mask has shape (3, 2)", "ids of shape (2, 3)"]),
    # norm
    ("norm feature mismatch", lambda: norm_grad_norm_sq(f(2, 3, 4), f(2, 3, 5)), ["norm_grad_norm_sq", "x_hat has shape (2, 3, 4)", "g has shape (2, 3, 5)"]),
    ("norm batch mismatch", lambda: norm_grad_norm_sq(f(2, 4), f(3, 4)), ["x_hat has shape (2, 4)", "g has shape (3, 4)"]),
    ("norm rank", lambda: norm_grad_norm_sq(f(4), f(4)), ["x_hat must be 2-D or 3-D", "(4)"]),
    ("norm integer x_hat", lambda: norm_grad_norm_sq(ids(2, 4), f(2, 4)), ["x_hat must be a floating-point tensor", "(2, 4)"]),
    ("norm mask", lambda: norm_grad_norm_sq(f(2, 3, 4), f(2, 3, 4), mask=f(2)), ["mask has shape (2)", "x_hat of shape (2, 3, 4)"]),
    # cross-entropy
    ("integer logits", lambda: cross_entropy_scores(ids(2, 5), ids(2)), ["cross_entropy_scores", "logits must be a floating-point tensor", "(2, 5)"]),
    ("logits rank", lambda: cross_entropy_scores(f(2, 3, 4, 5), ids(2, 3, 4)), ["logits must be 2-D or 3-D", "(2, 3, 4, 5)"]),
    ("no classes", lambda: cross_entropy_scores(f(2, 3, 0), ids(2, 3)), ["logits has shape (2, 3, 0)", "class dimension"]),
    ("targets shape", lambda: cross_entropy_scores(f(2, 3, 5), ids(2, 4)), ["targets has shape (2, 4)", "logits of shape (2, 3, 5)", "(2, 3)"]),
    ("float targets", lambda: cross_entropy_scores(f(2, 5), f(2)), ["targets must be an integer tensor", "torch.float32"]),
    ("targets not a tensor", lambda: cross_entropy_scores(f(2, 5), [1, 2]), ["targets must be a torch.Tensor", "list"]),
    ("target id too large", lambda: cross_entropy_scores(f(2, 5), torch.tensor([1, 5])), ["targets must lie in [0, 5)", "ignore_index=-100", "[5]"]),
    ("negative target id", lambda: cross_entropy_scores(f(2, 5), torch.tensor([-1, 2])), ["targets must lie in [0, 5)", "[-1]"]),
    ("head integer hidden", lambda: linear_cross_entropy_scores(ids(2, 4), f(5, 4), ids(2)),
     ["linear_cross_entropy_scores", "hidden must be a floating-point tensor"]),
    ("head weight rank", lambda: linear_cross_entropy_scores(f(2, 4), f(5, 4, 1), ids(2)), ["weight must be 2-D", "(5, 4, 1)"]),
    ("head weight width", lambda: linear_cross_entropy_scores(f(2, 4), f(5, 3), ids(2)), ["weight has shape (5, 3)", "hidden has shape (2, 4)", "(V, 4)"]),
    ("head no classes", lambda: linear_cross_entropy_scores(f(2, 4), f(0, 4), ids(2)), ["weight has shape (0, 4)", "class row"]),
    ("head bias size", lambda: linear_cross_entropy_scores(f(2, 4), f(5, 4), ids(2), bias=f(4)), ["bias has shape (4)", "weight has shape (5, 4)", "(5,)"]),
    ("head integer bias", lambda: linear_cross_entropy_scores(f(2, 4), f(5, 4), ids(2), bias=ids(5)), ["bias must be a floating-point tensor"]),
    ("head target id", lambda: linear_cross_entropy_scores(f(2, 4), f(5, 4), torch.tensor([0, 7])), ["targets must lie in [0, 5)", "[7]"]),
    ("head targets shape", lambda: linear_cross_entropy_scores(f(2, 3, 4), f(5, 4), ids(2)), ["targets has shape (2)", "hidden of shape (2, 3, 4)"]),
    # mse
    ("mse shapes", lambda: mse_scores(f(2, 3), f(2, 4)), ["mse_scores", "pred has shape (2, 3)", "target has shape (2, 4)"]),
    ("mse scalar", lambda: mse_scores(torch.tensor(1.0), torch.tensor(1.0)), ["pred has shape ()", "batch dimension"]),
    ("mse integer pred", lambda: mse_scores(ids(2, 3), f(2, 3)), ["pred must be a floating-point tensor", "(2, 3)"]),
    ("mse mask too long", lambda: mse_scores(f(2, 3), f(2, 3), mask=f(2, 3, 1)), ["mask has shape (2, 3, 1)", "pred's shape (2, 3)"]),
    ("mse mask shape", lambda: mse_scores(f(2, 3, 4), f(2, 3, 4), mask=f(2, 4)), ["mask has shape (2, 4)", "pred of shape (2, 3, 4)", "(2, 3)"]),
    ("mse mask not a tensor", lambda: mse_scores(f(2, 3), f(2, 3), mask=[1, 0]), ["mask must be a torch.Tensor"]),
    # backend
    ("unknown backend", lambda: linear_grad_norm_sq(f(2, 4), f(2, 5), backend="cuda"), ["backend must be one of", "'cuda'"]),
]


@pytest.mark.parametrize("call, fragments", [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_raises_a_value_error_naming_argument_and_shapes(call, fragments):
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    missing = [fragment for fragment in fragments if fragment not in message]
    assert not missing, f"{message!r} lacks {missing}"


# Mixed devices, tested with the meta device so that no GPU is needed: the check runs before any
# arithmetic, and a meta tensor holds no data.
def meta(*shape: int) -> torch.Tensor:
    return torch.ones(*shape, device="meta")


MIXED_DEVICES = [
    ("linear", lambda: linear_grad_norm_sq(f(2, 3, 4), meta(2, 3, 5)), ["x on cpu", "g on meta"]),
    ("linear mask", lambda: linear_grad_norm_sq(f(2, 3, 4), f(2, 3, 5), mask=meta(2, 3).bool()), ["mask on meta"]),
    ("grouped", lambda: grouped_linear_grad_norm_sq(f(2, 4), [f(2, 5), meta(2, 3)]), ["gs[1] on meta"]),
    ("gram", lambda: linear_grad_gram(f(2, 4), f(2, 5), x2=meta(3, 4), g2=meta(3, 5)), ["x on cpu", "x2 on meta"]),
    ("embedding", lambda: embedding_grad_norm_sq(ids(2, 3), meta(2, 3, 4)), ["ids on cpu", "g on meta"]),
    ("norm", lambda: norm_grad_norm_sq(meta(2, 4), f(2, 4)), ["x_hat on meta", "g on cpu"]),
    ("cross-entropy", lambda: cross_entropy_scores(meta(2, 5), ids(2)), ["logits on meta", "targets on cpu"]),
    ("head", lambda: linear_cross_entropy_scores(f(2, 4), meta(5, 4), ids(2)), ["weight on meta"]),
    ("mse", lambda: mse_scores(f(2, 3), meta(2, 3)), ["pred on cpu", "target on meta"]),
]


@pytest.mark.parametrize("call, fragments", [case[1:] for case in MIXED_DEVICES], ids=[case[0] for case in MIXED_DEVICES])
def test_mixed_devices_raise_a_value_error_naming_the_devices(call, fragments):
    with pytest.raises(ValueError, match="all tensors must be on one device") as error:
        call()
    assert all(fragment in str(error.value) for fragment in fragments), str(error.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_cpu_tensors_mixed_raise_a_value_error():
    with pytest.raises(ValueError, match="x on cuda:0, g on cpu"):
        linear_grad_norm_sq(f(2, 3).cuda(), f(2, 4))


@pytest.mark.parametrize("call, match", [
    (lambda: embedding_grad_norm_sq(torch.randint(0, 5, (2, 3)), torch.randn(2, 3, 4), padding_idx="1"),
     r"embedding_grad_norm_sq: padding_idx must be an integer or None, got '1' \(str\)"),
    (lambda: embedding_grad_norm_sq(torch.randint(0, 5, (2, 3)), torch.randn(2, 3, 4), padding_idx=1.0),
     r"padding_idx must be an integer or None, got 1.0 \(float\)"),
    (lambda: cross_entropy_scores(torch.randn(2, 5), torch.tensor([1, 2]), ignore_index=None),
     r"cross_entropy_scores: ignore_index must be an integer, got None"),
    (lambda: linear_cross_entropy_scores(torch.randn(2, 4), torch.randn(5, 4), torch.tensor([1, 2]), ignore_index=None),
     r"linear_cross_entropy_scores: ignore_index must be an integer, got None"),
])
def test_id_arguments_are_checked_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_reference_outputs_do_not_require_grad_nor_keep_a_graph():
    x, g = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 3, 6, requires_grad=True)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    outputs = [
        linear_grad_norm_sq(x, g), grouped_linear_grad_norm_sq(x, [g, g]), linear_grad_gram(x, g),
        *linear_weight_grad_and_norm_sq(x, g), norm_grad_norm_sq(x, torch.randn(2, 3, 4, requires_grad=True)),
        embedding_grad_norm_sq(torch.randint(0, 5, (2, 3)), torch.randn(2, 3, 4, requires_grad=True)),
        *cross_entropy_scores(logits, torch.randint(0, 5, (2, 3))), *mse_scores(logits, torch.randn(2, 3, 5)),
        *linear_cross_entropy_scores(x, torch.randn(5, 4, requires_grad=True), torch.randint(0, 5, (2, 3))),
    ]
    assert all(not t.requires_grad and t.grad_fn is None for t in outputs)
