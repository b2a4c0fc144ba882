"""Where the examples are: declared (rules, containers' batch_first, OPT's flattened rows, the probe's
batch_dim), never guessed from a size that equals B; what cannot be known is refused by name."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attent.probe import GradNormProbe


class SequenceFirst(nn.Module):
    """An embedding reading (T, B) ids, a sequence-first encoder, a pooled (B, d) head."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.emb = nn.Embedding(11, d)
        layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=d, dropout=0.0, batch_first=False)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False, norm=nn.LayerNorm(d))
        self.head = nn.Linear(d, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.emb(ids)).mean(0))


@pytest.mark.parametrize("mode", ["score", "backward"])
def test_sequence_first_encoder_with_T_equal_to_B_and_width_equal_to_B(exact, mode):
    torch.manual_seed(0)
    model = SequenceFirst(d=4)
    ids, y = torch.randint(0, 11, (4, 4)), torch.tensor([0, 1, 1, 0])  # T == B == width

    def loss(m, cols):
        return F.cross_entropy(m(ids[:, cols]), y[cols], reduction="none")

    exact(model, lambda m: loss(m, slice(None)), lambda m, i: loss(m, slice(i, i + 1)), 4, mode=mode, batch_dim={"emb": 1})


def test_an_embedding_feeding_a_sequence_first_encoder_must_say_so_even_when_T_equals_B():
    model = SequenceFirst(d=4)
    with GradNormProbe(model), pytest.raises(ValueError, match=r"layer 'emb' keeps its examples at dim 0 and feeds "
                                                               r"'encoder'.*batch_dim=\{'emb': 1\}"):
        model(torch.randint(0, 11, (4, 4)))


def test_a_layer_without_its_examples_at_the_declared_dim_is_refused_by_name():
    model = nn.Sequential(nn.Embedding(11, 4), nn.Linear(4, 2))
    ids = torch.randint(0, 11, (5, 3))  # (T, B) read as (B, T) without batch_dim=1
    refused = r"layer '1', parameter 'weight'.*\(5, 3, 4\) has size 5 at dim 0.*batch_dim=\{'1': dim\}"
    with GradNormProbe(model) as probe, pytest.raises(ValueError, match=refused):
        probe.score(model(ids).sum(dim=(0, 2)))


