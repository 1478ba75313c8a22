"""Make the teacher-signal cache: run the teacher once over a corpus, mine K_max negatives per shard, and
write parquet shards + manifest.json. Used by `gemini-ray label`, and by `tune` and `ablate` when no cache
matches their config yet.

    manifest = make_cache(cfg, session)

Shards are labelled in rounds (label.shards_per_round); a finished round is recorded in the manifest, so
an interrupted run is finished by running it again: complete shards are kept, the rest are redone.

With label.scope=run only the first training shards a run reads are labelled (`cache.first_shards`); the
manifest lists them (`shards_train`) and says whether they are the whole corpus (`whole`). Labelling again
for a longer run adds shards and keeps those done.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any

from gemini_ray.cluster.session import Session
from gemini_ray.config import Config
from gemini_ray.data.cache import CACHE_VERSION, cache_dir_for
from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import absolute, check_writable, join, open_dir
from gemini_ray.training.watch import Progress

if TYPE_CHECKING:
    from gemini_ray.data.corpus_pass import CorpusStats

__all__ = ["make_cache"]


def _check_rows(directory: str, shards: list[int], examples) -> tuple[int, int]:
    """(examples of the given shards missing from the cache, examples in it more than once), by example id."""
    import numpy as np
    import pyarrow.parquet as pq

    from gemini_ray.data.cache import shard_name

    fs, path = open_dir(directory)
    ids = [pq.read_table(f"{path}/{shard_name(i)}", columns=["example_id"], filesystem=fs).column(0).to_numpy()
           for i in shards]
    cached = np.concatenate(ids) if ids else np.array([], dtype=np.int64)
    ids = examples.select_columns(["shard", "example_id"]).to_pandas()
    wanted = np.unique(ids["example_id"].to_numpy()[ids["shard"].isin(shards).to_numpy()])
    unique = np.unique(cached)
    return int(np.setdiff1d(wanted, unique).size), int(cached.size - unique.size)


def _unique_rows_per_shard(examples) -> dict[int, int]:
    """Rows each shard will hold: its distinct example ids (a document repeated in two blocks of the corpus
    gives the same examples twice; the shard keeps one copy). Counted in Ray: one row per shard returns."""
    pairs = examples.select_columns(["shard", "example_id"]).groupby(["shard", "example_id"]).count()
    counts = pairs.groupby("shard").count().to_pandas()
    return {int(r["shard"]): int(r["count()"]) for _, r in counts.iterrows()}


def _check_plan(cfg: Config, stats: CorpusStats) -> None:
    used = stats.documents_used
    if used <= cfg.label.max_negatives:
        raise GeminiRayError(
            f"label.max_negatives={cfg.label.max_negatives} needs more than {cfg.label.max_negatives} usable documents, "
            f"but the corpus gives {used}. Lower label.max_negatives or add documents."
        )


def _new_manifest(cfg: Config, session: Session, stats: CorpusStats, train: list[int], n_train: int, n_val: int,
                  expected: dict[int, int], done: dict[int, Any]) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION, "identity": session.identity, "complete": False,
        "teacher": {"model": cfg.teacher.model, "resolved": session.teacher_source, "kind": session.kind,
                    "parameters": session.teacher_params, "vocab_size": session.teacher_config.vocab_size,
                    "hidden_size": session.teacher_config.hidden_size, "revision": session.teacher.revision,
                    "backend": cfg.teacher.backend},
        "tokenizer": {"name_or_path": session.teacher_source, "vocab_size": len(session.tokenizer)},
        "corpus": {"path": cfg.data.path, **stats.as_dict()},
        "shards_train": train, "shards_val": list(range(n_train, n_train + n_val)),
        "shards_train_all": n_train, "whole": len(train) == n_train, "scope": cfg.label.scope,
        "expected_rows": {str(k): v for k, v in sorted(expected.items())},
        "shards": {str(k): v for k, v in done.items()},
        "config": dataclasses.asdict(cfg),
    }


def _label_rounds(cfg: Config, examples, directory: str, todo: list[int], manifest: dict[str, Any],
                  expected: dict[int, int]) -> None:
    """Label the shards still to do, a round at a time; the manifest records each finished round."""
    from gemini_ray.data.cache import write_manifest
    from gemini_ray.data.pipeline import label_shards

    per_round = max(cfg.label.shards_per_round, cfg.teacher.num_actors)
    progress = Progress(len(todo), "labelling", "shard")
    for r in range(0, len(todo), per_round):
        round_shards = todo[r : r + per_round]
        for rec in label_shards(cfg, examples, directory, round_shards):
            manifest["shards"][str(int(rec["shard"]))] = {k: int(v) for k, v in rec.items()}
        write_manifest(directory, manifest)  # a finished round survives an interruption
        progress.update(len(round_shards), f"shards {round_shards} done, {len(manifest['shards'])}/{len(expected)} in the cache")
    progress.close()


def _sizes(directory: str, shards: list[int], records: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Rows, teacher tokens and bytes on disk per token position: in all, the teacher's top-k signal alone,
    and the K_max negatives' token ids + masks each row carries for the student (parquet, compressed)."""
    from gemini_ray.data.cache import column_bytes, shard_name

    fs, path = open_dir(directory)
    total_bytes = sum(v["bytes"] for v in records.values())
    positions = max(sum(v["positions"] for v in records.values()), 1)
    columns = column_bytes(fs, [f"{path}/{shard_name(i)}" for i in shards])
    signal = sum(columns.get(c, 0) for c in ("topk_ids", "topk_logits", "topk_mass", "teacher_embedding"))
    negatives = sum(columns.get(c, 0) for c in ("neg_input_ids", "neg_attention_mask", "neg_mask"))
    return {"rows": sum(v["rows"] for v in records.values()),
            "teacher_tokens": sum(v["teacher_tokens"] for v in records.values()),
            "bytes": total_bytes, "bytes_per_token": total_bytes / positions,
            "signal_bytes_per_token": signal / positions, "negative_bytes_per_token": negatives / positions,
            "column_bytes": columns}


