"""Multi-node placement on one machine: a head, a teacher node and a trainer node (ray.cluster_utils.Cluster),
driven by benchmarks/simulated_cluster.py in its own process (this session's Ray instance stays as it is)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "simulated_cluster.py"


@pytest.mark.long
def test_teachers_on_teacher_node_and_two_ddp_workers_on_trainer_node(llama_dir, corpus_file, tmp_path):
    overrides = [f"teacher.model={llama_dir}", "teacher.top_k=8", "teacher.batch_size=8", f"data.path={corpus_file}",
                 "data.text_column=body", "data.span_length=16", "data.seq_length=32", "student.num_layers=2", "loss.num_negatives=3",
                 "mining.window=16", "train.max_steps=2", "train.log_every=1", "train.eval_every=2",
                 "train.checkpoint_every=2", "train.warmup_steps=1"]
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), *overrides],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result = json.loads((tmp_path / "simulated_cluster.json").read_text())
    assert result["placement"]["teacher actor"] and set(result["placement"]["teacher actor"]) == {"teacher"}
    assert result["placement"]["Train worker"] == ["trainer", "trainer"]  # two DDP ranks, both on the trainer node
    assert result["steps"] == 2 and result["workers"] == 2
    assert (Path(result["student"]) / "config.json").is_file()
    assert {"label_and_train_s", "export_s", "total_s"} <= set(result["stage_s"])
