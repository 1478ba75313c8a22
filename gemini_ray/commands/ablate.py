"""`gemini-ray ablate`: the method's claim on one corpus, budget and seed.

The student as it starts (untrained: the teacher's copied layers), and four students trained from it on the
same teacher-signal cache (the teacher runs once) with the same steps, batch, learning rate and seed,
differing only in the loss:

    untrained    no training           the initialisation every trained student must beat
    no-teacher   loss.objective=lm     plain next-token cross-entropy on the corpus tokens
    kd-only      loss.lambda_kd=1      distillation only
    cl-only      loss.lambda_kd=0      contrastive only
    kd+cl        loss.lambda_kd=λ      both (λ and the representation weight μ = loss.rep_weight from the
                                       config; the other rows train without the representation term)

then `gemini-ray eval` on each and on the teacher. A trained student below the untrained one on an
embedding metric (Lee Spearman, RT accuracy) is listed as a regression. The method's claims (`CLAIMS`: KD + CL
above KD-only on Lee, below CL-only on perplexity, above the untrained student on Lee and RT) are each judged
by a paired bootstrap interval. Writes ablation.json, ablation.md and ablation.png.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from gemini_ray.cluster.run_lock import hold_run_folder
from gemini_ray.cluster.session import Session, start_session
from gemini_ray.config import Config, build_config
from gemini_ray.errors import GeminiRayError
from gemini_ray.evaluation.tasks import TASKS
from gemini_ray.jobs.distill_run import export, export_untrained, fit_student, prepare, summarize
from gemini_ray.jobs.evaluate import (evaluate_students, markdown_table, noise_verdict, paired_differences,
                                       paired_perplexity, rate_budget, rate_label)
from gemini_ray.jobs.labelling import make_cache
from gemini_ray.paths import (absolute, atomic_path, atomic_write_json, atomic_write_text, check_output_dir,
                              check_writable, is_uri, join, make_output_dir, run_dir)
from gemini_ray.training.run_record import check_resume

__all__ = ["VARIANTS", "UNTRAINED", "CLAIMS", "ablate", "ablation_markdown", "regressions", "claims"]

VARIANTS: dict[str, dict[str, Any]] = {
    "no-teacher": {"loss.objective": "lm", "loss.rep_weight": 0.0},
    "kd-only": {"loss.lambda_kd": 1.0, "loss.rep_weight": 0.0},
    "cl-only": {"loss.lambda_kd": 0.0, "loss.rep_weight": 0.0},
    "kd+cl": {},  # the config's λ and μ
}
"""Each variant's settings on top of the ablation's config."""
UNTRAINED = "untrained"
"""The row of the student's initialisation, evaluated as copied."""
EMBEDDING_METRICS = {task.metric: task.title for task in TASKS}
"""Every evaluation task's score: a trained row below the untrained one on any of them is a regression."""


def _versus(row: dict[str, Any], other: dict[str, Any], key: str, paired: dict[str, Any], label: str) -> str:
    """'0.400 < untrained 0.450' (a row below the other, named `label`) plus, with per-item scores, the paired difference's 95 % interval and whether it
    is beyond the evaluation set's noise."""
    text = f"{row[key]:.3f} < {label} {other[key]:.3f}"  # called for regressions only
    d = paired.get(key)
    if d:
        text += (f" (difference {d['difference']:+.3f}, 95 % CI [{d['low']:+.3f}, {d['high']:+.3f}]: "
                 + noise_verdict(d) + ")")
    return text


