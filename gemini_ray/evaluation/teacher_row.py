"""The teacher's quality scores, kept between evaluations.

Every `gemini-ray eval`, `ablate`, `curve` and comparison evaluates the teacher beside its students, and the
teacher's row is by far the slowest (142 s on the demo protocol, 10 min on the whole Rotten Tomatoes set,
against 40 s / 2.4 min per student on 2 cores). It depends only on the teacher's files, the protocol and the
held-out documents, so it is stored once under <run.storage_path>/eval_cache and read back when all of these
are the same:

* the teacher directory's files (weights by content hash, the small files such as the config and tokenizer
  by content);
* the model kind it is loaded as (causal or masked);
* the protocol: every `eval.*` setting, the corpus and its held-out share, the held-out documents
  themselves (by content);
* the evaluation code (the `gemini_ray.evaluation` sources with every task, the runner
  `gemini_ray.jobs.evaluate`, and `gemini_ray.models` and `gemini_ray.data.spans`, which load, pool and hash
  for it) and the versions of the packages that compute
  or ship the scores (torch, transformers, tokenizers, safetensors, numpy, pandas, gensim, scattertext).

Speed and peak memory are not kept: they are timed again beside the student in every evaluation, so a
speedup is always a side-by-side measurement. `eval.reuse_teacher=false` evaluates the teacher afresh.
A teacher that is not a local directory (a hub name) is never reused: its files cannot be checked; nor is
anything kept when run.storage_path is a URI.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from gemini_ray.paths import atomic_write_json, is_uri, join

__all__ = ["TIMED_KEYS", "row_key", "load_row", "save_row", "cache_dir"]

TIMED_KEYS = ("tokens_per_s", "peak_memory_mib", "eval_s")
"""Row entries measured afresh in every evaluation, never read back."""
_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "gensim", "scattertext")
_CODE = ("evaluation/**/*.py", "jobs/evaluate.py", "models/*.py", "data/spans.py")
"""The sources, under gemini_ray/, that the teacher's scores depend on."""
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


def cache_dir(storage_path: str) -> str | None:
    """Where kept rows live: <storage_path>/eval_cache; None for a URI storage path (nothing is kept)."""
    return None if is_uri(storage_path) else join(storage_path, "eval_cache")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _teacher_files(directory: Path) -> dict[str, str]:
    from gemini_ray.data.cache import weights_hash

    small = {p.name: _sha256(p.read_bytes()) for p in sorted(directory.iterdir())
             if p.is_file() and not p.name.startswith(".") and p.suffix not in _WEIGHT_SUFFIXES}
    return {"weights": weights_hash(str(directory)), **small}


def _code() -> str:
    package = Path(__file__).parents[1]
    files = sorted(p for pattern in _CODE for p in package.glob(pattern))
    return _sha256(b"".join(str(p.relative_to(package)).encode() + p.read_bytes() for p in files))


def row_key(teacher_source: str, kind: str, protocol: dict[str, Any], held_out: list[str]) -> str | None:
    """The key the teacher's row is kept under, or None when it cannot be reused (not a local directory).
    The corpus's path and held-out share are left out of the protocol: the held-out documents themselves
    are in the key, so the same corpus at another path is the same row."""
    directory = Path(teacher_source).expanduser()
    if not directory.is_dir():
        return None
    identity = {
        "teacher": _teacher_files(directory.resolve()),
        "kind": kind,
        "protocol": {k: v for k, v in protocol.items() if k not in ("corpus", "val_fraction")},
        "held_out": _sha256("\0".join(held_out).encode()),
        "code": _code(),
        "packages": {p: _version(p) for p in _PACKAGES},
    }
    return _sha256(json.dumps(identity, sort_keys=True).encode())[:24]


def load_row(directory: str | None, key: str | None) -> dict[str, Any] | None:
    """The kept quality row under `key`, or None (none kept, or unreadable: evaluated again)."""
    if directory is None or key is None:
        return None
    path = Path(directory) / f"teacher-{key}.json"
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return kept.get("row") if kept.get("key") == key else None


def save_row(directory: str | None, key: str | None, row: dict[str, Any]) -> str | None:
    """Keep the row's quality scores (not its timings) under `key`; returns the file, or None when not kept."""
    if directory is None or key is None:
        return None
    path = join(directory, f"teacher-{key}.json")
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"key": key, "row": {k: v for k, v in row.items() if k not in TIMED_KEYS}})
    except OSError:
        return None  # a read-only storage path: the evaluation stands, the next one evaluates again
    return path
