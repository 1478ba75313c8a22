"""Ray Data assembly: read → spans → teacher (actor pool) → hard-negative mining.

The stages themselves are plain callables in `gemini_ray.data`; this module only wires them onto Ray.
Tokenize-and-pair runs as parallel Ray tasks (every CPU, every node) in one pass materialised in Ray's
object store; its counts (documents, skips, duplicates, examples per split) and the corpus fingerprint are
kept by a ledger actor, so the driver holds nothing proportional to the corpus. The teacher pool and the
miner then stream the examples into the trainer (or into the cache, `gemini-ray label`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import ray
import ray.data
from ray.data import ActorPoolStrategy

from gemini_ray.config import Config
from gemini_ray.data.corpus import embedded_corpus, infer_format, split_lines
from gemini_ray.data.mining import HardNegativeMiner
from gemini_ray.data.spans import STATUS_OK, SpanPairer, text_hash
from gemini_ray.data.teacher_stage import TeacherLabeler
from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import atomic_path, is_uri, join, open_dir

__all__ = ["CorpusStats", "read_documents", "corpus_stream", "CorpusStream", "build_examples", "held_out",
           "split", "label_and_mine", "is_val_doc",
           "teacher_token_counter", "label_shards", "read_cache", "read_cached_signal", "to_arrays",
           "CorpusLedger"]


@dataclass
class CorpusStats:
    documents: int = 0
    duplicate_documents: int = 0
    skipped_empty: int = 0
    skipped_non_utf8: int = 0
    skipped_too_short: int = 0
    documents_used: int = 0
    examples: int = 0
    train_examples: int = 0
    val_examples: int = 0
    val_documents: int = 0
    val_examples_dropped: int = 0
    """Held-out examples beyond data.max_val_examples (neither scored nor trained on)."""
    tokenize_processes: int = 0
    """Ray worker processes that ran the tokenize-and-pair tasks."""
    fingerprint: str = ""

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


LIGHT_CPUS = 0.1
"""CPUs per task of the cheap row operations (filter, column selection) in datasets that stream beside the
trainer: on a small machine the Train workers and the teacher pool hold almost every CPU, and an
operation that asks for a whole one would wait forever (Ray Data's no-progress error after 30 minutes)."""

CACHE_READ_CPUS = 0.25
"""CPUs per cache-read task: a Tune trial's driver and trainer hold the rest."""


TRAIN_COLUMNS = ["input_ids", "attention_mask", "label_mask", "topk_ids", "topk_logits", "topk_mass",
                 "neg_input_ids", "neg_attention_mask", "neg_mask", "teacher_tokens", "random_negatives",
                 "missing_negatives", "doc_id", "span_hash"]
"""What the trainer reads (example ids and the split name stay behind); document ids and span hashes say
which rows of a batch may serve as each other's negatives."""


def read_documents(cfg: Config, num_cpus: float = 1.0) -> ray.data.Dataset:
    """A dataset with columns text (str) and bad_utf8 (bool), one row per document. num_cpus: per read
    task (a fraction when the corpus streams beside a trainer and a teacher pool)."""
    d = cfg.data
    if d.path.startswith("embedded:"):
        source = embedded_corpus(d.path)
        if isinstance(source, list):
            ds = ray.data.from_items([{"text": t, "bad_utf8": False} for t in source])
            return ds.limit(d.max_documents) if d.max_documents else ds
        path, fmt = str(source), "text"
    else:
        path = d.path
        if not is_uri(path):
            p = Path(path).expanduser()
            if not p.exists():
                raise GeminiRayError(f"data.path '{path}' does not exist. Point it at a corpus file, directory or URI.")
            if p.is_file() and p.stat().st_size == 0:
                raise GeminiRayError(f"data.path '{path}' is empty. Give a corpus with at least two documents.")
            path = str(p.resolve())
        fmt = infer_format(path, d.format)
    if fmt == "text":
        ds = ray.data.read_binary_files(path, num_cpus=num_cpus).map_batches(split_lines, batch_size=1,
                                                                             batch_format="numpy", num_cpus=num_cpus)
    else:
        reader = {"jsonl": ray.data.read_json, "parquet": _read_parquet, "csv": ray.data.read_csv}[fmt]
        kwargs = {"lines": True} if fmt == "jsonl" else {}
        ds = reader(path, num_cpus=num_cpus, **kwargs)
        columns = ds.columns() or []
        if d.text_column not in columns:
            raise GeminiRayError(
                f"data.text_column '{d.text_column}' is not a column of '{d.path}' (columns: {columns}). "
                "Set data.text_column to the column that holds the documents."
            )
        col = d.text_column
        ds = ds.map_batches(
            lambda b: {"text": np.array(["" if t is None else str(t) for t in b[col]], dtype=object),
                       "bad_utf8": np.zeros(len(b[col]), dtype=bool)},
            batch_format="numpy", num_cpus=num_cpus,
        )
    return ds.limit(d.max_documents) if d.max_documents else ds


def _read_parquet(paths: Any, **kwargs: Any) -> ray.data.Dataset:
    """ray.data.read_parquet through Ray's V1 reader: V2 (Ray 2.60's default) first runs a listing task that
    asks for a whole CPU, which a trainer and a teacher pool holding all but a fraction of a node never leave
    free (Ray Data then waits until its no-progress timeout)."""
    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        return ray.data.read_parquet(paths, **kwargs)
    finally:
        ctx.use_datasource_v2 = v2


def is_val_doc(doc_id: np.ndarray, val_fraction: float) -> np.ndarray:
    """Held-out documents, chosen by content hash: stable across runs, corpora orders and machines."""
    return (np.asarray(doc_id) % 10_000) < int(round(val_fraction * 10_000))


@ray.remote(num_cpus=0)
class CorpusLedger:
    """What one execution of the corpus stream has read, counted in Ray (one actor), never in the driver:
    documents, skips and duplicates, examples per split, and an order-free fingerprint of the unique
    documents (the sum and xor of their content hashes), so parallel tasks may report in any order.

    A stream executed again (a second pass over the corpus) reports its documents again: its counts add up
    over the passes."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.counts = {k: v for k, v in CorpusStats().as_dict().items() if k not in ("fingerprint", "tokenize_processes")}
        self.hash_sum, self.hash_xor = 0, 0
        self.pids: set[int] = set()

    def record(self, doc_ids: np.ndarray, counts: dict[str, int], pid: int) -> None:
        """doc_ids: the block's UTF-8 documents (duplicates included); counts: what its task saw."""
        for h in doc_ids.tolist():
            if h in self.seen:
                self.counts["duplicate_documents"] += 1
            else:
                self.seen.add(h)
                self.hash_sum = (self.hash_sum + h) % (1 << 64)
                self.hash_xor ^= h
        for k, v in counts.items():
            self.counts[k] += int(v)
        self.pids.add(pid)

    def stats(self) -> CorpusStats:
        unique = f"{len(self.seen)}:{self.hash_sum}:{self.hash_xor}".encode()
        return CorpusStats(**self.counts, tokenize_processes=len(self.pids),
                           fingerprint=hashlib.sha256(unique).hexdigest())


@functools.lru_cache(maxsize=2)
def _pairer(**kwargs) -> SpanPairer:
    """One SpanPairer (its tokenizer loaded once) per Ray worker process: tokenize tasks reuse processes."""
    return SpanPairer(**kwargs)


def _pair_documents(batch: dict[str, np.ndarray], ledger, val_fraction: float, pairer: dict) -> dict[str, np.ndarray]:
    """Tokenize-and-pair task over one block of documents: SpanPairer cuts the UTF-8 documents (a repeat of
    a document earlier in the block is dropped), the counts go to the ledger, and only the examples (status
    'ok', with their 'split') come out.

    A repeat in another block is kept: dropping it would make the stream depend on which task ran first
    (and empty a second pass). Its examples carry the same document id, so the two copies are never each
    other's negatives, and the same example ids, so a cache keeps one copy."""
    texts = np.array(["" if t is None else str(t) for t in batch["text"]], dtype=object)
    bad = np.asarray(batch["bad_utf8"], dtype=bool)
    doc_ids = np.array([text_hash(t) for t in texts], dtype=np.int64)
    first = np.zeros(len(texts), dtype=bool)
    first[np.unique(doc_ids, return_index=True)[1]] = True
    keep = first & ~bad
    rows = _pairer(**pairer)({"text": texts[keep]})
    status, doc = rows.pop("status"), rows["doc_id"]
    ok = status == STATUS_OK
    val = is_val_doc(doc, val_fraction)
    ray.get(ledger.record.remote(doc_ids[~bad], {
        "documents": len(texts), "skipped_non_utf8": np.sum(bad),
        "skipped_empty": np.sum(status == "empty"), "skipped_too_short": np.sum(status == "too_short"),
        "examples": np.sum(ok), "train_examples": np.sum(ok & ~val), "val_examples": np.sum(ok & val),
        "documents_used": len(np.unique(doc[ok])), "val_documents": len(np.unique(doc[ok & val])),
    }, os.getpid()))  # a document's examples all come from one block, so per-block unique counts add up
    out = {k: v[ok] for k, v in rows.items()}
    out["split"] = np.where(val[ok], "val", "train").astype(object)
    return out


DOCUMENTS_PER_BLOCK = 256
"""Documents per block into the tokenize-and-pair tasks: a one-file corpus reads as one block, and a block
is the unit of parallelism, so blocks are cut to this size (a streaming repartition) before tokenizing."""


class CorpusStream(NamedTuple):
    """The corpus as tokenized, paired examples (lazy, in corpus order) and the ledger of what it read."""

    examples: ray.data.Dataset
    ledger: Any

    def stats(self) -> CorpusStats:
        return ray.get(self.ledger.stats.remote())


def corpus_stream(cfg: Config, tokenizer_source: str, kind: str) -> CorpusStream:
    """Read, tokenize and pair the corpus in parallel Ray tasks (every free CPU, every node), lazily: nothing
    runs until the examples are consumed. Each call has its own ledger: give each execution its own stream."""
    ledger = CorpusLedger.remote()
    pairer = dict(tokenizer_source=tokenizer_source, kind=kind, span_length=cfg.data.span_length,
                  mlm_probability=cfg.data.mlm_probability, seed=cfg.data.seed,
                  trust_remote_code=cfg.teacher.trust_remote_code)
    # reads ask for half a CPU, tokenize tasks for a whole one: Ray Data fuses adjacent operators with equal
    # resources into one task, which would run the repartition and every tokenize batch of a one-file corpus
    # in a single task (one block, one CPU)
    examples = (read_documents(cfg, num_cpus=0.5)
                .repartition(target_num_rows_per_block=DOCUMENTS_PER_BLOCK)
                .map_batches(_pair_documents, fn_kwargs=dict(ledger=ledger, val_fraction=cfg.data.val_fraction,
                                                             pairer=pairer),
                             batch_size=None, num_cpus=1, batch_format="numpy"))
    return CorpusStream(examples, ledger)


def held_out(examples: ray.data.Dataset, cap: int) -> ray.data.Dataset:
    """The held-out rows: of the held-out documents' examples (chosen by content hash), the first `cap` in
    corpus order."""
    return split(examples, "val").limit(cap)


def build_examples(cfg: Config, tokenizer_source: str, kind: str) -> tuple[ray.data.Dataset, CorpusStats]:
    """One whole pass: the examples materialised in Ray's object store, the held-out rows cut to
    data.max_val_examples, and the counts. The driver collects nothing proportional to the
    corpus (the ledger counts in Ray; the held-out cap brings at most data.max_val_examples ids here)."""
    stream = corpus_stream(cfg, tokenizer_source, kind)
    examples = stream.examples.materialize()
    stats = stream.stats()
    ray.kill(stream.ledger)
    _check_corpus(cfg, stats)
    cap = cfg.data.max_val_examples
    if stats.val_examples <= cap:
        return examples, stats
    kept = held_out(examples, cap).select_columns(["example_id"]).to_pandas()["example_id"].to_numpy()
    stats.val_examples_dropped, stats.val_examples = stats.val_examples - len(kept), len(kept)

    def drop_other_held_out(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = (batch["split"] == "train") | np.isin(batch["example_id"], kept)
        return {k: v[keep] for k, v in batch.items()}

    return examples.map_batches(drop_other_held_out, batch_format="numpy", num_cpus=LIGHT_CPUS).materialize(), stats


def _check_corpus(cfg: Config, stats: CorpusStats) -> None:
    """Refuse a corpus that gives no document, no example, or too few documents for K negatives."""
    if stats.documents == 0:
        raise GeminiRayError(f"the corpus '{cfg.data.path}' holds no documents. Give a non-empty corpus.")
    if stats.examples == 0:
        raise GeminiRayError(
            f"no document of '{cfg.data.path}' is long enough for an anchor and a positive span "
            f"({2 * cfg.data.span_length} tokens with data.span_length={cfg.data.span_length}; "
            f"{stats.skipped_too_short} too short, {stats.skipped_empty} empty, {stats.skipped_non_utf8} not UTF-8). "
            "Use longer documents or a smaller data.span_length."
        )
    if stats.documents_used <= cfg.loss.num_negatives:
        raise GeminiRayError(
            f"loss.num_negatives={cfg.loss.num_negatives} needs more than {cfg.loss.num_negatives} usable documents "
            f"(negatives come from other documents), but the corpus gives {stats.documents_used}. "
            "Lower loss.num_negatives or add documents."
        )


def split(examples: ray.data.Dataset, name: str) -> ray.data.Dataset:
    """The 'train' or 'val' rows of the examples."""
    return examples.filter(expr=f"split == '{name}'", num_cpus=LIGHT_CPUS)


@ray.remote(num_cpus=0)
class TeacherTokenCounter:
    """Counts tokens pushed through teacher forwards in this Ray session (the cache's proof of work)."""

    def __init__(self) -> None:
        self.tokens = 0

    def add(self, n: int) -> None:
        self.tokens += n

    def total(self) -> int:
        return self.tokens


COUNTER_NAME = "gemini_ray_teacher_tokens"


def teacher_token_counter():
    """The session's counter actor (created on first use)."""
    return TeacherTokenCounter.options(name=COUNTER_NAME, get_if_exists=True, lifetime="detached").remote()


class CountingTeacherLabeler(TeacherLabeler):
    """TeacherLabeler that reports every forward's real tokens to the session's counter actor."""

    def __init__(self, teacher_cfg: dict):
        super().__init__(teacher_cfg)
        self.counter = teacher_token_counter()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().__call__(batch)
        self.counter.add.remote(int(out["teacher_tokens"].sum()))
        return out


def _teacher_stage(cfg: Config, examples: ray.data.Dataset) -> ray.data.Dataset:
    t = cfg.teacher
    return examples.map_batches(
        CountingTeacherLabeler,
        fn_constructor_kwargs={"teacher_cfg": dataclasses.asdict(t)},
        compute=ActorPoolStrategy(size=t.num_actors),
        batch_size=max(1, t.batch_size // 2),  # one example holds two spans
        num_cpus=t.num_cpus,
        num_gpus=t.num_gpus,
        resources=dict(t.resources) or None,  # e.g. {teacher: 1}: only nodes that offer it
        batch_format="numpy",
    )


def label_and_mine(cfg: Config, examples: ray.data.Dataset) -> ray.data.Dataset:
    """Online: teacher top-k + embeddings on a fixed actor pool, then hard negatives per window (lazy)."""
    labelled = _teacher_stage(cfg, examples)
    return labelled.map_batches(
        HardNegativeMiner,
        fn_constructor_kwargs={"num_negatives": cfg.loss.num_negatives, "seed": cfg.mining.seed},
        compute=ActorPoolStrategy(size=1),
        batch_size=cfg.mining.window,
        num_cpus=LIGHT_CPUS,
        batch_format="numpy",
    ).select_columns(TRAIN_COLUMNS, num_cpus=LIGHT_CPUS)


def to_arrays(ds: ray.data.Dataset) -> dict[str, np.ndarray] | None:
    """A small dataset (the held-out rows) as one dict of column arrays, or None when it is empty.

    The held-out rows go to the Train workers as one object, not as a second Ray Data stream: every
    concurrent Ray Data execution takes an equal share of the CPUs the trainer leaves free, and on a
    small machine a share rounds down to nothing (the training stream then waits for its no-progress
    timeout)."""
    parts = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    parts = [p for p in parts if len(next(iter(p.values()))) > 0]
    if not parts:
        return None
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------- the teacher-signal cache


def assign_shards(examples: ray.data.Dataset, n_train: int, n_val: int) -> ray.data.Dataset:
    """Shard = hash bucket of the example id: train rows in [0, n_train), val rows in [n_train, n_train + n_val).

    Membership depends only on content, so an interrupted run rebuilds the same shards."""

    def add(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ex = np.asarray(batch["example_id"])
        val = np.asarray(batch["split"]) == "val"
        batch["shard"] = np.where(val, n_train + ex % max(n_val, 1), ex % n_train).astype(np.int64)
        return batch

    return examples.map_batches(add, batch_format="numpy", num_cpus=LIGHT_CPUS)


class ShardWriter:
    """map_groups UDF: mine K_max negatives within one shard (rows sorted by id, so the result does not
    depend on arrival order), write it as one parquet file under a temporary name, rename it."""

    def __init__(self, directory: str, max_negatives: int, seed: int):
        self.directory = directory
        self.fs, self.dir = open_dir(directory)
        self.k, self.seed = max_negatives, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow.parquet as pq
        from ray.data.block import BlockAccessor

        from gemini_ray.cache import shard_name

        ids = np.asarray(batch["example_id"])
        order = np.argsort(ids, kind="stable")
        order = order[np.r_[True, ids[order][1:] != ids[order][:-1]]]  # one copy of a repeated example
        rows = {k: np.asarray(v)[order] for k, v in batch.items()}
        shard = int(rows["shard"][0])
        mined = HardNegativeMiner(self.k, seed=self.seed + shard)(rows)  # fresh per shard: deterministic
        table = BlockAccessor.batch_to_block(mined)
        with atomic_path(join(self.directory, shard_name(shard))) as tmp:
            pq.write_table(table, tmp)
        final = f"{self.dir}/{shard_name(shard)}"
        return {"shard": np.array([shard]), "rows": np.array([len(order)]),
                "bytes": np.array([self.fs.get_file_info(final).size]),
                "teacher_tokens": np.array([int(rows["teacher_tokens"].sum())]),
                "positions": np.array([int(np.prod(rows["input_ids"].shape))]),
                "missing_negatives": np.array([int(mined["missing_negatives"].sum())])}


def label_shards(cfg: Config, examples: ray.data.Dataset, directory: str, shards: list[int]) -> list[dict]:
    """Label and write the given shards (one Ray Data execution); returns one record per shard."""
    todo = set(shards)
    subset = examples.filter(lambda r: r["shard"] in todo, num_cpus=LIGHT_CPUS)
    labelled = _teacher_stage(cfg, subset)
    written = labelled.groupby("shard").map_groups(
        ShardWriter,
        fn_constructor_kwargs={"directory": directory, "max_negatives": cfg.label.max_negatives,
                               "seed": cfg.mining.seed},
        compute=ActorPoolStrategy(size=1),
        num_cpus=LIGHT_CPUS,
        batch_format="numpy",
    )
    return written.to_pandas().to_dict("records")


def read_cache(directory: str, shards: list[int], num_negatives: int) -> ray.data.Dataset:
    """Stream the given cache shards, keeping the first (hardest) `num_negatives` negatives."""
    from gemini_ray.cache import shard_name

    fs, path = open_dir(directory)
    files = [f"{path}/{shard_name(s)}" for s in shards]
    # fractional CPUs: on a small machine the trainer (and a Tune trial's driver) hold most of them
    ds = _read_parquet(files, filesystem=fs, columns=TRAIN_COLUMNS, num_cpus=CACHE_READ_CPUS)

    def first_k(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for key in ("neg_input_ids", "neg_attention_mask", "neg_mask"):
            batch[key] = np.ascontiguousarray(batch[key][:, :num_negatives])
        return batch

    return ds.map_batches(first_k, batch_format="numpy", num_cpus=CACHE_READ_CPUS)


def read_cached_signal(directory: str, manifest: dict, num_negatives: int) -> tuple[ray.data.Dataset, dict | None]:
    """(training stream, held-out rows as one dict of arrays or None) from a complete cache. The held-out
    rows are small: read once, before a trainer holds its CPUs."""
    stream = read_cache(directory, manifest["shards_train"], num_negatives)
    val = to_arrays(read_cache(directory, manifest["shards_val"], num_negatives)) if manifest["shards_val"] else None
    return stream, val