def regressions(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Each trained student's embedding metric that ends below the untrained student's (higher is better),
    with the paired bootstrap interval of the difference when the rows carry per-item scores."""
    if UNTRAINED not in rows:
        return []
    base = rows[UNTRAINED]
    found = []
    for name, row in rows.items():
        if name in ("teacher", UNTRAINED):
            continue
        paired = paired_differences(row, base)
        for key, title in EMBEDDING_METRICS.items():
            if row.get(key) is not None and base.get(key) is not None and row[key] < base[key]:
                found.append(f"{name}: {title} {_versus(row, base, key, paired, UNTRAINED)}")
    return found


CLAIMS = (  # (trained row, baseline row, metric): the method's claims, each "trained row is better"
    ("kd+cl", "kd-only", "lee_spearman"),
    ("kd+cl", "cl-only", "perplexity"),
    ("kd+cl", UNTRAINED, "lee_spearman"),
    ("kd+cl", UNTRAINED, "rt_accuracy"),
)
_TITLES = {**EMBEDDING_METRICS, "perplexity": "held-out perplexity"}


def claims(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each of `CLAIMS` judged by its paired 95 % bootstrap interval (Lee pairs, RT snippets, held-out
    windows): 'holds beyond noise', 'holds within noise' (the point estimate only: not a finding),
    'fails within noise' or 'fails beyond noise'. A claim whose rows lack per-item values is left out."""
    judged = []
    for row, base, key in CLAIMS:
        if row not in rows or base not in rows:
            continue
        if key == "perplexity":  # lower is better: the ratio row / base below 1
            d = paired_perplexity(rows[row], rows[base])
            holds = d and d["ratio"] < 1
            text = d and f"perplexity ratio {d['ratio']:.3g}, 95 % CI [{d['low']:.3g}, {d['high']:.3g}]"
        else:
            d = paired_differences(rows[row], rows[base]).get(key)
            holds = d and d["difference"] > 0
            text = d and f"difference {d['difference']:+.3f}, 95 % CI [{d['low']:+.3f}, {d['high']:+.3f}]"
        if d:
            verdict = ("holds " if holds else "fails ") + noise_verdict(d)
            judged.append({"claim": f"{row} better than {base} on {_TITLES[key]}", "row": row, "baseline": base,
                           "metric": key, "verdict": verdict, "detail": text, **d})
    return judged


def _loss_form(budget: dict[str, Any]) -> str:
    """The balance and representation form, where the budget names them (reports from before they did
    omit them)."""
    parts = [f"{key.replace('_', ' ')} {budget[key]}" for key in ("rep_form", "balance") if key in budget]
    return f" ({', '.join(parts)})" if parts else ""


def ablation_markdown(rows: dict[str, dict[str, Any]], budget: dict[str, Any], found: list[str],
                      judged: list[dict[str, Any]] = ()) -> str:
    """The budget, the table, the method's claims (`claims` of the rows) and `found` (their `regressions`)."""
    head = (f"Budget per student: {budget['max_steps']} steps x {budget['batch_size']} examples, {rate_label(budget)}, "
            f"seed {budget['seed']}, student {budget['num_layers']} layers; kd+cl uses λ = {budget['lambda_kd']}, "
            f"τ = {budget['cl_temperature']}, K = {budget['num_negatives']}, μ = {budget['rep_weight']}"
            f"{_loss_form(budget)}.\n\n")
    tail = ("\nRegressions against the untrained student (differences inside the evaluation sets' noise "
            "included):\n" + "".join(f"* {r}\n" for r in found)) if found else ""
    verdicts = ("\nThe method's claims (paired 95 % bootstrap intervals; 'within noise' is not a finding):\n"
                + "".join(f"* {c['claim']}: **{c['verdict']}** ({c['detail']})\n" for c in judged)) if judged else ""
    return head + markdown_table(rows) + verdicts + tail


def _chart(rows: dict[str, dict[str, Any]], location: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("teacher_top1_agreement", "top-1 agreement with teacher", True),
               ("perplexity", "held-out perplexity (lower is better)", True),
               ("lee_spearman", "Lee Spearman", False), ("rt_accuracy", "Rotten Tomatoes accuracy", False)]
    names = list(rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    for ax, (key, title, in_lm) in zip(axes, metrics):
        values = [(rows[n].get("lm", {}) if in_lm else rows[n]).get(key, float("nan")) for n in names]
        ax.bar(range(len(names)), values, color=["tab:gray" if n == "teacher" else "tab:blue" for n in names])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
        if key == "perplexity":  # spans 30 to 1e8 between the teacher and the untrained student
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(location) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _variant_configs(cfg: Config) -> dict[str, Config]:
    """Each trained variant's config: the base with its loss settings, its own run.name, reading the cache."""
    names = {variant: f"{cfg.run.name}-{variant.replace('+', '-')}" for variant in VARIANTS}
    return {variant: build_config(base=cfg, sample={**settings, "run.name": names[variant], "label.use": "require"})
            for variant, settings in VARIANTS.items()}


def _train_variants(cfg: Config, session: Session) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Each variant distilled on the one session and cache: (student directories, training summaries)."""
    students, summaries = {}, {}
    untrained = join(run_dir(cfg.run.storage_path, f"{cfg.run.name}-{UNTRAINED}"), "student")
    students[UNTRAINED] = export_untrained(cfg, session, untrained)
    for variant, variant_cfg in _variant_configs(cfg).items():
        print(f"[gemini-ray] ablation: training {variant}")
        t0 = time.perf_counter()
        run = prepare(variant_cfg, session, own_session=False)
        student_dir, state = export(run, fit_student(run))
        summary = summarize(run, state, student_dir, t_start=t0)
        students[variant] = student_dir
        summaries[variant] = {"teacher_tokens_this_run": summary["teacher_signal"]["teacher_tokens_this_run"],
                              "last": summary["training"]["last"], "loss": summary["config"]["loss"]}
    return students, summaries


def ablate(cfg: Config, out_dir: str | None = None) -> dict[str, Any]:
    """Label once, train the four variants, evaluate them, the untrained student and the teacher; returns the
    report."""
    if cfg.data.val_fraction == 0:
        raise GeminiRayError("the ablation scores held-out perplexity; set data.val_fraction > 0.")
    out = absolute(out_dir or run_dir(cfg.run.storage_path, cfg.run.name) + "-ablation")
    if not is_uri(out):  # found unwritable now, not after four students have trained
        check_writable(out, "--out")
    check_output_dir(out, "--out", replace_ours=out_dir is None or cfg.run.overwrite_output,
                     override="run.overwrite_output")
    names = [f"{cfg.run.name}-{UNTRAINED}", *(c.run.name for c in _variant_configs(cfg).values())]
    with contextlib.ExitStack() as held:  # every run folder the ablation writes, for the whole command
        for name in names:
            held.enter_context(hold_run_folder(run_dir(cfg.run.storage_path, name)))
        return _ablate(cfg, out)


def _ablate(cfg: Config, out: str) -> dict[str, Any]:
    for variant_cfg in _variant_configs(cfg).values():  # a finished row of another config is refused now, not
        check_resume(variant_cfg, run_dir(cfg.run.storage_path, variant_cfg.run.name))  # after 3 rows trained
    t_start = time.perf_counter()
    session = start_session(cfg)  # setup: teacher and corpus, once for the four variants
    manifest = make_cache(cfg, session)  # the teacher runs once; every variant reads this cache
    students, summaries = _train_variants(cfg, session)  # fit
    teacher, students_rows, protocol = evaluate_students(cfg, students)  # validate
    rows = {"teacher": teacher, **students_rows}
    t = cfg.train
    budget = {"max_steps": t.max_steps, "batch_size": t.examples_per_step, **rate_budget(t), "seed": t.seed,
              "num_layers": cfg.student.num_layers, "lambda_kd": cfg.loss.lambda_kd,
              "cl_temperature": cfg.loss.cl_temperature, "num_negatives": cfg.loss.num_negatives,
              "rep_weight": cfg.loss.rep_weight, "rep_form": cfg.loss.rep_form, "balance": cfg.loss.balance}
    found, judged = regressions(rows), claims(rows)  # paired bootstraps: computed once
    result = {"budget": budget, "models": rows, "regressions": found, "claims": judged, "training": summaries,
              "cache": {"teacher_tokens": manifest["teacher_tokens"]}, "protocol": protocol,
              "wall_time_s": time.perf_counter() - t_start}
    md = ablation_markdown(rows, budget, found, judged)
    make_output_dir(out, "ablation")
    atomic_write_json(join(out, "ablation.json"), result)
    atomic_write_text(join(out, "ablation.md"), md)
    _chart(rows, join(out, "ablation.png"))
    print(md, end="")
    print(f"[gemini-ray] ablation: {out}/ablation.md, ablation.json, ablation.png")
    return result
