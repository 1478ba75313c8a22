"""Look at local corpus files before anything starts (no Ray, no teacher): refuse what cannot work.

    check_corpus(cfg.data, min_documents=4, documents_key="loss.num_negatives")

Refused, each with a message naming the file and the fix:
* a missing path, an empty file or directory, a file holding only blank lines;
* a file that is not text: NUL bytes, or the magic bytes of gzip/bzip2/zstd/zip/PNG/JPEG/PDF/GGUF/parquet/ELF
  (compressed files named *.gz, *.bz2, *.zst are decompressed first, as Ray Data's readers do);
* UTF-16/UTF-32 text (byte-order mark) and text of which at least half of the lines in the first MiB
  are not UTF-8 (a file in another encoding). Fewer bad lines are skipped and counted by the pipeline;
* a jsonl file whose first lines are not JSON objects or lack `data.text_column`; a csv file whose header
  lacks it; a parquet file without parquet magic bytes or without that column;
* a text file with a line longer than `data.max_document_chars` characters (a file without line breaks
  would otherwise be tokenized as one document, taking minutes and gigabytes) or with fewer non-blank
  lines than `min_documents`. Text files are read once, in chunks, in numpy (about 0.3 s per 100 MB);
* a file cut short (an interrupted download, copy or write): a compressed file (*.gz, *.bz2, *.zst) whose
  stream ends before its end marker, a parquet file without its footer, a jsonl file whose last line stops
  inside a JSON object. Compressed files are decompressed to their end once, whatever their format (Ray
  Data's readers would fail there, after the run has started; 100 MB of gzip-compressed text took 0.35 s
  here); of an uncompressed jsonl file only the last line is read.

URIs (s3://, gs://) and embedded corpora are not looked at here; the pipeline reports on them.
"""

from __future__ import annotations

import codecs
import csv
import json
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from gemini_ray.config import DataConfig
from gemini_ray.data.corpus import corpus_files, infer_format
from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import is_uri

__all__ = ["check_corpus", "sniff_binary", "longest_line", "COMPRESSED_SUFFIXES"]

SAMPLE_BYTES = 1 << 20
CHUNK_BYTES = 1 << 22
JSON_LINES_CHECKED = 20

