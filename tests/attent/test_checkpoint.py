"""fit's checkpoint file: read with torch.load(weights_only=True), so a file that names other objects
is refused before any of them is built (nothing it says runs); the previous format and parts with
other objects resume only with trust_checkpoint=True; a crash half-way through a write leaves the
previous checkpoint resumable; a resume is bit-exact with every strategy."""
import io
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from attent import _checkpoint
from attent.strategies import STRATEGIES
from attent.teacher import Teacher
from attent.trainer import CHECKPOINT_NAME, fit

N_EXAMPLES, N_FEATURES, N_CLASSES = 37, 5, 3


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch):
    """The runs here write checkpoints to out_dir; drawing their plots would only cost time."""
    monkeypatch.setattr("attent.plots.plot_run", lambda *args, **kwargs: None)


def _data(seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_EXAMPLES, N_FEATURES, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long())


def _model():
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(N_FEATURES, 9), nn.Tanh(), nn.Dropout(0.2), nn.Linear(9, N_CLASSES))


def _run(out_dir, strategy="soft", **overrides):
    """A 3-epoch teacher run (a full-data epoch of 10 steps, then subsets: half the examples, 5 steps,
    unless the strategy sizes its own) whose dropout draws from torch's generator."""
    model = _model()
    sizes = {} if STRATEGIES[strategy].sizes_own_subsets else dict(ratio=0.5, interval=2)
    teacher = Teacher(N_EXAMPLES, when="always", warmup_epochs=1, strategy=strategy, epochs=3, reselect_each_epoch=True, seed=2, **sizes)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    options = dict(loss="cross_entropy", optimizer=optimizer, teacher=teacher, score="fgrad", epochs=3, batch_size=4,
                   seed=1, progress=False, out_dir=out_dir,
                   lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.7))
    options.update(overrides)
    return model, teacher, fit(model, _data(), **options)


def _same_run(model, teacher, result, other_model, other_teacher, other_result):
    for (name, p), q in zip(model.named_parameters(), other_model.parameters()):
        assert torch.equal(p, q), name
    for field in ("scores", "score_steps"):  # bit-exact, NaN (never scored) where NaN
        torch.testing.assert_close(teacher.state_dict()[field], other_teacher.state_dict()[field], rtol=0, atol=0,
                                   equal_nan=True, msg=field)
    assert result.steps == other_result.steps
    assert [s["selected"] for s in result.selections] == [s["selected"] for s in other_result.selections]


def _untouched(model):
    return all(torch.equal(p, q) for p, q in zip(model.parameters(), _model().parameters()))


