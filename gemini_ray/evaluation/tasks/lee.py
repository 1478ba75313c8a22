"""Lee document similarity: Spearman between human similarity ratings and the cosine of two documents'
embeddings, over the 1,225 pairs of 50 news documents.

The set is gensim 4.4.0's test data (nothing is downloaded): `lee.cor` holds the 50 documents, one per line;
`similarities0-1.txt` a 50 × 50 matrix of mean human similarity ratings in [0, 1]. The pairs i < j (upper
triangle) are the evaluation.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import pandas as pd

from gemini_ray.config import EvalConfig
from gemini_ray.data.corpus import gensim_test_data
from gemini_ray.errors import GeminiRayError
from gemini_ray.evaluation.metrics import spearman

__all__ = ["LEE", "LeeSimilarity", "lee_similarity", "LEE_DOCUMENTS", "LEE_PAIRS"]

LEE_DOCUMENTS = 50
LEE_PAIRS = LEE_DOCUMENTS * (LEE_DOCUMENTS - 1) // 2  # 1,225


def lee_similarity() -> tuple[list[str], pd.DataFrame]:
    """The 50 Lee documents and a frame of the 1,225 pairs (columns i, j, human)."""
    folder = gensim_test_data()
    docs_path, sims_path = folder / "lee.cor", folder / "similarities0-1.txt"
    for p in (docs_path, sims_path):
        if not p.is_file():
            raise GeminiRayError(f"the Lee similarity set needs '{p}', which is missing. "
                                 "Reinstall it with: pip install --no-deps --force-reinstall gensim==4.4.0")
    docs = [line.strip() for line in docs_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    sims = np.loadtxt(sims_path)
    if len(docs) != LEE_DOCUMENTS or sims.shape != (LEE_DOCUMENTS, LEE_DOCUMENTS):
        raise GeminiRayError(f"the Lee set should hold {LEE_DOCUMENTS} documents and a {LEE_DOCUMENTS}x{LEE_DOCUMENTS} "
                             f"matrix; found {len(docs)} and {sims.shape}. Reinstall gensim==4.4.0 with --no-deps.")
    i, j = np.triu_indices(LEE_DOCUMENTS, k=1)
    return docs, pd.DataFrame({"i": i, "j": j, "human": sims[i, j]})


@functools.lru_cache(maxsize=1)
def _human() -> np.ndarray:
    """(1225,) the human ratings of the pairs: fixed, so a score needs only the models' cosines."""
    return lee_similarity()[1]["human"].to_numpy()


class LeeSimilarity:
    """Per item: one pair's cosine. Score: Spearman of the cosines against the human ratings."""

    name = "Lee similarity"
    metric = "lee_spearman"
    title = "Lee Spearman"
    item_key = "lee_cosine"

    def load(self, e: EvalConfig) -> tuple[list[str], pd.DataFrame]:
        return lee_similarity()

    def texts(self, data: tuple[list[str], pd.DataFrame]) -> list[str]:
        return data[0]

    def protocol(self, data: tuple[list[str], pd.DataFrame]) -> dict[str, Any]:
        return {"lee_pairs": LEE_PAIRS}

    def values(self, embed: Callable[[list[str]], np.ndarray], data: tuple[list[str], pd.DataFrame],
               e: EvalConfig) -> np.ndarray:
        docs, pairs = data
        emb = embed(docs)  # (50, H)
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
        return (emb[pairs["i"].to_numpy()] * emb[pairs["j"].to_numpy()]).sum(1)  # (1225,) cosines

    def statistic(self, values: np.ndarray, index: np.ndarray) -> float:
        return spearman(_human()[index], np.asarray(values)[index])


LEE = LeeSimilarity()
