"""One training step's maths: batch of tensors → loss parts. No Ray here.

A batch (B examples, K negatives, KD window W, span length L <= W, teacher top-k k) holds:
    input_ids (B, 2, W), attention_mask (B, 2, W), label_mask (B, 2, W)   the anchor's and the positive's windows
    topk_ids (B, 2, W, k), topk_logits (B, 2, W, k)                       teacher soft labels, every position
    teacher_embedding (B, 2, H)                                           teacher's pooled spans (each window's first L)
    neg_input_ids (B, K, L), neg_attention_mask (B, K, L), neg_mask (B, K) mined negatives: other documents' spans
    doc_id (B,), span_hash (B, 2)                                         which rows may be in-batch negatives
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, ContextManager

import torch

from gemini_ray.config import LossConfig, TrainConfig
from gemini_ray.losses import LossParts, StudentOutput, Weighted, combine, measure, next_token_loss
from gemini_ray.models.build import layer_depths

__all__ = ["compute_loss", "make_optimizer", "lr_at", "set_lr"]


def compute_loss(student: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: LossConfig,
                 across_ranks: bool = True, reference: dict[str, float] | None = None,
                 autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
                 keep_logits: bool = False) -> LossParts:
    """The combined loss of a batch over the registered terms (gemini_ray.losses: λ·L_KD + (1 − λ)·L_CL
    (+ μ·L_rep)), or next-token CE with loss.objective='lm'; `student` is a (possibly DDP-wrapped)
    DistillStudent.

    `across_ranks`: the terms that compare rows (in-batch negatives, the similarity form of L_rep) gather them
    from every torch.distributed rank (a collective: every rank must call it with the same batch size).
    Off for evaluation, where every rank scores the same rows. `reference`: the loss parts where training
    started, for loss.balance='start'. `autocast`: the context the student's forward runs in (train.precision);
    the losses are computed outside it, in fp32. `keep_logits`: the parts carry the windows' logits (held-out
    statistics by position)."""
    ids = batch["input_ids"].long()  # (B, 2, W)
    B = ids.shape[0]
    K = cfg.num_negatives
    neg_ids = batch["neg_input_ids"][:, :K].long()  # (B, K, L)
    L = neg_ids.shape[-1]
    windows = torch.cat([ids[:, 0], ids[:, 1]])  # (2B, W)
    att = batch["attention_mask"].long()
    window_att = torch.cat([att[:, 0], att[:, 1]])  # (2B, W)
    neg_att = batch["neg_attention_mask"][:, :K].long().reshape(B * K, L)
    with autocast():
        logits, pooled = student(windows, window_att, neg_ids.reshape(B * K, L), neg_att)  # (2B, W, V), (2B + BK, H)
    out = StudentOutput(batch=batch, logits=logits, pooled=pooled, across_ranks=across_ranks)
    terms = measure(out, cfg)  # name -> (weight, value)
    if cfg.objective == "lm":  # no-teacher baseline: every term is logged, the gradient is plain CE
        ce = next_token_loss(logits, windows, window_att)  # windows ordered like the logits
        parts = LossParts(total=ce, terms={name: Weighted(None, t.value.detach()) for name, t in terms.items()})
    else:
        parts = combine(terms, cfg.balance, reference)
    z, z_pos = out.spans()  # (B, H) each
    parts.spans = (z.detach(), z_pos.detach())
    if keep_logits:
        parts.logits = logits.detach()
    return parts


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms. With train.layer_lr_decay < 1 each depth below the top
    (models.layer_depths) is a group of its own whose 'lr_scale' is layer_lr_decay ** depth; set_lr
    multiplies the schedule by it. At 1 there are two groups, as in checkpoints written before the key."""
    depth_of = layer_depths(model, embeddings_at_bottom=cfg.layer_lr_decay_embeddings) if cfg.layer_lr_decay < 1 else {}
    groups: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((depth_of.get(name, 0), p.ndim >= 2), []).append(p)
    order = sorted(groups, key=lambda key: (key[0], not key[1]))  # depth 0 first; decayed before not
    return torch.optim.AdamW(
        [{"params": groups[key], "weight_decay": cfg.weight_decay if key[1] else 0.0,
          "lr_scale": cfg.layer_lr_decay ** key[0]} for key in order], lr=cfg.lr, betas=(0.9, 0.98))


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> None:
    """Each group's learning rate for `step`: the schedule (lr_at) times the group's lr_scale."""
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to 10 % of it at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
