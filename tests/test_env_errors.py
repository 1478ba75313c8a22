"""Environment errors said as the user's errors: damaged inputs and places that cannot be written.

The README promises that every environment error is one paragraph, `gemini-ray: error: ...`, exit 2, never a
stack trace. Each case here was a Python or Ray traceback once: a compressed corpus cut short, a parquet or
jsonl file cut short, a teacher cache that cannot be written, an evaluation window longer than the model
reads, a model directory without a tokenizer, a teacher-signal cache shard that is damaged. Each runs the real
CLI entry point with a tiny teacher and checks the exit code, the message (the file or key, and the fix), no
traceback, and that nothing was written. Cases refused before Ray make `ray.init` raise.

    python -m pytest tests/test_env_errors.py -m "not ray"     # the cases refused before Ray (seconds)
"""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.data  # noqa: F401  imported before capsys holds stderr (see tests/test_bad_input.py)
import transformers  # noqa: F401

from gemini_ray.cli import main
from gemini_ray.config import build_config
from gemini_ray.errors import GeminiRayError
from helpers import save, tiny_llama, word_tokenizer

RUN = "env"


def _no_ray(*args, **kwargs):
    raise AssertionError("this environment error must be refused before Ray starts")


@pytest.fixture
def no_ray(monkeypatch):
    """Ray may not start: the case is refused before it."""
    monkeypatch.setattr(ray, "init", _no_ray)


def _distill(tmp: Path, teacher: Path, corpus: Path, *extra: str, teacher_cache: str | None = None) -> list[str]:
    """`gemini-ray distill` with the tiny settings of tests/test_bad_input.py."""
    return ["distill", f"teacher.model={teacher}", "teacher.top_k=8", "teacher.batch_size=8",
            f"teacher.cache_dir={teacher_cache or tmp / 'teacher-cache'}", f"data.path={corpus}",
            "data.text_column=body",
            "data.span_length=16", "data.seq_length=32", "student.num_layers=2", "loss.num_negatives=3", "mining.window=16",
            "train.max_steps=2", "train.batch_size=4", "train.warmup_steps=1", f"run.storage_path={tmp / 'runs'}",
            f"run.name={RUN}", *extra]


def _refused(argv: list[str], capsys, tmp: Path, *expected: str) -> str:
    """Run the CLI; assert exit 2, one error paragraph holding every `expected` text, no traceback and no new
    file under `tmp`. Returns the message."""
    before = set(tmp.rglob("*"))
    code = main(argv)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("gemini-ray: error: ")]
    assert code == 2 and len(errors) == 1, (code, err[-3000:])
    message = errors[0].removeprefix("gemini-ray: error: ")
    for text in expected:
        assert text in message, message
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    assert [p for p in tmp.rglob("*") if p not in before] == []
    assert not (tmp / "runs" / RUN).exists()
    return message


def _jsonl(lee_texts: list[str], repeat: int = 1) -> bytes:
    return "".join(json.dumps({"body": f"{i} {t}"}) + "\n" for i in range(repeat) for t in lee_texts).encode()


# --------------------------------------------------------------------------- 1. corpus files cut short


CUTS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "docs.txt.gz": (gzip.compress, "gzip -t"), "docs.jsonl.gz": (gzip.compress, "gzip -t"),
    "docs.txt.bz2": (bz2.compress, "bzip2 -t"),
}


