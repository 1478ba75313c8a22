"""`gemini-ray tune`: Ray Tune over the training driver, searching λ, τ, K (and more) on the cached teacher signal.

    gemini-ray tune                                   # tune_spaces/quick.yaml on the demo corpus
    gemini-ray tune tune.space=tune_spaces/default.yaml tune.num_samples=32

The teacher runs at most once: if no cache matches the config, it is labelled first; every trial reads it.
So a space may search the student (student.*), the loss (loss.*) and the run (train.*), not the teacher
signal: a searched teacher.*, data.*, mining.* or label.* key is refused before anything starts (one search
per value, each with its own label; `jobs.search.SIGNAL_SECTIONS`). Each trial is a Tune function that
builds and fits its own TorchTrainer (Ray Train V2's Tune interop), named from the trial id, from the
student `distill` would start from for the trial's config (`jobs.student.make_student`). ASHA stops weak
trials on a held-out metric every trial reports (val/objective by default).
Writes <run.storage_path>/<tune.name>/results.csv, best_config.yaml, search.png and tune_summary.json
(local paths or URIs); running the same command again resumes an interrupted search.

A trial whose loss turns NaN or infinite is not retried (it would fail the same way): it reports its
tune.metric as NaN and the table marks it failed with the message.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import yaml

from gemini_ray.cluster.session import Session, configure_data_context, start_session
from gemini_ray.config import Config, build_config, config_to_dict
from gemini_ray.data.budgets import CACHE_READ_CPUS
from gemini_ray.data.cache import FoundCache, find_cache
from gemini_ray.errors import GeminiRayError
from gemini_ray.jobs.search import SearchSpace, rows_longest_trial, tune_distributions, validate_space
from gemini_ray.metric_names import NONFINITE, OBJECTIVE_EMBEDDING, VAL_OBJECTIVE, VAL_TEACHER_AGREEMENT
from gemini_ray.paths import absolute, atomic_path, atomic_write_json, atomic_write_text, join, read_json

if TYPE_CHECKING:
    import pandas as pd
    from ray.tune import ResultGrid
    from torch import nn

__all__ = ["tune"]


# --------------------------------------------------------------------------- one trial (runs in Tune's process)


def _count_attempt(location: str) -> int:
    attempts = (read_json(location) or {}).get("attempts", 0) + 1
    atomic_write_json(location, {"attempts": attempts})
    return attempts


def _trial(params: dict[str, Any], cfg: Config, session: Session, cache: FoundCache, student: nn.Module,
           trials_dir: str) -> None:
    """One trial: the training driver. Builds a TorchTrainer on the cached signal and fits it, from the
    student distill would start from for the trial's config (`_trial_student`)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from gemini_ray.data.resume import StreamPlan
    from gemini_ray.data.pipeline import read_cached_signal
    from gemini_ray.models.build import count_parameters
    from gemini_ray.training.train_worker import read_progress
    from gemini_ray.training.trainer import build_trainer, nonfinite_error, run_spec

    trial_id = ray.tune.get_context().get_trial_id()
    configure_data_context()  # as distill's driver: the cache's rows in the same order, so a trial and
    # `distill --config best_config.yaml` train on the same batches
    name = f"trial-{trial_id}"
    _count_attempt(join(trials_dir, name, "attempts.json"))  # > 1: Tune retried it (tune.max_failures)
    trial_cfg = build_config(base=cfg, sample=params)
    student = _trial_student(trial_cfg, cfg, session, student)
    atomic_write_json(join(trials_dir, name, "student.json"), {"parameters": count_parameters(student)})
    plan = StreamPlan.remote()  # a retried trial's stream leaves out the rows it trained before its checkpoint
    stream, val = read_cached_signal(cache.directory, cache.manifest, trial_cfg.loss.num_negatives, plan,
                                     seed=trial_cfg.train.seed, shuffle_first=trial_cfg.train.shuffle_first_pass)
    spec = run_spec(trial_cfg, student.config.to_dict(), session.kind, student.state_dict(), val,
                    join(trials_dir, name, "progress.json"), plan=plan)
    trainer = build_trainer(trial_cfg, spec, stream, name=name, storage_path=trials_dir, num_to_keep=1,
                            callbacks=[TuneReportCallback()])
    trainer.fit()  # a retried trial (tune.max_failures) resumes this run from its checkpoint
    error = nonfinite_error(read_progress(spec.progress_path), spec.fit_id, None)
    if error is not None:  # deterministic: report it rather than raise, so that Tune does not retry it
        steps_done = read_progress(spec.progress_path)["step"]
        ray.tune.report({cfg.tune.metric: float("nan"), NONFINITE: str(error), "step": steps_done})


