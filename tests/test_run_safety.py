"""A user's files are never lost and a run is never stuck: output folders, verified checkpoints, one command
per run folder. No Ray here (the end-to-end resumes from a damaged checkpoint are in test_damaged_checkpoints).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gemini_ray.cluster.run_lock import LEASE_FILE, LOCK_FILE, hold_run_folder
from gemini_ray.errors import GeminiRayError
from gemini_ray.models.checkpoint import checkpoint_is_whole, save_checkpoint, student_from_hf_config, verify_checkpoint
from gemini_ray.models.export import save_student
from gemini_ray.paths import OUTPUT_MARKER, check_output_dir, is_our_output, make_output_dir
from helpers import DAMAGE, truncate


# --------------------------------------------------------------------------- output folders


def test_an_output_folder_of_anything_else_is_refused_whatever_the_settings(tmp_path):
    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "bert").mkdir()
    (mine / "notes.txt").write_text("keep me")
    for replace_ours in (False, True):
        with pytest.raises(GeminiRayError, match="holds files gemini_ray did not write .*bert, notes.txt"):
            check_output_dir(mine, "run.output_dir", replace_ours=replace_ours, override="run.overwrite_output")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(GeminiRayError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "a-file", "run.output_dir", replace_ours=True)
    check_output_dir(tmp_path / "new", "run.output_dir", replace_ours=False)  # does not exist yet: fine
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", "run.output_dir", replace_ours=False)
    assert not (tmp_path / "new").exists()  # a check writes nothing


def test_an_earlier_output_of_ours_is_replaced_only_when_asked(tmp_path):
    ours = tmp_path / "student"
    make_output_dir(ours, "student export")
    (ours / "model.safetensors").write_bytes(b"old")
    assert is_our_output(ours) and json.loads((ours / OUTPUT_MARKER).read_text())["written_by"] == "gemini_ray"
    with pytest.raises(GeminiRayError, match="already holds an earlier output.*set run.overwrite_output=true"):
        check_output_dir(ours, "run.output_dir", replace_ours=False, override="run.overwrite_output")
    check_output_dir(ours, "run.output_dir", replace_ours=True)
    legacy = tmp_path / "old-eval"  # a report folder written before the marker existed
    legacy.mkdir()
    (legacy / "report.json").write_text("{}")
    (legacy / "report.md").write_text("")
    assert is_our_output(legacy)
    (legacy / "thesis.tex").write_text("")
    assert not is_our_output(legacy)


def test_an_export_replaces_its_own_earlier_export_and_never_a_users_folder(tmp_path, llama_dir):
    from transformers import AutoConfig

    model = student_from_hf_config(AutoConfig.from_pretrained(llama_dir).to_dict(), "causal")
    out = tmp_path / "out"
    save_student(model, str(out), str(llama_dir))
    assert (out / OUTPUT_MARKER).is_file() and (out / "model.safetensors").is_file()
    (out / "stale.txt").write_text("from the first export")
    save_student(model, str(out), str(llama_dir))  # ours: replaced whole
    assert not (out / "stale.txt").exists()
    users = tmp_path / "users"
    users.mkdir()
    (users / "paper.pdf").write_bytes(b"%PDF")
    with pytest.raises(GeminiRayError, match="did not write"):
        save_student(model, str(users), str(llama_dir))
    assert sorted(p.name for p in users.iterdir()) == ["paper.pdf"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


# --------------------------------------------------------------------------- verified checkpoints


def _checkpoint(tmp_path: Path, llama_dir: Path, name: str, step: int) -> Path:
    from transformers import AutoConfig

    from gemini_ray.config import TrainConfig
    from gemini_ray.training.train_step import make_optimizer

    config = AutoConfig.from_pretrained(llama_dir).to_dict()
    model = student_from_hf_config(config, "causal")
    optimizer = make_optimizer(model, TrainConfig())
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()  # moments in the optimizer file
    directory = tmp_path / name
    save_checkpoint(directory, model, optimizer, {"step": step, "kind": "causal", "hf_config": config})
    return directory


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_found_and_named(damage, tmp_path, llama_dir):
    directory = _checkpoint(tmp_path, llama_dir, "checkpoint_a", 5)
    state = json.loads((directory / "state.json").read_text())
    assert set(state["files"]) == {"model.safetensors", "optimizer.safetensors"}
    assert verify_checkpoint(directory) is None
    harm, said = DAMAGE[damage]
    harm(directory)
    problem = verify_checkpoint(directory)
    assert problem is not None and said in problem, problem
    assert checkpoint_is_whole(directory) == (damage == "same-size")  # only the hash finds an in-place overwrite


def test_nan_weights_are_not_an_intact_checkpoint(tmp_path, llama_dir):
    from safetensors.torch import load_file, save_file

    directory = _checkpoint(tmp_path, llama_dir, "checkpoint_a", 5)
    tensors = load_file(str(directory / "model.safetensors"))
    first = next(iter(tensors))
    tensors[first][0] = float("nan")
    save_file(tensors, str(directory / "model.safetensors"))
    state = json.loads((directory / "state.json").read_text())  # recorded as written: the hash matches
    from gemini_ray.paths import sha256_file

    state["files"]["model.safetensors"] = {"bytes": (directory / "model.safetensors").stat().st_size,
                                           "sha256": sha256_file(directory / "model.safetensors")}
    (directory / "state.json").write_text(json.dumps(state))
    assert verify_checkpoint(directory) == "model.safetensors holds NaN or infinite weights"


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_resume_passes_over_a_damaged_newest_checkpoint_and_repairs_ray_trains_record(damage, tmp_path, llama_dir,
                                                                                        capsys):
    from gemini_ray.data.resume import resume_point

    old = _checkpoint(tmp_path, llama_dir, "checkpoint_2026-12-07_10-00-00.000000", 5)
    new = _checkpoint(tmp_path, llama_dir, "checkpoint_2026-12-07_10-05-00.000000", 10)
    snapshot = tmp_path / "checkpoint_manager_snapshot.json"  # Ray Train's record names both
    snapshot.write_text(json.dumps({"checkpoint_results": [{"checkpoint_dir_name": old.name},
                                                           {"checkpoint_dir_name": new.name}],
                                    "latest_checkpoint_result": {"checkpoint_dir_name": new.name,
                                                                 "metrics": {"step": 10}}}))
    DAMAGE[damage][0](new)
    assert resume_point(str(tmp_path)) == str(old)
    out = capsys.readouterr().out
    assert f"checkpoint {new.name} (step 10) is damaged" in out and "the checkpoint of step 10 is lost" in out
    assert "resuming from the newest intact checkpoint" in out and "(step 5)" in out
    assert not new.exists() and (tmp_path / "damaged" / new.name).is_dir()  # kept aside for a look
    assert not snapshot.exists() and list(tmp_path.glob(".checkpoint_manager_snapshot.json.set-aside-*"))
    assert resume_point(str(tmp_path)) == str(old)  # the next run agrees: nothing is stuck


def test_a_damaged_older_checkpoint_outside_the_record_leaves_the_record_alone(tmp_path, llama_dir, capsys):
    from gemini_ray.data.resume import resume_point

    old = _checkpoint(tmp_path, llama_dir, "checkpoint_2026-12-07_10-00-00.000000", 5)
    new = _checkpoint(tmp_path, llama_dir, "checkpoint_2026-12-07_10-05-00.000000", 10)
    snapshot = tmp_path / "checkpoint_manager_snapshot.json"
    snapshot.write_text(json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": new.name,
                                                                 "metrics": {"step": 10}}}))
    truncate(old / "model.safetensors")
    assert resume_point(str(tmp_path)) is None  # Ray Train resumes from step 10 through its record
    assert snapshot.is_file() and new.is_dir() and not old.exists()
    assert "(step 5) is damaged" in capsys.readouterr().out


# --------------------------------------------------------------------------- one command per run folder

HOLD = """
import sys, time
from gemini_ray.cluster.run_lock import hold_run_folder
with hold_run_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(folder: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_command_on_a_held_run_folder_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "runs" / "demo"
    proc = _holder(folder, 60)
    try:
        with pytest.raises(GeminiRayError, match=rf"in use by another gemini-ray command \(pid {proc.pid} on host"):
            with hold_run_folder(str(folder)):
                pass
    finally:
        proc.kill()
        proc.wait()
    with hold_run_folder(str(folder)):  # the holder died: its lock went with it
        assert (folder / LOCK_FILE).is_file()
    assert not (folder / LOCK_FILE).exists()


def test_a_lock_left_by_a_killed_command_is_taken_over_with_a_line(tmp_path, capsys):
    folder = tmp_path / "demo"
    proc = _holder(folder, 60)
    proc.kill()  # SIGKILL: no cleanup ran, the lock file is still there
    proc.wait()
    assert (folder / LOCK_FILE).is_file()
    with hold_run_folder(str(folder)):
        pass
    assert f"took over the run folder's lock from a command that is no longer running (pid {proc.pid}" in \
        capsys.readouterr().out


def test_a_refused_command_leaves_no_run_folder_behind(tmp_path):
    folder = tmp_path / "runs" / "demo"
    with pytest.raises(GeminiRayError):
        with hold_run_folder(str(folder)):
            raise GeminiRayError("refused after the lock was taken")
    assert not (tmp_path / "runs").exists()
    folder.mkdir(parents=True)
    (folder / "checkpoint_x").mkdir()
    with pytest.raises(GeminiRayError):
        with hold_run_folder(str(folder)):
            raise GeminiRayError("refused")
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_x"]  # what was there stays


def test_an_object_store_lease_refuses_a_live_holder_and_takes_over_an_expired_one(tmp_path, monkeypatch, capsys):
    from gemini_ray.cluster import run_lock

    monkeypatch.setattr(run_lock, "LEASE_S", 6.0)
    folder = f"file://{tmp_path}/run"  # the lease's code path, on a local filesystem through pyarrow
    lease = tmp_path / "run" / LEASE_FILE
    with run_lock._lease(folder, "first"):
        assert json.loads(lease.read_text())["token"] == "first"
        with pytest.raises(GeminiRayError, match="in use by another gemini-ray command"):
            with run_lock._lease(folder, "second"):
                pass
        time.sleep(2.5)  # renewed every LEASE_S / 4
        assert json.loads(lease.read_text())["expires"] > time.time() + 4
    assert not lease.exists()  # released
    lease.parent.mkdir(exist_ok=True)
    lease.write_text(json.dumps({"token": "dead", "pid": 1, "host": "h", "expires": time.time() - 1}))
    with run_lock._lease(folder, "third"):
        pass
    assert "took over the run folder's lease, which expired (pid 1 on host h" in capsys.readouterr().out
