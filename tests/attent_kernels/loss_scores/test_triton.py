"""Triton kernels of the cross-entropy scores (plain and fused with the output head) against the
reference and against F.cross_entropy with autograd's gradient w.r.t. the logits, on random inputs
of odd sizes. Without CUDA they run on CPU tensors under the Triton interpreter
(tests/conftest.py sets TRITON_INTERPRET=1), so shapes stay tiny.

Both backends accumulate in float32 from the same (possibly bfloat16/float16) input values, so
every input dtype is held to the float32 tolerance of ``assert_matches``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from attent_kernels import CEScores, _cost, _dispatch, cross_entropy_scores, linear_cross_entropy_scores  # noqa: E402
from attent_kernels.loss_scores import _triton  # noqa: E402
from tests.attent_kernels._oracle import assert_matches, assert_nan_only_at, randn  # noqa: E402

LOW_PRECISION = (torch.bfloat16, torch.float16)
IGNORE = -100
# (B, T, V); T None means logits (B, V). V past several 64-wide interpreter tiles and not a
# multiple of them, V an exact multiple, V = 1; B * T rows not a multiple of the 16-row block.
SHAPES = [(3, 13, 203), (3, None, 300), (2, 1, 64), (3, 5, 1)]


def _targets(gen: torch.Generator, B: int, T: int | None, V: int, ignore_index: int = IGNORE) -> torch.Tensor:
    """Random targets, a quarter ignored; with a sequence, example 0 has no valid token."""
    lead = (B,) if T is None else (B, T)
    targets = torch.randint(0, V, lead, generator=gen)
    targets[torch.rand(lead, generator=gen) < 0.25] = ignore_index
    if T is not None:
        targets[0] = ignore_index
    return targets


def _logits(seed: int, B: int, T: int | None, V: int, device: str, dtype=torch.float32, scale: float = 3.0):
    gen = torch.Generator().manual_seed(seed)
    targets = _targets(gen, B, T, V)
    lead = targets.shape
    return randn(gen, *lead, V, dtype=dtype, scale=scale).to(device), targets.to(device)


def _head(
    seed: int, B: int, T: int | None, V: int, d: int, device: str, dtype=torch.float32, with_bias=True, scale=1.0
):
    """hidden (..., d), weight (V, d), bias (V,) or None, targets; logits of about `scale` * 3."""
    gen = torch.Generator().manual_seed(seed)
    targets = _targets(gen, B, T, V)
    hidden = randn(gen, *targets.shape, d, dtype=dtype, scale=scale)
    weight = randn(gen, V, d, dtype=dtype, scale=3.0 / d**0.5)
    bias = randn(gen, V, dtype=dtype) if with_bias else None
    return hidden.to(device), weight.to(device), None if bias is None else bias.to(device), targets.to(device)


def _assert_same_scores(got: CEScores, expected: CEScores, dtype: torch.dtype = torch.float32) -> None:
    assert_matches(got.loss, expected.loss, dtype)
    assert_matches(got.fgrad_sq, expected.fgrad_sq, dtype)
    assert torch.equal(got.count, expected.count)


def _same_dtypes(got: CEScores, expected: CEScores) -> tuple[CEScores, CEScores]:
    assert got.loss.dtype == got.fgrad_sq.dtype == expected.loss.dtype == expected.fgrad_sq.dtype
    return got, expected


def _ce_both(logits, targets, **kwargs) -> tuple[CEScores, CEScores]:
    return _same_dtypes(
        cross_entropy_scores(logits, targets, backend="triton", **kwargs),
        cross_entropy_scores(logits, targets, backend="reference", **kwargs),
    )


def _head_both(hidden, weight, bias, targets) -> tuple[CEScores, CEScores]:
    return _same_dtypes(
        linear_cross_entropy_scores(hidden, weight, targets, bias=bias, backend="triton"),
        linear_cross_entropy_scores(hidden, weight, targets, bias=bias, backend="reference"),
    )


@pytest.fixture(autouse=True, params=["one launch", "tuned"])
def ce_route(request, monkeypatch) -> str:
    """Every test runs the plain cross-entropy kernel on both routes: a small call's one launch of
    the fixed configuration, finished in the kernel, and the autotuned kernel with its vocabulary
    slices (SMALL_LOGITS = 0 sends every call there)."""
    if request.param == "tuned":
        monkeypatch.setattr(_triton, "SMALL_LOGITS", 0)
    return request.param


def _autograd_oracle(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE) -> CEScores:
    """Per-example mean token loss from F.cross_entropy, the squared norm of autograd's gradient
    of each example's summed loss w.r.t. its logits, and the valid-token count (float64, CPU)."""
    B, V = logits.shape[0], logits.shape[-1]
    z = logits.detach().cpu().double().reshape(B, -1, V).requires_grad_(True)
    tgt = targets.cpu().reshape(B, -1)
    token_loss = F.cross_entropy(z.reshape(-1, V), tgt.reshape(-1), ignore_index=ignore_index, reduction="none")
    (grad,) = torch.autograd.grad(token_loss.sum(), z)
    count = (tgt != ignore_index).sum(dim=1)
    return CEScores(token_loss.detach().reshape(B, -1).sum(1) / count.clamp(min=1), grad.square().sum((1, 2)), count)


