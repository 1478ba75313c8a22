"""`gemini-ray curve`: one student trained, then evaluated at every checkpoint: where training takes it.

    gemini-ray curve --config configs/quality.yaml label.use=require   # `make quality`, after `gemini-ray label`
    gemini-ray curve train.max_steps=120 train.checkpoint_every=30

Distils as `gemini-ray distill` does (the same run directory: the same command resumes), keeping every
checkpoint, then runs `gemini-ray eval`'s protocol on the untrained student (step 0), on each checkpoint
and on the teacher. Writes to <storage_path>/<name>-curve (or --out):

* curve.json: every evaluation row by step, the held-out metrics logged during training, the targets;
* curve.md: the table, the targets met or not at the last checkpoint (embedding metrics with the paired
  interval against the untrained student), and for a target not yet met the step at which the line
  through the last checkpoints reaches it (extrapolated, and labelled so);
* curve.png: perplexity, KL, top-1 agreement, Lee and RT against the step, with the teacher's values and
  the goals.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from gemini_ray.cluster.run_lock import hold_run_folder
from gemini_ray.cluster.session import start_session
from gemini_ray.config import Config, LossConfig, TrainConfig, build_config
from gemini_ray.errors import GeminiRayError
from gemini_ray.evaluation.targets import TARGETS, check_targets, extrapolate_step, goal_of, metric_value
from gemini_ray.jobs.distill_run import export, export_checkpoints, export_untrained, fit_student, prepare, summarize
from gemini_ray.jobs.evaluate import (evaluate_students, markdown_table, noise_verdict, paired_differences,
                                       rate_budget, rate_label)
from gemini_ray.metric_names import VAL_LOSS_KD, VAL_OBJECTIVE, VAL_RETRIEVAL, VAL_TEACHER_AGREEMENT
from gemini_ray.paths import (absolute, atomic_path, atomic_write_json, atomic_write_text, check_output_dir,
                              check_writable, is_uri, join, make_output_dir, run_dir)
from gemini_ray.training.run_record import check_resume

__all__ = ["curve", "curve_markdown", "checkpoint_steps", "forecasts", "step_name"]

PANELS = (("lm.perplexity", "held-out perplexity (log)", True), ("lm.kl_to_teacher", "KL to teacher (nats)", False),
          ("lm.teacher_top1_agreement", "top-1 agreement", False), ("lee_spearman", "Lee Spearman", False),
          ("rt_accuracy", "Rotten Tomatoes accuracy", False))


def checkpoint_steps(t: TrainConfig) -> list[int]:
    """The steps an uninterrupted run checkpoints at: the first logged step (train.log_every) at least
    train.checkpoint_every after the previous checkpoint, and the last step (as `train_worker` does)."""
    steps, last = [], 0
    for step in range(1, t.max_steps + 1):
        if step == t.max_steps or (step % t.log_every == 0 and step - last >= t.checkpoint_every):
            steps.append(step)
            last = step
    return steps


def step_name(step: int) -> str:
    return f"step {step}"


def forecasts(rows: dict[int, dict[str, Any]], teacher: dict[str, Any]) -> dict[str, float | None]:
    """For each target that changes with training: the step at which it is (or, extrapolated through the
    last checkpoints, would be) reached; None when the curve is not heading there. An embedding target is
    reached where both its teacher goal and the untrained student's value (step 0) are."""
    out = {}
    steps = sorted(rows)
    for target in TARGETS:
        if target.key.startswith("vs_teacher."):
            continue  # size and speed do not change with training
        goal = goal_of(target, teacher, rows.get(0))
        if goal is None:
            continue
        values = [metric_value(rows[s], target.key) for s in steps]
        out[target.key] = extrapolate_step(steps, values, goal, target.higher_is_better, target.log_value)
    return out


def loss_label(loss: LossConfig) -> str:
    """The loss a curve trained with, in one line: which terms, their weights and the balance."""
    if loss.objective == "lm":
        return "next-token cross-entropy on the corpus (loss.objective=lm, no teacher)"
    rep = f" + {loss.rep_weight:g}·L_rep ({loss.rep_form})" if loss.rep_weight > 0 else ""
    negatives = f"K = {loss.num_negatives} mined" + (" + in-batch" if loss.in_batch_negatives else "")
    return (f"{loss.lambda_kd:g}·L_KD + {1 - loss.lambda_kd:g}·L_CL{rep}, balance {loss.balance}, "
            f"KD T = {loss.kd_temperature:g} ({loss.kd_form}), τ = {loss.cl_temperature:g}, {negatives} negatives")


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"


