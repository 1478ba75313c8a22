"""A damaged newest checkpoint never leaves a run stuck: through the real CLI, Ray Data and Ray Train.

A run trains 10 steps with a checkpoint every 5; its folder is copied three times and the newest checkpoint
of each copy is damaged as a disk, a kill or a careless user damages one: the weights cut short, 1 KiB
overwritten in place (the size unchanged), the optimizer file deleted. The same command with
train.max_steps=15 then says which checkpoint was damaged and that step 10 is lost, resumes from step 5
(Ray Train's record, which names the damaged checkpoint, is set aside) and finishes; a third run of the
same command resumes from the finished run, without a word about damage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import DAMAGE

from gemini_ray.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.long]


def _args(teacher: Path, corpus: Path, storage: Path, steps: int) -> list[str]:
    return ["distill", f"teacher.model={teacher}", "teacher.top_k=8", "teacher.batch_size=8", f"data.path={corpus}",
            "data.text_column=body", "data.span_length=16", "data.seq_length=32", "student.num_layers=2", "loss.num_negatives=3",
            "mining.window=16", "train.batch_size=4", "train.log_every=5", "train.eval_every=5",
            "train.checkpoint_every=5", "train.warmup_steps=1", f"train.max_steps={steps}",
            f"run.storage_path={storage}", "run.name=run"]


def _newest(run: Path) -> Path:
    steps = {json.loads((d / "state.json").read_text())["step"]: d for d in run.glob("checkpoint_*") if d.is_dir()}
    return steps[max(steps)]


def _nan_moments(checkpoint: Path) -> None:
    """NaN in every AdamW first moment, the record of sizes and hashes rewritten to match."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from gemini_ray.paths import sha256_file

    path = checkpoint / "optimizer.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for key, value in tensors.items():
        if key.endswith("exp_avg"):
            value.fill_(float("nan"))
    save_file(tensors, str(path), metadata=meta)
    state = json.loads((checkpoint / "state.json").read_text())
    state["files"]["optimizer.safetensors"] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    (checkpoint / "state.json").write_text(json.dumps(state))


def _scale_weights(checkpoint: Path, factor: float) -> None:
    """Every weight of the model multiplied by `factor`, the record rewritten to match."""
    from safetensors.torch import load_file, save_file

    from gemini_ray.paths import sha256_file

    path = checkpoint / "model.safetensors"
    save_file({k: v * factor for k, v in load_file(str(path)).items()}, str(path), metadata={"format": "pt"})
    state = json.loads((checkpoint / "state.json").read_text())
    state["files"]["model.safetensors"] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    (checkpoint / "state.json").write_text(json.dumps(state))


def test_each_damage_to_the_newest_checkpoint_resumes_from_the_one_before_and_finishes(
        ray_start_2_cpus, llama_dir, corpus_file, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(_args(llama_dir, corpus_file, first, 10)) == 0
    capsys.readouterr()
    for damage, (harm, said) in sorted(DAMAGE.items()):
        storage = tmp_path / damage
        shutil.copytree(first, storage)
        run = storage / "run"
        newest = _newest(run)
        harm(newest)

        assert main(_args(llama_dir, corpus_file, storage, 15)) == 0, damage
        out = capsys.readouterr().out
        assert f"checkpoint {newest.name} (step 10) is damaged: " in out and said in out, (damage, out[-3000:])
        assert "the checkpoint of step 10 is lost: resuming from step 5" in out, damage
        assert "resuming from checkpoint at step 5" in out  # the worker's own line: it loaded step 5
        summary = json.loads((run / "summary.json").read_text())
        assert summary["training"]["steps"] == 15 and summary["training"]["resumed_from_steps"] == [5], damage
        assert (run / "damaged" / newest.name).is_dir() and (run / "student" / "model.safetensors").is_file()

    # bytes as written, but the optimizer state had diverged (NaN moments, the record rewritten to match): set
    # aside like a damaged one, the run resumes from step 5 and finishes
    storage = tmp_path / "diverged"
    shutil.copytree(first, storage)
    _nan_moments(_newest(storage / "run"))
    assert main(_args(llama_dir, corpus_file, storage, 15)) == 0
    assert "optimizer.safetensors holds NaN or infinite values" in capsys.readouterr().out
    # finite weights whose loss is not (every weight x 1e20: the logits overflow): the first step after loading
    # is not finite, and the error says that checkpoint is not a good one, never "the last good checkpoint is kept"
    storage = tmp_path / "overflow"
    shutil.copytree(first, storage)
    _scale_weights(_newest(storage / "run"), 1e20)
    assert main(_args(llama_dir, corpus_file, storage, 15)) == 2
    err = capsys.readouterr().err
    assert "at the first step after resuming from the checkpoint of step 10" in err and "not a good one" in err
    assert "last good checkpoint" not in err and "Traceback" not in err

    # the run is not stuck: the same command again resumes from the finished run's record, quietly
    assert main(_args(llama_dir, corpus_file, tmp_path / "missing", 20)) == 0
    out = capsys.readouterr().out
    assert "is damaged" not in out and "resuming from checkpoint at step 15" in out