class Flattening(nn.Module):
    """A model that runs its MLP on rows flattened to (B*T, d), as OPT does."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(-1, 3)).view(x.shape).sum(dim=(1, 2))


def test_flattened_rows_without_a_declared_layout_are_refused_by_name():
    with GradNormProbe(Flattening()) as probe, pytest.raises(ValueError, match=r"layer 'fc', parameter 'weight'.*size 6 at dim 0"):
        probe.score(probe.model(torch.randn(2, 3, 3)))


class Gains(nn.Module):
    """A ReZero scalar gain, a per-channel gain (products: exact) and a (1, d) weight used with F.linear."""

    def __init__(self, d: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), 0.5))
        self.scale = nn.Parameter(torch.randn(d))
        self.w = nn.Parameter(torch.randn(1, d))
        self.body = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.alpha * self.body(x)
        return (h * self.scale).sum(-1) + F.linear(h, self.w).squeeze(-1)


@pytest.mark.parametrize("mode", ["score", "backward"])
def test_scalar_and_per_channel_gains_with_width_equal_to_B(exact, mode):
    torch.manual_seed(2)
    model, x = Gains(3).double(), torch.randn(3, 3, dtype=torch.float64)  # B == width
    probe = exact(model, lambda m: m(x), lambda m, i: m(x[i:i + 1]), 3, mode=mode, params=["alpha", "scale", "body.weight"])
    assert probe.coverage == {"alpha": "gain", "scale": "gain", "body.weight": "linear"}


def test_a_2d_size_one_weight_is_refused_by_name_and_the_model_is_unchanged():
    torch.manual_seed(2)
    model, x = Gains(3), torch.randn(3, 3)  # B == width
    with pytest.raises(ValueError, match=r"w \(Gains\.w: .*\(1, 3\) is neither provably broadcast"):
        GradNormProbe(model)
    want = model(x)
    with GradNormProbe(model, allow_uncovered=True) as probe:
        assert model(x).shape == want.shape == (3,)
        assert probe.coverage["w"].startswith("uncovered") and probe.coverage["alpha"] == "gain"


def test_a_gain_used_other_than_as_a_product_is_refused_by_name():
    model = Gains(3)
    model.forward = lambda x: (x + model.alpha).sum(-1)
    with GradNormProbe(model, params=["alpha"]) as probe, pytest.raises(RuntimeError, match=r"alpha \(1 uses, 0 in"):
        probe.score(model(torch.randn(2, 3)))


def test_batch_from_every_input_not_from_a_shared_keyword_tensor_passed_first(exact):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=20, n_positions=8, n_embd=4, n_layer=1, n_head=2,
                                                                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    ids = torch.randint(0, 20, (3, 3))
    positions = torch.arange(3)[None]

    def loss(m, rows):
        logits = m(position_ids=positions, input_ids=ids[rows]).logits
        return logits.square().mean(dim=(1, 2))

    exact(model, lambda m: loss(m, slice(None)), lambda m, i: loss(m, slice(i, i + 1)), 3)


@pytest.mark.parametrize("mode", ["score", "backward"])
def test_a_batch_of_zero_gives_an_empty_result(mode):
    model = nn.Sequential(nn.Linear(3, 2))
    with GradNormProbe(model) as probe:
        losses = model(torch.randn(0, 3)).sum(1)
        got = probe.score(losses) if mode == "score" else probe.backward(losses)
    assert got.shape == (0,) and probe.per_layer == {}
    assert all(p.grad is None for p in model.parameters())


def test_results_are_detached_when_inputs_require_grad():
    model = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    x = torch.randn(4, 3, requires_grad=True)
    with GradNormProbe(model) as probe:
        got = probe.score(model(x).square().sum(1))
    assert not got.requires_grad and not any(v.requires_grad for v in probe.per_layer.values())


def test_an_error_in_a_rule_names_the_layer():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.gain

    from attent import factors, layers

    @layers.register_layer(Broken, params=("gain",))
    def _broken(module, args, output):
        return factors.Capture(output, lambda g: {"gain": factors.Diag(args[0][..., :2], g)})

    model = nn.Sequential(Broken())
    with GradNormProbe(model) as probe, pytest.raises(ValueError, match=r"layer '0', parameter 'gain'.*Diag factors"):
        probe.score(model(torch.randn(2, 3)).sum(1))


def test_a_parameter_used_outside_its_layer_call_is_refused_by_name():
    class FunctionalHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 3)

        def forward(self, ids):
            return F.linear(self.emb(ids), self.emb.weight).logsumexp(-1).sum(1)  # tied output, no module call

    model = FunctionalHead()
    with GradNormProbe(model) as probe, pytest.raises(RuntimeError, match=r"emb\.weight \(2 uses, 1 in its layers"):
        probe.score(model(torch.randint(0, 7, (2, 3))))


class Tokens(nn.Module):
    """A (1, N, d) position table read as ``pos[:, :T]`` (exact), or across the batch dim (refused)."""

    def __init__(self, read: str = "slice positions"):
        super().__init__()
        self.read = read
        self.pos = nn.Parameter(torch.randn(1, 5, 3))
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        pos = {"slice positions": lambda: self.pos[:, :T], "index batch": lambda: self.pos[0, :T],
               "slice batch": lambda: self.pos[:1, :T], "concatenate batch": lambda: torch.cat([self.pos, self.pos])[:1, :T]}
        return self.head(torch.tanh(x + pos[self.read]())).sum(dim=(1, 2))


def test_a_loose_parameter_sliced_along_another_dim_is_exact(exact):
    torch.manual_seed(4)
    x = torch.randn(3, 3, 3, dtype=torch.float64)  # T == B == width
    probe = exact(Tokens().double(), lambda m: m(x), lambda m, i: m(x[i:i + 1]), 3)
    assert probe.coverage["pos"] == "direct"


@pytest.mark.parametrize("read", ["index batch", "slice batch", "concatenate batch"])
def test_a_loose_parameter_read_across_the_batch_dim_is_refused_by_name(read):
    model = Tokens(read)
    with GradNormProbe(model) as probe, pytest.raises(RuntimeError, match=r"pos reaches (Select|Slice|Cat)Backward0"):
        probe.score(model(torch.randn(3, 3, 3)))


def test_a_submodule_called_alone_does_not_reuse_the_last_batch_size():
    transformers = pytest.importorskip("transformers")
    model = transformers.ViTModel(transformers.ViTConfig(image_size=8, patch_size=4, hidden_size=4, num_hidden_layers=1,
                                                         num_attention_heads=2, intermediate_size=4))
    with GradNormProbe(model):
        model(torch.randn(3, 3, 8, 8))
        with pytest.raises(ValueError, match=r"layer 'embeddings' needs the batch size.*outside a call of the probed model"):
            model.embeddings(torch.randn(1, 3, 8, 8))  # the loose tokens' owner, called outside model()
