"""Where a training row sits in its pass over the data, and which rows a run has trained (no Ray here).

A row's position is (task, row): from the corpus, the index of the Ray Data task that produced it within one
execution of the training stream (tasks are numbered in the order of their input blocks, which is the
corpus's order) and the row's index among that task's outputs; from a cache, the shard's number and the
row's index in the shard's file (so that a shard left unread does not move the others). The same config
reads the same blocks in the same order, so a position names the same example in every pass, in every run of
the command, and whatever the number of Train workers: it is global, not per rank.

The trained set of a pass is kept as ranges: [[task, start, stop], ...] (stop excluded, sorted). A block
goes whole to one worker and is trained in order, so a task's trained rows are one range or a few.

    trained = add([], np.array([encode(0, 0), encode(0, 1), encode(2, 5)]))   # [[0, 0, 2], [2, 5, 6]]
    keep = ~trained_mask(rows_of(trained, task=0), np.arange(4))             # [F, F, T, T]
"""

from __future__ import annotations

import numpy as np

__all__ = ["encode", "decode", "add", "count", "rows_of", "trained_mask"]

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
