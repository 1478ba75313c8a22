"""What every command does first: resolve the teacher and join (or start) Ray. Shared by `distill`, `label`,
`tune`, `eval` and `ablate`; the teacher-signal cache that matches the session is found by
`data.cache.find_cache`.

    session = start_session(cfg, with_teacher=True)   # Session: teacher, tokenizer, cache identity
    cache = find_cache(cfg, session.identity)         # FoundCache(directory, manifest) or None
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gemini_ray.config import Config
from gemini_ray.errors import GeminiRayError

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedTokenizerBase


__all__ = ["Session", "init_ray", "configure_data_context", "start_session"]


@dataclass
class Session:
    """Everything the teacher side resolved for one config."""

    teacher_source: str
    """A local directory (or hub name) `from_pretrained` loads: the converted embedded teacher, for example."""
    kind: str
    """'causal' or 'masked'."""
    tokenizer: PreTrainedTokenizerBase
    teacher_config: PretrainedConfig
    teacher_params: int
    identity: dict[str, Any]
    """What the teacher-signal cache key is made of (teacher weights, vocabulary, corpus, span length, ...)."""
    seconds: dict[str, float] = field(default_factory=dict)
    teacher: nn.Module | None = None
    """The loaded teacher, when start_session was asked to keep it (a student is derived from it)."""


def init_ray(cfg: Config) -> None:
    """Join run.ray_address (or RAY_ADDRESS), else start a local instance of this command's own, even when
    another Ray instance runs on this machine (run.ray_address=auto joins that one on purpose); quiet Ray
    Data's progress bars; apply `ray_compat`: Ray Data's idle scheduling loop here and in every worker of
    the job (unless run.patch_ray_data=false), and RAY_ADDRESS pinned to this job's cluster in its processes
    (Ray Train's placement-group cleaner otherwise looks for a cluster itself)."""
    import ray
    import ray.data

    from gemini_ray import ray_compat

    if not ray.is_initialized():
        # "local": a new instance, not the last `ray start` head of the machine that Ray joins by default
        address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS") or "local"
        env = ray_compat.runtime_env(cfg.run.patch_ray_data)  # the setup hook every worker of the job runs
        try:  # a local head binds to 127.0.0.1, token auth on
            ray.init(address=address, log_to_driver=True, runtime_env=env)
        except ConnectionError as exc:
            if address != "auto":
                raise
            raise GeminiRayError(f"run.ray_address=auto found no Ray instance to join ({exc}). Start one "
                                 "(`ray start --head`), name it (run.ray_address=HOST:PORT), or leave "
                                 "run.ray_address unset to start a local instance.") from None
        ray_compat.pin_address()  # this process's child processes and Ray's own lookups find this cluster
    ray_compat.install_idle_sleep(cfg.run.patch_ray_data)
    configure_data_context()


def configure_data_context() -> None:
    """This process's Ray Data settings, for every driver of datasets: the job's driver, and each Tune trial
    (a process of its own, whose DataContext starts from Ray's defaults)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the trainer prints its own progress lines
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True  # the corpus's order: the same rows first on every run


def start_session(cfg: Config, with_teacher: bool = False) -> Session:
    """Resolve the teacher, start Ray, and compute the cache identity. The corpus is not read here: a
    command streams it (`corpus_pass.corpus_stream`) or makes one whole pass (`corpus_pass.build_examples`).

    with_teacher keeps the loaded teacher in the Session (to derive a student from); otherwise it is freed."""
    from gemini_ray.cluster.placement import alive_nodes, check_shared_storage
    from gemini_ray.data.cache import cache_identity
    from gemini_ray.models.build import count_parameters, load_teacher, load_tokenizer, resolve_teacher

    seconds = {}
    t0 = time.perf_counter()
    source = resolve_teacher(cfg.teacher)
    tokenizer = load_tokenizer(source, cfg.teacher.trust_remote_code)
    teacher, kind = load_teacher(source, cfg.teacher.kind, cfg.teacher.trust_remote_code)
    vocab = teacher.config.vocab_size
    if cfg.teacher.top_k > vocab:
        raise GeminiRayError(f"teacher.top_k={cfg.teacher.top_k} exceeds the teacher's vocabulary ({vocab} tokens). "
                             f"Choose teacher.top_k <= {vocab}; 16-64 keeps the signal small.")
    seconds["teacher_setup_s"] = time.perf_counter() - t0

    init_ray(cfg)
    check_shared_storage(cfg, len(alive_nodes()))
    return Session(teacher_source=source, kind=kind, tokenizer=tokenizer, teacher_config=teacher.config,
                   teacher_params=count_parameters(teacher), identity=cache_identity(cfg, source, tokenizer, kind),
                   seconds=seconds, teacher=teacher if with_teacher else None)
