"""Every logged metric's name, defined once: the trainer's log lines, summary.json, Tune's results.csv,
the ablation and `tune.metric` all use these strings.

    loss/total, loss/kd, loss/cl, loss/rep    the training loss and its parts (mean over a logging window)
    val/loss_total, val/loss_kd, ...          the same parts on the held-out rows
    val/retrieval_mrr, val/objective          held-out retrieval of positives; the composite Tune ranks by
    val/teacher_agreement                     held-out span similarities ordered as the teacher orders them
"""

from __future__ import annotations

__all__ = ["LOSS_TOTAL", "LOSS_KD", "LOSS_CL", "LOSS_REP", "LOSS_NAMES", "LOSS_PARTS", "LOSS_PART_NAMES", "held_out", "VAL_LOSS_TOTAL",
           "VAL_LOSS_KD", "VAL_LOSS_CL", "VAL_RETRIEVAL", "VAL_TEACHER_AGREEMENT", "OBJECTIVE_EMBEDDING", "VAL_OBJECTIVE", "VAL_STEP", "VAL_EXAMPLES", "NONFINITE"]

LOSS_TOTAL = "loss/total"
LOSS_KD = "loss/kd"
LOSS_CL = "loss/cl"
LOSS_REP = "loss/rep"
"""The representation term in loss.rep_form (in the gradient when loss.rep_weight > 0): 'cosine', 1 − cosine of
the student's and the teacher's pooled span embeddings; 'similarity', the mean squared difference of their centred
cosine matrices (also what is logged for a student narrower than its teacher, whose cosine cannot be computed)."""
LOSS_NAMES = (LOSS_TOTAL, LOSS_KD, LOSS_CL, LOSS_REP)
"""In the order they are logged."""
LOSS_PARTS = (LOSS_KD, LOSS_CL, LOSS_REP, LOSS_TOTAL)
"""In the order a non-finite value is blamed on: the distillation part, the contrastive part, the total."""

LOSS_PART_NAMES = {LOSS_KD: "distillation loss (loss/kd)", LOSS_CL: "contrastive loss (loss/cl)",
                   LOSS_REP: "representation loss (loss/rep)", LOSS_TOTAL: "total loss (loss/total)"}
"""How an error message names each part."""


def held_out(name: str) -> str:
    """The held-out twin of a training loss name: 'loss/kd' -> 'val/loss_kd'."""
    return "val/" + name.replace("/", "_")


VAL_LOSS_TOTAL, VAL_LOSS_KD, VAL_LOSS_CL = held_out(LOSS_TOTAL), held_out(LOSS_KD), held_out(LOSS_CL)
VAL_RETRIEVAL = "val/retrieval_mrr"
"""Mean reciprocal rank of each held-out anchor's positive among the held-out positives of other documents
(cosine of the student's pooled spans; free of τ). Higher is better."""
VAL_TEACHER_AGREEMENT = "val/teacher_agreement"
"""Spearman correlation, over every pair of held-out spans (anchors and positives), of the student's cosine
similarity with the teacher's (`teacher_agreement`; free of τ and of width). Higher is better; logged, not
in val/objective unless tune.objective_embedding=teacher_agreement."""
OBJECTIVE_EMBEDDING = {"retrieval": VAL_RETRIEVAL, "teacher_agreement": VAL_TEACHER_AGREEMENT}
"""tune.objective_embedding's choices: the metric each puts in val/objective's embedding half."""
VAL_OBJECTIVE = "val/objective"
"""Both halves of the student in one number, lower is better, 1.0 at the run's start:
½ · val/loss_kd ÷ its value at step 0 + ½ · (1 − E) ÷ its value at step 0, E the held-out embedding metric
tune.objective_embedding names (val/retrieval_mrr by default, or val/teacher_agreement)."""
VAL_STEP = "val/step"
"""The step at which the held-out metrics of a report were measured."""
VAL_EXAMPLES = "val/examples"
"""Held-out rows scored."""
NONFINITE = "nonfinite"
"""Reported by a Tune trial whose loss turned NaN or infinite: the error message (its tune.metric is NaN)."""
