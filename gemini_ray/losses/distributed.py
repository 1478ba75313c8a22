"""Gathers across torch.distributed ranks for the terms that compare rows with each other (the contrastive
term's in-batch negatives, the similarity form of the representation term). Identity outside torch.distributed.
No Ray here."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_gather_with_grad", "all_gather_constant"]


class _AllGather(torch.autograd.Function):
    """all_gather whose backward returns each rank the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on every slice: sum their gradients
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (same shape on every rank) from all ranks in rank order; gradients flow back to
    the rank that owns each slice, summed over the ranks that used it. Identity outside torch.distributed.

    DDP averages gradients over the W ranks, so a loss that is the mean of the ranks' losses gets exactly
    the gradient of the single-process loss on the concatenated batch.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _AllGather.apply(x)


def all_gather_constant(x: torch.Tensor) -> torch.Tensor:
    """all_gather for tensors without gradient (ids, hashes). Identity outside torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
