"""Ray Data assembly: read → spans → teacher (actor pool) → hard-negative mining.

The stages themselves are plain callables in `gemini_ray.data`; this module only wires them onto Ray.
The cheap tokenize-and-pair stage is materialised so that counts (examples, skipped documents) are
known before the teacher starts; the teacher and mining stages stream into the trainer.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

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

__all__ = ["CorpusStats", "read_documents", "build_examples", "split", "label_and_mine", "is_val_doc",
           "teacher_token_counter", "label_shards", "read_cache", "read_cached_signal", "to_arrays",
           "label_in_process"]


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


def read_documents(cfg: Config) -> ray.data.Dataset:
    """A dataset with columns text (str) and bad_utf8 (bool), one row per document."""
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
        ds = ray.data.read_binary_files(path).map_batches(split_lines, batch_size=1, batch_format="numpy")
    else:
        reader = {"jsonl": ray.data.read_json, "parquet": ray.data.read_parquet, "csv": ray.data.read_csv}[fmt]
        kwargs = {"lines": True} if fmt == "jsonl" else {}
        ds = reader(path, **kwargs)
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
            batch_format="numpy",
        )
    return ds.limit(d.max_documents) if d.max_documents else ds


def is_val_doc(doc_id: np.ndarray, val_fraction: float) -> np.ndarray:
    """Held-out documents, chosen by content hash: stable across runs, corpora orders and machines."""
    return (np.asarray(doc_id) % 10_000) < int(round(val_fraction * 10_000))


def _add_split(val_fraction: float):
    def add(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch["split"] = np.where(is_val_doc(batch["doc_id"], val_fraction), "val", "train").astype(object)
        return batch

    return add


def build_examples(cfg: Config, tokenizer_source: str, kind: str) -> tuple[ray.data.Dataset, CorpusStats]:
    """Tokenize, cut and pair; returns the materialised examples (status 'ok' only) and the counts."""
    docs = read_documents(cfg).materialize()
    table = docs.to_pandas()  # texts only: small next to the teacher's output
    stats = CorpusStats(documents=len(table))
    if stats.documents == 0:
        raise GeminiRayError(f"the corpus '{cfg.data.path}' holds no documents. Give a non-empty corpus.")
    stats.skipped_non_utf8 = int(table["bad_utf8"].sum())
    table = table[~table["bad_utf8"]]
    # exact duplicate documents are dropped before anything else (they would be false negatives)
    hashes = table["text"].map(text_hash)
    stats.duplicate_documents = int(hashes.duplicated().sum())
    table = table[~hashes.duplicated()]
    unique = np.sort(hashes[~hashes.duplicated()].to_numpy())
    stats.fingerprint = hashlib.sha256(unique.tobytes()).hexdigest()  # order-free identity of the corpus
    ds = ray.data.from_pandas(table[["text"]].reset_index(drop=True))
    pairs = ds.map_batches(
        SpanPairer,
        fn_constructor_kwargs=dict(tokenizer_source=tokenizer_source, kind=kind, span_length=cfg.data.span_length,
                                   mlm_probability=cfg.data.mlm_probability, seed=cfg.data.seed,
                                   trust_remote_code=cfg.teacher.trust_remote_code),
        compute=ActorPoolStrategy(size=1),
        batch_size=64,
        num_cpus=1,
        batch_format="numpy",
    ).materialize()
    status = pairs.select_columns(["status", "doc_id"]).to_pandas()
    stats.skipped_empty = int((status["status"] == "empty").sum())
    stats.skipped_too_short = int((status["status"] == "too_short").sum())
    ok = status[status["status"] == STATUS_OK]
    stats.examples = len(ok)
    stats.documents_used = int(ok["doc_id"].nunique())
    val = is_val_doc(ok["doc_id"].to_numpy(), cfg.data.val_fraction)
    stats.val_examples, stats.train_examples = int(val.sum()), int((~val).sum())
    stats.val_documents = int(ok["doc_id"][val].nunique())
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
    examples = (pairs.filter(expr=f"status == '{STATUS_OK}'").drop_columns(["status"])
                .map_batches(_add_split(cfg.data.val_fraction), batch_format="numpy").materialize())
    return examples, stats


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


def label_in_process(cfg: Config, examples: ray.data.Dataset, model) -> dict[str, np.ndarray] | None:
    """Label and mine a small dataset (the held-out rows) in this process with an already loaded teacher:
    the same callables as the stream (teacher batches of teacher.batch_size spans, mining windows of
    mining.window rows), without starting an actor pool for a few dozen rows. None when it is empty."""
    import torch

    rows = to_arrays(examples)
    if rows is None:
        return None
    threads = torch.get_num_threads()  # TeacherLabeler sets the actor's thread count; this is the driver
    try:
        labeler = TeacherLabeler(dataclasses.asdict(cfg.teacher), model=model, device="cpu")
        n, step = len(rows["input_ids"]), max(1, cfg.teacher.batch_size // 2)
        parts = [labeler({k: v[i : i + step] for k, v in rows.items()}) for i in range(0, n, step)]
    finally:
        torch.set_num_threads(threads)
    labelled = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    teacher_token_counter().add.remote(int(labelled["teacher_tokens"].sum()))
    miner = HardNegativeMiner(cfg.loss.num_negatives, cfg.mining.seed)
    w = cfg.mining.window
    mined = [miner({k: v[i : i + w] for k, v in labelled.items()}) for i in range(0, n, w)]
    return {k: np.concatenate([m[k] for m in mined]) for k in TRAIN_COLUMNS}


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

        order = np.argsort(np.asarray(batch["example_id"]), kind="stable")
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
    ds = ray.data.read_parquet(files, filesystem=fs, columns=TRAIN_COLUMNS, num_cpus=CACHE_READ_CPUS)

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
