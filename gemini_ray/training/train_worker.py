"""The Ray Train worker: plain PyTorch with a few marked Ray calls.

Each worker reads its shard of the streamed, labelled dataset, runs the DDP-wrapped student, and
reports the loss parts every `train.log_every` steps. Rank 0 writes a checkpoint every
`train.checkpoint_every` steps and at the end; a restarted run resumes from the latest one.
A checkpoint records which rows of the current pass were trained (their positions, `gemini_ray.data.resume`,
gathered from every rank); a resumed run tells the stream's StreamPlan, and the stream leaves those rows out
before the teacher: it goes on with the first example it had not trained on, whatever the number of workers.

Faults: a worker group restarted by Ray Train (train.max_failures) and a driver started again both
resume from the latest checkpoint; each resume is recorded in the checkpoint's state ('resumes': the
step, the cause, the steps done after that checkpoint and lost, the seconds until training went on).
Rank 0 writes progress.json (last step done, wall time) beside the checkpoints so that a resume can
count the steps it repeats. A NaN or infinite loss part stops every rank before the optimizer step:
progress.json names the step and the part; no checkpoint is written.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, Iterator

import ray
import ray.train
import ray.train.torch
import numpy as np
import torch
import torch.distributed as dist

from gemini_ray.config import Config, LossConfig
from gemini_ray.data.resume import add as add_positions
from gemini_ray.data.resume import count as count_positions
from gemini_ray.evaluation.metrics import (TokenStats, composite_objective, merge_by_position, positive_mrr,
                                           teacher_agreement, topk_stats_by_position)
from gemini_ray.metric_names import (LOSS_TOTAL, OBJECTIVE_EMBEDDING, VAL_EXAMPLES, VAL_LOSS_CL, VAL_LOSS_KD,
                                     VAL_OBJECTIVE, VAL_RETRIEVAL, VAL_STEP, VAL_TEACHER_AGREEMENT, LM_METRICS, at_positions,
                                     held_out, term_of)
from gemini_ray.models.build import DistillStudent
from gemini_ray.models.checkpoint import load_checkpoint, save_checkpoint, student_from_hf_config, verify_checkpoint
from gemini_ray.models.numerics import Precision, allow_tf32, enable_activation_checkpointing
from gemini_ray.paths import atomic_write_json, is_uri, read_json
from gemini_ray.training.throughput import matmul_params, matmul_tflops, student_flops, teacher_flops
from gemini_ray.training.train_step import compute_loss, lr_at, make_optimizer, set_lr
from gemini_ray.training.watch import EventLog

__all__ = ["RunSpec", "train_loop_per_worker", "read_progress", "COUNTERS"]

COUNTERS = ("examples", "teacher_tokens", "random_negatives", "missing_negatives")
"""Totals kept in the checkpoint's state, summed over ranks at each checkpoint (summary.json 'training')."""


@dataclass(frozen=True)
class RunSpec:
    """One fit of the student, as the driver hands it to every Train worker (`train_loop_config={"run": spec}`)."""

    cfg: Config
    hf_config: dict[str, Any]
    """The student's Hugging Face config (the workers build the model from it)."""
    kind: str
    """'causal' or 'masked'."""
    init_weights: Any
    """ray.ObjectRef of the student's initial state dict (unused when resuming from a checkpoint)."""
    val: Any
    """ray.ObjectRef of the held-out rows (one dict of column arrays), or None."""
    fit_id: str
    """New for every driver run: a resume with the same fit_id is a restarted worker group."""
    started_at: float
    """time.time() when the driver started (the cost of a driver restart is measured from it)."""
    progress_path: str | None
    """progress.json (path or URI): rank 0's last step, read back by a resume and by the driver."""
    plan: Any = None
    """The training stream's StreamPlan actor (None: a resume re-reads the pass from its start)."""
    tensorboard_dir: str | None = None
    """Where rank 0 writes TensorBoard event files (path or URI), or None."""
    costs: "Costs | None" = None
    """What the throughput and MFU of each report are computed from (None: tokens/s only)."""
    resume_from: str | None = None
    """A local checkpoint directory to start from when Ray Train has none to hand back (its own record was
    set aside: `data.resume.resume_point`). Ray Train V2 refuses TorchTrainer(resume_from_checkpoint=...)."""


