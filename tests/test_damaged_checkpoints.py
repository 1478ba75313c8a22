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
from test_run_safety import DAMAGE

from gemini_ray.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.long]


def _args(teacher: Path, corpus: Path, storage: Path, steps: int) -> list[str]:
    return ["distill", f"teacher.model={teacher}", "teacher.top_k=8", "teacher.batch_size=8", f"data.path={corpus}",
            "data.text_column=body", "data.span_length=16", "student.num_layers=2", "loss.num_negatives=3",
            "mining.window=16", "train.batch_size=4", "train.log_every=5", "train.eval_every=5",
            "train.checkpoint_every=5", "train.warmup_steps=1", f"train.max_steps={steps}",
            f"run.storage_path={storage}", "run.name=run"]


def _newest(run: Path) -> Path:
    steps = {json.loads((d / "state.json").read_text())["step"]: d for d in run.glob("checkpoint_*") if d.is_dir()}
    return steps[max(steps)]


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

    # the run is not stuck: the same command again resumes from the finished run's record, quietly
    assert main(_args(llama_dir, corpus_file, tmp_path / "missing", 20)) == 0
    out = capsys.readouterr().out
    assert "is damaged" not in out and "resuming from checkpoint at step 15" in out