def _cpu(scores: CEScores) -> CEScores:
    return CEScores(*(t.cpu() for t in scores))


# ---------------------------------------------------------------------------------------------
# cross_entropy_scores
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cross_entropy_matches_reference_on_odd_shapes(device, shape):
    logits, targets = _logits(1, *shape, device)
    got, expected = _ce_both(logits, targets)
    _assert_same_scores(got, expected)
    if shape[1] is not None:
        assert (got.loss[0], got.fgrad_sq[0], got.count[0]) == (0, 0, 0)


@pytest.mark.parametrize("dtype", [*LOW_PRECISION, torch.float64], ids=str)
def test_cross_entropy_dtypes(device, dtype):
    logits, targets = _logits(2, *SHAPES[0], device, dtype)
    got, expected = _ce_both(logits, targets)
    assert got.loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _assert_same_scores(got, expected, torch.float64 if dtype == torch.float64 else torch.float32)


def test_cross_entropy_equals_autograd_of_f_cross_entropy(device):
    logits, targets = _logits(3, 3, 11, 150, device)
    got = cross_entropy_scores(logits, targets, backend="triton")
    _assert_same_scores(_cpu(got), _autograd_oracle(logits, targets))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_logits_move_the_running_max_across_tiles(device, dtype):
    """Logits of +-80 whose row maximum sits in the first, a middle or the last vocabulary tile:
    the running max is rescaled on the way, and exp never overflows."""
    B, T, V = 3, 6, 203
    gen = torch.Generator().manual_seed(4)
    logits = (160 * torch.rand(B, T, V, generator=gen, dtype=torch.float64) - 80).to(dtype)
    targets = _targets(gen, B, T, V)
    for t, column in enumerate([0, 70, 130, 202, 5, 199]):
        logits[:, t, column] = 80
    targets[1:, 3] = 202
    logits, targets = logits.to(device), targets.to(device)
    got, expected = _ce_both(logits, targets)
    assert bool(got.loss.isfinite().all() and got.fgrad_sq.isfinite().all())
    _assert_same_scores(got, expected)
    _assert_same_scores(_cpu(got), _autograd_oracle(logits, targets))


def test_leading_vocabulary_tiles_of_minus_infinity(device):
    """A row whose first tiles are all -inf (a masked vocabulary) keeps a -inf running max for a
    while; the scores equal those of the finite columns alone."""
    logits, _ = _logits(5, 3, None, 203, device)
    logits[:, :150] = float("-inf")
    targets = torch.tensor([160, 202, 150], device=device)
    got = cross_entropy_scores(logits, targets, backend="triton")
    _assert_same_scores(_cpu(got), _autograd_oracle(logits, targets))
    _assert_same_scores(got, cross_entropy_scores(logits[:, 150:], targets - 150, backend="reference"))


def test_scores_keep_their_relative_accuracy_when_the_target_is_nearly_certain(device):
    """||p - e_y||^2 and the loss for targets of probability 1 - 1e-4 ... 1 - 1e-12 are tiny but
    positive, and match the oracle relatively, token by token."""
    gen = torch.Generator().manual_seed(6)
    logits, targets = randn(gen, 6, 1, 131), torch.randint(0, 131, (6, 1), generator=gen)
    margins = torch.tensor([13.0, 15.0, 17.0, 19.0, 21.0, 23.0])
    logits.scatter_add_(2, targets[..., None], margins[:, None, None])
    got = cross_entropy_scores(logits.to(device), targets.to(device), backend="triton")
    assert bool((got.fgrad_sq > 0).all())
    expected = _autograd_oracle(logits, targets).fgrad_sq
    torch.testing.assert_close(got.fgrad_sq.cpu().double(), expected, rtol=1e-4, atol=0.0)
    assert bool((got.loss > 0).all())
    torch.testing.assert_close(got.loss.cpu().double(), _autograd_oracle(logits, targets).loss, rtol=1e-4, atol=0.0)


