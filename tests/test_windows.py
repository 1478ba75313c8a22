"""KD over whole windows (data.seq_length) with contrastive spans at their start (data.span_length).

No Ray: the pairer, the teacher backend, the miner and the training step as plain callables on tiny models.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import tiny_llama, word_tokenizer

GOLDEN = Path(__file__).parent / "golden" / "spans_before_windows.json"


def _hash(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(a.tobytes()).hexdigest()[:16] + f":{a.dtype}:{a.shape}"


def _pipeline(texts: list[str], seq_length: int, span_length: int = 16, top_k: int = 4, negatives: int = 3):
    """pairer -> teacher -> miner -> one step's loss and gradient, as the pipeline runs them (no Ray)."""
    from gemini_ray.config import LossConfig, TeacherConfig
    from gemini_ray.data.mining import HardNegativeMiner
    from gemini_ray.data.spans import SpanPairer
    from gemini_ray.data.teacher_stage import TeacherLabeler
    from gemini_ray.models.build import DistillStudent
    from gemini_ray.training.train_step import compute_loss

    tok = word_tokenizer(texts, masked=False)
    pairer = SpanPairer("", "causal", span_length, tokenizer=tok, seq_length=seq_length)
    rows = pairer({"text": np.array(texts[:12], dtype=object)})
    ok = rows["status"] == "ok"
    batch = {k: v[ok] for k, v in rows.items()}
    labelled = TeacherLabeler(TeacherConfig(model="x", top_k=top_k).__dict__, span_length=span_length,
                              model=tiny_llama(tok, seed=0))(batch)
    mined = HardNegativeMiner(negatives, seed=0, span_length=span_length)(labelled)
    student = DistillStudent(tiny_llama(tok, layers=2, seed=1))
    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in mined.items() if np.asarray(v).dtype != object}
    parts = compute_loss(student, tensors, LossConfig(num_negatives=negatives), across_ranks=False)
    parts.total.backward()
    grad = sum(p.grad.double().pow(2).sum() for p in student.parameters() if p.grad is not None).sqrt().item()
    return rows, labelled, mined, parts, grad


@pytest.fixture(scope="module")
def texts(lee_texts) -> list[str]:
    return lee_texts


def test_seq_length_equal_to_span_length_reproduces_the_span_pipeline(texts):
    """With data.seq_length == data.span_length a window is a span: pairs, soft labels, negatives, loss and
    gradient are those of the pipeline before windows (values recorded at commit f40cb2c by the same steps):
    token ids, masks and negatives bit for bit, floats to 1e-6."""
    golden = json.loads(GOLDEN.read_text())
    rows, labelled, mined, parts, grad = _pipeline(texts, seq_length=16)
    assert int((rows["status"] == "ok").sum()) == golden["rows"]
    assert {k: _hash(np.asarray(v)) for k, v in rows.items() if np.asarray(v).dtype != object} == golden["hashes"]
    assert {k: _hash(labelled[k]) for k in golden["teacher_hashes"]} == golden["teacher_hashes"]
    assert {k: _hash(mined[k]) for k in golden["miner_hashes"]} == golden["miner_hashes"]
    assert float(np.float64(labelled["topk_logits"]).sum()) == pytest.approx(golden["topk_logits_sum"], rel=1e-6)
    assert np.asarray(labelled["topk_logits"]).ravel()[:8].tolist() == pytest.approx(golden["topk_logits_first"], rel=1e-6)
    assert float(np.float64(labelled["topk_mass"]).sum()) == pytest.approx(golden["topk_mass_sum"], rel=1e-6)
    assert float(np.float64(labelled["embedding"]).sum()) == pytest.approx(golden["embedding_sum"], rel=1e-5)
    assert parts.as_floats() == pytest.approx(golden["loss"], rel=1e-6)
    assert grad == pytest.approx(golden["grad_norm"], rel=1e-5)


def test_windows_carry_soft_labels_at_every_position_and_spans_at_their_start(texts):
    """seq_length=64, span_length=16: each example is two consecutive 64-token windows of one document with
    a soft label at every real position, computed with the window's whole context; the contrastive
    embeddings (teacher and student alike) are those of each window's first 16 tokens on their own, and the
    negatives are such spans."""
    from gemini_ray.data.spans import SpanPairer

    rows, labelled, mined, parts, _ = _pipeline(texts, seq_length=64)
    ok = rows["status"] == "ok"
    ids, att = rows["input_ids"][ok], rows["attention_mask"][ok]
    assert ids.shape[1:] == (2, 64) and labelled["topk_ids"].shape[1:] == (2, 64, 4)
    assert (rows["label_mask"][ok] == att).all()  # causal: every real token carries a label
    assert mined["neg_input_ids"].shape[1:] == (3, 16)
    # the windows are the document's tokens, in order: window 1 continues window 0
    from gemini_ray.data.spans import text_hash

    tok = word_tokenizer(texts, masked=False)
    doc = tok(texts[0], add_special_tokens=False)["input_ids"]  # 359 tokens: 5 whole windows and 39 tokens (over half a window): 3 examples
    mine = ids[rows["doc_id"][ok] == text_hash(texts[0])]
    assert len(mine) == 3
    assert any(np.array_equal(np.concatenate([r[0], r[1]]), doc[:128]) for r in mine)
    assert any(np.array_equal(np.concatenate([r[0], r[1]]), doc[128:256]) for r in mine)
    # the teacher's span embedding and its soft labels inside the span are what the span alone gives
    from gemini_ray.config import TeacherConfig
    from gemini_ray.data.teacher_stage import TeacherLabeler

    spans = SpanPairer("", "causal", 16, tokenizer=tok)({"text": np.array(texts[:12], dtype=object)})
    teacher = TeacherLabeler(TeacherConfig(model="x", top_k=4).__dict__, model=tiny_llama(tok, seed=0))
    alone = teacher({"input_ids": ids[:, :, :16], "attention_mask": att[:, :, :16]})
    assert np.allclose(np.float32(alone["embedding"]), np.float32(labelled["embedding"]), atol=2e-3)
    assert np.allclose(alone["topk_logits"], labelled["topk_logits"][:, :, :16], atol=1e-5)
    assert spans["input_ids"].shape[-1] == 16
    assert parts["kd"].item() > 0 and parts["cl"].item() > 0


