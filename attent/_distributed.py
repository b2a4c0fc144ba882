"""torch.distributed helpers for the teacher and the trainers: this process's rank, its shard of an
epoch order, and gathering variable-length (index, score) batches from every rank so that every
rank holds the same scores."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialized process group."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def shard(order: torch.Tensor) -> torch.Tensor:
    """This rank's part of an epoch order (k,): under torch.distributed, the order padded by
    repeating from its start to a multiple of the world size, then every world-size-th entry from
    the rank's own (as ``DistributedSampler`` does); the order itself otherwise."""
    rank, world = rank_and_world_size()
    if world == 1 or order.numel() == 0:
        return order
    total = math.ceil(order.numel() / world) * world
    return order.repeat(math.ceil(total / order.numel()))[:total][rank::world]


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_scores(indices: torch.Tensor, scores: torch.Tensor, steps: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rank's (indices, scores, steps), concatenated in rank order, on the CPU.

    indices: (b,) int64, scores: (b,) float64 and steps: (b,) int64 on the CPU, where b may differ
    between ranks (0 included). Each rank's batch is padded to the largest b for the all_gather
    and trimmed after; indices and steps travel as float64, exact below 2**53. Returns (n,) int64,
    (n,) float64 and (n,) int64, n the sum of the ranks' b. Every rank must call it (a collective).
    """
    world = dist.get_world_size()
    device = _collective_device()
    size = torch.tensor([indices.numel()], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    packed = torch.zeros(3, longest, dtype=torch.float64, device=device)
    for row, values in enumerate((indices, scores, steps)):
        packed[row, : values.numel()] = values.to(device=device, dtype=torch.float64)
    gathered = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(gathered, packed)
    joined = torch.cat([g[:, :count] for g, count in zip(gathered, counts)], dim=1).cpu()
    return joined[0].to(torch.int64), joined[1], joined[2].to(torch.int64)
