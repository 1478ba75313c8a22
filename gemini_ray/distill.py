"""`gemini-ray distill`: setup → fit → export, on Ray Data + Ray Train.

    gemini-ray distill                                  # the embedded demo (real teacher, real corpus)
    gemini-ray distill --config my.yaml loss.lambda_kd=0.7 train.max_steps=200

Running the same command again with the same run.name and run.storage_path resumes from the latest
checkpoint. Outputs: <storage_path>/<name>/student (a plain HF directory) and <...>/summary.json.

Faults: a dead worker (or its node) makes Ray Train restart the worker group from the latest checkpoint,
up to train.max_failures times; a dead driver is resumed by running the command again. Both are counted
in summary.json ('training.resumes'). A NaN or infinite loss stops the run with an error naming the step
and the loss part; the last good checkpoint is kept and nothing is exported.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from gemini_ray.config import Config, config_to_dict
from gemini_ray.errors import GeminiRayError

__all__ = ["distill", "signal_bytes_per_token", "run_dir", "publish", "raise_if_nonfinite"]


def signal_bytes_per_token(top_k: int, hidden_size: int, span_length: int) -> float:
    """Bytes of teacher signal per token: top-k ids (int32) + logits (float32) + top-k mass (float32),
    plus each span's pooled embedding (float32) spread over its tokens."""
    return top_k * (4 + 4) + 4 + hidden_size * 4 / span_length


def run_dir(cfg: Config) -> str:
    """<storage_path>/<name>, absolute for local paths (Ray Train needs that)."""
    storage = cfg.run.storage_path
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    return f"{storage.rstrip('/')}/{cfg.run.name}"


def _upload(local: Path, uri: str) -> None:
    """Copy a local file or directory to an object-store URI (s3://, gs://, ...)."""
    import pyarrow.fs

    pyarrow.fs.copy_files(str(local), uri)


def publish(local_dir: Path, uri: str | None) -> None:
    """Copy the files of a local results directory to `uri` (nothing when the results are already local)."""
    if uri is None:
        return
    for path in sorted(Path(local_dir).iterdir()):
        if path.is_file():
            _upload(path, f"{uri.rstrip('/')}/{path.name}")


def _resume_point(out_dir: str):
    """Where Ray Train should resume a local run from when its own record cannot say.

    Ray Train resumes from checkpoint_manager_snapshot.json, which it writes in place: a driver killed
    during that write leaves it cut short, and a driver killed before the first write leaves checkpoints
    it never recorded. Then: set the broken record aside and name the newest whole checkpoint (None: let
    Ray Train decide)."""
    import ray.train

    from gemini_ray.checkpoint import latest_whole_checkpoint

    if "://" in out_dir:
        return None
    snapshot = Path(out_dir) / "checkpoint_manager_snapshot.json"
    if snapshot.is_file():
        try:
            json.loads(snapshot.read_text(encoding="utf-8"))
            return None  # readable: Ray Train resumes from it
        except (ValueError, UnicodeDecodeError):
            aside = snapshot.with_name(f".{snapshot.name}.broken-{int(time.time())}")
            os.replace(snapshot, aside)
            print(f"[gemini-ray] Ray Train's checkpoint record was cut short; set aside as {aside.name}")
    latest = latest_whole_checkpoint(out_dir)
    if latest is None:
        return None
    print(f"[gemini-ray] resuming from the newest whole checkpoint {latest[0].name} (step {latest[1]})")
    return ray.train.Checkpoint.from_directory(str(latest[0]))


def raise_if_nonfinite(progress: dict[str, Any] | None, fit_id: str, checkpoint_path: str | None) -> None:
    """Turn a worker's non-finite-loss stop (recorded in progress.json) into the user's error."""
    if not progress or progress.get("fit_id") != fit_id or "nonfinite" not in progress:
        return
    error = progress["nonfinite"]
    part = error["part"]
    what = {"loss/kd": "distillation loss (loss/kd)", "loss/cl": "contrastive loss (loss/cl)"}.get(part, part)
    kept = (f"the last good checkpoint (step {error['last_good_checkpoint_step']}) is kept"
            + (f" at {checkpoint_path}" if checkpoint_path else "")) if error["last_good_checkpoint_step"] else \
        "no checkpoint had been written yet"
    raise GeminiRayError(
        f"training stopped at step {error['step']}: the {what} is {error['value']}. Nothing was exported; {kept}"
        + ". Lower train.lr or raise train.warmup_steps, keep loss.cl_temperature and loss.kd_temperature "
        "well above 0 (e.g. 0.05 and 1.0), and check the teacher signal (a cache made from a diverged teacher "
        "holds NaN logits); then run again (a new run.name starts over, the same one resumes).")


