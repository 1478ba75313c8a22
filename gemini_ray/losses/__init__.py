"""Losses: pure functions over tensors, one module per family. No Ray here."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gemini_ray.losses.contrastive import info_nce_loss
from gemini_ray.losses.distillation import dense_kd_loss, topk_kd_loss
from gemini_ray.losses.language_model import next_token_loss
from gemini_ray.losses.representation import cosine_embedding_loss, similarity_loss
from gemini_ray.metric_names import LOSS_CL, LOSS_KD, LOSS_REP, LOSS_TOTAL

__all__ = ["LossParts", "combine", "info_nce_loss", "topk_kd_loss", "dense_kd_loss", "next_token_loss",
           "cosine_embedding_loss", "similarity_loss"]


@dataclass
class LossParts:
    """The combined loss and its parts, logged as loss/total, loss/kd, loss/cl, loss/rep (the representation
    term is logged whatever its weight: it measures how far the student's span embeddings are from the
    teacher's)."""

    total: torch.Tensor
    kd: torch.Tensor
    cl: torch.Tensor
    rep: torch.Tensor
    spans: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    """The anchors' and positives' pooled student embeddings (B, H), detached: held-out retrieval uses them."""

    def as_floats(self) -> dict[str, float]:
        return {name: float(t.detach()) for name, t in
                ((LOSS_TOTAL, self.total), (LOSS_KD, self.kd), (LOSS_CL, self.cl), (LOSS_REP, self.rep))}


def combine(kd: torch.Tensor, cl: torch.Tensor, lambda_kd: float, rep: torch.Tensor | None = None,
            rep_weight: float = 0.0, balance: str = "none",
            reference: dict[str, float] | None = None) -> LossParts:
    """L = λ·L_KD + (1 − λ)·L_CL (the seed's loss), + μ·L_rep when rep_weight μ > 0.

    balance='magnitude': each term's gradient is divided by the term's current value (the gradient of
    λ·log L_KD + (1 − λ)·log L_CL [+ μ·log L_rep]), so the weights set the terms' relative pull whatever
    their scales (L_KD is ~6x L_CL at the start of the demo). No running state.
    balance='start': each term's gradient is divided by its value where training started, `reference`
    ({loss/kd, loss/cl, loss/rep} as `LossParts.as_floats` names them; the train loop takes the first
    batch's and keeps it in the checkpoint). The weights set the pull per fraction of each term's starting
    value, and the split stays fixed: under 'magnitude' a term that nears 0 (the contrastive loss does once
    the pairs separate) gets an ever larger share. Without a reference (the first step) it divides by the current values.
    Either way the total's value stays the plain weighted sum, so logs compare across settings."""
    rep = torch.zeros_like(kd) if rep is None else rep
    names = [LOSS_KD, LOSS_CL] + ([LOSS_REP] if rep_weight > 0 else [])
    terms = [(lambda_kd, kd), (1.0 - lambda_kd, cl)] + ([(rep_weight, rep)] if rep_weight > 0 else [])
    plain = sum(w * t for w, t in terms)
    if balance in ("magnitude", "start"):
        ref = reference if balance == "start" and reference else {}
        scales = [float(ref[name]) if name in ref else t.detach() for name, (_, t) in zip(names, terms)]
        scaled = sum(w * t / torch.as_tensor(s, dtype=t.dtype).clamp_min(1e-8) for s, (w, t) in zip(scales, terms))
        total = plain.detach() + (scaled - scaled.detach())  # the value of `plain`, the gradient of `scaled`
    else:
        total = plain
    return LossParts(total=total, kd=kd, cl=cl, rep=rep if rep_weight > 0 else rep.detach())
