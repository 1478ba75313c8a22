"""Where the corpus lives and how its files are read. No Ray here (see `gemini_ray.data.corpus_pass`).

Embedded corpora ship inside the `gensim==4.4.0` wheel (its test data), found without importing gensim:
* `embedded:lee_background` — 300 news articles, one per line (the default);
* `embedded:wikipedia` — 106 Wikipedia articles, MediaWiki XML stripped to plain text;
* `embedded:lee_wikipedia` — both (the news articles, then the Wikipedia articles): 720 k tokens.
These are disjoint from the evaluation sets (`lee.cor`, Rotten Tomatoes).

Text files are one document per line; jsonl files one JSON object per line. Anywhere in a file (the first
MiB is checked up front, `gemini_ray.data.filecheck`), a line that is not UTF-8, a jsonl line that is not a
JSON object with the text field, and a csv row with the wrong number of fields are skipped and counted, not
fatal: a corpus of gigabytes should not fail at its last shard.

A local directory's files are listed by `unique_files`: each real file once, however many links reach it.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import os
import re
import stat
from pathlib import Path

import numpy as np

from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import is_uri, open_dir, package_file

__all__ = ["gensim_test_data", "embedded_corpus", "embedded_files", "EMBEDDED_CORPORA", "infer_format", "split_lines",
           "parse_jsonl", "csv_read_options", "decode_column", "wikipedia_documents", "strip_wiki_markup",
           "corpus_signature", "unique_files", "corpus_files", "reader_extensions"]

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def gensim_test_data() -> Path:
    """gensim's test_data folder, located without importing gensim."""
    return package_file("gensim", "test/test_data", "the embedded corpus", "gensim",
                        "pip install --no-deps gensim==4.4.0 (or run 'make demo', which does)")


EMBEDDED_CORPORA = ("embedded:lee_background", "embedded:wikipedia", "embedded:lee_wikipedia")
LEE_FILE = "lee_background.cor"


def embedded_corpus(name: str) -> Path | list[str]:
    """Path of an embedded line corpus, or the documents themselves for the Wikipedia dump (alone or after
    the news articles)."""
    if name == "embedded:lee_background":
        return gensim_test_data() / LEE_FILE
    if name == "embedded:wikipedia":
        return wikipedia_documents(gensim_test_data() / WIKI_FILE)
    if name == "embedded:lee_wikipedia":
        lee = split_lines({"bytes": [(gensim_test_data() / LEE_FILE).read_bytes()]})["text"].tolist()
        return lee + wikipedia_documents(gensim_test_data() / WIKI_FILE)
    raise GeminiRayError(f"unknown embedded corpus '{name}'; use one of {', '.join(EMBEDDED_CORPORA)}.")


def embedded_files(name: str) -> list[Path]:
    """The files of the pinned package an embedded corpus is made from."""
    names = {"embedded:lee_background": [LEE_FILE], "embedded:wikipedia": [WIKI_FILE],
             "embedded:lee_wikipedia": [LEE_FILE, WIKI_FILE]}.get(name)
    if names is None:
        raise GeminiRayError(f"unknown embedded corpus '{name}'; use one of {', '.join(EMBEDDED_CORPORA)}.")
    return [gensim_test_data() / n for n in names]


_EXT = {".txt": "text", ".cor": "text", ".text": "text", ".jsonl": "jsonl", ".json": "jsonl",
        ".parquet": "parquet", ".csv": "csv"}


def infer_format(path: str, requested: str) -> str:
    """The file format from `data.format`, or from the extension (of the path or of the files in a dir)."""
    if requested != "auto":
        return requested
    name = path.rstrip("/")
    for compressed in (".gz", ".bz2", ".zst"):
        name = name.removesuffix(compressed)
    ext = Path(name).suffix.lower()
    if ext in _EXT:
        return _EXT[ext]
    p = Path(path)
    if p.is_dir():
        exts = {_EXT.get(f.suffix.lower()) for f in p.iterdir() if f.is_file() and not f.name.startswith(".")}
        exts.discard(None)
        if len(exts) == 1:
            return exts.pop()
    raise GeminiRayError(
        f"cannot tell the format of data.path '{path}' from its name. Set data.format to text, jsonl, parquet or csv."
    )


