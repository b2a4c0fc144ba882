"""The thin trainer (attent.fit): step-for-step equivalence with a hand-written loop, gradient
accumulation, exact resume, mixed precision, logs and plots, and the teacher's part in the loop."""
import copy
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import replace as dataclasses_replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from attent.trainer import CHECKPOINT_NAME, METRICS_NAME, evaluate, fit
from tests.attent._spies import watch_observe

N_EXAMPLES, N_FEATURES, N_CLASSES = 37, 5, 3


def _data(seed=0, n=N_EXAMPLES):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorDataset(x, y)


def _model(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_FEATURES, 9), nn.Tanh(), nn.Dropout(dropout), nn.Linear(9, N_CLASSES))


def _same_parameters(a, b, exact=True):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if exact:
            assert torch.equal(p, q), name
        else:
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_plain_fit_matches_a_hand_written_loop_step_for_step():
    data, seed, epochs, batch = _data(), 3, 2, 8
    trained = _model(dropout=0.3)
    by_hand = copy.deepcopy(trained)
    fit(trained, data, loss="cross_entropy", optimizer=torch.optim.SGD(trained.parameters(), lr=0.2, momentum=0.9),
        epochs=epochs, batch_size=batch, seed=seed, progress=False)

    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.2, momentum=0.9)
    x, y = data.tensors
    torch.manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + epoch))
        for chunk in order.split(batch):
            optimizer.zero_grad()
            F.cross_entropy(by_hand(x[chunk]), y[chunk]).backward()
            optimizer.step()
    _same_parameters(trained, by_hand)


def test_gradient_accumulation_equals_the_large_batch():
    data = _data(1)
    small, large = _model(), _model()
    common = dict(loss="cross_entropy", epochs=2, seed=5, progress=False)
    # 37 examples: micro-batches of 4, three per step, give the same steps as batches of 12 (12, 12, 12, 1).
    accumulated = fit(small, data, optimizer=torch.optim.SGD(small.parameters(), lr=0.3), batch_size=4, grad_accum=3, **common)
    plain = fit(large, data, optimizer=torch.optim.SGD(large.parameters(), lr=0.3), batch_size=12, **common)
    assert accumulated.steps == plain.steps == 8
    _same_parameters(small, large, exact=False)
    assert not torch.equal(small[0].weight, _model()[0].weight)


def _resume_run(out_dir, **overrides):
    model = _model(dropout=0.25)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    options = dict(loss="cross_entropy", optimizer=optimizer, lr_scheduler=scheduler, epochs=3, batch_size=6,
                   eval_data=_data(9, 11), seed=11, progress=False, out_dir=out_dir)
    options.update(overrides)
    return model, fit(model, _data(2), **options)


def test_resume_from_a_mid_epoch_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    uninterrupted, full = _resume_run(tmp_path / "full")
    _, first = _resume_run(tmp_path / "split", max_steps=9)  # 7 batches per epoch: step 9 is mid-epoch 2
    assert first.stopped_early and first.steps == 9 and first.final["epoch"] == pytest.approx(1 + 2 / 7)
    resumed, second = _resume_run(tmp_path / "split", resume_from=tmp_path / "split")
    assert not second.stopped_early and second.steps == full.steps == 21
    _same_parameters(resumed, uninterrupted)
    assert second.final["val_loss"] == full.final["val_loss"]
    assert second.examples_seen == full.examples_seen == 3 * len(_data(2))
    assert len(first.step_times) == 9 and second.step_times[:9] == first.step_times  # the first session's steps kept
    assert len(second.step_times) == 21 and all(t > 0 for t in second.step_times)
    assert sum(second.step_times) <= second.train_time + 1e-9  # training only: scoring is selection time


def test_wall_time_at_a_step_price_counts_every_step_at_that_price():
    from attent.trainer import FitResult

    result = FitResult(history=[], selections=[], wall_time=15.0, train_time=12.0, selection_time=1.0, eval_time=0.0,
                       examples_seen=3, examples_scored=0, steps=3, epochs_completed=1, stopped_early=False, out_dir=None,
                       step_times=[1.0, 10.0, 1.0])
    assert result.wall_time_at_step_price() == pytest.approx(15.0 - 12.0 + 3 * 1.0)
    assert result.wall_time_at_step_price(2.0) == pytest.approx(15.0 - 12.0 + 3 * 2.0)
    assert dataclasses_replace(result, step_times=[]).wall_time_at_step_price(2.0) == 15.0


def test_resume_rejects_a_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        _resume_run(None, resume_from=tmp_path)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(amp):
    from attent.teacher import Teacher

    model = _model()
    before = copy.deepcopy(model)
    teacher = Teacher(N_EXAMPLES, when="always", warmup_epochs=1, ratio=0.5, interval=1, epochs=3)
    result = fit(model, _data(), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.5), epochs=3,
                 batch_size=8, amp=amp, teacher=teacher, score="fgrad", eval_data=_data(), progress=False)
    assert teacher.stats["observed"] == N_EXAMPLES + 2 * 18 and teacher.stats["nonfinite_scores"] == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model[0].weight, before[0].weight)
    assert result.final["val_loss"] < evaluate(before, _data(), loss="cross_entropy")["val_loss"]
    assert 0.0 <= result.final["val_accuracy"] <= 1.0


