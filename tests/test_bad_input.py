"""The bad-input catalogue (docs/bad-inputs.md): every bad input tried, through the real CLI entry point.

Each case runs `gemini_ray.cli.main` in-process with a tiny teacher and asserts: exit code 2, one
`gemini-ray: error:` line naming the problem and the fix, no traceback, nothing written under the
storage path. The table in docs/bad-inputs.md must show each message as it really is (paths shortened
to <tmp>, <teacher>, <corpus>); after changing a message, rewrite the table with

    GEMINI_RAY_WRITE_BAD_INPUTS=1 python -m pytest tests/test_bad_input.py

Cases marked `ray` get past the corpus checks and need the session's Ray instance; they still fail
before training starts. The others must fail before Ray starts (`ray.init` is made to raise).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import ray  # noqa: F401  imported here, not first inside a case: loggers made while capsys holds
import ray.data  # noqa: F401  stderr keep writing to its closed stream in later tests ('Logging error')
import ray.train  # noqa: F401
import transformers  # noqa: F401

from gemini_ray.cli import main
from gemini_ray.config import ConfigError, TrainConfig
from gemini_ray.data.cache import CACHE_VERSION

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"
WRITE_DOC = os.environ.get("GEMINI_RAY_WRITE_BAD_INPUTS") == "1"
MAX_SHOWN = 260
RUN = "bad"


@dataclass
class Ctx:
    """Where a case builds its inputs: a fresh tmp dir, the tiny teacher and the small jsonl corpus."""

    tmp: Path
    teacher: Path
    corpus: Path

    @property
    def storage(self) -> Path:
        return self.tmp / "runs"

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    def folder(self, name: str) -> Path:
        (self.tmp / name).mkdir()
        return self.tmp / name

    def texts(self) -> list[str]:
        return [json.loads(line)["body"] for line in self.corpus.read_text(encoding="utf-8").splitlines()]

    def distill(self, *extra: str, corpus: Path | None = None, teacher: Path | None = None,
                storage: Path | str | None = None) -> list[str]:
        """`gemini-ray distill` with the tiny settings of test_distill_e2e, `extra` overrides replacing them (a
        key given twice on the command line is refused)."""
        base = [f"teacher.model={teacher or self.teacher}", "teacher.top_k=8", "teacher.batch_size=8",
                f"teacher.cache_dir={self.tmp / 'teacher-cache'}", f"data.path={corpus or self.corpus}",
                "data.text_column=body", "data.span_length=16", "data.seq_length=32", "student.num_layers=2", "loss.num_negatives=3",
                "mining.window=16", "train.max_steps=2", "train.batch_size=4", "train.warmup_steps=1",
                f"run.storage_path={storage or self.storage}", f"run.name={RUN}"]
        given = {e.split("=", 1)[0] for e in extra}
        return ["distill", *(b for b in base if b.split("=", 1)[0] not in given), *extra]

    def config(self, *extra: str, yaml: str | None = None) -> list[str]:
        """`gemini-ray config` with a YAML file holding `yaml` (when given) and `extra` overrides."""
        return ["config", *(["--config", str(self.file("cfg.yaml", yaml))] if yaml is not None else []), *extra]


@dataclass
class Case:
    id: str
    what: str  # the bad input, as the docs table names it
    how: str  # how the test gives it
    argv: Callable[[Ctx], list[str]]
    problem: str  # must appear in the message: it names the problem
    fix: str  # must appear in the message: it says what to do
    ray: bool = False  # gets past the corpus checks: needs the session's Ray instance


def _random_bytes(n: int) -> bytes:
    return random.Random(0).randbytes(n)


def _one_line(ctx: Ctx, mib: int = 48) -> Path:
    """A text file of `mib` MiB with no line break (words of the corpus repeated)."""
    words = " ".join(ctx.texts()).encode("utf-8") + b" "
    return ctx.file("one-line.txt", (words * (mib * 2**20 // len(words) + 1))[: mib * 2**20])


def _student_other_vocab(ctx: Ctx) -> Path:
    from helpers import save, tiny_llama, word_tokenizer

    tok = word_tokenizer(ctx.texts(), masked=False, vocab_size=200)
    return save(tiny_llama(tok, layers=2), tok, ctx.tmp / "student-200")


def _run_trained_at_half(ctx: Ctx) -> Path:
    """The storage path holding run RUN as `ctx.distill()` starts it (its record) with a whole checkpoint."""
    import torch

    from gemini_ray.config import build_config
    from gemini_ray.models.checkpoint import save_checkpoint
    from gemini_ray.training.run_record import record_start

    cfg = build_config(None, ctx.distill()[1:])
    record_start(cfg, str(ctx.storage / RUN))
    model = torch.nn.Linear(2, 2)
    save_checkpoint(ctx.storage / RUN / "checkpoint_000002", model, torch.optim.SGD(model.parameters(), lr=0.1),
                    {"step": 2})
    return ctx.storage


def _users_folder(ctx: Ctx) -> Path:
    """A folder of the user's: a file and a subfolder gemini_ray did not write."""
    folder = ctx.folder("mine")
    (folder / "thesis.pdf").write_bytes(b"%PDF-1.7")
    (folder / "models").mkdir()
    return folder


