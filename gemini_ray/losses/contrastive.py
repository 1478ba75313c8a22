"""InfoNCE over an anchor, its positive and K mined negatives (L_CL).

    L_CL = − log( e^{sim(z, z⁺)/τ} / ( e^{sim(z, z⁺)/τ} + Σ_k e^{sim(z, z⁻_k)/τ} ) ),   sim = cosine

References: van den Oord et al. 2018 (CPC), Gao et al. 2021 (SimCSE, hard negatives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["info_nce_loss"]


def info_nce_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
    negative_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE with cosine similarity and temperature τ.

    Args:
        anchor: (B, H) anchor embeddings z.
        positive: (B, H) positive embeddings z⁺ (another span of the same document).
        negatives: (B, K, H) negative embeddings z⁻ (spans of other documents).
        temperature: τ > 0; smaller τ sharpens the distribution over candidates.
        negative_mask: optional (B, K) bool, False where a negative slot is empty (not enough
            candidates were found); those slots are left out of the denominator.

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
    logits = torch.cat([pos, neg], dim=1) / temperature  # (B, 1 + K)
    target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)  # the positive is column 0
    return F.cross_entropy(logits, target)
