"""`gemini-ray label`: run the teacher once over a corpus and keep its signal in a parquet cache.

    gemini-ray label                         # the demo corpus and teacher
    gemini-ray label --config my.yaml label.max_negatives=16

Writes <label.cache_root>/<key>/shard-NNNNN.parquet and manifest.json; `distill` and `tune` read it when
it matches their config. Interrupted? Run the same command again: finished shards are kept.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from gemini_ray.config import Config
from gemini_ray.errors import GeminiRayError

__all__ = ["Setup", "setup", "label", "cache_dir_for", "find_cache", "init_ray"]


@dataclass
class Setup:
    """Everything the teacher side resolved: shared by label, distill and tune."""

    teacher_source: str
    kind: str
    tokenizer: Any
    teacher_config: Any
    teacher_params: int
    examples: Any  # ray.data.Dataset with a 'split' column
    stats: Any  # pipeline.CorpusStats
    identity: dict[str, Any]
    seconds: dict[str, float]


def init_ray(cfg: Config) -> None:
    import ray
    import ray.data

    if not ray.is_initialized():
        address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, log_to_driver=True)  # a local head binds to 127.0.0.1, token auth on
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the trainer prints its own progress lines
    ctx.print_on_execution_start = False


def setup(cfg: Config, teacher_model_needed: bool = False):
    """Resolve the teacher, read and pair the corpus, and compute the cache identity.

    Returns (Setup, teacher model or None)."""
    from gemini_ray.cache import vocab_hash, weights_hash
    from gemini_ray.models import count_parameters, load_teacher, load_tokenizer, resolve_teacher
    from gemini_ray.pipeline import build_examples
    from gemini_ray.placement import alive_nodes, check_shared_storage

    seconds = {}
    t0 = time.perf_counter()
    source = resolve_teacher(cfg.teacher)
    tokenizer = load_tokenizer(source, cfg.teacher.trust_remote_code)
    teacher, kind = load_teacher(source, cfg.teacher.kind, cfg.teacher.trust_remote_code)
    vocab = teacher.config.vocab_size
    if cfg.teacher.top_k > vocab:
        raise GeminiRayError(f"teacher.top_k={cfg.teacher.top_k} exceeds the teacher's vocabulary ({vocab} tokens). "
                             f"Choose teacher.top_k <= {vocab}; 16-64 keeps the signal small.")
    params = count_parameters(teacher)
    seconds["teacher_setup_s"] = time.perf_counter() - t0

    init_ray(cfg)
    check_shared_storage(cfg, len(alive_nodes()))
    t0 = time.perf_counter()
    examples, stats = build_examples(cfg, source, kind)
    seconds["tokenize_s"] = time.perf_counter() - t0
    print(f"[gemini-ray] corpus: {stats.documents} documents -> {stats.examples} examples "
          f"({stats.train_examples} train, {stats.val_examples} held out from {stats.val_documents} documents; "
          f"skipped: {stats.skipped_too_short} too short, {stats.skipped_empty} empty, "
          f"{stats.skipped_non_utf8} not UTF-8, {stats.duplicate_documents} duplicates)", flush=True)
    identity = {
        "teacher_weights": weights_hash(source),
        "tokenizer_vocab": vocab_hash(tokenizer),
        "corpus": stats.fingerprint,
        "span_length": cfg.data.span_length,
        "masked": kind == "masked",
        "mlm_probability": cfg.data.mlm_probability if kind == "masked" else None,
        "data_seed": cfg.data.seed,
        "val_fraction": cfg.data.val_fraction,
        "top_k": cfg.teacher.top_k,
        "max_negatives": cfg.label.max_negatives,
        "mining_window": cfg.mining.window,
        "mining_seed": cfg.mining.seed,
    }
    result = Setup(source, kind, tokenizer, teacher.config, params, examples, stats, identity, seconds)
    return result, (teacher if teacher_model_needed else None)


def cache_dir_for(cfg: Config, identity: dict[str, Any]) -> str:
    from gemini_ray.cache import cache_key

    root = cfg.label.cache_root or f"{cfg.run.storage_path.rstrip('/')}/signal_cache"
    if "://" not in root:
        root = os.path.abspath(os.path.expanduser(root))
    return f"{root.rstrip('/')}/{cache_key(identity)}"


def find_cache(cfg: Config, s: Setup) -> tuple[str, dict] | None:
    """A complete cache matching the config (label.path, or the derived location), or None."""
    from gemini_ray.cache import check_compatible, open_dir, read_manifest

    if cfg.label.use == "never":
        return None
    directory = cfg.label.path or cache_dir_for(cfg, s.identity)
    fs, path = open_dir(directory)
    manifest = read_manifest(fs, path)
    if manifest is None or not manifest.get("complete"):
        if cfg.label.path or cfg.label.use == "require":
            raise GeminiRayError(
                f"no complete teacher-signal cache at '{directory}'. Run 'gemini-ray label' with this config first"
                + (" (or set label.use=auto to run the teacher online)." if cfg.label.use == "require" else ".")
            )
        return None
    check_compatible(manifest, s.identity, directory)
    k_max = manifest["identity"]["max_negatives"]
    if cfg.loss.num_negatives > k_max:
        raise GeminiRayError(
            f"loss.num_negatives={cfg.loss.num_negatives} exceeds the {k_max} negatives mined into the cache at "
            f"'{directory}'. Use loss.num_negatives <= {k_max}, or label again with label.max_negatives >= "
            f"{cfg.loss.num_negatives}."
        )
    return directory, manifest


def _check_rows(fs, path: str, shards: list[int], examples) -> tuple[int, int]:
    """(examples missing from the cache, examples in it more than once), by example id."""
    import numpy as np
    import pyarrow.parquet as pq

    from gemini_ray.cache import shard_name

    ids = [pq.read_table(f"{path}/{shard_name(i)}", columns=["example_id"], filesystem=fs).column(0).to_numpy()
           for i in shards]
    cached = np.concatenate(ids) if ids else np.array([], dtype=np.int64)
    wanted = np.unique(examples.select_columns(["example_id"]).to_pandas()["example_id"].to_numpy())
    unique = np.unique(cached)
    return int(np.setdiff1d(wanted, unique).size), int(cached.size - unique.size)


def label(cfg: Config) -> dict[str, Any]:
    """Make (or finish) the cache for this config; returns its manifest."""
    import ray

    from gemini_ray.cache import column_bytes, open_dir, read_manifest, shard_is_complete, shard_name, write_manifest
    from gemini_ray.pipeline import assign_shards, label_shards, teacher_token_counter

    t_start = time.perf_counter()
    s, _ = setup(cfg)
    stats = s.stats
    if cfg.run.check_resources:  # a teacher actor no node can hold would wait forever
        from gemini_ray.placement import alive_nodes, check_fits, demands

        check_fits(demands(cfg, cached=False, trainer=False), alive_nodes())
    if stats.documents_used <= cfg.label.max_negatives:
        raise GeminiRayError(
            f"label.max_negatives={cfg.label.max_negatives} needs more than {cfg.label.max_negatives} usable documents, "
            f"but the corpus gives {stats.documents_used}. Lower label.max_negatives or add documents."
        )
    directory = cfg.label.path or cache_dir_for(cfg, s.identity)
    fs, path = open_dir(directory)
    try:
        fs.create_dir(path, recursive=True)
    except OSError as exc:
        raise GeminiRayError(f"cannot write the cache at '{directory}': {exc}. Choose a writable label.cache_root.") from None

    window = cfg.mining.window
    n_train = max(1, math.ceil(stats.train_examples / window))
    n_val = math.ceil(stats.val_examples / window) if stats.val_examples else 0
    examples = assign_shards(s.examples, n_train, n_val).materialize()
    counts = examples.groupby("shard").count().to_pandas()
    expected = {int(r["shard"]): int(r["count()"]) for _, r in counts.iterrows()}

    old = read_manifest(fs, path) or {}
    if old and old.get("identity") != s.identity:
        raise GeminiRayError(f"'{directory}' holds a cache made from other inputs. Choose another label.path.")
    records = {int(k): v for k, v in old.get("shards", {}).items()}
    done = [i for i in expected if i in records and shard_is_complete(fs, f"{path}/{shard_name(i)}", expected[i])]
    todo = sorted(set(expected) - set(done))
    if done:
        print(f"[gemini-ray] cache {directory}: {len(done)} of {len(expected)} shards already complete, kept")
    counter = teacher_token_counter()
    tokens_before = ray.get(counter.total.remote())
    manifest = {
        "version": 1, "identity": s.identity, "complete": False,
        "teacher": {"model": cfg.teacher.model, "resolved": s.teacher_source, "kind": s.kind,
                    "parameters": s.teacher_params, "vocab_size": s.teacher_config.vocab_size,
                    "hidden_size": s.teacher_config.hidden_size},
        "tokenizer": {"name_or_path": s.teacher_source, "vocab_size": len(s.tokenizer)},
        "corpus": {"path": cfg.data.path, **stats.as_dict()},
        "shards_train": list(range(n_train)), "shards_val": list(range(n_train, n_train + n_val)),
        "expected_rows": {str(k): v for k, v in sorted(expected.items())},
        "shards": {str(k): v for k, v in records.items() if k in done},
        "config": dataclasses.asdict(cfg),
    }
    write_manifest(fs, path, manifest)
    t_label = time.perf_counter()
    per_round = max(cfg.label.shards_per_round, cfg.teacher.num_actors)
    for r in range(0, len(todo), per_round):
        round_shards = todo[r : r + per_round]
        for rec in label_shards(cfg, examples, directory, round_shards):
            manifest["shards"][str(int(rec["shard"]))] = {k: int(v) for k, v in rec.items()}
        write_manifest(fs, path, manifest)  # a finished round survives an interruption
        print(f"[gemini-ray] labelled shards {round_shards} ({len(manifest['shards'])}/{len(expected)})", flush=True)
    shards = manifest["shards"]
    bad = [i for i in expected if not shard_is_complete(fs, f"{path}/{shard_name(i)}", expected[i])]
    if bad:
        raise GeminiRayError(f"cache shards {bad} at '{directory}' are incomplete after labelling; run label again.")
    lost, duplicated = _check_rows(fs, path, sorted(expected), examples)
    if lost or duplicated:  # a retried teacher batch must replace, never add to or drop from, a shard
        raise GeminiRayError(f"the cache at '{directory}' lost {lost} and duplicated {duplicated} examples; "
                             "delete it and run 'gemini-ray label' again.")
    total_bytes = sum(v["bytes"] for v in shards.values())
    positions = sum(v["positions"] for v in shards.values())
    tokens = sum(v["teacher_tokens"] for v in shards.values())
    columns = column_bytes(fs, [f"{path}/{shard_name(i)}" for i in sorted(expected)])
    signal = sum(columns.get(c, 0) for c in ("topk_ids", "topk_logits", "topk_mass"))
    negatives = sum(columns.get(c, 0) for c in ("neg_input_ids", "neg_attention_mask", "neg_mask"))
    manifest.update(
        complete=True,
        rows=sum(v["rows"] for v in shards.values()),
        rows_lost=lost, rows_duplicated=duplicated,
        teacher_tokens=tokens,
        teacher_tokens_this_run=ray.get(counter.total.remote()) - tokens_before,
        bytes=total_bytes,
        # per anchor/positive token position, on disk (parquet, compressed): everything, the teacher's
        # top-k signal alone, and the K_max negatives' token ids + masks each row carries for the student
        bytes_per_token=total_bytes / max(positions, 1),
        signal_bytes_per_token=signal / max(positions, 1),
        negative_bytes_per_token=negatives / max(positions, 1),
        column_bytes=columns,
        wall_time_s={**s.seconds, "label_s": time.perf_counter() - t_label, "total_s": time.perf_counter() - t_start},
    )
    write_manifest(fs, path, manifest)
    print(f"[gemini-ray] cache: {directory} ({manifest['rows']} rows, {tokens} teacher tokens, "
          f"{manifest['bytes_per_token']:.0f} bytes/token on disk: {manifest['signal_bytes_per_token']:.0f} teacher "
          f"top-k signal, {manifest['negative_bytes_per_token']:.0f} negatives' token ids)")
    return manifest
