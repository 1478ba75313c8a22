"""What every command does first: join (or start) Ray, resolve the teacher, read and pair the corpus, and
find the teacher-signal cache that matches the config. Shared by `distill`, `label`, `tune`, `eval` and
`ablate`.

    session = start_session(cfg, with_teacher=True)   # Session: teacher, tokenizer, cache key
    cache = find_cache(cfg, session)                  # FoundCache(directory, manifest) or None
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from gemini_ray.config import Config
from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import absolute, join

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from gemini_ray.data.corpus_pass import CorpusStats

__all__ = ["Session", "FoundCache", "init_ray", "start_session", "print_corpus", "cache_dir_for", "find_cache"]


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


class FoundCache(NamedTuple):
    directory: str
    manifest: dict[str, Any]


def init_ray(cfg: Config) -> None:
    """Join run.ray_address (or RAY_ADDRESS), else start a local instance of this command's own, even when
    another Ray instance runs on this machine (run.ray_address=auto joins that one on purpose); quiet Ray
    Data's progress bars; apply `ray_patches`: Ray Data's idle scheduling loop here and in every worker of
    the job, Ctrl-C during a Ray Train fit as KeyboardInterrupt, and RAY_ADDRESS pinned to this job's
    cluster in its processes (Ray Train's placement-group cleaner otherwise looks for a cluster itself)."""
    import ray
    import ray.data

    from gemini_ray.ray_compat import patches as ray_patches

    if not ray.is_initialized():
        # "local": a new instance, not the last `ray start` head of the machine that Ray joins by default
        address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS") or "local"
        try:  # a local head binds to 127.0.0.1, token auth on
            ray.init(address=address, log_to_driver=True, runtime_env=ray_patches.runtime_env())
        except ConnectionError as exc:
            if address != "auto":
                raise
            raise GeminiRayError(f"run.ray_address=auto found no Ray instance to join ({exc}). Start one "
                                 "(`ray start --head`), name it (run.ray_address=HOST:PORT), or leave "
                                 "run.ray_address unset to start a local instance.") from None
        ray_patches.pin_address()  # this process's child processes and Ray's own lookups find this cluster
    if ray_patches.enabled():
        ray_patches.setup_process()
    ray_patches.setup_driver()
    configure_data_context()


def configure_data_context() -> None:
    """This process's Ray Data settings, for every driver of datasets: the job's driver, and each Tune trial
    (a process of its own, whose DataContext starts from Ray's defaults)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the trainer prints its own progress lines
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True  # the corpus's order: the same rows first on every run


def _identity(cfg: Config, source: str, tokenizer: Any, kind: str) -> dict[str, Any]:
    from gemini_ray.data.cache import vocab_hash, weights_hash
    from gemini_ray.data.corpus import corpus_signature

    d = cfg.data
    return {
        "teacher_weights": weights_hash(source),
        "tokenizer_vocab": vocab_hash(tokenizer),
        "corpus": corpus_signature(d.path, d.format, d.text_column, d.max_documents),
        "max_val_examples": d.max_val_examples,
        "span_length": cfg.data.span_length,
        "masked": kind == "masked",
        "mlm_probability": cfg.data.mlm_probability if kind == "masked" else None,
        "data_seed": cfg.data.seed,
        "val_fraction": cfg.data.val_fraction,
        "top_k": cfg.teacher.top_k,
        "max_negatives": cfg.label.max_negatives,
        "mining_window": cfg.mining.window,
        "mining_seed": cfg.mining.seed,
    }


def start_session(cfg: Config, with_teacher: bool = False) -> Session:
    """Resolve the teacher, start Ray, and compute the cache identity. The corpus is not read here: a
    command streams it (`corpus_pass.corpus_stream`) or makes one whole pass (`corpus_pass.build_examples`).

    with_teacher keeps the loaded teacher in the Session (to derive a student from); otherwise it is freed."""
    from gemini_ray.cluster.placement import alive_nodes, check_shared_storage
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
                   teacher_params=count_parameters(teacher), identity=_identity(cfg, source, tokenizer, kind),
                   seconds=seconds, teacher=teacher if with_teacher else None)


def print_corpus(stats: CorpusStats, read: str = "") -> None:
    """One line of corpus counts."""
    dropped = f", {stats.val_examples_dropped} more beyond data.max_val_examples" if stats.val_examples_dropped else ""
    print(f"[gemini-ray] corpus{read}: {stats.documents} documents -> {stats.examples} examples "
          f"({stats.train_examples} train, {stats.val_examples} held out{dropped}; "
          f"skipped: {stats.skipped_too_short} too short, {stats.skipped_empty} empty, "
          f"{stats.skipped_non_utf8} not UTF-8, {stats.skipped_bad_records} unreadable records, "
          f"{stats.skipped_too_long} too long; {stats.duplicate_documents} duplicates; "
          f"tokenized by {stats.tokenize_processes} processes)", flush=True)


def cache_dir_for(cfg: Config, identity: dict[str, Any]) -> str:
    """Where the cache of these inputs lives: <label.cache_root or <storage_path>/signal_cache>/<key>."""
    from gemini_ray.data.cache import cache_key

    root = cfg.label.cache_root or join(cfg.run.storage_path, "signal_cache")
    return join(absolute(root), cache_key(identity))


def find_cache(cfg: Config, session: Session, rows: int | None = None) -> FoundCache | None:
    """A complete cache matching the config (label.path, or the derived location), or None. rows: the
    training rows the run reads (default: this config's run; a search passes its longest trial's): a cache
    labelled for a shorter run (label.scope=run) is refused under label.use=require or label.path, and
    passed over (the teacher runs online) under auto."""
    from gemini_ray.data.cache import cached_train_rows, check_compatible, check_shards, read_manifest, rows_a_run_reads

    if cfg.label.use == "never":
        return None
    directory = cfg.label.path or cache_dir_for(cfg, session.identity)
    manifest = read_manifest(directory)
    if manifest is None or not manifest.get("complete"):
        if cfg.label.path or cfg.label.use == "require":
            raise GeminiRayError(
                f"no complete teacher-signal cache at '{directory}'. Run 'gemini-ray label' with this config first"
                + (" (or set label.use=auto to run the teacher online)." if cfg.label.use == "require" else ".")
            )
        return None
    check_compatible(manifest, session.identity, directory)
    check_shards(directory, manifest)  # a damaged shard: refused in the driver, before any trial or worker reads it
    k_max = manifest["identity"]["max_negatives"]
    if cfg.loss.num_negatives > k_max:
        raise GeminiRayError(
            f"loss.num_negatives={cfg.loss.num_negatives} exceeds the {k_max} negatives mined into the cache at "
            f"'{directory}'. Use loss.num_negatives <= {k_max}, or label again with label.max_negatives >= "
            f"{cfg.loss.num_negatives}."
        )
    held, whole = cached_train_rows(manifest)
    need = rows if rows is not None else rows_a_run_reads(cfg.train.max_steps, cfg.train.examples_per_step)
    if not whole and need > held:
        text = (f"the teacher-signal cache at '{directory}' holds the first {held} of the corpus's "
                f"{manifest['corpus']['train_examples']} training examples (labelled with label.scope=run for a "
                f"shorter run); this run reads {need} (train.max_steps x examples per step, and a step of slack)")
        fix = ("Run 'gemini-ray label' with this config to add the shards it lacks (those done are kept), or "
               "label with label.scope=corpus.")
        if cfg.label.path or cfg.label.use == "require":
            raise GeminiRayError(f"{text}. {fix}")
        print(f"[gemini-ray] {text}: not used (distill runs the teacher online instead). {fix}")
        return None
    return FoundCache(directory, manifest)
