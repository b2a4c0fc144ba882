"""Peer suite for GradNormProbe: layer configurations in the spirit of Opacus's per-sample-gradient
tests and whole HF / timm / torch models from small configs (nothing is downloaded), each probed
squared norm checked against the norm of that example's own gradient.

    python -m bench.probe.peer                # write runs/bench/probe_peer.json
    python -m bench.probe.peer --record       # update bench/results/probe_peer.json
    python -m bench.probe.peer --json PATH    # write the record to PATH

Every case runs on the CPU in float64, one thread. A case's model gives per-example losses; the
probe scores them (``GradNormProbe(model)`` over every trainable parameter, then ``score``), and
the reference is, for each example alone, the squared norm of ``autograd.grad`` of its loss over
the parameters the probe covers. Outcomes:

- ``exact``: the largest relative difference from the reference is below 1e-4 and the probed
  forward gives the same losses as an unprobed one;
- ``rejected``: building the model or probing it raised (the record keeps the message);
- ``wrong``: the probe answered, but with other norms or a changed output.

Exit status 1 when any case is wrong.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import importlib.util
import itertools
import json
import sys
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from attent.probe import GradNormProbe  # noqa: E402
from bench import record_info  # noqa: E402

DTYPE = torch.float64
BATCH = 3  # examples per case; several layer sizes equal it so that a wrong batch axis gives wrong norms
VOCAB = 30  # the language models' vocabulary
TOLERANCE = 1e-4  # largest relative difference of an exact case
OUTPUT_RTOL = 1e-5  # the probed forward's losses against the unprobed ones
OUTPUT_ATOL = 1e-6
LAYER = "layer config"
MODEL = "whole model"


@dataclass(frozen=True)
class Problem:
    """A model with per-example losses of the whole batch and of one example alone."""

    model: nn.Module
    batch_losses: Callable[[nn.Module], torch.Tensor]  # (BATCH,) losses of the batch
    example_loss: Callable[[nn.Module, int], torch.Tensor]  # the loss of example i, computed without the others


@dataclass(frozen=True)
class Case:
    """One configuration of the suite: its name, its group (LAYER or MODEL) and how to build it."""

    name: str
    group: str
    build: Callable[[], Problem]


class Head(nn.Module):
    """A layer followed by a fixed reduction of its output to one loss per example."""

    def __init__(self, layer: nn.Module, batch_dim: int = 0) -> None:
        super().__init__()
        self.layer = layer
        self.batch_dim = batch_dim

    def forward(self, *inputs: Any) -> torch.Tensor:
        """``sum(tanh(out) * w)`` per example, ``w`` a fixed ramp over one example's output."""
        output = self.layer(*inputs)
        output = output[0] if isinstance(output, tuple) else output
        output = output.movedim(self.batch_dim, 0)
        ramp = torch.linspace(-1, 1, output[0].numel(), dtype=output.dtype).view(output.shape[1:])
        return (torch.tanh(output) * ramp).flatten(1).sum(1)


class Attention(nn.Module):
    """An attention module called as self-attention on one input or cross-attention on two."""

    def __init__(self, attention: nn.Module, **call_options: Any) -> None:
        super().__init__()
        self.attention = attention
        self.call_options = call_options

    def forward(self, query: torch.Tensor, memory: torch.Tensor | None = None) -> Any:
        """``attention(query, source, source)``, the source being ``memory`` if given, else ``query``."""
        source = query if memory is None else memory
        return self.attention(query, source, source, **self.call_options)


