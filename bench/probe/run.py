"""Benchmark of GradNormProbe against per-example gradients from torch.func and from Opacus.

    attent bench probe                   # ViT and GPT-2 configs sized for a CPU (or a GPU's sizes on CUDA)
    attent bench probe --quick           # tiny configs: a smoke run
    attent bench probe --record          # update bench/results/probe_<device>.json (default: runs/bench/)

For each model and method, one side-by-side table: time per call (median of ``--repeats`` after a
warm-up), peak extra memory of one call, both also as a multiple of a plain training step
(forward + ``losses.mean().backward()``), and the largest relative difference of the method's
squared norms from torch.func's. Methods:

- ``plain step``: forward and ordinary backward, the reference for time and memory;
- ``probe.score``: forward + ``GradNormProbe.score`` over every parameter (activation gradients only);
- ``probe.backward``: forward + the training backward with the norms as a by-product;
- ``probe.score (last block)``: forward + ``score`` over the last transformer block and the head;
- ``torch.func``: forward-free ``vmap(grad(...))`` per-example gradients of every parameter, then norms;
- ``opacus``: ``GradSampleModule`` per-example gradients (its hooks, functorch for the layers it
  does not know), then norms.

Memory: on CUDA, ``max_memory_allocated`` during the call minus what was allocated before it; on a
CPU each method runs in a fresh process (spawned), is warmed up, then the peak resident set is
reset and ``VmHWM`` after minus ``VmRSS`` before is the peak extra (``bench/kernels/_memory.py``).
Inputs and the model are allocated before the measurement and not counted.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from bench import record_info  # noqa: E402
from bench.kernels._memory import cuda_growth, rss_growth  # noqa: E402

METHODS = ("plain step", "probe.score", "probe.backward", "probe.score (last block)", "torch.func", "opacus")
MODELS = ("vit", "gpt2")


Loss = Callable[..., torch.Tensor]


def _build(model: str, quick: bool, device: torch.device) -> tuple[nn.Module, tuple[torch.Tensor, ...], Loss, dict, list[str]]:
    """The model, its batched inputs, ``loss(model_fn, *inputs) -> (B,)`` per-example losses, a
    description, and the names of the parameters of its last block and final norm/head."""
    torch.manual_seed(0)
    gpu = device.type == "cuda"
    if model == "vit":
        import timm

        size = dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3) if quick else (
            dict(img_size=224, patch_size=16, depth=12, embed_dim=768, num_heads=12) if gpu else
            dict(img_size=64, patch_size=8, depth=6, embed_dim=192, num_heads=3))
        batch = 4 if quick else (64 if gpu else 16)
        net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **size)
        inputs = (torch.randn(batch, 3, size["img_size"], size["img_size"]), torch.randint(0, 10, (batch,)))

        def loss(model_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(model_fn(x), y, reduction="none")

        last = (f"blocks.{size['depth'] - 1}.", "norm.", "head.")
        info = {"model": "timm vit_tiny_patch16_224, resized", "batch": batch,
                "tokens": (size["img_size"] // size["patch_size"]) ** 2 + 1, **size}
    else:
        import transformers

        size = dict(n_embd=32, n_layer=2, n_head=2, vocab_size=97, n_positions=16) if quick else (
            dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024) if gpu else
            dict(n_embd=256, n_layer=4, n_head=4, vocab_size=4096, n_positions=128))
        batch = 2 if quick else 8
        net = transformers.GPT2LMHeadModel(transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, **size))
        inputs = (torch.randint(0, size["vocab_size"], (batch, size["n_positions"])),)

        def loss(model_fn: Callable, ids: torch.Tensor) -> torch.Tensor:
            logits = model_fn(input_ids=ids).logits[:, :-1]
            token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
            return token.view(ids.shape[0], -1).mean(dim=1)

        last = (f"transformer.h.{size['n_layer'] - 1}.", "transformer.ln_f.")
        info = {"model": "HF GPT2LMHeadModel, tied embeddings", "batch": batch, "tokens": size["n_positions"], **size}
    names = [n for n, _ in net.named_parameters() if n.startswith(last)]
    return net.to(device), tuple(t.to(device) for t in inputs), loss, info, names


def _method(name: str, net: nn.Module, inputs: tuple[torch.Tensor, ...], loss: Loss, last: list[str]) -> Callable[[], torch.Tensor | None]:
    """One call of the method's work; returns (B,) squared norms (None for the plain step)."""
    from attent.probe import GradNormProbe

    if name == "plain step":
        def step() -> None:
            net.zero_grad(set_to_none=True)
            loss(net, *inputs).mean().backward()
        return step
    if name.startswith("probe"):
        probe = GradNormProbe(net, last if name.endswith("(last block)") else None)

        def probed() -> torch.Tensor:
            net.zero_grad(set_to_none=True)
            losses = loss(net, *inputs)
            return probe.backward(losses) if name == "probe.backward" else probe.score(losses)
        return probed
    if name == "torch.func":
        from torch.func import functional_call, grad, vmap

        params = {k: v.detach() for k, v in net.named_parameters()}
        buffers = dict(net.named_buffers())

        def example_loss(p: dict, *example: torch.Tensor) -> torch.Tensor:
            model_fn = lambda *a, **k: functional_call(net, {**p, **buffers}, a, k)  # noqa: E731
            return loss(model_fn, *(t[None] for t in example))[0]

        def per_example() -> torch.Tensor:
            grads = vmap(grad(example_loss), in_dims=(None, *[0] * len(inputs)), randomness="same")(params, *inputs)
            return sum(g.reshape(g.shape[0], -1).float().square().sum(1) for g in grads.values())
        return per_example
    from opacus import GradSampleModule

    wrapped = GradSampleModule(net, batch_first=True, loss_reduction="sum")
    params = [p for p in net.parameters() if p.requires_grad]

    def opacus_norms() -> torch.Tensor:
        wrapped.zero_grad(set_to_none=True)
        for p in params:
            p.grad_sample = None
        loss(wrapped, *inputs).sum().backward()
        return sum(p.grad_sample.reshape(p.grad_sample.shape[0], -1).float().square().sum(1) for p in params)
    return opacus_norms


