"""Disk writes survive SIGKILL at any moment: a file under its final name is whole or absent.

A forked child rewrites a report (JSON), the cache manifest, a checkpoint and an exported student in a
loop; the parent kills it with SIGKILL at random moments and then loads what is there. A naive writer
(open the final name, write) run under the same kills is the control: it leaves cut-short files.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest

from gemini_ray.data.cache import write_manifest
from gemini_ray.models.checkpoint import (checkpoint_is_whole, latest_whole_checkpoint, load_checkpoint,
                                   save_checkpoint, student_from_hf_config)
from gemini_ray.models.export import export_student
from gemini_ray.paths import atomic_write_text, read_json

PAD = "x" * 3_000_000  # a few MB per JSON file, so a write takes long enough to be cut


def _writer_loop(out: Path, teacher_dir: str, naive: bool) -> None:
    import torch
    from transformers import AutoConfig

    from gemini_ray.training.train_step import make_optimizer

    config = AutoConfig.from_pretrained(teacher_dir).to_dict()
    model = student_from_hf_config(config, "causal")
    from gemini_ray.config import TrainConfig

    optimizer = make_optimizer(model, TrainConfig())
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    (out / "ready").write_text("1")
    for k in range(1, 1_000_000):
        text = json.dumps({"k": k, "pad": PAD, "end": True})
        if naive:  # in small flushed pieces at the pace of a slow disk (~1 ms each): ~95 % of the loop's time
            # is spent with the file part-written. Unpaced, a write took a few ms beside ~10 ms of json.dumps,
            # and in CI 8 random kills once all missed it.
            with open(out / "naive.json", "w") as handle:
                for start in range(0, len(text), 16_384):
                    handle.write(text[start:start + 16_384])
                    handle.flush()
                    time.sleep(0.001)
            continue
        atomic_write_text(out / "summary.json", text)
        write_manifest(str(out / "cache"), {"k": k, "pad": PAD, "complete": True})
        ckpt = out / f"checkpoint_{k:06d}"
        save_checkpoint(ckpt, model, optimizer, {"step": k, "kind": "causal", "hf_config": config})
        export_student(ckpt, out / "student", teacher_dir)


def _whole_json(path: Path) -> bool:
    try:
        value = json.loads(path.read_text())
        return value.get("end") is True or value.get("complete") is True
    except (OSError, ValueError):
        return False


def _kill_at_random(out: Path, teacher_dir: str, naive: bool, kills: int, rng: random.Random) -> list[str]:
    """Run the writer `kills` times, SIGKILL it after a random delay each time; returns the problems seen."""
    problems = []
    # spawn, not fork: a fork of this multi-threaded process (torch's pools) hung the parent once in CI
    ctx = multiprocessing.get_context("spawn")
    for _ in range(kills):
        (out / "ready").unlink(missing_ok=True)
        child = ctx.Process(target=_writer_loop, args=(out, teacher_dir, naive), daemon=True)
        child.start()
        deadline = time.monotonic() + 60
        while not (out / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.8))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        for name in ("summary.json", "naive.json", "cache/manifest.json"):
            if (out / name).exists() and not _whole_json(out / name):
                problems.append(f"{name} is cut short")
        for ckpt in out.glob("checkpoint_*"):  # Ray Train records a checkpoint only after it is whole
            if (ckpt / "state.json").exists() and not checkpoint_is_whole(ckpt):
                problems.append(f"{ckpt.name} has state.json but is not whole")
        student = out / "student"
        if student.exists() and not (_whole_json_config(student / "config.json")
                                     and checkpoint_is_whole_weights(student / "model.safetensors")):
            problems.append("student is cut short")
    return problems


def _whole_json_config(path: Path) -> bool:
    try:
        return "model_type" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def checkpoint_is_whole_weights(path: Path) -> bool:
    from gemini_ray.models.checkpoint import _safetensors_is_whole

    return _safetensors_is_whole(path)


def test_kills_at_random_moments_leave_no_cut_short_file(llama_dir, tmp_path):
    rng = random.Random(0)
    out = tmp_path / "atomic"
    out.mkdir()
    problems = _kill_at_random(out, str(llama_dir), naive=False, kills=10, rng=rng)
    assert problems == []
    assert (out / "summary.json").exists() and list(out.glob("checkpoint_*"))  # the kills hit real writes
    # what survived loads: the newest whole checkpoint, the manifest, the export
    newest, step = latest_whole_checkpoint(out)
    from transformers import AutoConfig

    model = student_from_hf_config(AutoConfig.from_pretrained(llama_dir).to_dict(), "causal")
    assert load_checkpoint(newest, model)["step"] == step
    assert read_json(out / "cache" / "manifest.json")["complete"] is True
    if (out / "student").exists():
        from transformers import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(out / "student")


def test_the_check_catches_a_naive_writer(llama_dir, tmp_path):
    """Control: writing the final name directly is caught cut short by the same kills."""
    out = tmp_path / "naive"
    out.mkdir()
    problems = _kill_at_random(out, str(llama_dir), naive=True, kills=8, rng=random.Random(1))
    if not problems:
        pytest.fail("no naive write was cut short: the kills did not land inside writes")
    assert all(p == "naive.json is cut short" for p in problems)


def test_a_resume_sets_checkpoints_cut_short_aside_and_keeps_whole_ones(llama_dir, tmp_path):
    """A kill during Ray's copy of a checkpoint into the run directory leaves a partial checkpoint_* that
    Ray Train never records; the next driver moves it to damaged/ before resuming from the newest whole one."""
    from transformers import AutoConfig

    from gemini_ray.config import TrainConfig
    from gemini_ray.training.train_step import make_optimizer
    from gemini_ray.data.resume import resume_point

    config = AutoConfig.from_pretrained(llama_dir).to_dict()
    model = student_from_hf_config(config, "causal")
    optimizer = make_optimizer(model, TrainConfig())
    whole, cut = tmp_path / "checkpoint_2026-11-29_10-00-00.000000", tmp_path / "checkpoint_2026-11-29_10-05-00.000000"
    save_checkpoint(whole, model, optimizer, {"step": 4, "kind": "causal", "hf_config": config})
    save_checkpoint(cut, model, optimizer, {"step": 8, "kind": "causal", "hf_config": config})
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])  # the copy stopped halfway
    checkpoint = resume_point(str(tmp_path))
    assert not cut.exists() and whole.is_dir() and (tmp_path / "damaged" / cut.name).is_dir()
    assert checkpoint == str(whole)


def test_a_resume_prefers_a_whole_checkpoint_newer_than_ray_trains_record(llama_dir, tmp_path):
    """A killed driver's Train worker may train and checkpoint on until Ray reclaims it; its controller is
    gone, so Ray Train's record ends at an older checkpoint. The next driver resumes from the newest whole
    one and sets the stale record aside; an up-to-date record is left to Ray Train."""
    import json

    from transformers import AutoConfig

    from gemini_ray.config import TrainConfig
    from gemini_ray.training.train_step import make_optimizer
    from gemini_ray.data.resume import resume_point

    config = AutoConfig.from_pretrained(llama_dir).to_dict()
    model = student_from_hf_config(config, "causal")
    optimizer = make_optimizer(model, TrainConfig())
    old, new = tmp_path / "checkpoint_2026-11-29_10-00-00.000000", tmp_path / "checkpoint_2026-11-29_10-05-00.000000"
    save_checkpoint(old, model, optimizer, {"step": 4, "kind": "causal", "hf_config": config})
    snapshot = tmp_path / "checkpoint_manager_snapshot.json"
    snapshot.write_text(json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": old.name,
                                                                 "metrics": {"step": 4}}}))
    assert resume_point(str(tmp_path)) is None and snapshot.is_file()  # up to date: Ray Train decides
    save_checkpoint(new, model, optimizer, {"step": 8, "kind": "causal", "hf_config": config})
    checkpoint = resume_point(str(tmp_path))
    assert checkpoint == str(new)
    assert not snapshot.exists() and len(list(tmp_path.glob(".checkpoint_manager_snapshot.json.set-aside-*"))) == 1
