"""The corpus cut into blocks before anything is read: the unit of reading, of a `label` pass's progress and
of its resume. No Ray here (see `gemini_ray.data.corpus_pass`).

    blocks = plan_blocks(cfg.data, block_bytes=4 << 20)   # [{index, path, start, stop, size, ...}, ...]
    documents = read_block(blocks[3], cfg.data)         # {text, bad_utf8, bad_record} of that block alone

A block is a byte range of an uncompressed text or jsonl file: the lines that *start* in [start, stop) (a
line that crosses `stop` is read on to its end; one that began before `start` belongs to the block before).
So one file of any size is read in pieces, by many tasks, none holding more than a block and a line. A
compressed file, a parquet file and a csv file (whose quoted fields may hold line breaks) are one block
each. The embedded corpora parsed into lists of articles are dealt into blocks in turn (article i to block
i mod n), so that each block of `embedded:lee_wikipedia` mixes news and Wikipedia.

Each block records its file's size and modification time when it was planned: a file that changes while it
is read (a log still being appended to, a copy still running) is refused (`read_block`), rather than read
half old and half new.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from gemini_ray.config import DataConfig
from gemini_ray.data.corpus import (csv_read_options, decode_column, embedded_corpus, infer_format, parse_jsonl,
                                    split_lines)
from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import is_uri, join, open_dir

__all__ = ["plan_blocks", "read_block", "changed_files", "corpus_bytes", "local_corpus"]

_COMPRESSED = (".gz", ".bz2", ".zst")
_FOLLOW = 1 << 16
"""Bytes read at a time past a block's end, to finish the line that crosses it."""


def local_corpus(path: str) -> Path:
    """data.path as a resolved local path; refused when it does not exist or is an empty file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise GeminiRayError(f"data.path '{path}' does not exist. Point it at a corpus file, directory or URI.")
    if p.is_file() and p.stat().st_size == 0:
        raise GeminiRayError(f"data.path '{path}' is empty. Give a corpus with at least two documents.")
    return p.resolve()


def _files(d: DataConfig, fmt: str) -> list[tuple[str, int, int]]:
    """(path or URI, size, mtime in ns) of each corpus file, in a stable order."""
    import pyarrow.fs as pafs

    from gemini_ray.data.corpus import corpus_files

    path = d.path
    if not is_uri(path):
        p = local_corpus(path)
        files = corpus_files(p, fmt) if p.is_dir() else [p]
        return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    fs, root = pafs.FileSystem.from_uri(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [(path, info.size, info.mtime_ns or 0)]
    found = sorted((f for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                    if f.type == pafs.FileType.File and not f.base_name.startswith(".")), key=lambda f: f.path)
    return [(join(path, f.path[len(root):].lstrip("/")), f.size, f.mtime_ns or 0) for f in found]


def plan_blocks(d: DataConfig, block_bytes: int) -> list[dict[str, Any]]:
    """The corpus's blocks in corpus order, each a dict: index, path, fmt, start, stop (a byte range, or
    -1, -1 for a whole file; for an embedded list of articles, articles start, start + step, ...), size and
    mtime_ns of its file when planned, bytes (what the block covers) and max_documents (documents of the
    block to keep: None, all)."""
    block_bytes = max(1, int(block_bytes))
    if d.path.startswith("embedded:"):
        source = embedded_corpus(d.path)
        if isinstance(source, list):  # articles parsed from a compressed dump: dealt into blocks in turn
            sizes = np.array([len(t.encode()) for t in source])
            n = max(1, min(len(source), -(-int(sizes.sum()) // block_bytes)))
            return [{**_block(i, d.path, "list", i, len(source), int(sizes.sum()), 0, int(sizes[i::n].sum())),
                     "step": n} for i in range(n)]
        files, fmt = [(str(source), source.stat().st_size, 0)], "text"  # the pinned package's file: its mtime varies
    else:
        fmt = infer_format(d.path, d.format)
        files = _files(d, fmt)
    blocks: list[dict[str, Any]] = []
    for path, size, mtime in files:
        if fmt in ("text", "jsonl") and not path.endswith(_COMPRESSED):
            for start in range(0, max(size, 1), block_bytes):
                stop = min(start + block_bytes, size)
                blocks.append(_block(len(blocks), path, fmt, start, stop, size, mtime, stop - start))
        else:
            blocks.append(_block(len(blocks), path, fmt, -1, -1, size, mtime, size))
    return blocks


def _block(index: int, path: str, fmt: str, start: int, stop: int, size: int, mtime: int, nbytes: int
           ) -> dict[str, Any]:
    return {"index": index, "path": path, "fmt": fmt, "start": start, "stop": stop, "size": size,
            "mtime_ns": mtime, "bytes": nbytes, "max_documents": None}


def corpus_bytes(blocks: list[dict[str, Any]]) -> int:
    """Bytes the blocks cover (a whole file: its size on disk, compressed or not): what progress counts."""
    return sum(b["bytes"] for b in blocks)


def changed_files(blocks: list[dict[str, Any]]) -> list[str]:
    """The files of the blocks whose size or modification time is not what it was when they were planned."""
    seen, changed = set(), []
    for b in blocks:
        if b["fmt"] == "list" or b["path"] in seen:
            continue
        seen.add(b["path"])
        if _changed(b):
            changed.append(b["path"])
    return changed


def _changed(block: dict[str, Any]) -> str | None:
    """How the block's file differs from when it was planned ('grew', 'shrank', ...), or None. An
    embedded corpus's file is checked by size alone."""
    path = block["path"]
    if path.startswith("embedded:") or block["fmt"] == "list":
        return None
    if is_uri(path):
        fs, where = open_dir(path)
        info = fs.get_file_info(where)
        size, mtime = info.size, info.mtime_ns or 0
    else:
        try:
            st = os.stat(path)
        except OSError:
            return "was removed"
        size, mtime = st.st_size, st.st_mtime_ns
    if size != block["size"]:
        return "grew" if size > block["size"] else "shrank"
    if block["mtime_ns"] and mtime != block["mtime_ns"]:
        return "was rewritten (its modification time changed)"
    return None


