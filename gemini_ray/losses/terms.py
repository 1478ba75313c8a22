"""What a loss term is: a name, a weight taken from the loss config, and a scalar computed from one forward pass
of the student. The combined loss (`gemini_ray.losses.combine`) is the weighted sum of the registered terms, each
logged under its own name: loss/<name> for the training window, val/loss_<name> on the held-out rows.

A new term is one `register(Term(...))` in its loss module (a new module also joins the imports of
losses/__init__.py), a weight key in gemini_ray.config.LossConfig, and a test; nothing downstream names it.
No Ray here, and nothing imported from the package, so that every loss module can register its terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = ["StudentOutput", "Term", "TERMS", "register"]


@dataclass(frozen=True)
class StudentOutput:
    """One forward pass of the student over a batch (the layout of `gemini_ray.training.train_step`: B rows,
    K negatives, KD window W, span length L): what every term is computed from."""

    batch: dict[str, torch.Tensor]
    """The batch as the step got it: input_ids (B, 2, W), topk_ids (B, 2, W, k), teacher_embedding (B, 2, H), ..."""
    logits: torch.Tensor
    """(2B, W, V): the anchors' then the positives' windows' token logits."""
    pooled: torch.Tensor
    """(2B + BK, H): the pooled spans of the anchors, the positives (each its window's first L tokens), then
    each row's K negatives."""
    across_ranks: bool = False
    """Terms that compare rows gather them from every torch.distributed rank (a collective). Off for evaluation,
    where every rank scores the same rows."""

    @property
    def rows(self) -> int:
        """B."""
        return int(self.batch["input_ids"].shape[0])

    def spans(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The anchors' and the positives' pooled embeddings, (B, H) each."""
        B = self.rows
        return self.pooled[:B], self.pooled[B : 2 * B]

    def negatives(self) -> torch.Tensor:
        """(B, K, H): each row's mined negatives, pooled."""
        return self.pooled[2 * self.rows :].reshape(self.rows, -1, self.pooled.shape[-1])


@dataclass(frozen=True)
class Term:
    """One named term of the combined loss."""

    name: str
    """Short and stable: logged as loss/<name> and val/loss_<name>, and the key of loss.balance='start''s
    reference (loss/<name>, kept in checkpoints)."""
    title: str
    """How an error message names it: 'contrastive loss'."""
    weight: Callable[[Any], float | None]
    """Its weight in the total, from the loss config (gemini_ray.config.LossConfig). None: measured and logged
    but left out of the loss (detached), so the loss is exactly the one without it; 0 keeps the term in the
    graph with no pull (every parameter it reaches still gets a gradient, as DDP expects)."""
    compute: Callable[[StudentOutput, Any], torch.Tensor]
    """(forward pass, loss config) -> the term's value, a scalar ()."""


TERMS: dict[str, Term] = {}
"""The registered terms by name, in the order they are computed and logged (the order of registration)."""


def register(term: Term) -> Term:
    """Add `term` to the combined loss (compute_loss computes it, combine weighs it, the logs carry it)."""
    if term.name in TERMS:
        raise ValueError(f"a loss term named {term.name!r} is registered already")
    TERMS[term.name] = term
    return term
