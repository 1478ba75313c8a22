"""The Ray Train worker: plain PyTorch with a few marked Ray calls.

Each worker reads its shard of the streamed, labelled dataset, runs the DDP-wrapped student, and
reports the loss parts every `train.log_every` steps. Rank 0 writes a checkpoint every
`train.checkpoint_every` steps and at the end; a restarted run resumes from the latest one.
The data stream is not part of a checkpoint: a resumed run re-reads the stream from its start.

Faults: a worker group restarted by Ray Train (train.max_failures) and a driver started again both
resume from the latest checkpoint; each resume is recorded in the checkpoint's state ('resumes': the
step, the cause, the steps done after that checkpoint and lost, the seconds until training went on).
Rank 0 writes progress.json (last step done, wall time) beside the checkpoints so that a resume can
count the steps it repeats. A NaN or infinite loss part stops every rank before the optimizer step:
progress.json names the step and the part; no checkpoint is written.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from gemini_ray.cache import load_json_file, save_json_file
from gemini_ray.checkpoint import load_checkpoint, save_checkpoint, student_from_hf_config
from gemini_ray.config import config_from_dict
from gemini_ray.models import DistillStudent
from gemini_ray.train_step import LOSS_PARTS, compute_loss, first_nonfinite, lr_at, make_optimizer

__all__ = ["train_loop_per_worker", "read_progress"]

_COUNTERS = ("examples", "teacher_tokens", "random_negatives", "missing_negatives")


def _mean_across_ranks(values: dict[str, float], world: int) -> dict[str, float]:
    if world == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(t)  # sum over ranks
    return {k: float(v) / world for k, v in zip(values, t)}


def _sum_across_ranks(values: dict[str, float], world: int) -> dict[str, float]:
    if world == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) for k, v in zip(values, t)}


def read_progress(path: str | None) -> dict[str, Any] | None:
    """progress.json of an earlier attempt (None if there is none): {fit_id, step, time}."""
    return None if path is None else load_json_file(path)


def _write_progress(path: str, fit_id: str, step: int, **extra: Any) -> None:
    save_json_file(path, {"fit_id": fit_id, "step": step, "time": time.time(), **extra})


def _resume_event(state: dict[str, Any], loop_config: dict[str, Any], progress: dict[str, Any] | None) -> dict:
    """What a resume cost: the cause, the steps done after the checkpoint (done again now), and the seconds
    from the fault (driver restart: from the new driver's start) until training goes on."""
    same_fit = state.get("fit_id") == loop_config["fit_id"]
    event = {"step": state["step"], "cause": "worker_group_restart" if same_fit else "driver_restart",
             "steps_repeated": None, "seconds_to_resume": None}
    if progress is not None and progress.get("step", -1) >= state["step"]:
        event["steps_repeated"] = progress["step"] - state["step"]
    if same_fit and progress is not None and progress.get("fit_id") == loop_config["fit_id"]:
        event["seconds_to_resume"] = round(time.time() - progress["time"], 2)  # from the last step done
    elif not same_fit and loop_config.get("started_at"):
        event["seconds_to_resume"] = round(time.time() - loop_config["started_at"], 2)
    return event


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    # --- Ray context, looked up once -----------------------------------------------------------
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    shard = ray.train.get_dataset_shard("train")
    val_rows = ray.get(loop_config["val"]) if loop_config.get("val") is not None else None
    resume_from = ray.train.get_checkpoint()
    # -------------------------------------------------------------------------------------------
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one line per report is ours, not Ray's
    try:  # Train V2 logs every report at INFO under a logger named by its file's path
        from ray.train.v2._internal.execution import context as _train_context

        logging.getLogger(_train_context.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass
    cfg = config_from_dict(loop_config["cfg"])
    tc = cfg.train
    if not tc.use_gpu:
        torch.set_num_threads(max(1, int(tc.cpus_per_worker)))
    torch.manual_seed(tc.seed + rank)

    model = student_from_hf_config(loop_config["hf_config"], loop_config["kind"])
    optimizer = make_optimizer(model, tc)
    # totals are summed over ranks at each checkpoint; `local` counts this rank since (re)start
    progress_path = loop_config.get("progress_path")
    state: dict[str, Any] = {"step": 0, "epoch": 0, "history": [], "totals": dict.fromkeys(_COUNTERS, 0),
                             "resumed_from_steps": [], "resumes": []}
    if resume_from is not None:
        with resume_from.as_directory() as d:
            state = load_checkpoint(d, model, optimizer)
        event = _resume_event(state, loop_config, read_progress(progress_path))
        state["resumed_from_steps"].append(state["step"])
        state.setdefault("resumes", []).append(event)
        if rank == 0:
            print(f"[gemini-ray] resuming from checkpoint at step {state['step']} ({event['cause'].replace('_', ' ')}"
                  + (f", {event['steps_repeated']} step(s) to do again" if event["steps_repeated"] else "") + ")",
                  file=sys.__stdout__, flush=True)
    else:
        model.load_state_dict(ray.get(loop_config["init_weights"]))
    state["fit_id"] = loop_config["fit_id"]
    student = ray.train.torch.prepare_model(DistillStudent(model))  # DDP when world > 1
    device = ray.train.torch.get_device()
    state.update(kind=loop_config["kind"], hf_config=loop_config["hf_config"])

    def checkpoint_and_report(metrics: dict[str, Any], with_checkpoint: bool) -> None:
        if with_checkpoint and rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, model, optimizer, state)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)

    def evaluate() -> dict[str, float]:
        """Mean loss parts over the held-out documents (every rank reads all of them)."""
        if val_rows is None:
            return {}
        sums, n = {"val/loss_total": 0.0, "val/loss_kd": 0.0, "val/loss_cl": 0.0}, 0
        rows = len(val_rows["input_ids"])
        student.eval()
        with torch.no_grad():
            for start in range(0, rows, tc.batch_size):
                batch = {k: torch.tensor(v[start : start + tc.batch_size], device=device) for k, v in val_rows.items()}
                b = int(batch["input_ids"].shape[0])
                for key, value in compute_loss(student, batch, cfg.loss, across_ranks=False).as_floats().items():
                    sums["val/loss_" + key.split("/", 1)[1]] += value * b
                n += b
        student.train()
        return {**{k: v / max(n, 1) for k, v in sums.items()}, "val/step": state["step"], "val/examples": n}

    student.train()
    val_metrics = evaluate()  # the baseline, so every report carries a validation metric
    if rank == 0 and val_metrics:
        print(f"[gemini-ray] step {state['step']:>5}/{tc.max_steps} | held-out kd {val_metrics['val/loss_kd']:.4f} "
              f"| cl {val_metrics['val/loss_cl']:.4f} ({val_metrics['val/examples']} examples)",
              file=sys.__stdout__, flush=True)
    window = {"loss/total": 0.0, "loss/kd": 0.0, "loss/cl": 0.0, "n": 0}
    t_window, wait_time, step_time = time.perf_counter(), 0.0, 0.0
    last_checkpoint_step = state["step"]
    checkpointed = False  # in this attempt
    local = dict.fromkeys(_COUNTERS, 0.0)
    mass_sum, mass_n = 0.0, 0.0
    while state["step"] < tc.max_steps:
        batches = shard.iter_torch_batches(batch_size=tc.batch_size, drop_last=True, device=device,
                                           prefetch_batches=2)
        t_wait = time.perf_counter()
        got_any = False
        for batch in batches:
            got_any = True
            t0 = time.perf_counter()
            wait_time += t0 - t_wait
            for group in optimizer.param_groups:
                group["lr"] = lr_at(state["step"], tc)
            parts = compute_loss(student, batch, cfg.loss)
            values = parts.as_floats()
            bad = first_nonfinite(values)
            if world > 1:  # every rank stops together (before backward: DDP's all-reduce would hang)
                flags = torch.tensor([not math.isfinite(values[k]) for k in LOSS_PARTS], dtype=torch.float32)
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                bad = next((k for k, f in zip(LOSS_PARTS, flags.tolist()) if f > 0), None)
            if bad is not None:
                step = state["step"] + 1
                if rank == 0:
                    print(f"[gemini-ray] step {step}: {bad} is not finite ({values[bad]}); stopping without "
                          f"a checkpoint (the last good one is step {last_checkpoint_step})",
                          file=sys.__stdout__, flush=True)
                error = {"step": step, "part": bad, "value": str(values[bad]),
                         "last_good_checkpoint_step": last_checkpoint_step}
                if rank == 0 and progress_path:  # the driver (or Tune trial) reads it after fit
                    _write_progress(progress_path, state["fit_id"], state["step"], nonfinite=error)
                return  # no report: a result without the searched metric would stop a whole Tune run
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(student.parameters(), tc.grad_clip)
            optimizer.step()
            state["step"] += 1
            local["examples"] += int(batch["input_ids"].shape[0])
            for key in ("teacher_tokens", "random_negatives", "missing_negatives"):
                local[key] += float(batch[key].sum())
            lab = batch["label_mask"].float()
            mass_sum += float((batch["topk_mass"] * lab).sum())
            mass_n += float(lab.sum())
            for key, value in values.items():
                window[key] += value
            window["n"] += 1
            step_time += time.perf_counter() - t0

            step = state["step"]
            last = step >= tc.max_steps
            if rank == 0 and progress_path and ("://" not in progress_path or step % tc.log_every == 0 or last):
                _write_progress(progress_path, state["fit_id"], step)  # every step on a local disk
            if step % tc.log_every == 0 or last:
                n = window.pop("n")
                means = _mean_across_ranks({k: v / n for k, v in window.items()}, world)
                elapsed = time.perf_counter() - t_window
                counters = _sum_across_ranks({"examples": n * tc.batch_size}, world)
                coverage = _sum_across_ranks({"m": mass_sum, "n": mass_n}, world)
                metrics = {**means, "step": step, "epoch": state["epoch"], "lr": lr_at(step - 1, tc),
                           "restarts": len(state["resumes"]),
                           "teacher_topk_mass": coverage["m"] / max(coverage["n"], 1.0),
                           "examples_per_s": counters["examples"] / max(elapsed, 1e-9),
                           "data_wait_fraction": wait_time / max(wait_time + step_time, 1e-9)}
                if step % tc.eval_every == 0 or last:
                    val_metrics = evaluate()
                metrics.update(val_metrics)
                state["history"].append(metrics)
                if rank == 0:
                    print(f"[gemini-ray] step {step:>5}/{tc.max_steps} | loss {means['loss/total']:.4f} "
                          f"| kd {means['loss/kd']:.4f} | cl {means['loss/cl']:.4f} "
                          f"| {metrics['examples_per_s']:.2f} ex/s | data wait {metrics['data_wait_fraction']:.0%}"
                          + (f" | held-out kd {val_metrics['val/loss_kd']:.4f}" if val_metrics.get("val/step") == step
                             else ""),
                          file=sys.__stdout__, flush=True)  # __stdout__: Train V2 would print it twice
                window = {"loss/total": 0.0, "loss/kd": 0.0, "loss/cl": 0.0, "n": 0}
                mass_sum, mass_n = 0.0, 0.0
                t_window, wait_time, step_time = time.perf_counter(), 0.0, 0.0
                save = last or step - last_checkpoint_step >= tc.checkpoint_every
                if save:  # every rank reaches this at the same step, so the all-reduce is safe
                    summed = _sum_across_ranks(local, world)
                    state["totals"] = {k: state["totals"][k] + int(summed[k]) for k in _COUNTERS}
                    local = dict.fromkeys(_COUNTERS, 0.0)
                    last_checkpoint_step = step
                    checkpointed = True
                checkpoint_and_report(metrics, with_checkpoint=save)
            if last:
                break  # every rank stops at the same step: shards are split with equal=True
            t_wait = time.perf_counter()
        if not got_any:
            raise RuntimeError("the training stream yielded no batch: fewer examples than one batch per worker")
        state["epoch"] += 1
    if not checkpointed:  # resumed at (or past) max_steps: record the resume in a final checkpoint
        checkpoint_and_report({"step": state["step"], **val_metrics}, with_checkpoint=True)
