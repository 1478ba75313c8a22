"""Ray Data assembly: read → spans → teacher (actor pool) → hard-negative mining.

The stages themselves are plain callables in `gemini_ray.data`; this module only wires them onto Ray.
The cheap tokenize-and-pair stage is materialised so that counts (examples, skipped documents) are
known before the teacher starts; the teacher and mining stages stream into the trainer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.data
from ray.data import ActorPoolStrategy

from gemini_ray.config import Config
from gemini_ray.data.corpus import embedded_corpus, infer_format, split_lines
from gemini_ray.data.mining import HardNegativeMiner
from gemini_ray.data.spans import STATUS_OK, SpanPairer, text_hash
from gemini_ray.data.teacher_stage import TeacherLabeler
from gemini_ray.errors import GeminiRayError

__all__ = ["CorpusStats", "read_documents", "build_examples", "label_and_mine"]


@dataclass
class CorpusStats:
    documents: int = 0
    duplicate_documents: int = 0
    skipped_empty: int = 0
    skipped_non_utf8: int = 0
    skipped_too_short: int = 0
    documents_used: int = 0
    examples: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _is_uri(path: str) -> bool:
    return "://" in path


def read_documents(cfg: Config) -> ray.data.Dataset:
    """A dataset with columns text (str) and bad_utf8 (bool), one row per document."""
    d = cfg.data
    if d.path.startswith("embedded:"):
        source = embedded_corpus(d.path)
        if isinstance(source, list):
            ds = ray.data.from_items([{"text": t, "bad_utf8": False} for t in source])
            return ds.limit(d.max_documents) if d.max_documents else ds
        path, fmt = str(source), "text"
    else:
        path = d.path
        if not _is_uri(path):
            p = Path(path).expanduser()
            if not p.exists():
                raise GeminiRayError(f"data.path '{path}' does not exist. Point it at a corpus file, directory or URI.")
            if p.is_file() and p.stat().st_size == 0:
                raise GeminiRayError(f"data.path '{path}' is empty. Give a corpus with at least two documents.")
            path = str(p.resolve())
        fmt = infer_format(path, d.format)
    if fmt == "text":
        ds = ray.data.read_binary_files(path).map_batches(split_lines, batch_size=1, batch_format="numpy")
    else:
        reader = {"jsonl": ray.data.read_json, "parquet": ray.data.read_parquet, "csv": ray.data.read_csv}[fmt]
        kwargs = {"lines": True} if fmt == "jsonl" else {}
        ds = reader(path, **kwargs)
        columns = ds.columns() or []
        if d.text_column not in columns:
            raise GeminiRayError(
                f"data.text_column '{d.text_column}' is not a column of '{d.path}' (columns: {columns}). "
                "Set data.text_column to the column that holds the documents."
            )
        col = d.text_column
        ds = ds.map_batches(
            lambda b: {"text": np.array(["" if t is None else str(t) for t in b[col]], dtype=object),
                       "bad_utf8": np.zeros(len(b[col]), dtype=bool)},
            batch_format="numpy",
        )
    return ds.limit(d.max_documents) if d.max_documents else ds


def _dedupe(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v[:1] for k, v in batch.items()}


def build_examples(cfg: Config, tokenizer_source: str, kind: str) -> tuple[ray.data.Dataset, CorpusStats]:
    """Tokenize, cut and pair; returns the materialised examples (status 'ok' only) and the counts."""
    docs = read_documents(cfg).materialize()
    table = docs.to_pandas()  # texts only: small next to the teacher's output
    stats = CorpusStats(documents=len(table))
    if stats.documents == 0:
        raise GeminiRayError(f"the corpus '{cfg.data.path}' holds no documents. Give a non-empty corpus.")
    stats.skipped_non_utf8 = int(table["bad_utf8"].sum())
    table = table[~table["bad_utf8"]]
    # exact duplicate documents are dropped before anything else (they would be false negatives)
    hashes = table["text"].map(text_hash)
    stats.duplicate_documents = int(hashes.duplicated().sum())
    table = table[~hashes.duplicated()]
    ds = ray.data.from_pandas(table[["text"]].reset_index(drop=True))
    pairs = ds.map_batches(
        SpanPairer,
        fn_constructor_kwargs=dict(tokenizer_source=tokenizer_source, kind=kind, span_length=cfg.data.span_length,
                                   mlm_probability=cfg.data.mlm_probability, seed=cfg.data.seed,
                                   trust_remote_code=cfg.teacher.trust_remote_code),
        compute=ActorPoolStrategy(size=1),
        batch_size=64,
        num_cpus=1,
        batch_format="numpy",
    ).materialize()
    status = pairs.select_columns(["status", "doc_id"]).to_pandas()
    stats.skipped_empty = int((status["status"] == "empty").sum())
    stats.skipped_too_short = int((status["status"] == "too_short").sum())
    ok = status[status["status"] == STATUS_OK]
    stats.examples = len(ok)
    stats.documents_used = int(ok["doc_id"].nunique())
    if stats.examples == 0:
        raise GeminiRayError(
            f"no document of '{cfg.data.path}' is long enough for an anchor and a positive span "
            f"({2 * cfg.data.span_length} tokens with data.span_length={cfg.data.span_length}; "
            f"{stats.skipped_too_short} too short, {stats.skipped_empty} empty, {stats.skipped_non_utf8} not UTF-8). "
            "Use longer documents or a smaller data.span_length."
        )
    if stats.documents_used <= cfg.loss.num_negatives:
        raise GeminiRayError(
            f"loss.num_negatives={cfg.loss.num_negatives} needs more than {cfg.loss.num_negatives} usable documents "
            f"(negatives come from other documents), but the corpus gives {stats.documents_used}. "
            "Lower loss.num_negatives or add documents."
        )
    examples = pairs.filter(expr=f"status == '{STATUS_OK}'").drop_columns(["status"]).materialize()
    return examples, stats


def label_and_mine(cfg: Config, examples: ray.data.Dataset) -> ray.data.Dataset:
    """Teacher top-k + embeddings on a fixed actor pool, then hard negatives per mining window (lazy)."""
    t = cfg.teacher
    labelled = examples.map_batches(
        TeacherLabeler,
        fn_constructor_kwargs={"teacher_cfg": dataclasses.asdict(t)},
        compute=ActorPoolStrategy(size=t.num_actors),
        batch_size=max(1, t.batch_size // 2),  # one example holds two spans
        num_cpus=t.num_cpus,
        num_gpus=t.num_gpus,
        batch_format="numpy",
    )
    return labelled.map_batches(
        HardNegativeMiner,
        fn_constructor_kwargs={"num_negatives": cfg.loss.num_negatives, "seed": cfg.mining.seed},
        compute=ActorPoolStrategy(size=1),
        batch_size=cfg.mining.window,
        num_cpus=0.1,
        batch_format="numpy",
    )
