"""End to end through Ray Data and Ray Train on tiny models: train, resume, export, and bad input."""

import json
import subprocess
import sys

import pytest

from gemini_ray.cli import main
from gemini_ray.config import load_config
from gemini_ray.distill import distill
from gemini_ray.errors import GeminiRayError

pytestmark = pytest.mark.ray


def tiny_overrides(teacher_dir, corpus, storage, name, steps):
    return [f"teacher.model={teacher_dir}", "teacher.top_k=8", "teacher.batch_size=8",
            f"data.path={corpus}", "data.text_column=body", "data.span_length=16",
            "student.num_layers=2", "loss.num_negatives=3", "mining.window=16",
            f"train.max_steps={steps}", "train.batch_size=4", "train.log_every=2", "train.checkpoint_every=2",
            "train.warmup_steps=1", f"run.storage_path={storage}", f"run.name={name}"]


def test_distill_trains_resumes_and_exports(ray_start_2_cpus, llama_dir, corpus_file, tmp_path, capsys):
    args = tiny_overrides(llama_dir, corpus_file, tmp_path, "tiny", 4)
    assert main(["distill", *args]) == 0
    out = capsys.readouterr().out
    assert "step     2/4" in out and "kd " in out and "cl " in out  # loss parts shown while training
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert summary["training"]["steps"] == 4 and summary["training"]["resumed_from_steps"] == []
    assert summary["student"]["parameters"] < summary["teacher"]["parameters"]
    assert summary["corpus"]["examples"] > 0 and summary["training"]["examples"] == 16
    assert summary["training"]["teacher_tokens"] > 0
    assert {"loss/total", "loss/kd", "loss/cl"} <= set(summary["training"]["last"])

    # same name + storage path: resumes from step 4 and continues to 6
    args = tiny_overrides(llama_dir, corpus_file, tmp_path, "tiny", 6)
    assert main(["distill", *args]) == 0
    out = capsys.readouterr().out
    assert "resuming from checkpoint at step 4" in out
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert summary["training"]["steps"] == 6 and summary["training"]["resumed_from_steps"] == [4]
    assert [h["step"] for h in summary["training"]["history"]] == [2, 4, 6]

    # the export loads with transformers alone (no gemini_ray import) and generates
    code = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer; "
            f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'tiny' / 'student')!r}); "
            f"t = AutoTokenizer.from_pretrained({str(tmp_path / 'tiny' / 'student')!r}); "
            "ids = t('the government said', return_tensors='pt').input_ids; "
            "print(m.config.num_hidden_layers, m(ids).logits.shape[-1]); "
            "assert 'gemini_ray' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", str(summary["teacher"]["vocab_size"])]


def test_distill_masked_teacher(ray_start_2_cpus, bert_dir, corpus_file, tmp_path):
    cfg = load_config(None, tiny_overrides(bert_dir, corpus_file, tmp_path, "bert", 2))
    summary = distill(cfg)
    assert summary["teacher"]["kind"] == "masked" and summary["training"]["steps"] == 2
    from transformers import AutoModelForMaskedLM

    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "bert" / "student").config.num_hidden_layers == 2


@pytest.mark.parametrize("extra, message", [
    (["data.path={missing}"], "does not exist"),
    (["data.path={empty}"], "is empty"),
    (["data.path={short}", "data.text_column=text"], "long enough"),
    (["loss.num_negatives=500"], "loss.num_negatives=500"),
    (["teacher.top_k=100000"], "exceeds the teacher's vocabulary"),
    (["data.text_column=missing"], "data.text_column 'missing'"),
    (["train.batch_size=100000"], "fewer than one step"),
])
def test_bad_input_is_refused_before_training(ray_start_2_cpus, llama_dir, corpus_file, tmp_path, extra, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.jsonl").write_text('{"text": "a few words"}\n{"text": "and some more"}\n')
    paths = {"missing": tmp_path / "nope.txt", "empty": tmp_path / "empty.txt", "short": tmp_path / "short.jsonl"}
    args = tiny_overrides(llama_dir, corpus_file, tmp_path, "bad", 2) + [e.format(**paths) for e in extra]
    with pytest.raises(GeminiRayError, match=message.replace("(", r"\(").replace(".", r"\.")):
        distill(load_config(None, args))
    assert not (tmp_path / "bad" / "student").exists() and not (tmp_path / "bad" / "summary.json").exists()


def test_missing_teacher_exits_nonzero_with_message(llama_dir, corpus_file, tmp_path, capsys):
    args = tiny_overrides(tmp_path / "no-teacher", corpus_file, tmp_path, "x", 2)
    assert main(["distill", *args]) == 2
    err = capsys.readouterr().err
    assert "teacher.model" in err and "does not exist" in err and "Traceback" not in err
