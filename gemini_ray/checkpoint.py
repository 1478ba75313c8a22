"""Checkpoint and export files. No Ray here.

A checkpoint directory holds:
    model.safetensors      student weights (safetensors; tied weights stored once)
    optimizer.safetensors  optimizer tensors (AdamW moments, step), their structure in the file's metadata
    state.json             step, epoch, loss history, counters, and the student's HF config (written last)

Nothing is pickled: weights and optimizer state are safetensors, the rest is JSON.
The export is a plain Hugging Face directory (config, safetensors weights, tokenizer) that
`AutoModelForCausalLM.from_pretrained(dir)` (or AutoModelForMaskedLM) loads without gemini_ray.
Every file and directory is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from gemini_ray.paths import atomic_dir, atomic_path, atomic_write_json, remove_tree

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_is_whole", "latest_whole_checkpoint",
           "remove_partial_checkpoints", "student_from_hf_config", "export_student", "save_student", "STUDENT_META"]


def student_from_hf_config(hf_config: dict[str, Any], kind: str) -> torch.nn.Module:
    """An uninitialised student from its HF config dict (weights are loaded next)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    config_dict = dict(hf_config)
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    cls = AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM
    return cls.from_config(config, dtype=torch.float32)


def _save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Optimizer state as safetensors: tensors under 'state.<param index>.<name>', the rest as JSON metadata."""
    sd = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, entry in sd["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain[f"{index}.{name}"] = value
    meta = {"param_groups": json.dumps(sd["param_groups"]), "plain": json.dumps(plain)}
    save_file(tensors, str(path), metadata=meta)


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state: dict[int, dict[str, Any]] = {}
    for key, value in load_file(str(path)).items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in json.loads(meta["plain"]).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}  # betas
              for g in json.loads(meta["param_groups"])]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    """Write model.safetensors, optimizer.safetensors and, last, state.json into `directory`, each under a
    temporary name renamed when complete: a directory without state.json is not a checkpoint."""
    directory = Path(directory)
    with atomic_path(directory / "model.safetensors") as tmp:
        save_model(model, str(tmp))
    with atomic_path(directory / "optimizer.safetensors") as tmp:
        _save_optimizer(optimizer, tmp)
    atomic_write_json(directory / "state.json", state)


def load_checkpoint(directory: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load weights (and optimizer state) in place; returns state.json."""
    directory = Path(directory)
    load_model(model, str(directory / "model.safetensors"))
    if optimizer is not None:
        _load_optimizer(optimizer, directory / "optimizer.safetensors")
    return json.loads((directory / "state.json").read_text(encoding="utf-8"))


def _safetensors_is_whole(path: Path) -> bool:
    """The file's size is exactly its header's length + the byte range its tensors declare."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size == 8 + n + end
    except (OSError, ValueError, KeyError, struct.error):
        return False


def checkpoint_is_whole(directory: str | Path) -> bool:
    """True when a checkpoint directory holds every file, complete (a copy cut short by a kill is not)."""
    directory = Path(directory)
    try:
        state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return ("step" in state and _safetensors_is_whole(directory / "model.safetensors")
            and _safetensors_is_whole(directory / "optimizer.safetensors"))


def latest_whole_checkpoint(run_directory: str | Path) -> tuple[Path, int] | None:
    """(directory, step) of the whole checkpoint with the highest step under a run directory, or None."""
    best = None
    for d in Path(run_directory).glob("checkpoint_*"):
        if d.is_dir() and checkpoint_is_whole(d):
            step = json.loads((d / "state.json").read_text(encoding="utf-8"))["step"]
            if best is None or step > best[1]:
                best = (d, step)
    return best


def whole_checkpoint_steps(run_directory: str | Path) -> list[int]:
    """The steps of the whole checkpoints under a local run directory (none for a URI or a new run)."""
    found = []
    for d in Path(run_directory).glob("checkpoint_*"):
        if d.is_dir() and checkpoint_is_whole(d):
            found.append(json.loads((d / "state.json").read_text(encoding="utf-8"))["step"])
    return sorted(found)


def remove_partial_checkpoints(run_directory: str | Path) -> list[str]:
    """Delete the checkpoint_* directories under a run directory that are not whole (a copy cut short by a
    kill: Ray Train never recorded them, and nothing will). Call only while no run writes there.
    Returns the names removed."""
    removed = []
    for d in sorted(Path(run_directory).glob("checkpoint_*")):
        if d.is_dir() and not checkpoint_is_whole(d):
            remove_tree(d)
            removed.append(d.name)
    return removed


STUDENT_META = "gemini_ray.json"
"""Written next to an exported student: its teacher, kind, data and loss settings (read by `gemini-ray eval`)."""


def export_student(checkpoint_dir: str | Path, output_dir: str, tokenizer_source: str,
                   meta: dict[str, Any] | None = None) -> str:
    """Checkpoint -> plain HF directory (config + safetensors + tokenizer [+ gemini_ray.json]) at a local path
    (renamed into place) or a URI (uploaded)."""
    state = json.loads((Path(checkpoint_dir) / "state.json").read_text(encoding="utf-8"))
    model = student_from_hf_config(state["hf_config"], state["kind"])
    load_model(model, str(Path(checkpoint_dir) / "model.safetensors"))
    return save_student(model, output_dir, tokenizer_source, meta)


def save_student(model: Any, output_dir: str, tokenizer_source: str, meta: dict[str, Any] | None = None) -> str:
    """A student model -> plain HF directory (config + safetensors + tokenizer [+ gemini_ray.json]) at a local
    path (renamed into place) or a URI (uploaded)."""
    from gemini_ray.models import load_tokenizer

    with atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp)
        load_tokenizer(tokenizer_source).save_pretrained(tmp)
        if meta is not None:
            (tmp / STUDENT_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return output_dir
