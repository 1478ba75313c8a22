"""`gemini-ray tune`: Ray Tune over the training driver, searching λ, τ, K (and more) on the cached teacher signal.

    gemini-ray tune                                   # tune_spaces/quick.yaml on the demo corpus
    gemini-ray tune tune.space=tune_spaces/default.yaml tune.num_samples=32

The teacher runs at most once: if no cache matches the config, `label` makes it first; every trial reads it.
Each trial is a Tune function that builds and fits its own TorchTrainer (Ray Train V2's Tune interop), named
from the trial id. ASHA stops weak trials on a held-out metric every trial reports (val/loss_kd by default).
Writes <run.storage_path>/<tune.name>/results.csv, best_config.yaml and search.png; running the same
command again resumes an interrupted search.
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

import yaml

from gemini_ray.config import Config, all_keys, apply_overrides, config_from_dict, config_to_dict, read_yaml
from gemini_ray.errors import ConfigError, GeminiRayError

__all__ = ["load_space", "tune_distributions", "run_tune"]

_DISTRIBUTIONS = ("uniform", "loguniform", "choice", "grid", "randint")


def load_space(path: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Read a search space: {dotted key: {distribution: args}} for searched keys, plain values for fixed ones.

    Every key must be a config key; every distribution's bounds must pass the config's validation."""
    raw = read_yaml(path)
    keys = all_keys()
    search, fixed = {}, {}
    for key, value in raw.items():
        if key not in keys:
            import difflib

            close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"search space '{path}': '{key}' is not a config key.{hint}")
        if isinstance(value, dict):
            if len(value) != 1 or next(iter(value)) not in _DISTRIBUTIONS:
                raise ConfigError(f"search space '{path}': '{key}' must be one of {list(_DISTRIBUTIONS)}, "
                                  f"e.g. {{uniform: [0.2, 0.8]}}; got {value!r}")
            kind, args = next(iter(value.items()))
            if not isinstance(args, list) or not args or (kind in ("uniform", "loguniform", "randint") and len(args) != 2):
                raise ConfigError(f"search space '{path}': '{key}: {kind}' needs a list "
                                  f"{'[low, high]' if kind in ('uniform', 'loguniform', 'randint') else 'of values'}")
            if kind in ("uniform", "loguniform", "randint") and not args[0] < args[1]:
                raise ConfigError(f"search space '{path}': '{key}: {kind}' needs low < high, got {args}")
            if kind == "loguniform" and args[0] <= 0:
                raise ConfigError(f"search space '{path}': '{key}: loguniform' needs low > 0, got {args}")
            search[key] = {kind: args}
        else:
            fixed[key] = value
    if not search:
        raise ConfigError(f"search space '{path}' searches no key; give at least one distribution.")
    return search, fixed


def _extremes(dist: dict[str, Any]) -> list[Any]:
    kind, args = next(iter(dist.items()))
    if kind == "randint":
        return [args[0], args[1] - 1]  # Tune's randint excludes the upper bound
    return list(args) if kind in ("choice", "grid") else [args[0], args[1]]


def validate_space(base: dict[str, Any], search: dict[str, dict], max_negatives: int | None, path: str) -> None:
    """Every extreme value of every distribution must make a valid config (λ in [0, 1], τ > 0, ...)."""
    for key, dist in search.items():
        for value in _extremes(dist):
            try:
                cfg = config_from_dict(apply_overrides(base, [f"{key}={json.dumps(value)}"]))
            except ConfigError as exc:
                raise ConfigError(f"search space '{path}': {key}={value} is invalid: {exc}") from None
            if max_negatives is not None and cfg.loss.num_negatives > max_negatives:
                raise ConfigError(
                    f"search space '{path}': loss.num_negatives={cfg.loss.num_negatives} exceeds K_max="
                    f"{max_negatives} mined into the cache. Search K <= {max_negatives} or raise label.max_negatives."
                )


