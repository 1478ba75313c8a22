"""Checkpoint files: what a checkpoint holds, and whether it is whole. No Ray here.

A checkpoint directory holds:
    model.safetensors      student weights (safetensors; tied weights stored once)
    optimizer.safetensors  optimizer tensors (AdamW moments, step), their structure in the file's metadata
    state.json             step, epoch, loss history, counters, the student's HF config, and the size and
                           SHA-256 of the two files above (written last)

Nothing is pickled: weights and optimizer state are safetensors, the rest is JSON. A checkpoint is verified
against the sizes and hashes its state.json records before it is resumed (`verify_checkpoint`): a copy cut
short, a file overwritten in place or a missing file is found, named, and passed over for the newest intact
checkpoint (`data.resume.resume_point`).
A checkpoint becomes a plain Hugging Face directory in `models.export`. Every file and directory is written
under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from gemini_ray.paths import atomic_path, atomic_write_json, sha256_file

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_is_whole", "latest_whole_checkpoint",
           "verify_checkpoint", "checkpoint_step", "student_from_hf_config", "WEIGHT_FILES"]

WEIGHT_FILES = ("model.safetensors", "optimizer.safetensors")
"""The files of a checkpoint whose size and SHA-256 its state.json records."""


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
    temporary name renamed when complete: a directory without state.json is not a checkpoint. state.json
    records each file's size and SHA-256 ('files'), checked before a resume loads it (`verify_checkpoint`)."""
    directory = Path(directory)
    with atomic_path(directory / "model.safetensors") as tmp:
        save_model(model, str(tmp))
    with atomic_path(directory / "optimizer.safetensors") as tmp:
        _save_optimizer(optimizer, tmp)
    files = {name: {"bytes": (directory / name).stat().st_size, "sha256": sha256_file(directory / name)}
             for name in WEIGHT_FILES}
    atomic_write_json(directory / "state.json", {**state, "files": files})


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


def _read_state(directory: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("step"), int) else None


def checkpoint_step(directory: str | Path) -> int | None:
    """The step a checkpoint's state.json records, or None when it cannot be read."""
    state = _read_state(Path(directory))
    return None if state is None else state["step"]


def _problem(directory: Path, deep: bool) -> str | None:
    """What is wrong with a checkpoint directory, or None when it is intact. Cheap checks (state.json, the
    files' sizes against the record or, for a checkpoint from before records, against their headers); with
    `deep`, also each file's SHA-256 against the record and every value of both files (all finite)."""
    state = _read_state(directory)
    if state is None:
        return "state.json is missing or unreadable"
    recorded = state.get("files") or {}
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if name in recorded and size != recorded[name]["bytes"]:
            return f"{name} has {size:,} bytes where {recorded[name]['bytes']:,} were written"
        if not _safetensors_is_whole(path):
            return f"{name} is cut short or its header is damaged"
        if deep and name in recorded and sha256_file(path) != recorded[name]["sha256"]:
            return f"{name} does not hold the bytes that were written (its SHA-256 differs from the record)"
    if deep and not _all_finite(directory / "model.safetensors"):
        return "model.safetensors holds NaN or infinite weights"
    if deep and not _all_finite(directory / "optimizer.safetensors"):
        return "optimizer.safetensors holds NaN or infinite values (the run had diverged when it was saved)"
    return None


def _all_finite(path: Path) -> bool:
    try:
        tensors = load_file(str(path))
    except Exception:  # noqa: BLE001  safetensors raises its own error types for a damaged file
        return False
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


def verify_checkpoint(directory: str | Path, deep: bool = True) -> str | None:
    """None when a checkpoint directory is intact, else what is wrong with it (a sentence fragment naming the
    file). deep=True reads every byte (SHA-256 against state.json's record, all values finite): ~1 s per GB."""
    return _problem(Path(directory), deep)


def checkpoint_is_whole(directory: str | Path) -> bool:
    """True when a checkpoint directory holds every file at the size it was written (cheap: no hashing)."""
    return _problem(Path(directory), deep=False) is None


def latest_whole_checkpoint(run_directory: str | Path) -> tuple[Path, int] | None:
    """(directory, step) of the whole checkpoint with the highest step under a run directory, or None."""
    found = [(d, checkpoint_step(d)) for d in Path(run_directory).glob("checkpoint_*")
             if d.is_dir() and checkpoint_is_whole(d)]
    return max(found, key=lambda f: f[1], default=None)


def whole_checkpoint_steps(run_directory: str | Path) -> list[int]:
    """The steps of the whole checkpoints under a local run directory (none for a URI or a new run)."""
    return sorted(checkpoint_step(d) for d in Path(run_directory).glob("checkpoint_*")
                  if d.is_dir() and checkpoint_is_whole(d))