def _gaussian(*shapes: tuple[int, ...], shift: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Standard normal inputs of the given shapes, plus ``shift``."""
    return tuple(torch.randn(*shape, dtype=DTYPE) + shift for shape in shapes)


def _ids(high: int, shape: tuple[int, ...]) -> tuple[torch.Tensor]:
    """One tensor of token ids in ``[0, high)``."""
    return (torch.randint(0, high, shape),)


def _layer_problem(make_layer: Callable[[], nn.Module], make_inputs: Callable[[], tuple[torch.Tensor, ...]], batch_dim: int = 0) -> Problem:
    """The layer under :class:`Head`, its examples along ``batch_dim`` of every input."""
    model = Head(make_layer().to(DTYPE), batch_dim)
    inputs = make_inputs()

    def example_loss(module: nn.Module, index: int) -> torch.Tensor:
        """The loss of example ``index`` fed alone."""
        return module(*(tensor.narrow(batch_dim, index, 1) for tensor in inputs))

    return Problem(model, lambda module: module(*inputs), example_loss)


def _layer(name: str, make_layer: Callable[[], nn.Module], make_inputs: Callable[[], tuple[torch.Tensor, ...]], batch_dim: int = 0) -> Case:
    """A layer configuration case."""
    return Case(name, LAYER, partial(_layer_problem, make_layer, make_inputs, batch_dim))


def _rows_problem(model: nn.Module, losses: Callable[[nn.Module, Any], torch.Tensor]) -> Problem:
    """A whole model in eval mode and float64, ``losses(model, rows)`` giving the losses of a slice of the batch."""
    model = model.eval().to(DTYPE)
    return Problem(model, lambda module: losses(module, slice(None)), lambda module, index: losses(module, slice(index, index + 1)))


def _language_problem(make_model: Callable[[], nn.Module], seq2seq: bool = False) -> Problem:
    """Summed token cross-entropy over BATCH sequences of BATCH tokens, one of them partly masked out."""
    model = make_model()
    ids = torch.randint(2, VOCAB, (BATCH, BATCH))
    mask = torch.ones(BATCH, BATCH, dtype=torch.long)
    mask[1, 2:] = 0
    labels = ids.masked_fill(mask == 0, -100)

    def losses(module: nn.Module, rows: slice) -> torch.Tensor:
        """(rows,) summed token losses of the sequences ``rows``."""
        inputs = dict(input_ids=ids[rows], attention_mask=mask[rows])
        if seq2seq:
            inputs["decoder_input_ids"] = ids[rows].flip(1)
        logits = module(**inputs).logits.double()
        tokens = F.cross_entropy(logits.flatten(0, 1), labels[rows].flatten(), reduction="none", ignore_index=-100)
        return tokens.view(labels[rows].shape).sum(1)

    return _rows_problem(model, losses)


def _image_problem(make_model: Callable[[], nn.Module], image_size: int) -> Problem:
    """Cross-entropy of a classifier's logits (or an HF output's ``.logits``) on BATCH random images."""
    model = make_model()
    images = torch.randn(BATCH, 3, image_size, image_size, dtype=DTYPE)
    targets = torch.tensor([0, 1, 0])

    def losses(module: nn.Module, rows: slice) -> torch.Tensor:
        """(rows,) losses of the images ``rows``."""
        output = module(images[rows])
        return F.cross_entropy(getattr(output, "logits", output), targets[rows], reduction="none")

    return _rows_problem(model, losses)


def _batchnorm_eval() -> nn.Module:
    """BatchNorm1d over BATCH features, in eval mode (running statistics)."""
    return nn.BatchNorm1d(BATCH).eval()


def _multihead_attention(batch_first: bool, add_bias_kv: bool, add_zero_attn: bool, kdim: int | None) -> nn.Module:
    """nn.MultiheadAttention(4, 2) with the options, its bias_k / bias_v (if any) drawn from a normal."""
    attention = nn.MultiheadAttention(4, 2, batch_first=batch_first, add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn, kdim=kdim, vdim=kdim)
    if add_bias_kv:
        nn.init.normal_(attention.bias_k)
        nn.init.normal_(attention.bias_v)
    return Attention(attention, need_weights=False)


def _sequence_shape(batch_first: bool, length: int, width: int) -> tuple[int, int, int]:
    """The shape of BATCH sequences, batch first or sequence first."""
    return (BATCH, length, width) if batch_first else (length, BATCH, width)


def _dp_multihead_attention() -> nn.Module:
    """Opacus's DPMultiheadAttention(4, 2) with bias_k / bias_v, as self-attention."""
    from opacus.layers import DPMultiheadAttention

    return Attention(DPMultiheadAttention(4, 2, add_bias_kv=True))


