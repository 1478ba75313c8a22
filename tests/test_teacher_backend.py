"""The teacher stage's one seam: `teacher.backend` names the class the teacher actors run. No Ray."""

from __future__ import annotations

import typing
from types import SimpleNamespace

import numpy as np
import pytest

from gemini_ray.config import TeacherConfig, build_config
from gemini_ray.data import pipeline, teacher_stage
from gemini_ray.data.teacher_stage import BACKENDS, TeacherLabeler, teacher_backend
from gemini_ray.errors import ConfigError, GeminiRayError


def test_the_backend_key_defaults_to_hf_and_refuses_an_unknown_backend_naming_key_values_and_fix():
    assert build_config(None, []).teacher.backend == "hf"
    with pytest.raises(ConfigError, match=r"'teacher.backend': must be one of \['hf'\], got 'vllm'.*teacher.backend=hf"):
        build_config(None, ["teacher.backend=vllm"])
    assert teacher_backend("hf") is TeacherLabeler
    with pytest.raises(GeminiRayError, match=r"'teacher.backend': no teacher backend 'vllm'; the backends are \['hf'\]"
                                             r".*Set teacher.backend=hf"):
        teacher_backend("vllm")  # a teacher section built without the config loader (an actor's dict)


def test_every_value_the_key_allows_has_a_backend():
    allowed = typing.get_args(typing.get_type_hints(TeacherConfig)["backend"])
    assert sorted(allowed) == sorted(BACKENDS)


class _Counter:
    """Stands in for the session's token counter actor: `add.remote(n)` records n."""

    def __init__(self) -> None:
        self.added: list[int] = []
        self.add = SimpleNamespace(remote=self.added.append)


class _FakeBackend:
    """A second backend: the contract's output columns, from no model at all."""

    def __init__(self, teacher_cfg: dict) -> None:
        self.k = teacher_cfg["top_k"]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        B, two, L = np.asarray(batch["input_ids"]).shape
        return {**batch, "topk_ids": np.zeros((B, two, L, self.k), np.int32),
                "topk_logits": np.zeros((B, two, L, self.k), np.float32),
                "topk_mass": np.ones((B, two, L), np.float32), "embedding": np.zeros((B, two, 4), np.float16),
                "teacher_tokens": np.asarray(batch["attention_mask"]).sum((1, 2)).astype(np.int32)}


def test_the_pipelines_teacher_actor_runs_the_backend_the_key_names(monkeypatch, llama_dir):
    counter = _Counter()
    monkeypatch.setattr(pipeline, "teacher_token_counter", lambda: counter)
    monkeypatch.setitem(teacher_stage.BACKENDS, "fake", _FakeBackend)
    batch = {"input_ids": np.ones((3, 2, 5), np.int64), "attention_mask": np.ones((3, 2, 5), np.int64)}
    batch["attention_mask"][0, 1, 3:] = 0

    actor = pipeline.CountingTeacherLabeler({"backend": "fake", "top_k": 2})
    out = actor(batch)
    assert isinstance(actor.teacher, _FakeBackend) and out["topk_ids"].shape == (3, 2, 5, 2)
    assert counter.added == [28]  # every real token, reported to the counter

    default = pipeline.CountingTeacherLabeler({"model": str(llama_dir), "top_k": 2})  # no key: 'hf'
    assert isinstance(default.teacher, TeacherLabeler)
    assert default(batch)["topk_logits"].shape == (3, 2, 5, 2) and counter.added[-1] == 28
