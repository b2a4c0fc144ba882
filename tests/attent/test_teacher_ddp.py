"""The teacher under torch.distributed: 2 processes on the gloo backend on the CPU.

The test runs this file as a script in two processes (ranks 0 and 1) that meet through a file
store, feed their teachers batches of unequal sizes, and save what they saw; the test then checks
that the ranks hold the same scores, make the same selections, and iterate disjoint shards that
cover each selection."""
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

WORLD_SIZE = 2
NUM_EXAMPLES = 23
EPOCHS = 6
STRATEGIES = ("hard", "soft", "random", "importance", "infobatch")


def example_scores(epoch: int, indices: torch.Tensor) -> torch.Tensor:
    return torch.cos(indices.double() * 2.3 + epoch).abs().float()


def make_teacher(strategy: str):
    from attent.teacher import Teacher

    if strategy == "infobatch":
        return Teacher(NUM_EXAMPLES, when="always", strategy=strategy, epochs=EPOCHS, seed=3, warmup_epochs=1)
    return Teacher(NUM_EXAMPLES, when="always", strategy=strategy, epochs=EPOCHS, seed=3, cycles=2, interval=2, refresh="cycle",
                   warmup_epochs=1, reselect_each_epoch=strategy == "soft")


def run_rank(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE)
    batch_size = 5 if rank == 0 else 3  # unequal batches: the gather must pad
    results = {}
    for strategy in STRATEGIES:
        teacher = make_teacher(strategy)
        sampler = teacher.sampler()
        epochs = []
        for epoch in range(EPOCHS):
            fresh = teacher.refresh_indices(epoch)
            if fresh is not None:
                teacher.observe(fresh, example_scores(epoch, fresh))
            sampler.set_epoch(epoch)
            shard = list(sampler)
            batches = [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]
            calls = torch.tensor([len(batches)])
            dist.all_reduce(calls, op=dist.ReduceOp.MAX)
            for k in range(int(calls)):  # every rank observes equally often; the short one sends empty batches
                batch = torch.tensor(sorted(set(batches[k])) if k < len(batches) else [], dtype=torch.int64)
                teacher.observe(batch, example_scores(epoch, batch))
            selection = teacher.select(epoch)
            epochs.append(
                {
                    "fresh": None if fresh is None else fresh.tolist(),
                    "indices": selection.indices.tolist(),
                    "weights": None if selection.weights is None else selection.weights.tolist(),
                    "shard": shard,
                    "scores": teacher.state_dict()["scores"],
                    "stats": teacher.stats,
                }
            )
        results[strategy] = epochs
    torch.save(results, out)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    outs = [folder / f"rank{rank}.pt" for rank in range(WORLD_SIZE)]
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), str(folder / "store"), str(outs[rank])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD_SIZE)
    ]
    logs = []
    for process in processes:
        try:
            logs.append(process.communicate(timeout=90)[0])
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            pytest.fail("the distributed teacher processes did not finish within 90 s")
    for process, log in zip(processes, logs):
        assert process.returncode == 0, log
    return [torch.load(out) for out in outs]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ranks_hold_the_same_scores_and_make_the_same_selection(rank_results, strategy):
    rank0, rank1 = (results[strategy] for results in rank_results)
    for epoch in range(EPOCHS):
        assert torch.equal(rank0[epoch]["scores"], rank1[epoch]["scores"]), epoch
        assert rank0[epoch]["indices"] == rank1[epoch]["indices"], epoch
        assert rank0[epoch]["weights"] == rank1[epoch]["weights"], epoch
        assert rank0[epoch]["stats"] == rank1[epoch]["stats"], epoch
    # after the warm-up epoch, every example was scored on one rank or the other, and both hold it
    assert rank0[0]["stats"]["unscored"] == 0
    assert rank0[0]["stats"]["observed"] == NUM_EXAMPLES + 1  # 23 examples padded to 24 across the ranks


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rank_shards_are_disjoint_and_cover_the_selection(rank_results, strategy):
    rank0, rank1 = (results[strategy] for results in rank_results)
    for epoch in range(EPOCHS):
        selected = Counter(rank0[epoch]["indices"])
        shard0, shard1 = rank0[epoch]["shard"], rank1[epoch]["shard"]
        length = -(-sum(selected.values()) // WORLD_SIZE)
        assert len(shard0) == len(shard1) == length, epoch
        together = Counter(shard0 + shard1)
        assert not selected - together, epoch  # every selected example (each draw) is on some rank
        padding = together - selected
        assert sum(padding.values()) == WORLD_SIZE * length - sum(selected.values()), epoch
        assert set(padding) <= set(selected), epoch
        if strategy != "importance":  # importance may draw an example twice, within or across ranks
            assert len(set(shard0) & set(shard1)) == sum(padding.values()), epoch


def test_refresh_splits_the_examples_to_rescore_between_ranks(rank_results):
    rank0, rank1 = (results["hard"] for results in rank_results)
    points = [epoch for epoch in range(EPOCHS) if rank0[epoch]["fresh"] is not None]
    assert points == [1, 4]
    for epoch in points:
        fresh0, fresh1 = rank0[epoch]["fresh"], rank1[epoch]["fresh"]
        assert not set(fresh0) & set(fresh1)
        assert sorted(fresh0 + fresh1) == list(range(NUM_EXAMPLES))


if __name__ == "__main__":
    run_rank(int(sys.argv[1]), sys.argv[2], sys.argv[3])
