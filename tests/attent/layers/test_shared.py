"""Tensors the batch shares are found through the graph, never read as batched from a size that
happens to equal B: a probed layer whose output reaches the loss broadcast over the batch (relative
position buckets (T, T) looked up once per forward, as T5-style encoders do) is exact whatever its
sizes where every use of its output is a view added (or expanded) over the batch, and is refused by
name otherwise; the T5, UMT5 and MPNet rules expand their biases to the batch first; broadcasts over
other dims of size B are not mistaken for the batch. The oracle is each example's own forward."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attent.probe import GradNormProbe

B = 3


class RelativeEncoder(nn.Module):
    """Two attention layers whose scores get one bias looked up with (T, T) relative-position
    buckets, computed once per forward and broadcast over the batch (implicitly, or with an explicit
    expand and a copy); ``mlp`` adds a continuous bias, a Linear on the (T, T, 1) relative distances,
    and has the second layer subtract the bias instead of adding it."""

    def __init__(self, expand: bool, mlp: bool = False, vocab: int = 11, d: int = 8, heads: int = 2,
                 buckets: int = 5) -> None:
        super().__init__()
        self.emb, self.rel = nn.Embedding(vocab, d), nn.Embedding(buckets, heads)
        self.qkv, self.qkv2, self.head = nn.Linear(d, 3 * d), nn.Linear(d, 3 * d), nn.Linear(d, vocab)
        self.distance = nn.Linear(1, heads) if mlp else None
        self.expand, self.heads, self.buckets = expand, heads, buckets

    def attend(self, qkv: nn.Linear, x: torch.Tensor, bias: torch.Tensor, subtract: bool = False) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in qkv(x).chunk(3, dim=-1))
        scores = q @ k.transpose(-1, -2)
        mixed = torch.softmax(scores - bias if subtract else scores + bias, dim=-1) @ v
        return x + mixed.transpose(1, 2).reshape(b, t, -1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        position = torch.arange(t)
        relative = position[None, :] - position[:, None]  # (T, T): no batch dim
        half = self.buckets // 2
        bias = self.rel(relative.clamp(-half, half) + half).permute(2, 0, 1)  # (H, T, T)
        if self.distance is not None:
            bias = bias - self.distance(relative[..., None].float()).permute(2, 0, 1)
        bias = bias.unsqueeze(0)  # (1, H, T, T)
        if self.expand:
            bias = bias.expand(b, -1, -1, -1).contiguous()
        first = self.attend(self.qkv, self.emb(ids), bias)
        return self.head(self.attend(self.qkv2, first, bias, subtract=self.distance is not None))


def token_losses(model: nn.Module, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(ids)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(ids.shape).mean(1)


def encoder_check(exact, model: nn.Module, T: int, mode: str, **options) -> GradNormProbe:
    ids, targets = torch.randint(0, 11, (B, T)), torch.randint(0, 11, (B, T))
    return exact(model, lambda m: token_losses(m, ids, targets),
                 lambda m, i: token_losses(m, ids[i:i + 1], targets[i:i + 1]), B, mode=mode, **options)


@pytest.mark.parametrize("T", [B, B + 1, B - 1])  # T == B is the case a size cannot tell apart
@pytest.mark.parametrize("expand", [False, True])
@pytest.mark.parametrize("mode", ["score", "backward"])
def test_relative_position_buckets_shared_by_the_batch_are_exact_whatever_their_sizes(exact, T, expand, mode):
    torch.manual_seed(T)
    probe = encoder_check(exact, RelativeEncoder(expand), T, mode)
    assert probe.coverage["rel.weight"] == "embedding"


@pytest.mark.parametrize("route", ["separate", "fused"])
@pytest.mark.parametrize("mode", ["score", "backward"])
def test_a_linear_on_batch_free_distances_and_a_subtracted_bias_are_exact_with_T_equal_to_B(exact, mode, route):
    torch.manual_seed(5)
    model = RelativeEncoder(expand=False, mlp=True)
    ids, targets = torch.randint(0, 11, (B, B)), torch.randint(0, 11, (B, B))
    exact(model, lambda m: token_losses(m, ids, targets), lambda m, i: token_losses(m, ids[i:i + 1], targets[i:i + 1]), B,
          mode=mode, weight_grad=route)
    if mode == "backward":  # the training gradients too, the shared linear's formed with its norms on the fused route
        want = torch.autograd.grad(token_losses(model, ids, targets).mean(), list(model.parameters()))
        for p, g in zip(model.parameters(), want):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


class Squashed(RelativeEncoder):
    """The shared bias squashed (not a view) before it is added: its per-example gradient cannot be read
    from the sum."""

    def attend(self, qkv: nn.Linear, x: torch.Tensor, bias: torch.Tensor, subtract: bool = False) -> torch.Tensor:
        return super().attend(qkv, x, torch.tanh(bias), subtract)


class Embedded(RelativeEncoder):
    """The relative distances embedded, then projected by a Linear: the embedding lies below a shared
    layer, not a view of the sum."""

    def __init__(self) -> None:
        super().__init__(expand=False)
        self.project = nn.Linear(self.heads, self.heads)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        position = torch.arange(t)
        half = self.buckets // 2
        bias = self.project(self.rel((position[None, :] - position[:, None]).clamp(-half, half) + half))
        return self.head(self.attend(self.qkv, self.emb(ids), bias.permute(2, 0, 1)))


@pytest.mark.parametrize("model, layer", [(Squashed, "rel"), (Embedded, "rel")])
@pytest.mark.parametrize("mode", ["score", "backward"])
def test_a_shared_layer_without_a_view_into_the_sum_is_refused_by_name(model, layer, mode):
    torch.manual_seed(6)
    net = model(expand=False) if model is Squashed else model()
    ids, targets = torch.randint(0, 11, (B, B)), torch.randint(0, 11, (B, B))
    with GradNormProbe(net) as probe:
        losses = token_losses(net, ids, targets)
        with pytest.raises(ValueError, match=rf"layer '{layer}' computes a tensor the batch shares.*dim 0 of size 3"):
            probe.score(losses) if mode == "score" else probe.backward(losses)


def test_a_layer_output_added_to_every_examples_loss_is_refused_by_name():
    torch.manual_seed(1)
    model = RelativeEncoder(expand=False)
    aux = nn.Linear(4, 1)
    model.aux = aux
    ids, targets = torch.randint(0, 11, (B, B)), torch.randint(0, 11, (B, B))
    with GradNormProbe(model) as probe:
        losses = token_losses(model, ids, targets) + aux(torch.ones(B, 4)).sum() / B  # one number, every example's
        with pytest.raises(ValueError, match=r"layer 'aux' computes a tensor the batch shares"):
            probe.score(losses)


class Gated(nn.Module):
    """Broadcasts over dims other than the batch, of size B on purpose: a per-example gate (B, 1, d)
    over the T == B positions, and a per-channel squeeze-excite gate (B, C, 1, 1) over W == B."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.inp, self.gate, self.conv, self.excite = nn.Linear(d, d), nn.Linear(d, d), nn.Conv2d(d, d, 1), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, T, d)
        h = self.inp(x) * torch.sigmoid(self.gate(x.mean(1, keepdim=True)))  # (B, T, d) * (B, 1, d)
        image = self.conv(h.transpose(1, 2).unsqueeze(2))  # (B, d, 1, T)
        scale = self.excite(image.mean((2, 3)))[:, :, None, None]  # (B, d, 1, 1)
        return (image * scale).square().mean((1, 2, 3))