def _trial_student(trial_cfg: Config, cfg: Config, session: Session, base_student: nn.Module) -> nn.Module:
    """The student `distill --config <the trial's config>` would start from: the driver's, built once for the
    base config, when the trial's sample changes none of the keys it is built from (student.*, train.seed);
    else its own, built here by the same `make_student` (the teacher's weight files, or
    student.from_pretrained, read from this process)."""
    from gemini_ray.jobs.student import check_student, make_student, same_student

    if same_student(trial_cfg, cfg):
        check_student(trial_cfg, session, base_student)  # a searched loss key may still be one distill refuses
        return base_student
    return make_student(trial_cfg, session)


def _student_parameters(trials_dir: str, trial_id: str) -> int | None:
    """The parameter count of a trial's student, as the trial recorded it (None: it never got that far)."""
    return (read_json(join(trials_dir, f"trial-{trial_id}", "student.json")) or {}).get("parameters")


# --------------------------------------------------------------------------- the search


def _check_space(cfg: Config, space: SearchSpace) -> None:
    """What needs neither Ray nor the teacher: the space searches no key of the teacher signal, its extremes
    are valid configs (K against the config's K_max; the cache's is checked once found), and a held-out metric
    has held-out documents."""
    if cfg.tune.metric.startswith("val/") and cfg.data.val_fraction == 0:
        raise GeminiRayError(f"tune.metric={cfg.tune.metric} needs held-out documents; set data.val_fraction > 0.")
    validate_space(cfg, space, cfg.label.max_negatives)


def _search_cache(cfg: Config, space: SearchSpace, session: Session) -> FoundCache:
    """The cache every trial reads: found, or labelled now (the teacher's one pass)."""
    from gemini_ray.jobs.labelling import make_cache

    rows = rows_longest_trial(cfg, space)  # a cache labelled with label.scope=run must hold the longest trial
    cache = find_cache(cfg, session.identity, rows)
    if cache is None:
        print("[gemini-ray] no teacher-signal cache matches this config: labelling once before the search")
        make_cache(cfg, session, rows=rows)
        cache = find_cache(cfg, session.identity, rows)
    validate_space(cfg, space, cache.manifest["identity"]["max_negatives"])
    if not cache.manifest["shards_val"] and cfg.tune.metric.startswith("val/"):
        raise GeminiRayError(f"the cache at '{cache.directory}' holds no held-out rows; "
                             "label it with data.val_fraction > 0.")
    check_agreement_rows(cfg, cache.manifest["corpus"].get("val_examples", 0))
    return cache


def check_agreement_rows(cfg: Config, held_out_examples: int) -> None:
    """A search ranked by the teacher agreement needs 3 held-out spans (2 examples): with fewer, every trial's
    metric is NaN and the search ranks nothing. Raises before any trial runs."""
    ranked_by = OBJECTIVE_EMBEDDING[cfg.tune.objective_embedding] if cfg.tune.metric == VAL_OBJECTIVE \
        else cfg.tune.metric
    if ranked_by == VAL_TEACHER_AGREEMENT and held_out_examples < 2:
        raise GeminiRayError(
            f"tune.metric={cfg.tune.metric} ranks trials by {VAL_TEACHER_AGREEMENT}, which needs at least 2 "
            f"held-out examples (3 spans) and this corpus has {held_out_examples}; raise data.val_fraction, "
            "use a larger corpus, or set tune.objective_embedding=retrieval.")


def _floors(cfg: Config) -> str:
    """The language-model floors of val/objective as the search's first line states them ('' without one)."""
    by_step = sorted(cfg.tune.max_val_loss_kd_by_step.items())
    parts = [f"{floor:.4g} from step {step}" for step, floor in by_step]
    if cfg.tune.max_val_loss_kd is not None:
        parts.insert(0, f"{cfg.tune.max_val_loss_kd:.4g}" + (f" before step {by_step[0][0]}" if by_step else ""))
    return f" (a trial whose held-out KD loss is above {', '.join(parts)} ranks behind the rest)" if parts else ""


