"""Tokenize documents, cut them into KD windows and pair two windows of the same document.

A small callable (load the tokenizer in `__init__`, map a numpy batch dict in `__call__`), testable
without Ray; `gemini_ray.data.corpus_pass` runs it with `map_batches`.

Policy:
* A document is cut into pairs of consecutive windows of `seq_length` tokens; each pair is one example.
  The teacher labels every position of both windows (KD), and the first `span_length` tokens of each are
  the example's anchor and positive spans (contrastive).
* The tokens left after the whole pairs make one more example when they hold a window and at least half
  of another (the second window partial, padded), or else at least two spans: then they are cut in two
  halves, each a window shorter than `seq_length`. So a document shorter than two windows is still
  trained on, whole; only one with fewer than two spans of tokens is not (at most a tail of under two
  spans of a longer one is left). With seq_length == span_length a window is a span, the halves never
  arise, and the examples are those of before windows existed.
* Documents too short for an example are not dropped silently: they come out as one row with
  status='too_short' (and empty documents as 'empty'), which the pipeline counts and filters.
* Example ids and document ids are content hashes, so identical documents share a document id
  (never each other's negatives) and reruns are reproducible.
* Masked-LM teachers: `mlm_probability` of the real, non-special tokens of each span are replaced by
  the mask token (seeded by the example id); soft labels are taken at those positions only.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from typing import Any

import numpy as np

__all__ = ["SpanPairer", "text_hash", "span_hash", "special_wrap", "min_example_tokens", "STATUS_OK"]

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


def min_example_tokens(seq_length: int, span_length: int) -> int:
    """The fewest tokens a document of a causal teacher needs for one example (`SpanPairer._cut`): two
    spans, or, when that is more (windows of spans), a window and half of another. A masked teacher's
    windows also hold its special tokens."""
    return min(seq_length + max(2, seq_length // 2), 2 * max(2, span_length))


class SpanPairer:
    """Map {'text': (N,) str} -> one row per example (or per skipped document).

    Output columns (E rows; W = seq_length, the window; the span is its first span_length tokens):
        status (E,) str; doc_id (E,) int64; example_id (E,) int64;
        input_ids (E, 2, W) int32 — [anchor's window, positive's window]; attention_mask (E, 2, W) int8;
        label_mask (E, 2, W) int8 — positions that carry a teacher soft label;
        span_hash (E, 2) int64 — of each window's span (what mining deduplicates).
    """

    def __init__(self, tokenizer_source: str, kind: str, span_length: int, mlm_probability: float = 0.15,
                 seed: int = 0, trust_remote_code: bool = False, tokenizer: Any = None,
                 seq_length: int | None = None):
        from gemini_ray.models.build import load_tokenizer

        # one thread: a pairer is one CPU's worth of work (a Ray task holding a CPU, one process of a pool);
        # the tokenizer's own thread pool would compete with its neighbours for the same cores
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.tok = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_source, trust_remote_code)
        self.kind = kind
        self.span_length = span_length
        self.seq_length = seq_length or span_length  # None: windows are spans
        if self.seq_length < span_length:
            raise ValueError(f"span_length={span_length} is longer than the window seq_length={self.seq_length}")
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
        self.body_length = self.seq_length - len(self.prefix) - len(self.suffix)
        self.span_body = max(2, span_length - len(self.prefix) - len(self.suffix))  # a span's text tokens
        if self.body_length < 2:
            raise ValueError(f"seq_length={self.seq_length} leaves no room for text after the special tokens")

    def _cut(self, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per document of `lengths` tokens: its number of examples, and where the last one's tail is cut in
        two (0: into whole windows). Pairs of whole windows first; the tokens left make one more example when
        they hold a whole window and at least half of another (the second window partial), or else at least
        two spans' worth, then cut in halves (two windows shorter than seq_length: a document shorter than
        two windows is trained on whole, not dropped). With seq_length == span_length the halves never
        arise: the spans of before windows."""
        n = self.body_length
        whole, rest = lengths // (2 * n), lengths % (2 * n)
        paired = rest >= n + max(2, n // 2)
        halves = ~paired & (rest >= 2 * self.span_body)
        return whole + (paired | halves), np.where(halves, (rest + 1) // 2, 0)

    def _rows(self, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Window rows (S, W) of token ids and attention from the flat token array: window s holds
        flat[starts[s]:starts[s] + lengths[s]], wrapped in the special tokens of a masked LM, then padded."""
        W, P, Q = self.seq_length, len(self.prefix), len(self.suffix)
        col = np.arange(W)[None, :]  # (1, W)
        body = (col >= P) & (col < P + lengths[:, None])  # (S, W)
        take = np.clip(starts[:, None] + col - P, 0, max(len(flat) - 1, 0))
        ids = np.where(body, flat[take] if len(flat) else 0, self.pad_id).astype(np.int32)
        if P:
            ids[:, :P] = self.prefix
        for j, token in enumerate(self.suffix):
            ids[np.arange(len(ids)), P + lengths + j] = token
        attention = (col < P + lengths[:, None] + Q).astype(np.int8)
        return ids, attention

    def _mask(self, ids: np.ndarray, attention: np.ndarray, example_ids: np.ndarray) -> np.ndarray:
        """Masked-LM corruption in place: `mlm_probability` of each span's real, non-special tokens become the
        mask token, drawn by a generator seeded with (seed, example id); returns the label mask (E, 2, W)."""
        labels = np.zeros(ids.shape, dtype=np.int8)
        special = np.isin(ids, self.tok.all_special_ids) | (attention == 0)
        for e, ex_id in enumerate(example_ids.tolist()):
            rng = np.random.default_rng([self.seed, ex_id])
            for side in range(2):
                candidates = np.flatnonzero(~special[e, side])
                n_mask = max(1, int(round(self.mlm_probability * len(candidates))))
                picked = rng.choice(candidates, size=min(n_mask, len(candidates)), replace=False)
                labels[e, side, picked] = 1
                ids[e, side, picked] = self.tok.mask_token_id
        return labels

    def __call__(self, batch: dict[str, np.ndarray], doc_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """doc_ids: the documents' text_hash when the caller has them (saves hashing every text twice)."""
        texts = ["" if t is None else str(t) for t in batch["text"]]
        if doc_ids is None:
            doc_ids = np.array([text_hash(t) for t in texts], dtype=np.int64)
        W = self.seq_length
        filled = np.array([bool(t.strip()) for t in texts], dtype=bool)
        lengths = np.zeros(len(texts), dtype=np.int64)
        tokens: list[list[int]] = []
        if filled.any():  # one batched call: the tokenizer's own loop, not one Python call per document
            tokens = self.tok([texts[i] for i in np.flatnonzero(filled)], add_special_tokens=False)["input_ids"]
            lengths[filled] = [len(t) for t in tokens]
        n_examples, cut = self._cut(lengths)
        status = np.where(~filled, "empty", np.where(n_examples == 0, "too_short", STATUS_OK)).astype(object)
        # one output row per example of a usable document, one per skipped document (built in document order,
        # returned interleaved across the block's documents: `interleave`)
        out_rows = np.where(status == STATUS_OK, n_examples, 1)
        doc = np.repeat(np.arange(len(texts)), out_rows)  # (R,) source document of each output row
        ok = status[doc] == STATUS_OK
        pair = np.arange(len(doc)) - np.repeat(np.cumsum(out_rows) - out_rows, out_rows)  # (R,) p within its doc
        example_id = np.repeat(doc_ids, out_rows)
        example_id[ok] = [_pair_hash(d, p) for d, p in zip(doc_ids[doc[ok]].tolist(), pair[ok].tolist())]

        flat = np.fromiter(itertools.chain.from_iterable(tokens), dtype=np.int64, count=int(lengths.sum()))
        offsets = np.cumsum(lengths) - lengths  # each document's first token in `flat`
        rows, n = doc[ok], self.body_length
        left = lengths[rows] - 2 * pair[ok] * n  # (E,) the document's tokens from the example's first window on
        halved = (pair[ok] == n_examples[rows] - 1) & (cut[rows] > 0)  # its last example, the tail cut in two
        first = np.where(halved, cut[rows], n)  # (E,) the first window's length
        start = offsets[rows, None] + 2 * pair[ok, None] * n + np.stack([np.zeros_like(first), first], axis=1)  # (E, 2)
        window_len = np.stack([np.minimum(first, left), np.minimum(np.where(halved, left, n), left - first)], axis=1)
        ids, attention = self._rows(flat, start.ravel(), window_len.ravel())  # (2E, W) each
        span_tokens = attention[:, : self.span_length].sum(1).tolist()  # each window's span: its first tokens
        hashes = np.array([span_hash(r[:n]) for r, n in zip(ids, span_tokens)], dtype=np.int64)
        ids, attention = ids.reshape(-1, 2, W), attention.reshape(-1, 2, W)
        labels = self._mask(ids, attention, example_id[ok]) if self.kind == "masked" else attention.copy()

        def full(values: np.ndarray, width: tuple[int, ...], dtype) -> np.ndarray:
            out = np.zeros((len(doc), *width), dtype=dtype)  # skipped documents' rows stay zero
            out[ok] = values
            return out[order]

        order = interleave(doc, pair, out_rows[doc])
        return {
            "status": status[doc][order],
            "doc_id": doc_ids[doc][order],
            "example_id": example_id[order],
            "input_ids": full(ids, (2, W), np.int32),  # (E, 2, W)
            "attention_mask": full(attention, (2, W), np.int8),  # (E, 2, W)
            "label_mask": full(labels, (2, W), np.int8),  # (E, 2, W)
            "span_hash": full(hashes.reshape(-1, 2), (2,), np.int64),  # (E, 2)
        }


def interleave(doc: np.ndarray, pair: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The order of a block's example rows that spreads each document's examples evenly over the block:
    row p of a document of n examples sits at (p + 1/2) / n of the way (ties by document). In document order,
    a long article's examples came one after another, and so did whole batches of them: nearly no in-batch
    negatives (rows of the same document are never negatives) and the student trained on one text at a time.
    doc, pair, count: (R,) each row's document, its index within the document, the document's row count."""
    return np.lexsort((doc, (pair + 0.5) / np.maximum(count, 1)))


def _pair_hash(doc_id: int, pair: int) -> int:
    """text_hash(f"{doc_id}:{pair}") without the whitespace normalisation its text never needs."""
    digest = hashlib.blake2b(f"{doc_id}:{pair}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
