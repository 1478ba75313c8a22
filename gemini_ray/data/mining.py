"""Hard-negative mining: embed → search → sample, within a window of rows.

For each anchor, the K spans of *other* documents in the window whose teacher embedding is most
similar to the anchor's (cosine) become its negatives. Candidates are every anchor and positive span
in the window. Before the search:
* spans with the same document id are excluded (document ids are content hashes, so exact duplicate
  documents count as the same document);
* exact duplicate spans are collapsed to one, and any span whose text equals the anchor's or the
  positive's is excluded (a duplicate is a false negative).
When a window holds fewer than K valid candidates, the missing slots are filled at random from a
reservoir of spans of earlier windows (same exclusions); slots still empty are masked (neg_mask = 0)
and counted in `missing_negatives` (they keep some real span's tokens so the student never
encodes an all-padding row).
"""

from __future__ import annotations

import numpy as np

__all__ = ["HardNegativeMiner", "candidate_mask", "search_hard_negatives"]


def candidate_mask(anchor_doc: np.ndarray, anchor_hashes: np.ndarray, cand_doc: np.ndarray,
                   cand_hash: np.ndarray) -> np.ndarray:
    """(B, C) bool: candidate c may be a negative of row b.

    Args:
        anchor_doc: (B,) document ids; anchor_hashes: (B, 2) span hashes of anchor and positive;
        cand_doc: (C,) document ids; cand_hash: (C,) span hashes.
    """
    other_doc = anchor_doc[:, None] != cand_doc[None, :]  # (B, C)
    not_dup = (cand_hash[None, :] != anchor_hashes[:, :1]) & (cand_hash[None, :] != anchor_hashes[:, 1:2])
    _, first = np.unique(cand_hash, return_index=True)
    unique = np.zeros(len(cand_hash), dtype=bool)
    unique[first] = True  # the first copy of each duplicate span survives
    return other_doc & not_dup & unique[None, :]


def search_hard_negatives(anchor_emb: np.ndarray, cand_emb: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k valid candidates by cosine similarity.

    Args:
        anchor_emb: (B, H); cand_emb: (C, H); valid: (B, C) bool; k: negatives wanted.
    Returns:
        idx (B, k) int64 candidate indices (arbitrary where not found), found (B, k) bool.
    """
    a = anchor_emb / np.maximum(np.linalg.norm(anchor_emb, axis=1, keepdims=True), 1e-12)  # (B, H)
    c = cand_emb / np.maximum(np.linalg.norm(cand_emb, axis=1, keepdims=True), 1e-12)  # (C, H)
    sim = np.where(valid, a @ c.T, -np.inf)  # (B, C)
    kk = min(k, sim.shape[1])
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :kk]  # (B, kk)
    found = np.isfinite(np.take_along_axis(sim, idx, axis=1))
    if kk < k:
        idx = np.pad(idx, ((0, 0), (0, k - kk)))
        found = np.pad(found, ((0, 0), (0, k - kk)))
    return idx, found


class HardNegativeMiner:
    """Map a mining window of labelled rows (input_ids (B, 2, W): each example's two KD windows) to the same
    rows plus neg_input_ids (B, K, L) int32 (L = span_length: a negative is another document's span, the first
    L tokens of one of its KD windows), neg_attention_mask (B, K, L) int8, neg_mask (B, K) int8, random_negatives (B,) and
    missing_negatives (B,) int32. The teacher's span embeddings go on as teacher_embedding (B, 2, H)
    float16, the representation loss's target (the teacher stage ships them in float16: half the bytes of
    float32, and a cosine needs no more).
    """

    def __init__(self, num_negatives: int, seed: int = 0, reservoir_size: int = 1024, span_length: int | None = None):
        self.k = num_negatives
        self.span_length = span_length  # None: the whole window is the span
        self.rng = np.random.default_rng(seed)
        self.reservoir_size = reservoir_size
        self.reservoir: dict[str, np.ndarray] | None = None  # spans of earlier windows

    def _remember(self, spans: dict[str, np.ndarray]) -> None:
        if self.reservoir is None:
            self.reservoir = spans
        else:
            self.reservoir = {k: np.concatenate([self.reservoir[k], v]) for k, v in spans.items()}
        n = len(self.reservoir["doc"])
        if n > self.reservoir_size:  # keep a uniform sample
            keep = np.sort(self.rng.choice(n, self.reservoir_size, replace=False))
            self.reservoir = {k: v[keep] for k, v in self.reservoir.items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        L = self.span_length
        ids = np.asarray(batch["input_ids"])[:, :, :L]  # (B, 2, L): each window's span
        att = np.asarray(batch["attention_mask"])[:, :, :L]  # (B, 2, L)
        emb = np.asarray(batch["embedding"], dtype=np.float32)  # (B, 2, H)
        doc = np.asarray(batch["doc_id"])  # (B,)
        hashes = np.asarray(batch["span_hash"])  # (B, 2)
        B, _, L = ids.shape
        # candidates: every span of the window, flattened
        spans = {
            "ids": ids.reshape(B * 2, L),
            "att": att.reshape(B * 2, L),
            "emb": emb.reshape(B * 2, -1),
            "doc": np.repeat(doc, 2),
            "hash": hashes.reshape(B * 2),
        }
        valid = candidate_mask(doc, hashes, spans["doc"], spans["hash"])  # (B, 2B)
        idx, found = search_hard_negatives(emb[:, 0], spans["emb"], valid, self.k)  # (B, K)
        neg_ids = spans["ids"][idx]  # (B, K, L)
        neg_att = spans["att"][idx]  # (B, K, L)
        random_used = np.zeros(B, dtype=np.int32)
        if not found.all() and self.reservoir is not None:
            res_valid = candidate_mask(doc, hashes, self.reservoir["doc"], self.reservoir["hash"])  # (B, R)
            for b in np.flatnonzero(~found.all(axis=1)):
                chosen = set(spans["hash"][idx[b, found[b]]].tolist())
                pool = [r for r in np.flatnonzero(res_valid[b]) if self.reservoir["hash"][r] not in chosen]
                slots = np.flatnonzero(~found[b])
                picks = self.rng.permutation(pool)[: len(slots)]
                for s, r in zip(slots, picks):
                    neg_ids[b, s] = self.reservoir["ids"][r]
                    neg_att[b, s] = self.reservoir["att"][r]
                    found[b, s] = True
                random_used[b] = len(picks)
        # empty slots keep real tokens (an all-padding row can give NaN attention) and are masked in the loss
        self._remember({k: v for k, v in spans.items() if k != "emb"})
        out = {k: v for k, v in batch.items() if k != "embedding"}
        out["teacher_embedding"] = emb.astype(np.float16)
        out["neg_input_ids"] = neg_ids.astype(np.int32)
        out["neg_attention_mask"] = neg_att.astype(np.int8)
        out["neg_mask"] = found.astype(np.int8)
        out["random_negatives"] = random_used
        out["missing_negatives"] = (~found).sum(1).astype(np.int32)
        return out