@pytest.mark.parametrize("name", list(CUTS))
def test_a_compressed_corpus_cut_short_is_refused_before_ray(name, tmp_path, llama_dir, lee_texts, capsys, no_ray):
    """Three quarters of a compressed corpus of ~2.4 MiB: its first MiB decompresses, the stream ends early.
    The check reads compressed files to their end (Ray Data's read fails there, after Ray started)."""
    compress, tool = CUTS[name]
    data = _jsonl(lee_texts, 60)
    if name.startswith("docs.txt"):
        data = b"\n".join(json.loads(line)["body"].encode() for line in data.splitlines()) + b"\n"
    whole = compress(data)
    corpus = tmp_path / name
    corpus.write_bytes(whole[: len(whole) * 3 // 4])
    _refused(_distill(tmp_path, llama_dir, corpus), capsys, tmp_path, f"data.path file '{corpus}' is cut short",
             f"test it with '{tool} {corpus}'", "Copy or download it again")


def test_a_jsonl_corpus_whose_last_line_is_cut_is_refused_naming_the_line(tmp_path, llama_dir, lee_texts, capsys,
                                                                           no_ray):
    data = _jsonl(lee_texts)
    corpus = tmp_path / "cut.jsonl"
    corpus.write_bytes(data[:-100])  # the 40th object loses its end
    _refused(_distill(tmp_path, llama_dir, corpus), capsys, tmp_path,
             f"line 40 of data.path file '{corpus}', its last, is cut short", "Copy or download the file again")


def test_a_parquet_corpus_cut_short_is_refused(tmp_path, llama_dir, lee_texts, capsys, no_ray):
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"body": lee_texts}), whole)
    corpus = tmp_path / "cut.parquet"
    corpus.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    _refused(_distill(tmp_path, llama_dir, corpus), capsys, tmp_path,
             f"data.path file '{corpus}' is cut short: it starts as a parquet file but its footer is missing",
             "Copy or download it again")


def test_a_read_that_fails_in_ray_names_the_file_or_data_path(tmp_path, lee_texts):
    """What the corpus read turns a Ray task's read error into (a file damaged after the check, a URI the
    check cannot look at): the file when the files say which, else data.path. No Ray: the error is raised here
    as Ray hands it on (an OSError)."""
    from gemini_ray.data.corpus_pass import read_errors

    corpus = tmp_path / "docs.txt.gz"
    whole = gzip.compress("\n".join(lee_texts).encode())
    corpus.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(GeminiRayError, match=f"data.path file '{corpus}' is cut short"):
        with read_errors(build_config(None, [f"data.path={corpus}"])):
            raise OSError("Truncated compressed stream")
    with pytest.raises(GeminiRayError, match=r"reading data.path 's3://bucket/docs.txt.gz' failed: Truncated "
                                             r"compressed stream\. .*gzip -t FILE"):
        with read_errors(build_config(None, ["data.path=s3://bucket/docs.txt.gz"])):
            raise OSError("Truncated compressed stream")


# --------------------------------------------------------------------------- 2. places that cannot be written


@pytest.mark.parametrize("where", ["proc", "under-a-file"])
def test_a_teacher_cache_dir_that_cannot_be_written_is_refused_before_converting(where, tmp_path, corpus_file,
                                                                                 capsys, no_ray):
    """teacher.cache_dir is where a GGUF teacher is converted to (~35 s for the embedded one): checked before
    the conversion, not when its result is saved. The GGUF file here is only its magic bytes."""
    gguf = tmp_path / "teacher.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    if where == "proc":
        cache = "/proc/gemini-ray-teachers"
    else:
        (tmp_path / "a-file").write_text("x")
        cache = str(tmp_path / "a-file" / "teachers")
    argv = _distill(tmp_path, gguf, corpus_file, teacher_cache=cache)
    _refused(argv, capsys, tmp_path, f"teacher.cache_dir '{cache}' is not writable",
             "Set teacher.cache_dir to a directory you can write to")


# --------------------------------------------------------------------------- 3. models the evaluation cannot run


def test_eval_window_longer_than_the_model_reads_is_refused(tmp_path, lee_texts, corpus_file, capsys, no_ray):
    tok = word_tokenizer(lee_texts, masked=False)
    model = tiny_llama(tok, layers=1)
    model.config.max_position_embeddings = 32
    student = save(model, tok, tmp_path / "student")
    argv = ["eval", str(student), "--no-teacher", "--teacher", str(student), "--out", str(tmp_path / "report"),
            f"data.path={corpus_file}", "data.text_column=body", f"run.storage_path={tmp_path / 'runs'}"]
    _refused(argv, capsys, tmp_path, "eval.lm_window=128, the held-out language-modelling window, is longer than "
             f"the model '{student}' reads: 32 positions (max_position_embeddings", "Set eval.lm_window=32")
    _refused(argv + ["eval.lm_window=32"], capsys, tmp_path, "eval.max_length=256", "Set eval.max_length=32")


