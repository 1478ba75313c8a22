"""The optimizer's parameter groups and learning rates: weight decay, layer-wise decay, the schedule (tiny models)."""

from __future__ import annotations

import pytest
import torch

from gemini_ray.config import TrainConfig
from gemini_ray.models.build import layer_depths, load_teacher
from gemini_ray.models.checkpoint import load_checkpoint, save_checkpoint
from gemini_ray.training.train_step import lr_at, make_optimizer, set_lr


def _model(llama_dir) -> torch.nn.Module:
    model, _ = load_teacher(str(llama_dir))
    return model.train()


def test_without_layer_decay_there_are_the_two_groups_of_earlier_checkpoints(llama_dir):
    model = _model(llama_dir)
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.05))
    decayed, plain = optimizer.param_groups
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.05, 0.0)
    assert {id(p) for p in decayed["params"]} == {id(p) for p in model.parameters() if p.ndim >= 2}
    assert {id(p) for p in plain["params"]} == {id(p) for p in model.parameters() if p.ndim < 2}
    set_lr(optimizer, 3, TrainConfig(lr=1e-3, warmup_steps=5))
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(1e-3 * 4 / 5)] * 2


@pytest.mark.parametrize("embeddings_lowest", [False, True])
def test_layer_decay_scales_each_depth_and_the_first_adam_step_moves_it_by_that_much(llama_dir, embeddings_lowest):
    """AdamW's first step moves every weight with a gradient by ~lr (its update is g / |g|): with the
    layer-wise rates, by lr x decay^depth, where depth counts layers down from the output (the tied
    embeddings and head at the top by default, below layer 0 with train.layer_lr_decay_embeddings)."""
    model = _model(llama_dir)
    cfg = TrainConfig(lr=1e-3, layer_lr_decay=0.5, layer_lr_decay_embeddings=embeddings_lowest, warmup_steps=0,
                      weight_decay=0.0)
    optimizer = make_optimizer(model, cfg)
    depths = layer_depths(model, embeddings_at_bottom=embeddings_lowest)
    embeddings = next(n for n in depths if "embed" in n)
    assert depths[embeddings] == (max(depths.values()) if embeddings_lowest else 0)
    params = dict(model.named_parameters())
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each parameter in one group
    for group in optimizer.param_groups:
        assert {0.5 ** depths[n] for n, p in params.items() if any(p is q for q in group["params"])} == \
            {group["lr_scale"]}
    before = {n: p.detach().clone() for n, p in params.items()}
    set_lr(optimizer, 0, cfg)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    for name, p in params.items():
        moved = (p.detach() - before[name]).abs().max().item()
        assert moved == pytest.approx(lr_at(0, cfg) * 0.5 ** depths[name], rel=0.05), name


def test_the_layer_scales_survive_a_checkpoint(tmp_path, llama_dir):
    model = _model(llama_dir)
    cfg = TrainConfig(layer_lr_decay=0.8)
    optimizer = make_optimizer(model, cfg)
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path, model, optimizer, {"step": 1})
    restored = _model(llama_dir)
    again = make_optimizer(restored, cfg)
    load_checkpoint(tmp_path, restored, again)
    assert [g["lr_scale"] for g in again.param_groups] == [g["lr_scale"] for g in optimizer.param_groups]
    assert len({g["lr_scale"] for g in again.param_groups}) == \
        len(set(layer_depths(model, embeddings_at_bottom=cfg.layer_lr_decay_embeddings).values()))