_MAGIC = [
    (b"\x1f\x8b", "gzip-compressed data"), (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
    (b"PK\x03\x04", "a zip archive"), (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
    (b"%PDF-", "a PDF document"), (b"GGUF", "a GGUF model file"), (b"PAR1", "a parquet file"),
    (b"\x7fELF", "an executable"),
]
_BOMS = [(codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16")]
_FIX_FORMAT = ("Give a UTF-8 text file (one document per line), jsonl, csv or parquet corpus as data.path "
               "(set data.format when the file name does not say which).")


def sniff_binary(head: bytes) -> str | None:
    """What a file's first bytes say it is when that is not text ('a PNG image', ...), else None."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head.startswith(b"BZh") and head[3:4].isdigit() and head[4:10] == b"1AY&SY":
        return "bzip2-compressed data"
    if b"\x00" in head and not any(head.startswith(bom) for bom, _ in _BOMS):
        return "binary data (it contains NUL bytes)"
    return None


COMPRESSED_SUFFIXES = {".gz": "gzip", ".bz2": "bzip2", ".zst": "zstd"}
"""Names of the compressed files Ray Data's readers (and this check) decompress, and the tool that tests each."""

def _chunks(stream: pa.NativeFile, first: bytes) -> Iterator[bytes]:
    if first:
        yield first
    while chunk := stream.read(CHUNK_BYTES):
        yield chunk


def _between(positions: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many of the sorted `positions` fall in each [start, end)."""
    return np.searchsorted(positions, ends) - np.searchsorted(positions, starts)


def longest_line(chunks: Iterator[bytes], stop_after: int | None = None) -> tuple[int, int, int]:
    """(characters of the longest line, its 1-based line number, non-blank lines) of UTF-8 text split as
    bytes.splitlines does (at \\n, \\r and \\r\\n). Characters are bytes less UTF-8 continuation bytes.
    Stops once `stop_after` non-blank lines were seen."""
    best = best_line = lines = newlines = 0
    carry_chars = carry_ink = 0  # characters, and non-blank ones, of the line the last chunk ended in
    for chunk in chunks:
        a = np.frombuffer(chunk, dtype=np.uint8)
        seps = np.flatnonzero((a == 10) | (a == 13))
        starts = np.concatenate(([0], seps + 1))  # one segment per separator, plus the unfinished one
        ends = np.append(seps, a.size)
        size = ends - starts
        chars = size - _between(np.flatnonzero((a & 0xC0) == 0x80), starts, ends)
        ink = size - _between(np.flatnonzero((a == 32) | ((a >= 9) & (a <= 12))), starts, ends)
        chars[0] += carry_chars
        ink[0] += carry_ink
        carry_chars, carry_ink = int(chars[-1]), int(ink[-1])
        chars, ink = chars[:-1], ink[:-1]  # the finished lines
        if chars.size:
            k = int(np.argmax(chars))
            if chars[k] > best:
                best, best_line = int(chars[k]), newlines + int(np.count_nonzero(a[seps[:k]] == 10)) + 1
            lines += int(np.count_nonzero(ink > 0))
            newlines += int(np.count_nonzero(a[seps] == 10))
        if stop_after is not None and lines >= stop_after:
            return best, best_line, lines
    lines += carry_ink > 0
    if carry_chars > best:
        best, best_line = carry_chars, newlines + 1
    return best, best_line, lines


def _utf8_problem(head: bytes, complete: bool) -> str | None:
    """Why the sampled lines are not UTF-8 text (at least half of them fail), else None."""
    lines = head.splitlines()
    tail = b"" if complete or not lines else lines.pop()  # the sample may end inside a line
    bad, first = 0, None
    for number, line in enumerate(lines, 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad += 1
            first = first or (number, line[exc.start])
    try:
        codecs.getincrementaldecoder("utf-8")().decode(tail, final=False)
    except UnicodeDecodeError as exc:
        bad, first = bad + 1, first or (len(lines) + 1, tail[exc.start])
        lines.append(tail)
    if bad == 0 or 2 * bad < len([line for line in lines if line.strip()]):
        return None
    return (f"{bad} of its first {len(lines)} lines are not valid UTF-8 (the first at line {first[0]}, "
            f"byte 0x{first[1]:02x}): it is in another encoding")


def _check_head(name: str, head: bytes, complete: bool, fmt: str) -> None:
    what = sniff_binary(head)
    if what is not None:
        hint = (" Name it *.gz / *.bz2 / *.zst so that it is decompressed, or decompress it."
                if "compressed" in what else "")
        kind = {"text": "text", "jsonl": "JSON-lines text", "csv": "CSV text"}.get(fmt, fmt)
        raise GeminiRayError(f"data.path file '{name}' is {what}, not {kind}.{hint} {_FIX_FORMAT}")
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            raise GeminiRayError(
                f"data.path file '{name}' is {encoding} text; the corpus must be UTF-8. Convert it, e.g. "
                f"'iconv -f {encoding} -t UTF-8 {name} > {Path(name).stem}.utf8{Path(name).suffix}', "
                "and point data.path at the result.")
    problem = _utf8_problem(head, complete)
    if problem:
        raise GeminiRayError(
            f"data.path file '{name}' is not UTF-8 text: {problem}. Convert it to UTF-8, e.g. "
            f"'iconv -f latin1 -t UTF-8 {name} > {Path(name).stem}.utf8{Path(name).suffix}' (name its real "
            "encoding), and point data.path at the result.")


def _check_jsonl(name: str, head: bytes, complete: bool, column: str) -> None:
    lines = [line for line in head.splitlines()[: None if complete else -1] if line.strip()]
    seen: set[str] = set()
    for number, line in enumerate(lines[:JSON_LINES_CHECKED], 1):
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise GeminiRayError(
                f"line {number} of data.path file '{name}' is not JSON ({exc}); jsonl holds one JSON object per "
                "line. Fix the file, or set data.format=text if it is plain text with one document per line."
            ) from None
        if not isinstance(value, dict):
            raise GeminiRayError(
                f"line {number} of data.path file '{name}' is a JSON {type(value).__name__}, not an object; jsonl "
                f"holds one object per line, e.g. {{\"{column}\": \"...\"}}. Write one object per line.")
        seen |= set(value)
    if lines and column not in seen:
        raise GeminiRayError(
            f"data.text_column '{column}' is not a field of the first lines of '{name}' (fields: {sorted(seen)}). "
            "Set data.text_column to the field that holds the documents.")


def _check_columns(name: str, column: str, columns: list[str]) -> None:
    if column not in columns:
        raise GeminiRayError(
            f"data.text_column '{column}' is not a column of '{name}' (columns: {columns}). "
            "Set data.text_column to the column that holds the documents.")


_CUT_FIX = "Copy or download it again, or point data.path at another file."


def _cut_short(name: str, what: str) -> GeminiRayError:
    return GeminiRayError(f"data.path file '{name}' is cut short: {what} (an interrupted download, copy or write). "
                          f"{_CUT_FIX}")


def _count_lines(f: Path) -> int:
    """Line breaks (\\n) in a whole uncompressed file, read in chunks: only for a message."""
    with open(f, "rb") as stream:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""))


def _last_line(f: Path) -> bytes:
    """The bytes after the last line break of an uncompressed file (b'' when it ends with one), read from
    the end backwards."""
    with open(f, "rb") as stream:
        end = stream.seek(0, 2)
        tail, pos = b"", end
        while pos > 0:
            step = min(SAMPLE_BYTES, pos)
            pos -= step
            stream.seek(pos)
            tail = stream.read(step) + tail
            cut = max(tail.rfind(b"\n"), tail.rfind(b"\r"))
            if cut >= 0:
                return tail[cut + 1 :]
        return tail


def _check_last_jsonl_line(name: str, last: bytes, line: Callable[[], int]) -> None:
    """Refuse a jsonl file whose last line (it does not end with a line break) is not whole JSON: the file
    was cut short in the middle of an object. One bad line elsewhere is a counted skip; this one says the
    file is not whole. line: its 1-based number, counted only for the message."""
    if not last.strip():
        return
    try:
        json.loads(last)
    except ValueError as exc:
        raise GeminiRayError(
            f"line {line()} of data.path file '{name}', its last, is cut short: the file ends inside a JSON object "
            f"({exc}) (an interrupted download, copy or write). Copy or download the file again, or remove that "
            "line if the rest is whole.") from None


def _drain(stream: pa.NativeFile, first: bytes) -> tuple[bytes, int]:
    """Read a (decompressing) stream to its end: (the bytes after its last line break, its line breaks)."""
    last, breaks = b"", 0
    for chunk in _chunks(stream, first):
        breaks += chunk.count(b"\n")
        cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        last = chunk[cut + 1 :] if cut >= 0 else last + chunk
    return last, breaks


def _check_parquet(f: Path, name: str, column: str) -> None:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(f)
    except (pa.ArrowException, OSError) as exc:
        with open(f, "rb") as stream:
            starts_as_parquet = stream.read(4) == b"PAR1"
        if starts_as_parquet:
            raise _cut_short(name, f"it starts as a parquet file but its footer is missing ({exc})") from None
        raise GeminiRayError(f"data.path file '{name}' is not a parquet file ({exc}). {_FIX_FORMAT}") from None
    _check_columns(name, column, schema.names)


def _check_file(f: Path, fmt: str, d: DataConfig) -> int:
    """Check one file; returns its non-blank lines for text files (0 for the other formats)."""
    name = str(f)
    if fmt == "parquet":
        _check_parquet(f, name, d.text_column)
        return 0
    codec = COMPRESSED_SUFFIXES.get(f.suffix.lower())
    lines = longest = line = 0
    try:
        with pa.input_stream(str(f), compression="detect") as stream:  # decompresses *.gz like Ray Data
            first = stream.read(SAMPLE_BYTES + 1)
            head, complete = first[:SAMPLE_BYTES], len(first) <= SAMPLE_BYTES
            _check_head(name, head, complete, fmt)
            if fmt == "jsonl":
                _check_jsonl(name, head, complete, d.text_column)
            elif fmt == "csv":
                header = head.splitlines()[0].decode("utf-8-sig", "replace") if head.strip() else ""
                _check_columns(name, d.text_column, next(csv.reader([header]), []))
            if fmt == "text":
                longest, line, lines = longest_line(_chunks(stream, first), stop_after=d.max_documents)
                first = b""  # consumed
            if codec is not None:  # to its end: a stream cut short fails only there
                last, breaks = _drain(stream, first)
                if fmt == "jsonl":
                    _check_last_jsonl_line(name, last, lambda: breaks + 1)
    except (pa.ArrowException, OSError, EOFError) as exc:
        if codec is not None and ("truncated" in str(exc).lower() or isinstance(exc, EOFError)):
            raise GeminiRayError(
                f"data.path file '{name}' is cut short: its {codec} stream stops before its end marker ({exc}; an "
                f"interrupted download, copy or write). Copy or download it again (test it with '{codec} -t "
                f"{name}'), or point data.path at another file.") from None
        raise GeminiRayError(
            f"data.path file '{name}' cannot be read or decompressed ({exc}). Check that its content matches "
            "its name (a *.gz file must be gzip), or point data.path at another file.") from None
    if fmt == "jsonl" and codec is None:
        _check_last_jsonl_line(name, _last_line(f), lambda: _count_lines(f) + 1)
    if fmt != "text":
        return 0
    if longest > d.max_document_chars:
        raise GeminiRayError(
            f"line {line} of data.path file '{name}' is {longest:,} characters long, more than "
            f"data.max_document_chars={d.max_document_chars:,}; a text corpus holds one document per line, so this "
            "file probably lacks line breaks. Put one document per line, or raise data.max_document_chars if the "
            "documents really are that long.")
    return lines


def check_corpus(d: DataConfig, min_documents: int = 2, documents_key: str = "loss.num_negatives") -> None:
    """Refuse a local corpus that cannot work (see the module docstring) before anything starts.

    Args:
        d: the data section of the config.
        min_documents: fewest documents a run can use (more than the negatives it mines per anchor).
        documents_key: the config key that sets `min_documents`, named in the message.
    """
    if d.path.startswith("embedded:") or is_uri(d.path):
        return
    path = Path(d.path).expanduser()
    if not path.exists():
        raise GeminiRayError(f"data.path '{d.path}' does not exist. Point it at a corpus file, a directory of "
                             "them, or a URI (s3://..., gs://...).")
    fmt = infer_format(str(path), d.format)
    files = [f for f in corpus_files(path, fmt) if f.stat().st_size > 0]
    if not files:
        what = "is empty (0 bytes)" if path.is_file() else "holds no non-empty files"
        raise GeminiRayError(f"data.path '{d.path}' {what}. Give a corpus with at least {min_documents} "
                             "documents (a text file holds one per line).")
    lines = sum(_check_file(f, fmt, d) for f in files)
    if fmt != "text" or (d.max_documents is not None and lines >= d.max_documents):
        return
    if lines == 0:
        raise GeminiRayError(f"data.path '{d.path}' holds only blank lines. Give a corpus with at least "
                             f"{min_documents} documents, one per line.")
    if lines < min_documents:
        raise GeminiRayError(
            f"data.path '{d.path}' holds {lines} document{'s' if lines > 1 else ''} (one per non-blank line), but a "
            f"run needs at least {min_documents}, each long enough for two spans: every anchor needs {documents_key}="
            f"{min_documents - 1} negatives from other documents. Add documents, one per line, or lower "
            f"{documents_key}.")
