"""Exact resume, in one place: which rows a run has trained, which checkpoint it goes on from, and what its
stream leaves out so that a resumed run trains each row of a pass once.

**Positions** (plain numpy). A row's position is (task, row): from the corpus, the index of the Ray Data task
that produced it within one execution of the training stream (tasks are numbered in the order of their input
blocks, which is the corpus's order) and the row's index among that task's outputs; from a cache, the shard's
number and the row's index in the shard's file (so that a shard left unread does not move the others). The
same config reads the same blocks in the same order, so a position names the same example in every pass, in
every run of the command, and whatever the number of Train workers: it is global, not per rank.

The trained set of a pass is kept as ranges: [[task, start, stop], ...] (stop excluded, sorted). A block
goes whole to one worker and is trained in order, so a task's trained rows are one range or a few.

    trained = add([], np.array([encode(0, 0), encode(0, 1), encode(2, 5)]))   # [[0, 0, 2], [2, 5, 6]]
    keep = ~trained_mask(rows_of(trained, task=0), np.arange(4))             # [F, F, T, T]

**Which checkpoint.** `resume_point` verifies a local run's checkpoints newest-first (sizes, SHA-256, finite
values), moves a damaged one to <run dir>/damaged/ and sets Ray Train's record aside when it names one;
`earliest_resume_step` bounds what the stream must still label, and `consumed_shards` the cache shards a
resume need not read.

**What the stream skips.** Rank 0 of the Train workers tells the `StreamPlan` actor the pass's trained ranges
(from its checkpoint); the stream's tasks number their rows (`task_positions`) and `drop_trained` leaves out
those trained, before the teacher (online) or before the trainer (from a cache).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import ray

from gemini_ray.config import Config
from gemini_ray.models.checkpoint import (checkpoint_step, latest_whole_checkpoint, verify_checkpoint,
                                          whole_checkpoint_steps)
from gemini_ray.paths import is_uri, run_dir
from gemini_ray.ray_compat.data import task_context

__all__ = ["encode", "decode", "add", "count", "rows_of", "trained_mask", "StreamPlan", "count_in_task",
           "task_positions", "drop_trained", "resume_point", "earliest_resume_step", "consumed_shards", "DAMAGED"]

ROW_BITS = 32


def encode(task: int | np.ndarray, row: int | np.ndarray) -> np.ndarray:
    """One int64 per row: task << 32 | row."""
    return (np.asarray(task, dtype=np.int64) << ROW_BITS) | np.asarray(row, dtype=np.int64)


def decode(position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(task, row) arrays of encoded positions."""
    p = np.asarray(position, dtype=np.int64)
    return p >> ROW_BITS, p & ((1 << ROW_BITS) - 1)


def _runs(positions: np.ndarray) -> list[list[int]]:
    """Sorted unique encoded positions as [[task, start, stop], ...]."""
    if len(positions) == 0:
        return []
    p = np.unique(positions)
    breaks = np.flatnonzero(np.diff(p) != 1) + 1  # a task change always breaks a run (rows < 2**32)
    out = []
    for run in np.split(p, breaks):
        task, start = decode(run[:1])
        out.append([int(task[0]), int(start[0]), int(start[0]) + len(run)])
    return out


def add(trained: list[list[int]], positions: np.ndarray) -> list[list[int]]:
    """The trained ranges with `positions` (encoded) added (an interval union: its cost grows with the
    number of ranges, not of rows)."""
    merged: list[list[int]] = []
    for task, a, b in sorted(trained + _runs(np.asarray(positions, dtype=np.int64))):
        if merged and merged[-1][0] == task and a <= merged[-1][2]:
            merged[-1][2] = max(merged[-1][2], b)
        else:
            merged.append([task, a, b])
    return merged


def count(trained: list[list[int]]) -> int:
    """How many rows the ranges hold."""
    return sum(b - a for _, a, b in trained)


def rows_of(trained: list[list[int]], task: int) -> list[list[int]]:
    """One task's trained rows as [[start, stop], ...]."""
    return [[a, b] for t, a, b in trained if t == task]


def trained_mask(ranges: list[list[int]], rows: np.ndarray) -> np.ndarray:
    """Which of a task's `rows` lie in its trained [[start, stop], ...]."""
    rows = np.asarray(rows)
    mask = np.zeros(len(rows), dtype=bool)
    for a, b in ranges:
        mask |= (rows >= a) & (rows < b)
    return mask