def test_custom_ignore_index_inside_the_vocabulary(device):
    gen = torch.Generator().manual_seed(7)
    targets = _targets(gen, 3, 9, 70, ignore_index=2).to(device)
    logits = randn(gen, 3, 9, 70).to(device)
    got, expected = _ce_both(logits, targets, ignore_index=2)
    _assert_same_scores(got, expected)
    _assert_same_scores(_cpu(got), _autograd_oracle(logits, targets, ignore_index=2))


def test_strided_logits(device):
    gen = torch.Generator().manual_seed(8)
    logits = randn(gen, 3, 2 * 101, 7).to(device).transpose(1, 2)[..., ::2]
    targets = _targets(gen, 3, 7, 101).to(device)
    assert not logits.is_contiguous()
    _assert_same_scores(*_ce_both(logits, targets))


# ---------------------------------------------------------------------------------------------
# linear_cross_entropy_scores
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
def test_linear_cross_entropy_matches_reference_on_odd_shapes(device, shape, with_bias):
    hidden, weight, bias, targets = _head(9, *shape, 45, device, with_bias=with_bias)
    got, expected = _head_both(hidden, weight, bias, targets)
    _assert_same_scores(got, expected)


@pytest.mark.parametrize("dtype", [*LOW_PRECISION, torch.float64], ids=str)
def test_linear_cross_entropy_dtypes(device, dtype):
    hidden, weight, bias, targets = _head(10, 3, 7, 150, 48, device, dtype)
    got, expected = _head_both(hidden, weight, bias, targets)
    _assert_same_scores(got, expected, torch.float64 if dtype == torch.float64 else torch.float32)


def test_linear_cross_entropy_equals_the_scores_of_the_explicit_logits(device):
    """Reference-free oracle, with large logits (about +-80) to move the running max across tiles."""
    hidden, weight, bias, targets = _head(11, 2, 9, 203, 17, device, scale=25.0)
    logits = hidden.double() @ weight.double().T + bias.double()
    assert float(logits.abs().max()) > 80
    got = linear_cross_entropy_scores(hidden, weight, targets, bias=bias, backend="triton")
    _assert_same_scores(_cpu(got), _autograd_oracle(logits, targets))


def test_linear_cross_entropy_mixed_dtypes_and_strided_weight(device):
    hidden, weight, bias, targets = _head(12, 3, 5, 90, 20, device, torch.bfloat16)
    weight = weight.float().T.contiguous().T
    assert not weight.is_contiguous()
    _assert_same_scores(*_head_both(hidden, weight, bias.double(), targets))


# ---------------------------------------------------------------------------------------------
# Both
# ---------------------------------------------------------------------------------------------


# The interpreter's max over a row of NaN logits warns; the result is NaN either way.
@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")
def test_nan_in_one_example_stays_in_that_example(device):
    logits, targets = _logits(13, 3, 7, 150, device)
    hidden, weight, bias, _ = _head(13, 3, 7, 150, 21, device)
    targets[2] = 3
    clean = [
        cross_entropy_scores(logits, targets, backend="triton"),
        linear_cross_entropy_scores(hidden, weight, targets, bias=bias, backend="triton"),
    ]
    logits_bad, hidden_bad = logits.clone(), hidden.clone()
    logits_bad[2, 4, 100] = float("nan")
    hidden_bad[2, 1, 7] = float("nan")
    dirty = [
        cross_entropy_scores(logits_bad, targets, backend="triton"),
        linear_cross_entropy_scores(hidden_bad, weight, targets, bias=bias, backend="triton"),
    ]
    for scores, reference in zip(dirty, clean):
        assert_nan_only_at(scores.loss.cpu(), reference.loss.cpu(), 2)
        assert_nan_only_at(scores.fgrad_sq.cpu(), reference.fgrad_sq.cpu(), 2)
        assert torch.equal(scores.count, reference.count)


def test_nan_in_an_ignored_row_is_never_read(device):
    logits, targets = _logits(14, 3, 7, 150, device)
    hidden, weight, bias, _ = _head(14, 3, 7, 150, 21, device)
    targets[1, 2] = IGNORE
    logits_bad, hidden_bad = logits.clone(), hidden.clone()
    logits_bad[1, 2] = float("nan")
    hidden_bad[1, 2] = float("nan")
    pairs = [
        (
            cross_entropy_scores(logits_bad, targets, backend="triton"),
            cross_entropy_scores(logits, targets, backend="triton"),
        ),
        (
            linear_cross_entropy_scores(hidden_bad, weight, targets, bias=bias, backend="triton"),
            linear_cross_entropy_scores(hidden, weight, targets, bias=bias, backend="triton"),
        ),
    ]
    for dirty, clean in pairs:
        for field_dirty, field_clean in zip(dirty, clean):
            assert torch.equal(field_dirty, field_clean)