def _dp_recurrent(kind: str) -> nn.Module:
    """Opacus's DPLSTM or DPGRU from 4 features to BATCH, batch first."""
    from opacus import layers

    return getattr(layers, kind)(4, BATCH, batch_first=True)


def _linear_cases() -> Iterator[Case]:
    """Linear on inputs of 2 to 4 dims (the batch and the features equal in some), with and without bias."""
    for shape, bias in itertools.product([(BATCH, 4), (BATCH, BATCH, 4), (BATCH, 2, BATCH, 4), (BATCH, 1)], (True, False)):
        yield _layer(f"Linear in={shape} bias={bias}", partial(nn.Linear, shape[-1], BATCH, bias=bias), partial(_gaussian, shape))


def _conv_cases() -> Iterator[Case]:
    """Conv1d/2d/3d over strides, paddings, dilations and groups; a reflect-padded Conv2d; a ConvTranspose2d."""
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    for dims, (stride, padding, dilation, groups) in itertools.product(
            [1, 2, 3], [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (1, 1, 1, 2), (2, 0, 1, 2), (1, "same", 2, 1)]):
        in_channels = 2 * BATCH if groups == 2 else BATCH
        make_conv = partial(convs[dims - 1], in_channels, 4, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)
        yield _layer(f"Conv{dims}d stride={stride} pad={padding} dil={dilation} groups={groups}", make_conv,
                     partial(_gaussian, (BATCH, in_channels, *[7] * dims)))
    yield _layer("Conv2d padding_mode=reflect", partial(nn.Conv2d, BATCH, 2, 3, padding=1, padding_mode="reflect"),
                 partial(_gaussian, (BATCH, BATCH, 5, 5)))
    yield _layer("ConvTranspose2d", partial(nn.ConvTranspose2d, BATCH, 2, 3), partial(_gaussian, (BATCH, BATCH, 4, 4)))


def _norm_cases() -> Iterator[Case]:
    """LayerNorm, RMSNorm, GroupNorm, affine InstanceNorm, and BatchNorm in eval and in training mode."""
    for shape in [(BATCH,), (2, BATCH), (BATCH, 2, 2)]:
        for norm in (nn.LayerNorm, nn.RMSNorm):
            yield _layer(f"{norm.__name__} normalized_shape={shape}", partial(norm, shape), partial(_gaussian, (BATCH, 2, *shape), shift=1.0))
    for groups, channels in [(1, BATCH), (BATCH, BATCH), (2, 4)]:
        yield _layer(f"GroupNorm({groups}, {channels})", partial(nn.GroupNorm, groups, channels), partial(_gaussian, (BATCH, channels, 5)))
    for dims, norm in enumerate((nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d), 1):
        yield _layer(f"{norm.__name__} affine", partial(norm, BATCH, affine=True), partial(_gaussian, (BATCH, BATCH, *[4] * dims)))
    yield _layer("BatchNorm1d eval", _batchnorm_eval, partial(_gaussian, (BATCH, BATCH)))
    yield _layer("BatchNorm1d train", partial(nn.BatchNorm1d, BATCH), partial(_gaussian, (BATCH, BATCH)))


def _embedding_cases() -> Iterator[Case]:
    """Embedding with and without padding_idx, scale_grad_by_freq and max_norm; EmbeddingBag in every mode."""
    for shape, padding_idx in itertools.product([(BATCH, BATCH), (BATCH, 2, 3)], (None, 0)):
        yield _layer(f"Embedding ids={shape} padding_idx={padding_idx}", partial(nn.Embedding, 5, BATCH, padding_idx=padding_idx), partial(_ids, 5, shape))
    yield _layer("Embedding scale_grad_by_freq", partial(nn.Embedding, 5, BATCH, scale_grad_by_freq=True), partial(_ids, 5, (BATCH, 4)))
    yield _layer("Embedding max_norm", partial(nn.Embedding, 5, BATCH, max_norm=0.5), partial(_ids, 5, (BATCH, 4)))
    for mode in ("sum", "mean", "max"):
        yield _layer(f"EmbeddingBag mode={mode}", partial(nn.EmbeddingBag, 6, BATCH, mode=mode), partial(_ids, 6, (BATCH, 4)))


