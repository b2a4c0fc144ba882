"""Hugging Face Trainer integration: a tiny GPT-2 with peft LoRA trained under a teacher, end to end."""
import copy

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from attent.integrations.hf import INDEX_KEY, AtteNTTrainer  # noqa: E402
from attent.teacher import Teacher  # noqa: E402
from tests.attent._spies import watch_observe  # noqa: E402

VOCAB, LENGTH, N_EXAMPLES = 29, 7, 11


def _data(seed, n=N_EXAMPLES):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        ids = torch.randint(0, VOCAB, (LENGTH,), generator=g)
        labels = ids.clone()
        labels[LENGTH - 1 - i % 3:] = -100  # some examples carry fewer target tokens
        items.append({"input_ids": ids, "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": labels})
    return items


def _lora_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    lora = peft.LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True,
                           init_lora_weights=False)
    return peft.get_peft_model(transformers.GPT2LMHeadModel(config), lora)


def _example_fgrad(model, item):
    """||d l_i / d logits_i|| of the example's mean shifted-token loss, by autograd."""
    logits = model(input_ids=item["input_ids"][None]).logits.detach().requires_grad_(True)
    loss = F.cross_entropy(logits[0, :-1], item["labels"][1:], ignore_index=-100)
    (grad,) = torch.autograd.grad(loss, logits)
    return grad.norm()


def test_lora_gpt2_trains_under_the_teacher(tmp_path):
    train, val = _data(0), _data(1, 5)
    model = _lora_gpt2()
    initial = copy.deepcopy(model)
    teacher = Teacher(len(train), when="always", warmup_epochs=1, strategy="hard", ratio=0.5, interval=1, epochs=3, refresh="cycle")
    observed, selected = [], {}
    select = teacher.select
    watch_observe(teacher, observed)
    teacher.select = lambda epoch: selected.setdefault(epoch, select(epoch))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=4, num_train_epochs=3,
        learning_rate=5e-2, lr_scheduler_type="constant", logging_steps=1, eval_strategy="epoch", save_strategy="no",
        report_to=[], use_cpu=True, disable_tqdm=True, dataloader_pin_memory=False, seed=0,
    )
    trainer = AtteNTTrainer(model=model, args=args, train_dataset=train, eval_dataset=val, teacher=teacher, score="fgrad")
    assert trainer.objective.name == "lm"  # a causal LM under its peft wrapper
    trainer.train()

    # epoch 0: all 11 examples (3 steps); epochs 1 and 2: the 5 highest-scored (2 steps each)
    assert trainer.state.global_step == 3 + 2 + 2
    first_indices, first_scores, _ = min(observed, key=lambda seen: seen[2])  # the first training batch, before any update
    expected = torch.stack([_example_fgrad(initial, train[i]) for i in first_indices.tolist()])
    torch.testing.assert_close(first_scores, expected, rtol=1e-4, atol=1e-6)
    refreshes = [(i, step) for i, _, step in observed if i.numel() == N_EXAMPLES]  # training batches hold 4 at most
    assert [step for _, step in refreshes] == [3, 5] and all(sorted(i.tolist()) == list(range(N_EXAMPLES)) for i, _ in refreshes)
    for epoch, (first_step, end_step) in enumerate([(0, 3), (3, 5), (5, 7)]):
        trained = torch.cat([i for i, _, step in observed if i.numel() < N_EXAMPLES and first_step <= step < end_step])
        assert sorted(trained.tolist()) == selected[epoch].indices.tolist()
    ratios = [log["attent_ratio"] for log in trainer.state.log_history if "attent_ratio" in log and "loss" in log]
    assert ratios[:3] == [1.0] * 3 and ratios[3:] == pytest.approx([5 / 11] * 4)
    assert sum("eval_loss" in log for log in trainer.state.log_history) == 3

    changed = {name for (name, p), q in zip(model.named_parameters(), initial.parameters()) if not torch.equal(p, q)}
    assert changed and all("lora_" in name for name in changed)


