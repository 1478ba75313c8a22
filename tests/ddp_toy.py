"""Two gloo processes run compute_loss on halves of a batch; the test compares with one process."""

from __future__ import annotations

import torch
import torch.distributed as dist

from gemini_ray.config import LossConfig
from gemini_ray.models.build import mean_pool

V, H, L, K = 50, 16, 6, 2


class ToyStudent(torch.nn.Module):
    """The DistillStudent interface (logits for the first n rows, pooled embeddings for all) on one
    embedding table and one head, so the whole loss is cheap and deterministic."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(V, H)
        self.mix = torch.nn.Linear(H, H)
        self.head = torch.nn.Linear(H, V)

    def forward(self, ids: torch.Tensor, att: torch.Tensor, n: int):
        hidden = torch.tanh(self.mix(self.emb(ids)))  # (N, L, H)
        return self.head(hidden[:n]), mean_pool(hidden, att)


def toy_batch(rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    doc = torch.arange(rows) // 2 * 7 + 1  # rows 2i and 2i+1 share a document: not each other's negatives
    ids = torch.randint(0, V, (rows, 2, L), generator=g)
    ids[3, 1] = ids[0, 1]  # the same positive text in two documents (and, split in halves, on two ranks)
    span_hash = (ids * torch.arange(1, L + 1)).sum(-1) * 1000 + ids[..., 0]  # (rows, 2): equal texts, equal hashes
    return {
        "input_ids": ids, "attention_mask": torch.ones(rows, 2, L, dtype=torch.long),
        "label_mask": torch.ones(rows, 2, L), "topk_ids": torch.randint(0, V, (rows, 2, L, 4), generator=g),
        "topk_logits": torch.randn(rows, 2, L, 4, generator=g), "neg_input_ids": torch.randint(0, V, (rows, K, L), generator=g),
        "neg_attention_mask": torch.ones(rows, K, L, dtype=torch.long), "neg_mask": torch.ones(rows, K, dtype=torch.bool),
        "doc_id": doc, "span_hash": span_hash, "teacher_embedding": torch.randn(rows, 2, H, generator=g),
    }


def loss_and_grads(batch: dict[str, torch.Tensor], cfg: LossConfig) -> tuple[float, float, list[torch.Tensor]]:
    from gemini_ray.training.train_step import compute_loss

    model = ToyStudent()
    parts = compute_loss(model, batch, cfg)
    parts.total.backward()
    return float(parts.total), float(parts.cl), [p.grad.clone() for p in model.parameters()]


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