def _linear_prelu() -> nn.Module:
    """Linear(2, BATCH) then a PReLU with one slope per output feature."""
    return nn.Sequential(nn.Linear(2, BATCH), nn.PReLU(BATCH))


def _prelu_cases() -> Iterator[Case]:
    """PReLU with one slope per feature and with a single slope."""
    yield _layer("PReLU(width) after Linear width==B", _linear_prelu, partial(_gaussian, (BATCH, 2)))
    yield _layer("PReLU(1)", nn.PReLU, partial(_gaussian, (BATCH, 4)))


def _attention_cases() -> Iterator[Case]:
    """nn.MultiheadAttention over batch_first, self/cross, bias_kv, zero_attn and other key/value widths."""
    for batch_first, cross, add_bias_kv, add_zero_attn, kdim in itertools.product([True, False], [False, True], [False, True], [False, True], [None, 5]):
        if kdim and not cross:
            continue
        query = _sequence_shape(batch_first, BATCH, 4)
        shapes = (query, _sequence_shape(batch_first, 4, kdim or 4)) if cross else (query,)
        yield _layer(f"MHA batch_first={batch_first} cross={cross} bias_kv={add_bias_kv} zero_attn={add_zero_attn} kdim={kdim}",
                     partial(_multihead_attention, batch_first, add_bias_kv, add_zero_attn, kdim), partial(_gaussian, *shapes),
                     batch_dim=0 if batch_first else 1)


def _recurrent_cases() -> Iterator[Case]:
    """LSTM and GRU, and (when opacus is installed) its DPLSTM, DPGRU and DPMultiheadAttention."""
    yield _layer("LSTM", partial(nn.LSTM, 4, BATCH, batch_first=True), partial(_gaussian, (BATCH, BATCH, 4)))
    yield _layer("GRU", partial(nn.GRU, 4, BATCH, batch_first=True), partial(_gaussian, (BATCH, BATCH, 4)))
    if importlib.util.find_spec("opacus") is None:
        return
    for kind in ("DPLSTM", "DPGRU"):
        yield _layer(f"opacus {kind}", partial(_dp_recurrent, kind), partial(_gaussian, (BATCH, BATCH, 4)))
    yield _layer("opacus DPMultiheadAttention add_bias_kv (seq-first)", _dp_multihead_attention, partial(_gaussian, (BATCH, BATCH, 4)), batch_dim=1)


def _torch_transformer_cases() -> Iterator[Case]:
    """torch's TransformerEncoder, TransformerDecoderLayer and Transformer, sequence first and batch first."""
    def encoder(num_layers: int, **options: Any) -> nn.Module:
        """A TransformerEncoder of width 4, two heads, no dropout."""
        return nn.TransformerEncoder(nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0, **options), num_layers, enable_nested_tensor=False)

    yield _layer("nn.TransformerEncoder seq-first T==B", partial(encoder, 2), partial(_gaussian, (BATCH, BATCH, 4)), batch_dim=1)
    yield _layer("nn.TransformerEncoder batch_first norm_first", partial(encoder, 1, batch_first=True, norm_first=True), partial(_gaussian, (BATCH, 4, 4)))
    yield _layer("nn.TransformerDecoderLayer seq-first", partial(nn.TransformerDecoderLayer, 4, 2, 6, dropout=0.0),
                 partial(_gaussian, (BATCH, BATCH, 4), (5, BATCH, 4)), batch_dim=1)
    yield _layer("nn.Transformer seq-first", partial(nn.Transformer, 4, 2, 1, 1, 6, dropout=0.0), partial(_gaussian, (BATCH, BATCH, 4), (BATCH, BATCH, 4)),
                 batch_dim=1)
    yield _layer("nn.Transformer batch_first", partial(nn.Transformer, 4, 2, 1, 1, 6, dropout=0.0, batch_first=True),
                 partial(_gaussian, (BATCH, 5, 4), (BATCH, BATCH, 4)))


def _hf(model_class: str, config_class: str, **config: Any) -> nn.Module:
    """An HF transformers model with random weights from ``config_class(**config)``."""
    import transformers

    return getattr(transformers, model_class)(getattr(transformers, config_class)(**config))