def test_compute_loss_is_the_weighted_mean_of_per_example_losses(tmp_path):
    train = _data(2)
    model = _lora_gpt2()
    teacher = Teacher(len(train), when="always", warmup_epochs=1, ratio=0.5, epochs=2, interval=1)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no",
                                          num_train_epochs=2)
    trainer = AtteNTTrainer(model=model, args=args, train_dataset=train, teacher=teacher, score="loss")
    picks = [3, 8, 0]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in picks])
    assert batch[INDEX_KEY].tolist() == picks
    weights = torch.tensor([0.5, 2.0, 1.5])
    teacher.loss_weights = lambda indices: weights[[picks.index(i) for i in indices.tolist()]]
    loss = trainer.compute_loss(model, dict(batch))
    assert trainer.teaching.pending == 3 and teacher.stats["observed"] == 0  # kept until the next epoch or the end
    trainer.teaching.flush()
    per_example = torch.stack([
        F.cross_entropy(model(input_ids=train[i]["input_ids"][None]).logits[0, :-1], train[i]["labels"][1:], ignore_index=-100)
        for i in picks
    ])
    torch.testing.assert_close(loss, (per_example * weights).mean())
    assert teacher.stats["observed"] == 3


def test_bad_teachers_are_rejected(tmp_path):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, num_train_epochs=3)
    with pytest.raises(ValueError, match="teacher was built for 5 examples"):
        AtteNTTrainer(model=_lora_gpt2(), args=args, train_dataset=_data(0), teacher=Teacher(5, when="always", ratio=0.5))
    with pytest.raises(ValueError, match="score must be one of .*'gradnorm' needs the probe"):
        AtteNTTrainer(model=_lora_gpt2(), args=args, train_dataset=_data(0), teacher=Teacher(N_EXAMPLES, when="always", ratio=0.5),
                      score="gradnorm")
    for epochs in (1, 5):  # fewer used to crash at the next epoch, more to cut the schedule silently
        with pytest.raises(ValueError, match=f"teacher plans {epochs} epochs but the run is asked for 3"):
            AtteNTTrainer(model=_lora_gpt2(), args=args, train_dataset=_data(0),
                          teacher=Teacher(N_EXAMPLES, when="always", warmup_epochs=1, ratio=0.5, interval=1, epochs=epochs))
    trainer = AtteNTTrainer(model=_lora_gpt2(), args=args, train_dataset=_data(0),
                            teacher=Teacher(N_EXAMPLES, when="always", warmup_epochs=1, ratio=0.5, interval=1, epochs=3))
    with pytest.raises(ValueError, match="cannot resume from a Trainer checkpoint"):
        trainer.train(resume_from_checkpoint=str(tmp_path))


def _args(tmp_path, **overrides):
    options = dict(output_dir=str(tmp_path), per_device_train_batch_size=2, num_train_epochs=4, learning_rate=1e-2,
                   logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                   dataloader_pin_memory=False, seed=0)
    return transformers.TrainingArguments(**(options | overrides))


def test_subset_epochs_count_as_epochs_and_the_lr_schedule_ends_at_the_last_step(tmp_path):
    """4 epochs: 11 examples, then 5 (ratio 0.5) three times, batch 2, accumulation 2: the steps
    are ceil(ceil(11/2)/2) + 3 * ceil(ceil(5/2)/2) = 3 + 3 * 2 = 9; the Trainer's epoch ends at 4.0
    and a linear decay reaches 0 at the last step."""
    teacher = Teacher(N_EXAMPLES, when="always", warmup_epochs=1, ratio=0.5, interval=1, epochs=4)
    trainer = AtteNTTrainer(model=_lora_gpt2(), args=_args(tmp_path, gradient_accumulation_steps=2,
                                                           lr_scheduler_type="linear"),
                            train_dataset=_data(0), teacher=teacher, score="loss")
    trainer.train()
    assert trainer.state.global_step == trainer.state.max_steps == 9
    assert trainer.state.epoch == pytest.approx(4.0)
    logged = [log for log in trainer.state.log_history if "learning_rate" in log]
    assert len(logged) == 9 and [log["epoch"] for log in logged][2] == pytest.approx(1.0)
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0
    assert teacher.stats["observed"] == N_EXAMPLES + 3 * 5


