"""`ray job submit` against a real local head: the way users run gemini-ray on any cluster.

The head is a second Ray instance (`ray start --head --block` on 127.0.0.1, free ports, token
authentication on), stopped by killing its process group even when the test fails; this session's
own Ray instance is left alone (no `ray stop`, which would stop every Ray on the machine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from helpers import free_port

pytestmark = pytest.mark.ray
BIN = Path(sys.executable).parent


@pytest.fixture
def local_head(tmp_path):
    """(dashboard address, environment for `ray job` commands) of a fresh head; stopped afterwards."""
    gcs, dash = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    log = open(tmp_path / "head.log", "w")
    # every port free: this session's Ray instance holds the defaults (an agent that cannot bind its port
    # leaves the head up but refuses jobs with "No available agent")
    ports = [f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                   "metrics-export-port", "runtime-env-agent-port",
                                                   "ray-client-server-port", "node-manager-port", "object-manager-port")]
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                             "--disable-usage-stats", *ports],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:  # the dashboard answers once the head is up
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # it answered (401 without the token): up
                break
            except OSError:
                if head.poll() is not None or time.time() > deadline:
                    pytest.fail("the local head did not start:\n" + (tmp_path / "head.log").read_text()[-3000:])
                time.sleep(1)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGINT)  # like Ctrl-C: ray start --block stops what it started (~2 s; SIGTERM ~30 s)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()
        # `ray start` records its head for later ray.init() calls; a stale record would make them hang
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.is_file() and current.read_text().strip().endswith(f":{gcs}"):
            current.unlink()


RETRIED = ("No available agent", "ConnectionError", "Failed to connect")  # the head still coming up, or busy


def _job(env, *args, timeout=120) -> subprocess.CompletedProcess:
    """`ray job ...`, retried while the head refuses it: the dashboard answers before the node's job agent
    is up, and a fresh head's dashboard once dropped a working-dir upload on a loaded machine."""
    for attempt in range(30):
        done = subprocess.run([str(BIN / "ray"), "job", *args], env=env, capture_output=True, text=True, timeout=timeout)
        said = done.stderr + done.stdout
        if attempt and "submit" in args and "already exists" in said:  # an earlier try reached the head
            return done
        if done.returncode == 0 or not any(word in said for word in RETRIED):
            return done
        time.sleep(3)
    return done


def _finished(env, address, job_id, timeout=600) -> str:
    """The job's final status (SUCCEEDED, FAILED or STOPPED) and the output of the `ray job status` that said it."""
    deadline = time.time() + timeout
    while True:
        status = _job(env, "status", "--address", address, job_id)
        for word in ("SUCCEEDED", "FAILED", "STOPPED"):
            if word in status.stdout.upper():
                return status.stdout
        if time.time() > deadline:
            pytest.fail(f"job {job_id} did not finish in {timeout} s:\n{status.stdout}\n{status.stderr}")
        time.sleep(3)


@pytest.mark.long
def test_ray_job_submit_runs_distill_on_a_local_head(local_head, llama_dir, corpus_file, tmp_path):
    address, env = local_head
    work = tmp_path / "project"
    work.mkdir()
    storage = tmp_path / "shared"
    (work / "job.yaml").write_text(yaml.safe_dump({
        "teacher": {"model": str(llama_dir), "top_k": 8, "batch_size": 8},
        "data": {"path": str(corpus_file), "text_column": "body", "span_length": 16, "seq_length": 32},
        "student": {"num_layers": 2}, "loss": {"num_negatives": 3}, "mining": {"window": 16},
        "train": {"max_steps": 2, "batch_size": 4, "log_every": 1, "checkpoint_every": 2, "warmup_steps": 1},
        "run": {"storage_path": str(storage), "name": "job"},
    }))
    done = _job(env, "submit", "--no-wait", "--address", address, "--working-dir", str(work),
                "--submission-id", "distill-ok", "--", "gemini-ray", "distill", "--config", "job.yaml",
                "train.eval_every=2")
    status = _finished(env, address, "distill-ok")
    logs = _job(env, "logs", "--address", address, "distill-ok").stdout
    assert "SUCCEEDED" in status.upper(), done.stdout[-2000:] + done.stderr[-2000:] + status + logs[-4000:]
    summary = json.loads((storage / "job" / "summary.json").read_text())
    assert summary["training"]["steps"] == 2
    assert (storage / "job" / "student" / "config.json").is_file()

    # bad input: the working directory lacks the config the job names -> FAILED, and the log says why
    _job(env, "submit", "--no-wait", "--address", address, "--working-dir", str(work), "--submission-id",
         "distill-bad", "--", "gemini-ray", "distill", "--config", "missing.yaml")
    assert "FAILED" in _finished(env, address, "distill-bad").upper()
    logs = _job(env, "logs", "--address", address, "distill-bad").stdout
    assert "config file 'missing.yaml' does not exist" in logs