def test_metrics_jsonl_plots_and_records(tmp_path):
    model = _model()
    result = fit(model, _data(), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.5), epochs=2,
                 batch_size=8, eval_data=_data(4, 13), eval_every=2, out_dir=tmp_path, progress=False,
                 metrics={"margin": lambda logits, y: logits.gather(1, y[:, None])[:, 0] - logits.mean(dim=1)})
    # 5 steps per epoch: records every 2 steps and at each epoch end, never twice for one step
    assert [r["step"] for r in result.history] == [2, 4, 5, 6, 8, 10]
    assert [r["epoch"] for r in result.history][2::3] == [1.0, 2.0]
    required = {"epoch", "step", "wall_time", "train_time", "selection_time", "examples_seen", "ratio", "train_loss",
                "val_loss", "val_accuracy", "val_margin"}
    assert all(required <= set(r) for r in result.history)
    walls = [r["wall_time"] for r in result.history]
    assert walls == sorted(walls) and all(r["wall_time"] >= r["train_time"] + r["selection_time"] - 1e-6 for r in result.history)
    assert result.history[-1]["examples_seen"] == 2 * N_EXAMPLES
    lines = [json.loads(line) for line in (tmp_path / METRICS_NAME).read_text().splitlines()]
    assert [l["event"] for l in lines].count("eval") == 6 and [l["event"] for l in lines].count("selection") == 2
    assert lines[-1]["val_loss"] == result.final["val_loss"]
    for name in ("metric_vs_time.png", "metric_vs_examples.png", "ratio.png", CHECKPOINT_NAME):
        assert (tmp_path / name).stat().st_size > 0


def test_evaluate_matches_a_direct_computation():
    model, data = _model(), _data(6, 17)
    x, y = data.tensors
    logits = model(x)
    result = evaluate(model, data, loss="cross_entropy", batch_size=5)
    assert result["val_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert result["val_accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_lm_loss_on_mapping_batches_reports_perplexity():
    vocab, length = 13, 6

    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = nn.Embedding(vocab, 8), nn.Linear(8, vocab)

        def forward(self, input_ids):
            return {"logits": self.head(self.embed(input_ids))}

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (9, length), generator=g)
    labels = ids.clone()
    labels[:, -2:] = -100
    data = [{"input_ids": i, "labels": l} for i, l in zip(ids, labels)]
    model = TinyLM()
    logits = model(ids)["logits"]
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=-100)
    result = evaluate(model, data, loss="lm", batch_size=4)
    assert result["val_loss"] == pytest.approx(expected.item(), rel=1e-6)
    assert result["val_ppl"] == pytest.approx(expected.exp().item(), rel=1e-6)
    run = fit(model, data, loss="lm", optimizer=torch.optim.Adam(model.parameters(), lr=0.05), epochs=3, batch_size=4,
              eval_data=data, progress=False)
    assert run.final["val_loss"] < result["val_loss"]


def test_max_time_stops_training_early():
    model = _model()
    result = fit(model, _data(n=400), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                 epochs=10_000, batch_size=2, max_time=0.3, progress=False)
    assert result.stopped_early and result.epochs_completed < 10_000 and result.wall_time >= 0.3


def test_bad_arguments_raise_value_errors(tmp_path):
    model, data = _model(), _data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for bad, match in [
        (dict(epochs=0), "epochs must be a positive integer"),
        (dict(epochs=1, batch_size=0), "batch_size"),
        (dict(epochs=1, grad_accum=1.5), "grad_accum"),
        (dict(epochs=1, amp="fp8"), "amp must be"),
        (dict(epochs=1, checkpoint_every=3), "checkpoint_every needs out_dir"),
        (dict(epochs=1, max_time=0), "max_time"),
        (dict(epochs=1, loss="hinge"), "loss must be one of"),
    ]:
        options = dict(loss="cross_entropy", optimizer=optimizer, progress=False)
        options.update(bad)
        with pytest.raises(ValueError, match=match):
            fit(model, data, **options)
    with pytest.raises(ValueError, match="train_data is empty"):
        fit(model, TensorDataset(torch.zeros(0, 5), torch.zeros(0)), loss="mse", optimizer=optimizer, epochs=1)


# ---------------------------------------------------------------- with a teacher


class _Spy:
    """Records a teacher's select and observe calls, passing them through."""

    def __init__(self, teacher):
        self.selections, self.observed = {}, []
        select = teacher.select

        def spy_select(epoch, **options):
            self.selections[epoch] = selection = select(epoch, **options)
            return selection

        teacher.select = spy_select
        watch_observe(teacher, self.observed)