@pytest.mark.parametrize("mode", ["score", "backward"])
def test_broadcasts_over_other_dims_of_size_B_are_not_taken_for_the_batch(exact, mode):
    torch.manual_seed(2)
    model, x = Gated(), torch.randn(B, B, 4)
    exact(model, lambda m: m(x), lambda m, i: m(x[i:i + 1]), B, mode=mode)


transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("mode", ["score", "backward"])
def test_umt5_relative_bias_with_T_equal_to_B_is_exact(exact, mode):
    torch.manual_seed(3)
    config = transformers.UMT5Config(vocab_size=40, d_model=8, d_kv=4, d_ff=B, num_layers=2, num_decoder_layers=1,
                                     num_heads=2, relative_attention_num_buckets=8, dropout_rate=0.0)
    model = transformers.UMT5EncoderModel(config).eval()
    ids = torch.randint(2, 40, (B, B))

    def loss(m, rows):
        return m(input_ids=ids[rows]).last_hidden_state.square().mean((1, 2))

    probe = exact(model, lambda m: loss(m, slice(None)), lambda m, i: loss(m, slice(i, i + 1)), B, mode=mode, rtol=1e-4)
    assert probe.coverage["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"] == "t5-relative-bias"


@pytest.mark.parametrize("mode", ["score", "backward"])
def test_mpnet_relative_bias_expanded_to_the_batch_with_T_equal_to_B_is_exact(exact, mode):
    torch.manual_seed(4)
    config = transformers.MPNetConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=B, max_position_embeddings=16, relative_attention_num_buckets=32,
                                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.MPNetModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(3, 40, (B, B))

    def loss(m, rows):
        return m(input_ids=ids[rows]).last_hidden_state.square().mean((1, 2))

    probe = exact(model, lambda m: loss(m, slice(None)), lambda m, i: loss(m, slice(i, i + 1)), B, mode=mode, rtol=1e-4)
    assert probe.coverage["encoder.relative_attention_bias.weight"] == "mpnet-relative-bias"


def test_a_torch_whose_graph_does_not_say_shapes_is_refused(monkeypatch):
    """Without the graph's shape metadata the shared-input check cannot run: the probe refuses to
    start rather than read a shared layer as batched."""
    import attent.probe as probe_module

    monkeypatch.setattr(probe_module, "GRAPH_METADATA", False)
    with pytest.raises(RuntimeError, match="cannot tell a layer the batch shares"):
        probe_module.GradNormProbe(torch.nn.Linear(3, 2))
    assert probe_module._graph_metadata_available()
