"""The corpus on Ray Data: read → tokenize-and-pair (in parallel) → examples, with a ledger of counts.

The corpus is read in blocks of about CORPUS_BLOCK_BYTES and tokenized-and-paired in parallel, by an actor
per CPU in a pass that runs alone and by tasks in a stream beside the trainer (every free CPU, every node);
their counts (documents, skips, duplicates, examples per split) and the
corpus fingerprint are kept by a ledger actor, so the driver holds nothing proportional to the corpus.

An online distillation streams: `probe_corpus` reads only the prefix that holds the held-out rows (and
checks the corpus on it), then `online_rows` streams the training rows from the files (through the teacher
stage of `gemini_ray.data.pipeline`) into the trainer, which starts on the first rows while the rest are still
being read. `gemini-ray label` reads the corpus in blocks of its own (`gemini_ray.data.label_pass`).

No torch here: the tokenize tasks and actors import this module in every Ray worker that runs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import ray
import ray.data

from gemini_ray.config import Config
from gemini_ray.data.budgets import (CORPUS_BLOCK_BYTES, LIGHT_CPUS, PASS_READ_CPUS, PASS_TOKENIZE_CPUS,
                                     STREAM_BLOCK_BYTES, STREAM_TOKENIZE_CPUS)
from gemini_ray.data.blocks import local_corpus, plan_blocks, read_block
from gemini_ray.data.corpus import csv_read_options, decode_column, embedded_corpus, infer_format
from gemini_ray.data.corpus import corpus_files
from gemini_ray.data.resume import count_in_task, drop_trained, task_positions
from gemini_ray.data.spans import STATUS_OK, SpanPairer, min_example_tokens, text_hash
from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import is_uri
from gemini_ray.ray_compat.data import read_parquet_v1

__all__ = ["CorpusStats", "read_documents", "corpus_stream", "CorpusStream", "Probe", "probe_corpus", "online_rows",
           "is_val_doc", "to_arrays", "CorpusLedger", "read_parquet_v1", "read_errors", "pair_block", "Paired",
           "pairer_settings", "fingerprint_parts", "fingerprint_of_parts"]


@dataclass
class CorpusStats:
    documents: int = 0
    duplicate_documents: int = 0
    skipped_empty: int = 0
    skipped_non_utf8: int = 0
    skipped_bad_records: int = 0
    """jsonl lines that are not a JSON object with the text field; csv rows with the wrong number of fields."""
    skipped_too_long: int = 0
    """Documents longer than data.max_document_chars."""
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
    repeated_blocks: int = 0
    """Blocks read again by a further pass over the corpus (not counted again)."""
    fingerprint: str = ""

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def line(self, read: str = "") -> str:
        """One line of corpus counts, as the commands print it."""
        dropped = (f", {self.val_examples_dropped} more beyond data.max_val_examples"
                   if self.val_examples_dropped else "")
        return (f"[gemini-ray] corpus{read}: {self.documents} documents -> {self.examples} examples "
                f"({self.train_examples} train, {self.val_examples} held out{dropped}; "
                f"skipped: {self.skipped_too_short} shorter than two spans, {self.skipped_empty} empty, "
                f"{self.skipped_non_utf8} not UTF-8, {self.skipped_bad_records} unreadable records, "
                f"{self.skipped_too_long} too long; {self.duplicate_documents} duplicates; "
                f"tokenized by {self.tokenize_processes} processes)")


def read_documents(cfg: Config, num_cpus: float = 1.0, block_bytes: int | None = None) -> ray.data.Dataset:
    """A dataset with columns text (str), bad_utf8 and bad_record (bool), one row per document (or per line or
    row that could not be read: text ''), in blocks of about block_bytes (default CORPUS_BLOCK_BYTES; it and
    every dataset derived from it). num_cpus: per read task (a fraction when the corpus streams beside a
    trainer and a teacher pool, or beside a pass's tokenize actors)."""
    ctx = ray.data.DataContext.get_current()  # a dataset keeps a copy of the context it was made in
    default_block, ctx.target_max_block_size = ctx.target_max_block_size, block_bytes or CORPUS_BLOCK_BYTES
    try:
        return _read_documents(cfg, num_cpus, ctx.target_max_block_size)
    finally:
        ctx.target_max_block_size = default_block


def _read_documents(cfg: Config, num_cpus: float, block_bytes: int) -> ray.data.Dataset:
    d = cfg.data
    if d.path.startswith("embedded:"):
        source = embedded_corpus(d.path)
        if isinstance(source, list):
            ds = ray.data.from_items([{"text": t, "bad_utf8": False, "bad_record": False} for t in source])
            return ds.limit(d.max_documents) if d.max_documents else ds
        path, fmt = str(source), "text"
    else:
        path = d.path
        if not is_uri(path):
            path = str(local_corpus(path))
        fmt = infer_format(path, d.format)
        if not is_uri(path) and Path(path).is_dir():  # each real file once: Ray's listing follows every link
            path = [str(f) for f in corpus_files(Path(path), fmt)]
    if fmt in ("text", "jsonl"):  # in blocks of byte ranges (a file of any size in pieces), split into lines
        # here: a broken line is a counted skip, not a failure
        blocks = plan_blocks(d, block_bytes)
        ds = ray.data.from_items([{"block": json.dumps(b)} for b in blocks], override_num_blocks=len(blocks))
        ds = ds.map_batches(_read_blocks, fn_kwargs={"data": d}, batch_size=1, batch_format="numpy",
                            num_cpus=num_cpus)
    else:
        reader = {"parquet": read_parquet_v1, "csv": ray.data.read_csv}[fmt]
        kwargs = csv_read_options(d.text_column) if fmt == "csv" else {}
        ds = reader(path, num_cpus=num_cpus, **kwargs)
        probe = reader(path, num_cpus=num_cpus, **csv_read_options(d.text_column, count_skips=False)) \
            if fmt == "csv" else ds  # reading a csv's schema runs its first read task, which decodes nothing
        try:
            columns = probe.columns() or []
        except Exception:  # noqa: BLE001 — pyarrow refuses include_columns naming a column the csv lacks
            columns = []
        if d.text_column not in columns:
            raise GeminiRayError(
                f"data.text_column '{d.text_column}' is not a column of '{d.path}' (columns: {columns}). "
                "Set data.text_column to the column that holds the documents."
            )
        ds = ds.map_batches(functools.partial(decode_column, column=d.text_column), batch_format="numpy",
                            num_cpus=num_cpus)  # the read's CPUs: one task with it (csv skips are counted there)
    return ds.limit(d.max_documents) if d.max_documents else ds


def _read_blocks(batch: dict[str, np.ndarray], data: Any) -> dict[str, np.ndarray]:
    """The documents of a one-row batch of blocks (`plan_blocks` dicts as JSON)."""
    return read_block(json.loads(str(batch["block"][0])), data)


@contextlib.contextmanager
def read_errors(cfg: Config) -> Iterator[None]:
    """Around code that runs a corpus read: a file that fails to read or decompress in a Ray task (a
    compressed file or a parquet file cut short, a file changed since `filecheck` looked at it, a URI it
    could not look at) becomes a GeminiRayError naming the file (local files are looked at again to find
    it) or data.path, instead of Ray's stack trace. Ray Data has logged its own trace by then."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - a refusal raised in a Ray task: its own message, no traceback
        inner = _refusal_in(exc)
        if inner is not None and inner is not exc:
            raise inner from None
        if isinstance(exc, GeminiRayError) or not isinstance(exc, (OSError, pa.ArrowException)):
            raise
        _read_failed(cfg, exc)


def _refusal_in(exc: BaseException) -> GeminiRayError | None:
    """The GeminiRayError a Ray task raised, found through Ray's wrappers (RayTaskError, UserCodeException).
    Ray Data keeps only the text of an error raised in a map task (its UserCodeException has no cause): the
    message is read from the traceback it carries."""
    import re

    first, seen = exc, 0
    while exc is not None and seen < 10:
        if isinstance(exc, GeminiRayError) and not isinstance(exc, ray.exceptions.RayError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1
    found = re.findall(r"gemini_ray\.errors\.(?:GeminiRayError|ConfigError): (.+)", str(first))
    return GeminiRayError(found[-1].strip()) if found else None


def _read_failed(cfg: Config, exc: BaseException) -> None:
    """Raise the GeminiRayError of a corpus read that failed in a Ray task."""
    from gemini_ray.data.filecheck import check_corpus  # Ray's RayTaskError(OSError) is an OSError too

    cause = getattr(exc, "cause", None) or exc
    lines = [line for line in str(cause).splitlines() if line.strip()] or [type(cause).__name__]
    if not (cfg.data.path.startswith("embedded:") or is_uri(cfg.data.path)):
        check_corpus(cfg.data, 0)  # raises naming the damaged file when it can tell which
    raise GeminiRayError(
        f"reading data.path '{cfg.data.path}' failed: {lines[-1][:300]}. A compressed file or a parquet file "
        "cut short (an interrupted download, copy or write), or a file changed while the run read it, fails "
        "like this: test the files (e.g. 'gzip -t FILE'), copy them again, or point data.path at another "
        "corpus.") from None


def is_val_doc(doc_id: np.ndarray, val_fraction: float) -> np.ndarray:
    """Held-out documents, chosen by content hash: stable across runs, corpora orders and machines."""
    return (np.asarray(doc_id) % 10_000) < int(round(val_fraction * 10_000))


def fingerprint_parts(unique_hashes: np.ndarray) -> list[int]:
    """[count, sum modulo 2**64, xor] of unique document hashes (int64, any order). The parts of disjoint
    sets add up (`fingerprint_of_parts`)."""
    u = np.asarray(unique_hashes, dtype=np.int64)
    return [len(u), int(u.view(np.uint64).sum(dtype=np.uint64)), int(np.bitwise_xor.reduce(u)) if len(u) else 0]


def fingerprint_of_parts(parts: list[list[int]]) -> str:
    """The fingerprint of the union of disjoint sets of document hashes, from each set's parts."""
    count = sum(p[0] for p in parts)
    total = sum(p[1] for p in parts) % (1 << 64)
    xor = 0
    for p in parts:
        xor ^= p[2]
    return hashlib.sha256(f"{count}:{total}:{xor}".encode()).hexdigest()


def fingerprint_of(unique_hashes: np.ndarray) -> str:
    """The corpus fingerprint of its unique document hashes (int64, any order): their count, their sum
    modulo 2**64 and their xor."""
    return fingerprint_of_parts([fingerprint_parts(unique_hashes)])


LEDGER_MERGE_BLOCKS = 64
"""Blocks of document hashes the ledger keeps apart before it merges them into one sorted, unique array."""


@ray.remote(num_cpus=0)
class CorpusLedger:
    """What one execution of the corpus stream has read, counted in Ray (one actor), never in the driver:
    documents, skips and duplicates, examples per split, and an order-free fingerprint of the unique
    documents (`fingerprint_of`), so parallel tasks may report in any order. The documents' hashes are kept
    as sorted int64 arrays, 8 bytes a document (about 200 MB for 25 million documents).

    A stream executed again (a further pass over the corpus) reads the same blocks in the same tasks again: a
    block the ledger has seen (same task and batch index, same documents in the same order) counts once, so
    the counts are those of one pass."""

    def __init__(self) -> None:
        self.hashes: list[np.ndarray] = []
        self.recorded = 0
        self.blocks: set[tuple[int, int, int]] = set()
        self.counts = {k: v for k, v in CorpusStats().as_dict().items()
                       if k not in ("fingerprint", "tokenize_processes", "duplicate_documents")}
        self.pids: set[int] = set()

    def record(self, block: tuple[int, int, int], doc_ids: np.ndarray, counts: dict[str, int], pid: int) -> None:
        """block: the block's key (its task's index in the execution, its batch's index in the task, a hash
        of its documents in order); doc_ids: its UTF-8 documents (duplicates included); counts: what its
        task saw."""
        self.pids.add(pid)
        if block in self.blocks:
            self.counts["repeated_blocks"] += 1
            return
        self.blocks.add(block)
        self.hashes.append(np.asarray(doc_ids, dtype=np.int64))
        self.recorded += len(doc_ids)
        if len(self.hashes) >= LEDGER_MERGE_BLOCKS:
            self._unique()
        for k, v in counts.items():
            self.counts[k] += int(v)

    def _unique(self) -> np.ndarray:
        merged = np.unique(np.concatenate(self.hashes)) if self.hashes else np.zeros(0, dtype=np.int64)
        self.hashes = [merged]
        return merged

    def stats(self) -> CorpusStats:
        unique = self._unique()
        return CorpusStats(**self.counts, duplicate_documents=self.recorded - len(unique),
                           tokenize_processes=len(self.pids), fingerprint=fingerprint_of(unique))


@functools.lru_cache(maxsize=2)
def _pairer(**kwargs) -> SpanPairer:
    """One SpanPairer (its tokenizer loaded once) per Ray worker process: tokenize tasks reuse processes."""
    return SpanPairer(**kwargs)


class Paired(NamedTuple):
    """One block of documents tokenized and paired (`pair_block`)."""

    rows: dict[str, np.ndarray]
    """The examples (status 'ok'), each with its 'split'."""
    counts: dict[str, int]
    """What the block held: documents, skips, examples per split (CorpusStats' fields)."""
    doc_ids: np.ndarray
    """The hashes of the block's readable documents, repeats included (the corpus fingerprint's input)."""


def pair_block(batch: dict[str, np.ndarray], val_fraction: float, max_chars: int, pairer: dict) -> Paired:
    """SpanPairer over one block of documents ({text, bad_utf8, bad_record}): a repeat of a document earlier
    in the block is dropped, as are unreadable and too long ones; each example's split is chosen by its
    document's hash."""
    texts = np.array(["" if t is None else str(t) for t in batch["text"]], dtype=object)
    bad_record = np.asarray(batch["bad_record"], dtype=bool)
    too_long = np.array([len(t) > max_chars for t in texts], dtype=bool)
    bad = np.asarray(batch["bad_utf8"], dtype=bool) | bad_record  # never read: not part of the corpus
    doc_ids = np.array([text_hash(t) for t in texts], dtype=np.int64)
    first = np.zeros(len(texts), dtype=bool)
    first[np.unique(doc_ids, return_index=True)[1]] = True
    keep = first & ~bad & ~too_long
    rows = _pairer(**pairer)({"text": texts[keep]}, doc_ids=doc_ids[keep])
    status, doc = rows.pop("status"), rows["doc_id"]
    ok = status == STATUS_OK
    val = is_val_doc(doc, val_fraction)
    counts = {
        "documents": len(texts), "skipped_non_utf8": int(np.sum(batch["bad_utf8"])),
        "skipped_bad_records": int(np.sum(bad_record)), "skipped_too_long": int(np.sum(too_long & first & ~bad)),
        "skipped_empty": int(np.sum(status == "empty")), "skipped_too_short": int(np.sum(status == "too_short")),
        "examples": int(np.sum(ok)), "train_examples": int(np.sum(ok & ~val)), "val_examples": int(np.sum(ok & val)),
        "documents_used": len(np.unique(doc[ok])), "val_documents": len(np.unique(doc[ok & val])),
    }  # a document's examples all come from one block, so per-block unique counts add up
    out = {k: v[ok] for k, v in rows.items()}
    out["split"] = np.where(val[ok], "val", "train").astype(object)
    return Paired(out, counts, doc_ids[~bad])


def _pair_documents(batch: dict[str, np.ndarray], ledger, val_fraction: float, max_chars: int, pairer: dict,
                    plan=None, only: str | None = None) -> dict[str, np.ndarray]:
    """Tokenize-and-pair task over one block of documents (`pair_block`): the counts go to the ledger, and
    only the examples (with their 'split' and 'position') come out; with a StreamPlan, less the rows trained
    already; with `only`, the rows of that split alone (selected here, not by a Filter operator after this
    one: on a small machine Ray Data gives a downstream operator no CPU while the reads and tokenize tasks of
    a large corpus hold them all, and a filter there would starve until the whole corpus was read).

    A repeat in another block is kept: dropping it would make the stream depend on which task ran first
    (and empty a second pass). Its examples carry the same document id, so the two copies are never each
    other's negatives."""
    paired = pair_block(batch, val_fraction, max_chars, pairer)
    # the block's key: its place in this execution (the task's index, the batch's within the task: an actor's
    # task may map several blocks) and its content; a further pass runs the same tasks over the same blocks
    block = (*count_in_task("gemini_ray_batches", 1),
             int.from_bytes(hashlib.blake2b(paired.doc_ids.tobytes(), digest_size=8).digest(), "little"))
    ray.get(ledger.record.remote(block, paired.doc_ids, paired.counts, os.getpid()))
    out = paired.rows
    out["position"] = task_positions(len(out["split"]))
    if only is not None:
        out = {k: v[out["split"] == only] for k, v in out.items()}
    return drop_trained(out, plan)


class _PairDocuments:
    """_pair_documents in an actor of a pass's tokenize pool (the actor process keeps its SpanPairer). Its
    arguments come with each call: constructor arguments would make Ray log an error for every actor (they
    sit in the object store, which a restarted actor cannot count on)."""

    def __call__(self, batch: dict[str, np.ndarray], **kwargs: Any) -> dict[str, np.ndarray]:
        return _pair_documents(batch, **kwargs)


def _tokenize_pool() -> ray.data.ActorPoolStrategy:
    """The actor pool of a pass that runs alone: one actor per CPU of the cluster. Its calls run one at a
    time on the actor's task thread (enable_true_multi_threading: Ray Data's default moves a callable class
    onto a thread of its own, where the TaskContext that numbers blocks and positions is not set)."""
    n = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return ray.data.ActorPoolStrategy(min_size=1, max_size=n, initial_size=n, enable_true_multi_threading=True)


def pairer_settings(cfg: Config, tokenizer_source: str, kind: str) -> dict[str, Any]:
    """The SpanPairer arguments of a config (every tokenize task builds its pairer from them)."""
    return dict(tokenizer_source=tokenizer_source, kind=kind, span_length=cfg.data.span_length,
                seq_length=cfg.data.seq_length,
                mlm_probability=cfg.data.mlm_probability, seed=cfg.data.seed,
                trust_remote_code=cfg.teacher.trust_remote_code)


class CorpusStream(NamedTuple):
    """The corpus as tokenized, paired examples (lazy, in corpus order) and the ledger of what it read."""

    examples: ray.data.Dataset
    ledger: Any

    def stats(self) -> CorpusStats:
        return ray.get(self.ledger.stats.remote())


def corpus_stream(cfg: Config, tokenizer_source: str, kind: str, beside_trainer: bool = False,
                  plan=None, only: str | None = None) -> CorpusStream:
    """Read, tokenize and pair the corpus in parallel in Ray (every free CPU, every node), lazily: nothing
    runs until the examples are consumed. Each call has its own ledger: give each execution its own stream.

    beside_trainer: the stream runs while Train workers and the teacher pool hold most CPUs, so its tasks ask
    for fractions (LIGHT_CPUS per read, STREAM_TOKENIZE_CPUS per tokenize task); a pass that runs alone (before
    a trainer starts, or `gemini-ray label`) tokenizes in an actor per CPU (PASS_TOKENIZE_CPUS). plan: a
    StreamPlan whose trained rows the stream leaves out (a resumed run). only: 'train' or 'val' to keep that
    split's rows alone (the ledger counts both)."""
    ledger = CorpusLedger.remote()
    kwargs = dict(ledger=ledger, val_fraction=cfg.data.val_fraction, max_chars=cfg.data.max_document_chars,
                  pairer=pairer_settings(cfg, tokenizer_source, kind), plan=plan, only=only)
    # reads and tokenize tasks ask for different CPUs: Ray Data fuses adjacent operators with equal resources
    # into one task, which would tokenize a one-file corpus in the single task that reads it
    if beside_trainer:  # tasks: they take a CPU's fraction only while they run
        documents = read_documents(cfg, num_cpus=LIGHT_CPUS, block_bytes=STREAM_BLOCK_BYTES)
        examples = documents.map_batches(_pair_documents, fn_kwargs=kwargs, batch_size=None,
                                         num_cpus=STREAM_TOKENIZE_CPUS, batch_format="numpy")
    else:
        documents = read_documents(cfg, num_cpus=PASS_READ_CPUS, block_bytes=CORPUS_BLOCK_BYTES)
        examples = documents.map_batches(
            _PairDocuments, fn_kwargs=kwargs, batch_size=None, num_cpus=PASS_TOKENIZE_CPUS,
            compute=_tokenize_pool(), batch_format="numpy")
    return CorpusStream(examples, ledger)


class Probe(NamedTuple):
    """What an online run reads before its trainer starts."""

    val: dict[str, np.ndarray] | None
    """The held-out rows, tokenized (not yet labelled), or None."""
    stats: CorpusStats
    """The counts of what the probe read: the corpus's prefix, or all of it when `whole`."""
    whole: bool
    """Whether the probe read the whole corpus (its counts are the corpus's)."""


PROBE_MIN_ROWS = 256
"""Examples a probe reads at least when there are no held-out rows to look for."""


def probe_corpus(cfg: Config, tokenizer_source: str, kind: str) -> Probe:
    """Read the corpus only as far as the held-out rows need (the first data.max_val_examples held-out
    examples, in corpus order), and check it on what was read: no documents, no examples, too few documents
    for K negatives, fewer training examples than one step. A prefix that passes is enough; one that fails
    is read on to the corpus's end before the run is refused (a corpus that passes only as a whole is
    accepted). The held-out rows (at most data.max_val_examples, a few hundred KB) come to the driver."""
    with read_errors(cfg):
        return _probe_corpus(cfg, tokenizer_source, kind)


def _probe_corpus(cfg: Config, tokenizer_source: str, kind: str) -> Probe:
    d, t = cfg.data, cfg.train
    cap = d.max_val_examples if d.val_fraction > 0 else 0
    stream = corpus_stream(cfg, tokenizer_source, kind, only="val" if cap else None)
    try:
        if cap:
            val = to_arrays(stream.examples.limit(cap))
            whole = val is None or len(val["example_id"]) < cap
        else:
            need = max(PROBE_MIN_ROWS, 4 * t.batch_size * t.num_workers)
            seen = sum(len(b["doc_id"]) for b in stream.examples.limit(need).iter_batches(batch_size=None,
                                                                                           batch_format="numpy"))
            val, whole = None, seen < need
        stats = stream.stats()
    finally:
        ray.kill(stream.ledger)
    if not whole and not _enough(cfg, stats):  # rare: very long documents, or few usable ones early on
        rest = corpus_stream(cfg, tokenizer_source, kind, only="val")  # the ledger counts every row it reads
        try:
            for _ in rest.examples.iter_batches(batch_size=None, batch_format="numpy"):
                pass
            stats, whole = rest.stats(), True
        finally:
            ray.kill(rest.ledger)
    _check_corpus(cfg, stats)
    if val is not None:
        stats.val_examples = len(val["example_id"])
    return Probe(val, stats, whole)


def _enough(cfg: Config, stats: CorpusStats) -> bool:
    return (stats.documents_used > cfg.loss.num_negatives
            and stats.train_examples >= cfg.train.batch_size * cfg.train.num_workers)


def online_rows(cfg: Config, tokenizer_source: str, kind: str, rows: int, plan) -> CorpusStream:
    """The first `rows` training examples, streamed beside the trainer from the corpus files (nothing is read
    before the trainer asks), less those the plan says were trained, with the ledger of what this stream
    read. A stream that runs out before `rows` is read again from the start by the next pass."""
    stream = corpus_stream(cfg, tokenizer_source, kind, beside_trainer=True, plan=plan, only="train")
    return CorpusStream(stream.examples.limit(rows), stream.ledger)


def _check_corpus(cfg: Config, stats: CorpusStats) -> None:
    """Refuse a corpus that gives no document, no example, or too few documents for K negatives."""
    if stats.documents == 0:
        raise GeminiRayError(f"the corpus '{cfg.data.path}' holds no documents. Give a non-empty corpus.")
    if stats.examples == 0:
        skips = {"too short": stats.skipped_too_short, "empty": stats.skipped_empty,
                 "not UTF-8": stats.skipped_non_utf8, "unreadable records": stats.skipped_bad_records,
                 "longer than data.max_document_chars": stats.skipped_too_long}
        raise GeminiRayError(
            f"no document of '{cfg.data.path}' is long enough for an example, an anchor and a positive span "
            f"({min_example_tokens(cfg.data.seq_length, cfg.data.span_length)} tokens or more with data.span_length="
            f"{cfg.data.span_length} and data.seq_length={cfg.data.seq_length}; "
            + (", ".join(f"{n} {what}" for what, n in skips.items() if n) or "none read") + "). "
            "Use longer documents or a smaller data.span_length."
        )
    if stats.documents_used <= cfg.loss.num_negatives:
        raise GeminiRayError(
            f"loss.num_negatives={cfg.loss.num_negatives} needs more than {cfg.loss.num_negatives} usable documents "
            f"(negatives come from other documents), but the corpus gives {stats.documents_used}. "
            "Lower loss.num_negatives or add documents."
        )


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
