"""Representation loss: the student's pooled span embedding toward the teacher's (L_rep).

    L_rep = mean over spans of ( 1 − cos(z_S, z_T) )

z_S is the student's mean-pooled last hidden state of a span, z_T the teacher's (shipped by the teacher
stage with the soft labels; a constant here). It is an extension beyond the seed's two-term loss, in the
spirit of DistilBERT's hidden-state cosine loss (Sanh et al. 2019), and needs a student as wide as its
teacher (the copied-layer students are).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cosine_embedding_loss"]


def cosine_embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean 1 − cosine between (N, H) student and (N, H) teacher embeddings; no gradient to the teacher.
    0 when every pair points the same way, 2 when opposite."""
    if student.shape != teacher.shape:
        raise ValueError(f"student embeddings {tuple(student.shape)} and teacher embeddings "
                         f"{tuple(teacher.shape)} differ in shape")
    cos = F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1, eps=1e-8)  # (N,)
    return (1.0 - cos).mean()
