"""`gemini-ray label`'s one streaming pass on Ray Data: blocks of the corpus → read, tokenize and pair
(tasks) → teacher (an actor pool that starts once) → mine and write (one writer actor) → a record per block.

    for record in label_blocks(cfg, blocks, source, kind, directory, key, n_blocks):
        ...  # {block, rows, val_rows, teacher_tokens, bytes}: one finished block

Nothing is materialised: each stage streams into the next under Ray Data's backpressure. A block's rows may
reach the writer in several pieces (and a retried teacher task may send some twice); the writer keeps a
block's pieces until it holds every row once, then mines hard negatives within windows of its rows (in
example-id order: a content hash, so each window is a random mix of the block's documents, and the result does
not depend on arrival order), writes its training rows as shard b and its
held-out rows as shard n_blocks + b (each under a temporary name, then renamed), and then the block's record.
A run killed at any point keeps every block whose record was written; the next run labels the others.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import numpy as np
import ray
import ray.data
from ray.data import ActorPoolStrategy

from gemini_ray.config import Config
from gemini_ray.data.blocks import read_block
from gemini_ray.data.budgets import LIGHT_CPUS, STREAM_TOKENIZE_CPUS
from gemini_ray.data.cache import block_counts_path, block_record_path, shard_name
from gemini_ray.data.corpus_pass import fingerprint_parts, pair_block, pairer_settings
from gemini_ray.data.mining import HardNegativeMiner
from gemini_ray.data.pipeline import CountingTeacherLabeler, teacher_actor_args
from gemini_ray.paths import atomic_path, atomic_write_json, join, open_dir, read_json

__all__ = ["label_blocks", "BlockWriter", "mine_windows", "limit_documents", "held_out_blocks", "RECORD_COLUMNS"]

RECORD_COLUMNS = ("block", "rows", "val_rows", "teacher_tokens", "bytes")
"""What the pass yields per finished block."""

_HELPER_COLUMNS = ("block_rows", "row_in_block")


def _block_of(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """The block of a one-row batch (a `plan_blocks` dict, as JSON: its values come back as they went)."""
    return json.loads(str(batch["block"][0]))


def _read_and_pair(batch: dict[str, np.ndarray], data: Any, pairer: dict, directory: str, key: str,
                   val_fraction: float, max_chars: int) -> dict[str, np.ndarray]:
    """One block: read its documents, tokenize and pair them, and leave its corpus counts for its writer (a
    block without examples is finished here: its record is written at once, no teacher needed)."""
    block = _block_of(batch)
    paired = pair_block(read_block(block, data), val_fraction, max_chars, pairer)
    rows = paired.rows
    if not block.get("held_out", True):  # past the blocks that hold the held-out rows scored: not labelled
        rows = {c: v[rows["split"] == "train"] for c, v in rows.items()}
    n = len(rows["split"])
    unique = np.unique(paired.doc_ids)
    counts = {"key": key, "block": block, "pid": os.getpid(), "fingerprint": fingerprint_parts(unique),
              "counts": {**paired.counts, "duplicate_documents": len(paired.doc_ids) - len(unique)}}
    if n == 0:
        atomic_write_json(block_record_path(directory, block["index"]), {**counts, "shards": {}})
    else:
        atomic_write_json(block_counts_path(directory, block["index"]), counts)
    rows["block"] = np.full(n, block["index"], dtype=np.int64)
    rows["block_rows"] = np.full(n, n, dtype=np.int64)
    rows["row_in_block"] = np.arange(n, dtype=np.int64)
    return rows


def mine_windows(rows: dict[str, np.ndarray], k: int, window: int, seed: int,
                 span_length: int | None = None) -> dict[str, np.ndarray]:
    """Hard negatives for rows in a fixed order, mined within consecutive windows of about `window` rows
    (n // window windows of equal size, so none is a short remnant), with one seeded miner whose
    reservoir of earlier windows fills the slots a window cannot. span_length: the negatives' length (the
    start of each KD window; None: the whole window)."""
    n = len(rows["example_id"])
    miner = HardNegativeMiner(k, seed=seed, span_length=span_length)
    parts = [miner({c: v[idx] for c, v in rows.items()})
             for idx in np.array_split(np.arange(n), max(1, n // window))]
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


class BlockWriter:
    """The pass's writer (one actor): gathers each block's rows, mines and writes the block once it holds
    every row of it, and answers one record per finished block."""

    def __init__(self, directory: str, n_blocks: int, max_negatives: int, window: int, seed: int,
                 span_length: int | None = None) -> None:
        self.directory, self.n_blocks = directory, n_blocks
        self.fs, self.path = open_dir(directory)
        self.k, self.window, self.seed, self.span_length = max_negatives, window, seed, span_length
        self.pending: dict[int, dict[str, Any]] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = []
        blocks = np.asarray(batch["block"])
        for b in np.unique(blocks).tolist():
            mine = blocks == b
            piece = {c: np.array(v[mine]) for c, v in batch.items()}
            entry = self.pending.setdefault(b, {"pieces": [], "seen": np.zeros(int(piece["block_rows"][0]), bool)})
            entry["pieces"].append(piece)
            entry["seen"][piece["row_in_block"]] = True
            if entry["seen"].all():
                records.append(self._write(b, self.pending.pop(b)["pieces"]))
        return {c: np.array([r[c] for r in records], dtype=np.int64) for c in RECORD_COLUMNS}

    def _write(self, block: int, pieces: list[dict[str, np.ndarray]]) -> dict[str, int]:
        import pyarrow.parquet as pq
        from ray.data.block import BlockAccessor

        rows = {c: np.concatenate([p[c] for p in pieces]) for c in pieces[0]}
        _, first = np.unique(rows["row_in_block"], return_index=True)  # each row once
        first = first[np.argsort(rows["example_id"][first], kind="stable")]  # in example-id order: a mix of
        rows = {c: v[first] for c, v in rows.items() if c not in _HELPER_COLUMNS}  # the block, whatever arrived first
        record = read_json(block_counts_path(self.directory, block))
        shards = {}
        for shard, split in ((block, "train"), (self.n_blocks + block, "val")):
            chosen = rows["split"] == split
            if not chosen.any():
                continue
            part = mine_windows({c: v[chosen] for c, v in rows.items()}, self.k, self.window, self.seed + shard,
                                self.span_length)
            part["shard"] = np.full(int(chosen.sum()), shard, dtype=np.int64)
            part["row"] = np.arange(int(chosen.sum()), dtype=np.int64)  # (shard, row) is its position
            with atomic_path(join(self.directory, shard_name(shard))) as tmp:
                pq.write_table(BlockAccessor.batch_to_block(part), tmp)
            shards[str(shard)] = {
                "rows": int(chosen.sum()), "bytes": self.fs.get_file_info(f"{self.path}/{shard_name(shard)}").size,
                "teacher_tokens": int(part["teacher_tokens"].sum()),
                "positions": int(np.prod(part["input_ids"].shape)),
                "missing_negatives": int(part["missing_negatives"].sum())}
        atomic_write_json(block_record_path(self.directory, block), {**record, "shards": shards})
        self.fs.delete_file(f"{self.path}/blocks/{block:05d}.counts.json")
        train, val = shards.get(str(block), {}), shards.get(str(self.n_blocks + block), {})
        return {"block": block, "rows": train.get("rows", 0), "val_rows": val.get("rows", 0),
                "teacher_tokens": train.get("teacher_tokens", 0) + val.get("teacher_tokens", 0),
                "bytes": int(record["block"]["bytes"])}


def label_blocks(cfg: Config, blocks: list[dict[str, Any]], source: str, kind: str, directory: str, key: str,
                 n_blocks: int) -> Iterator[dict[str, int]]:
    """Label the given blocks in one streaming execution; yields each block's record as it is written."""
    d = cfg.data
    items = ray.data.from_items([{"block": json.dumps(b)} for b in blocks], override_num_blocks=max(len(blocks), 1))
    examples = items.map_batches(
        _read_and_pair, batch_size=1, batch_format="numpy", num_cpus=LIGHT_CPUS + STREAM_TOKENIZE_CPUS,
        fn_kwargs={"data": d, "pairer": pairer_settings(cfg, source, kind), "directory": directory, "key": key,
                   "val_fraction": d.val_fraction, "max_chars": d.max_document_chars})
    teacher = teacher_actor_args(cfg)
    # two calls queued per actor: it never waits for work, and a killed pass has labelled at most about a
    # block per actor that no record holds
    teacher["compute"] = ActorPoolStrategy(size=cfg.teacher.num_actors, max_tasks_in_flight_per_actor=2)
    labelled = examples.map_batches(CountingTeacherLabeler, batch_format="numpy", **teacher)
    written = labelled.map_batches(
        BlockWriter, batch_size=None, batch_format="numpy", num_cpus=LIGHT_CPUS, compute=ActorPoolStrategy(size=1),
        fn_constructor_kwargs={"directory": directory, "n_blocks": n_blocks, "max_negatives": cfg.label.max_negatives,
                               "window": cfg.mining.window, "seed": cfg.mining.seed,
                               "span_length": d.span_length})
    for batch in written.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["block"])):
            yield {c: int(batch[c][i]) for c in RECORD_COLUMNS}