def tune_distributions(search: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """YAML distributions -> Ray Tune search-space objects."""
    from ray import tune

    out = {}
    for key, dist in search.items():
        kind, args = next(iter(dist.items()))
        out[key] = {"uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
                    "choice": tune.choice, "grid": tune.grid_search, "randint": lambda a: tune.randint(*a)}[kind](args)
    return out


def _trial(params: dict[str, Any], base: dict[str, Any], cache_dir: str, manifest: dict[str, Any],
           hf_config: dict[str, Any], kind: str, init_weights: Any, storage: str) -> None:
    """One trial: the training driver. Builds a TorchTrainer on the cached signal and fits it."""
    import ray
    import ray.data
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from gemini_ray.pipeline import read_cache, to_arrays
    from gemini_ray.train_worker import train_loop_per_worker

    from gemini_ray.distill import raise_if_nonfinite
    from gemini_ray.train_worker import read_progress

    trial_id = ray.tune.get_context().get_trial_id()
    ray.data.DataContext.get_current().enable_progress_bars = False  # the worker prints its own lines
    init_weights = ray.put(init_weights)  # with_parameters hands over the value; workers fetch it by reference
    fit_id, progress_path = uuid.uuid4().hex, f"{storage}/trial-{trial_id}/progress.json"
    _count_attempt(f"{storage}/trial-{trial_id}/attempts.json")  # > 1: Tune retried it (tune.max_failures)
    cfg = config_from_dict(apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in params.items()]))
    train = read_cache(cache_dir, manifest["shards_train"], cfg.loss.num_negatives)
    val = to_arrays(read_cache(cache_dir, manifest["shards_val"], cfg.loss.num_negatives))  # small; read once
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": config_to_dict(cfg), "hf_config": hf_config, "kind": kind,
                           "init_weights": init_weights, "val": ray.put(val),
                           "fit_id": fit_id, "started_at": time.time(), "progress_path": progress_path},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                               resources_per_worker={"CPU": cfg.train.cpus_per_worker,
                                                                     **cfg.train.resources_per_worker}),
        run_config=ray.train.RunConfig(name=f"trial-{trial_id}", storage_path=storage,
                                       callbacks=[TuneReportCallback()],
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                                       failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures)),
        datasets={"train": train},
    )
    trainer.fit()  # a retried trial (tune.max_failures) resumes this run from its checkpoint
    raise_if_nonfinite(read_progress(progress_path), fit_id, None)  # fails the trial: the table marks it


