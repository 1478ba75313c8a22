"""The teacher-signal cache: where it lives, what identifies it, and whether a shard is whole. No Ray here.

    <label.cache_root>/<key>/manifest.json
    <label.cache_root>/<key>/shard-00000.parquet ...

The key is a hash of everything that changes what the teacher says or which rows exist: the teacher's
weights (content hash), its tokenizer's vocabulary, the corpus (hash of its deduplicated documents), span
length, masking, top-k, K_max, the mining window and seeds. λ, τ and K ≤ K_max are not in it: every run and
every Tune trial with the same inputs reads the same cache.

A shard is one block of the corpus: its training rows (shard b) or its held-out rows (shard n_blocks + b).
Shards are written under a temporary name and renamed when complete, then the block's record
(blocks/NNNNN.json) after them; on resume a block counts as done only if its record names this cache and
this block, and each of its shards' parquet footer reads, holds the rows recorded and has the size recorded
when it was written, so a truncated, half-written or overwritten shard is redone. A run that reads
the cache checks the same of every shard it lists first (`check_shards`: one footer per shard, no data).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import absolute, atomic_write_json, atomic_write_text, join, read_json, sha256_file

if TYPE_CHECKING:
    from gemini_ray.config import Config

__all__ = [
    "CACHE_VERSION",
    "FoundCache",
    "cache_identity",
    "cache_dir_for",
    "find_cache",
    "cache_key",
    "weights_hash",
    "vocab_hash",
    "signal_bytes_per_token",
    "shard_name",
    "shard_is_complete",
    "shard_problem",
    "check_shards",
    "recorded_bytes",
    "read_manifest",
    "column_bytes",
    "write_manifest",
    "check_compatible",
    "rows_a_run_reads",
    "first_shards",
    "cached_train_rows",
    "block_record_path",
    "block_counts_path",
    "read_block_record",
    "block_problem",
]

CACHE_VERSION = 5
"""2: each shard row carries its row index in the file (`row`), the base of its position in a pass.
3: and the teacher's pooled span embeddings (`teacher_embedding`, float16), the representation loss's target.
4: a shard is a block of the corpus (`gemini_ray.data.blocks`): shard b holds block b's training rows and
shard n_blocks + b its held-out rows, in corpus order; blocks/NNNNN.json records each finished block."""


def weights_hash(model_dir: str, revision: str | None = None) -> str:
    """Content hash of a model directory's weight files (memoised beside them by size and mtime); for a hub
    name, a hash of the name and the commit it resolved to (`models.build.resolve_revision`)."""
    d = Path(model_dir)
    files = sorted(p for p in d.glob("*") if p.suffix in (".safetensors", ".bin", ".gguf", ".pt"))
    if not files:  # a hub name: the name at its resolved commit (an update on the hub is a new identity)
        return hashlib.sha256(model_dir.encode() + (f"@{revision}".encode() if revision else b"")).hexdigest()
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        memo = d / f".{p.name}.sha256"
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        digest = None
        if memo.is_file():
            saved_stamp, _, saved = memo.read_text().partition(" ")
            digest = saved.strip() if saved_stamp == stamp and len(saved.strip()) == 64 else None
        if digest is None:
            digest = sha256_file(p)
            try:  # renamed into place: a cut-short memo would name the wrong weights
                atomic_write_text(memo, f"{stamp} {digest}")
            except OSError:
                pass  # read-only model directory: hash again next time
        h.update(f"{p.name}:{digest}".encode())
    return h.hexdigest()


def vocab_hash(tokenizer) -> str:
    """Hash of a tokenizer's token → id map (two tokenizers agree iff their soft labels are interchangeable)."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def cache_key(identity: dict[str, Any]) -> str:
    """Short stable hash of the inputs that determine the cache's contents."""
    blob = json.dumps({"version": CACHE_VERSION, **identity}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def block_record_path(directory: str, block: int) -> str:
    """Where a finished block's record lives: what it read, its counts and its shard files' sizes."""
    return join(directory, "blocks", f"{block:05d}.json")


def block_counts_path(directory: str, block: int) -> str:
    """Where a block's corpus counts wait, from its tokenize task, for its writer."""
    return join(directory, "blocks", f"{block:05d}.counts.json")


def read_block_record(directory: str, block: int) -> dict[str, Any] | None:
    return read_json(block_record_path(directory, block))


def block_problem(fs: pafs.FileSystem, path: str, record: dict[str, Any] | None, key: str,
                  block: dict[str, Any]) -> str | None:
    """Why a block must be labelled again ('it was not finished', 'shard 12: it is missing', ...), or None
    when its record names this cache's key and this very block of the corpus and each of its shard files is
    whole. path: the cache directory on fs."""
    if record is None:
        return "it was not finished"
    if record.get("key") != key:
        return "its record names another cache"
    if record.get("block") != block:
        return "its record names another part of the corpus"
    for shard, rec in record.get("shards", {}).items():
        problem = shard_problem(fs, f"{path}/{shard_name(int(shard))}", int(rec["rows"]), int(rec["bytes"]))
        if problem:
            return f"shard {shard}: {problem}"
    return None


def shard_number(path: str) -> int:
    """The index of a shard from its file's path or name (inverse of shard_name)."""
    return int(path.rsplit("/", 1)[-1][len("shard-"):-len(".parquet")])


def shard_problem(fs: pafs.FileSystem, path: str, expected_rows: int, expected_bytes: int | None = None
                  ) -> str | None:
    """Why a shard file is not whole ('it is missing', 'its parquet footer does not read (...)', ...), or
    None. expected_bytes: its size when it was written (caches made before sizes were recorded: None)."""
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return "it is missing"
    if expected_bytes is not None and info.size != expected_bytes:
        return f"it holds {info.size:,} bytes, {expected_bytes:,} when it was written"
    try:
        with fs.open_input_file(path) as f:
            rows = pq.ParquetFile(f).metadata.num_rows
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt: pyarrow raises several kinds
        why = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return f"its parquet footer does not read ({why})"
    if rows != expected_rows:
        return f"it holds {rows} rows, the manifest {expected_rows}"
    return None


def shard_is_complete(fs: pafs.FileSystem, path: str, expected_rows: int,
                      expected_bytes: int | None = None) -> bool:
    """A shard counts as done iff it exists, its parquet footer reads, it holds the expected rows (and, when
    recorded, has the size it was written with)."""
    return shard_problem(fs, path, expected_rows, expected_bytes) is None


def recorded_bytes(manifest: dict[str, Any], shard: int) -> int | None:
    """A shard's size on disk as the manifest recorded it when the shard was written (None if it did not)."""
    record = manifest.get("shards", {}).get(str(shard)) or {}
    return int(record["bytes"]) if "bytes" in record else None


def check_shards(directory: str, manifest: dict[str, Any]) -> None:
    """Refuse a complete cache with a shard that is missing, cut short or overwritten, before a run reads it
    (Ray Data would retry the read, then fail with a stack trace mid-run). Reads one footer per shard."""
    from gemini_ray.paths import open_dir

    fs, path = open_dir(directory)
    for shard in list(manifest.get("shards_train", [])) + list(manifest.get("shards_val", [])):
        where = f"{path}/{shard_name(shard)}"
        problem = shard_problem(fs, where, int(manifest["expected_rows"][str(shard)]), recorded_bytes(manifest, shard))
        if problem:
            raise GeminiRayError(
                f"teacher-signal cache shard '{where}' is damaged: {problem}. Run 'gemini-ray label' with the same "
                "config (and label.path, if it was set): it keeps the whole shards and labels this one again "
                f"(deleting the file first is not needed); or delete the cache directory '{directory}' to start over.")


def column_bytes(fs: pafs.FileSystem, files: list[str]) -> dict[str, int]:
    """Compressed bytes per column over parquet files (from their footers)."""
    sizes: dict[str, int] = {}
    for path in files:
        with fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            for c in range(group.num_columns):
                col = group.column(c)
                name = col.path_in_schema.split(".")[0]
                sizes[name] = sizes.get(name, 0) + col.total_compressed_size
    return sizes


def read_manifest(directory: str) -> dict[str, Any] | None:
    """A cache directory's manifest.json (path or URI), or None when missing or unreadable."""
    return read_json(join(directory, "manifest.json"))


def write_manifest(directory: str, manifest: dict[str, Any]) -> None:
    """Write manifest.json under a temporary name, then move it into place."""
    atomic_write_json(join(directory, "manifest.json"), manifest)


def signal_bytes_per_token(top_k: int, hidden_size: int, seq_length: int) -> float:
    """Bytes of teacher signal per token: top-k ids (int32) + logits (float32) + top-k mass (float32),
    plus each KD window's pooled span embedding (float16) spread over the window's tokens."""
    return top_k * (4 + 4) + 4 + hidden_size * 2 / seq_length


def rows_a_run_reads(max_steps: int, examples_per_step: int) -> int:
    """Training rows a run of max_steps reads, with a step of slack (a resumed run re-reads up to a step)."""
    return (max_steps + 1) * examples_per_step


def first_shards(rows_per_shard: dict[int, int], train_shards: list[int], rows: int) -> list[int]:
    """The fewest training shards, taken in ascending order (the order a first pass reads them,
    `pipeline.shard_order`), that hold at least `rows` rows; every shard when the corpus holds fewer."""
    chosen, held = [], 0
    for shard in sorted(train_shards):
        if held >= rows:
            break
        chosen.append(shard)
        held += rows_per_shard.get(shard, 0)
    return chosen


def cached_train_rows(manifest: dict[str, Any]) -> tuple[int, bool]:
    """(training rows a cache holds, whether that is every training example of its corpus). A cache made
    with label.scope=run holds the first shards only; caches made before label.scope held all."""
    rows = sum(int(manifest["expected_rows"][str(s)]) for s in manifest["shards_train"])
    return rows, bool(manifest.get("whole", True))


def check_compatible(manifest: dict[str, Any], identity: dict[str, Any], where: str) -> None:
    """Refuse a cache made from another teacher, tokenizer or corpus than the config names, or in another
    format."""
    if manifest.get("version") != CACHE_VERSION:
        raise GeminiRayError(
            f"the teacher-signal cache at '{where}' is in format {manifest.get('version')}; this gemini-ray reads "
            f"format {CACHE_VERSION}. Run 'gemini-ray label' with this config to make it again."
        )
    made = manifest.get("identity", {})
    for key, what, fix in (
        ("teacher_weights", "teacher", "teacher.model"),
        ("tokenizer_vocab", "tokenizer", "teacher.model"),
        ("corpus", "corpus", "data.path"),
    ):
        if made.get(key) != identity.get(key):
            raise GeminiRayError(
                f"the teacher-signal cache at '{where}' was made by a different {what} than the config names "
                f"({made.get(key, '?')[:12]} vs {str(identity.get(key))[:12]}). Point label.path at a cache made "
                f"from this {fix}, or run 'gemini-ray label' with this config to make one."
            )
    for key in ("seq_length", "span_length", "top_k", "mining_window", "masked", "mlm_probability", "data_seed", "val_fraction",
                "max_val_examples"):
        if made.get(key) != identity.get(key):
            raise GeminiRayError(
                f"the teacher-signal cache at '{where}' was made with {key}={made.get(key)}, the config says "
                f"{identity.get(key)}. Use matching settings or run 'gemini-ray label' again."
            )


class FoundCache(NamedTuple):
    """A complete cache that matches a config: its directory and manifest."""

    directory: str
    manifest: dict[str, Any]


def cache_identity(cfg: Config, source: str, tokenizer: Any, kind: str, revision: str | None = None) -> dict[str, Any]:
    """What the cache key is made of: everything that changes what the teacher says or which rows exist.
    revision: the commit a hub teacher resolved to."""
    from gemini_ray.data.corpus import corpus_signature

    d = cfg.data
    return {
        "teacher_weights": weights_hash(source, revision),
        "tokenizer_vocab": vocab_hash(tokenizer),
        "corpus": corpus_signature(d.path, d.format, d.text_column, d.max_documents),
        "max_val_examples": d.max_val_examples,
        "seq_length": cfg.data.seq_length,
        "span_length": cfg.data.span_length,
        "masked": kind == "masked",
        "mlm_probability": cfg.data.mlm_probability if kind == "masked" else None,
        "data_seed": cfg.data.seed,
        "val_fraction": cfg.data.val_fraction,
        "top_k": cfg.teacher.top_k,
        "max_negatives": cfg.label.max_negatives,
        "mining_window": cfg.mining.window,
        "mining_seed": cfg.mining.seed,
        "block_bytes": int(cfg.label.block_mb * (1 << 20)),
    }


def cache_dir_for(cfg: Config, identity: dict[str, Any]) -> str:
    """Where the cache of these inputs lives: <label.cache_root or <storage_path>/signal_cache>/<key>."""
    root = cfg.label.cache_root or join(cfg.run.storage_path, "signal_cache")
    return join(absolute(root), cache_key(identity))


def find_cache(cfg: Config, identity: dict[str, Any], rows: int | None = None) -> FoundCache | None:
    """A complete cache matching the config (label.path, or the derived location), or None. rows: the
    training rows the run reads (default: this config's run; a search passes its longest trial's): a cache
    labelled for a shorter run (label.scope=run) is refused under label.use=require or label.path, and
    passed over (the teacher runs online) under auto."""
    if cfg.label.use == "never":
        return None
    directory = cfg.label.path or cache_dir_for(cfg, identity)
    manifest = read_manifest(directory)
    if manifest is None or not manifest.get("complete"):
        if cfg.label.path or cfg.label.use == "require":
            raise GeminiRayError(
                f"no complete teacher-signal cache at '{directory}'. Run 'gemini-ray label' with this config first"
                + (" (or set label.use=auto to run the teacher online)." if cfg.label.use == "require" else ".")
            )
        return None
    check_compatible(manifest, identity, directory)
    check_shards(directory, manifest)  # a damaged shard: refused in the driver, before any trial or worker reads it
    k_max = manifest["identity"]["max_negatives"]
    if cfg.loss.num_negatives > k_max:
        raise GeminiRayError(
            f"loss.num_negatives={cfg.loss.num_negatives} exceeds the {k_max} negatives mined into the cache at "
            f"'{directory}'. Use loss.num_negatives <= {k_max}, or label again with label.max_negatives >= "
            f"{cfg.loss.num_negatives}."
        )
    held, whole = cached_train_rows(manifest)
    need = rows if rows is not None else rows_a_run_reads(cfg.train.max_steps, cfg.train.examples_per_step)
    if not whole and need > held:
        text = (f"the teacher-signal cache at '{directory}' holds the first {held} training examples of the corpus "
                "(labelled with label.scope=run for a shorter run); this run reads "
                f"{need} (train.max_steps x examples per step, and a step of slack)")
        fix = ("Run 'gemini-ray label' with this config to add the blocks it lacks (those done are kept), or "
               "label with label.scope=corpus.")
        if cfg.label.path or cfg.label.use == "require":
            raise GeminiRayError(f"{text}. {fix}")
        print(f"[gemini-ray] {text}: not used (distill runs the teacher online instead). {fix}")
        return None
    return FoundCache(directory, manifest)