def test_the_students_window_embedding_is_its_span_alone_and_logits_cover_the_window(texts):
    """DistillStudent: a window's pooled embedding is its first L positions, the same vector as the span
    alone; the windows get logits at every position; negatives are encoded at the span length."""
    from gemini_ray.models.build import DistillStudent

    tok = word_tokenizer(texts, masked=False)
    student = DistillStudent(tiny_llama(tok, layers=2, seed=1))
    g = torch.Generator().manual_seed(0)
    windows, spans = torch.randint(5, len(tok), (4, 64), generator=g), torch.randint(5, len(tok), (6, 16), generator=g)
    att = torch.ones_like(windows)
    att[1, 40:] = 0  # a short last window
    with torch.no_grad():
        logits, pooled = student(windows, att, spans, torch.ones_like(spans))
        _, alone = student(windows[:, :16], att[:, :16], spans, torch.ones_like(spans))
    assert logits.shape == (4, 64, len(tok)) and pooled.shape == (10, 32)
    assert torch.allclose(pooled, alone, atol=1e-5)


@pytest.mark.parametrize("n, windows", [
    (31, None),                    # under two spans: too short, counted
    (32, [(0, 16), (16, 32)]),     # two spans' worth: the document cut in halves, each a short window
    (71, [(0, 36), (36, 71)]),     # halves up to a window and a half
    (96, [(0, 64), (64, 96)]),     # a whole window and half of another
    (128, [(0, 64), (64, 128)]),
    (159, [(0, 64), (64, 128)]),   # 31 tokens left: under two spans, not trained on
    (160, [(0, 64), (64, 128), (128, 144), (144, 160)]),  # 32 left: one more example, in halves
])
def test_a_document_shorter_than_two_windows_is_trained_on_whole(texts, n, windows):
    """data.seq_length=64, data.span_length=16: pairs of whole windows, then the tokens left as one more
    example, in halves when they do not fill a window and a half; only fewer than two spans are dropped."""
    from gemini_ray.data.spans import SpanPairer, min_example_tokens

    tok = word_tokenizer(texts, masked=False)
    words = [w for w in tok.get_vocab() if w.isalpha()][:n]
    assert len(tok(" ".join(words), add_special_tokens=False)["input_ids"]) == n
    out = SpanPairer("", "causal", 16, tokenizer=tok, seq_length=64)({"text": np.array([" ".join(words)], dtype=object)})
    if windows is None:
        assert list(out["status"]) == ["too_short"] and n < min_example_tokens(64, 16) == 32
        return
    got = sorted(tuple(int(a) for a in row) for row in out["attention_mask"].sum(-1))  # (E, 2) window lengths
    want = sorted((b - a, d - c) for (a, b), (c, d) in zip(windows[::2], windows[1::2]))
    assert got == want and (out["label_mask"] == out["attention_mask"]).all()
    ids = {tuple(r[: int(m.sum())]) for ex, mask in zip(out["input_ids"], out["attention_mask"]) for r, m in zip(ex, mask)}
    doc = tok(" ".join(words), add_special_tokens=False)["input_ids"]
    assert ids == {tuple(doc[a:b]) for a, b in windows}  # each window is the document's tokens a..b


def test_held_out_statistics_from_the_stored_top_k_equal_the_dense_ones_when_k_is_the_vocabulary():
    """The train worker's held-out perplexity, KL and top-1 by position range (from the cache's top-k) are
    eval's dense figures when the top-k holds the whole vocabulary."""
    from gemini_ray.evaluation.metrics import causal_targets, token_stats_by_position, topk_stats_by_position

    g = torch.Generator().manual_seed(0)
    N, W, V = 3, 70, 11
    logits, teacher = torch.randn(N, W, V, generator=g), torch.randn(N, W, V, generator=g)
    ids = torch.randint(0, V, (N, W), generator=g)
    att = torch.ones(N, W, dtype=torch.long)
    att[1, 50:] = 0  # a short window
    values, topk = teacher.topk(V, dim=-1)  # (N, W, V) sorted, as the teacher stage stores them
    got = topk_stats_by_position(logits, ids, att, topk, values)
    want = token_stats_by_position(logits, *causal_targets(ids, att), teacher)
    assert list(got) == list(want) == ["1-31", "32-63", "64-127"]
    for label in got:
        a, b = got[label], want[label]
        assert a.count == b.count and a.agree == b.agree
        assert a.nll == pytest.approx(b.nll, rel=1e-6) and a.kl == pytest.approx(b.kl, rel=1e-5, abs=1e-6)
