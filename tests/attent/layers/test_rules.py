"""Every layer rule against each example's own gradient (the ``exact`` fixture), with shapes drawn so
that sizes coincide on purpose (T == B, width == B, width 1, B == 1)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from attent.probe import GradNormProbe

FEW = settings(max_examples=12, deadline=None)
MODES = st.sampled_from(["score", "backward"])


def draw_batch(data: st.DataObject, most: int = 4) -> int:
    """Seed torch from the draw, then draw a batch size."""
    torch.manual_seed(data.draw(st.integers(0, 99)))
    return data.draw(st.integers(1, most))


def sizes(batch: int) -> st.SearchStrategy[int]:
    """A size that is often the batch size or 1."""
    return st.one_of(st.just(batch), st.just(1), st.integers(1, 5))


class Readout(nn.Module):
    """``layer`` followed by a fixed random readout: (B,) losses, batch at dim 0 of the output."""

    def __init__(self, layer: nn.Module, out_shape: tuple[int, ...]):
        super().__init__()
        self.layer = layer
        self.register_buffer("w", torch.randn(out_shape))

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.layer(*args)
        return (torch.tanh(out) * self.w).flatten(1).sum(1)


def check_layer(exact, layer: nn.Module, inputs: tuple[torch.Tensor, ...], mode: str, **options):
    """The layer under a readout; example i is row i of every input."""
    with torch.no_grad():
        out_shape = layer(*(t[:1] for t in inputs)).shape[1:]
    model = Readout(layer, tuple(out_shape))
    return exact(model, lambda m: m(*inputs), lambda m, i: m(*(t[i:i + 1] for t in inputs)), inputs[0].shape[0],
                 mode=mode, **options)


@FEW
@given(data=st.data(), mode=MODES)
def test_layer_norm_and_rms_norm_any_normalized_shape(exact, data, mode):
    B = draw_batch(data)
    shape = tuple(data.draw(st.lists(sizes(B), min_size=1, max_size=3)))
    lead = tuple(data.draw(st.lists(sizes(B), max_size=2)))
    for layer in (nn.LayerNorm(shape, bias=data.draw(st.booleans())), nn.RMSNorm(shape, eps=1e-5)):
        with torch.no_grad():
            layer.weight.normal_()
        check_layer(exact, layer.double(), (torch.randn(B, *lead, *shape, dtype=torch.float64),), mode)


@FEW
@given(data=st.data(), mode=MODES)
def test_group_norm(exact, data, mode):
    B, groups = draw_batch(data), data.draw(st.integers(1, 3))
    C = groups * data.draw(sizes(B))
    spatial = (data.draw(st.integers(2, 4)), *data.draw(st.lists(sizes(B), max_size=1)))  # > 1 value per group
    layer = nn.GroupNorm(groups, C).double()
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    check_layer(exact, layer, (torch.randn(B, C, *spatial, dtype=torch.float64),), mode)


@FEW
@given(data=st.data(), mode=MODES)
def test_conv_any_stride_padding_dilation_groups(exact, data, mode):
    B, dims = draw_batch(data, 3), data.draw(st.sampled_from([1, 2, 3]))
    groups = data.draw(st.integers(1, 2))
    c_in, c_out = groups * data.draw(sizes(B)), groups * data.draw(st.integers(1, 3))
    kernel, dilation = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    stride = data.draw(st.integers(1, 3))
    padding = data.draw(st.sampled_from(["same", 0, 1, 2])) if stride == 1 else data.draw(st.integers(0, 2))
    padding_mode = data.draw(st.sampled_from(["zeros", "reflect", "circular", "replicate"]))
    reach = dilation * (kernel - 1) + 1
    length = data.draw(st.integers(reach + 2, reach + (4 if dims < 3 else 2)))
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation,
                                                   groups=groups, bias=data.draw(st.booleans()), padding_mode=padding_mode)
    x = torch.randn(B, c_in, *([length] * dims), dtype=torch.float64)
    probe = check_layer(exact, conv.double(), (x,), mode)
    assert probe.coverage["layer.weight"] == "conv"


@FEW
@given(data=st.data(), mode=MODES)
def test_conv_transpose_any_stride_padding_dilation_output_padding(exact, data, mode):
    B, dims = draw_batch(data, 3), data.draw(st.sampled_from([1, 2, 3]))
    kernel, stride, dilation = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    padding = data.draw(st.integers(0, dilation * (kernel - 1)))
    output_padding = data.draw(st.integers(0, max(stride, dilation) - 1))
    length = data.draw(st.integers(2, 4 if dims < 3 else 3))
    # torch refuses a transposed convolution whose output would be empty
    assume((length - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1 >= 1)
    conv = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1](
        data.draw(sizes(B)), data.draw(sizes(B)), kernel, stride=stride, padding=padding, dilation=dilation,
        output_padding=output_padding, bias=data.draw(st.booleans()))
    x = torch.randn(B, conv.in_channels, *([length] * dims), dtype=torch.float64)
    probe = check_layer(exact, conv.double(), (x,), mode)
    assert probe.coverage["layer.weight"] == "conv-transpose"


@FEW
@given(data=st.data(), mode=MODES)
def test_prelu_after_a_linear_width_equal_to_batch(exact, data, mode):
    B = draw_batch(data)
    width = data.draw(sizes(B))
    prelu = nn.PReLU(data.draw(st.sampled_from([1, width])), init=0.3)
    with torch.no_grad():
        prelu.weight.uniform_(-1, 1)
    spatial = tuple(data.draw(st.lists(sizes(B), max_size=2)))
    model = nn.Sequential(nn.Linear(3, width), nn.Unflatten(1, (width, *([1] * len(spatial)))), prelu) if not spatial \
        else prelu
    x = torch.randn(B, 3) if not spatial else torch.randn(B, width, *spatial)
    probe = check_layer(exact, model.double(), (x.double(),), mode)
    assert probe.coverage["layer.2.weight" if not spatial else "layer.weight"] == "prelu"


@pytest.mark.parametrize("per_channel", [True, False])
def test_prelu_per_channel_and_shared_on_a_feature_map(exact, per_channel):
    torch.manual_seed(5)
    prelu = nn.PReLU(3 if per_channel else 1).double()
    with torch.no_grad():
        prelu.weight.uniform_(-1, 1)
    check_layer(exact, prelu, (torch.randn(3, 3, 4, dtype=torch.float64),), "score")  # B == C


@FEW
@given(data=st.data(), mode=MODES)
def test_timm_layer_scale(exact, data, mode):
    layers = pytest.importorskip("timm.layers")
    B = draw_batch(data)
    d = data.draw(sizes(B))
    if data.draw(st.booleans()):
        layer, x = layers.LayerScale(d, init_values=0.5), torch.randn(B, data.draw(sizes(B)), d)
    else:
        layer, x = layers.LayerScale2d(d, init_values=0.5), torch.randn(B, d, data.draw(sizes(B)), 2)
    with torch.no_grad():
        layer.gamma.normal_()
    probe = check_layer(exact, layer.double(), (x.double(),), mode)
    assert probe.coverage["layer.gamma"] == "layerscale"


@pytest.mark.parametrize("two_d", [False, True])
def test_timm_layer_scale_fixed(exact, two_d):
    layers = pytest.importorskip("timm.layers")
    torch.manual_seed(9)
    layer = (layers.LayerScale2d if two_d else layers.LayerScale)(3, init_values=0.5)
    nn.init.normal_(layer.gamma)
    x = torch.randn(3, 3, 2, 4) if two_d else torch.randn(3, 2, 3)  # B == C, other dims apart
    check_layer(exact, layer.double(), (x.double(),), "score")


def test_timm_layer_scale_in_place_is_refused_by_name():
    layers = pytest.importorskip("timm.layers")
    with pytest.raises(ValueError, match=r"gamma.*LayerScale.*inplace=True"):
        GradNormProbe(nn.Sequential(nn.Linear(2, 3), layers.LayerScale(3, inplace=True)))


class PositionsAndTokens(nn.Module):
    """Token embedding plus a position embedding looked up with (1, T) ids shared by the batch."""

    def __init__(self, vocab: int, d: int, **options):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d, **options)
        self.positions = nn.Embedding(8, d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tokens(ids) + self.positions(torch.arange(ids.shape[1])[None])


@FEW
@given(data=st.data(), mode=MODES)
def test_embedding_padding_max_norm_and_shared_positions(exact, data, mode):
    B = draw_batch(data)
    T, vocab = data.draw(sizes(B)), data.draw(st.integers(2, 6))
    options = {"padding_idx": data.draw(st.sampled_from([None, 0, -1])), "max_norm": data.draw(st.sampled_from([None, 1.0]))}
    model = PositionsAndTokens(vocab, data.draw(sizes(B)), **options).double()
    ids = torch.randint(0, vocab, (B, T))
    check_layer(exact, model, (ids,), mode)


def test_frequency_scaled_embedding_is_refused_by_name():
    with pytest.raises(ValueError, match=r"tokens\.weight.*scale_grad_by_freq"):
        GradNormProbe(PositionsAndTokens(5, 3, scale_grad_by_freq=True))


def test_one_dimensional_ids_are_refused_by_name():
    model = PositionsAndTokens(5, 3)
    model.forward = lambda ids: model.tokens(ids) + model.positions(torch.arange(ids.shape[1]))
    with GradNormProbe(model) as probe:
        with pytest.raises(ValueError, match=r"'positions'.*\(4,\).*\(1, T\)"):
            model(torch.randint(0, 5, (4, 4)))
        assert probe.coverage["positions.weight"] == "embedding"


@FEW
@given(data=st.data(), mode=MODES)
def test_embedding_bag(exact, data, mode):
    B, vocab = draw_batch(data), data.draw(st.integers(2, 6))
    bag_mode = data.draw(st.sampled_from(["sum", "mean"]))
    padding_idx = data.draw(st.sampled_from([None, 0]))
    weighted = bag_mode == "sum" and data.draw(st.booleans())
    bag = nn.EmbeddingBag(vocab, data.draw(sizes(B)), mode=bag_mode, padding_idx=padding_idx).double()
    N = data.draw(sizes(B))
    ids = torch.randint(0, vocab, (B, N))
    weights = torch.rand(B, N, dtype=torch.float64) if weighted else None
    if data.draw(st.booleans()):  # 2-D: one bag per row
        inputs = (ids,) if weights is None else (ids, None, weights)
        forward_one = lambda m, i: m(*(t if t is None else t[i:i + 1] for t in inputs))  # noqa: E731
        exact(bag_readout(bag), lambda m: m(*inputs), forward_one, B, mode=mode)
        return
    lengths = torch.randint(0, N + 1, (B,))
    flat = torch.cat([ids[i, :lengths[i]] for i in range(B)])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    flat_weights = None if weights is None else torch.cat([weights[i, :lengths[i]] for i in range(B)])

    def forward_one(m, i):
        one = None if flat_weights is None else flat_weights[offsets[i]:offsets[i] + lengths[i]]
        return m(flat[offsets[i]:offsets[i] + lengths[i]], torch.zeros(1, dtype=torch.long), one)

    exact(bag_readout(bag), lambda m: m(flat, offsets, flat_weights), forward_one, B, mode=mode)


def bag_readout(bag: nn.EmbeddingBag) -> nn.Module:
    """(B,) losses from the bags (one per example) through a fixed random readout."""
    return Readout(bag, (bag.embedding_dim,)).double()


@FEW
@given(data=st.data(), mode=MODES)
def test_instance_norm_and_eval_batch_norm(exact, data, mode):
    B, C, dims = draw_batch(data), data.draw(st.integers(1, 3)), data.draw(st.sampled_from([1, 2]))
    spatial = (data.draw(st.integers(2, 4)),) * dims
    kind = data.draw(st.sampled_from(["instance", "instance-running", "batch"]))
    if kind == "batch":
        layer = (nn.BatchNorm1d, nn.BatchNorm2d)[dims - 1](C)
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2)
        layer.eval()
    else:
        layer = (nn.InstanceNorm1d, nn.InstanceNorm2d)[dims - 1](C, affine=True, track_running_stats=kind != "instance")
        layer.train(data.draw(st.booleans()) or kind == "instance")
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    check_layer(exact, layer.double(), (torch.randn(B, C, *spatial, dtype=torch.float64),), mode)


def test_batch_norm_in_training_mode_is_refused_by_name():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    with GradNormProbe(model), pytest.raises(ValueError, match=r"layer '1': BatchNorm1d normalizes with the batch's statistics"):
        model(torch.randn(4, 2))


@FEW
@given(data=st.data(), mode=MODES)
def test_linear_and_hf_conv1d_with_leading_dims_equal_to_B(exact, data, mode):
    transformers = pytest.importorskip("transformers")
    B = draw_batch(data)
    lead = tuple(data.draw(st.lists(sizes(B), max_size=2)))
    d_in, d_out = data.draw(sizes(B)), data.draw(sizes(B))
    if data.draw(st.booleans()):
        layer, name = nn.Linear(d_in, d_out, bias=data.draw(st.booleans())), "linear"
    else:
        layer, name = transformers.pytorch_utils.Conv1D(d_out, d_in), "conv1d"
        nn.init.normal_(layer.weight)
    probe = check_layer(exact, layer.double(), (torch.randn(B, *lead, d_in, dtype=torch.float64),), mode)
    assert probe.coverage["layer.weight"] == name


def _bag_offsets() -> tuple:
    return torch.tensor([1, 0, 2, 0, 3, 3]), torch.tensor([0, 2, 2, 4]), torch.rand(6, dtype=torch.float64)


FIXED = {  # one deterministic configuration per rule, beside the drawn ones (B == 3 and sizes equal to it)
    "layernorm (2, 3)": lambda: (nn.LayerNorm((2, 3)), (torch.randn(3, 3, 2, 3),)),
    "groupnorm 2 of 4": lambda: (nn.GroupNorm(2, 4), (torch.randn(3, 4, 3),)),
    "conv2d stride 2 pad 1 dilation 2 groups 2": lambda: (nn.Conv2d(4, 2, 3, stride=2, padding=1, dilation=2, groups=2),
                                                         (torch.randn(3, 4, 7, 7),)),
    "conv1d reflect": lambda: (nn.Conv1d(3, 3, 3, padding=2, padding_mode="reflect"), (torch.randn(3, 3, 5),)),
    "conv-transpose2d stride 2 pad 1 dilation 2 output_padding 1": lambda: (
        nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, dilation=2, output_padding=1), (torch.randn(3, 3, 3, 3),)),
    "conv-transpose1d output_padding >= stride": lambda: (
        nn.ConvTranspose1d(3, 3, 2, stride=1, dilation=2, output_padding=1), (torch.randn(3, 3, 4),)),
    "embedding padding_idx + shared positions": lambda: (PositionsAndTokens(5, 3, padding_idx=0),
                                                         (torch.tensor([[0, 1, 2], [3, 0, 0], [4, 4, 1]]),)),
    "embeddingbag mean padding_idx": lambda: (nn.EmbeddingBag(5, 3, mode="mean", padding_idx=0),
                                              (torch.tensor([[0, 1, 1], [2, 0, 0], [3, 4, 0]]),)),
}


@pytest.mark.parametrize("name", list(FIXED))
def test_fixed_configurations(exact, name):
    torch.manual_seed(6)
    layer, inputs = FIXED[name]()
    check_layer(exact, layer.double(), tuple(t.double() if t.is_floating_point() else t for t in inputs), "score")


def test_embedding_bag_offsets_and_per_sample_weights(exact):
    torch.manual_seed(7)
    bag = nn.EmbeddingBag(5, 3, mode="sum").double()
    flat, offsets, weights = _bag_offsets()
    lengths = torch.diff(offsets, append=torch.tensor([flat.shape[0]]))

    def one(m, i):
        part = slice(offsets[i], offsets[i] + lengths[i])
        return m(flat[part], torch.zeros(1, dtype=torch.long), weights[part])

    exact(bag_readout(bag), lambda m: m(flat, offsets, weights), one, 4)


def test_a_module_named_like_an_rms_norm_that_computes_something_else_is_refused_by_name():
    class GatedRMSNorm(nn.Module):
        def __init__(self, d: int):
            super().__init__()
            self.weight, self.eps = nn.Parameter(torch.ones(d)), 1e-6

        def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
            x = x * torch.sigmoid(gate) if gate is not None else x
            return self.weight * x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps)

    model = GatedRMSNorm(3)
    x = torch.randn(2, 3)
    with GradNormProbe(model) as probe:
        assert probe.score(model(x).sum(1)).shape == (2,)  # ungated: the RMSNorm rule holds
    model = GatedRMSNorm(3)
    with GradNormProbe(model), pytest.raises(ValueError, match=r"layer '': GatedRMSNorm: the output is not weight \* x_hat"):
        model(x, torch.randn(2, 3))


class Recurrent(nn.Module):
    """(B,) losses from an LSTM's, GRU's or RNN's outputs and final hidden state, with or without h0."""

    def __init__(self, rnn: nn.Module, with_h0: bool):
        super().__init__()
        self.rnn, self.with_h0 = rnn, with_h0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rnn, batch_dim = self.rnn, 0 if self.rnn.batch_first else 1
        h0 = torch.ones(rnn.num_layers * (1 + rnn.bidirectional), x.shape[batch_dim], rnn.hidden_size, dtype=x.dtype) * 0.3
        lstm = isinstance(rnn, nn.LSTM)
        hx = ((h0, -h0) if lstm else h0) if self.with_h0 else None
        out, state = rnn(x, hx)
        h_n = state[0] if lstm else state
        return torch.tanh(out).movedim(batch_dim, 0).flatten(1).sum(1) + h_n.square().sum(dim=(0, 2))