def _earlier_export(ctx: Ctx) -> Path:
    from gemini_ray.paths import make_output_dir

    make_output_dir(ctx.tmp / "exported", "student export")
    (ctx.tmp / "exported" / "model.safetensors").write_bytes(b"weights")
    return ctx.tmp / "exported"


def _held_run_folder(ctx: Ctx) -> Path:
    """The storage path whose run RUN is held by another command (a lock taken here, left held)."""
    import contextlib

    from gemini_ray.cluster.run_lock import hold_run_folder

    ctx.held = contextlib.ExitStack()
    ctx.held.enter_context(hold_run_folder(str(ctx.storage / RUN)))
    return ctx.storage


def _other_teachers_cache(ctx: Ctx) -> Path:
    """A complete cache whose manifest says another teacher made it (label.py's manifest format)."""
    cache = ctx.tmp / "other-cache"
    cache.mkdir()
    identity = {"teacher_weights": "0" * 64, "tokenizer_vocab": "0" * 64, "corpus": "0" * 64, "span_length": 16,
                "masked": False, "mlm_probability": None, "data_seed": 0, "val_fraction": 0.05, "top_k": 8,
                "max_negatives": 8, "mining_window": 16, "mining_seed": 0}
    manifest = {"version": CACHE_VERSION, "identity": identity, "complete": True, "shards_train": [0], "shards_val": [],
                "shards": {}, "teacher_tokens": 0}
    (cache / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return cache


def _cache_folder(ctx: Ctx, version: int, corpus: str) -> Path:
    """A half-written cache in the given format, made from the corpus named: a header manifest, one block's
    record and its shard, as a killed `label` leaves them."""
    cache = ctx.tmp / "half-cache"
    (cache / "blocks").mkdir(parents=True)
    identity = {"teacher_weights": "0" * 64, "tokenizer_vocab": "0" * 64, "corpus": corpus, "span_length": 16}
    (cache / "manifest.json").write_text(json.dumps({"version": version, "identity": identity, "complete": False}))
    (cache / "blocks" / "00000.json").write_text(json.dumps({"key": "0" * 20, "shards": {"0": {"rows": 3}}}))
    (cache / "shard-00000.parquet").write_bytes(b"PAR1")
    return cache


def _growing_corpus(ctx: Ctx) -> Path:
    """The corpus as a text file that a thread appends a document to every 0.1 s for a minute (a log still
    being written, a copy still running)."""
    import threading
    import time

    path = ctx.file("growing.txt", "\n".join(ctx.texts()) + "\n")

    def grow() -> None:
        for i in range(600):
            time.sleep(0.1)
            with path.open("a", encoding="utf-8") as f:
                f.write(f"a late document, number {i}, " * 8 + "\n")

    threading.Thread(target=grow, daemon=True).start()
    return path


def _signal_space(ctx: Ctx) -> Path:
    """A search space that searches the teacher's top-k and the span length beside λ."""
    return ctx.file("space.yaml", "loss.lambda_kd: {uniform: [0.2, 0.8]}\nteacher.top_k: {choice: [8, 16]}\n"
                                  "data.span_length: {choice: [16, 32]}\n")


def _texts(ctx: Ctx, encoding: str, prefix: str = "") -> bytes:
    return "\n".join(prefix + t for t in ctx.texts()).encode(encoding, "replace")


FIX_RANGE = "Change it in the --config file or on the command line, e.g."


def _range(key: str, value: str, problem: str, what: str) -> Case:
    default = {"loss.lambda_kd": "0.5", "loss.cl_temperature": "0.05", "loss.kd_temperature": "1.0",
               "teacher.top_k": "16", "loss.num_negatives": "4", "train.lr": "0.0003", "train.batch_size": str(TrainConfig().batch_size),
               "data.max_document_chars": "1000000", "train.keep_checkpoints": "2"}[key]
    return Case(f"{key.split('.')[1]}={value}", what, f"`{key}={value}`", lambda c: c.config(f"{key}={value}"),
                f"config key '{key}': {problem}", f"{FIX_RANGE} {key}={default} (the default)")


CASES: list[Case] = [
    # --- config: fails while the config is read, before anything else -------------------------------------
    Case("yaml-malformed", "Malformed YAML", "`--config` file with `lambda_kd: [0.5` (unclosed bracket)",
         lambda c: c.config(yaml="loss:\n  lambda_kd: [0.5\n"), "is not valid YAML", "Fix the file there"),
    Case("yaml-tab", "Malformed YAML", "`--config` file indented with a tab",
         lambda c: c.config(yaml="loss:\n\tlambda_kd: 0.5\n"), "found character '\\t'", "indent with spaces"),
    Case("yaml-list", "YAML that is not a mapping", "`--config` file holding a list",
         lambda c: c.config(yaml="- loss\n- train\n"), "must hold a mapping of sections", "Write sections"),
    Case("yaml-binary", "A config file that is not text", "`--config` file of random bytes",
         lambda c: ["config", "--config", str(c.file("cfg.yaml", _random_bytes(200)))],
         "is not UTF-8 text", "Save it as UTF-8 YAML"),
    Case("yaml-missing", "A config file that does not exist", "`--config nope.yaml`",
         lambda c: ["config", "--config", str(c.tmp / "nope.yaml")], "does not exist", "Pass an existing YAML"),
    Case("section-not-mapping", "A section that is not a mapping", "`loss: 0.5` in the file",
         lambda c: c.config(yaml="loss: 0.5\n"), "config section 'loss' must be a mapping", "Put its keys below it"),
    Case("unknown-section", "Unknown section", "`los.lambda_kd=0.3`", lambda c: c.config("los.lambda_kd=0.3"),
         "unknown config key 'los.lambda_kd'", "Did you mean 'loss.lambda_kd'?"),
    Case("misspelt-key", "Misspelt key", "`loss.lamda_kd=0.3`", lambda c: c.config("loss.lamda_kd=0.3"),
         "unknown config key 'loss.lamda_kd'", "Did you mean 'loss.lambda_kd'?"),
    Case("misspelt-key-yaml", "Misspelt key", "`loss: {lamda_kd: 0.3}` in the file",
         lambda c: c.config(yaml="loss:\n  lamda_kd: 0.3\n"), "unknown config key 'loss.lamda_kd'",
         "Did you mean 'loss.lambda_kd'?"),
    Case("unknown-key", "Unknown key", "`loss.zzz=1`", lambda c: c.config("loss.zzz=1"),
         "unknown config key 'loss.zzz'", "Use one of that section's keys: loss.lambda_kd"),
    Case("not-an-override", "An override without '='", "`gemini-ray config loss.lambda_kd`",
         lambda c: c.config("loss.lambda_kd"), "override 'loss.lambda_kd' must look like 'section.key=value'",
         "e.g. 'loss.lambda_kd=0.7'"),
    Case("type-float", "Wrong type", "`loss.lambda_kd=abc`", lambda c: c.config("loss.lambda_kd=abc"),
         "expected a number (float), got 'abc'", f"{FIX_RANGE} loss.lambda_kd=0.5"),
    Case("type-int", "Wrong type", "`train.batch_size=8.5`", lambda c: c.config("train.batch_size=8.5"),
         "expected a whole number (int), got 8.5", f"{FIX_RANGE} train.batch_size={TrainConfig().batch_size}"),
    Case("type-int-yaml", "Wrong type", "`train: {max_steps: ten}` in the file",
         lambda c: c.config(yaml="train:\n  max_steps: ten\n"), "expected a whole number (int), got 'ten'",
         f"{FIX_RANGE} train.max_steps=60"),
    Case("type-bool", "Wrong type", "`train.use_gpu=3`", lambda c: c.config("train.use_gpu=3"),
         "expected true or false (bool), got 3", f"{FIX_RANGE} train.use_gpu=false"),
    Case("type-choice", "Wrong type", "`loss.kd_form=soft`", lambda c: c.config("loss.kd_form=soft"),
         "must be one of ['paper', 'hinton'], got 'soft'", f"{FIX_RANGE} loss.kd_form=paper"),
    _range("loss.lambda_kd", "1.5", "must be in [0, 1], got 1.5", "Out-of-range λ"),
    _range("loss.lambda_kd", "-0.1", "must be in [0, 1], got -0.1", "Out-of-range λ"),
    _range("loss.lambda_kd", "nan", "must be a finite number, got 'nan'", "Out-of-range λ"),
    _range("loss.cl_temperature", "0", "must be > 0, got 0.0", "Out-of-range τ"),
    _range("loss.cl_temperature", "-0.05", "must be > 0, got -0.05", "Out-of-range τ"),
    _range("loss.cl_temperature", "inf", "must be a finite number, got 'inf'", "Out-of-range τ"),
    _range("loss.kd_temperature", "0", "must be > 0, got 0.0", "Out-of-range KD temperature"),
    _range("loss.kd_temperature", ".inf", "must be a finite number, got inf", "Out-of-range KD temperature"),
    _range("teacher.top_k", "0", "must be >= 1, got 0", "Out-of-range top-k"),
    _range("loss.num_negatives", "0", "must be >= 1, got 0", "Out-of-range K"),
    _range("train.lr", "0", "must be in (0, 1), got 0.0", "Out-of-range learning rate"),
    _range("train.lr", "2", "must be in (0, 1), got 2.0", "Out-of-range learning rate"),
    _range("train.lr", "-1e-4", "must be in (0, 1), got -0.0001", "Out-of-range learning rate"),
    _range("train.batch_size", "0", "must be >= 1, got 0", "Out-of-range batch size"),
    _range("train.batch_size", "-8", "must be >= 1, got -8", "Out-of-range batch size"),
    _range("train.keep_checkpoints", "0", "must be >= 1, or null to keep every checkpoint",
           "Out-of-range checkpoint count"),
    _range("data.max_document_chars", "10", "must be >= 1000", "Out-of-range document cap"),
    Case("fractional-gpus-tensor-parallel", "Fractional GPUs for a sharded teacher",
         "`teacher.backend=vllm teacher.tensor_parallel_size=2 teacher.num_gpus=1.5`",
         lambda c: c.config("teacher.backend=vllm", "teacher.tensor_parallel_size=2", "teacher.num_gpus=1.5"),
         "must be a whole number with tensor x pipeline parallel size 2", "set teacher.num_gpus=2"),
    # --- corpus files: refused before the teacher loads or Ray starts ---------------------------------------
    Case("corpus-missing", "A corpus path that does not exist", "`data.path=<tmp>/nope.txt`",
         lambda c: c.distill(corpus=c.tmp / "nope.txt"), "does not exist", "Point it at a corpus file"),
    Case("corpus-empty", "Empty file", "a 0-byte `empty.txt`", lambda c: c.distill(corpus=c.file("empty.txt", "")),
         "is empty (0 bytes)", "Give a corpus with at least 4 documents"),
    Case("corpus-blank", "Empty file", "a text file of blank lines",
         lambda c: c.distill(corpus=c.file("blank.txt", "\n  \n\t\n")), "holds only blank lines",
         "Give a corpus with at least 4 documents"),
    Case("corpus-binary", "Binary file", "64 KiB of random bytes as `random.txt`",
         lambda c: c.distill(corpus=c.file("random.txt", _random_bytes(1 << 16))),
         "is binary data (it contains NUL bytes), not text", "Give a UTF-8 text file"),
    Case("corpus-png", "Binary file", "a PNG header and random bytes as `image.txt`",
         lambda c: c.distill(corpus=c.file("image.txt", b"\x89PNG\r\n\x1a\n" + _random_bytes(4096))),
         "is a PNG image, not text", "Give a UTF-8 text file"),
    Case("corpus-gzip-unnamed", "Binary file", "gzip-compressed text named `docs.txt`",
         lambda c: c.distill(corpus=c.file("docs.txt", gzip.compress(_texts(c, "utf-8"), mtime=0))),
         "is gzip-compressed data, not text", "Name it *.gz"),
    Case("corpus-fake-gz", "Binary file", "plain text named `docs.txt.gz`",
         lambda c: c.distill(corpus=c.file("docs.txt.gz", _texts(c, "utf-8"))),
         "cannot be read or decompressed", "a *.gz file must be gzip"),
    Case("corpus-latin1", "Non-UTF-8 file", "the corpus in Latin-1, every line starting with 'café'",
         lambda c: c.distill(corpus=c.file("latin1.txt", _texts(c, "latin-1", "café "))),
         "is not UTF-8 text: 40 of its first 40 lines", "Convert it to UTF-8, e.g. 'iconv -f latin1"),
    Case("corpus-utf16", "Non-UTF-8 file", "the corpus in UTF-16 (with BOM)",
         lambda c: c.distill(corpus=c.file("utf16.txt", _texts(c, "utf-16"))),
         "is UTF-16 text; the corpus must be UTF-8", "iconv -f UTF-16 -t UTF-8"),
    Case("corpus-one-line", "Gigantic single-line file", "48 MiB of words with no line break",
         lambda c: c.distill(corpus=_one_line(c)), "is 50,331,648 characters long, more than "
         "data.max_document_chars=1,000,000", "Put one document per line"),
    Case("corpus-one-document", "Corpus of one document", "a text file of one long line",
         lambda c: c.distill(corpus=c.file("one.txt", c.texts()[0] + "\n")),
         "holds 1 document (one per non-blank line), but a run needs at least 4",
         "Add documents, one per line, or lower loss.num_negatives"),
    Case("jsonl-binary", "Binary file", "random bytes as `docs.jsonl`",
         lambda c: c.distill(corpus=c.file("bin.jsonl", _random_bytes(4096))),
         "is binary data (it contains NUL bytes), not JSON-lines text", "Give a UTF-8 text file"),
    Case("jsonl-not-json", "Malformed jsonl", "plain text as `docs.jsonl`",
         lambda c: c.distill(corpus=c.file("text.jsonl", _texts(c, "utf-8"))), "is not JSON",
         "set data.format=text"),
    Case("jsonl-array", "Malformed jsonl", "one JSON array on one line",
         lambda c: c.distill(corpus=c.file("array.jsonl", json.dumps([{"body": t} for t in c.texts()]))),
         "is a JSON list, not an object", "Write one object per line"),
    Case("jsonl-no-column", "Wrong text column", "`data.text_column=missing`",
         lambda c: c.distill("data.text_column=missing"), "data.text_column 'missing' is not a field",
         "Set data.text_column to the field"),
    Case("parquet-fake", "A parquet file that is not parquet", "text named `docs.parquet`",
         lambda c: c.distill(corpus=c.file("docs.parquet", "hello\n")), "is not a parquet file",
         "Give a UTF-8 text file"),
    Case("corpus-unknown-format", "Unknown file format", "a file named `docs.xyz`",
         lambda c: c.distill(corpus=c.file("docs.xyz", "hello\n")), "cannot tell the format",
         "Set data.format to text, jsonl, parquet or csv"),
    # --- where results go: refused before anything is read --------------------------------------------------
    Case("storage-proc", "Storage path without write permission", "`run.storage_path=/proc/gemini-ray-runs`",
         lambda c: c.distill(storage="/proc/gemini-ray-runs"), "run.storage_path '/proc/gemini-ray-runs' is not "
         "writable", "Set run.storage_path to a directory you can write to"),
    Case("storage-under-file", "Storage path without write permission", "`run.storage_path` below a regular file",
         lambda c: c.distill(storage=c.file("a-file", "x") / "runs"), "is a file, not a directory",
         "Set run.storage_path to a directory you can write to"),
    Case("output-dir-sys", "Storage path without write permission", "`run.output_dir=/sys/gemini-ray-student`",
         lambda c: c.distill("run.output_dir=/sys/gemini-ray-student"), "run.output_dir '/sys/gemini-ray-student' "
         "is not writable", "Set run.output_dir to a directory you can write to"),
    # --- the teacher: refused while it is resolved and loaded, before Ray starts ---------------------------
    Case("teacher-missing", "Teacher path that is not a model", "`teacher.model=<tmp>/no-teacher`",
         lambda c: c.distill(teacher=c.tmp / "no-teacher"), "teacher.model '<tmp>/no-teacher' does not exist",
         "Give an existing directory or a hub name"),
    Case("teacher-empty-dir", "Teacher path that is not a model", "a directory without config.json",
         lambda c: c.distill(teacher=c.folder("not-a-model")), "is not a Hugging Face model directory (no config.json)",
         "Point it at a directory written by save_pretrained"),
    Case("teacher-text-file", "Teacher path that is not a model", "`teacher.model` = the corpus file",
         lambda c: c.distill(teacher=c.corpus), "is a file, not a model", "give a Hugging Face model directory"),
    Case("teacher-fake-gguf", "Teacher path that is not a model", "a text file named `teacher.gguf`",
         lambda c: c.distill(teacher=c.file("teacher.gguf", "not a model\n")),
         "is not a GGUF model (it does not start with the GGUF magic bytes)", "Point teacher.model"),
    Case("seq-length-over-positions", "A KD window longer than the model reads",
         "`data.seq_length=256` (the teacher reads 128 positions)", lambda c: c.distill("data.seq_length=256"),
         "data.seq_length=256, the KD window, is longer than the teacher", "Set data.seq_length=128 or lower"),
    Case("span-longer-than-window", "A span longer than the KD window", "`data.span_length=64 data.seq_length=32`",
         lambda c: c.distill("data.span_length=64", "data.seq_length=32"),
         "must be at most data.seq_length=32 (a contrastive span is the start of a KD window), got 64",
         "lower data.span_length or raise data.seq_length"),
    Case("top_k-over-vocab", "Out-of-range top-k", "`teacher.top_k=100000` (the teacher has 400 tokens)",
         lambda c: c.distill("teacher.top_k=100000"), "teacher.top_k=100000 exceeds the teacher's vocabulary",
         "Choose teacher.top_k <= 400"),
    Case("resume-other-loss", "A resume with another config", "`loss.lambda_kd=0.9` on a run.name whose "
         "checkpoint was trained at the default 0.5", lambda c: c.distill("loss.lambda_kd=0.9",
                                                                          storage=_run_trained_at_half(c)),
         "loss.lambda_kd: 0.5 then, 0.9 now", "start a new run with another run.name"),
    # --- where results go: never a folder of anything else, one command per run folder -----------------
    Case("run-name-parent", "A run name that climbs out of run.storage_path", "`run.name=..`",
         lambda c: c.distill("run.name=.."), "config key 'run.name': names one folder inside run.storage_path",
         "e.g. run.name=demo"),
    Case("run-name-separator", "A run name that climbs out of run.storage_path", "`run.name=../other/run`",
         lambda c: c.distill("run.name=../other/run"), "no '/'", "e.g. run.name=demo"),
    Case("yaml-repeated-key", "A YAML file that sets a key twice", "`lambda_kd` twice in the `loss:` section",
         lambda c: c.config(yaml="loss:\n  lambda_kd: 0.3\n  lambda_kd: 0.9\n"),
         "sets 'loss.lambda_kd' twice, at lines 2 and 3", "Keep one of them"),
    Case("override-twice", "An override given twice", "`loss.lambda_kd=0.3 loss.lambda_kd=0.9`",
         lambda c: c.config("loss.lambda_kd=0.3", "loss.lambda_kd=0.9"), "is given twice on the command line",
         "Give it once"),
    Case("output-dir-user-files", "An output folder that holds the user's files",
         "`run.output_dir` = a folder holding `thesis.pdf` and `models/`",
         lambda c: c.distill(f"run.output_dir={_users_folder(c)}"), "is a folder that holds files gemini_ray did not "
         "write (models, thesis.pdf)", "Choose an empty or new folder for run.output_dir"),
    Case("output-dir-user-files-overwrite", "An output folder that holds the user's files",
         "the same with `run.overwrite_output=true`",
         lambda c: c.distill(f"run.output_dir={_users_folder(c)}", "run.overwrite_output=true"),
         "is a folder that holds files gemini_ray did not write", "gemini_ray never replaces a folder it did not "
         "write"),
    Case("output-dir-ours", "An output folder holding an earlier export",
         "`run.output_dir` = a folder an earlier `distill` exported to, without `run.overwrite_output=true`",
         lambda c: c.distill(f"run.output_dir={_earlier_export(c)}"), "already holds an earlier output of gemini_ray",
         "or set run.overwrite_output=true to replace that earlier output"),
    Case("output-dir-file", "An output path that is a file", "`run.output_dir` = a file of the user's",
         lambda c: c.distill(f"run.output_dir={c.file('student.bin', 'weights')}"), "is a file, not a folder",
         "Choose another run.output_dir, or move the file away"),
    Case("eval-out-user-files", "An output folder that holds the user's files",
         "`gemini-ray eval <teacher> --out` a folder holding the user's files",
         lambda c: ["eval", str(c.teacher), "--no-teacher", "--out", str(_users_folder(c))],
         "is a folder that holds files gemini_ray did not write", "Choose an empty or new folder for --out"),
    Case("label-path-user-files", "An output folder that holds the user's files",
         "`gemini-ray label` with `label.path` = a folder holding the user's files (not a cache)",
         lambda c: ["label", *c.distill(f"label.path={_users_folder(c)}")[1:]],
         "is a folder that holds files gemini_ray did not write", "Choose an empty or new folder for label.path"),
    Case("run-folder-in-use", "A run folder another command is using",
         "a second `distill` with the run.name and run.storage_path of one that is running",
         lambda c: c.distill(storage=_held_run_folder(c)), "is in use by another gemini-ray command (pid <pid> on "
         "host <host>", "Wait for it to finish or stop it, or give this command another run.name"),
    Case("student-other-vocab", "Teacher and student with different vocabularies",
         "`student.from_pretrained` = a tiny Llama with a 200-token vocabulary",
         lambda c: c.distill(f"student.from_pretrained={_student_other_vocab(c)}"),
         "has a different vocabulary from the teacher's (200 vs 400 ids", "Use a student derived from this teacher"),
    Case("space-searches-signal", "A search space with a teacher or data key",
         "`gemini-ray tune` with a space that searches `teacher.top_k` and `data.span_length`",
         lambda c: ["tune", *c.distill(f"tune.space={_signal_space(c)}")[1:]],
         "searches teacher.top_k, data.span_length: these set the teacher signal",
         "Run one search per value, each with its own 'gemini-ray label'"),
    # --- known only once the corpus is tokenized: Ray has started, training has not ----------------------
    Case("corpus-too-short", "All documents shorter than two spans", "six different lines of four words",
         lambda c: c.distill(corpus=c.file("short.txt", "".join(f"a few words {i}\n" for i in range(6)))),
         "is long enough for an example, an anchor and a positive span", "Use longer documents or a smaller data.span_length",
         ray=True),
    Case("K-over-documents", "Out-of-range K", "`loss.num_negatives=500` on 40 documents",
         lambda c: c.distill("loss.num_negatives=500"), "loss.num_negatives=500 needs more than 500 usable documents",
         "Lower loss.num_negatives or add documents", ray=True),
    Case("curve-one-checkpoint", "A curve with fewer than two checkpoints",
         "`gemini-ray curve` with `train.max_steps=2` and the default `train.checkpoint_every=20`",
         lambda c: ["curve", *c.distill()[1:]], "fewer than two checkpoints to evaluate",
         "set train.checkpoint_every=1 and train.log_every=1 for 2"),
    Case("batch-over-examples", "Out-of-range batch size", "`train.batch_size=100000`",
         lambda c: c.distill("train.batch_size=100000"), "fewer than one step needs",
         "Lower train.batch_size or add documents", ray=True),
    Case("cache-other-corpus", "A cache folder that holds another corpus's blocks",
         "`gemini-ray label` with `label.path` = a half-written cache of another corpus",
         lambda c: ["label", *c.distill(f"label.path={_cache_folder(c, CACHE_VERSION, 'f' * 64)}")[1:]],
         "holds a cache made from other inputs", "Choose another label.path", ray=True),
    Case("cache-older-format", "A half-written cache in an older format",
         "`gemini-ray label` with `label.path` = a cache folder a `label` of format 3 left half-written",
         lambda c: ["label", *c.distill(f"label.path={_cache_folder(c, 3, 'f' * 64)}")[1:]],
         "holds a half-written cache in format 3", "Delete '<tmp>/half-cache' or choose another label.path",
         ray=True),
    Case("corpus-grows", "A corpus file that grows while it is labelled",
         "`gemini-ray label` on a text file that a thread appends a line to every 0.1 s",
         lambda c: ["label", *c.distill(corpus=_growing_corpus(c))[1:]],
         "'<tmp>/growing.txt' grew while it was being read", "Let whatever writes it finish", ray=True),
    Case("tensor-parallel-over-gpus", "A vLLM engine larger than any node",
         "`teacher.backend=vllm teacher.tensor_parallel_size=2 teacher.num_gpus=2` on a machine with no GPU",
         lambda c: c.distill("teacher.backend=vllm", "teacher.tensor_parallel_size=2", "teacher.num_gpus=2"),
         "needs 2 GPUs for one teacher engine, 2 of them on one node, but the largest node of this cluster has 0",
         "Lower the parallel sizes to fit the cluster's GPUs", ray=True),
    Case("cache-other-teacher", "A cache from another teacher",
         "`label.path` = a complete cache whose manifest names other teacher weights",
         lambda c: c.distill(f"label.path={_other_teachers_cache(c)}"), "was made by a different teacher",
         "Point label.path at a cache made from this teacher.model", ray=True),
]


def _normalise(text: str, ctx: Ctx) -> str:
    """The message with this run's paths and hashes replaced by stable names."""
    for path, name in ((ctx.teacher, "<teacher>"), (ctx.corpus, "<corpus>"), (ctx.tmp, "<tmp>")):
        text = text.replace(str(path), name)
    text = re.sub(r"pid \d+ on host \S+ since [^)]*\)", "pid <pid> on host <host> since <time>: <command>)", text)
    return re.sub(r"\b[0-9a-f]{12}\b", "<hash>", text)


def _shorten(message: str) -> str:
    if len(message) <= MAX_SHOWN:
        return message
    return message[:MAX_SHOWN].rsplit(" ", 1)[0] + " …"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _doc_rows() -> dict[str, str]:
    """{case id: 'what the user sees' cell} from the table in docs/bad-inputs.md."""
    rows = {}
    if DOC.is_file():
        for line in DOC.read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            found = re.match(r"`([^`]+)`", cells[1]) if len(cells) == 4 else None
            if found:
                rows[found.group(1)] = cells[2]
    return rows


INTRO = """# Bad input catalogue

Every bad input below was tried by `tests/test_bad_input.py` (the test id is in the second column), through
the real command line entry point with a tiny teacher. Each one:

* exits with status **2**;
* prints one paragraph on stderr, `gemini-ray: error: ` followed by the text in the third column, that names
  the problem (the config key or the file) and says how to fix it;
* prints no stack trace (add `--debug`, e.g. `gemini-ray --debug distill …`, to see one);
* writes nothing: no new file or folder at all (not even an empty `<run.storage_path>/<run.name>`), no
  temporary files, no converted teacher;
* deletes and overwrites nothing: a folder of the user's named as an output is refused, whatever the settings
  (`run.overwrite_output=true` replaces only an earlier output of gemini_ray, which carries a
  `.gemini-ray-output.json` marker file).

Config mistakes fail while the config is read; corpus files (a text corpus read once, about 0.3 s per 100 MB, a
compressed one decompressed to its end), output folders, the storage path, a run folder another command holds
and the teacher are checked before Ray starts; the rows at the end are only known once the corpus is tokenized,
so Ray has started but training has not. Paths are shown as `<tmp>`
(the test's directory), `<teacher>` and `<corpus>`; long messages are cut at … . The table is rewritten from
real runs by `GEMINI_RAY_WRITE_BAD_INPUTS=1 python -m pytest tests/test_bad_input.py`, and the test fails when a
message no longer matches its row. Two more are tried the same way by `tests/test_teacher_inputs.py`, which
hides an installed package and builds a fake hub cache: `teacher.backend=vllm` without its extra ("teacher.backend=vllm
needs vLLM, which is not installed. Install the extra: pip install -e ".[vllm]" …"), and a `teacher.revision` that
does not exist ("teacher.revision='nope' of the hub teacher 'org/tiny' was not found … Give an existing branch,
tag or commit hash …").

| bad input | how it was tried (test id) | what the user sees | exit code |
|---|---|---|---|
"""


@pytest.fixture(scope="module")
def seen() -> dict[str, tuple[int, str]]:
    """Messages of this module's cases; written to docs/bad-inputs.md when GEMINI_RAY_WRITE_BAD_INPUTS=1."""
    messages: dict[str, tuple[int, str]] = {}
    yield messages
    if WRITE_DOC and len(messages) == len(CASES):
        rows = [f"| {c.what} | `{c.id}`: {_cell(c.how)} | {_cell(_shorten(messages[c.id][1]))} | {messages[c.id][0]} |"
                for c in CASES]
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(INTRO + "\n".join(rows) + "\n", encoding="utf-8")


def _no_ray(*args, **kwargs):
    raise AssertionError("this bad input must be refused before Ray starts")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.ray] if c.ray else []) for c in CASES])
