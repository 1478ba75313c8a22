"""Evaluation metrics: pure functions over arrays and tensors. No Ray, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch

__all__ = ["spearman", "TokenStats", "token_stats", "topk_stats_by_position", "token_stats_by_position",
           "merge_by_position", "range_index",
           "range_label", "perplexity_ratios", "causal_targets", "linear_probe_accuracy", "positive_mrr",
           "teacher_agreement", "composite_objective", "CEILING_PENALTY", "linear_probe_correct", "bootstrap_interval",
           "BOOTSTRAP_SAMPLES"]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    rx = pd.Series(np.asarray(x, dtype=float)).rank().to_numpy()
    ry = pd.Series(np.asarray(y, dtype=float)).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


@dataclass
class TokenStats:
    """Sums over predicted positions; perplexity, KL and agreement are their means."""

    nll: float = 0.0
    kl: float = 0.0
    agree: float = 0.0
    count: int = 0

    def add(self, other: "TokenStats") -> None:
        self.nll += other.nll
        self.kl += other.kl
        self.agree += other.agree
        self.count += other.count

    @staticmethod
    def total(parts: Iterable["TokenStats"]) -> "TokenStats":
        """The sums of several parts (windows, position ranges) added up."""
        out = TokenStats()
        for part in parts:
            out.add(part)
        return out

    def summary(self, with_teacher: bool) -> dict[str, float]:
        n = max(self.count, 1)
        out = {"tokens": self.count, "nll": self.nll / n, "perplexity": float(np.exp(self.nll / n))}
        if with_teacher:
            out.update(kl_to_teacher=self.kl / n, teacher_top1_agreement=self.agree / n)
        return out


def causal_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and positions for next-token prediction: position t predicts token t + 1.

    Returns (targets (N, L), positions (N, L) bool); the last position and padding are never predicted."""
    targets = torch.zeros_like(input_ids)
    targets[:, :-1] = input_ids[:, 1:]
    positions = torch.zeros_like(attention_mask, dtype=torch.bool)
    positions[:, :-1] = (attention_mask[:, :-1] * attention_mask[:, 1:]).bool()
    return targets, positions


FIRST_RANGE_END = 32
"""Predicted positions 1-31 form the first range (the span length students used to train at); each later
range doubles: 32-63, 64-127, 128-255, ..."""


def range_index(predicted: torch.Tensor) -> torch.Tensor:
    """The position range of each predicted token's position in its window: 0 for 1-31, k >= 1 for
    2^(k+4) .. 2^(k+5) - 1. Position 0 (which only a masked model without a leading special token scores)
    counts in the first range. predicted: (P,) int positions -> (P,) long range indices."""
    p = predicted.long().clamp(min=1)  # (P,)
    return (torch.floor(torch.log2(p.double())).long() - 4).clamp(min=0)  # (P,) exact: log2 of ints < 2^52


def range_label(index: int) -> str:
    """A position range as a report keys it: 0 -> '1-31', 1 -> '32-63', 2 -> '64-127', ..."""
    start = 1 if index == 0 else FIRST_RANGE_END << (index - 1)
    return f"{start}-{(FIRST_RANGE_END << index) - 1}"


def _range_start(label: str) -> int:
    return int(label.split("-")[0])


@torch.no_grad()
def token_stats_by_position(logits: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor,
                            teacher_logits: torch.Tensor | None = None, offset: int = 1) -> dict[str, TokenStats]:
    """`token_stats` split by the range (`range_label`) of the predicted token's position in its window:
    where along a window a student falls behind its teacher (one trained on 32-token spans, past 32). The
    same single pass over the logits; only ranges that hold tokens, in position order.

    Args:
        logits: (N, L, V) model logits; targets: (N, L) token ids; positions: (N, L) bool, where to score.
        teacher_logits: (N, L, V) or None (then KL and agreement stay 0).
        offset: how far ahead of its logit's index the predicted token sits: 1 for a causal model (the logit
            at index p - 1 predicts token p), 0 for a masked one (the logit at a masked token's index).
    """
    lp = torch.log_softmax(logits[positions].float(), dim=-1)  # (P, V), row-major like nonzero below
    t = targets[positions].long()  # (P,)
    where = range_index(torch.nonzero(positions)[:, -1] + offset)  # (P,) range of each predicted token
    n = int(where.max()) + 1 if len(where) else 0

    def per_range(v: torch.Tensor) -> torch.Tensor:  # (P,) -> (R,) sums in float64
        return torch.zeros(n, dtype=torch.float64).index_add_(0, where, v.double())

    nll = per_range(-lp.gather(1, t[:, None])[:, 0])  # (R,)
    count = torch.bincount(where, minlength=n)  # (R,)
    kl = agree = torch.zeros(n, dtype=torch.float64)
    if teacher_logits is not None:
        tlp = torch.log_softmax(teacher_logits[positions].float(), dim=-1)  # (P, V)
        kl = per_range((tlp.exp() * (tlp - lp)).sum(-1))  # (R,)
        agree = per_range((tlp.argmax(-1) == lp.argmax(-1)).double())  # (R,)
    return {range_label(k): TokenStats(nll=float(nll[k]), kl=float(kl[k]), agree=float(agree[k]), count=int(count[k]))
            for k in range(n) if count[k]}