def _measure(model: str, method: str, quick: bool, repeats: int) -> dict:
    """Time, peak extra memory and squared norms of one method on one model (run in a fresh process on CPU)."""
    device = record_info.device()
    net, inputs, loss, info, last = _build(model, quick, device)
    call = _method(method, net, inputs, loss, last)
    call()  # warm-up: lazy state, autotuning, allocator
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    norms, peak = (cuda_growth if device.type == "cuda" else rss_growth)(call)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return {"info": info, "seconds": statistics.median(times), "peak_bytes": peak,
            "norms": None if norms is None else norms.detach().double().cpu().tolist()}


def _measure_or_failure(model: str, method: str, quick: bool, repeats: int) -> dict:
    try:
        return _measure(model, method, quick, repeats)
    except Exception as error:  # reported in the table; the other methods still run
        return {"error": f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"}


def _child(queue: Any, model: str, method: str, quick: bool, repeats: int) -> None:
    queue.put(_measure_or_failure(model, method, quick, repeats))


def _run_isolated(model: str, method: str, quick: bool, repeats: int) -> dict:
    if record_info.device().type == "cuda":
        return _measure_or_failure(model, method, quick, repeats)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, model, method, quick, repeats))
    process.start()
    result = queue.get()
    process.join()
    return result


def _relative_difference(norms: list[float] | None, reference: list[float] | None) -> float | None:
    if norms is None or reference is None:
        return None
    a, b = torch.tensor(norms), torch.tensor(reference)
    return float(((a - b).abs() / b.abs().clamp(min=1e-30)).max())


def _table(model: str, rows: dict[str, dict]) -> str:
    base = rows.get("plain step", {})
    lines = [f"{'method':<26} {'time ms':>9} {'x step':>7} {'peak MiB':>9} {'x step':>7} {'max rel diff':>13}"]
    for method, row in rows.items():
        if "error" in row:
            lines.append(f"{method:<26} failed: {row['error']}")
            continue
        t, m = row["seconds"], row["peak_bytes"]
        t_ratio = f"{t / base['seconds']:.2f}" if base.get("seconds") else "-"
        m_ratio = f"{m / base['peak_bytes']:.2f}" if base.get("peak_bytes") else "-"
        diff = row.get("max_rel_diff_vs_torch_func")
        lines.append(f"{method:<26} {t * 1e3:>9.1f} {t_ratio:>7} {m / 2**20:>9.1f} {m_ratio:>7} "
                     f"{'-' if diff is None else f'{diff:.1e}':>13}")
    return f"{model}: {next(iter(r['info'] for r in rows.values() if 'info' in r), {})}\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attent bench probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per method (median; default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny configs and one repeat: a smoke run")
    parser.add_argument("--json", type=Path, default=None, help="the record's path (default probe_<device>.json in the "
                                                                  "output folder)")
    record_info.add_output_options(parser)
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]
    for value, allowed, what in ((models, MODELS, "--models"), (methods, METHODS, "--methods")):
        unknown = sorted(set(value) - set(allowed))
        if unknown or not value:
            parser.error(f"{what}: unknown or empty {unknown}; choose from {', '.join(allowed)}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    repeats = 1 if args.quick else args.repeats
    device = record_info.device()
    record: dict[str, Any] = {
        "benchmark": "probe", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv or []), "device": device.type, "machine": record_info.machine(device), "versions": record_info.versions(),
        "memory_method": __doc__.split("Memory: ", 1)[1].split("\n\n", 1)[0].replace("\n", " "), "models": {},
    }
    for model in models:
        rows: dict[str, dict] = {}
        for method in methods:
            rows[method] = _run_isolated(model, method, args.quick, repeats)
        reference = rows.get("torch.func", {}).get("norms")
        for method, row in rows.items():  # a parameter subset has other norms: nothing to compare
            subset = method.endswith("(last block)")
            row["max_rel_diff_vs_torch_func"] = None if subset else _relative_difference(row.get("norms"), reference)
        print(_table(model, rows), flush=True)
        record["models"][model] = rows
    path = args.json or record_info.output_dir(args) / f"probe_{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