def test_bad_input(case: Case, request, tmp_path, llama_dir, corpus_file, capsys, monkeypatch, seen):
    if case.ray:
        request.getfixturevalue("ray_start_2_cpus")
    else:
        monkeypatch.setattr(ray, "init", _no_ray)
    ctx = Ctx(tmp_path, llama_dir, corpus_file)
    argv = case.argv(ctx)
    before = {p for p in tmp_path.rglob("*")}

    code = main(argv)

    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("gemini-ray: error: ")]
    assert code == 2 and len(errors) == 1, (code, err[-2000:])
    message = _normalise(errors[0].removeprefix("gemini-ray: error: "), ctx)
    assert case.problem in message and case.fix in message, message
    assert "Traceback" not in err and "Traceback" not in out
    # nothing half-written: no export, no summary, no temporary file, no converted teacher, no new file at all
    run_dir = ctx.storage / RUN
    assert not (run_dir / "student").exists() and not (run_dir / "summary.json").exists()
    new = [p for p in tmp_path.rglob("*") if p not in before]  # files and folders: not even an empty run folder
    assert new == [], new
    assert not list(tmp_path.rglob("*tmp*")) and not (tmp_path / "teacher-cache").exists()
    if getattr(ctx, "held", None) is not None:
        ctx.held.close()
    seen[case.id] = (code, message)
    if not WRITE_DOC:
        shown = _doc_rows().get(case.id)
        assert shown == _cell(_shorten(message)), (
            f"docs/bad-inputs.md shows for {case.id}:\n  {shown}\nbut the message is now:\n  {_shorten(message)}\n"
            "Rewrite the table: GEMINI_RAY_WRITE_BAD_INPUTS=1 python -m pytest tests/test_bad_input.py")


@pytest.mark.skipif(WRITE_DOC, reason="the table is being rewritten")
def test_every_case_has_a_row():
    assert set(_doc_rows()) == {c.id for c in CASES}


def test_debug_shows_the_stack_trace(tmp_path):
    with pytest.raises(ConfigError, match="loss.lambda_kd"):
        main(["config", "--debug", "loss.lambda_kd=2"])
    done = subprocess.run([sys.executable, "-m", "gemini_ray", "--debug", "config", "loss.lambda_kd=2"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode != 0 and "Traceback (most recent call last)" in done.stderr
    assert "ConfigError: config key 'loss.lambda_kd'" in done.stderr
