"""Tokenize documents, cut them into spans and pair an anchor with a positive of the same document.

A small callable (load the tokenizer in `__init__`, map a numpy batch dict in `__call__`), testable
without Ray; `gemini_ray.corpus_pass` runs it with `map_batches`.

Policy:
* A document is cut into consecutive spans of `span_length` tokens; a last partial span is kept when
  it has at least half a span of tokens (padded, masked out). Spans 2i and 2i+1 form one example.
* Documents with fewer than two spans are not dropped silently: they come out as one row with
  status='too_short' (and empty documents as 'empty'), which the pipeline counts and filters.
* Example ids and document ids are content hashes, so identical documents share a document id
  (never each other's negatives) and reruns are reproducible.
* Masked-LM teachers: `mlm_probability` of the real, non-special tokens of each span are replaced by
  the mask token (seeded by the example id); soft labels are taken at those positions only.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

__all__ = ["SpanPairer", "text_hash", "span_hash", "special_wrap", "STATUS_OK"]

STATUS_OK = "ok"


def text_hash(text: str) -> int:
    """Stable signed 63-bit content hash of a string (whitespace-normalised)."""
    norm = " ".join(text.split()).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(norm, digest_size=8).digest(), "little") >> 1


def span_hash(ids: np.ndarray) -> int:
    """Stable hash of a span's token ids (padding excluded by the caller)."""
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=8).digest(), "little") >> 1


def special_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after one sequence (BERT: [CLS] ... [SEP])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return list(full[:i]), list(full[i + len(plain) :])
    return [], []


class SpanPairer:
    """Map {'text': (N,) str} -> one row per example (or per skipped document).

    Output columns (E rows; L = span_length):
        status (E,) str; doc_id (E,) int64; example_id (E,) int64;
        input_ids (E, 2, L) int32 — [anchor, positive]; attention_mask (E, 2, L) int8;
        label_mask (E, 2, L) int8 — positions that carry a teacher soft label;
        span_hash (E, 2) int64.
    """

    def __init__(self, tokenizer_source: str, kind: str, span_length: int, mlm_probability: float = 0.15,
                 seed: int = 0, trust_remote_code: bool = False, tokenizer: Any = None):
        from gemini_ray.models import load_tokenizer

        self.tok = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_source, trust_remote_code)
        self.kind = kind
        self.span_length = span_length
        self.mlm_probability = mlm_probability
        self.seed = seed
        pad = self.tok.pad_token_id
        self.pad_id = pad if pad is not None else (self.tok.eos_token_id or 0)
        if kind == "masked":
            if self.tok.mask_token_id is None:
                raise ValueError("a masked-LM teacher needs a tokenizer with a mask token")
            self.prefix, self.suffix = special_wrap(self.tok)
        else:
            self.prefix, self.suffix = [], []
        self.body_length = span_length - len(self.prefix) - len(self.suffix)
        if self.body_length < 2:
            raise ValueError(f"span_length={span_length} leaves no room for text after the special tokens")

    def _spans(self, ids: list[int]) -> list[list[int]]:
        n = self.body_length
        chunks = [ids[i : i + n] for i in range(0, len(ids), n)]
        if chunks and len(chunks[-1]) < max(2, n // 2):
            chunks.pop()
        if self.kind == "masked":
            chunks = [self.prefix + c + self.suffix for c in chunks]
        return chunks

    def _row(self, chunk: list[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        L = self.span_length
        ids = np.full(L, self.pad_id, dtype=np.int32)
        att = np.zeros(L, dtype=np.int8)
        ids[: len(chunk)] = chunk
        att[: len(chunk)] = 1
        h = span_hash(ids[: len(chunk)])
        if self.kind == "masked":
            special = np.isin(ids, self.tok.all_special_ids) | (att == 0)
            candidates = np.flatnonzero(~special)
            n_mask = max(1, int(round(self.mlm_probability * len(candidates))))
            picked = rng.choice(candidates, size=min(n_mask, len(candidates)), replace=False)
            lab = np.zeros(L, dtype=np.int8)
            lab[picked] = 1
            ids[picked] = self.tok.mask_token_id
        else:
            lab = att.copy()
        return ids, att, lab, h

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {k: [] for k in ("status", "doc_id", "example_id", "input_ids",
                                                 "attention_mask", "label_mask", "span_hash")}
        L = self.span_length
        empty = np.zeros((2, L), dtype=np.int32)

        def emit(status, doc_id, ex_id, ids, att, lab, hashes):
            out["status"].append(status)
            out["doc_id"].append(doc_id)
            out["example_id"].append(ex_id)
            out["input_ids"].append(ids)
            out["attention_mask"].append(att.astype(np.int8))
            out["label_mask"].append(lab.astype(np.int8))
            out["span_hash"].append(hashes)

        for text in batch["text"]:
            text = "" if text is None else str(text)
            doc_id = text_hash(text)
            if not text.strip():
                emit("empty", doc_id, doc_id, empty, empty, empty, np.zeros(2, np.int64))
                continue
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            spans = self._spans(ids)
            if len(spans) < 2:
                emit("too_short", doc_id, doc_id, empty, empty, empty, np.zeros(2, np.int64))
                continue
            for p in range(len(spans) // 2):
                ex_id = text_hash(f"{doc_id}:{p}")
                rng = np.random.default_rng([self.seed, ex_id])
                a = self._row(spans[2 * p], rng)
                b = self._row(spans[2 * p + 1], rng)
                emit(STATUS_OK, doc_id, ex_id, np.stack([a[0], b[0]]), np.stack([a[1], b[1]]),
                     np.stack([a[2], b[2]]), np.array([a[3], b[3]], dtype=np.int64))
        if not out["status"]:
            return _empty_rows(L)
        return {
            "status": np.array(out["status"], dtype=object),
            "doc_id": np.array(out["doc_id"], dtype=np.int64),
            "example_id": np.array(out["example_id"], dtype=np.int64),
            "input_ids": np.stack(out["input_ids"]).astype(np.int32),  # (E, 2, L)
            "attention_mask": np.stack(out["attention_mask"]),  # (E, 2, L)
            "label_mask": np.stack(out["label_mask"]),  # (E, 2, L)
            "span_hash": np.stack(out["span_hash"]),  # (E, 2)
        }


def _empty_rows(L: int) -> dict[str, np.ndarray]:
    return {
        "status": np.array([], dtype=object),
        "doc_id": np.zeros(0, np.int64),
        "example_id": np.zeros(0, np.int64),
        "input_ids": np.zeros((0, 2, L), np.int32),
        "attention_mask": np.zeros((0, 2, L), np.int8),
        "label_mask": np.zeros((0, 2, L), np.int8),
        "span_hash": np.zeros((0, 2), np.int64),
    }
