"""Data-parallel training over torch.distributed (torchrun semantics).

The trainer keeps one global random stream on every rank: each random tensor of Algorithm 1
(mini-batch indices, flips, sigmas, latent starts, every noise draw inside the chains) is drawn
at the global batch size on every rank, and each rank keeps its own rows.  Every rank then
holds the same generators, replay buffers and parameters, the global batch is the same as one
process would draw, and a run with N processes equals a one-process run with the same total
batch to float tolerance (tests/model/test_distributed.py).  Losses are sums over local rows
divided by the global count, and parameter gradients are summed over ranks (one flat
all-reduce per update), which is the gradient of the global mean whatever the split.

Only rank 0 writes checkpoints; every rank resumes from the same one.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's rows [start, stop) of n global rows (contiguous, sizes differ by <= 1)."""
        return shard_bounds(n, self.rank, self.world_size)

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        start, stop = self.bounds(t.shape[0])
        return t[start:stop]


SINGLE = DistContext()


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def context_from_env() -> DistContext:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); one process when unset."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return DistContext(rank=int(os.environ["RANK"]), world_size=world,
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_from_env(device: str = "auto", *, timeout_s: float = 1800.0
                  ) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes and pick this rank's device: cuda:LOCAL_RANK
    with NCCL when CUDA is there (or asked for), else the CPU with gloo."""
    ctx = context_from_env()
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        chosen = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
    if ctx.active and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=ctx.rank,
                                world_size=ctx.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return ctx, chosen


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def all_reduce_grads(ctx: DistContext, params: list[torch.nn.Parameter]) -> None:
    """Sum the parameter gradients over ranks in one flat collective (a missing gradient
    counts as zero, so every rank takes part in the same call)."""
    if not ctx.active:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    for p, reduced in zip(params, _unflatten_dense_tensors(flat, grads)):
        if p.grad is None:
            p.grad = reduced
        else:
            p.grad.copy_(reduced)


def all_reduce_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    if ctx.active:
        values = values.clone()
        dist.all_reduce(values)
    return values


def gather_rows(ctx: DistContext, local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's rows of an n-row tensor, in rank order, on every rank."""
    if not ctx.active:
        return local
    largest = shard_bounds(n, 0, ctx.world_size)
    size = largest[1] - largest[0]
    padded = local.new_zeros((size, *local.shape[1:]))
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded.contiguous())
    rows = []
    for rank, part in enumerate(parts):
        start, stop = shard_bounds(n, rank, ctx.world_size)
        rows.append(part[:stop - start])
    return torch.cat(rows)


def latent_moment_surrogate(ctx: DistContext, z_local: torch.Tensor, n: int
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, surrogate) of the latent-moment penalty over the global batch.

    The penalty mean_j(m_j^2) + mean_j((v_j - 1)^2) couples all rows through the batch mean m
    and variance v.  With m and v all-reduced (detached), the surrogate
        sum_j [dP/dm_j * sum_i z_ij / n + dP/dv_j * sum_i (z_ij - m_j)^2 / (n - 1)]
    over local rows has this rank's share of the exact gradient (the terms through m inside v
    sum to zero), so summing gradients over ranks gives dP/dz."""
    d = z_local.shape[1]
    stats = torch.cat([z_local.detach().sum(0), z_local.detach().pow(2).sum(0)])
    stats = all_reduce_sum(ctx, stats)
    mean = stats[:d] / n
    var = (stats[d:] - n * mean.pow(2)) / max(n - 1, 1)
    value = mean.pow(2).mean() + (var - 1.0).pow(2).mean()
    if n < 2:
        zero = z_local.sum() * 0.0
        return zero.detach(), zero
    d_mean = 2.0 * mean / d
    d_var = 2.0 * (var - 1.0) / d
    surrogate = (d_mean * z_local.sum(0) / n).sum() \
        + (d_var * (z_local - mean).pow(2).sum(0) / (n - 1)).sum()
    return value, surrogate


class RankDraws:
    """The Trainer's random draws and means as one rank of a data-parallel run: tensors are
    drawn at the global size from the shared generator and each rank keeps its own rows, so
    N ranks reproduce one process (in one process every method is the plain operation)."""

    def __init__(self, dist: DistContext, generator: torch.Generator, device: torch.device):
        self.dist, self.generator, self.device = dist, generator, device

    def sigmas(self, grid: torch.Tensor, n: int) -> torch.Tensor:
        """Global (n,) sigmas from the grid; every rank holds all of them."""
        index = torch.randint(grid.numel(), (n,), generator=self.generator, device=self.device)
        return grid[index]

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """This rank's rows of a standard-normal tensor drawn at the global size."""
        noise = torch.randn(shape, generator=self.generator, device=self.device)
        return self.dist.rows(noise) if self.dist.active else noise

    def chain_noise(self, n_global: int):
        """The chains' noise source in a data-parallel run: global draws, local rows."""
        if not self.dist.active:
            return None
        return lambda shape: self.normal((n_global, *shape[1:]))

    def mean(self, values: torch.Tensor, n: int) -> torch.Tensor:
        """Mean over n global rows of which ``values`` are this rank's (plain mean alone)."""
        return values.sum() / n if self.dist.active else values.mean()

    def report(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Detached scalars as floats, summed over ranks (each is a rank's share of a global
        mean), in one transfer."""
        if not values:
            return {}
        stacked = torch.stack([v.detach().float() for v in values.values()])
        stacked = all_reduce_sum(self.dist, stacked).tolist()
        return dict(zip(values, stacked))

