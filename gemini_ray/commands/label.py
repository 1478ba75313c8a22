"""`gemini-ray label`: run the teacher once over a corpus and keep its signal in a parquet cache.

    gemini-ray label                         # the demo corpus and teacher
    gemini-ray label --config my.yaml label.max_negatives=16

Writes <label.cache_root>/<key>/shard-NNNNN.parquet, blocks/NNNNN.json and manifest.json in one streaming
pass over the corpus's blocks; `distill` and `tune` read it when it matches their config. Interrupted? Run
the same command again: the blocks finished are kept, the teacher labels the rest.
"""

from __future__ import annotations

import time
from typing import Any

from gemini_ray.cluster.session import start_session
from gemini_ray.config import Config
from gemini_ray.jobs.labelling import make_cache

__all__ = ["label"]


def label(cfg: Config) -> dict[str, Any]:
    """Make (or finish) the cache for this config; returns its manifest."""
    t_start = time.perf_counter()
    session = start_session(cfg)  # setup: teacher, corpus, examples, the cache key
    return make_cache(cfg, session, t_start=t_start)  # fit: the teacher over every example, block by block
