"""What every command does first: resolve the teacher and join (or start) Ray. Shared by `distill`, `label`,
`tune`, `eval` and `ablate`; the teacher-signal cache that matches the session is found by
`data.cache.find_cache`.

    session = start_session(cfg)                      # Session: teacher metadata, tokenizer, cache identity
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
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from gemini_ray.models.build import TeacherMeta


__all__ = ["Session", "init_ray", "configure_data_context", "start_session"]


@dataclass
class Session:
    """Everything the teacher side resolved for one config, from metadata: the driver never holds the
    teacher's weights (they load in the teacher actors, and a student copies only its own tensors)."""

    teacher: TeacherMeta
    """Source, config, kind, parameter count and resolved revision (`models.build.teacher_meta`)."""
    tokenizer: PreTrainedTokenizerBase
    identity: dict[str, Any]
    """What the teacher-signal cache key is made of (teacher weights, vocabulary, corpus, span length, ...)."""
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def teacher_source(self) -> str:
        """A local directory (or hub name) `from_pretrained` loads: the converted embedded teacher, for example."""
        return self.teacher.source

    @property
    def kind(self) -> str:
        """'causal' or 'masked'."""
        return self.teacher.kind

    @property
    def teacher_config(self) -> PretrainedConfig:
        return self.teacher.config

    @property
    def teacher_params(self) -> int:
        return self.teacher.parameters

    def pinned(self, cfg: Config) -> Config:
        """cfg for the teacher actors: a hub teacher's revision pinned to the commit the cache identity holds,
        so every actor (a restarted one, one on another node) loads exactly those weights, even if the branch
        moves on the hub during the run."""
        import dataclasses

        if not self.teacher.revision or cfg.teacher.revision == self.teacher.revision:
            return cfg
        return dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, revision=self.teacher.revision))


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


def start_session(cfg: Config) -> Session:
    """Read the teacher's metadata, start Ray, and compute the cache identity. The corpus is not read here:
    a command streams it (`corpus_pass.corpus_stream`) or labels it (`label_pass.label_blocks`).
    The teacher's weights are not loaded here, whatever its size: they load in the teacher actors."""
    from gemini_ray.cluster.placement import alive_nodes, check_shared_storage
    from gemini_ray.data.cache import cache_identity
    from gemini_ray.data.teacher_stage import check_backend
    from gemini_ray.models.build import check_student_vocab, check_window, load_tokenizer, teacher_meta
    from gemini_ray.paths import read_json

    seconds = {}
    t0 = time.perf_counter()
    meta = teacher_meta(cfg.teacher)
    tokenizer = load_tokenizer(meta.source, cfg.teacher.trust_remote_code, revision=meta.revision or cfg.teacher.revision)
    vocab = meta.config.vocab_size
    if cfg.teacher.top_k > vocab:
        raise GeminiRayError(f"teacher.top_k={cfg.teacher.top_k} exceeds the teacher's vocabulary ({vocab} tokens). "
                             f"Choose teacher.top_k <= {vocab}; 16-64 keeps the signal small.")
    check_backend(cfg.teacher, meta.kind)  # vLLM without its extra: refused before Ray starts
    d = cfg.data
    check_window(d.seq_length, d.span_length, meta.config.to_dict(), f"the teacher '{cfg.teacher.model}'")
    if cfg.student.from_pretrained:  # a student of another vocabulary or fewer positions: refused before Ray starts
        check_student_vocab(cfg.student.from_pretrained, None, meta, tokenizer)
        check_window(d.seq_length, d.span_length, read_json(f"{cfg.student.from_pretrained}/config.json"),
                     f"the student '{cfg.student.from_pretrained}' (student.from_pretrained)")
    seconds["teacher_setup_s"] = time.perf_counter() - t0

    init_ray(cfg)
    nodes = alive_nodes()
    check_backend(cfg.teacher, meta.kind, nodes if cfg.run.check_resources else None)
    check_shared_storage(cfg, len(nodes))
    return Session(teacher=meta, tokenizer=tokenizer, seconds=seconds,
                   identity=cache_identity(cfg, meta.source, tokenizer, meta.kind, meta.revision))