@torch.no_grad()
def topk_stats_by_position(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           topk_ids: torch.Tensor, topk_logits: torch.Tensor) -> dict[str, TokenStats]:
    """`token_stats_by_position` of a causal student on KD windows against the teacher's stored top-k (the
    held-out rows of a run, where no full teacher distribution exists): the NLL of each next token, KL from
    the teacher's top-k distribution renormalised at T = 1 (what KD trains towards) to the student's, and
    agreement with the teacher's top-1 (its first stored id: the top-k is sorted).

    Args:
        logits: (N, W, V) student logits; input_ids, attention_mask: (N, W) the windows;
        topk_ids, topk_logits: (N, W, k) the teacher's top-k at each position.
    """
    targets, positions = causal_targets(input_ids, attention_mask)  # (N, W) each: position t predicts t + 1
    lp = torch.log_softmax(logits[positions].float(), dim=-1)  # (P, V)
    tlp = torch.log_softmax(topk_logits[positions].float(), dim=-1)  # (P, k) the renormalised top-k
    ids = topk_ids[positions].long()  # (P, k)
    where = range_index(torch.nonzero(positions)[:, -1] + 1)  # (P,) range of each predicted token
    n = int(where.max()) + 1 if len(where) else 0

    def per_range(v: torch.Tensor) -> torch.Tensor:  # (P,) -> (R,) sums in float64
        return torch.zeros(n, dtype=torch.float64).index_add_(0, where, v.double())

    nll = per_range(-lp.gather(1, targets[positions].long()[:, None])[:, 0])  # (R,)
    kl = per_range((tlp.exp() * (tlp - lp.gather(1, ids))).sum(-1))  # (R,)
    agree = per_range((ids[:, 0] == lp.argmax(-1)).double())  # (R,)
    count = torch.bincount(where, minlength=n)  # (R,)
    return {range_label(k): TokenStats(nll=float(nll[k]), kl=float(kl[k]), agree=float(agree[k]), count=int(count[k]))
            for k in range(n) if count[k]}


def merge_by_position(parts: Iterable[dict[str, TokenStats]]) -> dict[str, TokenStats]:
    """Per-range sums of several windows (or batches) added up, in position order."""
    total: dict[str, TokenStats] = {}
    for part in parts:
        for label, stats in part.items():
            total.setdefault(label, TokenStats()).add(stats)
    return {label: total[label] for label in sorted(total, key=_range_start)}


@torch.no_grad()
def token_stats(logits: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor,
                teacher_logits: torch.Tensor | None = None) -> TokenStats:
    """NLL of the targets, KL(teacher ‖ model) and top-1 agreement with the teacher, summed over positions:
    the position ranges of `token_stats_by_position` added up.

    Args:
        logits: (N, L, V) model logits; targets: (N, L) token ids; positions: (N, L) bool, where to score.
        teacher_logits: (N, L, V) or None (then KL and agreement stay 0).
    """
    return TokenStats.total(token_stats_by_position(logits, targets, positions, teacher_logits).values())