def distill(cfg: Config, prepared: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Run the whole distillation; returns the summary (also written to summary.json).

    `prepared`: (Setup, teacher model) from `label.setup` for this teacher and corpus, to skip resolving
    and tokenizing again (the ablation trains four variants on one setup)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from gemini_ray.checkpoint import atomic_write_text, export_student
    from gemini_ray.label import find_cache, setup
    from gemini_ray.models import build_student, count_parameters, load_student
    from gemini_ray.pipeline import (label_and_mine, label_in_process, read_cache, split, teacher_token_counter,
                                     to_arrays)
    from gemini_ray.placement import alive_nodes, check_fits, demands
    from gemini_ray.storage import check_writable
    from gemini_ray.train_worker import read_progress, train_loop_per_worker

    times: dict[str, float] = {}
    t_start, started_at = time.perf_counter(), time.time()
    out_dir = run_dir(cfg)
    local_out = "://" not in out_dir
    if local_out:  # tried by writing a probe file (permission bits say nothing for root or read-only mounts)
        check_writable(cfg.run.storage_path, "run.storage_path")
        if cfg.run.output_dir:
            check_writable(cfg.run.output_dir, "run.output_dir")
        Path(out_dir).mkdir(parents=True, exist_ok=True)

    # --- setup: teacher, student, examples, teacher signal -----------------------------------------
    s, teacher = prepared or setup(cfg, teacher_model_needed=True)
    kind, stats = s.kind, s.stats
    if cfg.loss.objective == "lm" and kind != "causal":
        raise GeminiRayError("loss.objective=lm (next-token cross-entropy) needs a causal teacher's tokenizer and "
                             f"spans; this teacher is {kind}. Use loss.objective=distill.")
    if cfg.student.from_pretrained:
        student = load_student(cfg.student.from_pretrained, kind, teacher, s.tokenizer)
    else:
        student = build_student(teacher, kind, cfg.student, seed=cfg.train.seed)
    teacher_params, student_params = s.teacher_params, count_parameters(student)
    hidden, vocab = s.teacher_config.hidden_size, s.teacher_config.vocab_size
    if prepared is None:  # a shared setup's time belongs to whoever made it
        times.update(s.seconds)
    print(f"[gemini-ray] teacher {s.teacher_source} ({kind}, {teacher_params / 1e6:.1f} M params); "
          f"student {student_params / 1e6:.1f} M params ({student_params / teacher_params:.0%} of the teacher)")
    if stats.documents_used <= cfg.loss.num_negatives:
        raise GeminiRayError(
            f"loss.num_negatives={cfg.loss.num_negatives} needs more than {cfg.loss.num_negatives} usable documents "
            f"(negatives come from other documents), but the corpus gives {stats.documents_used}. "
            "Lower loss.num_negatives or add documents."
        )
    rows_per_step = cfg.train.batch_size * cfg.train.num_workers
    steps_per_epoch = stats.train_examples // rows_per_step
    if steps_per_epoch == 0:
        raise GeminiRayError(
            f"the corpus gives {stats.train_examples} training examples, fewer than one step needs "
            f"(train.batch_size={cfg.train.batch_size} x train.num_workers={cfg.train.num_workers}). "
            "Lower train.batch_size or add documents."
        )
    epochs = math.ceil(cfg.train.max_steps / steps_per_epoch)
    tokens_before = ray.get(teacher_token_counter().total.remote())
    t0 = time.perf_counter()
    cache = find_cache(cfg, s)
    if cache is not None:
        cache_dir, manifest = cache
        print(f"[gemini-ray] reading the teacher signal from the cache {cache_dir}")
        stream = read_cache(cache_dir, manifest["shards_train"], cfg.loss.num_negatives)
        val = (to_arrays(read_cache(cache_dir, manifest["shards_val"], cfg.loss.num_negatives))
               if manifest["shards_val"] else None)  # small: read once, before the trainer holds its CPUs
        teacher_source_note = {"cache": cache_dir, "cache_teacher_tokens": manifest["teacher_tokens"]}
    else:
        train_examples = split(s.examples, "train")
        if epochs == 1:  # the teacher labels only the rows the run will use
            train_examples = train_examples.limit(cfg.train.max_steps * rows_per_step)
        else:
            print(f"[gemini-ray] note: {cfg.train.max_steps} steps need {epochs} passes over the data; the online "
                  "teacher runs once per pass ('gemini-ray label' makes a cache that runs it once).")
        stream = label_and_mine(cfg, train_examples)
        # the held-out rows are few: labelled here with the teacher already loaded, not by a second actor pool
        val = label_in_process(cfg, split(s.examples, "val"), teacher) if stats.val_examples else None
        teacher_source_note = {"cache": None}
    times["val_label_s"] = time.perf_counter() - t0
    del teacher
    teacher_source = s.teacher_source
    if cfg.run.check_resources:
        check_fits(demands(cfg, cached=cache is not None), alive_nodes())

    # --- fit ----------------------------------------------------------------------------------------
    import ray.train.torch  # noqa: F401  (registers the torch backend)

    fit_id, progress_path = uuid.uuid4().hex, f"{out_dir}/progress.json"

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": config_to_dict(cfg), "hf_config": student.config.to_dict(), "kind": kind,
                           "init_weights": ray.put(student.state_dict()),
                           "val": ray.put(val) if val is not None else None,
                           # a resume can tell a restarted worker group (same fit_id) from a new driver
                           "fit_id": fit_id, "started_at": started_at, "progress_path": progress_path},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                               resources_per_worker={"CPU": cfg.train.cpus_per_worker,
                                                                     **cfg.train.resources_per_worker}),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=out_dir.rsplit("/", 1)[0],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
        ),
        datasets={"train": stream},  # every rank evaluates all of val (an object, see to_arrays)
        resume_from_checkpoint=_resume_point(out_dir),
    )
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        last = [line for line in str(exc).splitlines() if line.strip()][-1:] or ["?"]
        raise GeminiRayError(
            f"training failed after {cfg.train.max_failures} restart(s) of the worker group (train.max_failures): "
            f"{last[0][:400]}. The latest checkpoint under '{out_dir}' is kept: fix the cause and run the same "
            "command to resume, or raise train.max_failures if the cluster loses workers often.") from exc
    times["label_and_train_s"] = time.perf_counter() - t0
    raise_if_nonfinite(read_progress(progress_path), fit_id, result.checkpoint.path if result.checkpoint else None)
    if result.checkpoint is None:
        raise GeminiRayError("training finished without a checkpoint; see the worker log above.")

    # --- export -------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    student_dir = cfg.run.output_dir or f"{out_dir}/student"
    # what `gemini-ray eval` needs to find the teacher and the held-out documents of this run
    meta = {"teacher": teacher_source, "kind": kind, "data": config_to_dict(cfg)["data"],
            "loss": config_to_dict(cfg)["loss"], "corpus_fingerprint": stats.fingerprint}
    with result.checkpoint.as_directory() as ckpt:
        state = json.loads((Path(ckpt) / "state.json").read_text(encoding="utf-8"))
        if "://" in student_dir:  # export locally, then copy to the shared store
            with tempfile.TemporaryDirectory() as tmp:
                export_student(ckpt, Path(tmp) / "student", teacher_source, meta)
                _upload(Path(tmp) / "student", student_dir)
        else:
            export_student(ckpt, student_dir, teacher_source, meta)
    times["export_s"] = time.perf_counter() - t0
    times["total_s"] = time.perf_counter() - t_start

    history = state["history"]
    summary = {
        "config": config_to_dict(cfg),
        "teacher": {"source": teacher_source, "kind": kind, "parameters": teacher_params, "vocab_size": vocab},
        "student": {"path": str(student_dir), "parameters": student_params,
                    "parameter_ratio": student_params / teacher_params},
        "corpus": stats.as_dict(),
        "teacher_signal": {**teacher_source_note,
                           "teacher_tokens_this_run": ray.get(teacher_token_counter().total.remote()) - tokens_before},
        "training": {"steps": state["step"], "epochs_started": state["epoch"] + 1,
                     "resumed_from_steps": state["resumed_from_steps"], "resumes": state.get("resumes", []),
                     "worker_group_restarts": sum(r["cause"] == "worker_group_restart"
                                                  for r in state.get("resumes", [])),
                     "driver_restarts": sum(r["cause"] == "driver_restart" for r in state.get("resumes", [])),
                     "steps_repeated": sum(r["steps_repeated"] or 0 for r in state.get("resumes", [])),
                     **state["totals"],
                     "first": history[0] if history else None, "last": history[-1] if history else None,
                     "history": history},
        "teacher_signal_bytes_per_token": signal_bytes_per_token(cfg.teacher.top_k, hidden, cfg.data.span_length),
        "full_distribution_bytes_per_token": vocab * 4,
        "wall_time_s": times,
    }
    summary_path = f"{out_dir}/summary.json"
    if local_out:
        atomic_write_text(summary_path, json.dumps(summary, indent=1))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
            _upload(Path(tmp) / "summary.json", summary_path)
    first, last = summary["training"]["first"], summary["training"]["last"]
    if first and last:
        print(f"[gemini-ray] KD loss {first['loss/kd']:.3f} -> {last['loss/kd']:.3f}, "
              f"CL loss {first['loss/cl']:.3f} -> {last['loss/cl']:.3f} over {state['step']} steps")
    print(f"[gemini-ray] student: {student_dir}")
    print(f"[gemini-ray] summary: {summary_path}")
    return summary
