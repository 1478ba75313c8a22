"""A student -> a plain Hugging Face directory (config, safetensors weights, tokenizer [, gemini_ray.json]) that
`AutoModelForCausalLM.from_pretrained(dir)` (or AutoModelForMaskedLM) loads without gemini_ray: from a model
in memory (`save_student`) or from a checkpoint (`export_student`). No Ray here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_model

from gemini_ray.models.build import load_tokenizer
from gemini_ray.models.checkpoint import student_from_hf_config
from gemini_ray.paths import atomic_dir, check_output_dir, is_our_output, mark_output

__all__ = ["export_student", "save_student", "STUDENT_META"]

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
    path (renamed into place) or a URI (uploaded). It replaces only an earlier output of ours
    (paths.OUTPUT_MARKER, written into it): a folder of anything else is refused, never replaced."""
    check_output_dir(output_dir, "the student's folder", replace_ours=True)  # checked again at the rename
    ours = lambda target: not any(target.iterdir()) or is_our_output(target)  # noqa: E731
    with atomic_dir(output_dir, replace_if=ours) as tmp:
        mark_output(tmp, "student export")
        model.save_pretrained(tmp)
        load_tokenizer(tokenizer_source).save_pretrained(tmp)
        if meta is not None:
            (tmp / STUDENT_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return output_dir