class _LoggedData(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data, self.fetched = data, []

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        self.fetched.append(index)
        return self.data[index]


def _oracle_scores(model, data, indices, kind):
    x, y = data.tensors
    if kind == "gradnorm":  # ||d l_i / d theta|| from torch.func per-example gradients
        params = {name: p.detach() for name, p in model.named_parameters()}

        def loss_one(p, xi, yi):
            return F.cross_entropy(torch.func.functional_call(model, p, (xi[None],)), yi[None])

        grads = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(params, x[indices], y[indices])
        return torch.stack([g.flatten(1).square().sum(1) for g in grads.values()]).sum(0).sqrt()
    logits = model(x[indices]).detach()
    if kind == "loss":
        return F.cross_entropy(logits, y[indices], reduction="none")
    return (logits.softmax(dim=1) - F.one_hot(y[indices], N_CLASSES)).norm(dim=1)


@pytest.mark.parametrize("kind", ["loss", "fgrad", "gradnorm"])
def test_teacher_trains_on_its_selection_and_observes_each_trained_example(kind):
    from attent.teacher import Teacher

    data, model = _data(7), _model()
    logged = _LoggedData(data)
    teacher = Teacher(len(data), when="always", warmup_epochs=1, strategy="hard", ratio=0.4, interval=1, epochs=3)
    spy = _Spy(teacher)
    # lr=0: the model never changes, so every score the trainer feeds can be checked against it.
    result = fit(model, logged, loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                 teacher=teacher, score=kind, epochs=3, batch_size=5, progress=False)
    steps = [0, 8, 11, 14]  # 37 examples in batches of 5, then 14 selected (floor(0.4 * 37))
    assert [r["step"] for r in result.history] == steps[1:]
    assert [s["selected"] for s in result.selections] == [37, 14, 14]
    for epoch in range(3):
        observed = [(i, s) for i, s, step in spy.observed if steps[epoch] <= step < steps[epoch + 1]]
        indices = torch.cat([i for i, _ in observed])
        assert sorted(indices.tolist()) == spy.selections[epoch].indices.tolist()
        torch.testing.assert_close(torch.cat([s for _, s in observed]), _oracle_scores(model, data, indices, kind))
    assert sorted(logged.fetched) == sorted(torch.cat([i for i, _, _ in spy.observed]).tolist())
    every = _oracle_scores(model, data, torch.arange(len(data)), kind)
    assert spy.selections[1].indices.tolist() == sorted(every.topk(14).indices.tolist())
    assert result.final["ratio"] == pytest.approx(14 / 37) and result.examples_seen == 37 + 14 + 14


@pytest.mark.parametrize("strategy", ["importance", "infobatch"])
def test_a_weighted_teachers_update_is_the_gradient_of_the_weighted_loss(strategy):
    """One SGD step of lr 1 over the whole selection moves the parameters by exactly minus the
    gradient of sum_i w_i l_i / m, with the real teacher's weights (importance: 1/(N q_i) over
    draws that repeat examples; InfoBatch: 1/(1 - r) on the kept below-mean examples)."""
    from attent.teacher import Teacher

    data, model = _data(8), _model()
    before = copy.deepcopy(model)
    if strategy == "importance":
        teacher = Teacher(len(data), when="always", strategy="importance", ratio=1.0, interval=1, epochs=1, warmup_epochs=0)
    else:
        teacher = Teacher(len(data), when="always", strategy="infobatch", epochs=8, warmup_epochs=0)
    teacher.observe(torch.arange(len(data)), torch.linspace(0.1, 3.0, len(data)))
    selection = teacher.select(0)
    chosen, weights = selection.indices, selection.weights
    assert weights is not None and (weights != 1).any()
    assert strategy != "importance" or chosen.unique().numel() < chosen.numel()  # draws repeat examples
    fit(model, data, loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=1.0), teacher=teacher,
        score="loss", epochs=teacher.plan.epochs, batch_size=len(data), max_steps=1, progress=False)
    x, y = data.tensors
    loss = (F.cross_entropy(before(x[chosen]), y[chosen], reduction="none") * weights).mean()
    grads = torch.autograd.grad(loss, list(before.parameters()))
    for p, q, g in zip(model.parameters(), before.parameters(), grads):
        torch.testing.assert_close(p, q - g, rtol=1e-5, atol=1e-6)


def _teacher_resume_run(out_dir, refresh="cycle", **overrides):
    from attent.teacher import Teacher

    model = _model(dropout=0.2, seed=4)
    teacher = Teacher(len(_data(3)), when="always", warmup_epochs=1, strategy="soft", ratio=0.5, interval=2, epochs=5, refresh=refresh,
                      reselect_each_epoch=True, seed=2)
    options = dict(loss="cross_entropy", optimizer=torch.optim.Adam(model.parameters(), lr=0.02), teacher=teacher,
                   score="fgrad", epochs=5, batch_size=4, seed=1, progress=False, out_dir=out_dir)
    options.update(overrides)
    return model, teacher, fit(model, _data(3), **options)