def _max_concurrent(cfg: Config) -> int:
    import ray

    from gemini_ray.cluster.placement import demands, plan_totals

    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    res = ray.cluster_resources()
    if cfg.train.use_gpu:
        return max(1, int(res.get("GPU", 0) // cfg.train.num_workers))
    per_trial = plan_totals(demands(cfg, cached=True))["CPU"] + CACHE_READ_CPUS  # + a second read task's worth
    return max(1, int(res.get("CPU", 1) // per_trial))


def _tuner(cfg: Config, space: SearchSpace, trainable: Any, storage: str):
    """A new Tuner with ASHA on tune.metric, or the interrupted search of the same name, restored."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from gemini_ray.cluster.placement import alive_nodes, check_fits, demands

    if cfg.run.check_resources:  # one trial must fit, else every trial waits on Ray Data for a free CPU
        check_fits(demands(cfg, cached=True), alive_nodes())
    concurrent = _max_concurrent(cfg)
    print(f"[gemini-ray] searching {list(space.search)} with {cfg.tune.num_samples} samples"
          + (" after the base config" if cfg.tune.try_base_config else "") + ", "
          f"{concurrent} trial(s) at a time, ASHA on {cfg.tune.metric}"
          + (f" (embedding half: {OBJECTIVE_EMBEDDING[cfg.tune.objective_embedding]})"
             if cfg.tune.metric == VAL_OBJECTIVE else "")
          + _floors(cfg))
    experiment = join(storage, cfg.tune.name)
    if tune.Tuner.can_restore(experiment):
        print(f"[gemini-ray] resuming the search at {experiment}")
        return tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
    reports = math.ceil(cfg.train.max_steps / cfg.train.log_every)
    scheduler = ASHAScheduler(time_attr="training_iteration", metric=cfg.tune.metric, mode=cfg.tune.mode,
                              max_t=reports, grace_period=min(cfg.tune.grace_period, reports),
                              reduction_factor=cfg.tune.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=tune_distributions(space),
        tune_config=tune.TuneConfig(num_samples=cfg.tune.num_samples + cfg.tune.try_base_config,
                                    search_alg=sampler(cfg, space, concurrent), scheduler=scheduler),
        run_config=tune.RunConfig(name=cfg.tune.name, storage_path=storage, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures)),
    )


def sampler(cfg: Config, space: SearchSpace, concurrent: int) -> Any:
    """Tune's random and grid sampler, seeded by tune.seed, running at most `concurrent` trials at once; with
    tune.try_base_config its first trial is the config's own values of the searched keys."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    base = {}
    for key in space.search:  # dotted keys, all checked against the config when the space loaded
        section, name = key.split(".", 1)
        base[key] = getattr(getattr(cfg, section), name)
    return BasicVariantGenerator(max_concurrent=concurrent, random_state=cfg.tune.seed,
                                 points_to_evaluate=[base] if cfg.tune.try_base_config else None)


# --------------------------------------------------------------------------- results


def _results_table(grid: ResultGrid, trials_dir: str, max_failures: int) -> pd.DataFrame:
    """One row per trial, failed ones included (a trial that never reported is missing from Tune's own
    dataframe): config/<key> columns, the last reported metrics, retries (Tune ran the trial again after
    its process died or it raised), restarts (resumes from a checkpoint inside it), student_parameters (its
    student's, which a space searching student.* keys varies), error, error_message."""
    import pandas as pd

    rows = []
    for r in grid:
        row = {f"config/{k}": v for k, v in r.config.items()}
        row.update({k: v for k, v in (r.metrics or {}).items() if not isinstance(v, dict)})
        row.setdefault("restarts", 0)
        attempts = read_json(join(trials_dir, f"trial-{row['trial_id']}", "attempts.json")) \
            if "trial_id" in row else None
        row["retries"] = max_failures if r.error is not None else max(0, (attempts or {}).get("attempts", 1) - 1)
        row["student_parameters"] = _student_parameters(trials_dir, row["trial_id"]) if "trial_id" in row else None
        nonfinite = row.pop(NONFINITE, None)
        row["error"] = r.error is not None or nonfinite is not None  # failed (after tune.max_failures retries)
        row["error_message"] = (str(r.error).strip().splitlines()[-1][:300] if r.error is not None
                                else (nonfinite or "")[:300])
        rows.append(row)
    return pd.DataFrame(rows)


def _plot(df: pd.DataFrame, space: SearchSpace, metric: str, location: str) -> None:
    """The metric against each searched key, one panel each; loguniform keys on a log axis labelled at
    1, 2 and 5 x 10^n only (matplotlib's default labels its minor ticks too, printed on top of each other)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    keys = list(space.search)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = df[f"config/{key}"]
        ax.scatter(values.astype(str) if values.dtype == object else values, df[metric], c="tab:blue")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        if "loguniform" in space.search[key]:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        elif "choice" in space.search[key] and values.dtype != object:
            ax.set_xticks(sorted(space.search[key]["choice"]))  # K in {2, 4}: ticks at 2 and 4, not 2.5
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} of each trial (last report)")
    fig.tight_layout()
    with atomic_path(location) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _write_results(cfg: Config, space: SearchSpace, grid: ResultGrid, out: str, trials_dir: str) -> dict[str, Any]:
    """results.csv, best_config.yaml and search.png under `out`; returns the table and the best trial's id,
    config and metric."""
    metric = cfg.tune.metric
    df = _results_table(grid, trials_dir, cfg.tune.max_failures)
    with atomic_path(join(out, "results.csv")) as tmp:
        df.to_csv(tmp, index=False)
    if metric not in df.columns or df[metric].isna().all():
        errors = df.loc[df["error"], "error_message"].tolist()
        raise GeminiRayError(f"no trial reported {metric} ({len(errors)} of {len(df)} failed; first error: "
                             f"{errors[0] if errors else 'none'}). Results so far: {join(out, 'results.csv')}.")
    best = grid.get_best_result(metric=metric, mode=cfg.tune.mode)
    best_cfg = build_config(base=cfg, sample=best.config)
    atomic_write_text(join(out, "best_config.yaml"),
                      f"# best of {len(df)} trials by {metric} = {best.metrics[metric]:.5f}\n"
                      + yaml.safe_dump(config_to_dict(best_cfg), sort_keys=False))
    _plot(df, space, metric, join(out, "search.png"))
    return {"table": df, "trial_id": best.metrics.get("trial_id"), "config": best.config, metric: best.metrics[metric]}


def tune(cfg: Config, space: SearchSpace) -> dict[str, Any]:
    """Label once (if needed), then search. Returns a summary (also written as tune_summary.json). The
    search's trial folder is held for the whole command: a second search of the same tune.name and storage
    path is refused at once (`run_lock`)."""
    from gemini_ray.cluster.run_lock import hold_run_folder

    with hold_run_folder(join(absolute(cfg.run.storage_path), f"{cfg.tune.name}-trials")):
        return _tune(cfg, space)


def _tune(cfg: Config, space: SearchSpace) -> dict[str, Any]:
    import ray
    from ray import tune as ray_tune

    from gemini_ray.cluster.placement import PlacementGroupSweeper, with_worker_cpus
    from gemini_ray.data.pipeline import teacher_token_counter
    from gemini_ray.jobs.student import make_student

    t_start = time.perf_counter()
    cfg = with_worker_cpus(cfg, cached=True, nodes=[], searching=True)  # trials share the CPUs
    _check_space(cfg, space)  # setup: a bad space fails before the teacher loads
    session = start_session(cfg)
    cache = _search_cache(cfg, space, session)
    # the base config's student, as distill builds it; a trial whose sample changes student.* or train.seed
    # builds its own (`_trial_student`)
    student = make_student(cfg, session)
    tokens_before = ray.get(teacher_token_counter().total.remote())
    storage = absolute(cfg.run.storage_path)
    out, trials_dir = join(storage, cfg.tune.name), join(storage, f"{cfg.tune.name}-trials")
    # the session (teacher metadata, tokenizer) goes with every trial: one that builds its own student needs it
    trainable = ray_tune.with_parameters(_trial, cfg=cfg, session=session, cache=cache, student=student,
                                         trials_dir=trials_dir)
    # the driver only waits on its TorchTrainer: no CPU (a fraction would starve Ray Data tasks that need a whole one)
    trainable = ray_tune.with_resources(trainable, {"cpu": 0, "memory": 256 * 1024**2})
    with PlacementGroupSweeper() as sweeper:  # CPUs that trials stopped by Tune leave reserved: freed
        grid = _tuner(cfg, space, trainable, storage).fit()  # fit: every trial

    best = _write_results(cfg, space, grid, out, trials_dir)  # validate: the table, the best config, the plot
    df, metric = best.pop("table"), cfg.tune.metric
    tokens_during = ray.get(teacher_token_counter().total.remote()) - tokens_before
    summary = {
        "trials": len(df), "errored": int(df["error"].sum()), "retries": int(df["retries"].sum()),
        "metric": metric, "best": best, "cache": cache.directory,
        "teacher_tokens_in_cache": cache.manifest["teacher_tokens"], "teacher_tokens_during_search": tokens_during,
        "training_iterations": int(df["training_iteration"].sum()),
        "examples_trained": int(sum(r.metrics.get("step", 0) for r in grid)) * cfg.train.examples_per_step,
        "student_parameters": _student_parameters(trials_dir, best["trial_id"]),  # the best trial's student
        "results": join(out, "results.csv"), "best_config": join(out, "best_config.yaml"),
        "plot": join(out, "search.png"), "orphaned_placement_groups_removed": sweeper.removed,
        "wall_time_s": time.perf_counter() - t_start,
    }
    atomic_write_json(join(out, "tune_summary.json"), summary, default=str)
    print(f"[gemini-ray] {len(df)} trials; best {metric} = {best[metric]:.4f} with {best['config']}")
    print(f"[gemini-ray] teacher tokens: {cache.manifest['teacher_tokens']} in the cache (one pass), "
          f"{tokens_during} during the search")
    if sweeper.removed:
        print(f"[gemini-ray] freed {sweeper.removed} placement group(s) left reserved by trials Tune stopped")
    print(f"[gemini-ray] results: {summary['results']}\n[gemini-ray] best config: {summary['best_config']}"
          f"\n[gemini-ray] plot: {summary['plot']}")
    return summary