@ray.remote(num_cpus=LIGHT_CPUS)
def _count_documents(block: dict[str, Any], data: Any) -> int:
    return len(read_block(block, data)["text"])


def limit_documents(blocks: list[dict[str, Any]], max_documents: int, data: Any) -> list[dict[str, Any]]:
    """The blocks that hold the corpus's first `max_documents` documents, the last one cut (its
    max_documents): the blocks are counted in Ray tasks, a few at a time, from the first until enough."""
    kept: list[dict[str, Any]] = []
    total, chunk = 0, max(1, int(ray.cluster_resources().get("CPU", 1)))
    for start in range(0, len(blocks), chunk):
        part = blocks[start:start + chunk]
        for block, n in zip(part, ray.get([_count_documents.remote(b, data) for b in part])):
            take = min(n, max_documents - total)
            kept.append({**block, "max_documents": take if take < n else None})
            total += take
            if total >= max_documents:
                return kept
    return kept


@ray.remote(num_cpus=LIGHT_CPUS + STREAM_TOKENIZE_CPUS)
def _held_out_examples(block: dict[str, Any], data: Any, pairer: dict, val_fraction: float, max_chars: int) -> int:
    return pair_block(read_block(block, data), val_fraction, max_chars, pairer).counts["val_examples"]


def held_out_blocks(cfg: Config, blocks: list[dict[str, Any]], source: str, kind: str) -> int:
    """How many blocks, from the first, hold the data.max_val_examples held-out examples a run scores (the
    first in corpus order): their held-out rows are labelled, later blocks' are not. Counted by tokenizing
    the first blocks in Ray tasks, a few at a time, until enough (0 without held-out documents)."""
    d, cap = cfg.data, cfg.data.max_val_examples
    if d.val_fraction == 0 or cap == 0:
        return 0
    pairer = pairer_settings(cfg, source, kind)
    held, chunk = 0, max(1, int(ray.cluster_resources().get("CPU", 1)))
    for start in range(0, len(blocks), chunk):
        part = blocks[start:start + chunk]
        counts = ray.get([_held_out_examples.remote(b, d, pairer, d.val_fraction, d.max_document_chars) for b in part])
        for block, n in zip(part, counts):
            held += n
            if held >= cap:
                return block["index"] + 1
    return len(blocks)
