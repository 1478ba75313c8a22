"""Fault injection on the real pipeline (tiny models): processes are killed with SIGKILL, not mocked.

* the driver (`gemini-ray distill` in a subprocess) dies: the same command resumes from its checkpoint, and
  its stream goes on with the first example it had not trained on (each example trained once, counted from
  the positions the workers trace);
* a Ray Train worker dies: Ray Train restarts the worker group from the latest checkpoint;
* a teacher actor dies while streaming or labelling: Ray Data restarts it and retries its batches;
* the loss turns NaN: training stops with an error naming the step and the part, nothing is exported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Killer, alive_pids, wait_for

from gemini_ray.cli import main

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]


def tiny(teacher_dir, corpus, storage, name, *extra):
    return [f"teacher.model={teacher_dir}", "teacher.top_k=8", "teacher.batch_size=8", f"data.path={corpus}",
            "data.text_column=body", "data.span_length=16", "data.seq_length=32", "student.num_layers=2", "loss.num_negatives=3",
            "mining.window=16", "train.batch_size=4", "train.log_every=1", "train.eval_every=100",
            "train.checkpoint_every=4", "train.warmup_steps=1", f"run.storage_path={storage}", f"run.name={name}",
            *extra]


def read_progress(run: Path) -> dict | None:
    try:
        return json.loads((run / "progress.json").read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.long
def test_driver_death_then_worker_and_teacher_deaths_lose_nothing(ray_start_2_cpus, llama_dir, corpus_file,
                                                                   tmp_path):
    import ray

    # enough steps that a resumed run passes a checkpoint and two steps before its end, even when the dead
    # driver's Train worker went on for a few checkpoints before Ray reclaimed it (seen on CI: steps 6 -> 14)
    steps, every = 28, 4
    trace = tmp_path / "trace"
    trace.mkdir()
    args = tiny(llama_dir, corpus_file, tmp_path, "faults", f"train.max_steps={steps}",
                f"train.trace_positions={trace}")
    run = tmp_path / "faults"

    # 1. the driver dies: `gemini-ray distill` joins this session's Ray and is SIGKILLed after a checkpoint
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "gemini_ray.cli", "distill", *args], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        first = wait_for(lambda: (p := read_progress(run)) and p["step"] > every + 1 and p, timeout=300)
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.kill()
        log = driver.communicate()[0]
    # Ray reclaims the dead driver's actors (its Train controller, workers and teacher pool); its worker may
    # train (and checkpoint) a few more steps until then, so the last step trained is read afterwards
    wait_for(lambda: not alive_pids("CountingTeacherLabeler") and not alive_pids("RayTrainWorker"), 60, 0.2)
    killed_at = read_progress(run)["step"]
    assert killed_at < steps - every - 2, log

    # 2. the same command again resumes; while it trains, a teacher actor and then a Train worker are killed
    resumed_first_step = []

    def ready(n_killed: int) -> bool:
        if n_killed == 0:  # the teacher pool labels the run's few rows in seconds: kill it as soon as it is up
            return True
        p = read_progress(run)  # the worker: once the resumed run has passed its next checkpoint
        if not p or p["fit_id"] == first["fit_id"]:
            return False
        resumed_first_step.append(p["step"])  # the resume point + 1, or later when a poll came late
        return p["step"] >= resumed_first_step[0] + every + 1

    killer = Killer(ready, ["CountingTeacherLabeler", "RayTrainWorker"])
    killer.start()
    assert main(["distill", *args]) == 0
    killer.join(timeout=5)
    assert not killer.errors and [k[0] for k in killer.killed] == ["CountingTeacherLabeler", "RayTrainWorker"]

    summary = json.loads((run / "summary.json").read_text())
    t = summary["training"]
    assert t["steps"] == steps  # as an uninterrupted run
    assert t["examples"] == steps * 4  # every counted example belongs to a step that was kept
    # resumed from the last checkpoint before the kill (the one before it, if the kill cut its upload short):
    # the steps done again never exceed one checkpoint interval
    driver_resume, worker_resume = t["resumes"]
    assert driver_resume["cause"] == "driver_restart" and driver_resume["step"] % every == 0
    assert 0 <= killed_at - driver_resume["step"] == driver_resume["steps_repeated"] <= every
    assert worker_resume["cause"] == "worker_group_restart" and worker_resume["step"] % every == 0
    # a worker killed a step or two after a checkpoint may die before Ray Train's controller has registered
    # it (the report is polled): then the one before it is the resume point
    assert worker_resume["step"] > driver_resume["step"] and 0 <= worker_resume["steps_repeated"] <= 2 * every
    assert worker_resume["seconds_to_resume"] > 0 and driver_resume["seconds_to_resume"] > 0
    assert t["driver_restarts"] == 1 and t["worker_group_restarts"] == 1
    assert [h["step"] for h in t["history"]] == list(range(1, steps + 1))  # each step once in the history

    # exactly once: the steps kept (a step's last run) trained distinct examples, every one of the pass's first
    # steps x 4; the runs of a step lost to a fault (after its checkpoint) are the only repeats
    kept, lost = {}, []
    for line in (trace / "rank0.txt").read_text().splitlines():
        _, step, *positions = line.split()
        if int(step) in kept:
            lost.extend(kept[int(step)])
        kept[int(step)] = [int(p) for p in positions]
    trained = [p for step in sorted(kept) for p in kept[step]]
    assert sorted(kept) == list(range(1, steps + 1)) and len(set(trained)) == len(trained) == steps * 4
    assert len(lost) == sum(r["examples_repeated"] for r in t["resumes"]) == 4 * t["steps_repeated"]
    assert driver_resume["examples_skipped"] == 4 * driver_resume["step"]  # trained before the kill, not again
    assert worker_resume["examples_skipped"] == 4 * worker_resume["step"]
    assert t["epochs_started"] == 1, "the corpus must hold one pass of the run's rows for this count"

    # the export loads with transformers alone (no gemini_ray import) and runs
    code = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer; "
            f"m = AutoModelForCausalLM.from_pretrained({str(run / 'student')!r}); "
            f"t = AutoTokenizer.from_pretrained({str(run / 'student')!r}); "
            "ids = t('the government said', return_tensors='pt').input_ids; "
            "print(m.config.num_hidden_layers, m(ids).logits.shape[-1]); "
            "assert 'gemini_ray' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", str(summary["teacher"]["vocab_size"])]
