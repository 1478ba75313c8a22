"""Checkpoint and export files. No Ray here.

A checkpoint directory holds:
    model.safetensors   student weights (safetensors; tied weights stored once)
    optimizer.pt        optimizer state (tensors and plain containers only; loaded with weights_only=True)
    state.json          step, epoch, loss history, counters, and the student's HF config

The export is a plain Hugging Face directory (config, safetensors weights, tokenizer) that
`AutoModelForCausalLM.from_pretrained(dir)` (or AutoModelForMaskedLM) loads without gemini_ray.
Every file and directory is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

__all__ = ["save_checkpoint", "load_checkpoint", "student_from_hf_config", "export_student", "atomic_write_text",
           "STUDENT_META"]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file under a temporary name in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def student_from_hf_config(hf_config: dict[str, Any], kind: str) -> torch.nn.Module:
    """An uninitialised student from its HF config dict (weights are loaded next)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    config_dict = dict(hf_config)
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    cls = AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM
    return cls.from_config(config, dtype=torch.float32)


def save_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    """Write model.safetensors, optimizer.pt and state.json into `directory` (files renamed into place)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".model.safetensors.tmp"
    save_model(model, str(tmp))
    os.replace(tmp, directory / "model.safetensors")
    tmp = directory / ".optimizer.pt.tmp"
    torch.save(optimizer.state_dict(), tmp)
    os.replace(tmp, directory / "optimizer.pt")
    atomic_write_text(directory / "state.json", json.dumps(state, indent=1))


def load_checkpoint(directory: str | Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load weights (and optimizer state) in place; returns state.json."""
    directory = Path(directory)
    load_model(model, str(directory / "model.safetensors"))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    return json.loads((directory / "state.json").read_text(encoding="utf-8"))


STUDENT_META = "gemini_ray.json"
"""Written next to an exported student: its teacher, kind, data and loss settings (read by `gemini-ray eval`)."""


def export_student(checkpoint_dir: str | Path, output_dir: str | Path, tokenizer_source: str,
                   meta: dict[str, Any] | None = None) -> Path:
    """Checkpoint -> plain HF directory (config + safetensors + tokenizer [+ gemini_ray.json]), renamed into place."""
    from gemini_ray.models import load_tokenizer

    state = json.loads((Path(checkpoint_dir) / "state.json").read_text(encoding="utf-8"))
    model = student_from_hf_config(state["hf_config"], state["kind"])
    load_model(model, str(Path(checkpoint_dir) / "model.safetensors"))
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save_pretrained(tmp)
        load_tokenizer(tokenizer_source).save_pretrained(tmp)
        if meta is not None:
            (tmp / STUDENT_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if output_dir.exists():
            old = output_dir.with_name(f".{output_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(output_dir, old)
            os.replace(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output_dir