def perplexity_ratios(model: dict[str, dict[str, float]], reference: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per position range, a model's perplexity over a reference's (a student's over its teacher's), from the
    `by_position` summaries of two models scored on the same windows; ranges that either lacks are left out."""
    return {label: s["perplexity"] / reference[label]["perplexity"] for label, s in model.items() if label in reference}


def linear_probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                          l2: float = 1e-2, seed: int = 0, max_iter: int = 200) -> float:
    """Test accuracy of `linear_probe_correct`."""
    return float(linear_probe_correct(x_train, y_train, x_test, y_test, l2, seed, max_iter).mean())


def linear_probe_correct(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                         l2: float = 1e-2, seed: int = 0, max_iter: int = 200) -> np.ndarray:
    """Logistic regression on frozen features (standardised on the training side, L2-regularised, full-batch
    L-BFGS in float64: deterministic for a given seed); returns (n_test,) bool, whether each test item is
    classified right (its mean is the accuracy; kept per item for bootstrap intervals).

    Args:
        x_*: (n, d) features; y_*: (n,) integer class labels 0..C-1.
    """
    torch.manual_seed(seed)
    xtr = torch.as_tensor(np.asarray(x_train), dtype=torch.float64)
    xte = torch.as_tensor(np.asarray(x_test), dtype=torch.float64)
    mu, sd = xtr.mean(0), xtr.std(0).clamp(min=1e-8)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    ytr = torch.tensor(np.array(y_train), dtype=torch.long)
    n_classes = int(max(ytr.max().item(), int(np.max(y_test))) + 1)
    w = torch.zeros(xtr.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, ytr) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (xte @ w + b).argmax(1).numpy()
    return pred == np.asarray(y_test)


def positive_mrr(anchors: torch.Tensor, positives: torch.Tensor, doc_ids: torch.Tensor) -> float:
    """Mean reciprocal rank of each anchor's own positive among the positives of rows from other documents
    (and its own), by cosine: 1.0 when every anchor finds its positive first. Free of the contrastive
    temperature, so runs with different τ compare on it. anchors, positives: (N, H); doc_ids: (N,).
    NaN for no rows."""
    if len(anchors) == 0:
        return float("nan")
    a = torch.nn.functional.normalize(anchors.float(), dim=-1)
    p = torch.nn.functional.normalize(positives.float(), dim=-1)
    sim = a @ p.T  # (N, N)
    own = sim.diagonal().unsqueeze(1)  # (N, 1)
    other_doc = doc_ids.view(-1, 1) != doc_ids.view(1, -1)  # same-document rows are not competitors
    rank = 1 + ((sim > own) & other_doc).sum(1)  # ties go to the anchor's own positive
    return float((1.0 / rank.float()).mean())


def teacher_agreement(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """How far the student ranks pairs of spans as its teacher does: the Spearman correlation, over every
    pair of the N spans, of the student's cosine similarity with the teacher's. 1.0 when the student orders
    all pairs as the teacher; free of τ and of either model's width. student: (N, H), teacher: (N, H').
    NaN under 3 spans (fewer than 3 pairs)."""
    if len(student) < 3:
        return float("nan")
    pairs = torch.triu_indices(len(student), len(student), offset=1)

    def cosines(x: torch.Tensor) -> np.ndarray:
        x = torch.nn.functional.normalize(x.detach().float().cpu(), dim=-1)
        return (x @ x.T)[pairs[0], pairs[1]].numpy()

    return spearman(cosines(student), cosines(teacher))


def composite_objective(kd: float, embedding: float, kd_start: float, embedding_start: float,
                        kd_ceiling: float | None = None) -> float:
    """One number for both halves of a student, lower is better and 1.0 where the run started: the held-out
    KD loss and the held-out embedding metric's shortfall from a perfect 1 (1 − MRR of the positives, or
    1 − the teacher agreement), each as a fraction of its value at the start, averaged. A search that ranks
    trials by it cannot win by giving up either half (the held-out KD loss alone favours the largest λ; τ
    and K only show in the embedding half).

    kd_ceiling: a floor on the language model. A student whose held-out KD loss is above it scores
    CEILING_PENALTY plus its excess as a fraction of the start, behind any student under it (whose average
    stays below 2 unless its embedding shortfall grows threefold), and the closer to the ceiling the better."""
    if kd_ceiling is not None and kd > kd_ceiling:
        return CEILING_PENALTY + (kd - kd_ceiling) / max(kd_start, 1e-6)
    return 0.5 * kd / max(kd_start, 1e-6) + 0.5 * (1.0 - embedding) / max(1.0 - embedding_start, 1e-3)


CEILING_PENALTY = 2.0

BOOTSTRAP_SAMPLES = 1000


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n: int, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(indices)` over `n` evaluation items resampled with
    replacement (seeded). For a difference between two models, give a statistic of the difference on the
    same indices: a paired interval, far tighter than two separate ones."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(samples)], dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)