def _documents(texts: list[str], bad_utf8: list[bool], bad_record: list[bool]) -> dict[str, np.ndarray]:
    return {"text": np.array(texts, dtype=object), "bad_utf8": np.array(bad_utf8, dtype=bool),
            "bad_record": np.array(bad_record, dtype=bool)}


def split_lines(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{'bytes': file contents} -> {'text': one document per non-blank line, 'bad_utf8', 'bad_record': flags}.

    A line that is not valid UTF-8 yields text='' and bad_utf8=True (skipped and counted downstream).
    """
    texts, bad = [], []
    for blob in batch["bytes"]:
        for raw in bytes(blob).splitlines():
            if not raw.strip():
                continue
            try:
                texts.append(raw.decode("utf-8"))
                bad.append(False)
            except UnicodeDecodeError:
                texts.append("")
                bad.append(True)
    return _documents(texts, bad, [False] * len(texts))


def parse_jsonl(batch: dict[str, np.ndarray], column: str) -> dict[str, np.ndarray]:
    """{'bytes': jsonl file contents} -> documents: each non-blank line's `column` field. A line that is not
    UTF-8 (bad_utf8), or not a JSON object whose field is a string or null (bad_record), yields text=''."""
    texts, bad_utf8, bad_record = [], [], []
    for blob in batch["bytes"]:
        for raw in bytes(blob).splitlines():
            if not raw.strip():
                continue
            text, utf8_error, record_error = "", False, False
            try:
                field = json.loads(raw.decode("utf-8"))[column]  # a list or a number: TypeError
                if isinstance(field, str) or field is None:
                    text = field or ""
                else:
                    record_error = True
            except UnicodeDecodeError:
                utf8_error = True
            except (ValueError, KeyError, TypeError):
                record_error = True
            texts.append(text)
            bad_utf8.append(utf8_error)
            bad_record.append(record_error)
    return _documents(texts, bad_utf8, bad_record)


_INVALID_CSV_ROWS = [0]
"""csv rows with the wrong number of fields that this process's reader skipped and nobody counted yet."""


def _skip_invalid_csv_row(row) -> str:
    _INVALID_CSV_ROWS[0] += 1
    return "skip"


def _skip_invalid_csv_row_uncounted(row) -> str:
    return "skip"


def csv_read_options(column: str, count_skips: bool = True) -> dict:
    """Keyword arguments of ray.data.read_csv: only the text column, as bytes (decoded row by row in
    `decode_column`), and rows with the wrong number of fields skipped (counted by `decode_column` when it
    runs in the same task as the read, which Ray Data does when both ask for the same resources).
    `count_skips=False` is for a read that no `decode_column` follows (a schema probe): its skips would stay
    in the worker's counter and be counted by the next read there."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    handler = _skip_invalid_csv_row if count_skips else _skip_invalid_csv_row_uncounted
    return {"parse_options": pacsv.ParseOptions(invalid_row_handler=handler),
            "convert_options": pacsv.ConvertOptions(include_columns=[column], column_types={column: pa.binary()})}


def decode_column(batch: dict[str, np.ndarray], column: str) -> dict[str, np.ndarray]:
    """{column: str, bytes or None} -> documents; bytes that are not UTF-8 yield text='' and bad_utf8. The csv
    rows the reader skipped since the last call come out as bad_record rows (so that they are counted)."""
    texts, bad = [], []
    for value in batch[column]:
        if isinstance(value, (bytes, bytearray, np.bytes_)):
            try:
                texts.append(bytes(value).decode("utf-8"))
                bad.append(False)
            except UnicodeDecodeError:
                texts.append("")
                bad.append(True)
        else:
            texts.append("" if value is None else str(value))
            bad.append(False)
    skipped, _INVALID_CSV_ROWS[0] = _INVALID_CSV_ROWS[0], 0
    return _documents(texts + [""] * skipped, bad + [False] * skipped, [False] * len(texts) + [True] * skipped)


_WIKI_PATTERNS = [
    (re.compile(r"<!--.*?-->", re.S), " "),
    (re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S), " "),
    (re.compile(r"\{\|.*?\|\}", re.S), " "),  # tables
    (re.compile(r"\[\[(?:File|Image|Category):[^\]]*(?:\[\[[^\]]*\]\][^\]]*)*\]\]", re.I), " "),
    (re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]"), r"\1"),  # [[target|label]] -> label
    (re.compile(r"\[https?://\S+\s*([^\]]*)\]"), r"\1"),
    (re.compile(r"<[^>]+>"), " "),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), r"\1."),
    (re.compile(r"^[*#:;]+\s*", re.M), ""),
]


def strip_wiki_markup(text: str) -> str:
    """MediaWiki markup -> plain prose (templates, refs, tables, links and formatting removed)."""
    for _ in range(3):  # nested templates
        text = re.sub(r"\{\{[^{}]*\}\}", " ", text)
    for pattern, repl in _WIKI_PATTERNS:
        text = pattern.sub(repl, text)
    text = text.replace("&nbsp;", " ").replace("&amp;", "&").replace("&quot;", '"')
    return " ".join(text.split())


def wikipedia_documents(path: Path, min_words: int = 50) -> list[str]:
    """Articles of a MediaWiki XML dump (bz2) as plain text, redirects and stubs dropped."""
    import html
    import xml.etree.ElementTree as ET

    if not path.is_file():
        raise GeminiRayError(f"Wikipedia dump {path} is missing; reinstall with: pip install --no-deps gensim==4.4.0")
    docs = []
    with bz2.open(path, "rb") as f:
        for _, elem in ET.iterparse(f):
            if elem.tag.endswith("}text") or elem.tag == "text":
                raw = html.unescape(elem.text or "")
                if not raw.lstrip().upper().startswith("#REDIRECT"):
                    plain = strip_wiki_markup(raw)
                    if len(plain.split()) >= min_words:
                        docs.append(plain)
            elem.clear()
    return docs


_COMPRESSED = (".gz", ".bz2", ".zst")
_REPORTED: set[tuple[str, str]] = set()
"""(directory, line) of the notes unique_files printed: each once per process (the preflight check and the
read both list the corpus)."""


def _walk_unique(directory: Path, extensions: tuple[str, ...] | None,
                 hidden: bool) -> tuple[list[tuple[str, Path, os.stat_result]], list[str], list[str]]:
    """(relative posix path, path, stat) of each regular file below `directory` once, sorted, and the names
    of the files and folders left out as reached a second time ('b.txt (= a.txt)')."""
    def error(exc: OSError) -> None:
        raise GeminiRayError(f"data.path: cannot list the folder '{exc.filename}' ({exc.strerror}). Make it "
                             "readable, or move it out of data.path.")

    def listed(rel: str) -> bool:  # Ray Data skips names whose path below data.path starts with '.' or '_'
        return hidden or not rel.startswith((".", "_"))

    root_stat = os.stat(directory)
    folders = {(root_stat.st_dev, root_stat.st_ino): "data.path itself"}
    reached: list[tuple[str, Path, os.stat_result]] = []
    twice_folders: list[str] = []
    for root, dirs, names in os.walk(directory, onerror=error, followlinks=True):
        base = Path(root).relative_to(directory)
        kept = []
        for d in sorted(dirs):
            rel = (base / d).as_posix()
            if not listed(rel):
                continue
            try:
                st = os.stat(Path(root, d))  # follows a link to the folder it names
            except OSError:  # gone since os.walk listed it
                continue
            identity = (st.st_dev, st.st_ino)
            if identity in folders:  # a link back up the tree, or a second way into a folder
                twice_folders.append(f"{rel}/ (= {folders[identity]})")
                continue
            folders[identity] = f"{rel}/"
            kept.append(d)
        dirs[:] = kept  # os.walk enters only these, in this order
        for name in names:
            rel = (base / name).as_posix()
            plain = name.lower()
            for suffix in _COMPRESSED:
                plain = plain.removesuffix(suffix)
            if not listed(rel) or (extensions is not None and not plain.endswith(extensions)):
                continue
            try:
                st = os.stat(Path(root, name))  # follows a link; a broken one is not a file
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):  # not a fifo or a device: reading one would block or never end
                reached.append((rel, Path(root, name), st))
    files: dict[tuple[int, int], str] = {}
    kept_files, twice_files = [], []
    for rel, path, st in sorted(reached, key=lambda r: r[0]):
        identity = (st.st_dev, st.st_ino)
        if identity in files:
            twice_files.append(f"{rel} (= {files[identity]})")
        else:
            files[identity] = rel
            kept_files.append((rel, path, st))
    return kept_files, twice_files, twice_folders


def unique_files(directory: str | Path, extensions: tuple[str, ...] | None = None, *, hidden: bool = False,
                 report: bool = True) -> list[Path]:
    """The files below a local directory that a corpus read reads, each real file once, sorted by their path
    below it: Ray Data's own listing reads a file once per name it is reached by.

    Symlinks are followed (a folder of links to files kept elsewhere is a corpus), but a file reached again,
    through a symlink or a hard link to a file already listed, is left out (the one first in sorted order is
    read), and so is a folder reached again: a link back up the tree would otherwise be walked 40 links deep
    (until the system refuses the path), reading the same documents dozens of times, two such links millions.
    Read twice, a document trains twice as often, and a held-out one counts twice. What was left out is
    said in one line, once per process:
    `[gemini-ray] data.path: 2 file(s) reached twice through links are read once: b.txt (= a.txt), ...`.

    Args:
        directory: a local directory (data.path), named as the user gave it (links in it are not resolved).
        extensions: only names ending with one of these (before .gz/.bz2/.zst), e.g. ('.csv',); None: any.
        hidden: also names whose path below `directory` starts with '.' or '_', which Ray Data skips.
        report: print the line about files and folders left out.
    """
    directory = Path(directory).expanduser()
    kept, twice_files, twice_folders = _walk_unique(directory, extensions, hidden)
    parts = []
    if twice_files:
        parts.append(f"{len(twice_files)} file(s) reached twice through links are read once: "
                     + _some(twice_files))
    if twice_folders:
        parts.append(f"{len(twice_folders)} folder(s) reached twice through links are walked once: "
                     + _some(twice_folders))
    line = f"[gemini-ray] data.path: {'; '.join(parts)}"
    if parts and report and (str(directory), line) not in _REPORTED:
        _REPORTED.add((str(directory), line))
        print(line, flush=True)
    return [path for _, path, _ in kept]


_READER_EXTENSIONS = {"jsonl": (".json", ".jsonl"), "csv": (".csv",), "parquet": (".parquet",)}


def corpus_files(path: Path, fmt: str) -> list[Path]:
    """The files Ray Data reads for `path`: itself, or the files below a directory whose relative path does
    not start with '.' or '_', with the reader's extensions (any name for text), each real file once
    (`corpus.unique_files`: a file or folder reached again through a link is left out)."""
    if path.is_file():
        return [path]
    return unique_files(path, reader_extensions(fmt))


def reader_extensions(fmt: str) -> tuple[str, ...] | None:
    """The names a directory read of format `fmt` takes (before .gz/.bz2/.zst); None: any name (text)."""
    return _READER_EXTENSIONS.get(fmt)


def _some(names: list[str], shown: int = 10) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _files(location: str) -> list[tuple[str, int, int]]:
    """(path relative to `location`, size, mtime in ns) of every file at a path or URI, sorted; a local
    directory's files each once (unique_files: links are followed, loops walked once)."""
    import pyarrow.fs as pafs

    if not is_uri(location) and Path(location).expanduser().is_dir():
        kept, _, _ = _walk_unique(Path(location).expanduser(), None, hidden=True)
        return [(rel, st.st_size, st.st_mtime_ns) for rel, _, st in kept]
    fs, path = open_dir(location) if is_uri(location) else (pafs.LocalFileSystem(), str(Path(location).expanduser()))
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [(Path(path).name, info.size, info.mtime_ns or 0)]
    if info.type != pafs.FileType.Directory:
        return []
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted((f.path[len(path):].lstrip("/"), f.size, f.mtime_ns or 0) for f in found
                  if f.type == pafs.FileType.File)


def corpus_signature(path: str, fmt: str, text_column: str, max_documents: int | None) -> str:
    """The corpus's identity in the teacher-signal cache key, from its files' names, sizes and modification
    times (and the settings that choose what is read): known in constant time, before anything is read, so
    that a run can look up its cache and start on the first rows. A corpus rewritten in place, or copied
    elsewhere, gets a new key and is labelled again; the content fingerprint of what was read is recorded
    beside it (summary.json, the cache manifest)."""
    if path.startswith("embedded:"):  # a file of a pinned package: its size (the install time varies)
        listing = [(name, size) for source in embedded_files(path) for name, size, _ in _files(str(source))]
    else:
        path = path if is_uri(path) else str(Path(path).expanduser().resolve())
        listing = _files(path)
    what = {"path": path, "format": fmt, "text_column": text_column, "max_documents": max_documents,
            "files": listing}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