def test_a_budgeted_teacher_spends_its_budget_and_the_schedule_ends_at_its_last_step(tmp_path):
    """Budget 0.5 of 4 epochs x 11 examples: at most 22 examples over the 4 epochs, the Trainer's
    max_steps is the plan's step count, and a linear decay ends at 0."""
    from attent.schedules import IntervalSchedule

    teacher = Teacher(N_EXAMPLES, when="always", epochs=4, budget=0.5, warmup_epochs=0, interval=IntervalSchedule.fixed(4),
                      reselect_each_epoch=True)
    sizes = [teacher.planned_size(e) for e in range(4)]
    trainer = AtteNTTrainer(model=_lora_gpt2(), args=_args(tmp_path, lr_scheduler_type="linear"),
                            train_dataset=_data(0), teacher=teacher, score="loss")
    trainer.train()
    assert sum(sizes) <= 22 and trainer.state.global_step == trainer.state.max_steps == sum((m + 1) // 2 for m in sizes)
    assert teacher.stats["observed"] == sum(sizes) and trainer.lr_scheduler.get_last_lr()[0] == 0.0


def test_the_hf_trainer_and_fit_make_the_same_selections(tmp_path):
    """One protocol: with the model frozen (lr 0), both trainers feed the teacher the same loss
    scores, so a teacher of the same seed selects the same examples at every epoch."""
    from attent import fit
    from attent.strategies import Soft

    def make_teacher():
        return Teacher(N_EXAMPLES, when="always", warmup_epochs=1, strategy=Soft(temperature=0.3), ratio=0.4, interval=1, epochs=4, refresh=0.5, seed=3)

    def selections_of(teacher):
        seen = {}
        select = teacher.select
        teacher.select = lambda epoch: seen.setdefault(epoch, select(epoch))
        return seen

    hf_teacher, fit_teacher = make_teacher(), make_teacher()
    hf_seen, fit_seen = selections_of(hf_teacher), selections_of(fit_teacher)
    trainer = AtteNTTrainer(model=_lora_gpt2(), args=_args(tmp_path, learning_rate=0.0, lr_scheduler_type="constant"),
                            train_dataset=_data(0), teacher=hf_teacher, score="loss")
    trainer.train()

    class Frozen(torch.nn.Module):  # the same LoRA GPT-2, called with the batch mapping
        def __init__(self):
            super().__init__()
            self.model = _lora_gpt2()

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    frozen = Frozen()
    fit(frozen, _data(0), loss="lm", optimizer=torch.optim.SGD(frozen.parameters(), lr=0.0), teacher=fit_teacher,
        score="loss", epochs=4, batch_size=2, progress=False)
    assert sorted(hf_seen) == sorted(fit_seen) == [0, 1, 2, 3]
    for epoch in range(4):
        assert hf_seen[epoch].indices.tolist() == fit_seen[epoch].indices.tolist(), epoch
    torch.testing.assert_close(hf_teacher.scores, fit_teacher.scores, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_scoring_passes_use_the_output_embeddings_as_the_fused_head(tmp_path, monkeypatch):
    """Where the head runs the Triton kernels (CUDA; here the predicate is patched), the scorer's
    head is by default the model's output embeddings (GPT-2's lm_head, tied to the token
    embedding): a refresh pass scores from its input through linear_cross_entropy_scores, as the
    logits scores of score_head=False, without a warning. On a CPU the default is no head."""
    import warnings

    import attent.integrations.hf as hf_module
    import attent.scores as scores_module

    calls = []
    fused_op = scores_module.linear_cross_entropy_scores
    monkeypatch.setattr(scores_module, "linear_cross_entropy_scores", lambda *a, **k: calls.append(1) or fused_op(*a, **k))
    teacher = Teacher(N_EXAMPLES, when="always", warmup_epochs=1, ratio=0.5, interval=1, epochs=2)
    model = _lora_gpt2()
    on_cpu = AtteNTTrainer(model=model, args=_args(tmp_path, num_train_epochs=2), train_dataset=_data(0), teacher=teacher)
    assert on_cpu.teaching.scorer.head is None
    monkeypatch.setattr(hf_module, "uses_triton", lambda *tensors: True)
    fused = AtteNTTrainer(model=model, args=_args(tmp_path, num_train_epochs=2, per_device_eval_batch_size=4),
                          train_dataset=_data(0), teacher=teacher, score="fgrad")
    plain = AtteNTTrainer(model=model, args=_args(tmp_path, num_train_epochs=2, per_device_eval_batch_size=4),
                          train_dataset=_data(0), teacher=teacher, score="fgrad", score_head=False)
    assert fused.teaching.scorer.head is model.get_output_embeddings() and plain.teaching.scorer.head is None
    scores = {}
    for name, trainer in (("fused", fused), ("plain", plain)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            scores[name] = trainer.teaching.scorer.score_batches(model, trainer._refresh_batches(torch.arange(N_EXAMPLES)),
                                                                 autocast_context=trainer.accelerator.autocast)
    assert len(calls) == 3 and fused.teaching.scorer.head_fallback is None  # 11 examples in batches of 4
    assert torch.equal(scores["fused"][0], scores["plain"][0])
    torch.testing.assert_close(scores["fused"][1], scores["plain"][1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="score_head must be None .* got True"):
        AtteNTTrainer(model=model, args=_args(tmp_path), train_dataset=_data(0), teacher=teacher, score_head=True)


class _DrawnReference:
    """A per-draw stand-in reference: its loss on a drawn batch is a function of the batch's model
    inputs (the mean token id over 10), its table zeros."""

    losses = torch.zeros(N_EXAMPLES)
    per_draw = True

    def draw_losses(self, inputs, targets, indices):
        assert inputs["input_ids"].shape == targets.shape == (torch.as_tensor(indices).numel(), LENGTH)
        return inputs["input_ids"].float().mean(1) / 10


@pytest.mark.parametrize("drawn", [False, True])
def test_learnability_scores_are_the_loss_less_the_reference_of_each_example(tmp_path, drawn):
    """score="learnability": each training batch's scores are the examples' mean shifted-token
    losses less their reference losses (the model frozen at lr 0: a loop over single examples):
    the table's, or a per-draw reference's on the batch's own model inputs."""
    train = _data(3)
    model = _lora_gpt2()
    reference = _DrawnReference() if drawn else torch.linspace(0.5, 3.0, N_EXAMPLES)
    teacher = Teacher(N_EXAMPLES, when="always", warmup_epochs=1, ratio=0.5, epochs=2, interval=1)
    observed = []
    watch_observe(teacher, observed)
    trainer = AtteNTTrainer(model=model, args=_args(tmp_path, learning_rate=0.0, lr_scheduler_type="constant",
                                                    num_train_epochs=2),
                            train_dataset=train, teacher=teacher, score="learnability", reference=reference)
    trainer.train()
    indices = torch.cat([i for i, _, _ in observed])
    scores = torch.cat([s for _, s, _ in observed])
    with torch.no_grad():
        expected = torch.stack([
            F.cross_entropy(model(input_ids=train[i]["input_ids"][None]).logits[0, :-1], train[i]["labels"][1:],
                            ignore_index=-100) - (train[i]["input_ids"].float().mean() / 10 if drawn else reference[i])
            for i in indices.tolist()])
    torch.testing.assert_close(scores.float(), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="reference holds 4 reference losses but train_dataset has 11"):
        AtteNTTrainer(model=model, args=_args(tmp_path), train_dataset=train, teacher=teacher, score="learnability",
                      reference=torch.ones(4))


def test_pooled_selection_keeps_the_best_learnability_of_each_chunk(tmp_path):
    """pool=: chunks of nB = ceil(2 / 0.4) = 5 candidates (11 examples: chunks 5, 5, 1 keeping 2, 2, 1),
    each step training the nb = 2 of largest learnability (the model frozen at lr 0: a loop over
    single examples), for num_train_epochs=2 epochs' worth of examples."""
    from attent import PoolSelection
    from attent.reference import Evidence

    class Ref:
        losses = torch.linspace(3.0, 0.5, N_EXAMPLES)
        evidence = Evidence(2.0, 1.0, 0.1, True, "stand-in")

    train = _data(4)
    model = _lora_gpt2()
    trainer = AtteNTTrainer(model=model, args=_args(tmp_path, learning_rate=0.0, lr_scheduler_type="constant",
                                                    num_train_epochs=2),
                            train_dataset=train, pool=PoolSelection(keep=0.4), score="learnability", reference=Ref())
    chosen = []
    choose = trainer.teaching.choose

    def spy(model, indices, batch, **options):
        kept, kept_batch = choose(model, indices, batch, **options)
        chosen.append((indices, kept))
        return kept, kept_batch

    trainer.teaching.choose = spy
    trainer.train()
    with torch.no_grad():
        learnability = {i: float(F.cross_entropy(model(input_ids=train[i]["input_ids"][None]).logits[0, :-1],
                                                 train[i]["labels"][1:], ignore_index=-100)) - float(Ref.losses[i])
                        for i in range(N_EXAMPLES)}
    sizes = trainer.teaching.full_sizes
    assert sum(len(kept) for _, kept in chosen) == 2 * N_EXAMPLES and trainer.attent_candidates == sum(sizes)
    assert trainer.state.global_step == trainer.state.max_steps == len(chosen) == sum(-(-s // 5) for s in sizes)
    for candidates, kept in chosen:
        expected = sorted(candidates.tolist(), key=lambda i: -learnability[i])[:len(kept)]
        assert sorted(kept.tolist()) == sorted(expected)
    with pytest.raises(ValueError, match="either teacher= .* or pool="):
        AtteNTTrainer(model=model, args=_args(tmp_path), train_dataset=train)
    with pytest.raises(ValueError, match="pool= needs gradient_accumulation_steps=1"):
        AtteNTTrainer(model=model, args=_args(tmp_path, gradient_accumulation_steps=2), train_dataset=train,
                      pool=PoolSelection(), score="learnability", reference=Ref())


def test_the_default_teacher_without_a_reference_trains_full_datas_shortened_schedule(tmp_path):
    """Budget 0.5 of 4 epochs x 11 examples, no reference: the Trainer runs 2 whole epochs of every
    example (a seeded permutation each), never feeds the teacher, warns and logs why."""
    teacher = Teacher(N_EXAMPLES, epochs=4, budget=0.5)
    with pytest.warns(RuntimeWarning, match="trains uniformly .*no reference model"):
        trainer = AtteNTTrainer(model=_lora_gpt2(), args=_args(tmp_path, lr_scheduler_type="linear"),
                                train_dataset=_data(0), teacher=teacher, score="loss")
    orders = []
    begin = trainer.attent_begin_epoch

    def spy(epoch):
        orders.append(begin(epoch).tolist())
        return trainer._epoch_sampler.order

    trainer.attent_begin_epoch = spy
    trainer.train()
    assert [sorted(order) for order in orders] == [list(range(N_EXAMPLES))] * 2
    assert trainer.state.global_step == trainer.state.max_steps == 2 * ((N_EXAMPLES + 1) // 2)
    assert teacher.stats["observed"] == 0 and not trainer.teaching.selects
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0