@pytest.mark.parametrize("lead", [(0,), (0, 4), (2, 0)], ids=str)
def test_empty_batch_and_empty_sequence(device, lead):
    logits, hidden = torch.zeros(*lead, 70, device=device), torch.zeros(*lead, 9, device=device)
    weight, targets = torch.zeros(70, 9, device=device), torch.zeros(lead, dtype=torch.long, device=device)
    for scores in (
        cross_entropy_scores(logits, targets, backend="triton"),
        linear_cross_entropy_scores(hidden, weight, targets, backend="triton"),
    ):
        for field in scores:
            assert torch.equal(field, torch.zeros(lead[0], dtype=field.dtype, device=device))


def test_inputs_are_not_modified(device):
    logits, targets = _logits(15, 3, 4, 70, device, torch.bfloat16)
    hidden, weight, bias, _ = _head(15, 3, 4, 70, 9, device, torch.float16)
    tensors = (logits, targets, hidden, weight, bias)
    before = [t.clone() for t in tensors]
    cross_entropy_scores(logits, targets, backend="triton")
    linear_cross_entropy_scores(hidden, weight, targets, bias=bias, backend="triton")
    for t, saved in zip(tensors, before):
        assert torch.equal(t, saved)


@pytest.mark.skipif(not _dispatch.interpreter_on(), reason="the interpreter configuration only")
def test_interpreter_uses_one_small_configuration():
    for kernel in (_triton._cross_entropy_kernel, _triton._linear_cross_entropy_kernel):
        assert len(kernel.configs) == 1


# ---------------------------------------------------------------------------------------------
# The vocabulary split
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target_programs", [1, 2, 10_000])
def test_vocabulary_slices_merge_to_the_reference(device, monkeypatch, target_programs):
    """One slice, two, or a slice per 64-column tile (the last one short), with targets in the
    first and last columns of slices, and a row whose whole first slice is -inf."""
    monkeypatch.setattr(_cost, "TARGET_PROGRAMS", target_programs)
    logits, targets = _logits(21, 2, 4, 201, device)
    targets[0, :4] = torch.tensor([0, 63, 64, 200], device=device)
    logits[1, 0, :64] = float("-inf")
    got, expected = _ce_both(logits, targets)
    _assert_same_scores(got, expected)
    hidden, weight, bias, head_targets = _head(22, 2, 3, 201, 18, device)
    head_targets[1, :3] = torch.tensor([127, 128, 200], device=device)
    _assert_same_scores(*_head_both(hidden, weight, bias, head_targets))
    again = cross_entropy_scores(logits, targets, backend="triton")
    assert torch.equal(again.loss, got.loss) and torch.equal(again.fgrad_sq, got.fgrad_sq)


def test_slice_count_fills_the_device_and_covers_the_vocabulary():
    configs = _triton._HEAD_CONFIGS
    for N, V in [(1, 1), (5, 63), (8192, 50257), (100_000, 300)]:
        slice_cols, n_slices = _triton._vocab_slices(N, V, configs)
        assert (n_slices - 1) * slice_cols < V <= n_slices * slice_cols
        assert slice_cols % max(c.kwargs["BLOCK_V"] for c in configs) == 0


# ---------------------------------------------------------------------------------------------
# The launch-bound path: no host work beyond the launch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["plain", "head"])
def test_unchecked_out_of_range_targets_score_nan_in_their_example_only(device, op):
    """check_targets=False skips the host check; a target outside [0, V) (either side) then makes
    its example NaN on both backends, and every other example is exact."""
    B, T, V, d = 4, 3, 37, 5
    logits, targets = _logits(31, B, T, V, device)
    hidden, weight, bias, _ = _head(31, B, T, V, d, device)
    targets[1, 2], targets[3, 0] = V, -7
    clean_targets = targets.clone()
    clean_targets[1, 2], clean_targets[3, 0] = 0, 0

    def run(tgt, backend, **kwargs):
        if op == "plain":
            return cross_entropy_scores(logits, tgt, backend=backend, **kwargs)
        return linear_cross_entropy_scores(hidden, weight, tgt, bias=bias, backend=backend, **kwargs)

    with pytest.raises(ValueError, match="targets must lie in"):
        run(targets, "triton")
    for backend in ("triton", "reference"):
        got = _cpu(run(targets, backend, check_targets=False))
        clean = _cpu(run(clean_targets, backend, check_targets=False))
        for field in ("loss", "fgrad_sq"):
            values, reference = getattr(got, field), getattr(clean, field)
            assert bool(values[[1, 3]].isnan().all()), f"{backend} {field}: an out-of-range target must score NaN"
            torch.testing.assert_close(values[[0, 2]], reference[[0, 2]], rtol=0, atol=0)