def _timm(arch: str, **options: Any) -> nn.Module:
    """A timm model with random weights; a distilled DeiT is set to average its two heads."""
    import timm

    model = timm.create_model(arch, pretrained=False, **options)
    if arch.startswith("deit_tiny_distilled"):
        model.set_distilled_training(False)
    return model


def _timm_vit(**options: Any) -> nn.Module:
    """timm's VisionTransformer on 8x8 images, one block of width 4, two classes."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=8, patch_size=4, embed_dim=4, depth=1, num_heads=2, mlp_ratio=1.0, num_classes=2, **options)


def _language_model_cases() -> Iterator[Case]:
    """HF causal, seq2seq and masked language models, one layer of width 3 or 4."""
    def case(name: str, model_class: str, config_class: str, seq2seq: bool = False, **config: Any) -> Case:
        """An HF language model case with the suite's vocabulary."""
        return Case(name, MODEL, partial(_language_problem, partial(_hf, model_class, config_class, vocab_size=VOCAB, **config), seq2seq))

    yield case("GPT-2", "GPT2LMHeadModel", "GPT2Config", n_positions=8, n_embd=4, n_layer=1, n_head=2)
    opt = dict(num_hidden_layers=1, ffn_dim=BATCH, max_position_embeddings=8)
    yield case("OPT", "OPTForCausalLM", "OPTConfig", hidden_size=BATCH, num_attention_heads=1, word_embed_proj_dim=BATCH, **opt)
    yield case("OPT post-LN", "OPTForCausalLM", "OPTConfig", hidden_size=4, num_attention_heads=2, word_embed_proj_dim=4, do_layer_norm_before=False, **opt)
    yield case("BART", "BartForConditionalGeneration", "BartConfig", True, d_model=4, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=BATCH, decoder_ffn_dim=BATCH, max_position_embeddings=8)
    t5 = dict(d_model=4, d_kv=2, d_ff=BATCH, num_layers=1, num_heads=2, relative_attention_num_buckets=8, decoder_start_token_id=0)
    yield case("T5", "T5ForConditionalGeneration", "T5Config", True, **t5)
    yield case("MT5", "MT5ForConditionalGeneration", "MT5Config", True, **t5)
    for family in ("Llama", "Mistral", "Qwen2"):
        yield case(family, f"{family}ForCausalLM", f"{family}Config", hidden_size=4, intermediate_size=BATCH, num_hidden_layers=1, num_attention_heads=2,
                   num_key_value_heads=1, max_position_embeddings=8)
    yield case("BERT MLM", "BertForMaskedLM", "BertConfig", hidden_size=4, num_hidden_layers=1, num_attention_heads=2, intermediate_size=BATCH,
               max_position_embeddings=8)


def _image_model_cases() -> Iterator[Case]:
    """HF and timm vision transformers on 8x8 images, and timm CNNs in eval mode on 32x32 images."""
    def case(name: str, make_model: Callable[[], nn.Module], image_size: int = 8) -> Case:
        """An image classifier case."""
        return Case(name, MODEL, partial(_image_problem, make_model, image_size))

    hf_vit = dict(image_size=8, patch_size=4, hidden_size=4, num_hidden_layers=1, num_attention_heads=2, intermediate_size=BATCH, num_labels=2)
    yield case("HF ViT", partial(_hf, "ViTForImageClassification", "ViTConfig", **hf_vit))
    yield case("HF DeiT distilled", partial(_hf, "DeiTForImageClassificationWithTeacher", "DeiTConfig", **hf_vit))
    yield case("timm ViT", _timm_vit)
    yield case("timm ViT LayerScale", partial(_timm_vit, init_values=0.1))
    yield case("timm ViT registers", partial(_timm_vit, reg_tokens=2))
    yield case("timm ViT qk_norm", partial(_timm_vit, qk_norm=True))
    yield case("timm ViT avg pool no cls", partial(_timm_vit, class_token=False, global_pool="avg"))
    for arch in ("deit3_small_patch16_224", "cait_xxs24_224", "eva02_tiny_patch14_224", "deit_tiny_distilled_patch16_224"):
        yield case(f"timm {arch}", partial(_timm, arch, img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2, num_classes=2))
    for arch in ("convnext_atto", "resnet18", "efficientnet_b0", "tf_efficientnet_b0", "mobilenetv3_small_050", "nf_resnet26"):
        yield case(f"timm {arch} (eval)", partial(_timm, arch, num_classes=2), image_size=32)


