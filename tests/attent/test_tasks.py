"""The testbeds: shapes, determinism under a seed, disjoint splits, model forwards, the synthetic
tasks' ground truth, and the methods and final metric shared by the demo and the benchmark."""
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from attent.scores import Objective
from attent.tasks import TASKS, Task, TrainDefaults, make_task
from attent.tasks.compare import FULL_DATA, PUBLISHED, Method, final_metric, format_table
from attent.tasks.icl_regression import make_prompts
from attent.tasks.scb import ground_truth, next_token_distribution
from attent.tasks.stdlib_lm import ByteTokenizer, WindowDataset, corpus_files


@pytest.fixture(scope="module")
def tasks():
    return {name: make_task(name, seed=3) for name in TASKS}


def _first_batch(dataset, size=5):
    return next(iter(DataLoader(dataset, batch_size=size)))


def _rows(dataset) -> set[bytes]:
    inputs = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return {row.numpy().tobytes() for row in inputs.reshape(len(dataset), -1)}


EXPECTED = {
    # name: (train size, val size, input shape, input dtype, target shape, target dtype, prediction shape per example)
    "digits": (1437, 360, (1, 8, 8), torch.float32, (), torch.int64, (10,)),
    "digits_augmented": (14370, 360, (1, 8, 8), torch.float32, (), torch.int64, (10,)),
    "stdlib_lm": (3072, 512, (64,), torch.int64, (64,), torch.int64, (64, 257)),
    "scb": (6144, 1024, (12,), torch.int64, (), torch.int64, (16,)),
    "icl_regression": (8192, 1024, (12, 7), torch.float32, (1,), torch.float32, (1,)),
    "digits_noisy": (11500, 360, (1, 8, 8), torch.float32, (), torch.int64, (10,)),
    "digits_flipped": (11500, 360, (1, 8, 8), torch.float32, (), torch.int64, (10,)),
    "digits_off_target": (11500, 180, (1, 8, 8), torch.float32, (), torch.int64, (10,)),
    "prose_lm": (3072, 512, (64,), torch.int64, (64,), torch.int64, (64, 257)),
    "icl_corrupted": (49152, 1024, (12, 7), torch.float32, (1,), torch.float32, (1,)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_items_have_the_documented_shapes_and_the_model_consumes_a_batch(tasks, name):
    task = tasks[name]
    n_train, n_val, in_shape, in_dtype, target_shape, target_dtype, pred_shape = EXPECTED[name]
    assert (len(task.train), len(task.val)) == (n_train, n_val)
    x, y = task.train[n_train - 1]
    assert (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype) == (in_shape, in_dtype, target_shape, target_dtype)
    inputs, targets = _first_batch(task.val, 5)
    model = task.model(0).eval()
    with torch.no_grad():
        outputs = model(inputs)
    pred = outputs if isinstance(outputs, torch.Tensor) else outputs.logits
    assert tuple(pred.shape) == (5, *pred_shape)
    losses = Objective.resolve(task.loss).losses(pred, targets)
    assert losses.shape == (5,) and torch.isfinite(losses).all()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_a_seed_fixes_data_and_model_initialization(name):
    first, again = make_task(name, seed=5, quick=True), make_task(name, seed=5, quick=True)
    for split in ("train", "val"):
        a, b = getattr(first, split), getattr(again, split)
        assert len(a) == len(b)
        for i in (0, len(a) // 2, len(a) - 1):
            assert all(torch.equal(u, v) for u, v in zip(a[i], b[i]))
    state = torch.get_rng_state()
    one, same, other = first.model(7), again.model(7), first.model(8)
    assert torch.equal(torch.get_rng_state(), state), "Task.model must leave the global RNG alone"
    pairs = list(zip(one.state_dict().values(), same.state_dict().values(), other.state_dict().values()))
    assert all(torch.equal(p, q) for p, q, _ in pairs)
    assert any(not torch.equal(p, r) for p, _, r in pairs if p.is_floating_point())


@pytest.mark.parametrize("name", ["stdlib_lm", "scb", "icl_regression"])
def test_another_seed_draws_other_training_data(name):
    a, b = make_task(name, seed=1, quick=True), make_task(name, seed=2, quick=True)
    assert not torch.equal(a.train[0][0], b.train[0][0])


@pytest.mark.parametrize("name", ["digits", "digits_augmented", "scb", "icl_regression", "digits_noisy",
                                  "digits_off_target", "icl_corrupted"])
def test_no_validation_input_appears_in_training(tasks, name):
    task = tasks[name]
    assert not _rows(task.train) & _rows(task.val)
    if task.reference is not None:
        holdout = task.info["holdout"]
        assert not _rows(task.train) & _rows(holdout) and not _rows(holdout) & _rows(task.val)


def test_digits_augmented_holds_each_training_image_and_nine_jittered_copies(tasks):
    digits, augmented = tasks["digits"], tasks["digits_augmented"]
    n = len(digits.train)
    originals = torch.stack([augmented.train[i][0] for i in range(n)])
    assert torch.allclose(originals, digits.train.tensors[0], atol=1e-6)
    labels = augmented.train.tensors[1]
    assert torch.equal(labels, digits.train.tensors[1].repeat(10))
    copy = augmented.train.tensors[0][n:2 * n]
    difference = (copy - originals).abs().mean(dim=(1, 2, 3))
    assert bool((difference > 0.05).all())  # every copy moved or noised
    assert torch.equal(augmented.val.tensors[0], digits.val.tensors[0])
    other = make_task("digits_augmented", seed=4)
    assert torch.equal(other.train.tensors[0][:n], augmented.train.tensors[0][:n])
    assert not torch.equal(other.train.tensors[0][n:], augmented.train.tensors[0][n:])


def test_digits_split_is_fixed_stratified_and_covers_the_dataset(tasks):
    info = tasks["digits"].info
    train_idx, val_idx = info["train_indices"], info["val_indices"]
    assert sorted(torch.cat([train_idx, val_idx]).tolist()) == list(range(1797))
    labels = torch.tensor([int(tasks["digits"].val[i][1]) for i in range(len(tasks["digits"].val))])
    counts = torch.bincount(labels, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37
    assert torch.equal(make_task("digits", seed=99).info["val_indices"], val_idx)
    images = torch.stack([tasks["digits"].train[i][0] for i in range(len(tasks["digits"].train))])
    assert abs(float(images.mean())) < 1e-4 and abs(float(images.std()) - 1.0) < 1e-3


def test_stdlib_corpus_holds_out_whole_files_and_windows_are_its_text(tasks):
    train_files, val_files = corpus_files()
    assert train_files and val_files and not set(train_files) & set(val_files)
    assert sorted(train_files + val_files) == sorted(Path(train_files[0]).parent.glob("*.py"))
    task = tasks["stdlib_lm"]
    assert task.info["val_files"] == [f.name for f in val_files]
    tokenizer = task.info["tokenizer"]
    val_text = "".join(f.read_text(encoding="utf-8", errors="replace") + "\n" for f in val_files)  # eos after every file
    for i in (0, 137, len(task.val) - 1):
        ids, labels = task.val[i]
        assert torch.equal(ids, labels) and int(ids.max()) < tokenizer.vocab_size
        text = tokenizer.decode(ids)
        if "\ufffd" not in text:  # a window may cut a multi-byte character at its ends
            assert text in val_text


def test_byte_tokenizer_round_trips_and_validates():
    tokenizer = ByteTokenizer()
    text = "def f(x):\n    return 'é' * x\n"
    ids = tokenizer.encode(text, eos=True)
    assert ids.dtype == torch.int64 and int(ids[-1]) == tokenizer.eos_id
    assert tokenizer.decode(ids[:-1]) == text
    with pytest.raises(ValueError, match="shape"):
        tokenizer.decode(ids[None])
    with pytest.raises(ValueError, match="starts"):
        WindowDataset(ids, torch.tensor([ids.numel() - 2]), 5)


def test_scb_ground_truth_is_sparse_and_stochastic():
    transition, attention = ground_truth(vocab=9, context=7, sparsity=3, support=2, seed=4)
    assert torch.allclose(transition.sum(1), torch.ones(9, dtype=torch.float64))
    assert torch.allclose(attention.sum(1), torch.ones(9, dtype=torch.float64))
    assert ((transition > 0).sum(1) == 2).all() and ((attention > 0).sum(1) == 3).all()
    assert (attention[:, -1] == 0).all()
    with pytest.raises(ValueError, match="sparsity"):
        ground_truth(vocab=9, context=7, sparsity=7, support=2, seed=4)


def test_scb_next_token_distribution_matches_a_loop_over_positions():
    transition, attention = ground_truth(vocab=5, context=9, sparsity=2, support=3, seed=0)
    inputs = torch.randint(0, 5, (7, 9), generator=torch.Generator().manual_seed(1))
    expected = torch.zeros(7, 5, dtype=torch.float64)
    for b in range(7):
        last = int(inputs[b, -1])
        for j in range(9):
            expected[b] += attention[last, j] * transition[int(inputs[b, j])]
    assert torch.allclose(next_token_distribution(inputs, transition, attention), expected)
    with pytest.raises(ValueError, match="attention"):
        next_token_distribution(inputs[:, :4], transition, attention)


def test_scb_targets_follow_the_ground_truth(tasks):
    task = tasks["scb"]
    transition, attention = task.info["transition"], task.info["attention"]
    inputs = torch.stack([task.train[i][0] for i in range(len(task.train))])
    targets = torch.stack([task.train[i][1] for i in range(len(task.train))])
    truth = next_token_distribution(inputs, transition, attention)
    # every target is possible under the sparse ground truth ...
    assert (truth.gather(1, targets[:, None]) > 0).all()
    # ... and the targets' frequencies match the model's (standard error ~0.005 per entry here)
    empirical = torch.bincount(targets, minlength=truth.shape[1]).double() / targets.numel()
    assert torch.allclose(empirical, truth.mean(0), atol=0.02)
    # a transition matrix with permuted rows does not explain the data
    permuted = next_token_distribution(inputs, transition.roll(1, dims=0), attention)
    assert (permuted.gather(1, targets[:, None]) == 0).float().mean() > 0.2
    val_inputs = torch.stack([task.val[i][0] for i in range(len(task.val))])
    val_targets = torch.stack([task.val[i][1] for i in range(len(task.val))])
    bayes = -next_token_distribution(val_inputs, transition, attention).gather(1, val_targets[:, None]).log().mean()
    assert math.isclose(float(bayes), task.info["bayes_val_loss"], rel_tol=1e-9)
    assert task.info["bayes_val_loss"] < math.log(task.info["vocab"])


def test_icl_targets_are_the_prompt_weights_applied_to_the_query(tasks):
    task = tasks["icl_regression"]
    dim, pairs = task.info["dim"], task.info["pairs"]
    for split, weights in (("train", task.info["train_weights"]), ("val", task.info["val_weights"])):
        data = getattr(task, split)
        for i in (0, 11, len(data) - 1):
            prompt, target = data[i]
            assert torch.allclose(target, prompt[-1, :dim] @ weights[i] / math.sqrt(dim), atol=1e-5)
            assert (prompt[:pairs, dim + 1] == 0).all() and prompt[-1, dim + 1] == 1 and prompt[-1, dim] == 0
            # the pairs in the prompt determine w: least squares on them predicts the query exactly
            xs, ys = prompt[:pairs, :dim].double(), prompt[:pairs, dim].double()
            solution = torch.linalg.lstsq(xs, ys[:, None]).solution[:, 0]
            assert torch.allclose(prompt[-1, :dim].double() @ solution, target.double(), atol=1e-4)


def test_icl_prompts_validate_their_sizes():
    with pytest.raises(ValueError, match="dim"):
        make_prompts(3, dim=0, pairs=4, generator=torch.Generator())


def test_unknown_task_and_metric_are_rejected():
    with pytest.raises(ValueError, match="task must be one of"):
        make_task("mnist")
    defaults = TrainDefaults(epochs=1, batch_size=2, lr=1e-3, weight_decay=0.0, warmup_epochs=0, eval_every=None)
    with pytest.raises(ValueError, match="metric"):
        Task("t", [], [], lambda: None, "mse", "val_f1", defaults)


def test_final_metric_is_the_mean_of_the_last_three_finite_evaluations():
    history = [{"val_loss": 4.0}, {"val_loss": 3.0}, {"val_loss": float("nan")}, {"val_loss": 2.0}, {"val_loss": 1.0},
               {"train_loss": 0.5}]
    assert final_metric(history, "val_loss") == pytest.approx(2.0)  # 3, 2, 1
    assert final_metric(history[:2], "val_loss") == pytest.approx(3.5)
    with pytest.raises(ValueError, match="no finite 'val_accuracy'"):
        final_metric(history, "val_accuracy")


def test_methods_build_their_teachers_at_a_budget():
    assert FULL_DATA.teacher(10, epochs=3, seed=0) is None
    method = Method("a", "teacher", {"warmup_epochs": 0}, score="loss", extra=lambda epochs, budget: {"cycles": epochs})
    teacher = method.teacher(10, epochs=4, seed=2, budget=0.5)
    assert (teacher.num_examples, method.score, teacher.seed, teacher.budget, teacher.plan.cycles) == (10, "loss", 2, 0.5, 4)
    unbudgeted = Method("b", "teacher", {"strategy": "infobatch"}, budgeted=False).teacher(10, epochs=4, seed=0, budget=0.5)
    assert unbudgeted.budget is None
    assert PUBLISHED.budgets([0.25, 0.5, 1.0]) == [1.0] and method.budgets([0.25, 1.0]) == [0.25, 1.0]
    with pytest.raises(ValueError, match="no budget"):
        PUBLISHED.teacher(10, epochs=12, seed=0, budget=0.5)
    assert PUBLISHED.score == "loss" and PUBLISHED.teacher(10, epochs=12, seed=0).refresh == "cycle"
    with pytest.raises(ValueError, match="score must be one of"):
        Method("x", "teacher", score="margin")
    with pytest.raises(ValueError, match="kind"):
        Method("x", "oracle")
    with pytest.raises(ValueError, match="options"):
        Method("x", "full", {"ratio": 0.5})


def test_format_table_aligns_columns():
    table = format_table(["run", "acc"], [["full data", "0.9"], ["a", "0.95"]]).splitlines()
    assert table[0] == "run         acc" and table[1] == "---------  ----"
    assert table[2] == "full data   0.9" and table[3] == "a          0.95"
    with pytest.raises(ValueError, match="cells"):
        format_table(["a", "b"], [["only one"]])


def _pool_labels(task):
    return torch.stack([task.train[i][1] for i in range(len(task.train))])


def test_digits_waste_pools_hold_the_documented_noise(tasks):
    augmented = tasks["digits_augmented"]
    truth = {row.numpy().tobytes(): int(augmented.train[i][1]) for i, row in
             enumerate(augmented.train.tensors[0].reshape(len(augmented.train), -1))}
    for name in ("digits_noisy", "digits_flipped", "digits_off_target"):
        task = tasks[name]
        images, labels = task.train.tensors
        clean = torch.tensor([truth[row.numpy().tobytes()] for row in images.reshape(len(images), -1)])
        assert torch.equal(task.info["clean_labels"], clean)
        held_images, held_labels = task.info["holdout"].tensors
        assert torch.equal(held_labels, torch.tensor([truth[r.numpy().tobytes()] for r in held_images.reshape(len(held_images), -1)]))
        wasted = task.info["wasted"]
        if name == "digits_noisy":  # 30% redrawn uniformly: 9 in 10 of them change
            assert torch.equal(wasted, labels != clean) and 0.25 < float(wasted.float().mean()) < 0.29
            assert len(task.train) + len(task.info["holdout"]) == len(augmented.train)
        elif name == "digits_flipped":  # about half of the 3s labelled 5, half of the 9s labelled 7, nothing else
            assert torch.equal(wasted, labels != clean)
            assert set(zip(clean[wasted].tolist(), labels[wasted].tolist())) == {(3, 5), (9, 7)}
            for digit in (3, 9):
                assert 0.45 < float(wasted[clean == digit].float().mean()) < 0.55
        else:  # right labels, half of the classes off target: validation and holdout on 0-4 only
            assert torch.equal(labels, clean) and torch.equal(wasted, clean >= 5)
            assert int(task.val.tensors[1].max()) == 4 and int(held_labels.max()) == 4 and int(labels.max()) == 9
    noisy_again = make_task("digits_noisy", seed=3)
    assert torch.equal(noisy_again.train.tensors[1], tasks["digits_noisy"].train.tensors[1])
    assert not torch.equal(make_task("digits_noisy", seed=4).train.tensors[1], noisy_again.train.tensors[1])


def test_prose_pool_is_30_percent_prose_windows_and_validation_is_held_out_prose(tasks):
    task = tasks["prose_lm"]
    tokenizer = ByteTokenizer()
    wasted = task.info["wasted"]
    assert int((~wasted).sum()) == round(0.3 * len(task.train))
    prose_end = task.info["prose_tokens"]
    starts = task.train.starts
    assert bool((starts[~wasted] <= prose_end - 64).all()) and bool((starts[wasted] >= prose_end).all())
    code = [tokenizer.decode(task.train[i][0]) for i in wasted.nonzero().flatten()[:200].tolist()]
    prose = [tokenizer.decode(task.train[i][0]) for i in (~wasted).nonzero().flatten()[:200].tolist()]
    assert sum("def " in t or "import " in t or "self" in t for t in code) > sum("def " in t or "self" in t for t in prose)
    # split by topic; the documentation repeats a few 64-byte passages across topics, so a handful of windows coincide
    assert len(_rows(task.val) & _rows(task.train)) <= 0.01 * len(task.val)
    assert len(_rows(task.info["holdout"]) & _rows(task.val)) <= 0.01 * len(task.val)


def test_corrupted_icl_prompts_are_30_percent_and_only_they_break_least_squares(tasks):
    from attent.tasks.waste import InContextRidge

    task = tasks["icl_corrupted"]
    prompts, targets = task.train.tensors
    wasted = task.info["wasted"]
    assert 0.28 < float(wasted.float().mean()) < 0.32 and task.defaults.epochs == 1
    ridge = InContextRidge(5, 11)
    with torch.no_grad():
        ridge.log_ridge.fill_(-20.0)
        errors = (ridge(prompts[:2000]) - targets[:2000]).squeeze(1).abs()
    assert float(errors[~wasted[:2000]].max()) < 1e-3 and float(errors[wasted[:2000]].median()) > 0.1


@pytest.mark.parametrize("name", ["digits_noisy", "digits_flipped", "digits_off_target", "prose_lm", "icl_corrupted"])
def test_waste_references_train_on_the_clean_holdout_and_score_the_pool(name):
    task = make_task(name, seed=1, quick=True)
    reference = task.reference.fit(task, seed=1)
    assert reference.train is task.train and reference.losses.shape == (len(task.train),)
    assert bool(torch.isfinite(reference.losses).all()) and reference.cost.train_steps > 0


def test_static_filter_and_holdout_plans_train_full_datas_examples_by_hand():
    from torch.utils.data import Subset, TensorDataset

    from attent.tasks.compare import _training_plan

    train = TensorDataset(torch.zeros(7, 2), torch.zeros(7))

    class Ref:  # the static plan trains on reference.filtered(keep)
        def filtered(self, keep):
            assert keep == 0.5
            return Subset(train, [1, 3, 5])

    task = Task("t", train, train, lambda: torch.nn.Linear(2, 1), "mse", "val_loss", TrainDefaults(4, 2, 0.1, 0.0, 0, None),
                info={"holdout": TensorDataset(torch.zeros(3, 2), torch.zeros(3))})
    # static at b = 0.5 of 4 epochs x 7: 14 examples on 3 kept: ceil(14 / 3) = 5 epochs at 14 / 15 of them
    data, epochs, budget = _training_plan(task, Method("s", "static", options={"keep": 0.5}), epochs=4, budget=0.5,
                                          reference=Ref())
    assert data.indices == [1, 3, 5] and epochs == 5 and budget == pytest.approx(14 / 15)
    # holdout added: 10 examples; 14 of them: 2 epochs at 14 / 20
    data, epochs, budget = _training_plan(task, Method("h", "holdout"), epochs=4, budget=0.5, reference=None)
    assert len(data) == 10 and epochs == 2 and budget == pytest.approx(0.7)
    assert _training_plan(task, FULL_DATA, epochs=4, budget=0.5, reference=None) == (train, 4, 0.5)
