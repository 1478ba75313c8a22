"""The teacher stage's one seam: `teacher.backend` names the class the teacher actors run. No Ray."""

from __future__ import annotations

import typing
from types import SimpleNamespace

import numpy as np
import pytest

from gemini_ray.config import TeacherConfig, build_config
from gemini_ray.data import pipeline, teacher_stage
from gemini_ray.data.teacher_stage import BACKENDS, TeacherLabeler, check_backend, teacher_backend
from gemini_ray.data.vllm_teacher import VLLMTeacher, topk_from_logprobs
from gemini_ray.errors import ConfigError, GeminiRayError


def test_the_backend_key_defaults_to_hf_and_refuses_an_unknown_backend_naming_key_values_and_fix():
    assert build_config(None, []).teacher.backend == "hf"
    assert build_config(None, ["teacher.backend=vllm"]).teacher.backend == "vllm"
    with pytest.raises(ConfigError, match=r"'teacher.backend': must be one of \['hf', 'vllm'\], got 'onnx'"):
        build_config(None, ["teacher.backend=onnx"])
    assert teacher_backend("hf") is TeacherLabeler and teacher_backend("vllm") is VLLMTeacher
    with pytest.raises(GeminiRayError, match=r"'teacher.backend': no teacher backend 'onnx'; the backends are "
                                             r"\['hf', 'vllm'\].*Set teacher.backend=hf"):
        teacher_backend("onnx")  # a teacher section built without the config loader (an actor's dict)


def test_every_value_the_key_allows_has_a_backend():
    allowed = typing.get_args(typing.get_type_hints(TeacherConfig)["backend"])
    assert sorted(allowed) == sorted(BACKENDS)


class _Counter:
    """Stands in for the session's token counter actor: `add.remote(n)` records n, `started.remote()` an
    actor's start."""

    def __init__(self) -> None:
        self.added: list[int] = []
        self.starts: list[None] = []
        self.add = SimpleNamespace(remote=self.added.append)
        self.started = SimpleNamespace(remote=lambda: self.starts.append(None))


class _FakeBackend:
    """A second backend: the contract's output columns, from no model at all."""

    def __init__(self, teacher_cfg: dict, span_length: int | None = None) -> None:
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
    assert counter.added == [28] and len(counter.starts) == 1  # every real token, and the actor's start

    default = pipeline.CountingTeacherLabeler({"model": str(llama_dir), "top_k": 2})  # no key: 'hf'
    assert isinstance(default.teacher, TeacherLabeler)
    assert default(batch)["topk_logits"].shape == (3, 2, 5, 2) and counter.added[-1] == 28


# --------------------------------------------------------------------------- vllm: what is checked before it starts


