"""Span pairing, hard-negative mining and the teacher stage as plain callables (no Ray)."""

import numpy as np
import pytest
import torch

from gemini_ray.config import TeacherConfig
from gemini_ray.data.corpus import infer_format, split_lines, strip_wiki_markup
from gemini_ray.data.mining import HardNegativeMiner, candidate_mask, search_hard_negatives
from gemini_ray.data.spans import STATUS_OK, SpanPairer
from gemini_ray.data.teacher_stage import TeacherLabeler
from gemini_ray.errors import GeminiRayError
from gemini_ray.models.build import load_teacher, mean_pool


def pairer_doc_id(text):
    from gemini_ray.data.spans import text_hash

    return text_hash(text)


def pairs_for(model_dir, kind, texts, span_length=16):
    pairer = SpanPairer(str(model_dir), kind, span_length, seed=0)
    return pairer, pairer({"text": np.array(texts, dtype=object)})


def test_spans_pair_within_one_document(llama_dir, lee_texts):
    pairer, out = pairs_for(llama_dir, "causal", lee_texts[:5] + ["too short", ""])
    ok = out["status"] == STATUS_OK
    assert list(out["status"][~ok]) == ["too_short", "empty"]
    assert out["input_ids"].shape[1:] == (2, 16)
    for doc_text in lee_texts[:5]:  # floor(spans / 2) examples per document
        ids = pairer.tok(doc_text, add_special_tokens=False)["input_ids"]
        n_spans = len(ids) // 16 + (len(ids) % 16 >= 8)
        assert n_spans // 2 == sum(1 for d in out["doc_id"][ok] if d == pairer_doc_id(doc_text))
    assert set(out["doc_id"][ok].tolist()) == {pairer_doc_id(t) for t in lee_texts[:5]}  # the five articles' only
    # anchor and positive of an example are consecutive spans of the same document
    first_doc_ids = pairer.tok(lee_texts[0], add_special_tokens=False)["input_ids"]
    assert list(out["input_ids"][0, 0]) == first_doc_ids[:16]
    assert list(out["input_ids"][0, 1]) == first_doc_ids[16:32]
    assert (out["label_mask"][ok] == out["attention_mask"][ok]).all()  # causal: every real token


def test_masked_teacher_spans_mask_some_tokens(bert_dir, lee_texts):
    pairer, out = pairs_for(bert_dir, "masked", lee_texts[:3])
    ids, lab = out["input_ids"], out["label_mask"].astype(bool)
    assert lab.any() and (ids[lab] == pairer.tok.mask_token_id).all()
    assert (ids[..., 0] == pairer.tok.cls_token_id).all()  # [CLS] ... [SEP] around every span
    frac = lab.sum() / out["attention_mask"].sum()
    assert 0.08 < frac < 0.2


