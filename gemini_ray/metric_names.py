"""Every logged metric's name, defined once: the trainer's log lines, summary.json, Tune's results.csv,
the ablation and `tune.metric` all use these strings.

    loss/total, loss/<term>                   the training loss and each of its terms, e.g. loss/kd, loss/cl,
                                              loss/rep (mean over a logging window)
    val/loss_total, val/loss_<term>           the same on the held-out rows: val/loss_kd, ...
    val/retrieval_mrr, val/objective          held-out retrieval of positives; the composite Tune ranks by
    val/teacher_agreement                     held-out span similarities ordered as the teacher orders them
    val/perplexity, val/kl_to_teacher,        the held-out KD windows' next tokens (causal students): over
    val/teacher_top1_agreement                every position, and by position range: val/perplexity_pos_64-127
"""

from __future__ import annotations

__all__ = ["LOSS_TOTAL", "loss_metric", "term_of", "LOSS_KD", "LOSS_CL", "LOSS_REP", "held_out", "VAL_LOSS_TOTAL",
           "VAL_LOSS_KD", "VAL_LOSS_CL", "VAL_RETRIEVAL", "VAL_TEACHER_AGREEMENT", "OBJECTIVE_EMBEDDING", "VAL_OBJECTIVE",
           "VAL_STEP", "VAL_EXAMPLES", "NONFINITE", "VAL_PERPLEXITY", "VAL_KL", "VAL_TOP1", "LM_METRICS",
           "at_positions", "lm_figures"]

LOSS_TOTAL = "loss/total"


def loss_metric(term: str) -> str:
    """The logged name of a loss term (gemini_ray.losses.terms): 'kd' -> 'loss/kd'."""
    return "loss/" + term


def term_of(metric: str) -> str | None:
    """The loss term a logged name is of: 'loss/kd' -> 'kd'; None for loss/total and every other metric."""
    return metric[len("loss/"):] if metric.startswith("loss/") and metric != LOSS_TOTAL else None


LOSS_KD, LOSS_CL, LOSS_REP = loss_metric("kd"), loss_metric("cl"), loss_metric("rep")
"""The terms that a consumer names on purpose: val/objective's KD half, the loss chart, the end-of-run line.
Everything else iterates the terms."""


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
VAL_PERPLEXITY = "val/perplexity"
"""exp of the mean NLL of the next token over every position of the held-out KD windows (causal students)."""
VAL_KL = "val/kl_to_teacher"
"""Mean KL from the teacher's stored top-k distribution (renormalised, T = 1) to the student's, there."""
VAL_TOP1 = "val/teacher_top1_agreement"
"""Share of those positions where the student's most likely next token is the teacher's."""
LM_METRICS = {VAL_PERPLEXITY: "perplexity", VAL_KL: "kl_to_teacher", VAL_TOP1: "teacher_top1_agreement"}
"""The held-out language-model metrics and the key each has in summary.json's held_out_lm (as in eval's report)."""


def at_positions(name: str, label: str) -> str:
    """A held-out LM metric over one range of positions of the window: ('val/perplexity', '64-127') ->
    'val/perplexity_pos_64-127'."""
    return f"{name}_pos_{label}"


def lm_figures(metrics: dict[str, float]) -> dict[str, object]:
    """The held-out LM metrics of one evaluation as summary.json's held_out_lm shows them (eval's report's
    keys): {perplexity, kl_to_teacher, teacher_top1_agreement, by_position: {'1-31': {...}, ...}}."""
    out: dict[str, object] = {key: metrics[name] for name, key in LM_METRICS.items() if name in metrics}
    ranges: dict[str, dict[str, float]] = {}
    for name, key in LM_METRICS.items():
        for metric, value in metrics.items():
            if metric.startswith(name + "_pos_"):
                ranges.setdefault(metric[len(name) + 5:], {})[key] = value
    out["by_position"] = dict(sorted(ranges.items(), key=lambda item: int(item[0].split("-")[0])))
    return out


VAL_STEP = "val/step"
"""The step at which the held-out metrics of a report were measured."""
VAL_EXAMPLES = "val/examples"
"""Held-out rows scored."""
NONFINITE = "nonfinite"
"""Reported by a Tune trial whose loss turned NaN or infinite: the error message (its tune.metric is NaN)."""