def curve_markdown(teacher: dict[str, Any], rows: dict[int, dict[str, Any]], targets: list[dict[str, Any]],
                   ahead: dict[str, float | None], budget: dict[str, Any]) -> str:
    last = max(rows)
    window = budget.get("seq_length", budget["span_length"])  # curves made before windows: spans were windows
    head = (f"Budget: {budget['max_steps']} steps x {budget['batch_size']} examples of two {window}-token KD "
            f"windows ({budget['span_length']}-token contrastive spans; corpus {budget['corpus']}), "
            f"{rate_label(budget)}, seed {budget['seed']}; "
            f"wall time {budget['wall_time_min']:.0f} min.\nLoss: {budget['loss']}.\n\n")
    table = markdown_table({"teacher": teacher, **{step_name(s): rows[s] for s in sorted(rows)}})
    lines = [f"\nTargets at step {last}:\n"]
    for t in targets:
        mark = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        goal = "" if t["goal"] is None else f" (goal {_number(t['goal'])})"
        text = f"* {mark}: {t['target']}: {_number(t['value'])}{goal}"
        if t.get("untrained") is not None:
            text += f"; untrained {_number(t['untrained'])}"
            d = t.get("versus_untrained")
            if d:
                text += (f", difference {d['difference']:+.3f} [95 % CI {d['low']:+.3f}, {d['high']:+.3f}] "
                         + noise_verdict(d))
        step = ahead.get(t["key"])
        if t["met"] is False and t["key"] in ahead:
            if len(rows) < 3:
                text += "; too few checkpoints to extrapolate"
            elif step is None:
                text += "; the curve through the last checkpoints is not heading there"
            else:
                text += (f"; extrapolated to be reached near step {step:,.0f} (a line through the last "
                         "checkpoints, not a measurement)")
        lines.append(text + "\n")
    return head + table + "".join(lines)


