"""Losses: pure functions over tensors, one module per family, and the combined loss over their named terms.
No Ray here.

    L = Σ_name w_name · L_name          the registered terms (`terms.TERMS`), each logged as loss/<name>:
      kd    λ · L_KD          w = loss.lambda_kd                 distillation.py
      cl    (1 − λ) · L_CL    w = 1 − loss.lambda_kd             contrastive.py
      rep   μ · L_rep         w = loss.rep_weight (0: logged)    representation.py

A term registers itself in its module (`terms.register`); a new term is that module, a weight key in
gemini_ray.config.LossConfig and its test. Nothing downstream names a term: the train step, the logging window,
the held-out metrics, summary.json, TensorBoard and Tune all iterate `LossParts.terms`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

import torch

# Importing a term's module registers its term: the terms are computed and logged in this order (kd, cl, rep).
from gemini_ray.losses.distillation import dense_kd_loss, topk_kd_loss
from gemini_ray.losses.contrastive import info_nce_loss
from gemini_ray.losses.representation import cosine_embedding_loss, similarity_loss
from gemini_ray.losses.language_model import next_token_loss
from gemini_ray.losses.terms import TERMS, StudentOutput, Term, register
from gemini_ray.metric_names import LOSS_TOTAL, loss_metric

__all__ = ["LossParts", "Weighted", "combine", "measure", "describe", "StudentOutput", "Term", "register",
           "info_nce_loss", "topk_kd_loss", "dense_kd_loss", "next_token_loss", "cosine_embedding_loss",
           "similarity_loss"]


class Weighted(NamedTuple):
    """One term of the combined loss: its weight (None: logged, not in the loss) and its value ()."""

    weight: float | None
    value: torch.Tensor


@dataclass
class LossParts:
    """The combined loss and its terms by name, logged as loss/total and loss/<name> (a term is logged whatever
    its weight: rep at weight 0 still measures how far the student's span embeddings are from the teacher's)."""

    total: torch.Tensor
    terms: dict[str, Weighted]
    """name -> (weight, value), in the order the terms are logged."""
    spans: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    """The anchors' and positives' pooled student embeddings (B, H), detached: held-out retrieval uses them."""
    logits: torch.Tensor | None = field(default=None, repr=False)
    """The windows' logits (2B, W, V), detached, with compute_loss(keep_logits=True): held-out statistics by
    position."""

    def __getitem__(self, name: str) -> torch.Tensor:
        """The value of the term `name` (parts["kd"])."""
        return self.terms[name].value

    def as_floats(self) -> dict[str, float]:
        """{loss/total: ..., loss/<name>: ...} for every term, in that order."""
        return {LOSS_TOTAL: float(self.total.detach()),
                **{loss_metric(name): float(term.value.detach()) for name, term in self.terms.items()}}


def measure(out: StudentOutput, cfg: Any) -> dict[str, Weighted]:
    """Every registered term's (weight, value) for a forward pass and the loss config (LossConfig)."""
    return {name: Weighted(term.weight(cfg), term.compute(out, cfg)) for name, term in TERMS.items()}


def combine(terms: Mapping[str, tuple[float | None, torch.Tensor]], balance: str = "none",
            reference: dict[str, float] | None = None) -> LossParts:
    """L = Σ w · L over the terms with a weight (name -> (weight, value)); a term whose weight is None is kept
    in the parts, detached, and left out of the sum.

    balance='magnitude': each term's gradient is divided by the term's current value (the gradient of
    Σ w · log L), so the weights set the terms' relative pull whatever their scales (L_KD is ~6x L_CL at the
    start of the demo). No running state.
    balance='start': each term's gradient is divided by its value where training started, `reference`
    ({loss/<name>: value} as `LossParts.as_floats` names them; the train loop takes the first batch's and keeps
    it in the checkpoint). The weights set the pull per fraction of each term's starting value, and the split
    stays fixed: under 'magnitude' a term that nears 0 (the contrastive loss does once the pairs separate) gets
    an ever larger share. A term without a reference (the first step) is divided by its current value.
    Either way the total's value stays the plain weighted sum, so logs compare across settings."""
    parts = {name: Weighted(w, t if w is not None else t.detach()) for name, (w, t) in terms.items()}
    trained = [(name, w, t) for name, (w, t) in parts.items() if w is not None]
    plain = sum(w * t for _, w, t in trained)
    if balance in ("magnitude", "start"):
        ref = reference if balance == "start" and reference else {}
        scales = [float(ref[loss_metric(name)]) if loss_metric(name) in ref else t.detach() for name, _, t in trained]
        scaled = sum(w * t / torch.as_tensor(s, dtype=t.dtype).clamp_min(1e-8) for s, (_, w, t) in zip(scales, trained))
        total = plain.detach() + (scaled - scaled.detach())  # the value of `plain`, the gradient of `scaled`
    else:
        total = plain
    return LossParts(total=total, terms=parts)


def describe(metric: str) -> str:
    """How an error message names a logged loss: 'loss/cl' -> 'contrastive loss (loss/cl)'."""
    titles = {LOSS_TOTAL: "total loss", **{loss_metric(name): term.title for name, term in TERMS.items()}}
    return f"{titles[metric]} ({metric})" if metric in titles else metric