def _train_shards(cfg: Config, expected: dict[int, int], n_train: int, rows: int | None, train_examples: int
                  ) -> list[int]:
    """The training shards to label: all (label.scope=corpus), or the first that hold `rows` (default: what
    this config's run reads)."""
    from gemini_ray.data.cache import first_shards, rows_a_run_reads

    every = list(range(n_train))
    if cfg.label.scope == "corpus":
        return every
    need = rows if rows is not None else rows_a_run_reads(cfg.train.max_steps, cfg.train.examples_per_step)
    chosen = first_shards(expected, every, need)
    held = sum(expected.get(s, 0) for s in chosen)
    print(f"[gemini-ray] label.scope=run: {len(chosen)} of {n_train} training shards, {held} of the corpus's "
          f"{train_examples} training examples (a run reads {need} with a step of slack)")
    return chosen


def _complete_prefix(train: list[int], n_train: int, complete: set[int]) -> list[int]:
    """The training shards the manifest lists: those labelled for this config, and after them every shard
    already complete from an earlier, longer labelling, in order, up to the first that is not."""
    listed = list(train)
    for shard in range(len(train), n_train):
        if shard not in complete:
            break
        listed.append(shard)
    return listed


def make_cache(cfg: Config, session: Session, t_start: float | None = None, rows: int | None = None
               ) -> dict[str, Any]:
    """Make (or finish, or extend) the cache for this config; returns its manifest. t_start: perf_counter()
    when the command started (the manifest's wall_time_s.total_s; default: now). rows: with label.scope=run,
    the training rows to label (default: what this config's run reads; a search passes its longest trial's)."""
    import ray

    from gemini_ray.data.cache import write_manifest
    from gemini_ray.data.corpus_pass import build_examples
    from gemini_ray.data.pipeline import assign_shards, teacher_token_counter
    from gemini_ray.process_memory import peak_rss_mib

    t_start = t_start or time.perf_counter()
    directory, fs, path = _cache_location(cfg, session)
    t0 = time.perf_counter()
    examples, stats = build_examples(cfg, session.teacher_source, session.kind)  # the one whole pass
    seconds = {**session.seconds, "tokenize_s": time.perf_counter() - t0}
    print(stats.line(), flush=True)
    _check_plan(cfg, stats)
    n_train = max(1, math.ceil(stats.train_examples / cfg.mining.window))
    n_val = math.ceil(stats.val_examples / cfg.mining.window) if stats.val_examples else 0
    examples = assign_shards(examples, n_train, n_val).materialize()
    expected = _unique_rows_per_shard(examples)
    train = _train_shards(cfg, expected, n_train, rows, stats.train_examples)
    wanted = {s for s in expected if s in set(train) or s >= n_train}  # the chosen training shards, every held-out one
    done = _shards_kept(directory, fs, path, session, expected)
    counter = teacher_token_counter()
    tokens_before = ray.get(counter.total.remote())
    train = _complete_prefix(train, n_train, set(done))
    manifest = _new_manifest(cfg, session, stats, train, n_train, n_val, expected, done)
    write_manifest(directory, manifest)
    t_label = time.perf_counter()
    _label_rounds(session.pinned(cfg), examples, directory, sorted(wanted - set(done)), manifest, expected)
    listed = [s for s in train + manifest["shards_val"] if s in expected]
    lost, duplicated = _check_labelled(directory, fs, path, listed, examples, expected)
    manifest.update(
        complete=True, rows_lost=lost, rows_duplicated=duplicated,
        **_sizes(directory, listed, {str(s): manifest["shards"][str(s)] for s in listed}),
        teacher_tokens_this_run=ray.get(counter.total.remote()) - tokens_before,
        driver_peak_memory_mib=round(peak_rss_mib(), 1),
        wall_time_s={**seconds, "label_s": time.perf_counter() - t_label,
                     "total_s": time.perf_counter() - t_start},
    )
    write_manifest(directory, manifest)
    print(f"[gemini-ray] cache: {directory} ({manifest['rows']} rows, {manifest['teacher_tokens']} teacher tokens, "
          f"{manifest['bytes_per_token']:.0f} bytes/token on disk: {manifest['signal_bytes_per_token']:.0f} teacher "
          f"top-k signal, {manifest['negative_bytes_per_token']:.0f} negatives' token ids)")
    return manifest