def _chart(teacher: dict[str, Any], rows: dict[int, dict[str, Any]], history: list[dict[str, Any]],
           location: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(rows)
    fig, grid = plt.subplots(2, 3, figsize=(12, 7))
    axes = list(grid.flat)
    for ax, (key, title, log) in zip(axes, PANELS):
        values = [metric_value(rows[s], key) for s in steps]
        ci = [rows[s].get(f"{key}_ci") for s in steps]
        if all(c is not None for c in ci) and all(v is not None for v in values):
            err = [[v - c[0] for v, c in zip(values, ci)], [c[1] - v for v, c in zip(values, ci)]]
            ax.errorbar(steps, values, yerr=err, marker="o", capsize=3, label="student (95 % CI)")
        else:
            ax.plot(steps, [float("nan") if v is None else v for v in values], marker="o", label="student")
        reference = metric_value(teacher, key)
        if reference is not None:
            ax.axhline(reference, color="tab:gray", linestyle="--", label="teacher")
        goal = next((t for t in TARGETS if t.key == key), None)
        if goal is not None and goal.of_teacher not in (None, 1.0) and reference is not None:
            ax.axhline(goal.of_teacher * reference, color="tab:green", linestyle=":", label="goal")
        elif goal is not None and goal.absolute is not None:
            ax.axhline(goal.absolute, color="tab:green", linestyle=":", label="goal")
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    held_out = [h for h in history if VAL_RETRIEVAL in h]
    ax = axes[-1]
    ax.plot([h["val/step"] for h in held_out], [h[VAL_RETRIEVAL] for h in held_out], marker=".",
            label="retrieval MRR")
    ax.plot([h["val/step"] for h in held_out], [h[VAL_OBJECTIVE] for h in held_out], marker=".",
            label="objective (1 = start)")
    ax.set_title("held-out, during training", fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(location) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _held_out_history(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The held-out metrics logged during training, from the run's start (kept in the checkpoint)."""
    keys = ("val/step", VAL_LOSS_KD, VAL_RETRIEVAL, VAL_TEACHER_AGREEMENT, VAL_OBJECTIVE)
    start = state.get("val_start")
    by_step = {0: {"val/step": 0, **start, VAL_OBJECTIVE: 1.0}} if start else {}
    for h in state["history"]:  # every logged step carries the latest held-out evaluation: one per val/step
        if VAL_LOSS_KD in h:
            by_step.setdefault(h["val/step"], {k: h[k] for k in keys if k in h})
    return [by_step[s] for s in sorted(by_step)]


def curve(cfg: Config, out_dir: str | None = None) -> dict[str, Any]:
    """Train one student keeping every checkpoint, evaluate each (and the untrained student and the teacher),
    write curve.json, curve.md and curve.png; returns the report."""
    if cfg.data.val_fraction == 0:
        raise GeminiRayError("the curve scores held-out perplexity at each checkpoint; set data.val_fraction > 0.")
    t = cfg.train
    if len(checkpoint_steps(t)) < 2:
        every = max(1, t.max_steps // 4)
        fix = dataclasses.replace(t, checkpoint_every=every, log_every=math.gcd(t.log_every, every))
        n = len(checkpoint_steps(fix))
        raise GeminiRayError(f"train.max_steps={t.max_steps}, train.checkpoint_every={t.checkpoint_every} and "
                             f"train.log_every={t.log_every} give fewer than two checkpoints to evaluate (a checkpoint "
                             "is written at a logged step); " + (
                                 f"set train.checkpoint_every={fix.checkpoint_every} and train.log_every="
                                 f"{fix.log_every} for {n}, or raise train.max_steps." if n >= 2 else
                                 "raise train.max_steps to at least 2."))
    cfg = build_config(base=cfg, sample={"train.keep_checkpoints": None})  # every checkpoint is a point
    out = absolute(out_dir or run_dir(cfg.run.storage_path, cfg.run.name) + "-curve")
    if not is_uri(out):  # found unwritable now, not after the run has trained
        check_writable(out, "--out")
    check_output_dir(out, "--out", replace_ours=out_dir is None or cfg.run.overwrite_output,
                     override="run.overwrite_output")
    with hold_run_folder(run_dir(cfg.run.storage_path, cfg.run.name)):
        check_resume(cfg, run_dir(cfg.run.storage_path, cfg.run.name))  # before the teacher loads, not after
        t_start, started_at = time.perf_counter(), time.time()
        session = start_session(cfg)
        run = prepare(cfg, session, started_at=started_at)
        make_output_dir(out, "learning curve")  # every check passed: the folder is ours from here
        untrained = export_untrained(cfg, session, join(out, "students", "step-000000"))
        result = fit_student(run)
        student_dir, state = export(run, result)
        summary = summarize(run, state, student_dir, t_start=t_start)
        students = {0: untrained, **export_checkpoints(run, result, join(out, "students"),
                                                       exported={state["step"]: student_dir})}
        teacher, by_name, _ = evaluate_students(cfg, {step_name(s): path for s, path in students.items()})
        rows = {s: by_name[step_name(s)] for s in students}
        last = max(rows)
        paired = paired_differences(rows[last], rows[0])
        targets = check_targets(rows[last], teacher, rows[0], paired)
        ahead = forecasts(rows, teacher)
        budget = {"max_steps": cfg.train.max_steps, "batch_size": cfg.train.examples_per_step,
                  "seq_length": cfg.data.seq_length, "span_length": cfg.data.span_length, "corpus": cfg.data.path,
                  **rate_budget(cfg.train),
                  "seed": cfg.train.seed, "loss": loss_label(cfg.loss),
                  "wall_time_min": (time.perf_counter() - t_start) / 60}
        history = _held_out_history(state)
        report = {"budget": budget, "teacher": teacher, "steps": {str(s): rows[s] for s in sorted(rows)},
                  "targets": targets, "forecast_steps": ahead, "held_out_during_training": history,
                  "training_wall_time_s": summary["wall_time_s"], "wall_time_s": time.perf_counter() - t_start}
        md = curve_markdown(teacher, rows, targets, ahead, budget)
        atomic_write_json(join(out, "curve.json"), report)
        atomic_write_text(join(out, "curve.md"), md)
        _chart(teacher, rows, history, join(out, "curve.png"))
        print(md, end="")
        print(f"[gemini-ray] curve: {out}/curve.md, curve.json, curve.png")
    return report
