"""The config a run directory was started with, and the check that a resume trains what it started to. No Ray.

A run resumes when the same run.name and run.storage_path hold a checkpoint. Resuming it with another λ, μ,
learning rate, corpus or student would go on silently with a model trained under one loss and finished
under another, and `gemini-ray ablate` would report rows trained with the old settings as the new ones. So
`prepare` records the config in <run dir>/run_config.json when a run starts (`record_start`), and a later
command on the same directory is refused (`check_resume`) when a key that changes what is trained differs
from the record. Keys of where and how fast the run goes, how often it reports and how far it goes
(train.max_steps: raising it continues a finished run) may change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gemini_ray.config import Config, config_to_dict
from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import atomic_write_json, is_uri, read_json

__all__ = ["RECORD", "MAY_CHANGE", "differences", "check_resume", "record_start"]

RECORD = "run_config.json"

MAY_CHANGE = frozenset({
    "run", "tune", "eval", "label",  # where results and caches go, the search, the evaluation sets, how labels are made
    "train.max_steps",  # raising it continues a finished run
    "train.num_workers", "train.use_gpu", "train.cpus_per_worker", "train.resources_per_worker",  # resources
    "train.activation_checkpointing", "train.max_failures", "train.trace_positions",
    "train.log_every", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",  # reporting
    "data.max_val_examples",  # the held-out rows scored, not the ones trained
    "teacher.batch_size", "teacher.num_actors", "teacher.num_gpus", "teacher.num_cpus", "teacher.resources",
    "teacher.torch_threads", "teacher.cache_dir",  # the teacher pool's size and where its files are
})
"""Dotted keys (or whole sections) a resumed run may change: everything else must equal the record."""


def _flat(tree: dict[str, Any]) -> dict[str, Any]:
    """{'loss': {'lambda_kd': 0.5}} -> {'loss.lambda_kd': 0.5} (two levels: section.key; values kept whole)."""
    return {f"{section}.{key}": value for section, values in tree.items() for key, value in values.items()}


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, recorded value, current value) for each key outside MAY_CHANGE whose values differ.
    Both are nested config dicts; `current` is compared as JSON would store it (tuples as lists). A key the
    record lacks (added to the config since the run started) counts as differing only if its current value
    is not the default, so an older run stays resumable under its defaults."""
    defaults = _flat(json.loads(json.dumps(config_to_dict(Config()))))
    old, new = _flat(recorded), _flat(json.loads(json.dumps(current)))
    found = []
    for key in sorted(new):
        if key in MAY_CHANGE or key.split(".")[0] in MAY_CHANGE:
            continue
        before = old.get(key, defaults.get(key))
        if before != new[key]:
            found.append((key, before, new[key]))
    return found


def _recorded(out_dir: Path) -> tuple[dict[str, Any], str] | None:
    """(the config the run started with, the file it came from): its record, else the config in the
    summary of a run finished before records were written; None when neither is there."""
    record, summary = read_json(out_dir / RECORD), read_json(out_dir / "summary.json")
    if isinstance(record, dict):
        return record, str(out_dir / RECORD)
    if isinstance(summary, dict) and isinstance(summary.get("config"), dict):
        return summary["config"], str(out_dir / "summary.json")
    return None


def check_resume(cfg: Config, out_dir: str) -> None:
    """When `out_dir` holds a checkpoint to resume, refuse a config that differs from the one the run
    started with: GeminiRayError listing each key, its recorded and its new value. Writes nothing. A
    directory behind a URI is not checked (its checkpoints are resumed by Ray Train)."""
    from gemini_ray.models.checkpoint import whole_checkpoint_steps

    if is_uri(out_dir) or not whole_checkpoint_steps(out_dir):
        return
    recorded = _recorded(Path(out_dir))
    if recorded is None:
        print(f"[gemini-ray] {out_dir} has checkpoints but no record of their config: resuming unchecked")
        return
    found = differences(recorded[0], config_to_dict(cfg))
    if found:
        listed = "; ".join(f"{key}: {old!r} then, {new!r} now" for key, old, new in found)
        name = cfg.run.name
        raise GeminiRayError(
            f"run '{name}' has checkpoints trained with another config: {listed} (recorded in {recorded[1]}); "
            f"this command would finish them under the new one. Resume with the recorded values, start a new "
            f"run with another run.name (e.g. run.name={name}-2), or delete {out_dir} to start this one over.")


def record_start(cfg: Config, out_dir: str) -> None:
    """Record `cfg` as the config of the run in `out_dir` when the directory holds no checkpoint yet
    (replacing a record left by a start that never checkpointed); a run with checkpoints keeps its record.
    Called once every check of the run's input has passed, so that refused input writes nothing."""
    from gemini_ray.models.checkpoint import whole_checkpoint_steps

    if not is_uri(out_dir) and not whole_checkpoint_steps(out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out_dir) / RECORD, config_to_dict(cfg))
