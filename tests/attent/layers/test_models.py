"""Whole models built from small configs (nothing downloaded) against each example's own gradient:
OPT (learned positions from the attention mask, MLP on flattened rows), BART (offset learned
positions, scaled embeddings shared three ways), T5 (relative attention bias shared by the layers,
T5LayerNorm), Mistral, Qwen2, HF ViT, timm ViTs with LayerScale, register tokens and qk-norm, CaiT
and EVA, torch's nn.Transformer and decoder layer either way round, Opacus's DPLSTM/DPGRU.
Batch and sequence sizes coincide on purpose (T == B)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")

B = 3


def padded(vocab: int, lengths: list[int], width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, width) ids with right padding (id 1) and the attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, 1), mask


def token_mean(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean cross-entropy over each example's labelled (label != -100) positions."""
    token = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none", ignore_index=-100)
    valid = (labels != -100).float()
    return (token.view(labels.shape) * valid).sum(1) / valid.sum(1).clamp(min=1)


def check_causal_lm(exact, model, vocab: int, seed: int, mode: str = "score"):
    torch.manual_seed(seed)
    ids, mask = padded(vocab, [B, 2, B], B, seed)  # T == B
    labels = ids.masked_fill(mask == 0, -100)[:, 1:]

    def loss(m, rows):
        return token_mean(m(input_ids=ids[rows], attention_mask=mask[rows]).logits[:, :-1], labels[rows])

    return exact(model.eval(), lambda m: loss(m, slice(None)), lambda m, i: loss(m, slice(i, i + 1)), B, mode=mode, rtol=1e-4)


def check_seq2seq(exact, model, vocab: int, seed: int, mode: str = "score"):
    torch.manual_seed(seed)
    ids, mask = padded(vocab, [B, 1, 2], B, seed)
    target, target_mask = padded(vocab, [2, B, 1], B, seed + 1)
    labels = target.masked_fill(target_mask == 0, -100)

    def loss(m, rows):
        out = m(input_ids=ids[rows], attention_mask=mask[rows], decoder_input_ids=target[rows],
                decoder_attention_mask=target_mask[rows])
        return token_mean(out.logits, labels[rows])

    return exact(model.eval(), lambda m: loss(m, slice(None)), lambda m, i: loss(m, slice(i, i + 1)), B, mode=mode, rtol=1e-4)


@pytest.mark.parametrize("mode", ["score", "backward"])
def test_opt(exact, mode):
    torch.manual_seed(0)
    config = transformers.OPTConfig(vocab_size=40, hidden_size=B, ffn_dim=B, num_hidden_layers=2, num_attention_heads=1,
                                    max_position_embeddings=16, word_embed_proj_dim=B, dropout=0.0, attention_dropout=0.0)
    probe = check_causal_lm(exact, transformers.OPTForCausalLM(config), 40, seed=1, mode=mode)
    assert probe.coverage["model.decoder.embed_positions.weight"] == "embedding"
    assert probe.coverage["model.decoder.layers.0.fc1.weight"] == "linear"


def test_bart(exact):
    torch.manual_seed(0)
    config = transformers.BartConfig(vocab_size=40, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                     decoder_attention_heads=2, encoder_ffn_dim=B, decoder_ffn_dim=12, max_position_embeddings=16,
                                     dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1)
    probe = check_seq2seq(exact, transformers.BartForConditionalGeneration(config), 40, seed=2)
    assert probe.coverage["model.encoder.embed_positions.weight"] == "embedding"


@pytest.mark.parametrize("mode", ["score", "backward"])
def test_t5(exact, mode):
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=40, d_model=8, d_kv=4, d_ff=B, num_layers=2, num_decoder_layers=1, num_heads=2,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=6, dropout_rate=0.0,
                                   decoder_start_token_id=0, pad_token_id=1)
    model = transformers.T5ForConditionalGeneration(config)
    probe = check_seq2seq(exact, model, 40, seed=3, mode=mode)
    assert probe.coverage["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] == "t5-relative-bias"
    assert probe.coverage["encoder.final_layer_norm.weight"] == "rmsnorm"


@pytest.mark.parametrize("family", ["Mistral", "Qwen2"])
def test_mistral_and_qwen2(exact, family):
    config = getattr(transformers, f"{family}Config")(vocab_size=40, hidden_size=8, intermediate_size=B, num_hidden_layers=2,
                                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    check_causal_lm(exact, getattr(transformers, f"{family}ForCausalLM")(config), 40, seed=4)


def check_images(exact, model, image: int, seed: int, params=None):
    torch.manual_seed(seed)
    x, y = torch.randn(B, 3, image, image), torch.randint(0, 4, (B,))

    def loss(m, rows):
        out = m(x[rows])
        return F.cross_entropy(getattr(out, "logits", out), y[rows], reduction="none")

    return exact(model.eval(), lambda m: loss(m, slice(None)), lambda m, i: loss(m, slice(i, i + 1)), B, rtol=1e-4,
                 params=params)


def test_hf_vit(exact):
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=8, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=B, num_labels=4)
    probe = check_images(exact, transformers.ViTForImageClassification(config), 8, seed=5)
    assert probe.coverage["vit.embeddings.cls_token"] == "direct"


@pytest.mark.parametrize("options", [{"init_values": 0.1}, {"reg_tokens": 2, "no_embed_class": True},
                                     {"qk_norm": True, "init_values": 0.1, "class_token": False, "global_pool": "avg"}])
def test_timm_vit_layer_scale_registers_qk_norm(exact, options):
    timm = pytest.importorskip("timm")
    model = timm.models.vision_transformer.VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2,
                                                              mlp_ratio=1.0, num_classes=4, **options)
    probe = check_images(exact, model, 8, seed=6)
    if "init_values" in options:
        assert probe.coverage["blocks.0.ls1.gamma"] == "layerscale"


