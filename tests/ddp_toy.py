"""Two gloo processes run compute_loss on halves of a batch; the test compares with one process. Spawned
processes import this module for `worker`; the toy student and batch are tests/helpers.py's."""

from __future__ import annotations

import torch
import torch.distributed as dist

from gemini_ray.config import LossConfig
from helpers import ToyStudent, toy_batch


def loss_and_grads(batch: dict[str, torch.Tensor], cfg: LossConfig) -> tuple[float, float, list[torch.Tensor]]:
    from gemini_ray.training.train_step import compute_loss

    model = ToyStudent()
    parts = compute_loss(model, batch, cfg)
    parts.total.backward()
    return float(parts.total), float(parts["cl"]), [p.grad.clone() for p in model.parameters()]


def worker(rank: int, world: int, init_file: str, rows: int, out: str, loss: dict | None = None) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        full = toy_batch(rows)
        per = rows // world
        half = {k: v[rank * per : (rank + 1) * per] for k, v in full.items()}
        total, cl, grads = loss_and_grads(half, LossConfig(**{"lambda_kd": 0.3, "num_negatives": 2, **(loss or {})}))
        losses = torch.tensor([total, cl], dtype=torch.float64)
        dist.all_reduce(losses)
        for g in grads:  # what DDP does: average the ranks' gradients
            dist.all_reduce(g)
            g /= world
        if rank == 0:
            torch.save({"loss": (losses / world).tolist(), "grads": grads}, out)
    finally:
        dist.destroy_process_group()