@FEW
@given(data=st.data(), mode=MODES)
def test_lstm_gru_rnn(exact, data, mode):
    B = draw_batch(data, 3)
    T, width = data.draw(sizes(B)), data.draw(sizes(B))
    rnn = data.draw(st.sampled_from([nn.LSTM, nn.GRU, nn.RNN]))(
        data.draw(sizes(B)), width, num_layers=data.draw(st.integers(1, 2)), bidirectional=data.draw(st.booleans()),
        bias=data.draw(st.booleans()), batch_first=data.draw(st.booleans()))
    x = torch.randn((B, T, rnn.input_size) if rnn.batch_first else (T, B, rnn.input_size), dtype=torch.float64)
    batch_dim = 0 if rnn.batch_first else 1
    model = Recurrent(rnn, data.draw(st.booleans())).double()
    exact(model, lambda m: m(x), lambda m, i: m(x.narrow(batch_dim, i, 1)), B, mode=mode)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_lstm_gru_rnn_two_layers_bidirectional(exact, kind):
    torch.manual_seed(8)
    options = {"nonlinearity": "relu"} if kind is nn.RNN else {}
    model = Recurrent(kind(3, 3, num_layers=2, bidirectional=True, **options), with_h0=True).double()
    x = torch.randn(3, 3, 3, dtype=torch.float64)  # (T, B, in) with T == B == width
    exact(model, lambda m: m(x), lambda m, i: m(x[:, i:i + 1]), 3)
