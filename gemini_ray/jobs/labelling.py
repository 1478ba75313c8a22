"""Make the teacher-signal cache: run the teacher once over a corpus, mine K_max negatives within windows of
rows, and write parquet shards + manifest.json. Used by `gemini-ray label`, and by `tune` and `ablate` when
no cache matches their config yet.

    manifest = make_cache(cfg, session)

The corpus is cut into blocks (`gemini_ray.data.blocks`, label.block_mb each) and labelled in one streaming
pass (`gemini_ray.data.label_pass`): the teacher pool starts once, nothing is materialised, and the driver
holds one small record per block. Each finished block leaves its shards and its record on disk, so a run
killed at any point is finished by running it again: the blocks done are kept, the teacher labels the rest.

With label.scope=run only the first blocks, in corpus order, that hold the training rows a run reads are
labelled; the manifest lists their shards (`shards_train`) and says whether they are the whole corpus
(`whole`). Labelling again for a longer run adds blocks and keeps those done.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from gemini_ray.cluster.session import Session
from gemini_ray.config import Config
from gemini_ray.data.cache import CACHE_VERSION, cache_dir_for, cache_key
from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import absolute, check_writable, open_dir

__all__ = ["make_cache"]

MIB = 1 << 20
PASS_ATTEMPTS = 3
"""Passes over the blocks still to do before a run gives up (a block can stay unfinished when the writer
actor restarts and loses the rows it held)."""


def make_cache(cfg: Config, session: Session, t_start: float | None = None, rows: int | None = None
               ) -> dict[str, Any]:
    """Make (or finish, or extend) the cache for this config; returns its manifest. t_start: perf_counter()
    when the command started (the manifest's wall_time_s.total_s; default: now). rows: with label.scope=run,
    the training rows to label (default: what this config's run reads; a search passes its longest trial's)."""
    import ray

    from gemini_ray.data.blocks import changed_files
    from gemini_ray.data.cache import write_manifest
    from gemini_ray.data.corpus_pass import read_errors
    from gemini_ray.data.pipeline import teacher_token_counter
    from gemini_ray.process_memory import peak_rss_mib

    t_start = t_start or time.perf_counter()
    directory, fs, path, created = _cache_location(cfg, session)
    key = cache_key(session.identity)
    _refuse_other_cache(directory, session)
    t0 = time.perf_counter()
    done: dict[int, dict] = {}
    try:
        with read_errors(cfg):
            blocks = _plan(cfg, session)
            seconds = {**session.seconds, "plan_s": time.perf_counter() - t0}
            done = _blocks_done(directory, fs, path, key, blocks)
            counter = teacher_token_counter()
            tokens_before, starts_before = ray.get([counter.total.remote(), counter.starts.remote()])
            write_manifest(directory, {"version": CACHE_VERSION, "identity": session.identity, "complete": False,
                                       "blocks": {"count": len(blocks), "block_mb": cfg.label.block_mb}})
            t_label = time.perf_counter()
            progress = _label(cfg, session, blocks, done, directory, key, rows)
    except GeminiRayError:
        if created and not done:  # nothing of this run is worth keeping: leave nothing half-written
            _remove(created)
        raise
    changed = changed_files(blocks)
    if changed:
        raise GeminiRayError(
            f"the corpus changed while it was being labelled: {', '.join(changed[:5])} "
            f"{'is' if len(changed) == 1 else 'are'} not what {'it was' if len(changed) == 1 else 'they were'} when "
            "the pass began. Let whatever writes the corpus finish (or copy it somewhere stable) and run the "
            "command again; the blocks read from the files as they are now are kept.")
    manifest = _manifest(cfg, session, blocks, done, directory, rows)
    lost, duplicated = _check_in_ray(directory, manifest)
    tokens, starts = ray.get([counter.total.remote(), counter.starts.remote()])
    manifest.update(
        complete=True, rows_lost=lost, rows_duplicated=duplicated,
        teacher_tokens_this_run=tokens - tokens_before, teacher_actor_starts=starts - starts_before,
        progress=progress, driver_peak_memory_mib=round(peak_rss_mib(), 1),
        wall_time_s={**seconds, "label_s": time.perf_counter() - t_label, "total_s": time.perf_counter() - t_start},
    )
    write_manifest(directory, manifest)
    print(f"[gemini-ray] cache: {directory} ({manifest['rows']} rows, {manifest['teacher_tokens']} teacher tokens, "
          f"{manifest['bytes_per_token']:.0f} bytes/token on disk: {manifest['signal_bytes_per_token']:.0f} teacher "
          f"top-k signal, {manifest['negative_bytes_per_token']:.0f} negatives' token ids)")
    return manifest


# --------------------------------------------------------------------------- the pass


def _plan(cfg: Config, session: Session) -> list[dict]:
    """The corpus's blocks (`plan_blocks`; cut to data.max_documents), each marked whether its held-out rows
    are labelled: those of the first blocks that hold data.max_val_examples of them."""
    from gemini_ray.data.blocks import plan_blocks
    from gemini_ray.data.label_pass import held_out_blocks, limit_documents

    blocks = plan_blocks(cfg.data, int(cfg.label.block_mb * MIB))
    if cfg.data.max_documents:
        blocks = limit_documents(blocks, cfg.data.max_documents, cfg.data)
    held = held_out_blocks(cfg, blocks, session.teacher_source, session.kind)
    if cfg.data.val_fraction > 0:
        print(f"[gemini-ray] the first {held} of {len(blocks)} blocks hold the {cfg.data.max_val_examples} held-out "
              "examples scored (data.max_val_examples): later blocks' held-out examples are not labelled", flush=True)
    return [{**b, "held_out": b["index"] < held} for b in blocks]


def _label(cfg: Config, session: Session, blocks: list[dict], done: dict[int, dict], directory: str, key: str,
           rows: int | None) -> dict[str, Any]:
    """Label the blocks this config needs that are not done (updating `done`), in one streaming pass (with
    label.scope=run, a further pass when the first blocks held fewer rows than the run reads). Returns
    what the progress line last said."""
    n = len(blocks)
    need, cap = _rows_wanted(cfg, rows)
    wanted = n if cfg.label.scope == "corpus" else min(n, max(cfg.teacher.num_actors, 1))
    started, tally = time.perf_counter(), {"rows": 0, "teacher_tokens": 0, "bytes": 0, "blocks": 0}
    while True:
        for attempt in range(PASS_ATTEMPTS):
            todo = [b for b in blocks[:wanted] if b["index"] not in done]
            if not todo:
                break
            if attempt:  # the writer lost a block's rows (its actor restarted): those blocks again
                print(f"[gemini-ray] {len(todo)} blocks did not finish in the pass: labelling them again", flush=True)
            _pass(cfg, session, todo, done, directory, key, n, tally, started)
        if wanted >= n:
            break
        train, val = _held(done, wanted, n)
        if train >= need and val >= cap:
            break
        # rows per block so far: how many blocks the run needs
        wanted = min(n, max(wanted + 1, math.ceil(1.1 * need * wanted / max(train, 1)),
                            math.ceil(1.1 * cap * wanted / max(val, 1))))
    seconds = time.perf_counter() - started
    return {**tally, "seconds": round(seconds, 2),
            "tokens_per_s": round(tally["teacher_tokens"] / seconds, 1) if seconds > 0 else 0.0,
            "rows_per_s": round(tally["rows"] / seconds, 1) if seconds > 0 else 0.0}


def _pass(cfg: Config, session: Session, todo: list[dict], done: dict[int, dict], directory: str, key: str, n: int,
          tally: dict[str, int], started: float) -> None:
    """One streaming pass over the blocks to do, with a progress line that updates as each is written."""
    from gemini_ray.data.blocks import corpus_bytes
    from gemini_ray.data.cache import read_block_record
    from gemini_ray.data.label_pass import label_blocks
    from gemini_ray.training.watch import Progress

    size = corpus_bytes(todo)
    print(f"[gemini-ray] labelling {len(todo)} of the corpus's {n} blocks ({size / MIB:,.1f} MiB; "
          f"{len(done)} done before)", flush=True)
    bar = Progress(size, "labelling", "B", scaled=True)
    for record in label_blocks(session.pinned(cfg), todo, session.teacher_source, session.kind, directory, key, n):
        done[record["block"]] = read_block_record(directory, record["block"])
        for k in ("rows", "teacher_tokens", "bytes"):
            tally[k] += record[k]
        tally["rows"] += record["val_rows"]
        tally["blocks"] += 1
        rate = tally["teacher_tokens"] / max(time.perf_counter() - started, 1e-9)
        bar.update(record["bytes"], f"{tally['rows']:,} rows, {tally['teacher_tokens']:,} teacher tokens, "
                                    f"{rate:,.0f} tokens/s")
    bar.close()
    for b in todo:  # blocks without examples: their record comes from their tokenize task
        if b["index"] not in done:
            record = read_block_record(directory, b["index"])
            if record is not None and not record.get("shards"):
                done[b["index"]] = record


def _rows_wanted(cfg: Config, rows: int | None) -> tuple[int, int]:
    """(training rows, held-out rows) the labelled blocks must hold under label.scope=run."""
    from gemini_ray.data.cache import rows_a_run_reads

    need = rows if rows is not None else rows_a_run_reads(cfg.train.max_steps, cfg.train.examples_per_step)
    return need, cfg.data.max_val_examples if cfg.data.val_fraction > 0 else 0


def _held(done: dict[int, dict], prefix: int, n: int) -> tuple[int, int]:
    """(training rows, held-out rows) of the first `prefix` blocks (those done)."""
    train = val = 0
    for i in range(prefix):
        for shard, rec in (done.get(i) or {}).get("shards", {}).items():
            if int(shard) < n:
                train += rec["rows"]
            else:
                val += rec["rows"]
    return train, val


def _done_prefix(done: dict[int, dict], n: int) -> int:
    """How many blocks, from the first, are done (the blocks a manifest can list)."""
    m = 0
    while m < n and m in done:
        m += 1
    return m


# --------------------------------------------------------------------------- the manifest


def _manifest(cfg: Config, session: Session, blocks: list[dict], done: dict[int, dict], directory: str,
              rows: int | None) -> dict[str, Any]:
    """The manifest of the blocks done from the first on (under label.scope=corpus: every block)."""
    from gemini_ray.data.blocks import corpus_bytes
    from gemini_ray.data.corpus_pass import CorpusStats, _check_corpus, fingerprint_of_parts

    n = len(blocks)
    listed = _done_prefix(done, n)
    if cfg.label.scope == "corpus" and listed < n:
        raise GeminiRayError(f"blocks {sorted(set(range(n)) - set(done))[:10]} of the corpus were not labelled; "
                             "run 'gemini-ray label' again: it labels only those.")
    records = [done[i] for i in range(listed)]
    stats = CorpusStats()
    for r in records:
        for k, v in r["counts"].items():
            setattr(stats, k, getattr(stats, k) + v)
    stats.fingerprint = fingerprint_of_parts([r["fingerprint"] for r in records])
    stats.tokenize_processes = len({r.get("pid") for r in records})
    _check_corpus(cfg, stats)
    _check_plan(cfg, stats)
    shards = {int(s): rec for r in records for s, rec in r.get("shards", {}).items()}
    train = sorted(s for s in shards if s < n)
    val = sorted(s for s in shards if s >= n)  # the first blocks' held-out rows; a run scores the first val_rows
    val_rows = min(sum(shards[s]["rows"] for s in val), cfg.data.max_val_examples)
    stats.val_examples_dropped, stats.val_examples = stats.val_examples - val_rows, val_rows
    listed_shards = train + val
    print(stats.line(), flush=True)
    return {
        "version": CACHE_VERSION, "identity": session.identity, "complete": False,
        "teacher": {"model": cfg.teacher.model, "resolved": session.teacher_source, "kind": session.kind,
                    "parameters": session.teacher_params, "vocab_size": session.teacher_config.vocab_size,
                    "hidden_size": session.teacher_config.hidden_size, "revision": session.teacher.revision,
                    "backend": cfg.teacher.backend},
        "tokenizer": {"name_or_path": session.teacher_source, "vocab_size": len(session.tokenizer)},
        "corpus": {"path": cfg.data.path, **stats.as_dict()},
        "blocks": {"count": n, "labelled": listed, "block_mb": cfg.label.block_mb, "bytes": corpus_bytes(blocks),
                   "bytes_labelled": corpus_bytes(blocks[:listed])},
        "shards_train": train, "shards_val": val, "val_rows": val_rows,
        "shards_train_all": n, "whole": listed == n, "scope": cfg.label.scope,
        "expected_rows": {str(s): shards[s]["rows"] for s in listed_shards},
        "shards": {str(s): shards[s] for s in listed_shards},
        **_sizes(directory, listed_shards, shards),
        "config": dataclasses.asdict(cfg),
    }


def _check_plan(cfg: Config, stats) -> None:
    used = stats.documents_used
    if used <= cfg.label.max_negatives:
        raise GeminiRayError(
            f"label.max_negatives={cfg.label.max_negatives} needs more than {cfg.label.max_negatives} usable documents, "
            f"but the corpus gives {used}. Lower label.max_negatives or add documents."
        )


def _sizes(directory: str, listed: list[int], shards: dict[int, dict[str, int]]) -> dict[str, Any]:
    """Rows, teacher tokens and bytes on disk per token position: in all, the teacher's top-k signal alone,
    and the K_max negatives' token ids + masks each row carries for the student (parquet, compressed)."""
    from gemini_ray.data.cache import column_bytes, shard_name

    fs, path = open_dir(directory)
    records = [shards[s] for s in listed]
    total_bytes = sum(v["bytes"] for v in records)
    positions = max(sum(v["positions"] for v in records), 1)
    columns = column_bytes(fs, [f"{path}/{shard_name(i)}" for i in listed])
    signal = sum(columns.get(c, 0) for c in ("topk_ids", "topk_logits", "topk_mass", "teacher_embedding"))
    negatives = sum(columns.get(c, 0) for c in ("neg_input_ids", "neg_attention_mask", "neg_mask"))
    return {"rows": sum(v["rows"] for v in records),
            "teacher_tokens": sum(v["teacher_tokens"] for v in records),
            "bytes": total_bytes, "bytes_per_token": total_bytes / positions,
            "signal_bytes_per_token": signal / positions, "negative_bytes_per_token": negatives / positions,
            "column_bytes": columns}


def _check_in_ray(directory: str, manifest: dict[str, Any]) -> tuple[int, int]:
    """Every listed shard holds each of its rows once, in order: (rows lost, rows duplicated), both 0, counted
    by Ray tasks that read each shard's example ids (nothing per row reaches the driver)."""
    import ray.data

    from gemini_ray.data.budgets import LIGHT_CPUS

    listed = manifest["shards_train"] + manifest["shards_val"]
    if not listed:
        return 0, 0
    items = [{"shard": s, "expected": manifest["expected_rows"][str(s)]} for s in listed]
    checked = ray.data.from_items(items, override_num_blocks=min(len(items), 64)).map_batches(
        _check_shards, fn_kwargs={"directory": directory}, batch_format="numpy", num_cpus=LIGHT_CPUS)
    lost = duplicated = 0
    for batch in checked.iter_batches(batch_size=None, batch_format="numpy"):  # two numbers per task
        lost, duplicated = lost + int(batch["lost"].sum()), duplicated + int(batch["duplicated"].sum())
    if lost or duplicated:  # a retried teacher batch must replace, never add to or drop from, a block
        raise GeminiRayError(f"the cache at '{directory}' lost {lost} and duplicated {duplicated} rows; "
                             "delete it and run 'gemini-ray label' again.")
    return lost, duplicated


def _check_shards(batch: dict[str, Any], directory: str) -> dict[str, Any]:
    import numpy as np
    import pyarrow.parquet as pq

    from gemini_ray.data.cache import shard_name

    fs, path = open_dir(directory)
    lost, duplicated = [], []  # per task: its shards' sums
    for shard, expected in zip(batch["shard"].tolist(), batch["expected"].tolist()):
        table = pq.read_table(f"{path}/{shard_name(shard)}", columns=["example_id", "row"], filesystem=fs)
        ids, row = table.column("example_id").to_numpy(), table.column("row").to_numpy()
        unique = len(np.unique(ids))
        lost.append(max(expected - unique, 0) + int(not np.array_equal(row, np.arange(len(row)))))
        duplicated.append(len(ids) - unique)
    return {"lost": np.array([sum(lost)], dtype=np.int64), "duplicated": np.array([sum(duplicated)], dtype=np.int64)}


# --------------------------------------------------------------------------- where, and what is there


def _cache_location(cfg: Config, session: Session) -> tuple[str, Any, str, str | None]:
    """Where the cache goes (label.path, else the config's place under label.cache_root or the storage path),
    checked writable and created, and checked to fit the nodes before the pass starts; and the topmost
    folder this run created for it (None: it existed, or a URI)."""
    from gemini_ray.cluster.placement import alive_nodes, check_fits, demands

    directory = absolute(cfg.label.path) if cfg.label.path else cache_dir_for(cfg, session.identity)
    key = "label.path" if cfg.label.path else "label.cache_root" if cfg.label.cache_root else "run.storage_path"
    check_writable(directory, key)  # before the pass (`tune` reaches here without the CLI's preflight)
    if cfg.run.check_resources:  # a teacher actor no node can hold would wait forever
        check_fits(demands(cfg, cached=False, trainer=False), alive_nodes())
    fs, path = open_dir(directory)
    created = _first_missing(directory)
    try:
        fs.create_dir(f"{path}/blocks", recursive=True)
    except OSError as exc:
        raise GeminiRayError(f"cannot write the cache at '{directory}': {exc}. Choose a writable {key}.") from None
    return directory, fs, path, created


def _first_missing(directory: str) -> str | None:
    """The topmost folder on the way to a local `directory` that does not exist yet (None: it exists, or a URI)."""
    from pathlib import Path

    from gemini_ray.paths import is_uri

    if is_uri(directory):
        return None
    missing = None
    for folder in [Path(directory), *Path(directory).parents]:
        if folder.exists():
            return missing
        missing = str(folder)
    return missing


def _remove(directory: str) -> None:
    from gemini_ray.paths import remove_tree

    try:
        remove_tree(directory)
    except OSError:
        pass


def _refuse_other_cache(directory: str, session: Session) -> None:
    """Refuse a directory that holds a cache of other inputs, or one in another format (finished or not)."""
    from gemini_ray.data.cache import read_manifest

    old = read_manifest(directory) or {}
    if old and old.get("version") != CACHE_VERSION:
        state = "a cache" if old.get("complete") else "a half-written cache"
        raise GeminiRayError(
            f"'{directory}' holds {state} in format {old.get('version')}; this gemini-ray writes format "
            f"{CACHE_VERSION}, whose shards are cut differently, so none of it can be kept. Delete '{directory}' "
            "or choose another label.path, and run 'gemini-ray label' again.")
    if old and old.get("identity") != session.identity:
        made, now = old.get("identity", {}), session.identity
        differ = sorted(k for k in set(made) | set(now) if made.get(k) != now.get(k))
        raise GeminiRayError(
            f"'{directory}' holds a cache made from other inputs (they differ in {', '.join(differ) or 'format'}"
            f"{': another corpus' if 'corpus' in differ else ''}). Choose another label.path (or leave it unset: "
            "each config's cache gets a folder of its own under label.cache_root).")


def _blocks_done(directory: str, fs: Any, path: str, key: str, blocks: list[dict]) -> dict[int, dict]:
    """The blocks an earlier `label` of the same inputs finished, by index: their records. A block whose
    shard was cut short or overwritten since is labelled again."""
    from gemini_ray.data.cache import block_problem, read_block_record

    done, redo = {}, []
    for b in blocks:
        record = read_block_record(directory, b["index"])
        if record is None:
            continue
        if record.get("key") != key:
            raise GeminiRayError(
                f"'{directory}' holds blocks labelled from other inputs (blocks/{b['index']:05d}.json names "
                "another cache). Choose another label.path, or delete the folder.")
        problem = block_problem(fs, path, record, key, b)
        if problem is None:
            done[b["index"]] = record
        else:
            redo.append((b["index"], problem))
    if done or redo:
        print(f"[gemini-ray] cache {directory}: {len(done)} of {len(blocks)} blocks already labelled, kept"
              + (f"; {len(redo)} to label again ({redo[0][0]}: {redo[0][1]})" if redo else ""), flush=True)
    return done
