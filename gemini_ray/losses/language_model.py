"""Plain next-token cross-entropy: the no-teacher baseline and the evaluation's perplexity. No Ray here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["next_token_loss", "next_token_nll"]


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of each next token and the number of predicted tokens.

    Args:
        logits: (N, L, V) causal-LM logits; position t predicts token t + 1.
        input_ids, attention_mask: (N, L).
    Returns:
        (sum of −log p(x_{t+1} | x_≤t) over valid pairs, count of valid pairs), both 0-d float tensors.
    """
    valid = (attention_mask[:, :-1] * attention_mask[:, 1:]).bool()  # (N, L-1) both tokens real
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), input_ids[:, 1:].long().flatten(), reduction="none")
    nll = nll.view_as(valid) * valid  # (N, L-1)
    return nll.sum(), valid.sum().to(nll.dtype)


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over valid pairs (0, not NaN, when there is none)."""
    total, count = next_token_nll(logits, input_ids, attention_mask)
    return total / count.clamp(min=1.0)
