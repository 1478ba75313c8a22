"""The teacher's new inputs: `teacher.backend`, the parallel sizes, `teacher.revision`, and the driver reading
the teacher's metadata (never its weights).

    HF_HUB_OFFLINE=1 python -m pytest tests/test_teacher_inputs.py

A. Two bad inputs through the real CLI (`gemini_ray.cli.main`) that need more than the catalogue of
   tests/test_bad_input.py gives a case (the vLLM extra hidden, a fake hub cache), checked as it checks
   its cases: exit code 2, one `gemini-ray: error:` paragraph naming the problem and the fix, no traceback,
   nothing written, refused before Ray starts (`ray.init` is made to raise). The catalogue has the other
   three of the issue's five (an engine larger than any node, fractional GPUs with tensor parallelism, a
   student of another vocabulary).
B. `teacher.revision` against a fake local hub cache (the layout huggingface_hub reads offline): a ref or a
   commit resolves to a commit, and a new commit of the same hub name is a new cache identity. No Ray.
C. `teacher_meta` and `build_student` on a sharded bf16 teacher: the parameter count without loading it, and a
   student that copies the teacher's tensors exactly while no `from_pretrained` of the teacher runs. No Ray.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import ray  # noqa: F401  imported before capsys holds stderr (test_bad_input.py says why)
import ray.data  # noqa: F401
import ray.train  # noqa: F401
import torch
import transformers

from gemini_ray.cli import main
from gemini_ray.config import StudentConfig, TeacherConfig, build_config
from gemini_ray.data.cache import cache_identity, weights_hash
from gemini_ray.errors import GeminiRayError
from gemini_ray.models import build
from gemini_ray.models.build import (build_student, count_parameters, load_teacher, load_tokenizer, resolve_revision,
                                     student_layer_ids, teacher_meta)

HUB_NAME = "org/tiny"
COMMIT_1 = "1" * 40
COMMIT_2 = "2" * 40


# --------------------------------------------------------------------------- a fake local hub cache


def _snapshot(cache: Path, files_from: Path, commit: str) -> Path:
    """<cache>/models--org--tiny/snapshots/<commit>/ holding the model's files (plain copies: huggingface_hub
    reads a snapshot's files, symlinks into blobs/ or not)."""
    snap = cache / "models--org--tiny" / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in files_from.iterdir():
        if f.is_file() and not f.name.startswith("."):  # not weights_hash's memo files
            shutil.copy2(f, snap / f.name)
    return snap


def _point(cache: Path, ref: str, commit: str) -> None:
    """refs/<ref> (a branch or tag) names `commit`, as huggingface_hub writes it (no newline)."""
    refs = cache / "models--org--tiny" / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / ref).write_text(commit)


@pytest.fixture
def hub(tmp_path, monkeypatch, llama_dir) -> Path:
    """An offline hub cache under tmp_path holding `org/tiny` (the tiny llama) at COMMIT_1, refs/main -> it.

    huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, into huggingface_hub.constants, when it is
    imported (before this fixture runs): setting the environment is not enough, the constants are patched too.
    transformers reads `huggingface_hub.constants.HF_HUB_CACHE` at each call, so it follows."""
    import huggingface_hub.constants as hub_constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    _snapshot(cache, llama_dir, COMMIT_1)
    _point(cache, "main", COMMIT_1)
    return cache


# --------------------------------------------------------------------------- A. bad inputs through the CLI

RUN = "bad"


def _argv(command: str, tmp: Path, teacher: Path | str, corpus: Path, *extra: str) -> list[str]:
    """`gemini-ray <command>` with the tiny settings of tests/test_bad_input.py, `extra` replacing them."""
    base = [f"teacher.model={teacher}", "teacher.top_k=8", "teacher.batch_size=8",
            f"teacher.cache_dir={tmp / 'teacher-cache'}", f"data.path={corpus}", "data.text_column=body",
            "data.span_length=16", "data.seq_length=32", "student.num_layers=2", "loss.num_negatives=3", "mining.window=16",
            "train.max_steps=2", "train.batch_size=4", "train.warmup_steps=1", f"run.storage_path={tmp / 'runs'}",
            f"run.name={RUN}"]
    given = {e.split("=", 1)[0] for e in extra}
    return [command, *(b for b in base if b.split("=", 1)[0] not in given), *extra]