class _WritesAFile:
    """Unpickling this object opens ``path`` for writing: the code a malicious checkpoint runs."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _rewrite(path, change):
    """Load a checkpoint in full, apply ``change`` to its payload, save it back."""
    payload = torch.load(path, weights_only=False)
    change(payload)
    torch.save(payload, path)


def _as_previous_format(payload):
    """Format 1: no ``format`` key; numpy's and Python's RNG states as ``np.random.get_state()``
    and ``random.getstate()`` return them (a uint32 array, a tuple of ints)."""
    del payload["format"]
    for entry in payload["rng"]:
        n, p = entry["numpy"], entry["python"]
        entry["numpy"] = (n["algorithm"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
        entry["python"] = (p["version"], tuple(p["internal"].tolist()), p["gauss_next"])


def _draws():
    return torch.rand(3), np.random.rand(3), np.random.standard_normal(), [random.random() for _ in range(3)], random.gauss(0, 1)


def test_rng_states_survive_a_weights_only_round_trip():
    """Every generator, including numpy's cached Gaussian and Python's gauss_next, continues exactly."""
    _checkpoint.seed_everything(7)
    np.random.standard_normal(), random.gauss(0, 1)  # leave a cached Gaussian in both
    buffer = io.BytesIO()
    torch.save(_checkpoint.rng_state(), buffer)
    expected = _draws()
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["numpy"]["has_gauss"] == 1 and state["python"]["gauss_next"] is not None
    _checkpoint.seed_everything(8)
    _checkpoint.set_rng_state(state)
    again = _draws()
    assert torch.equal(again[0], expected[0]) and np.array_equal(again[1], expected[1])
    assert again[2:] == expected[2:]


def test_a_checkpoint_written_by_fit_needs_nothing_beyond_a_weights_only_load(tmp_path):
    _run(tmp_path, max_steps=3)
    payload = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert payload["format"] == _checkpoint.FORMAT_VERSION and payload["state"]["step"] == 3
    assert not (tmp_path / "checkpoint.tmp").exists()


STRATEGY_NAMES = list({cls: name for name, cls in reversed(STRATEGIES.items())}.values())  # one name per strategy


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_strategy_resumes_bit_exactly_from_a_weights_only_checkpoint(tmp_path, name):
    """Stopped 3 steps into the first subset epoch (step 13), resumed: the same parameters, scores,
    selections and steps as the uninterrupted run."""
    full = _run(tmp_path / "full", name)
    _run(tmp_path / "split", name, max_steps=13)
    _same_run(*_run(tmp_path / "split", name, resume_from=tmp_path / "split"), *full)


def test_a_malicious_checkpoint_is_refused_and_nothing_in_it_runs(tmp_path):
    _run(tmp_path, max_steps=3)
    path, marker = tmp_path / CHECKPOINT_NAME, tmp_path / "written-by-the-checkpoint"
    _rewrite(path, lambda payload: payload["state"].update(note=_WritesAFile(marker)))
    model, teacher = _model(), Teacher(N_EXAMPLES, when="always", epochs=4)
    scores = teacher.state_dict()["scores"]
    with pytest.raises(ValueError, match=rf"{path}.*holds io\.open.*trust_checkpoint=True") as refused:
        fit(model, _data(), loss="cross_entropy", optimizer=torch.optim.SGD(model.parameters(), lr=0.1), teacher=teacher,
            epochs=4, batch_size=4, progress=False, resume_from=path)
    assert "weights_only=True" in str(refused.value)
    assert not marker.exists()
    assert _untouched(model) and teacher.state_dict()["scores"].isnan().all() and scores.isnan().all()


@pytest.mark.parametrize("where", ["model", "teacher", "rng"])
def test_an_object_anywhere_in_the_file_is_refused_before_it_is_built(tmp_path, where):
    marker = tmp_path / "written-by-the-checkpoint"
    model, teacher = _model(), Teacher(N_EXAMPLES, when="always", epochs=4)
    parts = {"model": model, "optimizer": None, "lr_scheduler": None, "scaler": None, "teacher": teacher}
    path = _checkpoint.write(tmp_path, parts, {"step": 0}, [_checkpoint.rng_state()])
    evil = _WritesAFile(marker)
    _rewrite(path, lambda payload: payload[where].update(x=evil) if where != "rng" else payload["rng"].append(evil))
    with pytest.raises(ValueError, match=r"holds io\.open"):
        _checkpoint.read(tmp_path, parts, world=1)
    assert not marker.exists()


def test_the_refusal_names_the_type_where_torch_cannot_list_the_files_types(tmp_path, monkeypatch):
    """torch before 2.5 has no opcode lister: the type comes from the refused load's own message."""
    _run(tmp_path, max_steps=3)
    marker = tmp_path / "written-by-the-checkpoint"
    _rewrite(tmp_path / CHECKPOINT_NAME, lambda payload: payload["state"].update(note=_WritesAFile(marker)))
    monkeypatch.delattr(torch.serialization, "get_unsafe_globals_in_checkpoint", raising=False)
    with pytest.raises(ValueError, match=r"checkpoint\.pt holds io\.open;"):
        _run(None, resume_from=tmp_path)
    assert not marker.exists()


def test_a_previous_format_checkpoint_resumes_only_when_trusted(tmp_path):
    model, teacher, result = _run(tmp_path / "full")
    _run(tmp_path / "split", max_steps=13)
    path = tmp_path / "split" / CHECKPOINT_NAME
    _rewrite(path, _as_previous_format)
    with pytest.raises(ValueError, match=rf"{path} holds .*numpy\.ndarray.*before checkpoint format 2.*"
                                         r"trust_checkpoint=True"):
        refused = _model()
        fit(refused, _data(), loss="cross_entropy", optimizer=torch.optim.SGD(refused.parameters(), lr=0.1),
            teacher=Teacher(N_EXAMPLES, when="always", epochs=4), epochs=4, batch_size=4, progress=False, resume_from=path)
    assert _untouched(refused)
    _same_run(*_run(tmp_path / "split", resume_from=path, trust_checkpoint=True), model, teacher, result)


class _ScaledLambda:
    """An LR lambda whose ``__dict__`` (what LambdaLR's state_dict keeps) holds a numpy float."""

    def __init__(self):
        self.scale = np.float64(0.9)

    def __call__(self, step):
        return float(self.scale) ** step


@pytest.mark.skipif(not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"),
                    reason="the writer lists a file's types with torch >= 2.5")
def test_a_part_whose_state_needs_more_warns_on_write_and_resumes_only_when_trusted(tmp_path):
    def run(out_dir, **overrides):
        model = _model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _ScaledLambda())
        return model, fit(model, _data(), loss="cross_entropy", optimizer=optimizer, lr_scheduler=scheduler, epochs=2,
                          batch_size=8, seed=1, progress=False, out_dir=out_dir, **overrides)

    full, _ = run(None)
    with pytest.warns(UserWarning, match=r"holds .*numpy.*resuming from it needs trust_checkpoint=True"):
        run(tmp_path, max_steps=7)
    with pytest.raises(ValueError, match=r"holds .*numpy"):
        run(tmp_path, resume_from=tmp_path)
    with pytest.warns(UserWarning, match="trust_checkpoint=True"):
        resumed, result = run(tmp_path, resume_from=tmp_path, trust_checkpoint=True)
    assert result.steps == 10
    assert all(torch.equal(p, q) for p, q in zip(resumed.parameters(), full.parameters()))


