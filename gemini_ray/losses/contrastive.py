"""InfoNCE over an anchor, its positive, K mined negatives and the batch's other positives (L_CL).

    L_CL = − log( e^{sim(z, z⁺)/τ} / ( e^{sim(z, z⁺)/τ} + Σ_k e^{sim(z, z⁻_k)/τ} + Σ_j e^{sim(z, z⁺_j)/τ} ) )

sim is the cosine; k runs over the anchor's mined hard negatives, j over the positives of the other rows
of the (global) batch that are usable as negatives (not the same document, not the same text).
With W data-parallel workers the in-batch candidates are gathered from every rank (`all_gather_with_grad`),
so the negatives per anchor grow with W and the loss equals the single-process loss on the concatenated
batch.

References: van den Oord et al. 2018 (CPC), Chen et al. 2020 (SimCLR, gathered negatives),
Gao et al. 2021 (SimCSE, in-batch + hard negatives).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["info_nce_loss", "in_batch_mask", "all_gather_with_grad", "all_gather_constant"]


def info_nce_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
    negative_mask: torch.Tensor | None = None,
    shared: torch.Tensor | None = None,
    shared_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE with cosine similarity and temperature τ.

    Args:
        anchor: (B, H) anchor embeddings z.
        positive: (B, H) positive embeddings z⁺ (another span of the same document).
        negatives: (B, K, H) negative embeddings z⁻ (spans of other documents).
        temperature: τ > 0; smaller τ sharpens the distribution over candidates.
        negative_mask: optional (B, K) bool, False where a negative slot is empty (not enough
            candidates were found); those slots are left out of the denominator.
        shared: optional (M, H) candidates every anchor is compared with (the batch's positives).
        shared_mask: (B, M) bool, True where shared[j] is a negative for anchor i (required with shared).

    Returns:
        Scalar mean over the batch. With every negative masked the loss of a row is 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = F.normalize(anchor.float(), dim=-1)  # (B, H)
    zp = F.normalize(positive.float(), dim=-1)  # (B, H)
    zn = F.normalize(negatives.float(), dim=-1)  # (B, K, H)
    pos = (z * zp).sum(-1, keepdim=True)  # (B, 1)
    neg = torch.einsum("bh,bkh->bk", z, zn)  # (B, K)
    if negative_mask is not None:
        neg = neg.masked_fill(~negative_mask.bool(), float("-inf"))
    columns = [pos, neg]
    if shared is not None:
        if shared_mask is None:
            raise ValueError("shared candidates need a shared_mask (B, M) saying which are negatives")
        inb = z @ F.normalize(shared.float(), dim=-1).T  # (B, M)
        columns.append(inb.masked_fill(~shared_mask.bool(), float("-inf")))
    logits = torch.cat(columns, dim=1) / temperature  # (B, 1 + K [+ M])
    target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)  # the positive is column 0
    return F.cross_entropy(logits, target)


def in_batch_mask(doc_id: torch.Tensor, span_hash: torch.Tensor, all_doc_id: torch.Tensor,
                  all_positive_hash: torch.Tensor) -> torch.Tensor:
    """Which gathered positives may serve as negatives for each local anchor.

    Args:
        doc_id: (B,) document of each local row; span_hash: (B, 2) hashes of its anchor and positive span.
        all_doc_id: (M,) and all_positive_hash: (M,) of the gathered rows (every rank's positives).
    Returns:
        (B, M) bool: False for the row's own positive and any span of the same document (not a negative),
        and for spans whose text equals the anchor's or its positive's (duplicates across documents or ranks).
    """
    other_doc = doc_id[:, None] != all_doc_id[None, :]  # (B, M)
    not_dup = (span_hash[:, 0:1] != all_positive_hash[None, :]) & (span_hash[:, 1:2] != all_positive_hash[None, :])
    return other_doc & not_dup


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
