"""The evaluation tasks `gemini-ray eval` scores a model's embeddings on, and the interface they share.

A task is one file in this package and one line in `TASKS`. The runner (`gemini_ray.jobs.evaluate`) loads
each task's set once, refuses a set whose texts are in the training corpus, and scores every model on it:

    data = task.load(cfg.eval)                          # the set, from files shipped in pip packages
    values = task.values(embed, data, cfg.eval)         # (n,) one value per item, e.g. a pair's cosine
    row[task.metric] = task.statistic(values, np.arange(len(values)))

The per-item values are what makes a score comparable between models: its 95 % interval resamples the
items, and a paired comparison of two models (`paired_differences`) resamples the same items of both.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

from gemini_ray.config import EvalConfig
from gemini_ray.evaluation.tasks.lee import LEE
from gemini_ray.evaluation.tasks.rotten_tomatoes import ROTTEN_TOMATOES

__all__ = ["EvalTask", "Embed", "TASKS"]

Embed = Callable[[list[str]], np.ndarray]
"""A model's embeddings of texts: (n, H) float32, in input order (`models.build.embed` pooling)."""


class EvalTask(Protocol):
    """One evaluation set and how a model's embeddings are scored on it."""

    name: str
    """The set as messages name it: 'Lee similarity'."""
    metric: str
    """The row key of its score ('lee_spearman'); '<metric>_ci' holds the 95 % bootstrap interval."""
    title: str
    """The score as the report table and progress lines name it: 'Lee Spearman'."""
    item_key: str
    """Where the per-item values are kept in a row's `items` ('lee_cosine')."""

    def load(self, e: EvalConfig) -> Any:
        """The set (any form the other methods read), from local files: nothing is downloaded."""

    def texts(self, data: Any) -> list[str]:
        """Every text of the set: none may be a document of the training corpus."""

    def protocol(self, data: Any) -> dict[str, Any]:
        """What the report's protocol records about the set (its sizes), under keys no other task uses."""

    def values(self, embed: Embed, data: Any, e: EvalConfig) -> np.ndarray:
        """(n,) one value per item: a float (kept to 6 decimals) or an integer/bool (kept as int)."""

    def statistic(self, values: np.ndarray, index: np.ndarray) -> float:
        """The score over the items at `index` (with repeats: a bootstrap sample) from their values alone."""


TASKS: tuple[EvalTask, ...] = (LEE, ROTTEN_TOMATOES)
"""The tasks every evaluation scores, in report order. A new task: one file here and one entry."""
