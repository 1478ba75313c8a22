"""Safe defaults: no pickle anywhere near model weights, remote code off unless asked (and said when on).
(Cluster files: token auth on, dashboard on loopback, no credentials — tests/test_clusters.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from gemini_ray.config import Config
from gemini_ray.models.checkpoint import save_checkpoint, student_from_hf_config
from gemini_ray.models.export import export_student

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "gemini_ray").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"),
                  *(ROOT / "experiments").rglob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_no_pickle_in_the_code(path):
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"^\s*(import|from)\s+(pickle|cloudpickle|dill)\b", text, re.M), "pickle imported"
    assert "torch.save(" not in text, "torch.save pickles: use safetensors"
    for call in re.findall(r"torch\.load\([^)]*\)", text):
        assert "weights_only=True" in call, call


def test_checkpoints_and_exports_hold_only_safetensors_and_json(llama_dir, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(llama_dir).to_dict()
    model = student_from_hf_config(config, "causal")
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "ckpt", model, optimizer, {"step": 1, "kind": "causal", "hf_config": config})
    export_student(tmp_path / "ckpt", tmp_path / "student", str(llama_dir))
    for path in [*(tmp_path / "ckpt").iterdir(), *(tmp_path / "student").iterdir()]:
        assert path.suffix in (".safetensors", ".json", ".jinja", ".txt", ".model"), path.name
        if path.suffix == ".safetensors":
            assert path.read_bytes()[8:9] == b"{"  # a JSON header, not a pickle


def test_remote_code_is_off_by_default_and_announced_when_on(llama_dir, capsys):
    from gemini_ray.models.build import load_teacher

    assert Config().teacher.trust_remote_code is False
    load_teacher(str(llama_dir), "auto", trust_remote_code=False)
    assert "trust_remote_code" not in capsys.readouterr().out
    load_teacher(str(llama_dir), "auto", trust_remote_code=True)
    assert "WARNING: trust_remote_code is ON" in capsys.readouterr().out