@ray.remote(num_cpus=0)
class StreamPlan:
    """Which rows of the current pass the trainer has trained already (positions, above),
    so that a resumed run's stream drops them before the teacher (or, from a cache, before the trainer).

    Rank 0 of the Train workers sets it when it starts a pass (after restoring a checkpoint: the pass's
    trained ranges; a new pass: none); the stream's tasks ask for their own rows and wait until it is set.
    An async actor: a task that waits does not block the set."""

    def __init__(self) -> None:
        self.trained: list[list[int]] = []
        self.epoch = 0
        self.ready = None

    def _event(self):
        import asyncio

        if self.ready is None:
            self.ready = asyncio.Event()
        return self.ready

    async def set(self, trained: list[list[int]], epoch: int = 0) -> None:
        self.trained, self.epoch = trained, epoch
        self._event().set()

    async def pass_number(self) -> int:
        """The pass (0-based) the trainer is on: a cache stream reads its shards in that pass's order."""
        await self._event().wait()
        return self.epoch

    async def skip(self, task: int) -> list[list[int]]:
        await self._event().wait()
        return rows_of(self.trained, task)


def count_in_task(key: str, n: int) -> tuple[int, int]:
    """(this Ray Data task's index, or -1 outside one; the counter `key` before adding n): a counter that
    carries over the batches one task maps, in its TaskContext."""
    ctx = task_context()
    if ctx is None:  # outside Ray Data (a unit test calling the function)
        return -1, 0
    task, kept = ctx
    start = kept.get(key, 0)
    kept[key] = start + n
    return task, start


def task_positions(n: int) -> np.ndarray:
    """Encoded positions of the next n output rows of this Ray Data task (task index, row). A task may map
    several batches: the row count carries over."""
    task, start = count_in_task("gemini_ray_rows", n)
    return encode(max(task, 0), np.arange(start, start + n))


def drop_trained(batch: dict[str, np.ndarray], plan) -> dict[str, np.ndarray]:
    """The batch without the rows the plan says were trained in this pass (its rows may come from several
    tasks, or cache shards)."""
    if plan is None or len(batch["position"]) == 0:
        return batch
    tasks, rows = decode(batch["position"])
    keep = np.ones(len(rows), dtype=bool)
    for task in np.unique(tasks).tolist():
        ranges = ray.get(plan.skip.remote(task))
        if ranges:
            mine = tasks == task
            keep[mine] = ~trained_mask(ranges, rows[mine])
    return batch if keep.all() else {k: v[keep] for k, v in batch.items()}


DAMAGED = "damaged"
"""Where resume_point moves a damaged checkpoint: <run dir>/damaged/<checkpoint name>, kept for a look."""


def _newest_first(out_dir: Path) -> list[tuple[Path, int | None]]:
    """The run's checkpoint directories with their steps, newest first (an unreadable step sorts by the
    directory's name, which Ray Train stamps with the time it was written)."""
    found = [(d, checkpoint_step(d)) for d in out_dir.glob("checkpoint_*") if d.is_dir()]
    return sorted(found, key=lambda f: (f[1] if f[1] is not None else -1, f[0].name), reverse=True)


def _check_checkpoints(out_dir: Path) -> tuple[tuple[Path, int] | None, list[tuple[Path, int | None, str]]]:
    """(the newest intact checkpoint or None, the damaged ones with their step and what is wrong). The
    checkpoints from the newest down to the first intact one are read whole (size, SHA-256 against the
    record written with them, finite weights); the older ones get the cheap checks (sizes)."""
    latest, damaged = None, []
    for directory, step in _newest_first(out_dir):
        problem = verify_checkpoint(directory, deep=latest is None)
        if problem is not None:
            damaged.append((directory, step, problem))
        elif latest is None:
            latest = (directory, step)
    return latest, damaged