def _refuse_changed(block: dict[str, Any], how: str) -> GeminiRayError:
    return GeminiRayError(
        f"the corpus file '{block['path']}' {how} while it was being read. Let whatever writes it finish (or "
        "copy it somewhere stable), then run the command again: a label run keeps the blocks it finished only "
        "when the corpus is the one they were read from.")


def read_block(block: dict[str, Any], d: DataConfig) -> dict[str, np.ndarray]:
    """The block's documents: {text, bad_utf8, bad_record} as `gemini_ray.data.corpus` parses them, at most
    block['max_documents']. Raises when the block's file has changed since it was planned."""
    how = _changed(block)
    if how:
        raise _refuse_changed(block, how)
    fmt, path = block["fmt"], block["path"]
    if fmt == "list":
        texts = embedded_corpus(path)[block["start"]:block["stop"]:block["step"]]
        docs = {"text": np.array(texts, dtype=object), "bad_utf8": np.zeros(len(texts), dtype=bool),
                "bad_record": np.zeros(len(texts), dtype=bool)}
    elif fmt in ("text", "jsonl"):
        data = _read_range(block) if block["start"] >= 0 else _read_whole(path)
        parse = split_lines if fmt == "text" else functools.partial(parse_jsonl, column=d.text_column)
        docs = parse({"bytes": [data]})
    else:
        docs = decode_column(_read_table(path, fmt, d.text_column), d.text_column)
    how = _changed(block)  # written to while it was read
    if how:
        raise _refuse_changed(block, how)
    cap = block.get("max_documents")
    return docs if cap is None else {k: v[:cap] for k, v in docs.items()}


def _read_whole(path: str) -> bytes:
    fs, where = open_dir(path)
    with fs.open_input_stream(where) as f:  # compression detected from the name, as Ray Data's readers do
        return f.read()


def _read_range(block: dict[str, Any]) -> bytes:
    """The lines that start in [start, stop): from the first line break at or after start - 1, to the first
    one at or after stop - 1."""
    fs, where = open_dir(block["path"])
    start, stop, size = block["start"], block["stop"], block["size"]
    with fs.open_input_file(where) as f:
        f.seek(max(start - 1, 0))
        data = f.read(stop - max(start - 1, 0))
        if start > 0:  # the line in progress at start belongs to the block before
            cut = data.find(b"\n")
            if cut < 0:
                return b""
            data = data[cut + 1:]
        if not data:  # no line starts in the range
            return b""
        tail = [data]
        end = stop
        while not tail[-1].endswith(b"\n") and end < size:
            more = f.read(_FOLLOW)
            if not more:
                break
            cut = more.find(b"\n")
            tail.append(more if cut < 0 else more[:cut + 1])
            end += len(more)
            if cut >= 0:
                break
    return b"".join(tail)


def _read_table(path: str, fmt: str, column: str) -> dict[str, np.ndarray]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fs, where = open_dir(path)
    if fmt == "parquet":
        with fs.open_input_file(where) as f:
            table = pq.read_table(f, columns=[column])
    else:
        with fs.open_input_stream(where) as f:
            table = pacsv.read_csv(f, **csv_read_options(column))
    return {column: table.column(column).to_numpy(zero_copy_only=False)}
