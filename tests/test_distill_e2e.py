"""End to end through Ray Data and Ray Train with a masked (BERT-family) teacher. Train, resume after
faults and export with a causal teacher: test_faults.py; bad input: test_bad_input.py."""

import pytest

from gemini_ray.commands.distill import distill
from gemini_ray.config import build_config
from helpers import read_scalars, tiny_overrides

pytestmark = pytest.mark.ray


def test_distill_masked_teacher(ray_start_2_cpus, bert_dir, corpus_file, tmp_path):
    """Also through Ray Train: bf16 autocast and two micro-batches a step, TensorBoard events and loss.png."""
    cfg = build_config(None, tiny_overrides(bert_dir, corpus_file, tmp_path, "bert", 2)
                       + ["train.precision=bf16-mixed", "train.grad_accum_steps=2"])
    summary = distill(cfg)
    assert summary["teacher"]["kind"] == "masked" and summary["training"]["steps"] == 2
    assert summary["training"]["examples"] == 2 * 4 * 2  # steps x batch x micro-batches
    from transformers import AutoModelForMaskedLM

    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "bert" / "student").config.num_hidden_layers == 2
    scalars = read_scalars(tmp_path / "bert" / "tensorboard")
    assert {"loss/kd", "loss/cl", "val/loss_kd", "examples_per_s"} <= set(scalars)
    assert [step for step, _ in scalars["loss/kd"]] == [h["step"] for h in summary["training"]["history"]]
    assert (tmp_path / "bert" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_a_second_pass_reshuffles_and_trains_each_row_once_per_pass(ray_start_2_cpus, llama_dir, lee_texts,
                                                                     tmp_path):
    """A run longer than its corpus makes several passes: the first in corpus order, each later one in a new
    (seeded) order, every pass training each row at most once (positions traced by the worker)."""
    import json

    import numpy as np

    from gemini_ray.data.spans import SpanPairer

    texts = lee_texts[:6]
    corpus = tmp_path / "six.jsonl"
    corpus.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts), encoding="utf-8")
    rows = int((SpanPairer(str(llama_dir), "causal", 16, seq_length=32)({"text": np.array(texts, dtype=object)})["status"]
                == "ok").sum())
    per_pass = rows // 4  # batch_size 4, the last partial batch dropped
    trace = tmp_path / "trace"
    trace.mkdir()
    cfg = build_config(None, tiny_overrides(llama_dir, corpus, tmp_path, "passes", 2 * per_pass + 1)
                       + ["data.val_fraction=0", "train.checkpoint_every=1000", f"train.trace_positions={trace}"])
    summary = distill(cfg)
    assert summary["training"]["epochs_started"] == 3
    steps = {int(line.split()[1]): [int(p) for p in line.split()[2:]]
             for line in (trace / "rank0.txt").read_text().splitlines()}
    first = [p for s in range(1, per_pass + 1) for p in steps[s]]
    second = [p for s in range(per_pass + 1, 2 * per_pass + 1) for p in steps[s]]
    assert first == sorted(first) and len(set(first)) == len(first) == 4 * per_pass  # corpus order, once each
    assert len(set(second)) == len(second) == 4 * per_pass and second != sorted(second)  # reshuffled, once each