def test_check_targets_must_be_a_bool(device):
    logits, targets = _logits(32, 2, None, 5, device)
    with pytest.raises(ValueError, match="check_targets must be True or False"):
        cross_entropy_scores(logits, targets, check_targets="no")


HOST_READS = ("__bool__", "item", "tolist", "__int__", "__float__", "__index__")


def test_an_unchecked_call_reads_no_tensor_value_on_the_host(device, monkeypatch):
    """A score call with check_targets=False never reads a tensor's value on the host (on CUDA
    each read is a synchronization): counted with stand-ins for every host read."""
    logits, targets = _logits(33, 32, None, 10, device)
    reads = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _name=name, _original=original, **k: (
            reads.append(_name), _original(self, *a, **k))[1])
    cross_entropy_scores(logits, targets, backend="reference", check_targets=False)
    assert reads == []
    cross_entropy_scores(logits, targets, backend="reference")
    assert reads, "the checked call reads the range check's result: the stand-ins must see it"


def _launches(monkeypatch) -> list:
    """The cross-entropy kernels launched from now on, in order (each still runs)."""
    launches = []
    for kernel in (_triton._small_cross_entropy_kernel, _triton._cross_entropy_kernel):
        original = kernel.run
        monkeypatch.setattr(kernel, "run", lambda *a, _kernel=kernel, _original=original, **k: (
            launches.append(_kernel), _original(*a, **k))[1])
    return launches


def test_a_small_call_is_one_launch_finished_in_the_kernel(device, ce_route, monkeypatch):
    """The training step's logits (32 x 10): one launch of the one-configuration kernel, whose
    programs finish the scores themselves (the host's slice merge never runs)."""
    if ce_route != "one launch":
        pytest.skip("the small route only")
    launches = _launches(monkeypatch)
    monkeypatch.setattr(_triton._reference, "scores_from_state", lambda *a, **k: pytest.fail("merged on the host"))
    logits, targets = _logits(34, 32, None, 10, device)
    got = cross_entropy_scores(logits, targets, backend="triton", check_targets=False)
    assert launches == [_triton._small_cross_entropy_kernel]
    assert len(_triton._small_cross_entropy_kernel.configs) == 1
    expected = _autograd_oracle(logits, targets)
    assert_matches(got.loss.cpu().double(), expected.loss, torch.float32)
    assert_matches(got.fgrad_sq.cpu().double(), expected.fgrad_sq, torch.float32)


@pytest.mark.parametrize("rows, classes, small", [(32, 10, True), (2, 4096, True), (2, 4097, False),
                                                 (1025, 1024, False)])
def test_the_small_route_takes_few_logits_of_a_small_vocabulary(device, ce_route, monkeypatch, rows, classes, small):
    """A call takes the one-launch route only with at most SMALL_LOGITS logits over at most
    SMALL_VOCAB classes: a large vocabulary is sliced even for two rows, whose one-slice programs
    would otherwise each walk the whole vocabulary on a nearly empty device."""
    if ce_route != "one launch":
        pytest.skip("the default routing only")
    launches = _launches(monkeypatch)
    logits, targets = _logits(35, rows, None, classes, device, scale=1.0)
    got, expected = _ce_both(logits, targets)
    _assert_same_scores(got, expected)
    assert launches == [_triton._small_cross_entropy_kernel if small else _triton._cross_entropy_kernel]


def test_tuning_keys_do_not_change_with_a_short_last_batch():
    """Row counts share a key per power of two and one key from LARGE_ROWS up, so an LM's short
    last batch (3 of 8 sequences of 512 tokens) reuses the full batches' tuning."""
    assert _triton._row_key(29) == _triton._row_key(32)
    assert _triton._row_key(3 * 512) == _triton._row_key(8 * 512) == _triton._row_key(10**6) == _triton.LARGE_ROWS
    assert _triton._row_key(3) != _triton._row_key(64)