def _max_concurrent(cfg: Config) -> int:
    import ray

    from gemini_ray.pipeline import CACHE_READ_CPUS
    from gemini_ray.placement import demands, plan_totals

    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    res = ray.cluster_resources()
    if cfg.train.use_gpu:
        return max(1, int(res.get("GPU", 0) // cfg.train.num_workers))
    per_trial = plan_totals(demands(cfg, cached=True))["CPU"] + CACHE_READ_CPUS  # + a second read task's worth
    return max(1, int(res.get("CPU", 1) // per_trial))


def _plot(df, keys: list[str], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        col = f"config/{key}"
        ax.scatter(df[col], df[metric], c="tab:blue")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        if key in ("loss.cl_temperature", "train.lr"):
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} of each trial (last report)")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _count_attempt(path: str) -> int:
    from gemini_ray.cache import load_json_file, save_json_file

    attempts = (load_json_file(path) or {}).get("attempts", 0) + 1
    save_json_file(path, {"attempts": attempts})
    return attempts


def _results_table(grid, trials_storage: str, max_failures: int) -> "pd.DataFrame":
    """One row per trial, failed ones included (a trial that never reported is missing from Tune's own
    dataframe): config/<key> columns, the last reported metrics, retries (Tune ran the trial again after
    its process died or it raised), restarts (resumes from a checkpoint inside it), error, error_message."""
    import pandas as pd

    from gemini_ray.cache import load_json_file

    rows = []
    for r in grid:
        row = {f"config/{k}": v for k, v in r.config.items()}
        row.update({k: v for k, v in (r.metrics or {}).items() if not isinstance(v, dict)})
        row.setdefault("restarts", 0)
        attempts = load_json_file(f"{trials_storage}/trial-{row['trial_id']}/attempts.json") if "trial_id" in row \
            else None
        row["retries"] = max_failures if r.error is not None else max(0, (attempts or {}).get("attempts", 1) - 1)
        row["error"] = r.error is not None  # failed after tune.max_failures retries
        row["error_message"] = str(r.error).strip().splitlines()[-1][:300] if r.error is not None else ""
        rows.append(row)
    return pd.DataFrame(rows)


def run_tune(config_path: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Label once (if needed), then search. Returns a summary (also written as tune_summary.json).

    Precedence: defaults <- --config file <- the space file's fixed values <- command-line overrides."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from gemini_ray.checkpoint import atomic_write_text
    from gemini_ray.distill import publish, run_dir
    from gemini_ray.placement import alive_nodes, check_fits, demands, is_uri
    from gemini_ray.label import find_cache, label, setup
    from gemini_ray.models import build_student, count_parameters
    from gemini_ray.pipeline import teacher_token_counter

    overrides = overrides or []
    raw = read_yaml(config_path) if config_path else {}
    space_path = config_from_dict(apply_overrides(raw, overrides)).tune.space
    search, fixed = load_space(space_path)
    base = apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in fixed.items()] + overrides)
    cfg = config_from_dict(base)
    if cfg.tune.metric.startswith("val/") and cfg.data.val_fraction == 0:
        raise GeminiRayError(f"tune.metric={cfg.tune.metric} needs held-out documents; set data.val_fraction > 0.")
    validate_space(base, search, cfg.label.max_negatives, cfg.tune.space)

    s, teacher = setup(cfg, teacher_model_needed=True)
    cache = find_cache(cfg, s)
    if cache is None:
        print("[gemini-ray] no teacher-signal cache matches this config: labelling once before the search")
        label(cfg)
        cache = find_cache(cfg, s)
    cache_dir, manifest = cache
    validate_space(base, search, manifest["identity"]["max_negatives"], cfg.tune.space)
    if not manifest["shards_val"] and cfg.tune.metric.startswith("val/"):
        raise GeminiRayError(f"the cache at '{cache_dir}' holds no held-out rows; label it with data.val_fraction > 0.")
    student = build_student(teacher, s.kind, cfg.student, seed=cfg.train.seed)
    init_weights = ray.put(student.state_dict())
    tokens_before = ray.get(teacher_token_counter().total.remote())

    storage = run_dir(cfg).rsplit("/", 1)[0]
    remote = f"{storage}/{cfg.tune.name}" if is_uri(storage) else None  # results are written here, then copied
    out = Path(tempfile.mkdtemp(prefix="gemini-ray-tune-")) if remote else Path(storage) / cfg.tune.name
    where = remote or str(out)
    trainable = tune.with_parameters(_trial, base=base, cache_dir=cache_dir, manifest=manifest,
                                     hf_config=student.config.to_dict(), kind=s.kind, init_weights=init_weights,
                                     storage=f"{storage}/{cfg.tune.name}-trials")
    # the driver only waits on its TorchTrainer: no CPU (a fraction would starve Ray Data tasks that need a whole one)
    trainable = tune.with_resources(trainable, {"cpu": 0, "memory": 256 * 1024**2})
    reports = math.ceil(cfg.train.max_steps / cfg.train.log_every)
    scheduler = ASHAScheduler(time_attr="training_iteration", metric=cfg.tune.metric, mode=cfg.tune.mode,
                              max_t=reports, grace_period=min(cfg.tune.grace_period, reports),
                              reduction_factor=cfg.tune.reduction_factor)
    if cfg.run.check_resources:  # one trial must fit, else every trial waits on Ray Data for a free CPU
        check_fits(demands(cfg, cached=True), alive_nodes())
    concurrent = _max_concurrent(cfg)
    experiment = f"{storage}/{cfg.tune.name}"
    if tune.Tuner.can_restore(experiment):
        print(f"[gemini-ray] resuming the search at {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=tune_distributions(search),
            tune_config=tune.TuneConfig(num_samples=cfg.tune.num_samples, max_concurrent_trials=concurrent,
                                        scheduler=scheduler),
            run_config=tune.RunConfig(name=cfg.tune.name, storage_path=storage, verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures)),
        )
    print(f"[gemini-ray] searching {list(search)} with {cfg.tune.num_samples} samples, "
          f"{concurrent} trial(s) at a time, ASHA on {cfg.tune.metric}")
    grid = tuner.fit()

    df = _results_table(grid, f"{storage}/{cfg.tune.name}-trials", cfg.tune.max_failures)
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".csv", dir=out)
    os.close(fd)
    df.to_csv(tmp, index=False)
    os.replace(tmp, out / "results.csv")
    if cfg.tune.metric not in df.columns or df[cfg.tune.metric].isna().all():
        errors = [str(r.error).splitlines()[-1][:300] for r in grid if r.error is not None]
        publish(out, remote)
        raise GeminiRayError(f"no trial reported {cfg.tune.metric} ({len(errors)} of {len(df)} failed; first error: "
                             f"{errors[0] if errors else 'none'}). Results so far: {where}/results.csv.")
    best = grid.get_best_result(metric=cfg.tune.metric, mode=cfg.tune.mode)
    best_cfg = config_from_dict(apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in best.config.items()]))
    atomic_write_text(out / "best_config.yaml",
                      f"# best of {len(df)} trials by {cfg.tune.metric} = {best.metrics[cfg.tune.metric]:.5f}\n"
                      + yaml.safe_dump(config_to_dict(best_cfg), sort_keys=False))
    _plot(df, list(search), cfg.tune.metric, out / "search.png")
    tokens_during = ray.get(teacher_token_counter().total.remote()) - tokens_before
    summary = {
        "trials": len(df), "errored": int(df["error"].sum()), "retries": int(df["retries"].sum()),
        "metric": cfg.tune.metric,
        "best": {"config": best.config, cfg.tune.metric: best.metrics[cfg.tune.metric]},
        "cache": cache_dir,
        "teacher_tokens_in_cache": manifest["teacher_tokens"],
        "teacher_tokens_during_search": tokens_during,
        "training_iterations": int(df["training_iteration"].sum()),
        "examples_trained": int(sum(r.metrics.get("step", 0) for r in grid)) * cfg.train.batch_size,
        "student_parameters": count_parameters(student),
        "results": f"{where}/results.csv", "best_config": f"{where}/best_config.yaml", "plot": f"{where}/search.png",
    }
    atomic_write_text(out / "tune_summary.json", json.dumps(summary, indent=1, default=str))
    publish(out, remote)
    print(f"[gemini-ray] {len(df)} trials; best {cfg.tune.metric} = {best.metrics[cfg.tune.metric]:.4f} "
          f"with {best.config}")
    print(f"[gemini-ray] teacher tokens: {manifest['teacher_tokens']} in the cache (one pass), "
          f"{tokens_during} during the search")
    print(f"[gemini-ray] results: {where}/results.csv\n[gemini-ray] best config: {where}/best_config.yaml"
          f"\n[gemini-ray] plot: {where}/search.png")
    return summary