@pytest.mark.parametrize("refresh", ["cycle", None])
def test_resume_with_a_teacher_mid_cycle_reproduces_the_uninterrupted_run(tmp_path, refresh):
    """With refresh passes, and with online scores only (where the scores of the steps before the
    checkpoint decide the next selection, so the checkpoint must hold them)."""
    model, teacher, full = _teacher_resume_run(tmp_path / "full", refresh)
    _teacher_resume_run(tmp_path / "split", refresh, max_steps=14)  # 10 full-data steps, then 4 into epoch 1's subset
    resumed_model, resumed_teacher, resumed = _teacher_resume_run(tmp_path / "split", refresh, resume_from=tmp_path / "split")
    _same_parameters(resumed_model, model)
    for field in ("scores", "score_steps"):
        assert torch.equal(resumed_teacher.state_dict()[field], teacher.state_dict()[field]), field
    assert resumed.steps == full.steps and [s["selected"] for s in resumed.selections] == [s["selected"] for s in full.selections]
    assert resumed_teacher.select(4).indices.tolist() == teacher.select(4).indices.tolist()
    assert full.examples_scored == (4 * 37 if refresh else 0)  # a refresh pass over every example before each subset epoch


def test_an_lr_scheduler_factory_gets_the_planned_steps_and_the_rate_ends_at_zero(tmp_path):
    """37 examples, batch 4, accumulation 2: a full epoch is ceil(10 / 2) = 5 steps, a subset of 18
    (ratio 0.5) ceil(5 / 2) = 3; epochs full, subset, subset: 11 steps, the factory is told 11 and
    a linear decay over them ends at 0; selection and eval records number the epochs alike."""
    from attent.teacher import Teacher

    model = _model()
    planned = []

    def linear(optimizer, steps):
        planned.append(steps)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = fit(model, _data(), loss="cross_entropy", optimizer=optimizer, lr_scheduler=linear,
                 teacher=Teacher(N_EXAMPLES, when="always", warmup_epochs=1, ratio=0.5, interval=1, epochs=3), score="loss", epochs=3, batch_size=4,
                 grad_accum=2, progress=False, eval_data=_data(4, 13), out_dir=tmp_path)
    assert planned == [11] and result.steps == 11 and optimizer.param_groups[0]["lr"] == 0.0
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "selection"] == [1, 2, 3]
    assert [e["epoch"] for e in events if e["event"] == "eval"] == [1.0, 2.0, 3.0]


def test_fit_options_errors_name_the_option_and_a_detached_loss_is_explained():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for options, match in [(dict(epochs="two"), r"epochs must be a positive integer, got 'two' \(str\)"),
                           (dict(epochs=2, score="margin"), "score must be one of"),
                           (dict(epochs=2, max_time=-1), "max_time must be a positive number or None")]:
        with pytest.raises(ValueError, match=match):
            fit(model, _data(), loss="cross_entropy", optimizer=optimizer, **options)
    with pytest.raises(TypeError, match=r"unknown options \['epoch'\]"):
        fit(model, _data(), loss="cross_entropy", optimizer=optimizer, epoch=2)
    with pytest.raises(ValueError, match="the loss does not depend on the model's trainable parameters"):
        fit(model, _data(), loss=lambda logits, y: torch.ones(len(y)), optimizer=optimizer, epochs=1, progress=False)


def test_teacher_must_match_the_run():
    from attent.teacher import Teacher

    model, data = _model(), _data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="teacher was built for 36 examples"):
        fit(model, data, loss="cross_entropy", optimizer=optimizer, epochs=2, teacher=Teacher(36, when="always", ratio=0.5))
    with pytest.raises(ValueError, match="teacher plans 3 epochs"):
        fit(model, data, loss="cross_entropy", optimizer=optimizer, epochs=2, teacher=Teacher(37, when="always", epochs=3))


# ---------------------------------------------------------------- torch.distributed (2 gloo processes)

WORLD_SIZE = 2