def resume_point(out_dir: str) -> str | None:
    """Where Ray Train should resume a local run from when its own record cannot say (None: let it decide).

    Every checkpoint is verified first (`checkpoint.verify_checkpoint`): one cut short by a kill, overwritten
    in place or missing a file is moved to <run dir>/damaged/ with a line naming its step and what is wrong,
    and the run goes on from the newest intact one, whose step is said too. Ray Train resumes from
    checkpoint_manager_snapshot.json and refuses to start when a checkpoint it records is gone, so a record
    that names a damaged checkpoint is set aside with it. The record is set aside too when it is cut short
    (a driver killed while writing it) or ends before the newest intact checkpoint (a killed driver's Train
    workers can go on and checkpoint for a few steps until Ray reclaims them). Returns the checkpoint the
    workers load themselves when Ray Train hands back none (RunSpec.resume_from); call it while no run
    writes in `out_dir` (the run folder's lock is held)."""
    if is_uri(out_dir) or not Path(out_dir).is_dir():
        return None
    run = Path(out_dir)
    latest, damaged = _check_checkpoints(run)
    snapshot = run / "checkpoint_manager_snapshot.json"
    record = snapshot.read_text(encoding="utf-8", errors="replace") if snapshot.is_file() else ""
    set_aside = None
    for directory, step, problem in damaged:
        aside = run / DAMAGED / directory.name
        aside.parent.mkdir(exist_ok=True)
        os.replace(directory, aside)
        at = f"step {step}" if step is not None else "step unknown"
        print(f"[gemini-ray] checkpoint {directory.name} ({at}) is damaged: {problem}; moved to "
              f"{DAMAGED}/{directory.name} (delete it once you have looked)")
        if directory.name in record:
            set_aside = "names a damaged checkpoint"
    if snapshot.is_file() and set_aside is None:
        recorded = _recorded_step(snapshot)
        if recorded is not None and (latest is None or latest[1] <= recorded):
            return None  # readable, intact and up to date: Ray Train resumes from it
        set_aside = ("was cut short" if recorded is None
                     else f"ends at step {recorded}, before a newer intact checkpoint")
    if set_aside is not None and snapshot.is_file():
        aside = snapshot.with_name(f".{snapshot.name}.set-aside-{int(time.time())}")
        os.replace(snapshot, aside)
        print(f"[gemini-ray] Ray Train's checkpoint record {set_aside}; set aside as {aside.name}")
    lost = [step for _, step, _ in damaged if step is not None and (latest is None or step > latest[1])]
    if latest is None:
        if damaged:
            print("[gemini-ray] no intact checkpoint is left: the run starts again from step 0")
        return None
    if lost:
        print(f"[gemini-ray] the checkpoint of step {max(lost)} is lost: resuming from step {latest[1]}, the newest "
              f"intact one; the steps after it are trained again")
    print(f"[gemini-ray] resuming from the newest intact checkpoint {latest[0].name} (step {latest[1]})")
    return str(latest[0])


def _recorded_step(snapshot: Path) -> int | None:
    """The step of the newest checkpoint in Ray Train's record (-1 when it holds none), or None when the
    record cannot be read (cut short)."""
    try:
        record = json.loads(snapshot.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    latest = record.get("latest_checkpoint_result") if isinstance(record, dict) else None
    if not latest:
        return -1
    return int((latest.get("metrics") or {}).get("step", -1))


def consumed_shards(cfg: Config, manifest: dict) -> frozenset[int]:
    """The cache's training shards whose every row the run had trained in its current pass at its newest
    checkpoint (the one it resumes from), when the rest of the run ends within that pass: left unread. A run
    that will make another pass reads them all (the stream is the same for every pass of a fit)."""
    out_dir = run_dir(cfg.run.storage_path, cfg.run.name)
    latest = None if is_uri(out_dir) else latest_whole_checkpoint(out_dir)
    if latest is None:
        return frozenset()
    state = json.loads((latest[0] / "state.json").read_text(encoding="utf-8"))
    trained, t = state.get("trained") or [], cfg.train
    rows = {int(s): int(manifest["expected_rows"][str(s)]) for s in manifest["shards_train"]}
    needed = (t.max_steps - state["step"] + 1) * t.examples_per_step  # a step's rows of slack
    if needed > sum(rows.values()) - count(trained):
        return frozenset()
    consumed = frozenset(s for s, n in rows.items() if sum(b - a for a, b in rows_of(trained, s)) >= n)
    if consumed:
        print(f"[gemini-ray] resuming: {len(consumed)} of {len(rows)} cache shards were trained whole in this "
              "pass; they are not read again")
    return consumed


def earliest_resume_step(cfg: Config) -> int:
    """The step a resumed run can go on from at the earliest (the oldest whole checkpoint Ray Train keeps;
    0 for a new run or a run whose checkpoints are behind a URI): the stream's row limit counts from it, so
    that a resumed run does not send rows to the teacher past the ones it still needs."""
    out_dir = run_dir(cfg.run.storage_path, cfg.run.name)
    return 0 if is_uri(out_dir) else min(whole_checkpoint_steps(out_dir), default=0)