def _without_vllm(monkeypatch) -> None:
    """importlib.util.find_spec answers None for 'vllm' only (it is installed here)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "vllm" else real(name, *a, **k))


@dataclass
class Case:
    id: str
    argv: Callable[..., list[str]]  # (tmp, teacher, corpus, lee_texts) -> argv
    problem: str  # must appear in the message
    fix: str  # must appear in the message
    setup: Callable[..., None] | None = None  # (monkeypatch) -> None, before the command runs
    hub: bool = False  # needs the fake hub cache


CASES = [
    Case("vllm-not-installed",
         lambda tmp, t, c, texts: _argv("label", tmp, t, c, "teacher.backend=vllm"),
         "teacher.backend=vllm needs vLLM, which is not installed",
         'Install the extra: pip install -e ".[vllm]"', setup=_without_vllm),
    Case("revision-not-found",
         lambda tmp, t, c, texts: _argv("distill", tmp, HUB_NAME, c, "teacher.revision=nope"),
         f"teacher.revision='nope' of the hub teacher '{HUB_NAME}' was not found",
         "Give an existing branch, tag or commit hash", hub=True),
]


def _no_ray(*args, **kwargs):
    raise AssertionError("this bad input must be refused before Ray starts")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_teacher_input(case: Case, request, tmp_path, llama_dir, corpus_file, lee_texts, capsys, monkeypatch):
    monkeypatch.setattr(ray, "init", _no_ray)  # both are refused before Ray starts
    if case.hub:
        request.getfixturevalue("hub")
    if case.setup:
        case.setup(monkeypatch)
    argv = case.argv(tmp_path, llama_dir, corpus_file, lee_texts)
    before = set(tmp_path.rglob("*"))  # the inputs (a student, the hub cache) are made above

    code = main(argv)

    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("gemini-ray: error: ")]
    assert code == 2 and len(errors) == 1, (code, err[-2000:])
    message = errors[0].removeprefix("gemini-ray: error: ")
    assert case.problem in message and case.fix in message, message
    assert "Traceback" not in err and "Traceback" not in out
    new = [p for p in tmp_path.rglob("*") if p not in before]  # not a run folder, a cache, a lock, a hub file
    assert new == [], new


# --------------------------------------------------------------------------- B. teacher.revision


def test_a_hub_teacher_resolves_main_a_commit_and_a_tag_to_their_commits(hub, llama_dir):
    _snapshot(hub, llama_dir, COMMIT_2)
    _point(hub, "v1", COMMIT_2)  # a tag (or branch) other than main

    assert resolve_revision(TeacherConfig(model=HUB_NAME), HUB_NAME) == COMMIT_1  # unset: the main branch
    assert resolve_revision(TeacherConfig(model=HUB_NAME, revision="main"), HUB_NAME) == COMMIT_1
    assert resolve_revision(TeacherConfig(model=HUB_NAME, revision=COMMIT_1), HUB_NAME) == COMMIT_1
    assert resolve_revision(TeacherConfig(model=HUB_NAME, revision=COMMIT_2), HUB_NAME) == COMMIT_2
    assert resolve_revision(TeacherConfig(model=HUB_NAME, revision="v1"), HUB_NAME) == COMMIT_2
    with pytest.raises(GeminiRayError, match="teacher.revision='nope' of the hub teacher 'org/tiny' was not found"):
        resolve_revision(TeacherConfig(model=HUB_NAME, revision="nope"), HUB_NAME)


def test_teacher_meta_reads_a_hub_teacher_at_its_commit(hub, llama_dir):
    meta = teacher_meta(TeacherConfig(model=HUB_NAME))
    local, _ = load_teacher(str(llama_dir))
    assert (meta.source, meta.revision, meta.kind) == (HUB_NAME, COMMIT_1, "causal")
    assert meta.parameters == count_parameters(local) and meta.config.vocab_size == local.config.vocab_size
    tokenizer = load_tokenizer(meta.source, revision=meta.revision)
    assert tokenizer.get_vocab() == load_tokenizer(str(llama_dir)).get_vocab()


def test_a_new_commit_of_the_same_hub_name_is_a_new_cache_identity(hub, llama_dir, corpus_file):
    """The point of teacher.revision: a model updated on the hub (refs/main moves) is labelled anew."""
    cfg = build_config(None, [f"teacher.model={HUB_NAME}", f"data.path={corpus_file}", "data.text_column=body"])

    def identity():
        meta = teacher_meta(cfg.teacher)
        tokenizer = load_tokenizer(meta.source, revision=meta.revision)
        return meta.revision, cache_identity(cfg, meta.source, tokenizer, meta.kind, meta.revision)

    first_commit, first = identity()
    assert identity() == (first_commit, first)  # control: the same commit, the same identity
    _snapshot(hub, llama_dir, COMMIT_2)  # the same files, a new commit: the hub name says nothing of content
    _point(hub, "main", COMMIT_2)
    second_commit, second = identity()

    assert (first_commit, second_commit) == (COMMIT_1, COMMIT_2)
    assert weights_hash(HUB_NAME, COMMIT_1) != weights_hash(HUB_NAME, COMMIT_2)
    assert {k for k in first if first[k] != second[k]} == {"teacher_weights"}


def test_the_teacher_actors_load_the_commit_the_cache_identity_holds(hub, llama_dir):
    """`Session.pinned`: the config the teacher stage gets names the resolved commit, not the moving branch;
    a local teacher's config goes through unchanged."""
    from gemini_ray.cluster.session import Session

    cfg = build_config(None, [f"teacher.model={HUB_NAME}"])
    session = Session(teacher=teacher_meta(cfg.teacher), tokenizer=None, identity={})
    assert cfg.teacher.revision is None and session.pinned(cfg).teacher.revision == COMMIT_1
    assert session.pinned(cfg).teacher.model == HUB_NAME and session.pinned(cfg).loss == cfg.loss
    local = build_config(None, [f"teacher.model={llama_dir}"])
    assert Session(teacher=teacher_meta(local.teacher), tokenizer=None, identity={}).pinned(local) is local