def _ddp_rank(rank, store, out):
    """One rank of the distributed run: DDP model, a teacher with refresh passes, rank 0 writes."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from attent.teacher import Teacher

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE)
    model = DistributedDataParallel(_model(seed=6))
    teacher = Teacher(N_EXAMPLES, when="always", warmup_epochs=1, ratio=0.5, interval=1, epochs=3, refresh="cycle", seed=1)
    result = fit(model, _data(5), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.3),
                 teacher=teacher, score="fgrad", epochs=3, batch_size=4, grad_accum=2, eval_data=_data(6, 9), progress=False,
                 out_dir=os.path.dirname(out), max_time=60.0)
    torch.save({"params": [p.detach() for p in model.parameters()], "scores": teacher.state_dict()["scores"],
                "history": result.history, "selected": [s["selected"] for s in result.selections]}, out)
    dist.destroy_process_group()


def test_distributed_ranks_train_identically_and_rank_zero_writes(tmp_path):
    outs = [tmp_path / f"rank{rank}.pt" for rank in range(WORLD_SIZE)]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this file imports tests.*
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    workers = [subprocess.Popen([sys.executable, __file__, str(rank), str(tmp_path / "store"), str(out)], env=env)
               for rank, out in enumerate(outs)]
    assert [w.wait(timeout=120) for w in workers] == [0] * WORLD_SIZE
    first, second = (torch.load(out, weights_only=False) for out in outs)
    assert all(torch.equal(p, q) for p, q in zip(first["params"], second["params"]))
    assert torch.equal(first["scores"], second["scores"]) and (first["scores"] > 0).all()
    assert first["selected"] == second["selected"] == [37, 18, 18]
    # each rank trains on its half of the selection (padded to equal length): the counts cover both ranks
    assert [r["examples_seen"] for r in first["history"]] == [38, 38 + 18, 38 + 36]
    assert [r["val_loss"] for r in first["history"]] == [r["val_loss"] for r in second["history"]]
    lines = (tmp_path / METRICS_NAME).read_text().splitlines()
    assert sum(json.loads(line)["event"] == "eval" for line in lines) == 3
    assert (tmp_path / CHECKPOINT_NAME).is_file()


if __name__ == "__main__":
    _ddp_rank(int(sys.argv[1]), sys.argv[2], sys.argv[3])


def test_after_fit_the_teacher_holds_every_steps_scores_with_their_steps():
    """The trainer keeps the steps' scores and hands them over in one go (at each epoch start and
    at the end): after the run the teacher holds the last epoch's scores, each stamped with the
    step that measured it, as observing step by step would leave it."""
    from attent.teacher import Teacher

    model = _model()
    teacher = Teacher(N_EXAMPLES, when="always", ratio=0.5, epochs=2, seed=3)
    seen = []
    original = teacher.observe

    def observe(indices, scores, *, step=None):
        seen.append((torch.as_tensor(indices).clone(), torch.as_tensor(scores).clone(), step))
        return original(indices, scores, step=step)

    teacher.observe = observe
    result = fit(model, _data(), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                 teacher=teacher, score="loss", epochs=2, batch_size=4, progress=False)
    assert len(seen) == 2  # one hand-over per epoch, not one per step
    last_indices, last_scores, last_steps = seen[-1]
    assert last_indices.numel() == teacher.planned_size(1) and int(last_steps.max()) == result.steps - 1
    assert torch.equal(teacher.score_steps[last_indices], torch.as_tensor(last_steps))
    assert torch.equal(teacher.scores[last_indices], last_scores.double())
    assert int((teacher.score_steps >= 0).sum()) == len(set(torch.cat([i for i, _, _ in seen]).tolist()))


# ---------------------------------------------------------------- host synchronization, non-finite losses, timings


class _CudaStandIns:
    """The CUDA branch of the loop's clock on CPU tensors: ``torch.cuda.synchronize`` counted, timing
    events that fail when read before a synchronize (as a real event not yet reached would), and
    every tensor-to-host read (``item``, ``float``, ``int``, ``bool``, ``tolist``) counted."""

    READS = ("item", "__float__", "__int__", "__bool__", "tolist")

    def __init__(self, monkeypatch):
        import attent.trainer as trainer

        self.syncs = self.reads = 0
        self.reached = False  # what query() answers: whether the device has reached an event
        self.recorded = self.reached_upto = 0  # events recorded; the last one a query found reached
        stand_ins = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing
                self.at = self.generation = self.order = None

            def record(self, stream=None):
                stand_ins.recorded += 1
                self.at, self.generation, self.order = time.perf_counter(), stand_ins.syncs, stand_ins.recorded

            def query(self):
                if stand_ins.reached:  # one stream: every event recorded before a reached one is reached
                    stand_ins.reached_upto = max(stand_ins.reached_upto, self.order)
                return stand_ins.reached

            def elapsed_time(self, end):
                synced = stand_ins.syncs > max(self.generation, end.generation)
                assert synced or max(self.order, end.order) <= stand_ins.reached_upto, \
                    "an event read before a synchronize, or before a query found it (or a later one) reached"
                return 1000.0 * (end.at - self.at)

        def synchronize(device=None):
            self.syncs += 1

        monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
        monkeypatch.setattr(trainer, "_clock_for", lambda device: trainer._EventClock(device))
        for name in self.READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(getattr(torch.Tensor, name)))

    def _counted(self, read):
        def counted(tensor, *args, **kwargs):
            self.reads += 1
            return read(tensor, *args, **kwargs)

        return counted


@pytest.mark.parametrize("score", ["loss", "fgrad", "gradnorm"])
def test_on_cuda_the_loop_neither_synchronizes_nor_reads_a_tensor_per_step(monkeypatch, score):
    """Runs of 6 and of 2 steps per epoch (batches of 4 and 12 over the teacher's 24 of 48 examples,
    the same epochs, teacher and evaluation set, evaluated in 3 and in 1 batches) synchronize and read
    tensors on the host equally often: nothing per step or evaluation batch. Their step times come
    from events read after a synchronize."""
    from attent.teacher import Teacher

    stand_ins = _CudaStandIns(monkeypatch)
    counts = []
    for batch_size in (4, 12):
        model = _model()
        stand_ins.syncs = stand_ins.reads = 0
        result = fit(model, _data(n=48), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     teacher=Teacher(48, when="always", ratio=0.5, epochs=2, seed=1), score=score, epochs=2, batch_size=batch_size,
                     eval_data=_data(3, 10), progress=False)
        counts.append((stand_ins.syncs, stand_ins.reads))
        assert result.steps == 2 * 24 // batch_size and len(result.step_times) == result.steps
        assert all(t > 0 for t in result.step_times) and sum(result.step_times) <= result.train_time + 1e-9
        assert 0 < result.selection_time and result.train_time + result.selection_time <= result.wall_time
    assert counts[0] == counts[1] and counts[0][0] > 0


def _poisoned_data(n=37, poisoned=11):
    """Regression data whose target ``poisoned`` is NaN: every step that trains on it has a NaN loss."""
    x, _ = _data(n=n).tensors
    y = x.sum(dim=1)
    y[poisoned] = float("nan")
    return TensorDataset(x, y)


def _steps_holding(example, n, batch, epochs, seed):
    """The 0-based optimizer steps whose batch holds ``example`` in a full-data run."""
    per_epoch = math.ceil(n / batch)
    return [epoch * per_epoch + int((torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)) == example)
                                    .nonzero()) // batch for epoch in range(epochs)]


def _regression_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_FEATURES, 6), nn.Tanh(), nn.Linear(6, 1), nn.Flatten(0))


@pytest.mark.parametrize("on_cuda, checkpoint_every, stopped_at", [(False, 2, 3), (True, None, 8), (True, 2, 4)])
def test_a_nonfinite_loss_stops_the_run_naming_its_first_step(monkeypatch, tmp_path, on_cuda, checkpoint_every, stopped_at):
    """The first bad step is step 2 (0-based). On a CPU the run stops right after it; on CUDA
    (stand-ins) at the next synchronization point (the epoch's end at step 8, or a checkpoint at
    step 4), still naming step 2; no checkpoint is written after it."""
    if on_cuda:
        _CudaStandIns(monkeypatch)
    model, seed = _regression_model(), 4
    assert _steps_holding(11, 37, 5, 2, seed)[0] == 2
    with pytest.raises(FloatingPointError, match=rf"at optimizer step 2 \(0-based; the run stopped at step {stopped_at},"):
        fit(model, _poisoned_data(), loss="mse", optimizer=torch.optim.SGD(model.parameters(), lr=0.01), epochs=2,
            batch_size=5, seed=seed, progress=False, out_dir=tmp_path, checkpoint_every=checkpoint_every)
    checkpoint = tmp_path / CHECKPOINT_NAME
    assert not checkpoint.exists() if checkpoint_every is None else torch.load(checkpoint, weights_only=False)["state"]["step"] == 2


def test_nonfinite_loss_skip_makes_no_update_at_those_steps_and_says_so():
    seed, data = 4, _poisoned_data()
    skipped = _steps_holding(11, 37, 5, 3, seed)
    model = _regression_model()
    with pytest.warns(RuntimeWarning, match=r"skipped 3 optimizer steps whose loss was not finite"):
        result = fit(model, data, loss="mse", optimizer=torch.optim.SGD(model.parameters(), lr=0.01), epochs=3,
                     batch_size=5, seed=seed, progress=False, nonfinite_loss="skip")
    assert result.skipped_steps == skipped and result.steps == 24
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    # the same run by hand: each batch holding the NaN target makes no update, the others train
    by_hand = _regression_model()
    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.01)
    x, y = data.tensors
    for epoch in range(3):
        for chunk in torch.randperm(37, generator=torch.Generator().manual_seed(seed + epoch)).split(5):
            if 11 not in chunk.tolist():
                optimizer.zero_grad()
                F.mse_loss(by_hand(x[chunk]), y[chunk], reduction="mean").backward()
                optimizer.step()
    _same_parameters(model, by_hand, exact=False)
    with pytest.raises(ValueError, match=r"nonfinite_loss must be one of \('raise', 'skip'\)"):
        fit(model, data, loss="mse", optimizer=optimizer, epochs=1, nonfinite_loss="ignore")


def test_a_diverging_loss_draws_one_warning_and_a_converging_one_none():
    """lr 1e6 on cross-entropy: finite but exploding losses, warned about once; lr 0.1: no warning."""
    import warnings

    model = _model()
    with pytest.warns(RuntimeWarning, match=r"the training loss diverges: its mean before step \d+ is .* more than 10 "
                                            r"times the first step's") as caught:
        result = fit(model, _data(), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=1e6),
                     epochs=3, batch_size=8, progress=False)
    assert sum("diverges" in str(w.message) for w in caught) == 1 and result.final["train_loss"] > 10
    model = _model()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*diverges")
        fit(model, _data(), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=3,
            batch_size=8, progress=False)


def test_result_times_are_the_last_records_and_exclude_the_plots(tmp_path, monkeypatch):
    import attent.plots as plots
    from attent.teacher import Teacher

    draw = plots.plot_run
    monkeypatch.setattr(plots, "plot_run", lambda *args: (time.sleep(0.3), draw(*args)))
    model = _model()
    result = fit(model, _data(), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                 teacher=Teacher(N_EXAMPLES, when="always", ratio=0.5, epochs=2), epochs=2, batch_size=8, out_dir=tmp_path,
                 progress=False)
    last = [json.loads(line) for line in (tmp_path / METRICS_NAME).read_text().splitlines()][-1]
    assert result.wall_time == last["wall_time"] and result.selection_time == last["selection_time"] > 0
    assert result.selection_overhead == last["selection_time"] / last["wall_time"]
    assert result.train_time == last["train_time"] and result.examples_seen == last["examples_seen"]


def test_a_stop_between_records_ends_with_a_record_at_the_last_step():
    """eval_points=1 records only at the planned last step; max_steps stops at an epoch end before it."""
    model = _model()
    result = fit(model, _data(), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=3,
                 batch_size=8, eval_points=1, max_steps=5, progress=False)
    assert result.stopped_early and [r["step"] for r in result.history] == [5]


def test_progress_off_a_terminal_is_one_plain_line_per_epoch_and_bars_on_one(capsys, monkeypatch):
    model, options = _model(), dict(loss="cross_entropy", epochs=3, batch_size=8, eval_data=_data(4, 9), progress=True)
    fit(model, _data(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), **options)
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines) and "\x1b" not in "".join(lines)
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all(re.search(r"step \d+, ratio 1, train_loss [\d.]+, val_loss [\d.]+, val_accuracy [\d.]+, wall [\d.e-]+ s, "
                         r"selection [\d.]+%$", line) for line in lines), lines
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    fit(model, _data(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1), **options)
    assert "\r" in capsys.readouterr().err


class _InterruptAt:
    """A constant learning-rate scheduler that raises at its ``at``-th step (the run dies there)."""

    def __init__(self, optimizer, at):
        self.optimizer, self.at, self.calls = optimizer, at, 0

    def step(self):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_resume_from_a_checkpoint_between_records_keeps_the_loss_sum_bit_exact(tmp_path):
    """A run dies after a mid-epoch checkpoint (step 4, no record since the start): resumed, its
    first record's mean training loss is the uninterrupted run's to the bit."""
    def run(out_dir, at, **extra):
        model = _model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        return fit(model, _data(), loss="cross_entropy", optimizer=optimizer, lr_scheduler=_InterruptAt(optimizer, at),
                   epochs=2, batch_size=5, seed=2, progress=False, out_dir=out_dir, **extra)

    full = run(tmp_path / "full", at=0)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "split", at=6, checkpoint_every=4)
    resumed = run(tmp_path / "split", at=0, resume_from=tmp_path / "split")
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]


# ---------------------------------------------------------------- on a GPU (marked gpu, skipped without CUDA)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("kind", ["loss", "fgrad", "gradnorm"])
def test_fit_with_a_teacher_on_cuda_end_to_end(kind, tmp_path):
    """fit on CUDA with a teacher, end to end: lr 0 keeps the model fixed, so every score the teacher
    holds is checked against the CPU oracle (torch.func per-example gradients for gradnorm); the
    run writes its records and checkpoint, and its times are the last record's."""
    from attent.teacher import Teacher

    data, model = _data(7), _model()
    oracle_model = copy.deepcopy(model)
    teacher = Teacher(len(data), when="always", warmup_epochs=1, ratio=0.5, interval=1, epochs=3, seed=2)
    result = fit(model, data, loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.0), teacher=teacher,
                 score=kind, epochs=3, batch_size=5, device="cuda", eval_data=_data(3, 11), out_dir=tmp_path, progress=False)
    assert next(model.parameters()).is_cuda and result.steps == 8 + 2 * 4 and len(result.step_times) == result.steps
    assert all(t > 0 for t in result.step_times) and result.selection_time > 0
    last = [json.loads(line) for line in (tmp_path / METRICS_NAME).read_text().splitlines()][-1]
    assert result.wall_time == last["wall_time"] and (tmp_path / CHECKPOINT_NAME).is_file()
    held = torch.nonzero(teacher.score_steps >= 0).flatten()
    assert held.numel() == len(data)
    expected = _oracle_scores(oracle_model, data, held, kind)
    torch.testing.assert_close(teacher.scores[held].float(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_on_a_real_gpu_fit_synchronizes_no_more_with_more_steps(monkeypatch):
    """Runs of 6 and of 2 steps per epoch call torch.cuda.synchronize and read tensors equally often."""
    from attent.teacher import Teacher

    counts = {"syncs": 0, "reads": 0}

    def counted(what, call):
        def wrapper(*args, **kwargs):
            counts[what] += 1
            return call(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(torch.cuda, "synchronize", counted("syncs", torch.cuda.synchronize))
    for name in _CudaStandIns.READS:
        monkeypatch.setattr(torch.Tensor, name, counted("reads", getattr(torch.Tensor, name)))
    seen = []
    for batch_size in (4, 12):
        model = _model()
        counts.update(syncs=0, reads=0)
        fit(model, _data(n=48), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            teacher=Teacher(48, when="always", ratio=0.5, epochs=2, seed=1), score="loss", epochs=2, batch_size=batch_size,
            eval_data=_data(3, 10), device="cuda", progress=False)
        seen.append(dict(counts))
    assert seen[0] == seen[1] and seen[0]["syncs"] > 0


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("score", ["loss", "fgrad", "gradnorm", "learnability"])
def test_on_a_real_gpu_a_training_step_never_waits_for_the_device(monkeypatch, score):
    """torch's sync debug mode is "error" inside every training step (forward, backward, update and
    the step's scores): any call in it that waits for the GPU (a host read, a blocking copy, a
    nonzero, a boolean mask) raises, where the counting tests above see only some of them."""
    import attent.trainer as trainer
    from attent.teacher import Teacher

    step = trainer._Run.train_group

    def strict(run, group):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return step(run, group)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(trainer._Run, "train_group", strict)
    model = _model()
    reference = torch.rand(48) if score == "learnability" else None
    result = fit(model, _data(n=48), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                 teacher=Teacher(48, when="always", ratio=0.5, epochs=2, seed=1), score=score, reference=reference, epochs=2,
                 batch_size=4, eval_data=_data(3, 10), device="cuda", progress=False)
    assert result.steps == 12


class _DrawnReference:
    """A per-draw stand-in reference: its loss on a drawn batch is a function of the batch's inputs
    (the sum of each row), its table something else."""

    losses = torch.zeros(24)
    per_draw = True

    def draw_losses(self, inputs, targets, indices):
        assert inputs.shape == (torch.as_tensor(indices).numel(), 5) and targets.shape == inputs.shape[:1]
        return inputs.sum(1)


@pytest.mark.parametrize("drawn", [False, True])
def test_a_teacher_fed_learnability_observes_each_steps_losses_less_the_reference(monkeypatch, drawn):
    """fit(score="learnability") with a per-epoch teacher: every observed score is the example's
    loss at that step (a loop over single examples with the model of that step) less its
    reference loss: the table's, or a per-draw reference's on the step's own inputs."""
    from attent.teacher import Teacher

    data = _data(n=24)
    reference = _DrawnReference() if drawn else torch.linspace(-1.0, 2.0, 24)
    model = _model()
    seen = []
    original = Teacher.observe

    def observe(teacher, indices, scores, step=None):
        seen.append((torch.as_tensor(indices).clone(), torch.as_tensor(scores).clone()))
        return original(teacher, indices, scores, step=step)

    monkeypatch.setattr(Teacher, "observe", observe)
    snapshots = []
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: snapshots.append(copy.deepcopy(model)))
    fit(model, data, loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        teacher=Teacher(24, when="always", ratio=0.5, epochs=1, seed=3), score="learnability", reference=reference, epochs=1,
        batch_size=4, progress=False)
    indices = torch.cat([i for i, _ in seen])
    scores = torch.cat([s for _, s in seen])
    assert indices.numel() == 12 and len(snapshots) == 3
    x, y = data.tensors
    for position, (index, score) in enumerate(zip(indices.tolist(), scores.tolist())):
        step_model = _model()  # the model the step's forward saw: the start, or the previous step's update
        if position >= 4:
            step_model = snapshots[position // 4 - 1]
        with torch.no_grad():
            loss = F.cross_entropy(step_model(x[index:index + 1]), y[index:index + 1])
        expected = float(x[index].sum()) if drawn else float(reference[index])
        assert score == pytest.approx(float(loss) - expected, abs=1e-5)


def test_finished_step_marks_are_folded_without_waiting(monkeypatch):
    """On CUDA (stand-ins) the loop keeps at most UNSETTLED_STEPS steps' timing events: once that
    many are kept it folds the leading ones the device has reached (query(), never a
    synchronize), and keeps those it has not."""
    import attent.trainer as trainer

    stand_ins = _CudaStandIns(monkeypatch)
    monkeypatch.setattr(trainer, "UNSETTLED_STEPS", 3)
    kept = []
    fold = trainer._Run.fold_marks

    def watched(run, finished_only):
        before = len(run.unsettled)
        fold(run, finished_only)
        kept.append((finished_only, before, len(run.unsettled)))

    monkeypatch.setattr(trainer._Run, "fold_marks", watched)
    for reached in (True, False):
        stand_ins.reached = reached
        kept.clear()
        model = _model()
        result = fit(model, _data(n=48), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     epochs=1, batch_size=4, progress=False)
        early = [(before, after) for finished_only, before, after in kept if finished_only]
        assert early and all(before >= 3 for before, _ in early)
        assert all(after == (0 if reached else before) for before, after in early)
        assert len(result.step_times) == result.steps == 12
