"""What a search space may search: the student, the loss and the run, each trial starting from the student
distill would build for its config; never the teacher signal, which every trial reads from one cache.

    python -m pytest tests/test_tune_space.py -m "not ray"     # the refusal and the trial's student, no Ray
"""

import json
from pathlib import Path

import pandas as pd
import pytest
from safetensors import safe_open

from gemini_ray.config import build_config
from gemini_ray.errors import ConfigError, GeminiRayError
from gemini_ray.jobs.search import SIGNAL_SECTIONS, search_config, validate_space


def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text("loss.lambda_kd: {uniform: [0.2, 0.8]}\n" + text)
    return path


# --------------------------------------------------------------------------- the refusal (no Ray)


REFUSED = [
    "teacher.top_k: {choice: [8, 16]}",
    "teacher.dtype: {choice: [fp32, bf16]}",  # not in the cache key, but changes what the teacher says
    "data.span_length: {choice: [16, 32]}",
    "data.path: {choice: [embedded:lee_background, embedded:wikipedia]}",
    "data.max_document_chars: {choice: [2000, 1000000]}",  # which documents are read: which rows exist
    "data.val_fraction: {uniform: [0.05, 0.2]}",
    "mining.window: {choice: [32, 128]}",
    "label.max_negatives: {choice: [4, 8]}",
    "label.scope: {choice: [run]}",  # one value: still a searched key (the base config's trial has another)
]


@pytest.mark.parametrize("line", REFUSED, ids=[line.split(":", 1)[0] for line in REFUSED])
def test_a_searched_key_of_the_teacher_signal_is_refused(tmp_path, line):
    key, path = line.split(":", 1)[0], _space(tmp_path, line + "\n")
    cfg, space = search_config(None, [f"tune.space={path}"])
    with pytest.raises(ConfigError, match=rf"searches {key}: these set the teacher signal.* Run one search per "
                                          r"value, each with its own 'gemini-ray label'"):
        validate_space(cfg, space, cfg.label.max_negatives)


def test_every_refused_key_is_named_in_one_message(tmp_path):
    path = _space(tmp_path, "teacher.top_k: {choice: [8, 16]}\nstudent.num_layers: {grid: [1, 2]}\n"
                            "mining.seed: {randint: [0, 3]}\n")
    cfg, space = search_config(None, [f"tune.space={path}"])
    with pytest.raises(ConfigError, match="searches teacher.top_k, mining.seed: these"):
        validate_space(cfg, space, None)


def test_the_refused_sections_are_the_ones_the_cache_identity_reads():
    """Every section cache_identity reads a key of is refused (a new cache input in another section must be
    added to SIGNAL_SECTIONS, or a search would ignore it)."""
    import inspect

    from gemini_ray.data.cache import cache_identity

    source = inspect.getsource(cache_identity)
    read = {section for section in ("teacher", "student", "data", "mining", "label", "loss", "train", "run", "tune",
                                    "eval") if f"cfg.{section}." in source}
    assert read and read <= set(SIGNAL_SECTIONS)
    assert not {"student", "loss", "train"} & set(SIGNAL_SECTIONS)


def test_student_loss_and_train_keys_and_fixed_signal_keys_are_accepted(tmp_path):
    path = _space(tmp_path, "student.num_layers: {grid: [1, 2]}\nstudent.layers: {choice: [first, spread]}\n"
                            "loss.cl_temperature: {loguniform: [0.02, 0.2]}\ntrain.lr: {loguniform: [1.0e-4, 1.0e-3]}\n"
                            "train.seed: {choice: [0, 1]}\n"
                            # fixed: the base config's, which the one cache is labelled for
                            "label.max_negatives: 16\ndata.span_length: 16\nteacher.top_k: 8\nmining.window: 64\n")
    cfg, space = search_config(None, [f"tune.space={path}"])
    validate_space(cfg, space, cfg.label.max_negatives)
    assert (cfg.label.max_negatives, cfg.data.span_length, cfg.teacher.top_k, cfg.mining.window) == (16, 16, 8, 64)


def test_tune_refuses_the_space_before_ray_or_the_teacher(tmp_path, monkeypatch):
    from gemini_ray.commands import tune as tune_command

    def no_session(cfg):
        raise AssertionError("the space must be refused before the session starts")

    monkeypatch.setattr(tune_command, "start_session", no_session)
    path = _space(tmp_path, "data.span_length: {choice: [16, 32]}\n")
    cfg, space = search_config(None, [f"tune.space={path}", f"run.storage_path={tmp_path / 'runs'}"])
    with pytest.raises(ConfigError, match="searches data.span_length"):
        tune_command.tune(cfg, space)
    assert not (tmp_path / "runs").exists()  # the trial folder's lock is taken, then removed with the folder


# --------------------------------------------------------------------------- the trial's student (no Ray)


