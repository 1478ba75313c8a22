"""End to end through Ray Data and Ray Train with a masked (BERT-family) teacher. Train, resume after
faults and export with a causal teacher: test_faults.py; bad input: test_bad_input.py."""

import pytest

from gemini_ray.config import build_config
from gemini_ray.commands.distill import distill

pytestmark = pytest.mark.ray


def tiny_overrides(teacher_dir, corpus, storage, name, steps):
    return [f"teacher.model={teacher_dir}", "teacher.top_k=8", "teacher.batch_size=8",
            f"data.path={corpus}", "data.text_column=body", "data.span_length=16",
            "student.num_layers=2", "loss.num_negatives=3", "mining.window=16",
            f"train.max_steps={steps}", "train.batch_size=4", "train.log_every=2", "train.checkpoint_every=2",
            "train.warmup_steps=1", f"run.storage_path={storage}", f"run.name={name}"]


def test_distill_masked_teacher(ray_start_2_cpus, bert_dir, corpus_file, tmp_path):
    cfg = build_config(None, tiny_overrides(bert_dir, corpus_file, tmp_path, "bert", 2))
    summary = distill(cfg)
    assert summary["teacher"]["kind"] == "masked" and summary["training"]["steps"] == 2
    from transformers import AutoModelForMaskedLM

    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "bert" / "student").config.num_hidden_layers == 2