@dataclass(frozen=True)
class Costs:
    """The driver's side of the throughput accounting: the online teacher's matmul parameters (None when the
    run reads a cache: no teacher runs beside it) and the peak MFU is measured against."""

    peak_tflops: float | None
    """Per accelerator (GPU runs), per node (CPU runs); None: the worker probes its GPU."""
    teacher_params: tuple[int, int] | None = None
    """(body, head) matmul parameters of the teacher labelling online, or None."""
    teacher_devices: int = 1
    """Accelerators of the teacher pool (num_actors x num_gpus; 1 on CPU: one node's peak)."""
    teacher_peak_tflops: float | None = None
    """Per teacher accelerator, when the teacher's GPUs are not the trainers' (teacher.peak_tflops)."""


@dataclass(frozen=True)
class _Rank:
    rank: int
    world: int
    device: torch.device


def _log(message: str) -> None:
    print(f"[gemini-ray] {message}", file=sys.__stdout__, flush=True)  # __stdout__: Train V2 would print it twice


# --------------------------------------------------------------------------- across ranks


def _mean_across_ranks(values: dict[str, float], world: int) -> dict[str, float]:
    return {k: v / world for k, v in _sum_across_ranks(values, world).items()}


def _sum_across_ranks(values: dict[str, float], world: int) -> dict[str, float]:
    if world == 1:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(t)  # sum over ranks
    return {k: float(v) for k, v in zip(values, t)}