def cases() -> list[Case]:
    """Every case of the suite, layer configurations first."""
    layers = [_linear_cases, _conv_cases, _norm_cases, _embedding_cases, _prelu_cases, _attention_cases, _recurrent_cases, _torch_transformer_cases]
    return [case for group in (*layers, _language_model_cases, _image_model_cases) for case in group()]


def _single_example_norms(problem: Problem, params: list[nn.Parameter]) -> torch.Tensor:
    """(BATCH,) squared norms of each example's own gradient over ``params``, one backward per example."""
    norms = []
    for index in range(BATCH):
        grads = torch.autograd.grad(problem.example_loss(problem.model, index).sum(), params, allow_unused=True)
        norms.append(sum(grad.double().square().sum() for grad in grads if grad is not None))
    return torch.tensor(norms, dtype=DTYPE)


def _message(error: Exception) -> str:
    """The error's type and message on one line."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def run_case(case: Case) -> dict[str, Any]:
    """Build and probe one case: its name, group, outcome, and the max relative error or the error message."""
    torch.manual_seed(0)
    entry: dict[str, Any] = {"name": case.name, "group": case.group}
    try:
        problem = case.build()
    except Exception as error:  # a config the installed library cannot build counts as refused, not as wrong
        return {**entry, "outcome": "rejected", "error": "build: " + _message(error)}
    with torch.no_grad():
        unprobed = problem.batch_losses(problem.model).double()
    try:
        with GradNormProbe(problem.model) as probe:
            losses = problem.batch_losses(problem.model)
            output_unchanged = torch.allclose(losses.detach().double(), unprobed, rtol=OUTPUT_RTOL, atol=OUTPUT_ATOL)
            scores = probe.score(losses).double()
    except Exception as error:  # the probe's refusal, with its reason
        return {**entry, "outcome": "rejected", "error": _message(error)}
    covered = [param for name, param in problem.model.named_parameters() if name in probe.coverage]
    reference = _single_example_norms(problem, covered)
    max_rel_error = float(((scores - reference).abs() / reference.abs().clamp(min=1e-12)).max())
    exact = max_rel_error < TOLERANCE and output_unchanged
    return {**entry, "outcome": "exact" if exact else "wrong", "max_rel_error": max_rel_error, "output_unchanged": output_unchanged}


def _line(result: dict[str, Any]) -> str:
    """One printed line: outcome, name, and the error or the relative difference."""
    if result["outcome"] == "rejected":
        detail = result["error"][:230]
    else:
        detail = f"rel err {result['max_rel_error']:.1e}" + ("" if result["output_unchanged"] else " OUTPUT CHANGED")
    outcome = "WRONG" if result["outcome"] == "wrong" else result["outcome"]
    return f"{outcome:8s} | {result['name']} | {detail}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run every case, print one line each and the totals, write the record; 1 if any case is wrong."""
    parser = argparse.ArgumentParser(prog="python -m bench.probe.peer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None, help="the record's path (default probe_peer.json in the output folder)")
    record_info.add_output_options(parser)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    device = torch.device("cpu")
    record: dict[str, Any] = {
        "benchmark": "probe_peer", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv or []), "device": device.type, "machine": record_info.machine(device), "versions": record_info.versions("timm", "transformers"),
        "tolerance": TOLERANCE, "cases": [],
    }
    for case in cases():
        result = run_case(case)
        print(_line(result), flush=True)
        record["cases"].append(result)
    counts = collections.Counter(result["outcome"] for result in record["cases"])
    record["totals"] = {"cases": len(record["cases"]), **{outcome: counts[outcome] for outcome in ("exact", "rejected", "wrong")}}
    print(", ".join(f"{count} {outcome}" for outcome, count in record["totals"].items()))
    path = args.json or record_info.output_dir(args) / "probe_peer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")
    return 1 if counts["wrong"] else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