def test_timm_cait_raw_layer_scale_gains_and_class_attention(exact):
    timm = pytest.importorskip("timm")
    model = timm.create_model("cait_xxs24_224", pretrained=False, img_size=8, patch_size=4, embed_dim=8, depth=1,
                              num_heads=2, num_classes=4)
    probe = check_images(exact, model, 8, seed=7)
    assert probe.coverage["blocks.0.gamma_1"] == "gain" and probe.coverage["cls_token"] == "direct"


def test_timm_eva_fused_qkv_bias_and_raw_gains(exact):
    timm = pytest.importorskip("timm")
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=8, patch_size=4, embed_dim=8, depth=1,
                              num_heads=2, num_classes=4)
    for block in model.blocks:
        nn.init.normal_(block.attn.q_bias)
        nn.init.normal_(block.attn.v_bias)
    probe = check_images(exact, model, 8, seed=8)
    assert probe.coverage["blocks.0.attn.q_bias"] == "fused-qkv" and probe.coverage["blocks.0.attn.qkv.weight"] == "fused-qkv"
    check_images(exact, model, 8, seed=8, params=["blocks.0.attn.q_bias", "blocks.0.attn.v_bias"])  # small next to the rest


def check_sequence(exact, model, inputs: tuple[torch.Tensor, ...], batch_dim: int):
    """(B,) losses from a fixed readout of ``model(*inputs)``, examples at ``batch_dim`` of every input and output."""
    def loss(m, rows):
        out = m(*(t.narrow(batch_dim, rows.start, rows.stop - rows.start) for t in inputs))
        out = (out[0] if isinstance(out, tuple) else out).movedim(batch_dim, 0)
        return torch.tanh(out).mul(torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).flatten(1).sum(1)

    return exact(model.double(), lambda m: loss(m, slice(0, B)), lambda m, i: loss(m, slice(i, i + 1)), B)


@pytest.mark.parametrize("batch_first", [True, False])
def test_torch_transformer_and_decoder_layer(exact, batch_first):
    torch.manual_seed(9)
    src, tgt = (torch.randn(B, 4, 4, dtype=torch.float64), torch.randn(B, B, 4, dtype=torch.float64))
    if not batch_first:
        src, tgt = src.transpose(0, 1), tgt.transpose(0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nested tensors need batch_first; irrelevant here
        model = nn.Transformer(4, 2, 1, 1, 6, dropout=0.0, batch_first=batch_first)
    check_sequence(exact, model, (src, tgt), 0 if batch_first else 1)
    layer = nn.TransformerDecoderLayer(4, 2, 6, dropout=0.0, batch_first=batch_first, norm_first=True)
    check_sequence(exact, layer, (tgt, src), 0 if batch_first else 1)


def test_opacus_dp_lstm_and_gru_of_linear_cells(exact):
    opacus_layers = pytest.importorskip("opacus.layers")
    torch.manual_seed(10)
    x = torch.randn(B, B, 4, dtype=torch.float64)  # T == B == hidden
    for cell in (opacus_layers.DPLSTM, opacus_layers.DPGRU):
        check_sequence(exact, cell(4, B, batch_first=True), (x,), 0)


def test_timm_convnext_layer_norm_2d_and_reshaped_gains(exact):
    timm = pytest.importorskip("timm")
    model = timm.create_model("convnext_atto", pretrained=False, depths=(1, 1, 1, 1), dims=(4, 4, 8, 8), num_classes=4,
                              ls_init_value=0.5)
    probe = check_images(exact, model, 32, seed=11)
    assert probe.coverage["stages.0.blocks.0.gamma"] == "gain" and probe.coverage["stem.1.weight"] == "layernorm"
