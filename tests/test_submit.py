"""clusters/submit.py, the script `ray submit` runs on a launcher cluster's head node, run here as a plain
script: it finds the installed checkout, joins the running Ray (here the test session's, as `ray start`'s
would be found on a head) and runs the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBMIT = ROOT / "clusters" / "submit.py"


@pytest.mark.ray
def test_submit_runs_a_distill_on_the_tiny_model(ray_start_2_cpus, llama_dir, corpus_file, tmp_path):
    import ray

    from helpers import tiny_overrides

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    done = subprocess.run([sys.executable, str(SUBMIT), "distill",
                           *tiny_overrides(llama_dir, corpus_file, tmp_path, "submitted", 2)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "submitted" / "student" / "config.json").is_file()
    assert "[gemini-ray] student:" in done.stdout


def test_submit_without_arguments_prints_its_usage_and_fails():
    done = subprocess.run([sys.executable, str(SUBMIT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "ray submit clusters/aws.yaml clusters/submit.py distill --config configs/cluster-1.7b.yaml" in done.stdout
    assert subprocess.run([sys.executable, str(SUBMIT), "--help"], capture_output=True, text=True,
                          timeout=120).returncode == 0