def _one_document_at_a_time(pairer, text):
    """The pairing policy written plainly, one document and one span at a time (the reference the batched
    SpanPairer must equal): rows (status, doc_id, example_id, ids (2, L), attention (2, L), labels (2, L),
    span hashes (2,))."""
    from gemini_ray.data.spans import span_hash, text_hash

    L, n = pairer.span_length, pairer.body_length
    doc_id = text_hash(text)
    blank = np.zeros((2, L), int)
    if not text.strip():
        return [("empty", doc_id, doc_id, blank, blank, blank, (0, 0))]
    ids = pairer.tok(text, add_special_tokens=False)["input_ids"]
    chunks = [ids[i:i + n] for i in range(0, len(ids), n)]
    if chunks and len(chunks[-1]) < max(2, n // 2):
        chunks.pop()
    chunks = [pairer.prefix + c + pairer.suffix for c in chunks]
    if len(chunks) < 2:
        return [("too_short", doc_id, doc_id, blank, blank, blank, (0, 0))]
    rows = []
    for p in range(len(chunks) // 2):
        example_id = text_hash(f"{doc_id}:{p}")
        rng = np.random.default_rng([pairer.seed, example_id])
        sides = []
        for chunk in chunks[2 * p:2 * p + 2]:
            row = np.array(chunk + [pairer.pad_id] * (L - len(chunk)))
            att = (np.arange(L) < len(chunk)).astype(int)
            lab = att.copy()
            h = span_hash(row[:len(chunk)])
            if pairer.kind == "masked":
                candidates = np.flatnonzero(~np.isin(row, pairer.tok.all_special_ids) & (att == 1))
                picked = rng.choice(candidates, size=min(max(1, round(pairer.mlm_probability * len(candidates))),
                                                         len(candidates)), replace=False)
                lab = np.zeros(L, int)
                lab[picked] = 1
                row[picked] = pairer.tok.mask_token_id
            sides.append((row, att, lab, h))
        (a_ids, a_att, a_lab, a_hash), (b_ids, b_att, b_lab, b_hash) = sides
        rows.append((STATUS_OK, doc_id, example_id, np.stack([a_ids, b_ids]), np.stack([a_att, b_att]),
                     np.stack([a_lab, b_lab]), (a_hash, b_hash)))
    return rows


@pytest.mark.parametrize("fixture,kind,span_length", [("llama_dir", "causal", 16), ("llama_dir", "causal", 5),
                                                      ("bert_dir", "masked", 16), ("bert_dir", "masked", 6)])
def test_the_batched_pairer_equals_pairing_one_document_at_a_time(request, fixture, kind, span_length, lee_texts):
    """Documents of every length around the span boundaries (empty, blank, one token, a partial last span
    just under and over half a span, whole texts), one batch: the same rows as the plain per-document loop
    (in another order: the batch interleaves its documents' rows)."""
    words = " ".join(lee_texts).split()
    texts = ["", "   ", lee_texts[0], "one"] + [" ".join(words[:k]) for k in range(1, 3 * span_length)] + lee_texts[1:6]
    pairer = SpanPairer(str(request.getfixturevalue(fixture)), kind, span_length, seed=3)
    out = pairer({"text": np.array(texts, dtype=object)})
    expected = [row for text in texts for row in _one_document_at_a_time(pairer, text)]
    assert len(out["status"]) == len(expected)
    assert {"empty", "too_short", STATUS_OK} <= set(out["status"])
    names = ["status", "doc_id", "example_id", "input_ids", "attention_mask", "label_mask", "span_hash"]
    got = [tuple(out[name][i] for name in names) for i in range(len(out["status"]))]

    def key(row):
        return row[1], row[2], row[0]  # doc_id, example_id, status

    for i, (have, want) in enumerate(zip(sorted(got, key=key), sorted(expected, key=key))):
        for name, a, b in zip(names, have, want):
            assert np.array_equal(a, b), (i, name, texts)


def test_a_blocks_rows_are_spread_evenly_over_its_documents():
    """Equal documents alternate row by row; a document with twice the rows comes twice as often in every
    stretch of the block, so a batch never holds one article alone while others wait their turn."""
    from gemini_ray.data.spans import interleave

    def rows(counts):
        doc = np.repeat(np.arange(len(counts)), counts)
        pair = np.concatenate([np.arange(c) for c in counts])
        return doc[interleave(doc, pair, np.repeat(counts, counts))]

    equal = rows([10, 10, 10])
    assert (equal[1:] != equal[:-1]).all() and sorted(equal.tolist()) == sorted(np.repeat([0, 1, 2], 10).tolist())
    mixed = rows([40, 20, 20, 1])
    for start in range(0, len(mixed) - 20, 5):
        window = mixed[start:start + 20].tolist()
        assert 9 <= window.count(0) <= 11 and 4 <= window.count(1) <= 6  # 1/2 and 1/4 of the rows


def test_pairing_is_deterministic_and_dedupes_by_content(llama_dir, lee_texts):
    _, a = pairs_for(llama_dir, "causal", lee_texts[:3])
    _, b = pairs_for(llama_dir, "causal", lee_texts[:3])
    assert (a["example_id"] == b["example_id"]).all() and (a["input_ids"] == b["input_ids"]).all()
    _, c = pairs_for(llama_dir, "causal", [lee_texts[0], "  " + lee_texts[0]])
    assert len(set(c["doc_id"])) == 1  # whitespace-only differences are the same document


def test_candidate_mask_excludes_same_document_and_duplicates():
    anchor_doc = np.array([1, 2])
    anchor_hash = np.array([[10, 11], [20, 21]])
    cand_doc = np.array([1, 1, 2, 2, 3, 3, 4])
    cand_hash = np.array([10, 11, 20, 21, 30, 10, 30])  # doc 3 copies doc 1's span 10; doc 4 repeats 30
    m = candidate_mask(anchor_doc, anchor_hash, cand_doc, cand_hash)
    assert m.tolist() == [
        [False, False, True, True, True, False, False],
        [True, True, False, False, True, False, False],  # the copy of span 10 collapses onto its first
    ]


def test_search_picks_most_similar_valid_candidates():
    anchors = np.array([[1.0, 0.0]])
    cands = np.array([[1.0, 0.01], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    idx, found = search_hard_negatives(anchors, cands, np.array([[False, True, True, True]]), 2)
    assert idx.tolist() == [[1, 2]] and found.all()
    idx, found = search_hard_negatives(anchors, cands, np.array([[False, True, False, False]]), 3)
    assert found.tolist() == [[True, False, False]]


def _labelled_window(rng, n_docs, rows_per_doc, L=4, H=8, dup_of=None):
    docs = np.repeat(np.arange(n_docs), rows_per_doc)
    B = len(docs)
    ids = rng.integers(5, 50, (B, 2, L)).astype(np.int32)
    hashes = rng.integers(1, 1 << 40, (B, 2))
    if dup_of is not None:  # row dup_of[1] copies row dup_of[0]'s spans, from another document
        ids[dup_of[1]] = ids[dup_of[0]]
        hashes[dup_of[1]] = hashes[dup_of[0]]
    return {"input_ids": ids, "attention_mask": np.ones((B, 2, L), np.int8), "doc_id": docs.astype(np.int64),
            "span_hash": hashes, "embedding": rng.normal(size=(B, 2, H)).astype(np.float32),
            "example_id": np.arange(B)}


def test_miner_never_returns_same_document_or_duplicates():
    rng = np.random.default_rng(0)
    batch = _labelled_window(rng, n_docs=6, rows_per_doc=3, dup_of=(0, 17))
    out = HardNegativeMiner(num_negatives=4)(batch)
    assert "embedding" not in out and out["neg_input_ids"].shape == (18, 4, 4)
    assert out["teacher_embedding"].dtype == np.float16  # the representation loss's target goes on to the trainer
    np.testing.assert_allclose(out["teacher_embedding"], batch["embedding"], rtol=1e-3, atol=1e-3)
    span_doc = {tuple(s): d for ids, d in zip(batch["input_ids"], batch["doc_id"]) for s in ids}
    for b in range(18):
        own = {tuple(s) for s in batch["input_ids"][b]}
        negs = [tuple(s) for s in out["neg_input_ids"][b]]
        assert out["neg_mask"][b].all()
        assert len(set(negs)) == 4  # no duplicate negatives
        for neg in negs:
            assert neg not in own  # never a copy of the anchor or positive
            assert span_doc[neg] != batch["doc_id"][b]  # never the same document


def test_miner_falls_back_to_earlier_windows_then_masks():
    rng = np.random.default_rng(1)
    miner = HardNegativeMiner(num_negatives=3)
    lonely = _labelled_window(rng, n_docs=1, rows_per_doc=2)  # one document: no valid candidate at all
    first = miner(lonely)
    assert first["neg_mask"].sum() == 0 and first["missing_negatives"].tolist() == [3, 3]
    other = _labelled_window(rng, n_docs=1, rows_per_doc=2)
    other["doc_id"][:] = 99
    second = miner(other)  # the reservoir now holds the first window's spans
    assert second["neg_mask"].all() and second["random_negatives"].tolist() == [3, 3]


def test_split_lines_counts_bad_utf8():
    out = split_lines({"bytes": np.array([b"first doc\n\nsecond \xff\xfe doc\nthird"], dtype=object)})
    assert out["text"].tolist() == ["first doc", "", "third"]
    assert out["bad_utf8"].tolist() == [False, True, False] and not out["bad_record"].any()


def test_infer_format(tmp_path):
    assert infer_format("s3://bucket/x.parquet", "auto") == "parquet"
    assert infer_format("a/b.jsonl.gz", "auto") == "jsonl"
    assert infer_format("whatever", "csv") == "csv"
    with pytest.raises(GeminiRayError, match="data.format"):
        infer_format(str(tmp_path / "file.weird"), "auto")


def test_strip_wiki_markup():
    raw = "'''Anarchism''' is a [[political philosophy|philosophy]]{{cite|x}}<ref>r</ref> see [[Category:X]]."
    assert strip_wiki_markup(raw) == "Anarchism is a philosophy see ."


@pytest.mark.parametrize("fixture, kind", [("llama_dir", "causal"), ("bert_dir", "masked")])
def test_teacher_stage_emits_exact_topk_and_pooled_embeddings(request, fixture, kind, lee_texts):
    path = request.getfixturevalue(fixture)
    _, pairs = pairs_for(path, kind, lee_texts[:2])
    ok = pairs["status"] == STATUS_OK
    batch = {k: v[ok] for k, v in pairs.items()}
    model, _ = load_teacher(str(path))
    labeler = TeacherLabeler({"model": str(path), "top_k": 5})
    out = labeler(batch)
    B = len(batch["doc_id"])
    assert out["topk_ids"].shape == (B, 2, 16, 5) and out["embedding"].shape == (B, 2, model.config.hidden_size)
    ids = torch.from_numpy(batch["input_ids"].reshape(2 * B, 16).astype(np.int64))
    att = torch.from_numpy(batch["attention_mask"].reshape(2 * B, 16).astype(np.int64))
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=att, output_hidden_states=True)
    ref_vals, ref_ids = torch.topk(full.logits, 5, dim=-1)
    assert torch.allclose(torch.from_numpy(out["topk_logits"].reshape(2 * B, 16, 5)), ref_vals, atol=1e-4)
    assert (torch.from_numpy(out["topk_ids"].reshape(2 * B, 16, 5)).long() == ref_ids).float().mean() > 0.99
    mass = torch.softmax(full.logits, -1).gather(-1, ref_ids).sum(-1)
    assert torch.allclose(torch.from_numpy(out["topk_mass"].reshape(2 * B, 16)), mass, atol=1e-4)
    pooled = mean_pool(full.hidden_states[-1], att)
    if kind == "causal":  # Llama's last hidden state is after the final norm, as in base_model's output
        assert out["embedding"].dtype == np.float16  # half the bytes; a cosine or a nearest neighbour needs no more
        assert torch.allclose(torch.from_numpy(out["embedding"].reshape(2 * B, -1).astype(np.float32)), pooled,
                              rtol=2e-3, atol=2e-3)
    assert out["teacher_tokens"].sum() == att.sum()


def test_teacher_stage_refuses_topk_above_vocab(llama_dir):
    with pytest.raises(ValueError, match="exceeds"):
        TeacherLabeler({"model": str(llama_dir), "top_k": 10_000})
    assert TeacherConfig().top_k <= 64


def test_jsonl_lines_that_break_are_counted_skips_not_failures():
    from gemini_ray.data.corpus import parse_jsonl

    blob = (b'{"body": "first doc"}\n{"body": "cut in the mid\n\n[1, 2]\n{"other": "x"}\n{"body": 7}\n'
            b'{"body": "caf\xe9"}\n{"body": null}\n{"body": "last"}')
    out = parse_jsonl({"bytes": np.array([blob], dtype=object)}, column="body")
    assert out["text"].tolist() == ["first doc", "", "", "", "", "", "", "last"]
    assert out["bad_record"].tolist() == [False, True, True, True, True, False, False, False]
    assert out["bad_utf8"].tolist() == [False, False, False, False, False, True, False, False]


def test_csv_rows_with_the_wrong_fields_and_bad_bytes_are_counted(tmp_path):
    import pyarrow.csv as pacsv

    from gemini_ray.data.corpus import csv_read_options, decode_column

    path = tmp_path / "docs.csv"
    rows = "".join(f'"document number {i}",{i}\n' for i in range(3000))  # past pyarrow's first read block
    path.write_bytes(b"text,id\n" + rows.encode() + b"a,b,c\n" + b'"caf\xe9",1\n' + b'"unterminated,2\nlast,3\n')
    table = pacsv.read_csv(path, **csv_read_options("text"))
    assert table.column_names == ["text"]  # only the text column is read (another column's junk cannot fail it)
    out = decode_column({"text": np.array(table.column("text").to_pylist(), dtype=object)}, column="text")
    assert out["text"].tolist()[:2] == ["document number 0", "document number 1"]
    assert int(out["bad_utf8"].sum()) == 1  # café in latin-1
    assert int(out["bad_record"].sum()) == 2  # a,b,c and the unterminated quote that swallows the rest
    assert len(out["text"]) == 3000 + 1 + 2


def test_positions_are_kept_as_ranges_and_name_what_a_resume_skips():
    from gemini_ray.data.resume import add, count, decode, encode, rows_of, trained_mask

    trained = add([], encode(np.array([0, 0, 0, 3]), np.array([0, 1, 2, 7])))
    assert trained == [[0, 0, 3], [3, 7, 8]] and count(trained) == 4
    trained = add(trained, encode(0, np.arange(3, 6)))  # adjacent: merged, whatever order they come in
    trained = add(trained, encode(3, np.array([5, 6])))
    assert trained == [[0, 0, 6], [3, 5, 8]] and count(trained) == 9
    assert add(trained, encode(0, np.array([2, 4]))) == trained  # trained twice: still once
    assert trained_mask(rows_of(trained, 3), np.arange(10)).tolist() == [False] * 5 + [True] * 3 + [False] * 2
    assert rows_of(trained, 1) == [] and not trained_mask([], np.arange(3)).any()
    task, row = decode(encode(np.array([2**20]), np.array([2**31])))
    assert task.tolist() == [2**20] and row.tolist() == [2**31]
