"""Distillation on the teacher's top-k soft labels (L_KD).

Paper form (default), temperature on the teacher only:

    y^T_i = softmax(z^T_i / T)  restricted to the teacher's top-k ids and renormalised there
    L_KD  = − Σ_i Σ_{j ∈ topk_i} y^T_ij · log softmax(z^S_i)_j          (mean over valid positions)

Hinton form: the student is softened too, and the loss is scaled by T² so gradients keep their size:

    L_KD  = T² · ( − Σ_i Σ_j y^T_ij · log softmax(z^S_i / T)_j )

Tail handling: only the teacher's top-k logits are stored, so y^T is renormalised over those k ids
(exact inside the top-k for any T, because softmax is shift-invariant; the tail mass is dropped).
The student's log-probabilities are always normalised over the *full* vocabulary. With k = vocabulary
size both forms equal their dense references exactly (tests check it).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from gemini_ray.losses.terms import StudentOutput, Term, register

__all__ = ["topk_kd_loss", "dense_kd_loss", "distillation_term"]


def topk_kd_loss(
    student_logits: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    teacher_topk_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    form: Literal["paper", "hinton"] = "paper",
) -> torch.Tensor:
    """Sparse soft-label cross-entropy from the teacher's top-k logits.

    Args:
        student_logits: (B, L, V) raw student logits.
        teacher_topk_ids: (B, L, k) int64 vocabulary ids of the teacher's top-k logits.
        teacher_topk_logits: (B, L, k) teacher logits at those ids, *before* temperature.
        mask: (B, L) bool/0-1, positions that carry a soft label (padding and, for masked LMs,
            unmasked positions are 0).
        temperature: KD temperature T > 0.
        form: 'paper' (teacher softened only) or 'hinton' (both softened, × T²).

    Returns:
        Scalar: mean over valid positions; exactly 0 (not NaN) when no position is valid.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mask = mask.float()  # (B, L); not the logits' dtype: bf16 counts positions exactly only up to 256
    # the teacher is a fixed target: no gradient flows into it, even from a caller that forgot to detach
    t_probs = torch.softmax(teacher_topk_logits.detach().float() / temperature, dim=-1)  # (B, L, k)
    # log softmax(z)_j = z_j − logsumexp(z), read at the k ids only: the graph keeps the logits it was given
    # (as fp32: one copy of bf16/fp16 logits; divided by T in the Hinton form) and no (B, L, V) log-softmax
    s_scaled = student_logits.float() / temperature if form == "hinton" else student_logits.float()
    lse = torch.logsumexp(s_scaled, dim=-1, keepdim=True)  # (B, L, 1)
    s_logp_k = torch.gather(s_scaled, -1, teacher_topk_ids.long()) - lse  # (B, L, k)
    per_pos = -(t_probs * s_logp_k).sum(-1)  # (B, L)
    loss = (per_pos * mask).sum() / mask.sum().clamp(min=1.0)
    return loss * temperature**2 if form == "hinton" else loss


def dense_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    form: Literal["paper", "hinton"] = "paper",
) -> torch.Tensor:
    """Dense reference of `topk_kd_loss` over the full vocabulary (used by tests and evaluation).

    Args:
        student_logits: (B, L, V); teacher_logits: (B, L, V); mask: (B, L).
    """
    mask = mask.to(student_logits.dtype)
    t_probs = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)  # (B, L, V)
    s_scaled = student_logits.float() / temperature if form == "hinton" else student_logits.float()
    per_pos = -(t_probs * F.log_softmax(s_scaled, dim=-1)).sum(-1)  # (B, L)
    loss = (per_pos * mask).sum() / mask.sum().clamp(min=1.0)
    return loss * temperature**2 if form == "hinton" else loss


def distillation_term(out: StudentOutput, cfg: Any) -> torch.Tensor:
    """L_KD of a forward pass over the anchor's and the positive's KD windows, every labelled position, against
    the teacher's top-k soft labels (loss.kd_temperature, loss.kd_form)."""
    b = out.batch
    t_ids = torch.cat([b["topk_ids"][:, 0], b["topk_ids"][:, 1]]).long()  # (2B, W, k), ordered like the logits
    t_val = torch.cat([b["topk_logits"][:, 0], b["topk_logits"][:, 1]])  # (2B, W, k)
    labelled = torch.cat([b["label_mask"][:, 0], b["label_mask"][:, 1]])  # (2B, W)
    return topk_kd_loss(out.logits, t_ids, t_val, labelled, cfg.kd_temperature, cfg.kd_form)


DISTILLATION = register(Term("kd", "distillation loss", weight=lambda cfg: cfg.lambda_kd, compute=distillation_term))
"""Weight λ (loss.lambda_kd)."""