def nonfinite_part(values: dict[str, float], world: int) -> str | None:
    """The first loss part that is NaN or infinite on *any* rank, else None: the terms in their order, then
    the total. A collective when world > 1: every rank calls it at every step, before backward, so that all
    stop together (DDP's gradient all-reduce would hang if one rank stopped alone)."""
    order = [k for k in values if k != LOSS_TOTAL] + [LOSS_TOTAL]
    flags = [float(not math.isfinite(values[k])) for k in order]
    if world > 1:
        t = torch.tensor(flags, dtype=torch.float32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flags = t.tolist()
    return next((k for k, f in zip(order, flags) if f > 0), None)


def note_loss_reference(state: dict[str, Any], values: dict[str, float], world: int) -> None:
    """Keep the loss terms of the run's first batch, averaged over the ranks, as state["loss_reference"]
    (loss.balance='start' divides by them). Kept in checkpoints, so a resumed run divides by the same values.
    The training batch, not the held-out rows: the balance is of the training gradient, and the held-out
    terms at the start can differ from the training ones enough to give a term more weight than λ meant."""
    if "loss_reference" not in state:
        state["loss_reference"] = _mean_across_ranks({k: v for k, v in values.items() if k != LOSS_TOTAL}, world)


# --------------------------------------------------------------------------- progress.json and resumes


def read_progress(path: str | None) -> dict[str, Any] | None:
    """progress.json of an earlier attempt (None if there is none): {fit_id, step, time[, nonfinite]}."""
    return None if path is None else read_json(path)


def _write_progress(path: str, fit_id: str, step: int, **extra: Any) -> None:
    atomic_write_json(path, {"fit_id": fit_id, "step": step, "time": time.time(), **extra})


def _resume_event(state: dict[str, Any], spec: RunSpec, progress: dict[str, Any] | None) -> dict:
    """What a resume cost: the cause, the steps done after the checkpoint (done again now, and their
    examples), the examples of the pass the stream skips (trained before the checkpoint), and the seconds
    from the fault (driver restart: from the new driver's start) until training goes on."""
    same_fit = state.get("fit_id") == spec.fit_id
    event = {"step": state["step"], "cause": "worker_group_restart" if same_fit else "driver_restart",
             "steps_repeated": None, "examples_repeated": None,
             "examples_skipped": count_positions(state["trained"]) if spec.plan is not None else 0,
             "seconds_to_resume": None}
    if progress is not None and progress.get("step", -1) >= state["step"]:
        event["steps_repeated"] = progress["step"] - state["step"]
        t = spec.cfg.train
        event["examples_repeated"] = event["steps_repeated"] * t.examples_per_step
    if same_fit and progress is not None and progress.get("fit_id") == spec.fit_id:
        event["seconds_to_resume"] = round(time.time() - progress["time"], 2)  # from the last step done
    elif not same_fit and spec.started_at:
        event["seconds_to_resume"] = round(time.time() - spec.started_at, 2)
    return event


def _restore(spec: RunSpec, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             resume_from: ray.train.Checkpoint | None, rank: int) -> dict[str, Any]:
    """The training state: from the checkpoint Ray Train hands back (recording the resume), else fresh
    with the driver's initial weights."""
    if resume_from is None:
        model.load_state_dict(ray.get(spec.init_weights))
        state = {"step": 0, "epoch": 0, "history": [], "totals": dict.fromkeys(COUNTERS, 0),
                 "resumed_from_steps": [], "resumes": [], "trained": []}
    else:
        with resume_from.as_directory() as d:
            problem = verify_checkpoint(d)  # the bytes this worker is about to load, as they were written
            if problem is not None:
                raise RuntimeError(f"the checkpoint to resume from ({d}) is damaged: {problem}. Run the same command "
                                   "again: it sets the damaged checkpoint aside and resumes from the one before.")
            state = load_checkpoint(d, model, optimizer)
        state.setdefault("trained", [])  # a checkpoint from before positions: the pass starts over
        event = _resume_event(state, spec, read_progress(spec.progress_path))
        state["resumed_from_steps"].append(state["step"])
        state.setdefault("resumes", []).append(event)
        if rank == 0:
            _log(f"resuming from checkpoint at step {state['step']} ({event['cause'].replace('_', ' ')}"
                 + (f", {event['steps_repeated']} step(s) to do again" if event["steps_repeated"] else "")
                 + f"; the stream skips the {event['examples_skipped']} example(s) of this pass trained before it)")
    state.update(fit_id=spec.fit_id, kind=spec.kind, hf_config=spec.hf_config)
    return state


def _stop_nonfinite(spec: RunSpec, state: dict[str, Any], part: str, value: float, last_good: int,
                    rank: int, resumed: bool = False) -> None:
    """Record a non-finite loss in progress.json (rank 0) for the driver or Tune trial to turn into an error.
    resumed: this fit loaded a checkpoint; when no step has been trained since, that checkpoint gave the
    non-finite loss itself, and is not called good."""
    step = state["step"] + 1
    if rank != 0:
        return
    loaded_step = state["step"] if resumed and state["resumed_from_steps"][-1:] == [state["step"]] else None
    if loaded_step is not None:
        last_good = 0
        _log(f"step {step}: {part} is not finite ({value}) straight after loading the checkpoint of step "
             f"{loaded_step}; stopping: that checkpoint is not a good one")
    else:
        _log(f"step {step}: {part} is not finite ({value}); stopping without a checkpoint "
             f"(the last good one is step {last_good})")
    if spec.progress_path:
        _write_progress(spec.progress_path, spec.fit_id, state["step"],
                        nonfinite={"step": step, "part": part, "value": str(value),
                                   "last_good_checkpoint_step": last_good, "bad_checkpoint_step": loaded_step})


# --------------------------------------------------------------------------- held-out loss


def held_out_metrics(student: torch.nn.Module, rows: dict[str, Any] | None, loss_cfg: LossConfig, batch_size: int,
                     device: torch.device, step: int,
                     autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
                     causal: bool = True) -> dict[str, float]:
    """Mean loss parts over the held-out rows, the retrieval of their positives and the agreement of their span
    similarities with the teacher's (every rank scores all of them; no collective); for a causal student also
    the perplexity, KL and top-1 agreement on the KD windows' next tokens, overall and by position range (where
    along the window the student falls behind). {} without rows."""
    if rows is None:
        return {}
    sums: dict[str, float] = {}
    n, spans, by_position = 0, [], []
    student.eval()
    with torch.no_grad():
        for start in range(0, len(rows["input_ids"]), batch_size):
            batch = {k: torch.tensor(v[start : start + batch_size], device=device) for k, v in rows.items()}
            b = int(batch["input_ids"].shape[0])
            parts = compute_loss(student, batch, loss_cfg, across_ranks=False, autocast=autocast, keep_logits=causal)
            for key, value in parts.as_floats().items():
                sums[key] = sums.get(key, 0.0) + value * b
            spans.append((*parts.spans, batch["doc_id"], batch["teacher_embedding"]))
            if causal:
                both = {k: torch.cat([batch[k][:, 0], batch[k][:, 1]]).cpu()  # (2B, W, ...) ordered like the logits
                        for k in ("input_ids", "attention_mask", "topk_ids", "topk_logits")}
                by_position.append(topk_stats_by_position(parts.logits.cpu(), **both))
            n += b
    student.train()
    anchors, positives, docs, teacher = (torch.cat(column) for column in zip(*spans))
    return {**{held_out(k): v / max(n, 1) for k, v in sums.items()}, **_lm_metrics(merge_by_position(by_position)),
            VAL_RETRIEVAL: positive_mrr(anchors, positives, docs),
            VAL_TEACHER_AGREEMENT: teacher_agreement(torch.cat([anchors, positives]),
                                                     torch.cat([teacher[:, 0], teacher[:, 1]])),
            VAL_STEP: step, VAL_EXAMPLES: n}


def _lm_metrics(by_position: dict[str, TokenStats]) -> dict[str, float]:
    """val/perplexity, val/kl_to_teacher, val/teacher_top1_agreement over every position and per range."""
    out: dict[str, float] = {}
    for label, stats in [("", TokenStats.total(by_position.values())), *by_position.items()]:
        if stats.count:
            figures = stats.summary(with_teacher=True)
            for name, key in LM_METRICS.items():
                out[at_positions(name, label) if label else name] = figures[key]
    return out


def with_objective(metrics: dict[str, float], state: dict[str, Any], kd_ceiling: float | None = None,
                   objective_embedding: str = "retrieval") -> dict[str, float]:
    """The held-out metrics plus val/objective, against the held-out values where the run started (kept in
    the training state, so a resumed run compares with the same start), with `kd_ceiling` (tune.floor_at the
    evaluation's step) as its ceiling on the held-out KD loss and the metric tune.objective_embedding names
    as its embedding half. Unchanged without held-out rows."""
    if not metrics:
        return metrics
    start = state.setdefault("val_start", {})
    for key in (VAL_LOSS_KD, VAL_RETRIEVAL, VAL_TEACHER_AGREEMENT):  # a state saved before a key existed
        start.setdefault(key, metrics[key])                      # starts it at its resumed value
    embedding = OBJECTIVE_EMBEDDING[objective_embedding]
    return {**metrics, VAL_OBJECTIVE: composite_objective(metrics[VAL_LOSS_KD], metrics[embedding],
                                                          start[VAL_LOSS_KD], start[embedding], kd_ceiling)}


# --------------------------------------------------------------------------- the metrics window


class MetricsWindow:
    """What happened since the last report: loss parts, data wait vs compute time, teacher top-k mass,
    tokens/s and MFU of the trainer and of an online teacher, and the counters (examples, teacher tokens,
    negatives) since the last checkpoint.

    throughput: (student (body, head) matmul parameters, K negatives per row, Costs or None, on a GPU)."""

    def __init__(self, throughput: tuple[tuple[int, int], int, Costs | None, bool] | None = None) -> None:
        self.counters = dict.fromkeys(COUNTERS, 0.0)
        self.throughput = throughput
        self._arrived = time.perf_counter()
        self._reset_losses()
        self.restart_clock()

    def _reset_losses(self) -> None:
        self.losses: dict[str, float] = {}  # loss/total and loss/<term>: sums over the window's steps
        self.steps = 0
        self.mass, self.positions = 0.0, 0.0
        self.tokens = {"labelled": 0.0, "encoded": 0.0, "teacher": 0.0}

    def restart_clock(self) -> None:
        """Start timing the next window now (after this window's report, evaluation and checkpoint)."""
        self.wait, self.compute = 0.0, 0.0
        self.started = time.perf_counter()

    def timed(self, batches: Iterable[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        """Yield the batches, counting the time from asking for one to getting it as data wait."""
        t = time.perf_counter()
        for batch in batches:
            self._arrived = time.perf_counter()
            self.wait += self._arrived - t
            yield batch
            t = time.perf_counter()

    def add(self, values: dict[str, float], batch: dict[str, torch.Tensor]) -> None:
        """Count a finished step (its compute time runs from the batch's arrival until now)."""
        self.compute += time.perf_counter() - self._arrived
        for key, value in values.items():
            self.losses[key] = self.losses.get(key, 0.0) + value
        self.steps += 1
        self.counters["examples"] += int(batch["input_ids"].shape[0])
        for key in ("teacher_tokens", "random_negatives", "missing_negatives"):
            self.counters[key] += float(batch[key].sum())
        labelled = batch["label_mask"].float()
        self.mass += float((batch["topk_mass"] * labelled).sum())
        self.positions += float(labelled.sum())
        real = float(batch["attention_mask"].sum())  # the anchor and positive spans' real tokens
        K = self.throughput[1] if self.throughput else 0
        self.tokens["labelled"] += real
        self.tokens["encoded"] += real + float(batch["neg_attention_mask"][:, :K].sum())
        self.tokens["teacher"] += float(batch["teacher_tokens"].sum())

    def close(self, batch_size: int, world: int) -> tuple[dict[str, float], dict[str, float]]:
        """(loss means, rates: top-k mass, examples/s, data-wait share) over every rank (a collective). The
        loss sums restart at 0; the clock runs on until restart_clock()."""
        n = max(self.steps, 1)
        means = _mean_across_ranks({k: v / n for k, v in self.losses.items()}, world)
        examples = _sum_across_ranks({"examples": self.steps * batch_size}, world)["examples"]
        coverage = _sum_across_ranks({"m": self.mass, "n": self.positions}, world)
        seconds = max(time.perf_counter() - self.started, 1e-9)
        rates = {"teacher_topk_mass": coverage["m"] / max(coverage["n"], 1.0),
                 "examples_per_s": examples / seconds,
                 "data_wait_fraction": self.wait / max(self.wait + self.compute, 1e-9),
                 **self._throughput(_sum_across_ranks(self.tokens, world), seconds, world)}
        self._reset_losses()
        return means, rates

    def _throughput(self, tokens: dict[str, float], seconds: float, world: int) -> dict[str, float]:
        """train_tokens_per_s (labelled tokens: what the teacher labels), train_tflops and train_mfu; with an
        online teacher, teacher_tokens_per_s (the rows it labelled that the trainer took, so in a steady
        stream its rate) and teacher_mfu. MFU on CPU is against one node's peak (the workers share it)."""
        out = {"train_tokens_per_s": tokens["labelled"] / seconds}
        if self.throughput is None:
            return out
        (body, head), _, costs, on_gpu = self.throughput
        out["train_tflops"] = student_flops(body, head, tokens["labelled"], tokens["encoded"]) / seconds / 1e12
        peak = costs.peak_tflops if costs else None
        if peak:
            out["train_mfu"] = out["train_tflops"] / (peak * (world if on_gpu else 1))
        if costs and costs.teacher_params:
            out["teacher_tokens_per_s"] = tokens["teacher"] / seconds
            out["teacher_tflops"] = teacher_flops(*costs.teacher_params, tokens["teacher"]) / seconds / 1e12
            teacher_peak = costs.teacher_peak_tflops or peak  # the teacher's GPUs, when not the trainers'
            if teacher_peak:
                out["teacher_mfu"] = out["teacher_tflops"] / (teacher_peak * costs.teacher_devices)
        return out

    def fold_counters(self, totals: dict[str, int], world: int) -> dict[str, int]:
        """totals + this window's counters summed over ranks (a collective); the counters restart at 0."""
        summed = _sum_across_ranks(self.counters, world)
        self.counters = dict.fromkeys(COUNTERS, 0.0)
        return {k: totals[k] + int(summed[k]) for k in COUNTERS}


# --------------------------------------------------------------------------- positions trained


def _gather_positions(pending: list[np.ndarray], world: int) -> np.ndarray:
    """The positions every rank trained since the last checkpoint (a collective when world > 1)."""
    mine = np.concatenate(pending) if pending else np.zeros(0, dtype=np.int64)
    if world == 1:
        return mine
    every: list[Any] = [None] * world
    dist.all_gather_object(every, mine)
    return np.concatenate(every)


def _start_pass(spec: RunSpec, state: dict[str, Any], me: _Rank) -> None:
    """Tell the stream which rows of this pass were trained (rank 0), before any rank reads from it."""
    if spec.plan is None:
        return
    if me.rank == 0:
        ray.get(spec.plan.set.remote(state["trained"], state["epoch"]))
    if me.world > 1:
        dist.barrier()


def _resume_checkpoint(spec: RunSpec) -> ray.train.Checkpoint | None:
    """This fit's latest checkpoint (Ray Train hands it back to a restarted worker group, or from its record
    to a new driver), else the one the driver named (spec.resume_from), else None."""
    found = ray.train.get_checkpoint()
    if found is None and spec.resume_from is not None:
        found = ray.train.Checkpoint.from_directory(spec.resume_from)
    return found


def _pass_shuffle(tc, epoch: int, rank: int) -> dict[str, int]:
    """iter_torch_batches' local shuffle for a pass: none on the first (corpus or cache order) unless
    train.shuffle_first_pass, then a buffer of train.shuffle_buffer rows seeded by the seed, the pass and the
    rank. Exact resume does not depend on it: the positions of the rows trained are recorded, whatever order
    they came in."""
    if (epoch == 0 and not tc.shuffle_first_pass) or tc.shuffle_buffer == 0:
        return {}
    return {"local_shuffle_buffer_size": tc.shuffle_buffer,
            "local_shuffle_seed": (tc.seed * 1_000_003 + epoch * 1_009 + rank) % (1 << 31)}


def _note_positions(batch: dict[str, torch.Tensor], pending: list[np.ndarray], step: int, spec: RunSpec,
                    rank: int) -> None:
    """Keep the positions of a step's rows until the next checkpoint; with train.trace_positions=<dir>, also
    append them to <dir>/rank<r>.txt."""
    import os

    if "position" not in batch:
        return
    positions = batch["position"].cpu().numpy()
    pending.append(positions)
    directory = spec.cfg.train.trace_positions
    if directory:
        with open(os.path.join(directory, f"rank{rank}.txt"), "a", encoding="utf-8") as f:
            f.write(f"{spec.fit_id} {step} {' '.join(str(int(p)) for p in positions)}\n")


# --------------------------------------------------------------------------- the loop


def _report(metrics: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            state: dict[str, Any] | None, rank: int) -> None:
    """ray.train.report, with a checkpoint of rank 0's model, optimizer and state when `state` is given."""
    if state is not None and rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, model, optimizer, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)


def eta_text(steps_left: int, examples_per_step: int, examples_per_s: float) -> str:
    """' | ETA 12 min' at the window's pace (training only: evaluations and checkpoints come on top)."""
    if steps_left <= 0 or examples_per_s <= 0:
        return ""
    seconds = steps_left * examples_per_step / examples_per_s
    return f" | ETA {seconds / 60:.0f} min" if seconds >= 90 else f" | ETA {seconds:.0f} s"


def _step_line(step: int, max_steps: int, metrics: dict[str, Any], examples_per_step: int = 0) -> str:
    terms = "".join(f" | {term} {value:.4f}" for key, value in metrics.items() if (term := term_of(key)))
    line = (f"step {step:>5}/{max_steps} | loss {metrics[LOSS_TOTAL]:.4f}{terms} | {metrics['examples_per_s']:.2f} ex/s "
            f"| {metrics['train_tokens_per_s']:.0f} tok/s" + (f" (MFU {metrics['train_mfu']:.1%})" if "train_mfu" in metrics else "")
            + (f" | teacher {metrics['teacher_tokens_per_s']:.0f} tok/s" if "teacher_tokens_per_s" in metrics else "")
            + (f" (MFU {metrics['teacher_mfu']:.1%})" if "teacher_mfu" in metrics else "")
            + f" | data wait {metrics['data_wait_fraction']:.0%}"
            + eta_text(max_steps - step, examples_per_step, metrics["examples_per_s"]))
    return line + (f" | held-out kd {metrics[VAL_LOSS_KD]:.4f} | mrr {metrics[VAL_RETRIEVAL]:.3f}"
                   if metrics.get(VAL_STEP) == step else "")


def _start_line(step: int, max_steps: int, val: dict[str, Any]) -> str:
    return (f"step {step:>5}/{max_steps} | held-out kd {val[VAL_LOSS_KD]:.4f} | cl {val[VAL_LOSS_CL]:.4f} "
            f"| mrr {val[VAL_RETRIEVAL]:.3f} ({val[VAL_EXAMPLES]} examples)")


def _throughput_of(spec: RunSpec, model: torch.nn.Module, me: _Rank) -> tuple:
    """What MetricsWindow computes throughput from; a GPU worker without run.peak_tflops probes its device."""
    costs = spec.costs
    if costs is not None and costs.peak_tflops is None and me.device.type == "cuda":
        dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(spec.cfg.train.precision, torch.float32)
        costs = dataclasses.replace(costs, peak_tflops=matmul_tflops(me.device, dtype, n=8192))
    return matmul_params(model), spec.cfg.loss.num_negatives, costs, me.device.type == "cuda"


def _fold_into_state(state: dict[str, Any], window: MetricsWindow, pending: list[np.ndarray], precision: Precision,
                     me: _Rank) -> None:
    """What a checkpoint records besides the weights: the counters and trained positions since the last one,
    summed over the ranks (collectives), and the fp16 loss scale (so a resume goes on from it)."""
    state["grad_scaler"] = precision.state_dict()
    state["totals"] = window.fold_counters(state["totals"], me.world)
    state["trained"] = add_positions(state["trained"], _gather_positions(pending, me.world))


def _accumulate(student: torch.nn.Module, batch: dict[str, torch.Tensor], spec: RunSpec, state: dict[str, Any],
                precision: Precision, me: _Rank, sync: bool) -> tuple[dict[str, float], str | None]:
    """One micro-batch: loss parts, and their gradients ÷ train.grad_accum_steps added to .grad (all-reduced
    when `sync`: the step's last micro-batch). Returns (loss values, the first non-finite part or None);
    with a non-finite part nothing is added, on any rank."""
    with _gradient_sync(student, sync):
        parts = compute_loss(student, batch, spec.cfg.loss, reference=state.get("loss_reference"),
                             autocast=precision.autocast)
        values = parts.as_floats()
        bad = nonfinite_part(values, me.world)
        if bad is not None:
            return values, bad
        note_loss_reference(state, values, me.world)
        precision.backward(parts.total / spec.cfg.train.grad_accum_steps)
    return values, None


def _gradient_sync(student: torch.nn.Module, sync: bool) -> ContextManager[Any]:
    """DDP's no_sync() for a micro-batch whose gradients only accumulate (the last one all-reduces the sum)."""
    return contextlib.nullcontext() if sync or not hasattr(student, "no_sync") else student.no_sync()


def _build_student(spec: RunSpec, me: _Rank, resume_from: Any) -> tuple[torch.nn.Module, torch.nn.Module,
                                                                        torch.optim.Optimizer, Precision, dict]:
    """The student (and its DDP-wrapped training module), optimizer, precision and training state, from the
    checkpoint Ray Train hands back or fresh."""
    tc = spec.cfg.train
    if not tc.use_gpu:
        torch.set_num_threads(max(1, round(tc.cpus_per_worker or 1)))  # 1.75 CPUs (a node less a cache read): 2
    torch.manual_seed(tc.seed + me.rank)
    allow_tf32()
    precision = Precision(tc.precision, me.device)
    model = student_from_hf_config(spec.hf_config, spec.kind)
    if tc.activation_checkpointing:
        enable_activation_checkpointing(model)
    optimizer = make_optimizer(model, tc)
    state = _restore(spec, model, optimizer, resume_from, me.rank)
    precision.load_state_dict(state.get("grad_scaler"))
    student = ray.train.torch.prepare_model(DistillStudent(model))  # DDP when world > 1
    student.train()
    return model, student, optimizer, precision, state


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: train the student of `loop_config["run"]` (a RunSpec) to max_steps."""
    spec: RunSpec = loop_config["run"]
    # --- Ray context, looked up once -----------------------------------------------------------
    ctx = ray.train.get_context()
    me = _Rank(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    shard = ray.train.get_dataset_shard("train")
    val_rows = ray.get(spec.val) if spec.val is not None else None
    resume_from = _resume_checkpoint(spec)
    # -------------------------------------------------------------------------------------------
    _quiet_ray_train_logs()
    fit = _setup(spec, me, val_rows, resume_from)
    while fit.state["step"] < spec.cfg.train.max_steps:
        _start_pass(spec, fit.state, me)
        if not _train_pass(fit, shard):
            return  # no report: a result without the searched metric would stop a whole Tune run
        _end_pass(fit)
    fit.events.close()
    if not fit.checkpointed:  # resumed at (or past) max_steps: record the resume in a final checkpoint
        _report({"step": fit.state["step"], **fit.val_metrics}, fit.model, fit.optimizer, fit.state, me.rank)


@dataclass
class _Fit:
    """What one worker's fit carries from step to step."""

    spec: RunSpec
    me: _Rank
    model: torch.nn.Module
    student: torch.nn.Module
    """The model as trained: DDP-wrapped when world > 1."""
    optimizer: torch.optim.Optimizer
    precision: Precision
    state: dict[str, Any]
    """What a checkpoint keeps besides the weights (step, epoch, history, totals, resumes, trained positions)."""
    evaluate: Callable[[int], dict[str, float]]
    """step -> the held-out metrics with val/objective ({} without held-out rows)."""
    resumed: bool
    """This fit loaded a checkpoint."""
    val_metrics: dict[str, float]
    """The latest held-out metrics: every report carries them."""
    window: MetricsWindow
    events: EventLog
    last_checkpoint_step: int
    checkpointed: bool = False
    pending: list[np.ndarray] = dataclasses.field(default_factory=list)
    """The positions trained since the last checkpoint."""
    micro: int = 0
    """Micro-batches accumulated into the coming step (a step may span the end of a pass)."""


def _setup(spec: RunSpec, me: _Rank, val_rows: dict[str, Any] | None, resume_from: Any) -> _Fit:
    """The student, its optimizer and training state, and the held-out metrics where the fit starts (the
    baseline: every report carries a validation metric); then the metrics window, whose clock starts now."""
    tc = spec.cfg.train
    model, student, optimizer, precision, state = _build_student(spec, me, resume_from)

    def evaluate(step: int) -> dict[str, float]:
        metrics = held_out_metrics(student, val_rows, spec.cfg.loss, tc.batch_size, me.device, step, precision.autocast,
                                   causal=spec.kind == "causal")
        return with_objective(metrics, state, spec.cfg.tune.floor_at(step), spec.cfg.tune.objective_embedding)

    val_metrics = evaluate(state["step"])
    if me.rank == 0 and val_metrics:
        _log(_start_line(state["step"], tc.max_steps, val_metrics))
    return _Fit(spec, me, model, student, optimizer, precision, state, evaluate, resumed=resume_from is not None,
                val_metrics=val_metrics, window=MetricsWindow(_throughput_of(spec, model, me)),
                events=EventLog(spec.tensorboard_dir if me.rank == 0 else None), last_checkpoint_step=state["step"])


def _train_pass(fit: _Fit, shard: Any) -> bool:
    """One pass over this rank's shard of the training stream, or until train.max_steps. False when a loss
    part turned non-finite: recorded in progress.json, and nothing stepped or reported."""
    spec, me, state, tc = fit.spec, fit.me, fit.state, fit.spec.cfg.train
    got_any = False
    batches = shard.iter_torch_batches(batch_size=tc.batch_size, drop_last=True, device=me.device, prefetch_batches=2,
                                       **_pass_shuffle(tc, state["epoch"], me.rank))
    for batch in fit.window.timed(batches):
        got_any, fit.micro = True, fit.micro + 1
        if fit.micro == 1:
            fit.optimizer.zero_grad(set_to_none=True)
            set_lr(fit.optimizer, state["step"], tc)
        values, bad = _accumulate(fit.student, batch, spec, state, fit.precision, me, fit.micro == tc.grad_accum_steps)
        if bad is not None:
            _stop_nonfinite(spec, state, bad, values[bad], fit.last_checkpoint_step, me.rank, fit.resumed)
            return False
        fit.window.add(values, batch)
        _note_positions(batch, fit.pending, state["step"] + 1, spec, me.rank)
        if fit.micro < tc.grad_accum_steps:
            continue
        fit.precision.step(fit.student.parameters(), fit.optimizer, tc.grad_clip)
        state["step"], fit.micro = state["step"] + 1, 0
        _after_step(fit)
        if state["step"] >= tc.max_steps:
            break  # every rank stops at the same step: shards are split with equal=True
    if not got_any:
        raise RuntimeError("the training stream yielded no batch: fewer examples than one batch per worker")
    return True


def _after_step(fit: _Fit) -> None:
    """progress.json (rank 0; every step on a local disk, at each report on a URI) and, every train.log_every
    steps and at the last, the report."""
    spec, tc, step = fit.spec, fit.spec.cfg.train, fit.state["step"]
    last = step >= tc.max_steps
    report = step % tc.log_every == 0 or last
    if fit.me.rank == 0 and spec.progress_path and (not is_uri(spec.progress_path) or report):
        _write_progress(spec.progress_path, spec.fit_id, step)
    if report:
        _report_window(fit, step, last)


def _report_window(fit: _Fit, step: int, last: bool) -> None:
    """Close the metrics window, evaluate (every train.eval_every steps and at the last), log the window to
    the history, TensorBoard and rank 0's line, and report it to Ray Train, with a checkpoint every
    train.checkpoint_every steps and at the last."""
    tc, state = fit.spec.cfg.train, fit.state
    means, rates = fit.window.close(tc.batch_size, fit.me.world)
    if step % tc.eval_every == 0 or last:  # after the window's rates: not counted as training time
        fit.val_metrics = fit.evaluate(step)
    metrics = {**means, "step": step, "epoch": state["epoch"], "lr": lr_at(step - 1, tc),
               "restarts": len(state["resumes"]), **rates, **fit.val_metrics}
    state["history"].append(metrics)
    fit.events.add(metrics, step)
    if fit.me.rank == 0:
        _log(_step_line(step, tc.max_steps, metrics, tc.examples_per_step))
    fit.window.restart_clock()
    save = last or step - fit.last_checkpoint_step >= tc.checkpoint_every
    if save:  # every rank reaches this at the same step, so the collectives are safe
        _fold_into_state(state, fit.window, fit.pending, fit.precision, fit.me)
        fit.pending, fit.last_checkpoint_step, fit.checkpointed = [], step, True
        fit.events.flush()
    _report(metrics, fit.model, fit.optimizer, state if save else None, fit.me.rank)


def _end_pass(fit: _Fit) -> None:
    """The next pass starts: its trained positions start again."""
    spec, state = fit.spec, fit.state
    state["epoch"] += 1
    state["trained"], fit.pending = [], []
    if fit.me.rank == 0 and state["step"] < spec.cfg.train.max_steps:
        online = spec.costs is not None and spec.costs.teacher_params is not None
        _log(f"pass {state['epoch'] + 1} over the training rows"
             + (" (an online teacher labels them again)" if online else " (read again from the cache)"))


def _quiet_ray_train_logs() -> None:
    """One line per report is ours, not Ray's (Train V2 logs each at INFO: `ray_compat.train`)."""
    from gemini_ray.ray_compat.train import quiet_train_logs

    quiet_train_logs()
