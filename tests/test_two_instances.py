"""Two Ray instances on one machine: a command keeps its own instance, Ray Train's internals included, unless
it is told to join one (run.ray_address, RAY_ADDRESS).

Ray's state API finds its cluster by itself when given no address, and with two instances on the machine
it fails ("Found multiple active Ray instances"): Ray Train V2's placement-group cleaner did so every run,
with a traceback in the run's output. `ray_compat.cluster` pins RAY_ADDRESS, in every process of a job, to
the cluster that process is connected to.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gemini_ray.errors import GeminiRayError
from gemini_ray import ray_compat

ROOT = Path(__file__).resolve().parents[1]


def _init_ray_sees(monkeypatch, tmp_path, *overrides: str, fail: Exception | None = None) -> dict:
    import ray

    from gemini_ray.cluster.session import init_ray
    from gemini_ray.config import build_config

    seen: dict = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        if fail is not None:
            raise fail

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray_compat, "install_idle_sleep", lambda *a: False)
    init_ray(build_config(overrides=[f"run.storage_path={tmp_path}", *overrides]))
    return seen


def test_a_command_starts_its_own_instance_unless_told_to_join(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert _init_ray_sees(monkeypatch, tmp_path)["address"] == "local"  # never the last `ray start` head
    assert _init_ray_sees(monkeypatch, tmp_path, "run.ray_address=auto")["address"] == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6390")  # `ray job submit` sets it
    assert _init_ray_sees(monkeypatch, tmp_path)["address"] == "127.0.0.1:6390"


def test_auto_with_no_instance_to_join_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(GeminiRayError, match="run.ray_address=auto found no Ray instance to join"):
        _init_ray_sees(monkeypatch, tmp_path, "run.ray_address=auto",
                       fail=ConnectionError("Could not find any running Ray instance."))


@pytest.mark.ray
def test_every_worker_of_the_session_knows_its_own_cluster(ray_start_2_cpus):
    import ray

    @ray.remote(num_cpus=0.1)
    def address() -> str | None:
        return os.environ.get("RAY_ADDRESS")

    assert ray.get(address.remote()) == ray.get_runtime_context().gcs_address


# --------------------------------------------------------------------------- end to end


def _printed_address(log: Path) -> str | None:
    """The GCS address (host:port) the other instance's driver printed, once it has."""
    found = [line for line in log.read_text().splitlines() if re.fullmatch(r"[\w.-]+:\d+", line.strip())]
    return found[-1].strip() if found else None


@pytest.fixture
def other_instance(tmp_path):
    """A second Ray instance on this machine (a driver that started one and waits, as `gemini-ray tune` would);
    stopped afterwards with its whole process group."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    code = ("import time, ray; ray.init(address='local', num_cpus=1, include_dashboard=False); "
            "print(ray.get_runtime_context().gcs_address, flush=True); time.sleep(3600)")
    log = open(tmp_path / "other.log", "w+")
    other = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while (address := _printed_address(tmp_path / "other.log")) is None:
            if other.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the other Ray instance did not start:\n" + (tmp_path / "other.log").read_text()[-3000:])
            time.sleep(0.5)
        yield address
    finally:
        os.killpg(other.pid, signal.SIGINT)  # its ray.shutdown stops the instance it started
        try:
            other.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(other.pid, signal.SIGKILL)
            other.wait()
        log.close()


@pytest.mark.long
def test_distill_beside_another_instance_keeps_its_own_without_a_traceback(other_instance, llama_dir,
                                                                           corpus_file, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    args = [f"teacher.model={llama_dir}", "teacher.top_k=8", "teacher.batch_size=8", f"data.path={corpus_file}",
            "data.text_column=body", "data.span_length=16", "data.seq_length=32", "student.num_layers=2", "loss.num_negatives=3",
            "mining.window=16", "train.max_steps=2", "train.batch_size=4", "train.warmup_steps=1",
            f"run.storage_path={tmp_path / 'runs'}", "run.name=beside"]
    done = subprocess.run([sys.executable, "-m", "gemini_ray.cli", "distill", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-4000:]
    assert "Started a local Ray instance" in said  # its own, not the other one
    assert other_instance not in said
    assert "Traceback" not in said and "Found multiple active Ray instances" not in said, said[-4000:]
    assert (tmp_path / "runs" / "beside" / "student").is_dir()
