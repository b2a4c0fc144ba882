"""GradNormProbe against brute-force per-example gradients on tiny real models (nothing downloaded).

The oracle differentiates each example's loss on its own (``autograd.grad(losses[i], params)``)
on the same forward graph, so padding, dropout masks and autocast are exactly those the probe saw;
one test also checks against ``torch.func`` per-example gradients of an independent forward.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from attent import _factor_norms, factors, layers
from attent.probe import GradNormProbe


def oracle(losses: torch.Tensor, params: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(B,) squared norms of each example's own gradient, and the mean over examples of the gradients."""
    norms, total = [], [torch.zeros_like(p) for p in params]
    for i in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        norms.append(sum(g.double().square().sum() for g in grads))
        total = [t + g / losses.shape[0] for t, g in zip(total, grads)]
    return torch.stack(norms), total


def lm_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean next-token loss over each example's valid (label != -100) positions."""
    shifted, targets = logits[:, :-1].float(), labels[:, 1:]
    token = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), reduction="none", ignore_index=-100)
    valid = (targets != -100).float()
    return (token.view(targets.shape) * valid).sum(1) / valid.sum(1).clamp(min=1)


def loop_oracle(model: nn.Module, forward_one, batch: int, params: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The oracle from independent forward passes of one example each: ``forward_one(model, i) -> (1,) loss``."""
    norms, total = [], [torch.zeros_like(p) for p in params]
    for i in range(batch):
        for p in model.parameters():
            p.grad = None
        forward_one(model, i).sum().backward()  # reentrant checkpointing takes backward() only
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
        norms.append(sum(g.double().square().sum() for g in grads))
        total = [t + g / batch for t, g in zip(total, grads)]
    return torch.stack(norms), total


def check(model: nn.Module, forward, *, params=None, mode: str = "score", rtol: float = 1e-4, forward_one=None,
          **probe_options) -> GradNormProbe:
    """Probe ``forward(model) -> losses`` in ``mode`` and compare with the oracle over the probed parameters
    (the same-graph oracle, or the one-example loop when ``forward_one`` is given)."""
    with GradNormProbe(model, params, **probe_options) as probe:
        chosen = [p for name, p in model.named_parameters() if name in probe.coverage and not probe.coverage[name].startswith("uncovered")]
        for p in model.parameters():
            p.grad = None
        losses = forward(model)
        if forward_one is None:
            expected, mean_grads = oracle(losses, chosen)
        else:
            expected, mean_grads = loop_oracle(model, forward_one, losses.shape[0], chosen)
            for p in model.parameters():
                p.grad = None
        got = probe.score(losses) if mode == "score" else probe.backward(losses, reduction="mean")
        torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=1e-9)
        assert sum(probe.per_layer.values()).shape == got.shape
        torch.testing.assert_close(sum(probe.per_layer.values()), got)
        if mode == "score":
            assert all(p.grad is None for p in model.parameters())
        else:
            for p, g in zip(chosen, mean_grads):
                torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    return probe


MODES = ("score", "backward")


class Mixed(nn.Module):
    """Embedding, LayerNorm, linears with and without bias, a loose broadcast parameter, a module called twice."""

    def __init__(self, vocab: int = 23, d: int = 6):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.start = nn.Parameter(torch.randn(1, 1, d))
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, 9)
        self.down = nn.Linear(9, d, bias=False)
        self.head = nn.Linear(d, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.start.expand(ids.shape[0], -1, -1), self.emb(ids)], dim=1)
        h = h + self.down(torch.tanh(self.up(self.norm(h))))
        h = h + self.down(torch.tanh(self.up(h)))  # up/down used twice: cross terms
        return self.head(h.mean(dim=1))


@pytest.mark.parametrize("mode", MODES)
def test_mixed_layers_loose_parameter_and_reused_modules(mode):
    torch.manual_seed(0)
    model = Mixed()
    ids = torch.randint(0, 23, (5, 7))
    ids[1, 3:] = 0
    y = torch.randint(0, 4, (5,))
    probe = check(model, lambda m: F.cross_entropy(m(ids), y, reduction="none"), mode=mode)
    assert probe.coverage == {"start": "direct", "emb.weight": "embedding", "norm.weight": "layernorm", "norm.bias": "layernorm",
                              "up.weight": "linear", "up.bias": "linear", "down.weight": "linear", "head.weight": "linear", "head.bias": "linear"}


def test_matches_torch_func_per_example_gradients_of_an_independent_forward():
    torch.manual_seed(1)
    model = Mixed().double()
    ids = torch.randint(1, 23, (6, 5))
    y = torch.randint(0, 4, (6,))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def example_loss(p, ids_i, y_i):
        return F.cross_entropy(functional_call(model, p, (ids_i[None],)), y_i[None])

    grads = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, ids, y)
    expected = sum(g.reshape(6, -1).square().sum(1) for g in grads.values())
    with GradNormProbe(model) as probe:
        got = probe.score(F.cross_entropy(model(ids), y, reduction="none"))
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-12)


def test_parameter_subset_and_per_layer_attribution():
    torch.manual_seed(2)
    model = Mixed()
    ids, y = torch.randint(1, 23, (4, 6)), torch.randint(0, 4, (4,))
    probe = check(model, lambda m: F.cross_entropy(m(ids), y, reduction="none"), params=["head.weight", "head.bias"])
    assert set(probe.per_layer) == {"head"} and set(probe.coverage) == {"head.weight", "head.bias"}


def _vit():
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=5, drop_rate=0.0)


@pytest.mark.parametrize("mode", MODES)
def test_timm_vit(mode):
    torch.manual_seed(3)
    model = _vit()
    x, y = torch.randn(3, 3, 32, 32), torch.randint(0, 5, (3,))
    probe = check(model, lambda m: F.cross_entropy(m(x), y, reduction="none"), mode=mode)
    assert probe.coverage["cls_token"] == "direct" and probe.coverage["pos_embed"] == "direct"
    assert probe.coverage["patch_embed.proj.weight"] == "conv"


def _padded_batch(vocab: int, lengths: list[int], width: int, pad_id: int = 0):
    ids = torch.randint(1, vocab, (len(lengths), width))
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids.masked_fill(mask == 0, pad_id)
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def _gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=61, n_positions=32, n_embd=24, n_layer=2, n_head=3,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


@pytest.mark.parametrize("mode", MODES)
def test_gpt2_tied_embeddings_padded(mode):
    torch.manual_seed(4)
    model = _gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    ids, mask, labels = _padded_batch(61, [9, 5, 7], 9)
    probe = check(model, lambda m: lm_losses(m(input_ids=ids, attention_mask=mask).logits, labels), mode=mode)
    assert probe.coverage["transformer.wte.weight"] == "embedding+linear"
    assert probe.coverage["transformer.h.0.attn.c_attn.weight"] == "conv1d"


def _llama(**extra):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=67, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, **extra)
    return transformers.LlamaForCausalLM(config)


@pytest.mark.parametrize("mode", MODES)
def test_llama_padded(mode):
    torch.manual_seed(5)
    model = _llama()
    ids, mask, labels = _padded_batch(67, [8, 3, 6, 8], 8)
    probe = check(model, lambda m: lm_losses(m(input_ids=ids, attention_mask=mask).logits, labels), mode=mode)
    assert probe.coverage["model.norm.weight"] == "rmsnorm"


@pytest.mark.parametrize("mode", MODES)
def test_bert_sequence_classification_padded(mode):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(6)
    config = transformers.BertConfig(vocab_size=53, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                                     intermediate_size=37, max_position_embeddings=16, num_labels=3,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.BertForSequenceClassification(config)
    ids, mask, _ = _padded_batch(53, [6, 2, 5], 6)
    y = torch.randint(0, 3, (3,))
    check(model, lambda m: F.cross_entropy(m(input_ids=ids, attention_mask=mask).logits, y, reduction="none"), mode=mode)


class EncoderClassifier(nn.Module):
    def __init__(self, batch_first: bool, vocab: int = 31, d: int = 16):
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=24, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 3)

    def forward(self, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """ids: (B, T) when batch_first, else (T, B); padding: (B, T) True at padded positions."""
        h = self.encoder(self.emb(ids), src_key_padding_mask=padding)
        h = h if self.batch_first else h.transpose(0, 1)
        keep = (~padding).float()[..., None]
        return self.head((h * keep).sum(1) / keep.sum(1))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_multihead_attention(mode, batch_first):
    torch.manual_seed(7)
    model = EncoderClassifier(batch_first)
    ids = torch.randint(0, 31, (4, 6) if batch_first else (6, 4))
    padding = torch.zeros(4, 6, dtype=torch.bool)
    padding[2, 4:] = True
    y = torch.randint(0, 3, (4,))
    with torch.no_grad():
        unprobed = model(ids, padding)
    batch_dim = None if batch_first else {"emb": 1}  # the encoder's layers follow its batch_first
    with GradNormProbe(model, batch_dim=batch_dim):
        torch.testing.assert_close(model(ids, padding), unprobed, rtol=1e-5, atol=1e-6)
    probe = check(model, lambda m: F.cross_entropy(m(ids, padding), y, reduction="none"), mode=mode, batch_dim=batch_dim)
    assert probe.coverage["encoder.layers.0.self_attn.in_proj_weight"] == "multihead-attention"


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_cross_attention_matches_module(need_weights):
    torch.manual_seed(8)
    mha = nn.MultiheadAttention(12, 3, batch_first=True)
    q, kv = torch.randn(3, 5, 12), torch.randn(3, 7, 12)
    attn_mask = torch.rand(5, 7) > 0.8
    attn_mask[:, 0] = False
    with torch.no_grad():
        expected = mha(q, kv, kv, attn_mask=attn_mask, need_weights=need_weights)
    with GradNormProbe(mha) as probe:
        got = mha(q, kv, kv, attn_mask=attn_mask, need_weights=need_weights)
        torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
        if need_weights:
            torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-6)
        losses = got[0].square().sum(dim=(1, 2))
        want, _ = oracle(losses, list(mha.parameters()))
        torch.testing.assert_close(probe.score(losses).double(), want, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_peft_lora_only_llama(mode):
    peft = pytest.importorskip("peft")
    torch.manual_seed(9)
    model = peft.get_peft_model(_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    for module in model.modules():
        if hasattr(module, "lora_B"):
            nn.init.normal_(module.lora_B["default"].weight, std=0.1)
    ids, mask, labels = _padded_batch(67, [7, 4, 7], 7)
    probe = check(model, lambda m: lm_losses(m(input_ids=ids, attention_mask=mask).logits, labels), mode=mode)
    assert probe.coverage and all("lora_" in name for name in probe.coverage)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing(mode, reentrant):
    torch.manual_seed(10)
    model = _llama()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.train()
    ids, mask, labels = _padded_batch(67, [6, 6, 4], 6)
    forward = lambda m: lm_losses(m(input_ids=ids, attention_mask=mask).logits, labels)  # noqa: E731
    if mode == "score" and reentrant:
        with GradNormProbe(model) as probe, pytest.raises(RuntimeError, match="use_reentrant=False"):
            probe.score(forward(model))
        return
    def forward_one(m, i):
        return lm_losses(m(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1]).logits, labels[i:i + 1])

    check(model, forward, mode=mode, forward_one=forward_one if reentrant else None, rtol=1e-4 if not reentrant else 2e-4)


def test_dropout_norms_are_those_of_the_forward_pass():
    torch.manual_seed(11)
    model = _gpt2()
    model.config.resid_pdrop = 0.3
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.3
    model.train()
    ids, mask, labels = _padded_batch(61, [8, 8, 5], 8)
    check(model, lambda m: lm_losses(m(input_ids=ids, attention_mask=mask).logits, labels))


def test_autocast_bfloat16():
    torch.manual_seed(12)
    model = Mixed()
    ids, y = torch.randint(1, 23, (4, 6)), torch.randint(0, 4, (4,))

    def forward(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.cross_entropy(m(ids).float(), y, reduction="none")

    check(model, forward, rtol=3e-2)


def test_eval_mode_and_repeated_calls():
    torch.manual_seed(13)
    model = _vit().eval()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2,))
    with GradNormProbe(model) as probe:
        first = probe.score(F.cross_entropy(model(x), y, reduction="none"))
        with torch.no_grad():
            model(x)  # forward passes without gradients are not recorded
        second = probe.score(F.cross_entropy(model(x), y, reduction="none"))
    torch.testing.assert_close(first, second, rtol=1e-5, atol=0)


def test_register_layer_for_a_custom_module():
    class Scale(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.gamma = nn.Parameter(torch.randn(d))

        def forward(self, x):
            return x * self.gamma

    @layers.register_layer(Scale, params=("gamma",), name="scale")
    def _scale(module, args, output):
        x = args[0]
        return factors.Capture(output, lambda g: {"gamma": factors.Diag(x, g)})

    torch.manual_seed(14)
    model = nn.Sequential(nn.Linear(5, 7), Scale(7), nn.Linear(7, 2))
    x, y = torch.randn(6, 3, 5), torch.randn(6, 3, 2)
    probe = check(model, lambda m: (m(x) - y).square().mean(dim=(1, 2)))
    assert probe.coverage["1.gamma"] == "scale"


def test_uncovered_parameters_are_named_or_left_out():
    model = nn.Sequential(nn.ConvTranspose1d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 9, 2))
    with pytest.raises(ValueError, match=r"0\.weight \(ConvTranspose1d\.weight: groups > 1\)"):
        GradNormProbe(model)
    torch.manual_seed(15)
    x, y = torch.randn(4, 4, 7), torch.randint(0, 2, (4,))
    probe = check(model, lambda m: F.cross_entropy(m(x), y, reduction="none"), allow_uncovered=True)
    assert probe.coverage["0.weight"].startswith("uncovered") and probe.coverage["2.weight"] == "linear"


def test_bad_input_gives_clear_errors_and_hooks_are_removed():
    torch.manual_seed(16)
    model = Mixed()
    ids, y = torch.randint(1, 23, (3, 4)), torch.randint(0, 4, (3,))
    probe = GradNormProbe(model)
    with pytest.raises(RuntimeError, match="already attached"):
        GradNormProbe(model.head)
    losses = F.cross_entropy(model(ids), y, reduction="none")
    with pytest.raises(ValueError, match=r"1-D tensor.*\(3, 1\)"):
        probe.score(losses[:, None])
    with pytest.raises(ValueError, match="does not require grad"):
        probe.score(losses.detach())
    with pytest.raises(ValueError, match="reduction"):
        probe.backward(losses, reduction="max")
    probe.score(losses)
    with pytest.raises(RuntimeError, match="already scored"):
        probe.score(losses)
    other = nn.Linear(3, 1)
    with pytest.raises(RuntimeError, match="does not depend on any probed layer"):
        probe.score(other(torch.randn(3, 3)).squeeze(1))
    with pytest.raises(ValueError, match=r"layer .*batch size 3 \(the length of losses\)"):
        two = F.cross_entropy(model(ids[:2]), y[:2], reduction="none")
        probe.score(torch.cat([two, two[:1]]))
    model.extra = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="changed after the probe was attached"):
        probe.score(F.cross_entropy(model(ids), y, reduction="none"))
    del model.extra
    probe.remove()
    hooks = [m._forward_hooks for m in model.modules()] + [m._forward_pre_hooks for m in model.modules()]
    assert not any(hooks)
    with pytest.raises(RuntimeError, match="removed"):
        probe.score(F.cross_entropy(model(ids), y, reduction="none"))
    with GradNormProbe(model) as again:  # a removed probe frees the model for the next one
        assert again.score(F.cross_entropy(model(ids), y, reduction="none")).shape == (3,)
    assert isinstance(model._parameters["start"], nn.Parameter)


def test_failing_forward_restores_loose_parameters():
    model = _vit()
    cls_token = model.cls_token
    with GradNormProbe(model):
        with pytest.raises(AssertionError, match="Input height"):
            model(torch.randn(2, 3, 31, 32))
        assert model.cls_token is cls_token and isinstance(model._parameters["cls_token"], nn.Parameter)
    assert all("forward" not in m.__dict__ for m in model.modules())


def _checkpointed_llama(reentrant: bool):
    model = _llama()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    return model.train()


def _lm_case(build, vocab: int, lengths: list[int], one_by_one: bool = False):
    """A language model's case; ``one_by_one``: the oracle runs one forward pass per example
    (reentrant checkpointing takes backward() only)."""
    def case():
        model = build()
        ids, mask, labels = _padded_batch(vocab, lengths, max(lengths))

        def forward_one(m, i):
            return lm_losses(m(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1]).logits, labels[i:i + 1])

        options = {"forward_one": forward_one} if one_by_one else {}
        return model, lambda m: lm_losses(m(input_ids=ids, attention_mask=mask).logits, labels), options
    return case


def _mixed_case():
    model = Mixed()
    ids, y = torch.randint(1, 23, (5, 7)), torch.randint(0, 4, (5,))
    return model, lambda m: F.cross_entropy(m(ids), y, reduction="none"), {}


def _encoder_case():
    model = EncoderClassifier(batch_first=False)
    ids, padding, y = torch.randint(0, 31, (6, 4)), torch.zeros(4, 6, dtype=torch.bool), torch.randint(0, 3, (4,))
    padding[2, 4:] = True
    return model, lambda m: F.cross_entropy(m(ids, padding), y, reduction="none"), {"batch_dim": {"emb": 1}}


FUSED_CASES = {  # name: (case, whether an nn.Linear weight used once is probed)
    "mixed (a module called twice)": (_mixed_case, True),
    "sequence-first encoder": (_encoder_case, True),
    "llama": (_lm_case(_llama, 67, [8, 3, 6, 8]), True),
    "gpt2 (Conv1D layers, a tied head)": (_lm_case(_gpt2, 61, [9, 5, 7]), False),
    "llama, non-reentrant checkpointing": (_lm_case(lambda: _checkpointed_llama(False), 67, [6, 6, 4]), True),
    "llama, reentrant checkpointing": (_lm_case(lambda: _checkpointed_llama(True), 67, [6, 6, 4], one_by_one=True), True),
}


@pytest.mark.parametrize(("case", "fuses"), FUSED_CASES.values(), ids=FUSED_CASES.keys())
def test_fused_weight_gradients_on_real_models(case, fuses, monkeypatch):
    """``weight_grad="fused"``: the weight gradients of nn.Linear layers used once come from the
    probe's fused op, and ``.grad`` and the norms still match the oracle (the shapes are in
    ``test_probe_fused.py``)."""
    torch.manual_seed(17)
    model, forward, options = case()
    fused = []
    original = _factor_norms.weight_grad_and_norm_sq
    monkeypatch.setattr(_factor_norms, "weight_grad_and_norm_sq", lambda *args: fused.append(args) or original(*args))
    check(model, forward, mode="backward", weight_grad="fused", rtol=2e-4, **options)
    assert bool(fused) == fuses