def test_eval_of_a_model_without_a_tokenizer_is_refused(tmp_path, lee_texts, corpus_file, capsys, no_ray):
    model_dir = tmp_path / "weights-only"
    tiny_llama(word_tokenizer(lee_texts, masked=False), layers=1).save_pretrained(model_dir)
    argv = ["eval", str(model_dir), "--teacher", str(model_dir), "--out", str(tmp_path / "report"),
            f"data.path={corpus_file}", "data.text_column=body", "eval.max_length=32"]
    _refused(argv, capsys, tmp_path, f"the model directory '{model_dir}' holds no tokenizer",
             "Save it beside the model (tokenizer.save_pretrained(dir)")


# --------------------------------------------------------------------------- 4. a damaged cache shard


def _small_cache(directory: Path) -> dict:
    """Two shards and the manifest fields a run's read checks (label.py's format, rows and sizes)."""
    directory.mkdir()
    shards, expected = {}, {}
    for shard in (0, 1):
        path = directory / f"shard-{shard:05d}.parquet"
        pq.write_table(pa.table({"row": list(range(5)), "x": [float(shard)] * 5}), path)
        shards[str(shard)] = {"shard": shard, "rows": 5, "bytes": path.stat().st_size}
        expected[str(shard)] = 5
    manifest = {"complete": True, "shards_train": [0], "shards_val": [1], "expected_rows": expected,
                "shards": shards}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@pytest.mark.parametrize("damage", ["truncated", "overwritten", "deleted"])
def test_a_damaged_cache_shard_is_refused_before_a_run_reads_it(damage, tmp_path, no_ray):
    """Every listed shard's size and footer are checked before the stream is built: a shard cut short, with
    other bytes, or missing is named with the command that rebuilds it (no Ray: refused before it is needed)."""
    from gemini_ray.data.pipeline import read_cached_signal

    cache = tmp_path / "cache"
    manifest = _small_cache(cache)
    shard = cache / "shard-00001.parquet"
    data = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "overwritten":
        shard.write_bytes(bytes(len(data)))  # same size, no parquet footer
    else:
        shard.unlink()
    why = {"truncated": f"it holds {len(data) // 2:,} bytes, {len(data):,} when it was written",
           "overwritten": "its parquet footer does not read", "deleted": "it is missing"}[damage]
    with pytest.raises(GeminiRayError) as info:
        read_cached_signal(str(cache), manifest, num_negatives=1)
    message = str(info.value)
    assert f"teacher-signal cache shard '{shard}' is damaged: {why}" in message, message
    assert "Run 'gemini-ray label' with the same config" in message


@pytest.mark.ray
@pytest.mark.long  # two label passes and a distill start: 13 min on 2 busy cores
def test_distill_refuses_a_cache_with_a_damaged_shard_and_label_repairs_it(ray_start_2_cpus, tmp_path, llama_dir,
                                                                          corpus_file, capsys):
    """The real cache of `gemini-ray label`, one shard cut short: distill exits 2 naming it before training;
    `gemini-ray label` with the same config labels that shard again."""
    from gemini_ray.data.cache import check_shards, read_manifest

    cache = tmp_path / "cache"
    args = _distill(tmp_path, llama_dir, corpus_file, f"label.path={cache}", "label.max_negatives=3")[1:]
    assert main(["label", *args]) == 0
    capsys.readouterr()
    manifest = read_manifest(str(cache))
    shard = cache / f"shard-{manifest['shards_train'][0]:05d}.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    _refused(["distill", *args], capsys, tmp_path, f"teacher-signal cache shard '{shard}' is damaged",
             "Run 'gemini-ray label' with the same config")
    assert main(["label", *args]) == 0
    check_shards(str(cache), read_manifest(str(cache)))  # whole again