def test_parallel_sizes_need_the_vllm_backend_and_whole_gpus_equal_to_the_engine():
    ok = build_config(None, ["teacher.backend=vllm", "teacher.tensor_parallel_size=4", "teacher.num_gpus=4"])
    assert ok.teacher.tensor_parallel_size * ok.teacher.pipeline_parallel_size == 4
    for overrides, message in [
        (["teacher.tensor_parallel_size=2", "teacher.num_gpus=2"], "needs teacher.backend=vllm"),
        (["teacher.backend=vllm", "teacher.tensor_parallel_size=2", "teacher.num_gpus=1.5"], "whole number"),
        (["teacher.backend=vllm", "teacher.tensor_parallel_size=2", "teacher.pipeline_parallel_size=2",
          "teacher.num_gpus=2"], "set teacher.num_gpus=4"),
        (["teacher.backend=vllm", "teacher.tensor_parallel_size=0"], "must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_config(None, overrides)


def test_an_engine_larger_than_any_node_and_a_missing_extra_are_refused(monkeypatch):
    tp8 = build_config(None, ["teacher.backend=vllm", "teacher.tensor_parallel_size=8", "teacher.num_gpus=8"]).teacher
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())  # the extra counts as installed
    check_backend(tp8, "causal", [{"CPU": 96, "GPU": 8}])  # control: one 8-GPU node holds the engine
    check_backend(tp8, "causal", None)  # nodes not known (run.check_resources=false): not checked
    with pytest.raises(GeminiRayError, match=r"needs 8 GPUs for one teacher engine, 8 of them on one node.*"
                                             r"largest node of this cluster has 4 GPUs \(8 in all\)"):
        check_backend(tp8, "causal", [{"GPU": 4}, {"GPU": 4}])  # 8 in all, but a tensor-parallel group is one node
    tp4_pp2 = build_config(None, ["teacher.backend=vllm", "teacher.tensor_parallel_size=4",
                                  "teacher.pipeline_parallel_size=2", "teacher.num_gpus=8"]).teacher
    check_backend(tp4_pp2, "causal", [{"GPU": 4}, {"GPU": 4}])  # control: two stages of 4, one per node
    with pytest.raises(GeminiRayError, match=r"\(4 in all\)"):
        check_backend(tp4_pp2, "causal", [{"GPU": 4}])
    with pytest.raises(GeminiRayError, match="runs causal teachers.*teacher.backend=hf"):
        check_backend(tp8, "masked", None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(GeminiRayError, match=r"needs vLLM, which is not installed.*pip install -e \"\.\[vllm\]\""):
        check_backend(tp8, "causal", None)
    check_backend(build_config(None, []).teacher, "causal", None)  # control: 'hf' needs no extra


class _Logprob(SimpleNamespace):
    """vLLM's Logprob: .logprob, .rank (1-based)."""


def test_the_extra_prompt_token_outside_the_top_k_never_enters_the_signal():
    """vLLM adds the prompt token itself to each position's dict with its true rank: dropped when rank > k."""
    entry = {7: _Logprob(logprob=-0.5, rank=1), 3: _Logprob(logprob=-1.5, rank=2), 9: _Logprob(logprob=-9.0, rank=40)}
    assert topk_from_logprobs(entry, 2) == ([7, 3], [-0.5, -1.5])
    inside = {7: _Logprob(logprob=-0.5, rank=1), 3: _Logprob(logprob=-1.5, rank=2)}  # the prompt token is 3: k entries
    assert topk_from_logprobs(inside, 2) == ([7, 3], [-0.5, -1.5])
    ids, values = topk_from_logprobs(None, 3)  # no entry (padding): nothing weighs
    assert ids == [0, 0, 0] and all(v == float("-inf") for v in values)


def test_a_multi_gpu_engine_is_placed_as_ray_data_llm_places_vllm():
    """One GPU: the actor holds it. More: the actor holds none and lives in bundle 0 of a placement group of
    one-GPU bundles that vLLM's Ray executor fills; one pipeline stage stays on one node."""
    from gemini_ray.cluster.placement import demands
    from gemini_ray.data.pipeline import teacher_actor_args
    from gemini_ray.data.vllm_teacher import engine_bundles, engine_placement

    one = build_config(None, ["teacher.backend=vllm", "teacher.num_gpus=1"])
    args = teacher_actor_args(one)
    assert args["num_gpus"] == 1 and "ray_remote_args_fn" not in args
    tp4 = build_config(None, ["teacher.backend=vllm", "teacher.tensor_parallel_size=4", "teacher.num_gpus=4",
                              "teacher.num_cpus=2", "teacher.resources={teacher: 1}", "teacher.num_actors=2"])
    args = teacher_actor_args(tp4)
    assert args["num_gpus"] == 0 and args["ray_remote_args_fn"].func is engine_placement
    assert args["resources"] == {"teacher": 1.0} and args["num_cpus"] == 2
    bundles, strategy = engine_bundles(tp4.teacher)
    assert strategy == "STRICT_PACK" and len(bundles) == 4 and all(b["GPU"] == 1 for b in bundles)
    assert bundles[0] == {"GPU": 1.0, "CPU": 3.0, "teacher": 1.0} and bundles[1] == {"GPU": 1.0, "CPU": 1.0}
    pp = build_config(None, ["teacher.backend=vllm", "teacher.tensor_parallel_size=2",
                             "teacher.pipeline_parallel_size=2", "teacher.num_gpus=4"])
    assert engine_bundles(pp.teacher)[1] == "PACK"
    plan = {d.what: d for d in demands(pp, cached=False, trainer=False)}
    group = plan["teacher engine's tensor-parallel group"]
    assert group.per_unit == {"CPU": 2.0, "GPU": 2.0} and group.count == 2  # one per stage
    assert "GPU" not in plan["teacher actor"].per_unit
