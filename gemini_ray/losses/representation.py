"""Representation losses: the student's pooled span embeddings toward the teacher's (L_rep).

Two forms (loss.rep_form), both extensions beyond the seed's two-term loss; z_S is the student's mean-pooled
last hidden state of a span, z_T the teacher's (shipped by the teacher stage with the soft labels; a
constant here):

* 'cosine', in the spirit of DistilBERT's hidden-state cosine loss (Sanh et al. 2019):
      L_rep = mean over spans of ( 1 − cos(z_S, z_T) )
  It pulls each student embedding toward the teacher's own vector, so it needs a student as wide as its
  teacher (the copied-layer students are).
* 'similarity', similarity-preserving distillation (Tung & Mori 2019) on centred cosines:
      G(z) = cosine matrix of the batch's embeddings after subtracting their mean (N x N)
      L_rep = mean over the pairs i ≠ j of ( G(z_S)_ij − G(z_T)_ij )²
  It asks the student to rank the spans' similarities as the teacher does, not to copy the teacher's
  vectors: it works at any student width. The centring takes out the direction that the batch's mean-pooled
  embeddings share (most of each copied-prefix student's embedding), so the term compares how the spans
  differ rather than what they have in common.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from gemini_ray.losses.distributed import all_gather_constant, all_gather_with_grad
from gemini_ray.losses.terms import StudentOutput, Term, register

__all__ = ["cosine_embedding_loss", "similarity_loss", "representation_term"]


def cosine_embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean 1 − cosine between (N, H) student and (N, H) teacher embeddings; no gradient to the teacher.
    0 when every pair points the same way, 2 when opposite."""
    if student.shape != teacher.shape:
        raise ValueError(f"student embeddings {tuple(student.shape)} and teacher embeddings "
                         f"{tuple(teacher.shape)} differ in shape")
    cos = F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1, eps=1e-8)  # (N,)
    return (1.0 - cos).mean()


def _centred_cosines(x: torch.Tensor) -> torch.Tensor:
    """(N, H) → (N, N) cosines of the rows after subtracting their mean."""
    x = x.float()
    x = F.normalize(x - x.mean(dim=0, keepdim=True), dim=-1, eps=1e-8)
    return x @ x.T


def similarity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference, over the pairs i ≠ j, of the centred cosine matrices of (N, H_S) student
    and (N, H_T) teacher embeddings (the widths may differ); no gradient to the teacher. 0 when the student
    orders and spaces the spans as the teacher does, at most 4. Under 3 spans (a batch of one example, or a
    last held-out batch) centring leaves nothing to compare: 0, and a zero gradient."""
    n = student.shape[0]
    if student.ndim != 2 or teacher.ndim != 2 or teacher.shape[0] != n:
        raise ValueError(f"student embeddings {tuple(student.shape)} and teacher embeddings "
                         f"{tuple(teacher.shape)} must be (N, H) matrices with the same N")
    if n < 3:
        return student.float().sum() * 0.0
    off = ~torch.eye(n, dtype=torch.bool, device=student.device)
    diff = _centred_cosines(student) - _centred_cosines(teacher.detach())
    return diff[off].pow(2).mean()


def representation_term(out: StudentOutput, cfg: Any) -> torch.Tensor:
    """L_rep of a forward pass over the anchor and positive spans, in loss.rep_form. The similarity form is also
    what a student narrower than its teacher logs (its cosine has no meaning); it compares every span with
    every other, so with out.across_ranks it is one matrix over every rank's spans: the single-process loss on
    the whole batch."""
    s_span = torch.cat(out.spans())  # (2B, H_S)
    t_emb = out.batch["teacher_embedding"]  # (B, 2, H_T)
    t_span = torch.cat([t_emb[:, 0], t_emb[:, 1]])  # (2B, H_T)
    if cfg.rep_form == "similarity" or s_span.shape[-1] != t_span.shape[-1]:
        if out.across_ranks:
            s_span, t_span = all_gather_with_grad(s_span), all_gather_constant(t_span.float())
        return similarity_loss(s_span, t_span)
    return cosine_embedding_loss(s_span, t_span)


REPRESENTATION = register(Term("rep", "representation loss", weight=lambda cfg: cfg.rep_weight or None,
                               compute=representation_term))
"""Weight μ (loss.rep_weight); at 0 the term is logged, not trained on: the loss is the seed's exactly."""
