"""Teacher inference: one forward pass per batch gives top-k soft labels and pooled span embeddings.

A teacher backend (`TeacherBackend`) is a callable class for `map_batches` on a fixed-size actor pool; also
usable in a plain loop (the benchmark compares both). `teacher.backend` names the one the pipeline runs
(`BACKENDS`): 'hf', Hugging Face transformers on torch (`TeacherLabeler`), or 'vllm', a vLLM engine
(`vllm_teacher.VLLMTeacher`). The full-vocabulary distribution
never leaves a backend: per token it emits the top-k logits (before temperature) and their ids, plus the
probability mass those k ids hold at T = 1 (how much of the teacher the stored signal covers).

A second backend is one class with the same contract, one entry in `BACKENDS` and one value in the
`teacher.backend` Literal of `gemini_ray.config.TeacherConfig`.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

import numpy as np
import torch

from gemini_ray.config import TeacherConfig
from gemini_ray.data.vllm_teacher import VLLMTeacher, check_vllm
from gemini_ray.errors import GeminiRayError
from gemini_ray.models.build import lm_head, mean_pool

__all__ = ["TeacherBackend", "TeacherLabeler", "BACKENDS", "check_backend", "teacher_backend", "teacher_forward"]


class TeacherBackend(Protocol):
    """Loads the teacher in `__init__` from the `teacher` config section (a dict: it crosses to the actors),
    then maps an example batch (input_ids (B, 2, W), attention_mask (B, 2, W), ...; numpy: two KD windows
    per example) to the same batch plus topk_ids (B, 2, W, k) int32, topk_logits (B, 2, W, k) float32,
    topk_mass (B, 2, W) float32 (every position of the window, with its full context), embedding (B, 2, H)
    float16 (the mean of the last hidden states over the real tokens of each window's span: its first
    `span_length` tokens, None: the whole window) and teacher_tokens (B,) int32 (real tokens pushed through
    the teacher). k is teacher.top_k; logits are before temperature."""

    def __init__(self, teacher_cfg: dict[str, Any], span_length: int | None = None) -> None: ...

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@torch.inference_mode()
def teacher_forward(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, top_k: int,
                    span_length: int | None = None, chunk_tokens: int = 256) -> dict[str, torch.Tensor]:
    """Top-k logits at every position of windows, and each window's span embedding, from one forward.

    Args:
        input_ids, attention_mask: (N, W).
        top_k: logits kept per token.
        span_length: the embedding pools the first span_length positions (None: the whole window). For a
            causal teacher that is exactly the embedding of the span alone: no position sees a later one.
        chunk_tokens: positions pushed through the vocabulary head at once (whole rows, at least one): bounds
            the (rows, W, V) buffer, 8 rows of 32 tokens as before windows, one row of a 2,048-token window.
    Returns:
        topk_ids (N, W, k) int32, topk_logits (N, W, k) float32, topk_mass (N, W) float32, embedding (N, H).
    """
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (N, W, H)
    head = lm_head(model)
    chunk = max(1, chunk_tokens // hidden.shape[1])
    ids, vals, mass = [], [], []
    for s in range(0, hidden.shape[0], chunk):
        logits = head(hidden[s : s + chunk]).float()  # (c, W, V)
        v, i = torch.topk(logits, top_k, dim=-1)  # (c, W, k)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (c, W, 1)
        mass.append(torch.exp(v - lse).sum(-1))  # (c, W)
        ids.append(i.to(torch.int32))
        vals.append(v)
    return {
        "topk_ids": torch.cat(ids),
        "topk_logits": torch.cat(vals),
        "topk_mass": torch.cat(mass),
        "embedding": mean_pool(hidden[:, :span_length].float(), attention_mask[:, :span_length]),  # (N, H)
    }


class TeacherLabeler:
    """The 'hf' teacher backend (`TeacherBackend`): the teacher as a transformers model on torch. Its weights
    load straight to the actor's devices in teacher.dtype: one GPU, or, with teacher.num_gpus > 1, spread over
    all the actor's GPUs by accelerate's device map (layers split across them, run one after another: a
    teacher larger than one accelerator). `model`: an already loaded teacher (tests, benchmarks) instead of
    loading teacher.model; `device`: instead of the one teacher.num_gpus picks; `span_length`: the span each
    window's embedding pools (`TeacherBackend`)."""

    def __init__(self, teacher_cfg: dict[str, Any], span_length: int | None = None, model: torch.nn.Module | None = None,
                 device: str | None = None):
        from gemini_ray.models.numerics import allow_tf32, teacher_dtype

        self.cfg = TeacherConfig(**teacher_cfg)
        self.span_length = span_length
        if self.cfg.num_gpus == 0:
            torch.set_num_threads(self.cfg.torch_threads)
        self.device = device or ("cuda" if self.cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu")
        self.dtype = teacher_dtype(self.cfg.dtype, self.device)
        allow_tf32()
        if model is None:
            model = self._load()
        elif next(model.parameters()).dtype != self.dtype:  # a caller's model: not in place
            model = copy.deepcopy(model).to(self.dtype)
        if getattr(model, "hf_device_map", None) is None:
            model = model.to(self.device)
        self.model = model.eval()
        self.device = str(next(self.model.parameters()).device)  # where the inputs go: the first layer's GPU
        vocab = self.model.config.vocab_size
        if self.cfg.top_k > vocab:
            raise ValueError(f"teacher.top_k={self.cfg.top_k} exceeds the teacher's vocabulary ({vocab})")

    def _load(self) -> torch.nn.Module:
        """The teacher in self.dtype, straight onto its devices (no CPU copy in full precision first)."""
        from gemini_ray.models.build import load_teacher, resolve_teacher

        gpus = torch.cuda.device_count() if self.device == "cuda" else 0  # Ray sets the actor's visible GPUs
        device_map = "auto" if gpus > 1 else ("cuda:0" if gpus == 1 else None)
        model, _ = load_teacher(resolve_teacher(self.cfg), self.cfg.kind, self.cfg.trust_remote_code, self.dtype,
                                revision=self.cfg.revision, device_map=device_map)
        spilled = {d for d in (getattr(model, "hf_device_map", None) or {}).values() if d in ("cpu", "disk")}
        if spilled:
            raise GeminiRayError(
                f"the teacher '{self.cfg.model}' does not fit on the teacher actor's {gpus} GPUs in {self.dtype} "
                f"(accelerate put layers on the {' and '.join(sorted(spilled))}). Raise teacher.num_gpus (GPUs per "
                "actor, on one node), use teacher.dtype=bf16, or teacher.backend=vllm with tensor parallelism.")
        return model

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(batch["input_ids"])
        B, two, W = ids.shape
        flat_ids = torch.from_numpy(ids.reshape(B * two, W).astype(np.int64)).to(self.device)  # (2B, W)
        flat_att = torch.from_numpy(np.asarray(batch["attention_mask"]).reshape(B * two, W).astype(np.int64)).to(self.device)
        out = teacher_forward(self.model, flat_ids, flat_att, self.cfg.top_k, self.span_length)
        k = self.cfg.top_k
        result = dict(batch)
        result["topk_ids"] = out["topk_ids"].cpu().numpy().reshape(B, two, W, k)
        result["topk_logits"] = out["topk_logits"].cpu().numpy().reshape(B, two, W, k)
        result["topk_mass"] = out["topk_mass"].cpu().numpy().reshape(B, two, W).astype(np.float32)
        result["embedding"] = out["embedding"].cpu().numpy().reshape(B, two, -1).astype(np.float16)
        result["teacher_tokens"] = flat_att.reshape(B, two, W).sum((1, 2)).cpu().numpy().astype(np.int32)
        return result


BACKENDS: dict[str, type[TeacherBackend]] = {"hf": TeacherLabeler, "vllm": VLLMTeacher}
"""teacher.backend -> the class the teacher actors run."""


def check_backend(cfg: TeacherConfig, kind: str, nodes: list[dict[str, float]] | None = None) -> None:
    """Refuse a teacher backend that cannot start, before anything starts: vLLM without its extra or with a
    masked teacher, and an engine the cluster's GPUs cannot hold (a tensor-parallel group lives on one node;
    pipeline stages may sit on several). nodes: the live nodes' resources (None: not checked, e.g. an
    autoscaling cluster whose nodes are not up yet)."""
    if cfg.backend == "vllm":
        check_vllm(kind)
    tp, pp = cfg.tensor_parallel_size, cfg.pipeline_parallel_size
    if tp * pp == 1 or nodes is None:
        return
    gpus = [n.get("GPU", 0.0) for n in nodes]
    most, total = max(gpus, default=0.0), sum(gpus)
    if tp > most or tp * pp > total:
        raise GeminiRayError(
            f"teacher.tensor_parallel_size={tp} x teacher.pipeline_parallel_size={pp} needs {tp * pp} GPUs for "
            f"one teacher engine, {tp} of them on one node, but the largest node of this cluster has {most:g} "
            f"GPUs ({total:g} in all). Lower the parallel sizes to fit the cluster's GPUs, or add nodes with more "
            "GPUs (run.check_resources=false skips this check on an autoscaling cluster).")


def teacher_backend(name: str) -> type[TeacherBackend]:
    """The backend class `teacher.backend` names."""
    if name not in BACKENDS:
        raise GeminiRayError(f"config key 'teacher.backend': no teacher backend '{name}'; the backends are "
                             f"{sorted(BACKENDS)}. Set teacher.backend=hf (the default) in the --config file or on "
                             "the command line.")
    return BACKENDS[name]
