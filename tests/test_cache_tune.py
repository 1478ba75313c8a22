"""The teacher-signal cache (keys, resume, truncation) and the Ray Tune search on tiny models."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gemini_ray.config import build_config, config_to_dict
from gemini_ray.data.cache import CACHE_VERSION, cache_key, check_compatible
from gemini_ray.errors import ConfigError, GeminiRayError
from gemini_ray.jobs.search import load_space, search_config, validate_space
from helpers import Killer

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted([*(ROOT / "tune_spaces").glob("*.yaml"), *(ROOT / "experiments" / "tune_spaces").glob("*.yaml")])

IDENTITY = {"teacher_weights": "aa", "tokenizer_vocab": "bb", "corpus": "cc", "seq_length": 128, "span_length": 32,
            "masked": False,
            "mlm_probability": None, "data_seed": 0, "val_fraction": 0.05, "top_k": 16, "max_negatives": 8,
            "mining_window": 128, "mining_seed": 0, "block_bytes": 4 << 20}


def test_cache_key_is_stable_and_changes_with_every_input():
    assert cache_key(dict(IDENTITY)) == cache_key(dict(reversed(list(IDENTITY.items()))))
    for key, other in [("teacher_weights", "zz"), ("tokenizer_vocab", "zz"), ("corpus", "zz"), ("top_k", 8),
                       ("span_length", 64), ("seq_length", 32), ("max_negatives", 16), ("mining_window", 64), ("block_bytes", 1 << 20)]:
        assert cache_key({**IDENTITY, key: other}) != cache_key(IDENTITY), key


def test_cache_from_another_teacher_or_corpus_or_format_is_refused():
    manifest = {"version": CACHE_VERSION, "identity": IDENTITY}
    check_compatible(manifest, dict(IDENTITY), "somewhere")
    with pytest.raises(GeminiRayError, match="different teacher"):
        check_compatible(manifest, {**IDENTITY, "teacher_weights": "other"}, "somewhere")
    with pytest.raises(GeminiRayError, match="different tokenizer"):
        check_compatible(manifest, {**IDENTITY, "tokenizer_vocab": "other"}, "somewhere")
    with pytest.raises(GeminiRayError, match="different corpus"):
        check_compatible(manifest, {**IDENTITY, "corpus": "other"}, "somewhere")
    with pytest.raises(GeminiRayError, match="in format 4; this gemini-ray reads format 5. Run 'gemini-ray label'"):
        check_compatible({**manifest, "version": 4}, dict(IDENTITY), "somewhere")  # rows of spans, not windows
    with pytest.raises(GeminiRayError, match="made with seq_length=32, the config says 128"):
        check_compatible({**manifest, "identity": {**IDENTITY, "seq_length": 32}}, dict(IDENTITY), "somewhere")


def test_a_run_scoped_cache_takes_the_first_shards_that_hold_the_run():
    from gemini_ray.data.cache import cached_train_rows, first_shards, rows_a_run_reads

    rows = {0: 10, 1: 12, 2: 9, 3: 11}
    assert rows_a_run_reads(3, 4) == 16  # three steps of 4 and a step of slack
    assert first_shards(rows, [3, 1, 0, 2], 16) == [0, 1]  # ascending: the order a first pass reads
    assert first_shards(rows, [0, 1, 2, 3], 22) == [0, 1] and first_shards(rows, [0, 1, 2, 3], 23) == [0, 1, 2]
    assert first_shards(rows, [0, 1, 2, 3], 1000) == [0, 1, 2, 3]
    manifest = {"expected_rows": {str(k): v for k, v in rows.items()}, "shards_train": [0, 1]}
    assert cached_train_rows({**manifest, "whole": False}) == (22, False)
    assert cached_train_rows(manifest) == (22, True)  # a cache made before label.scope: the whole corpus


def test_a_search_labels_for_its_longest_trial(tmp_path):
    from gemini_ray.jobs.search import rows_longest_trial

    space = tmp_path / "space.yaml"
    space.write_text("loss.lambda_kd: {uniform: [0.2, 0.8]}\ntrain.max_steps: {choice: [10, 30]}\n"
                     "train.batch_size: {randint: [2, 9]}\n")
    cfg, loaded = search_config(None, [f"tune.space={space}"])
    assert rows_longest_trial(cfg, loaded) == 31 * 8  # randint's upper bound is excluded
    space.write_text("loss.lambda_kd: {uniform: [0.2, 0.8]}\ntrain.max_steps: 12\n")
    cfg, loaded = search_config(None, [f"tune.space={space}", "train.batch_size=4"])
    assert rows_longest_trial(cfg, loaded) == 13 * 4


def test_a_search_ranked_by_teacher_agreement_refuses_a_held_out_set_too_small_to_score():
    from gemini_ray.commands.tune import check_agreement_rows

    agreement = build_config(None, ["tune.objective_embedding=teacher_agreement"])
    with pytest.raises(GeminiRayError, match="needs at least 2 held-out examples .* this corpus has 1; raise "
                                             "data.val_fraction"):
        check_agreement_rows(agreement, 1)
    with pytest.raises(GeminiRayError, match="has 0"):
        check_agreement_rows(build_config(None, ["tune.metric=val/teacher_agreement"]), 0)
    check_agreement_rows(agreement, 2)  # 4 spans: 6 pairs, a defined Spearman
    check_agreement_rows(build_config(None, []), 1)  # retrieval is defined on one row


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_every_tune_space_loads_with_real_keys(path):
    cfg, space = search_config(None, [f"tune.space={path}"])
    assert {"loss.lambda_kd", "loss.cl_temperature", "loss.num_negatives"} <= set(space.search)
    loaded = config_to_dict(cfg)
    assert {k: loaded[k.split(".")[0]][k.split(".")[1]] for k in space.fixed} == space.fixed  # the fixed values apply
    validate_space(cfg, space, cfg.label.max_negatives)


@pytest.mark.parametrize("text, message", [
    ("loss.lamda_kd: {uniform: [0.1, 0.9]}\n", "not a config key.*loss.lambda_kd"),
    ("loss.lambda_kd: {uniform: [0.5, 1.5]}\n", "loss.lambda_kd=1.5 is invalid"),
    ("loss.cl_temperature: {uniform: [0.0, 0.1]}\n", "loss.cl_temperature=0.0 is invalid"),
    ("loss.cl_temperature: {loguniform: [0.0, 0.1]}\n", "needs low > 0"),
    ("loss.num_negatives: {choice: [2, 32]}\n", "exceeds K_max=8"),
    ("loss.lambda_kd: {uniform: [0.9, 0.1]}\n", "low < high"),
    ("loss.lambda_kd: {normal: [0.5, 0.1]}\n", "must be one of"),
    ("train.max_steps: 10\n", "searches no key"),
])
def test_bad_search_spaces_are_refused(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        validate_space(build_config(), load_space(path), 8)


def test_a_seeded_search_draws_the_same_trials_and_can_try_the_base_config_first():
    from ray.tune.experiment import Experiment

    from gemini_ray.commands.tune import sampler
    from gemini_ray.jobs.search import tune_distributions

    space = load_space(ROOT / "experiments" / "tune_spaces" / "demo_search.yaml")

    def draws(seed: str, *extra: str) -> list[dict]:
        cfg = build_config(None, [f"tune.seed={seed}", "tune.try_base_config=false", *extra])
        alg = sampler(cfg, space, concurrent=4)
        alg.add_configurations([Experiment("draws", lambda c: None, config=tune_distributions(space), num_samples=4)])
        trials = iter(alg.next_trial, None)  # no more than the 4 that may run at once
        return [dict(trial.config) for trial in trials]

    first = draws("0")
    assert len(first) == 4 and len({t["loss.lambda_kd"] for t in first}) == 4
    assert draws("0") == first
    assert draws("1") != first
    assert draws("null") != draws("null")

    # the config's own values first, then the same seeded draws
    with_base = draws("0", "tune.try_base_config=true", "loss.lambda_kd=0.45", "loss.num_negatives=2")
    assert with_base[0] == {"loss.lambda_kd": 0.45, "loss.cl_temperature": 0.05, "loss.num_negatives": 2,
                            "loss.balance": "none", "train.lr": 3e-4}
    assert with_base[1:] == first[:3]


def test_a_trial_reads_the_cache_in_order_as_distill_does():
    """A Tune trial is a process of its own whose Ray Data context starts from Ray's defaults (order not
    preserved): without this, a trial and `distill --config best_config.yaml` trained on other batches
    (held-out objective 0.732 against 0.703 for the same config on the demo). Measured after the fix: the
    trial's losses equal distill's at every report."""
    import inspect

    import ray.data

    from gemini_ray.cluster.session import configure_data_context
    from gemini_ray.commands import tune

    previous = ray.data.DataContext.get_current()
    try:
        ray.data.DataContext._set_current(ray.data.DataContext())
        assert not ray.data.DataContext.get_current().execution_options.preserve_order  # Ray's default
        configure_data_context()
        ctx = ray.data.DataContext.get_current()
        assert ctx.execution_options.preserve_order and not ctx.enable_progress_bars
    finally:
        ray.data.DataContext._set_current(previous)
    assert "configure_data_context()" in inspect.getsource(tune._trial)


# --------------------------------------------------------------------------- with Ray


def tiny(teacher_dir, corpus, storage, *extra):
    """The tiny settings, `extra` overrides replacing them (the CLI refuses a key given twice)."""
    base = [f"teacher.model={teacher_dir}", "teacher.top_k=8", "teacher.batch_size=16", f"data.path={corpus}",
            "data.text_column=body", "data.span_length=16", "data.seq_length=32", "data.val_fraction=0.2", "student.num_layers=2",
            "loss.num_negatives=2", "label.max_negatives=4", "mining.window=64", "label.block_mb=0.01",
            "data.max_val_examples=8",
            "train.batch_size=4", "train.log_every=2", "train.eval_every=2", "train.checkpoint_every=4",
            "train.warmup_steps=1", f"run.storage_path={storage}"]
    given = {e.split("=", 1)[0] for e in extra}
    return [b for b in base if b.split("=", 1)[0] not in given] + list(extra)


def read_rows(directory: Path, name: str = "shard-*.parquet") -> dict[str, np.ndarray]:
    """Every row of a cache (or of the shards named) as numpy columns, sorted by example id."""
    import ray.data

    files = [str(p) for p in sorted(directory.glob(name))]
    batch = ray.data.read_parquet(files).take_batch(batch_size=1_000_000, batch_format="numpy")
    order = np.argsort(batch["example_id"], kind="stable")
    return {k: np.asarray(v)[order] for k, v in batch.items()}


def assert_same_rows(a: dict, b: dict) -> None:
    assert np.array_equal(a["example_id"], b["example_id"])
    for col in ("input_ids", "topk_ids", "neg_input_ids", "neg_mask", "label_mask", "shard"):
        assert np.array_equal(a[col], b[col]), col
    assert np.allclose(a["topk_logits"], b["topk_logits"], atol=1e-4)


@pytest.fixture(scope="module")
def uninterrupted(ray_start_2_cpus, llama_dir, corpus_file, tmp_path_factory):
    from gemini_ray.commands.label import label

    storage = tmp_path_factory.mktemp("cache-b")
    manifest = label(build_config(None, tiny(llama_dir, corpus_file, storage)))
    directory = next((storage / "signal_cache").iterdir())
    return storage, directory, manifest


@pytest.mark.ray
def test_label_writes_one_teacher_pass(uninterrupted, llama_dir, lee_texts):
    from gemini_ray.data.corpus_pass import is_val_doc
    from gemini_ray.data.spans import STATUS_OK, SpanPairer, text_hash

    _, directory, manifest = uninterrupted
    assert manifest["complete"] and (directory / "manifest.json").is_file()
    pairs = SpanPairer(str(llama_dir), "causal", 16, seq_length=32)({"text": np.array(lee_texts, dtype=object)})
    ok = pairs["status"] == STATUS_OK
    train = ok & ~is_val_doc(pairs["doc_id"], 0.2)
    rows = read_rows(directory)
    val = rows["split"] == "val"
    # every training example, and the held-out examples of the first blocks: enough for the 8 scored
    assert manifest["rows"] == len(rows["example_id"]) == train.sum() + val.sum()
    assert 8 <= val.sum() < (ok & ~train).sum() and manifest["val_rows"] == 8
    assert len(np.unique(rows["example_id"])) == manifest["rows"]  # no loss, no dup
    assert set(rows["example_id"][~val]) == set(pairs["example_id"][train])
    # every labelled token went through the teacher exactly once
    assert manifest["teacher_tokens"] == manifest["teacher_tokens_this_run"] == rows["attention_mask"].sum()
    val_shards = set(manifest["shards_val"])
    assert val_shards and all(is_val_doc(np.array([d]), 0.2)[0] == (s in val_shards)
                              for d, s in zip(rows["doc_id"], rows["shard"]))
    assert {text_hash(t) for t in lee_texts} >= set(rows["doc_id"].tolist())
    assert rows["neg_input_ids"].shape[1:] == (4, 16)  # K_max negatives per row


@pytest.mark.ray
def test_a_cache_labelled_for_one_run_reads_as_the_whole_one_and_grows_for_a_longer_run(uninterrupted, llama_dir,
                                                                                       corpus_file, tmp_path):
    """label.scope=run labels only the first blocks of the corpus (in corpus order, the order a first pass
    reads their shards) that hold the run and the held-out rows: the run's stream is the whole cache's first
    rows, row for row. A longer run is refused under label.use=require and passed over under auto; labelling
    for it adds the blocks it lacks and keeps those done."""
    from gemini_ray.cluster.session import configure_data_context, start_session
    from gemini_ray.commands.label import label
    from gemini_ray.data.cache import find_cache, rows_a_run_reads
    from gemini_ray.data.pipeline import read_cache, read_held_out

    _, whole_dir, whole = uninterrupted
    n = whole["blocks"]["count"]
    assert n >= 4 and whole["whole"] and whole["shards_train"] == list(range(n))
    short = build_config(None, tiny(llama_dir, corpus_file, tmp_path, "label.scope=run", "train.max_steps=1"))
    made = label(short)
    directory = next((tmp_path / "signal_cache").iterdir())
    assert directory.name == whole_dir.name  # the scope is not an input of the signal: the same cache key
    first = made["shards_train"]
    assert first == list(range(len(first))) and len(first) < n and not made["whole"]
    assert made["rows"] - made["val_rows"] <= sum(whole["expected_rows"][str(s)] for s in first) + made["val_rows"]
    assert sum(made["expected_rows"][str(s)] for s in first) >= rows_a_run_reads(1, 4)
    assert made["val_rows"] == whole["val_rows"] == 8  # the held-out rows: the first 8 in corpus order
    assert made["shards_val"] == whole["shards_val"][:len(made["shards_val"])]
    assert made["teacher_tokens_this_run"] < whole["teacher_tokens"]
    assert {p.name for p in directory.glob("shard-*.parquet")} <= {p.name for p in whole_dir.glob("shard-*.parquet")}
    for name in {p.name for p in directory.glob("shard-*.parquet")}:  # the same rows, the same signal
        assert_same_rows(read_rows(directory, name), read_rows(whole_dir, name))
    held, whole_held = read_held_out(str(directory), made, 2), read_held_out(str(whole_dir), whole, 2)
    assert np.array_equal(held["position"], whole_held["position"]) and len(held["position"]) == 8

    configure_data_context()  # in order, as distill and every trial read it
    def stream(path, shards):
        return np.concatenate([b["input_ids"] for b in read_cache(str(path), shards, 2).iter_batches(
            batch_size=None, batch_format="numpy")])
    partial, full = stream(directory, made["shards_train"]), stream(whole_dir, whole["shards_train"])
    assert len(partial) >= rows_a_run_reads(1, 4) and np.array_equal(partial, full[:len(partial)])

    longer = tiny(llama_dir, corpus_file, tmp_path, "label.scope=run", "train.max_steps=20")  # 84 rows
    session = start_session(build_config(None, longer))
    with pytest.raises(GeminiRayError, match=r"holds the first \d+ training examples of the corpus .*this "
                                             r"run reads 84.*Run 'gemini-ray label' with this config"):
        find_cache(build_config(None, [*longer, "label.use=require"]), session.identity)
    assert find_cache(build_config(None, longer), session.identity) is None  # auto: the teacher runs online
    assert find_cache(short, session.identity) is not None
    before = {s: (directory / f"shard-{s:05d}.parquet").stat().st_mtime_ns for s in first}
    grown = label(build_config(None, longer))
    added = [s for s in grown["shards_train"] if s not in first]
    assert grown["shards_train"][:len(first)] == first and added
    assert sum(grown["expected_rows"][str(s)] for s in grown["shards_train"]) >= 84
    assert grown["teacher_tokens_this_run"] == sum(whole["shards"][str(s)]["teacher_tokens"]
                                                   + whole["shards"].get(str(n + s), {}).get("teacher_tokens", 0)
                                                   for s in added)
    assert all((directory / f"shard-{s:05d}.parquet").stat().st_mtime_ns == t for s, t in before.items())
    assert find_cache(build_config(None, [*longer, "label.use=require"]), session.identity) is not None


@pytest.mark.ray
@pytest.mark.long
def test_interrupted_label_resumes_and_redoes_truncated_shards(uninterrupted, llama_dir, corpus_file, tmp_path,
                                                                monkeypatch):
    """A label pass stopped at its first finished block, with a teacher actor killed on the way, keeps
    the blocks it finished; the next run labels only the others and a block whose shard was cut short since,
    and the cache is the uninterrupted one, row for row."""
    import gemini_ray.data.label_pass as label_pass
    from gemini_ray.commands.label import label

    real = label_pass.label_blocks
    passes: list[list[int]] = []
    killer = Killer(lambda n: True, ["CountingTeacherLabeler"])  # a teacher actor dies in the first pass

    def interrupt_after_a_block(cfg, blocks, *args):
        passes.append([b["index"] for b in blocks])
        if len(passes) == 1:
            killer.start()
        for record in real(cfg, blocks, *args):
            yield record
            if len(passes) == 1:
                raise KeyboardInterrupt("simulated Ctrl-C")

    cfg = build_config(None, tiny(llama_dir, corpus_file, tmp_path))
    monkeypatch.setattr(label_pass, "label_blocks", interrupt_after_a_block)
    with pytest.raises(KeyboardInterrupt):
        label(cfg)
    directory = next((tmp_path / "signal_cache").iterdir())
    partial = json.loads((directory / "manifest.json").read_text())
    assert not partial["complete"]
    finished = sorted(int(p.stem) for p in (directory / "blocks").glob("?????.json"))
    assert finished  # (how many depends on timing: the writer may finish more before the driver stops)
    killer.join(timeout=60)
    assert not killer.errors and len(killer.killed) == 1  # Ray Data restarted it and retried its batches

    # one shard of a finished block is cut short on disk (a copy killed half-way, say)
    victim = directory / f"shard-{finished[0]:05d}.parquet"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    kept = {i: (directory / f"shard-{i:05d}.parquet").stat().st_mtime_ns for i in finished[1:]}

    final = label(cfg)
    assert passes[1] == sorted(set(passes[0]) - set(finished[1:]))  # the truncated block and the unfinished ones
    assert all((directory / f"shard-{i:05d}.parquet").stat().st_mtime_ns == t for i, t in kept.items())
    _, b_dir, whole = uninterrupted
    assert directory.name == b_dir.name  # same inputs, same cache key
    assert_same_rows(read_rows(directory), read_rows(b_dir))  # no row lost, none twice, same values
    assert final["rows_lost"] == final["rows_duplicated"] == 0 and final["rows"] == whole["rows"]
    assert final["teacher_tokens_this_run"] < whole["teacher_tokens"]


@pytest.mark.ray
@pytest.mark.long
def test_tune_retries_a_killed_trial_and_marks_one_that_keeps_failing(uninterrupted, llama_dir, corpus_file, capsys):
    from gemini_ray.commands.tune import tune

    storage, directory, manifest = uninterrupted  # (distill reading a cache: the NaN test and test_eval's ablation)

    # two trials, one at a time: τ = 0.05 loses its trial process once (killed) and is retried from its
    # checkpoint; τ = 1e-40 overflows the contrastive logits (NaN at step 1): a deterministic failure, marked
    # failed and not retried
    space = storage / "faulty-space.yaml"
    space.write_text("loss.cl_temperature: {grid: [0.05, 1.0e-40]}\nloss.lambda_kd: {uniform: [0.2, 0.8]}\n"
                     "loss.num_negatives: {choice: [2, 4]}\n")
    trials = storage / "tune-trials"
    killer = Killer(lambda n: any((json.loads(p.read_text()) or {}).get("step", 0) >= 2
                                  for p in trials.glob("trial-*/progress.json")), ["ImplicitFunc"])
    killer.start()
    result = tune(*search_config(None, tiny(llama_dir, corpus_file, storage, f"tune.space={space}",
                                            "tune.num_samples=1", "tune.max_concurrent_trials=1", "tune.max_failures=1",
                                            "tune.try_base_config=false",
                                            "train.max_steps=4", "train.log_every=2", "train.eval_every=2",
                                            "train.checkpoint_every=2",
                                            # a floor no student passes at step 4, every student at step 2
                                            "tune.max_val_loss_kd_by_step={2: 1000.0, 4: 0.001}")))
    killer.join(timeout=10)
    assert not killer.errors and len(killer.killed) == 1
    assert result["trials"] == 2 and result["errored"] == 1 and result["retries"] == 1
    assert result["teacher_tokens_during_search"] == 0  # one teacher pass (the cache) for every trial
    assert result["teacher_tokens_in_cache"] == manifest["teacher_tokens"]
    table = pd.read_csv(result["results"]).set_index("config/loss.cl_temperature")
    assert {"config/loss.lambda_kd", "val/loss_kd", "retries", "error", "error_message"} <= set(table.columns)
    survived, failed = table.loc[0.05], table.loc[1e-40]
    assert not survived["error"] and survived["retries"] == 1 and survived["step"] == 4  # retried, finished
    assert survived["val/objective"] >= 2  # the floor of its last evaluation's step ranks it behind any under it
    assert failed["error"] and failed["retries"] == 0 and "training stopped at step 1: the contrastive loss (loss/cl) is nan" in \
        failed["error_message"]
    best = build_config(result["best_config"])
    assert best.loss.cl_temperature == 0.05 and 0.2 <= best.loss.lambda_kd <= 0.8
    assert Path(result["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Ray Tune's own event files, one directory per trial: `tensorboard --logdir <storage>/tune` shows them all
    from helpers import read_scalars

    trial_tags = [read_scalars(d) for d in (storage / "tune").iterdir() if list(d.glob("events.out.tfevents*"))]
    assert any("ray/tune/val/objective" in tags for tags in trial_tags)
    # a finished search reserves nothing: no placement group of a stopped trial is left holding CPUs (the
    # tests after this one, and a user's next command on the same cluster, would wait for them forever)
    import ray
    assert [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"] == []
    # the sweeper ran (its check of the cluster's table did not fail) and freed at most one group per trial
    # attempt (2 trials + 1 retry: each attempt's Train controller reserves one group at a time)
    removed, said = result["orphaned_placement_groups_removed"], capsys.readouterr().out
    assert "could not check for orphaned placement groups" not in said
    assert 0 <= removed <= result["trials"] + result["retries"] == 3
    assert (f"freed {removed} placement group(s)" in said) == (removed > 0)
    summary = json.loads((Path(result["results"]).parent / "tune_summary.json").read_text())
    assert summary["orphaned_placement_groups_removed"] == removed


@pytest.mark.ray
def test_cache_requirements_are_enforced(uninterrupted, llama_dir, corpus_file, tmp_path):
    from gemini_ray.commands.distill import distill

    storage, directory, _ = uninterrupted
    with pytest.raises(GeminiRayError, match="loss.num_negatives=5 exceeds the 4 negatives"):
        distill(build_config(None, tiny(llama_dir, corpus_file, storage, "loss.num_negatives=5",
                                       f"label.path={directory}")))
    with pytest.raises(GeminiRayError, match="no complete teacher-signal cache"):
        distill(build_config(None, tiny(llama_dir, corpus_file, tmp_path, "label.use=require")))


@pytest.mark.ray
def test_nan_teacher_signal_stops_training_and_exports_nothing(uninterrupted, llama_dir, corpus_file, tmp_path):
    """Fault: the teacher signal holds NaN logits (a diverged teacher) from some row on. Training stops with
    an error naming the step and the loss part; the checkpoints before it stay; nothing is exported."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from gemini_ray.cli import main
    from gemini_ray.models.checkpoint import latest_whole_checkpoint

    _, directory, manifest = uninterrupted
    manifest = json.loads(json.dumps(manifest))  # a copy: the fixture's is shared
    bad = tmp_path / "nan-cache"
    shutil.copytree(directory, bad)
    for shard in manifest["shards_train"]:  # the last quarter of every training shard: NaN teacher logits
        path = bad / f"shard-{shard:05d}.parquet"
        table = pq.read_table(path)
        column = table.column("topk_logits").combine_chunks()  # Ray's tensor type over flat lists
        storage = column.storage
        values = storage.values.to_numpy().copy()
        values[storage.offsets.to_numpy()[len(column) * 3 // 4]:] = np.nan
        nan_storage = pa.LargeListArray.from_arrays(storage.offsets, pa.array(values))
        index = table.schema.get_field_index("topk_logits")
        table = table.set_column(index, table.schema.field(index),
                                 pa.ExtensionArray.from_storage(column.type, nan_storage))
        pq.write_table(table, path)
        manifest["shards"][str(shard)]["bytes"] = path.stat().st_size  # as a diverged teacher would have written it
    (bad / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    args = tiny(llama_dir, corpus_file, tmp_path, f"label.path={bad}", "run.name=nan", "train.max_steps=200",
                "train.log_every=4", "train.eval_every=1000", "train.checkpoint_every=4")
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["distill", *args]) == 2
    message = err.getvalue()
    import re

    found = re.search(r"training stopped at step (\d+): the distillation loss \(loss/kd\) is nan", message)
    assert found and "Traceback" not in message, message
    step = int(found.group(1))
    kept = latest_whole_checkpoint(tmp_path / "nan")
    assert kept is not None and kept[1] == (step - 1) // 4 * 4 > 0  # the last good checkpoint is kept
    assert f"last good checkpoint (step {kept[1]})" in message
    assert not (tmp_path / "nan" / "student").exists() and not (tmp_path / "nan" / "summary.json").exists()


@pytest.mark.ray
@pytest.mark.long
def test_a_resume_with_more_workers_goes_on_with_the_first_rows_not_trained(uninterrupted, llama_dir, corpus_file,
                                                                            tmp_path, capsys):
    """Positions are global, not per rank: a run stopped at a checkpoint with one worker and resumed with two
    trains the rows that come next in the pass, none of the first run's again (counted from the traces),
    also when Ray Train's record of the run is unreadable. A resume with another loss is refused."""
    from gemini_ray.cli import main
    from gemini_ray.data.pipeline import read_cache

    _, directory, manifest = uninterrupted
    trace = tmp_path / "trace"
    trace.mkdir()
    args = tiny(llama_dir, corpus_file, tmp_path, f"label.path={directory}", "label.use=require", "run.name=grow",
                "train.checkpoint_every=4", "train.eval_every=100", f"train.trace_positions={trace}")
    assert main(["distill", *args, "train.num_workers=1", "train.max_steps=4"]) == 0
    first = [int(p) for line in (trace / "rank0.txt").read_text().splitlines() for p in line.split()[2:]]
    (trace / "rank0.txt").unlink()
    # and Ray Train's own record of the run cut short (a kill during its write): the workers then load the
    # newest whole checkpoint themselves (Ray Train V2 refuses a checkpoint handed to the trainer)
    record = tmp_path / "grow" / "checkpoint_manager_snapshot.json"
    record.write_text(record.read_text()[:40])
    assert main(["distill", *args, "train.num_workers=2", "train.max_steps=6"]) == 0
    second = [int(p) for rank in (0, 1) for line in (trace / f"rank{rank}.txt").read_text().splitlines()
              for p in line.split()[2:]]

    assert len(first) == 4 * 4 and len(second) == 2 * 2 * 4  # steps x batch_size (x workers)
    assert len(set(first) | set(second)) == len(first) + len(second)  # nothing trained twice
    # the pass in its order: one worker trained its first rows; two workers went on after them
    stream = np.concatenate([b["position"] for b in read_cache(str(directory), manifest["shards_train"], 2)
                             .iter_batches(batch_size=None, batch_format="numpy")])
    assert first == stream[:16].tolist() and set(second) <= set(stream[16:].tolist())
    summary = json.loads((tmp_path / "grow" / "summary.json").read_text())
    (event,) = summary["training"]["resumes"]
    assert event["cause"] == "driver_restart" and event["step"] == 4
    assert event["examples_skipped"] == 16 and event["examples_repeated"] == 0
    assert summary["training"]["steps"] == 6 and summary["training"]["examples"] == 16 + 16
    # the held-out windows' next tokens against the cache's top-k, at the start and the end (32-token windows:
    # one position range)
    lm = summary["held_out_lm"]
    assert lm["window"] == 32 and list(lm["last"]["by_position"]) == ["1-31"]
    assert lm["last"]["by_position"]["1-31"]["perplexity"] == pytest.approx(lm["last"]["perplexity"])
    assert 0 <= lm["last"]["teacher_top1_agreement"] <= 1 and lm["last"]["kl_to_teacher"] >= 0
    # another λ on the same run.name would finish this run's checkpoints under another loss: refused
    capsys.readouterr()
    assert main(["distill", *args, "train.max_steps=8", "loss.lambda_kd=0.9"]) == 2
    assert "loss.lambda_kd: 0.5 then, 0.9 now" in capsys.readouterr().err
    assert json.loads((tmp_path / "grow" / "summary.json").read_text())["training"]["steps"] == 6


@pytest.mark.ray
def test_a_cache_shard_left_unread_does_not_move_the_other_rows(uninterrupted):
    """Cache positions are (shard, row in its file): leaving a consumed shard out of the stream (a resumed run
    that ends within its pass) leaves every other row's position as it was."""
    from gemini_ray.data.pipeline import read_cache

    _, directory, manifest = uninterrupted
    shards = manifest["shards_train"]

    def positions(consumed=frozenset()):
        return np.concatenate([b["position"] for b in read_cache(str(directory), shards, 2, consumed=consumed)
                               .iter_batches(batch_size=None, batch_format="numpy")])

    every, without_first = positions(), positions(frozenset({shards[0]}))
    shard_of = every >> 32
    assert sorted(set(shard_of.tolist())) == sorted(shards)
    assert len(every) == sum(manifest["expected_rows"][str(s)] for s in shards)
    assert np.array_equal(np.sort(without_first), np.sort(every[shard_of != shards[0]]))


@pytest.mark.ray
def test_each_pass_reads_the_cache_shards_in_its_own_seeded_order(uninterrupted):
    """The trainer's pass (told to the StreamPlan) picks the order the one stream reads its shards in: ascending
    on the first pass, a seeded permutation on each later one (the same when read again: a resumed pass
    sees the order it had), every row once per pass; a consumed shard left out keeps the others' order."""
    import ray

    from gemini_ray.data.resume import StreamPlan
    from gemini_ray.data.pipeline import read_cache, shard_order

    _, directory, manifest = uninterrupted
    shards = manifest["shards_train"]
    # two later passes whose order is not the first's (with a few shards a permutation may be the identity)
    later = [e for e in range(1, 8) if shard_order(shards, 0, e) != sorted(shards)][:2]
    assert len(later) == 2

    def read(epoch, consumed=frozenset()):
        plan = StreamPlan.remote()
        ray.get(plan.set.remote([], epoch))
        stream = read_cache(str(directory), shards, 2, plan, consumed, seed=0)
        positions = np.concatenate([b["position"] for b in stream.iter_batches(batch_size=None,
                                                                               batch_format="numpy")])
        shard_of = positions >> 32
        return positions, [int(s) for s in shard_of[np.r_[True, shard_of[1:] != shard_of[:-1]]]]

    first, first_order = read(0)
    assert first_order == sorted(shards)
    for epoch in later:
        positions, order = read(epoch)
        assert order == shard_order(shards, 0, epoch) != sorted(shards)
        assert np.array_equal(np.sort(positions), np.sort(first))  # every row once in each pass
        assert read(epoch)[1] == order  # the same order again: a resumed pass
    left_out = shard_order(shards, 0, later[0])[0]
    assert read(later[0], frozenset({left_out}))[1] == [s for s in shard_order(shards, 0, later[0]) if s != left_out]

    # train.shuffle_first_pass: the first pass in a seeded order too, each row once
    seed = next(s for s in range(1, 20) if shard_order(shards, s, 0, True) != sorted(shards))
    plan = StreamPlan.remote()
    ray.get(plan.set.remote([], 0))
    positions = np.concatenate([b["position"] for b in read_cache(str(directory), shards, 2, plan, seed=seed,
                                                                  shuffle_first=True).iter_batches(
        batch_size=None, batch_format="numpy")])
    shard_of = positions >> 32
    assert [int(s) for s in shard_of[np.r_[True, shard_of[1:] != shard_of[:-1]]]] == shard_order(shards, seed, 0, True)
    assert np.array_equal(np.sort(positions), np.sort(first))


def test_shard_order_is_a_seeded_permutation_per_pass():
    from gemini_ray.data.pipeline import shard_order

    shards = [7, 3, 11, 5, 2, 9]
    assert shard_order(shards, 0, 0) == sorted(shards)
    later = [shard_order(shards, seed, epoch) for seed in (0, 1) for epoch in (1, 2)]
    assert all(sorted(order) == sorted(shards) for order in later) and len({tuple(o) for o in later}) == 4
    assert shard_order(shards, 1, 2) == shard_order(list(reversed(shards)), 1, 2)  # the given order plays no part
    # train.shuffle_first_pass: the first pass is a seeded permutation as well, and the later ones are unchanged
    first = {seed: shard_order(shards, seed, 0, shuffle_first=True) for seed in range(4)}
    assert all(sorted(order) == sorted(shards) for order in first.values()) and len({tuple(o) for o in first.values()}) > 1
    assert first[1] == shard_order(shards, 1, 0, shuffle_first=True)
    assert shard_order(shards, 1, 2, shuffle_first=True) == shard_order(shards, 1, 2)


def test_the_local_shuffle_covers_the_first_pass_only_when_asked():
    from gemini_ray.config import build_config
    from gemini_ray.training.train_worker import _pass_shuffle

    plain = build_config(overrides=["train.seed=3"]).train
    shuffled = build_config(overrides=["train.seed=3", "train.shuffle_first_pass=true"]).train
    assert _pass_shuffle(plain, 0, 0) == {}
    assert _pass_shuffle(shuffled, 0, 0)["local_shuffle_buffer_size"] == plain.shuffle_buffer
    assert _pass_shuffle(shuffled, 0, 0) != _pass_shuffle(build_config(overrides=[
        "train.seed=4", "train.shuffle_first_pass=true"]).train, 0, 0)  # seeded by train.seed
    assert _pass_shuffle(plain, 1, 0) == _pass_shuffle(shuffled, 1, 0) != {}
    assert _pass_shuffle(build_config(overrides=["train.shuffle_first_pass=true",
                                                 "train.shuffle_buffer=0"]).train, 0, 0) == {}


def test_a_resume_that_ends_within_its_pass_leaves_consumed_shards_unread(llama_dir, tmp_path):
    """The shards whose every row the resume checkpoint trained in its pass are named for leaving out, but only
    when the rest of the run fits in the rows left: a run that needs another pass reads them all."""
    from transformers import AutoConfig

    from gemini_ray.config import TrainConfig
    from gemini_ray.data.resume import add, consumed_shards, encode
    from gemini_ray.models.checkpoint import save_checkpoint, student_from_hf_config
    from gemini_ray.training.train_step import make_optimizer

    config = AutoConfig.from_pretrained(llama_dir).to_dict()
    model = student_from_hf_config(config, "causal")
    manifest = {"shards_train": [0, 1, 2], "expected_rows": {"0": 10, "1": 10, "2": 10, "3": 5}}
    trained = add([], np.concatenate([encode(1, np.arange(10)), encode(0, np.arange(4))]))  # shard 1 whole
    save_checkpoint(tmp_path / "grow" / "checkpoint_2026-11-30_10-00-00.000000", model,
                    make_optimizer(model, TrainConfig()), {"step": 7, "trained": trained})

    def consumed(max_steps):
        cfg = build_config(None, [f"run.storage_path={tmp_path}", "run.name=grow", "train.batch_size=2",
                                  f"train.max_steps={max_steps}"])
        return consumed_shards(cfg, manifest)

    assert consumed(max_steps=10) == {1}  # 3 steps (+1 of slack) x 2 rows <= 16 rows left
    assert consumed(max_steps=20) == set()  # 26 rows needed: another pass follows, which reads shard 1
    assert consumed(max_steps=10) and not consumed_shards(
        build_config(None, [f"run.storage_path={tmp_path}", "run.name=new"]), manifest)  # no checkpoint
