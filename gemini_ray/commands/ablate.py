"""`gemini-ray ablate`: the method's claim on one corpus, budget and seed.

Four students, trained from the same teacher-signal cache (the teacher runs once) with the same steps,
batch, learning rate and seed, differing only in the loss:

    no-teacher   loss.objective=lm     plain next-token cross-entropy on the corpus tokens
    kd-only      loss.lambda_kd=1      distillation only
    cl-only      loss.lambda_kd=0      contrastive only
    kd+cl        loss.lambda_kd=λ      both (λ from the config: 0.5 unless set)

then `gemini-ray eval` on each and on the teacher. Writes ablation.json, ablation.md and ablation.png.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gemini_ray.config import Config, build_config
from gemini_ray.distill_run import export, fit_student, prepare, summarize
from gemini_ray.errors import GeminiRayError
from gemini_ray.evaluation.run import evaluate, markdown_table, versus_teacher
from gemini_ray.labelling import make_cache
from gemini_ray.paths import (absolute, atomic_path, atomic_write_json, atomic_write_text, check_writable, is_uri, join,
                              run_dir)
from gemini_ray.session import Session, start_session

__all__ = ["VARIANTS", "ablate", "ablation_markdown"]

VARIANTS: dict[str, dict[str, Any]] = {
    "no-teacher": {"loss.objective": "lm"},
    "kd-only": {"loss.lambda_kd": 1.0},
    "cl-only": {"loss.lambda_kd": 0.0},
    "kd+cl": {},  # the config's λ
}
"""Each variant's settings on top of the ablation's config."""


def ablation_markdown(rows: dict[str, dict[str, Any]], budget: dict[str, Any]) -> str:
    head = (f"Budget per student: {budget['max_steps']} steps x {budget['batch_size']} examples, lr {budget['lr']}, "
            f"seed {budget['seed']}, student {budget['num_layers']} layers; kd+cl uses λ = {budget['lambda_kd']}, "
            f"τ = {budget['cl_temperature']}, K = {budget['num_negatives']}.\n\n")
    return head + markdown_table(rows)


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
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(location) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _train_variants(cfg: Config, session: Session) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Each variant distilled on the one session and cache: (student directories, training summaries)."""
    students, summaries = {}, {}
    for variant, settings in VARIANTS.items():
        print(f"[gemini-ray] ablation: training {variant}")
        name = f"{cfg.run.name}-{variant.replace('+', '-')}"
        variant_cfg = build_config(base=cfg, sample={**settings, "run.name": name, "label.use": "require"})
        t0 = time.perf_counter()
        run = prepare(variant_cfg, session, own_session=False)
        student_dir, state = export(run, fit_student(run))
        summary = summarize(run, state, student_dir, t_start=t0)
        students[variant] = student_dir
        summaries[variant] = {"teacher_tokens_this_run": summary["teacher_signal"]["teacher_tokens_this_run"],
                              "last": summary["training"]["last"], "loss": summary["config"]["loss"]}
    return students, summaries


def _evaluate_variants(cfg: Config, students: dict[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The teacher's row first, then each variant's, each with its share of the teacher's size, speed and scores."""
    rows: dict[str, dict[str, Any]] = {}
    for i, (variant, path) in enumerate(students.items()):
        print(f"[gemini-ray] ablation: evaluating {variant}")
        report = evaluate(path, cfg, with_teacher=i == 0, name=variant)
        rows.update(report["models"])
    teacher = rows.pop("teacher")
    rows = {"teacher": teacher, **rows}
    first = next(iter(students))  # timed side by side with the teacher in one process; the others alone
    speedup = rows[first]["tokens_per_s"] / teacher["tokens_per_s"]
    for variant in students:  # same architecture for all four: the side-by-side speedup holds for each
        rows[variant]["vs_teacher"] = {**versus_teacher(rows[variant], teacher), "speedup": speedup}
    return rows, report["protocol"]


def ablate(cfg: Config, out_dir: str | None = None) -> dict[str, Any]:
    """Label once, train the four variants, evaluate them and the teacher; returns the report."""
    if cfg.data.val_fraction == 0:
        raise GeminiRayError("the ablation scores held-out perplexity; set data.val_fraction > 0.")
    out = absolute(out_dir or run_dir(cfg.run.storage_path, cfg.run.name) + "-ablation")
    if not is_uri(out):  # found unwritable now, not after four students have trained
        check_writable(out, "--out")
        Path(out).mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    session = start_session(cfg, with_teacher=True)  # setup: teacher and corpus, once for the four variants
    manifest = make_cache(cfg, session)  # the teacher runs once; every variant reads this cache
    students, summaries = _train_variants(cfg, session)  # fit
    rows, protocol = _evaluate_variants(cfg, students)  # validate
    t = cfg.train
    budget = {"max_steps": t.max_steps, "batch_size": t.batch_size * t.num_workers, "lr": t.lr, "seed": t.seed,
              "num_layers": cfg.student.num_layers, "lambda_kd": cfg.loss.lambda_kd,
              "cl_temperature": cfg.loss.cl_temperature, "num_negatives": cfg.loss.num_negatives}
    result = {"budget": budget, "models": rows, "training": summaries,
              "cache": {"teacher_tokens": manifest["teacher_tokens"]}, "protocol": protocol,
              "wall_time_s": time.perf_counter() - t_start}
    md = ablation_markdown(rows, budget)
    atomic_write_json(join(out, "ablation.json"), result)
    atomic_write_text(join(out, "ablation.md"), md)
    _chart(rows, join(out, "ablation.png"))
    print(md, end="")
    print(f"[gemini-ray] ablation: {out}/ablation.md, ablation.json, ablation.png")
    return result