@pytest.fixture(scope="module")
def session(llama_dir):
    from gemini_ray.cluster.session import Session
    from gemini_ray.config import TeacherConfig
    from gemini_ray.models.build import load_tokenizer, teacher_meta

    return Session(teacher=teacher_meta(TeacherConfig(model=str(llama_dir))), tokenizer=load_tokenizer(str(llama_dir)),
                   identity={})


def _layers(model) -> int:
    return model.config.num_hidden_layers


def test_a_trial_starts_from_the_student_distill_builds_for_its_config(session, llama_dir, tmp_path):
    import torch

    from gemini_ray.commands.tune import _trial_student
    from gemini_ray.jobs.student import make_student

    base = build_config(None, [f"teacher.model={llama_dir}", "student.num_layers=2"])
    built = make_student(base, session)

    def trial(sample):
        return _trial_student(build_config(base=base, sample=sample), base, session, built)

    assert trial({"loss.lambda_kd": 0.3}) is built  # nothing it is built from changed: the driver's
    deeper = trial({"student.num_layers": 3})
    assert _layers(deeper) == 3 and _layers(built) == 2
    reseeded = trial({"student.init": "random", "train.seed": 1})
    again = make_student(build_config(base=base, sample={"student.init": "random", "train.seed": 1}), session)
    assert all(torch.equal(a, b) for a, b in zip(reseeded.state_dict().values(), again.state_dict().values()))

    # student.from_pretrained: loaded, as distill loads it
    from helpers import save, tiny_llama

    one_layer = save(tiny_llama(session.tokenizer, layers=1), session.tokenizer, tmp_path / "pretrained")
    assert _layers(trial({"student.from_pretrained": str(one_layer)})) == 1

    # distill's refusals hold for a trial too, whether it builds its own student or takes the driver's
    narrow = session.teacher_config.hidden_size // 2
    with pytest.raises(GeminiRayError, match=f"student is {narrow} wide and the teacher {2 * narrow}"):
        trial({"student.init": "random", "student.hidden_size": narrow, "loss.rep_form": "cosine"})
    narrow_base = build_config(base=base, sample={"student.init": "random", "student.hidden_size": narrow})
    narrow_built = make_student(narrow_base, session)
    with pytest.raises(GeminiRayError, match="compares the student's span embeddings"):
        _trial_student(build_config(base=narrow_base, sample={"loss.rep_form": "cosine"}), narrow_base, session,
                       narrow_built)


# --------------------------------------------------------------------------- a search over the student's depth


def tiny(teacher_dir, corpus, storage, *extra):
    """The tiny settings of test_cache_tune, `extra` overrides replacing them."""
    base = [f"teacher.model={teacher_dir}", "teacher.top_k=8", "teacher.batch_size=16", f"data.path={corpus}",
            "data.text_column=body", "data.span_length=16", "data.seq_length=32", "data.val_fraction=0.2", "student.num_layers=2",
            "loss.num_negatives=2", "label.max_negatives=4", "mining.window=64", "label.block_mb=0.01",
            "data.max_val_examples=16",
            "label.scope=run", "train.batch_size=4", "train.max_steps=2", "train.log_every=2", "train.eval_every=2",
            "train.checkpoint_every=2", "train.warmup_steps=1", f"run.storage_path={storage}"]
    given = {e.split("=", 1)[0] for e in extra}
    return [b for b in base if b.split("=", 1)[0] not in given] + list(extra)


@pytest.mark.ray
def test_a_search_over_the_students_depth_trains_students_of_that_depth(ray_start_2_cpus, llama_dir, corpus_file,
                                                                       tmp_path):
    from gemini_ray.commands.tune import tune
    from gemini_ray.models.checkpoint import latest_whole_checkpoint

    space = tmp_path / "depth.yaml"
    space.write_text("student.num_layers: {grid: [1, 2]}\n")
    result = tune(*search_config(None, tiny(llama_dir, corpus_file, tmp_path, f"tune.space={space}",
                                            "tune.num_samples=1", "tune.try_base_config=false",
                                            "tune.max_concurrent_trials=1")))
    assert result["trials"] == 2 and result["errored"] == 0
    assert result["teacher_tokens_during_search"] == 0
    table = pd.read_csv(result["results"]).set_index("config/student.num_layers")
    assert sorted(table.index) == [1, 2]
    for layers, row in table.iterrows():
        # what the trial trained: its checkpoint's student config and weights
        checkpoint, step = latest_whole_checkpoint(tmp_path / "tune-trials" / f"trial-{row['trial_id']}")
        state = json.loads((checkpoint / "state.json").read_text())
        assert step == 2 and state["hf_config"]["num_hidden_layers"] == layers
        with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as f:
            trained = {k.split(".")[2] for k in f.keys() if k.startswith("model.layers.")}
        assert trained == {str(i) for i in range(layers)}
    assert table.loc[1, "student_parameters"] < table.loc[2, "student_parameters"]
    best = table[table["trial_id"] == result["best"]["trial_id"]]
    assert result["student_parameters"] == best["student_parameters"].item()
    assert build_config(result["best_config"]).student.num_layers == best.index.item()