def _cache_location(cfg: Config, session: Session) -> tuple[str, Any, str]:
    """Where the cache goes (label.path, else the config's place under label.cache_root or the storage path),
    checked writable and created, and checked to fit the nodes before the corpus pass starts."""
    from gemini_ray.cluster.placement import alive_nodes, check_fits, demands

    directory = absolute(cfg.label.path) if cfg.label.path else cache_dir_for(cfg, session.identity)
    key = "label.path" if cfg.label.path else "label.cache_root" if cfg.label.cache_root else "run.storage_path"
    check_writable(directory, key)  # before the corpus pass (`tune` reaches here without the CLI's preflight)
    if cfg.run.check_resources:  # a teacher actor no node can hold would wait forever
        check_fits(demands(cfg, cached=False, trainer=False), alive_nodes())
    fs, path = open_dir(directory)
    try:
        fs.create_dir(path, recursive=True)
    except OSError as exc:
        raise GeminiRayError(f"cannot write the cache at '{directory}': {exc}. Choose a writable {key}.") from None
    return directory, fs, path


def _shards_kept(directory: str, fs: Any, path: str, session: Session, expected: dict[int, int]) -> dict[int, Any]:
    """The shards an earlier `label` of the same inputs completed, by number: their manifest records. A shard
    cut short or overwritten since is labelled again; a cache of other inputs is refused."""
    from gemini_ray.data.cache import read_manifest, shard_is_complete, shard_name

    old = read_manifest(directory) or {}
    if old and old.get("identity") != session.identity:
        raise GeminiRayError(f"'{directory}' holds a cache made from other inputs. Choose another label.path.")
    records = {int(k): v for k, v in old.get("shards", {}).items()}
    done = {i: records[i] for i, n in expected.items()
            if i in records and shard_is_complete(fs, join(path, shard_name(i)), n, records[i].get("bytes"))}
    if done:
        print(f"[gemini-ray] cache {directory}: {len(done)} of {len(expected)} shards already complete, kept")
    return done


def _check_labelled(directory: str, fs: Any, path: str, listed: list[int], examples: Any,
                    expected: dict[int, int]) -> tuple[int, int]:
    """Every listed shard is whole and holds each of its examples once: (rows lost, rows duplicated), both 0."""
    from gemini_ray.data.cache import shard_is_complete, shard_name

    bad = [i for i in listed if not shard_is_complete(fs, join(path, shard_name(i)), expected[i])]
    if bad:
        raise GeminiRayError(f"cache shards {bad} at '{directory}' are incomplete after labelling; run label again.")
    lost, duplicated = _check_rows(directory, listed, examples)
    if lost or duplicated:  # a retried teacher batch must replace, never add to or drop from, a shard
        raise GeminiRayError(f"the cache at '{directory}' lost {lost} and duplicated {duplicated} examples; "
                             "delete it and run 'gemini-ray label' again.")
    return lost, duplicated