def test_a_local_teacher_with_a_revision_is_refused_naming_the_fix(llama_dir):
    cfg = TeacherConfig(model=str(llama_dir), revision="main")
    fix = "Drop teacher.revision, or set teacher.model to the hub name"
    with pytest.raises(GeminiRayError, match=r"teacher.revision='main' pins a hub teacher.*is local") as refused:
        teacher_meta(cfg)
    assert fix in str(refused.value)
    assert resolve_revision(TeacherConfig(model=str(llama_dir)), str(llama_dir)) is None  # control: unset is fine


# --------------------------------------------------------------------------- C. metadata, never the weights


@pytest.fixture(scope="module")
def sharded_bf16(tmp_path_factory, lee_texts) -> Path:
    """The tiny llama saved in bf16 in several safetensors shards (model.safetensors.index.json)."""
    from helpers import tiny_llama, word_tokenizer

    tok = word_tokenizer(lee_texts, masked=False)
    model = tiny_llama(tok).to(torch.bfloat16)
    path = tmp_path_factory.mktemp("sharded-bf16")
    model.save_pretrained(path, max_shard_size="20KB")
    tok.save_pretrained(path)
    assert (path / "model.safetensors.index.json").is_file() and len(list(path.glob("*.safetensors"))) > 2
    return path


class _FullLoad(RuntimeError):
    pass


def _forbid_full_loads(monkeypatch) -> None:
    """Any from_pretrained of a model (the Auto classes' and every PreTrainedModel's) or load_teacher raises;
    from_config (a skeleton) still works."""

    def refuse(*args, **kwargs):
        raise _FullLoad("a full load of the teacher")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoModelForMaskedLM, transformers.PreTrainedModel):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(build, "load_teacher", refuse)


def test_teacher_meta_counts_a_sharded_bf16_teacher_as_loading_it_does(sharded_bf16, monkeypatch):
    loaded, _ = load_teacher(str(sharded_bf16))
    _forbid_full_loads(monkeypatch)
    meta = teacher_meta(TeacherConfig(model=str(sharded_bf16)))
    assert meta.parameters == count_parameters(loaded) and meta.kind == "causal" and meta.revision is None


@pytest.mark.parametrize("layers", ["first", "spread"])
def test_build_student_copies_the_teachers_tensors_without_loading_it(sharded_bf16, monkeypatch, capsys, layers):
    teacher, _ = load_teacher(str(sharded_bf16))  # fp32 from bf16 files: exact, to compare against
    meta = teacher_meta(TeacherConfig(model=str(sharded_bf16)))
    _forbid_full_loads(monkeypatch)

    student = build_student(meta, StudentConfig(num_layers=2, layers=layers))

    assert "start random" not in capsys.readouterr().out  # every tensor was found in the shards
    ids = student_layer_ids(teacher.config.num_hidden_layers, 2, layers)
    t_state = teacher.state_dict()
    for name, value in student.state_dict().items():
        src = name
        if name.startswith("model.layers."):
            idx, rest = name.removeprefix("model.layers.").split(".", 1)
            src = f"model.layers.{ids[int(idx)]}.{rest}"
        assert value.dtype == torch.float32 and torch.equal(value, t_state[src]), name


def test_the_guard_catches_a_full_load(sharded_bf16, monkeypatch):
    """Control: with the guard on, loading the teacher the ordinary ways fails (so the test above would too)."""
    real_load_teacher = load_teacher
    _forbid_full_loads(monkeypatch)
    with pytest.raises(_FullLoad):
        transformers.AutoModelForCausalLM.from_pretrained(str(sharded_bf16))
    with pytest.raises(_FullLoad):
        transformers.LlamaForCausalLM.from_pretrained(str(sharded_bf16))
    with pytest.raises(_FullLoad):
        build.load_teacher(str(sharded_bf16))
    with pytest.raises(GeminiRayError, match="a full load of the teacher"):  # load_teacher wraps the error
        real_load_teacher(str(sharded_bf16))
    config = transformers.AutoConfig.from_pretrained(str(sharded_bf16))
    assert count_parameters(transformers.AutoModelForCausalLM.from_config(config)) > 0  # from_config still works