def test_a_crash_half_way_through_a_write_leaves_the_previous_checkpoint_resumable(tmp_path, monkeypatch):
    """The resumed session's first write (at the end of epoch 1) fails after half its bytes; the
    checkpoint of step 13 is untouched and still resumes bit-exactly, also with the half-written
    temporary file that a killed process would leave behind."""
    full = _run(tmp_path / "full")
    split = tmp_path / "split"
    _run(split, max_steps=13)
    path = split / CHECKPOINT_NAME
    before = path.read_bytes()
    save, written = torch.save, []

    def half_then_crash(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        written.append(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="No space left"):
        _run(split, resume_from=split)
    monkeypatch.undo()
    assert len(written) == 1 and len(written[0]) > 100
    assert path.read_bytes() == before and not (split / "checkpoint.tmp").exists()
    (split / "checkpoint.tmp").write_bytes(written[0])  # what a killed process leaves
    _same_run(*_run(split, resume_from=split), *full)
    assert not (split / "checkpoint.tmp").exists() and path.read_bytes() != before


@pytest.mark.parametrize("cut", ["half", "empty"])
def test_a_truncated_checkpoint_is_refused_with_its_name(tmp_path, cut):
    _run(tmp_path, max_steps=3)
    path = tmp_path / CHECKPOINT_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if cut == "half" else b"")
    for trusted in (False, True):
        with pytest.raises(ValueError, match=rf"{path} is not a complete checkpoint"):
            _run(None, resume_from=path, trust_checkpoint=trusted)


def _malformed(payload, what):
    numpy_state, python_state = payload["rng"][0]["numpy"], payload["rng"][0]["python"]
    if what == "a newer format":
        payload["format"] = 3
    elif what == "no format":
        del payload["format"]
    elif what == "no run state":
        payload["state"] = [1, 2]
    elif what == "another key":
        payload["extra"] = 1
    elif what == "numpy key as float":
        numpy_state["key"] = numpy_state["key"].double()
    elif what == "python state as a list":
        payload["rng"][0]["python"] = [python_state["version"], python_state["internal"].tolist(), None]
    elif what == "torch state as int64":
        payload["rng"][0]["torch"] = payload["rng"][0]["torch"].long()
    elif what == "an unknown run-state field":
        payload["state"]["surprise"] = 1
    else:
        raise AssertionError(what)


@pytest.mark.parametrize("what", ["a newer format", "no format", "no run state", "another key", "numpy key as float",
                                  "python state as a list", "torch state as int64", "an unknown run-state field"])
def test_a_malformed_checkpoint_is_refused_before_anything_is_restored(tmp_path, what):
    model = _model()
    parts = {"model": model, "optimizer": None, "lr_scheduler": None, "scaler": None, "teacher": None}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # a checkpoint that would change a fresh model
    _checkpoint.write(tmp_path, parts, {"step": 0}, [_checkpoint.rng_state()])
    _rewrite(tmp_path / CHECKPOINT_NAME, lambda payload: _malformed(payload, what))
    fresh = _model()
    parts["model"] = fresh
    with pytest.raises(ValueError, match=rf"{tmp_path / CHECKPOINT_NAME}"):
        _checkpoint.read(tmp_path, parts, world=1, state_keys=["step"])
    assert _untouched(fresh)


def test_the_trust_option_is_a_checked_bool():
    with pytest.raises(ValueError, match="trust_checkpoint must be true or false"):
        fit(_model(), _data(), loss="cross_entropy", optimizer=torch.optim.SGD(_model().parameters(), lr=0.1), epochs=1,
            trust_checkpoint="yes")


def test_a_learnability_teacher_resumes_bit_exactly_its_prior_rebuilt_from_the_held_scores(tmp_path, monkeypatch):
    """No warm-up, so every selection ranks unseen examples by the learnability prior; stopped
    inside the second epoch (step 7 of 5-step epochs) and resumed: the same run, and the same prior
    handed to the teacher at the resumed run's selection as at the uninterrupted run's."""
    reference = torch.rand(N_EXAMPLES, generator=torch.Generator().manual_seed(8)) * 2
    priors = []
    select = Teacher.select

    def recording_select(self, epoch, **options):
        priors.append((epoch, options.get("prior")))
        return select(self, epoch, **options)

    monkeypatch.setattr(Teacher, "select", recording_select)

    def run(out_dir, **overrides):
        model = _model()
        teacher = Teacher(N_EXAMPLES, when="always", strategy="hard", ratio=0.5, epochs=3, seed=2)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
        result = fit(model, _data(), loss="cross_entropy", optimizer=optimizer, teacher=teacher, score="learnability",
                     reference=reference, epochs=3, batch_size=4, seed=1, progress=False, out_dir=out_dir, **overrides)
        return model, teacher, result

    full = run(tmp_path / "full")
    uninterrupted = {epoch: prior for epoch, prior in priors if prior is not None}
    assert set(uninterrupted) == {0, 1, 2} and full[1].stats["unscored"] > 0
    run(tmp_path / "split", max_steps=7)
    priors.clear()
    _same_run(*run(tmp_path / "split", resume_from=tmp_path / "split"), *full)
    resumed = {epoch: prior for epoch, prior in priors if prior is not None}
    assert 2 in resumed and all(torch.equal(prior, uninterrupted[epoch]) for epoch, prior in resumed.items())
