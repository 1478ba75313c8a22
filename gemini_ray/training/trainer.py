"""Ray Train at the edge: the one place a TorchTrainer is built, fitted and resumed. Used by a distillation
run (`distill`, `ablate`) and by each Tune trial (`tune`).

    spec = run_spec(cfg, student.config.to_dict(), "causal", student.state_dict(), val_rows, ".../progress.json")
    trainer = build_trainer(cfg, spec, stream, name=cfg.run.name, storage_path=storage)
    result = fit(trainer, cfg, spec, where=out_dir)     # GeminiRayError on a failed or non-finite run
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from gemini_ray.config import Config
from gemini_ray.errors import GeminiRayError
from gemini_ray.losses import describe as describe_loss
from gemini_ray.training.train_worker import Costs, RunSpec, read_progress, train_loop_per_worker

if TYPE_CHECKING:
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

__all__ = ["run_spec", "build_trainer", "fit", "nonfinite_error"]


def run_spec(cfg: Config, hf_config: dict[str, Any], kind: str, init_weights: Any, val: dict[str, Any] | None,
             progress_path: str | None, started_at: float | None = None, plan: Any = None,
             resume_from: str | None = None, tensorboard_dir: str | None = None,
             teacher_params: tuple[int, int] | None = None) -> RunSpec:
    """A RunSpec for a new driver run. The initial weights (a state dict, or an ObjectRef of one already in
    the object store) and the held-out rows go into Ray's object store once; every worker fetches them.
    plan: the StreamPlan of the training stream (a resume then skips the rows it trained), or None.
    resume_from: a checkpoint directory to start from when Ray Train's own record was set aside
    (`data.resume.resume_point`). tensorboard_dir: where rank 0 writes TensorBoard event files (None: none).
    teacher_params: the online teacher's (body, head) matmul parameters, for its tokens/s and MFU (None:
    the run reads a cache). The peak MFU is against: run.peak_tflops, else a matmul probe here on the CPU
    (on a GPU run, each worker probes its GPU)."""
    import ray

    weights = init_weights if isinstance(init_weights, ray.ObjectRef) else ray.put(init_weights)
    return RunSpec(cfg=cfg, hf_config=hf_config, kind=kind, init_weights=weights,
                   val=ray.put(val) if val is not None else None, fit_id=uuid.uuid4().hex,
                   started_at=started_at or time.time(), progress_path=progress_path, plan=plan,
                   resume_from=resume_from, tensorboard_dir=tensorboard_dir, costs=_costs(cfg, teacher_params))


def _costs(cfg: Config, teacher_params: tuple[int, int] | None) -> Costs:
    from gemini_ray.training.throughput import matmul_tflops

    peak = cfg.run.peak_tflops or (None if cfg.train.use_gpu else matmul_tflops())
    devices = max(1, round(cfg.teacher.num_actors * cfg.teacher.num_gpus)) if cfg.teacher.num_gpus else 1
    return Costs(peak_tflops=peak, teacher_params=teacher_params, teacher_devices=devices,
                 teacher_peak_tflops=cfg.teacher.peak_tflops)


def build_trainer(cfg: Config, spec: RunSpec, stream: ray.data.Dataset, *, name: str, storage_path: str,
                  num_to_keep: int | None = 2, callbacks: list[Any] | None = None) -> TorchTrainer:
    """A TorchTrainer over `stream` with train.num_workers workers, checkpoints under <storage_path>/<name>
    (the same name and storage path resume), and train.max_failures worker-group restarts."""
    import ray.train
    import ray.train.torch  # noqa: F401  (registers the torch backend)
    from ray.train.torch import TorchTrainer

    from gemini_ray.ray_compat.train import patch_sigint

    patch_sigint()  # Ctrl-C during the fit: the controller aborts, then KeyboardInterrupt (ray_compat.train)
    t = cfg.train
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": spec},
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker={"CPU": t.cpus_per_worker or 1.0,
                                                                     **t.resources_per_worker}),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path, callbacks=callbacks or None,
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=num_to_keep),
                                       failure_config=ray.train.FailureConfig(max_failures=t.max_failures)),
        datasets={"train": stream},  # every rank evaluates all of val (an object in spec.val)
    )


def nonfinite_error(progress: dict[str, Any] | None, fit_id: str,
                    checkpoint_path: str | None) -> GeminiRayError | None:
    """The user's error for a worker's non-finite-loss stop (recorded in progress.json), or None."""
    if not progress or progress.get("fit_id") != fit_id or "nonfinite" not in progress:
        return None
    error = progress["nonfinite"]
    what = describe_loss(error["part"])
    if error.get("bad_checkpoint_step") is not None:
        return GeminiRayError(
            f"the {what} is {error['value']} at the first step after resuming from the checkpoint of step "
            f"{error['bad_checkpoint_step']}" + (f" ({checkpoint_path})" if checkpoint_path else "") + ": that "
            "checkpoint is damaged or was saved from a run that had diverged, so it is not a good one. Nothing was "
            "exported. Move that checkpoint folder out of the run folder and run the same command to resume from "
            "the one before it, or start over with a new run.name.")
    kept = (f"the last good checkpoint (step {error['last_good_checkpoint_step']}) is kept"
            + (f" at {checkpoint_path}" if checkpoint_path else "")) if error["last_good_checkpoint_step"] else \
        "no checkpoint had been written yet"
    return GeminiRayError(
        f"training stopped at step {error['step']}: the {what} is {error['value']}. Nothing was exported; {kept}"
        + ". Lower train.lr or raise train.warmup_steps, keep loss.cl_temperature and loss.kd_temperature "
        "well above 0 (e.g. 0.05 and 1.0), and check the teacher signal (a cache made from a diverged teacher "
        "holds NaN logits); then run again (a new run.name starts over, the same one resumes).")


def fit(trainer: TorchTrainer, cfg: Config, spec: RunSpec, where: str) -> ray.train.Result:
    """trainer.fit(), with its failures said as the user's errors: the worker group failed more than
    train.max_failures times, a loss became non-finite, or no checkpoint was written."""
    import ray.train

    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        last = [line for line in str(exc).splitlines() if line.strip()][-1:] or ["?"]
        raise GeminiRayError(
            f"training failed after {cfg.train.max_failures} restart(s) of the worker group (train.max_failures): "
            f"{last[0][:400]}. The latest checkpoint under '{where}' is kept: fix the cause and run the same "
            "command to resume, or raise train.max_failures if the cluster loses workers often.") from exc
    error = nonfinite_error(read_progress(spec.progress_path), spec.fit_id,
                            result.checkpoint.path if result.checkpoint else None)
    if error is not None:
        raise error
    if result.checkpoint is None:
        raise GeminiRayError("training finished without a checkpoint; see the worker log above.")
    return result


