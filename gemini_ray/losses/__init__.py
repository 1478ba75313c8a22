"""Losses: pure functions over tensors, one module per family. No Ray here."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gemini_ray.metric_names import LOSS_CL, LOSS_KD, LOSS_TOTAL
from gemini_ray.losses.contrastive import info_nce_loss
from gemini_ray.losses.distillation import dense_kd_loss, topk_kd_loss
from gemini_ray.losses.language_model import next_token_loss

__all__ = ["LossParts", "combine", "info_nce_loss", "topk_kd_loss", "dense_kd_loss", "next_token_loss"]


@dataclass
class LossParts:
    """The combined loss and its parts, logged as loss/total, loss/kd, loss/cl."""

    total: torch.Tensor
    kd: torch.Tensor
    cl: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {LOSS_TOTAL: float(self.total), LOSS_KD: float(self.kd), LOSS_CL: float(self.cl)}


def combine(kd: torch.Tensor, cl: torch.Tensor, lambda_kd: float) -> LossParts:
    """L = λ·L_KD + (1 − λ)·L_CL."""
    return LossParts(total=lambda_kd * kd + (1.0 - lambda_kd) * cl, kd=kd, cl=cl)
