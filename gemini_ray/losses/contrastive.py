"""InfoNCE over an anchor, its positive, K mined negatives and the batch's other positives (L_CL).

    L_CL = − log( e^{sim(z, z⁺)/τ} / ( e^{sim(z, z⁺)/τ} + Σ_k e^{sim(z, z⁻_k)/τ} + Σ_j e^{sim(z, z⁺_j)/τ} ) )

sim is the cosine; k runs over the anchor's mined hard negatives, j over the positives of the other rows
of the (global) batch that are usable as negatives (not the same document, not the same text).
With W data-parallel workers the in-batch candidates are gathered from every rank
(`gemini_ray.losses.distributed.all_gather_with_grad`),
so the negatives per anchor grow with W and the loss equals the single-process loss on the concatenated
batch.

References: van den Oord et al. 2018 (CPC), Chen et al. 2020 (SimCLR, gathered negatives),
Gao et al. 2021 (SimCSE, in-batch + hard negatives).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from gemini_ray.losses.distributed import all_gather_constant, all_gather_with_grad
from gemini_ray.losses.terms import StudentOutput, Term, register

__all__ = ["info_nce_loss", "in_batch_mask", "contrastive_term"]


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


def contrastive_term(out: StudentOutput, cfg: Any) -> torch.Tensor:
    """L_CL of a forward pass: each anchor against its positive, its loss.num_negatives mined negatives and, with
    loss.in_batch_negatives, the other rows' positives (every rank's when out.across_ranks)."""
    z, z_pos = out.spans()  # (B, H) each
    K = cfg.num_negatives
    shared = shared_mask = None
    if cfg.in_batch_negatives:
        gather = all_gather_with_grad if out.across_ranks else (lambda x: x)
        gather_ids = all_gather_constant if out.across_ranks else (lambda x: x)
        shared = gather(z_pos)  # (W·B, H): this rank's slice keeps its gradient
        doc_id, span_hash = out.batch["doc_id"].long(), out.batch["span_hash"].long()  # (B,), (B, 2)
        shared_mask = in_batch_mask(doc_id, span_hash, gather_ids(doc_id),
                                    gather_ids(span_hash[:, 1].contiguous()))  # (B, W·B)
    return info_nce_loss(z, z_pos, out.negatives(), cfg.cl_temperature, out.batch["neg_mask"][:, :K].bool(),
                         shared, shared_mask)


CONTRASTIVE = register(Term("cl", "contrastive loss", weight=lambda cfg: 1.0 - cfg.lambda_kd,
                            compute=contrastive_term))
"""Weight 1 − λ (loss.lambda_kd)."""
