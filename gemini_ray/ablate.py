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

import json
import os
import time
from pathlib import Path
from typing import Any

from gemini_ray.config import load_config
from gemini_ray.errors import GeminiRayError

__all__ = ["VARIANTS", "ablate", "ablation_markdown"]

VARIANTS: dict[str, list[str]] = {
    "no-teacher": ["loss.objective=lm"],
    "kd-only": ["loss.lambda_kd=1.0"],
    "cl-only": ["loss.lambda_kd=0.0"],
    "kd+cl": [],  # the config's λ
}


def ablation_markdown(rows: dict[str, dict[str, Any]], budget: dict[str, Any]) -> str:
    from gemini_ray.evaluation.run import markdown_table

    head = (f"Budget per student: {budget['max_steps']} steps x {budget['batch_size']} examples, lr {budget['lr']}, "
            f"seed {budget['seed']}, student {budget['num_layers']} layers; kd+cl uses λ = {budget['lambda_kd']}, "
            f"τ = {budget['cl_temperature']}, K = {budget['num_negatives']}.\n\n")
    return head + markdown_table(rows)


def _chart(rows: dict[str, dict[str, Any]], path: Path) -> None:
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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def ablate(config_path: str | None, overrides: list[str], out_dir: str | None = None) -> dict[str, Any]:
    """Label once, train the four variants, evaluate them and the teacher; returns the report."""
    from gemini_ray.checkpoint import atomic_write_text
    from gemini_ray.distill import distill, run_dir
    from gemini_ray.evaluation.run import eval_config, evaluate, versus_teacher
    from gemini_ray.label import init_ray, label, setup

    base = load_config(config_path, overrides)
    if base.data.val_fraction == 0:
        raise GeminiRayError("the ablation scores held-out perplexity; set data.val_fraction > 0.")
    out = Path(out_dir or f"{run_dir(base)}-ablation").expanduser()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    init_ray(base)
    manifest = label(base)  # the teacher runs once; every variant reads this cache
    prepared = setup(base, teacher_model_needed=True)  # teacher and corpus resolved once for the four variants
    students: dict[str, str] = {}
    summaries: dict[str, dict[str, Any]] = {}
    for variant, extra in VARIANTS.items():
        name = f"{base.run.name}-{variant.replace('+', '-')}"
        print(f"[gemini-ray] ablation: training {variant}")
        summary = distill(load_config(config_path, [*overrides, *extra, f"run.name={name}", "label.use=require"]),
                          prepared)
        students[variant] = summary["student"]["path"]
        summaries[variant] = {"teacher_tokens_this_run": summary["teacher_signal"]["teacher_tokens_this_run"],
                              "last": summary["training"]["last"], "loss": summary["config"]["loss"]}
    rows: dict[str, dict[str, Any]] = {}
    for i, (variant, path) in enumerate(students.items()):
        print(f"[gemini-ray] ablation: evaluating {variant}")
        report = evaluate(path, eval_config(path, config_path, overrides), with_teacher=i == 0, name=variant)
        rows.update(report["models"])
    teacher = rows.pop("teacher")
    rows = {"teacher": teacher, **rows}
    first = next(iter(students))  # timed side by side with the teacher in one process; the others alone
    speedup = rows[first]["tokens_per_s"] / teacher["tokens_per_s"]
    for variant in students:  # same architecture for all four: the side-by-side speedup holds for each
        rows[variant]["vs_teacher"] = {**versus_teacher(rows[variant], teacher), "speedup": speedup}
    t = base.train
    budget = {"max_steps": t.max_steps, "batch_size": t.batch_size * t.num_workers, "lr": t.lr, "seed": t.seed,
              "num_layers": base.student.num_layers, "lambda_kd": base.loss.lambda_kd,
              "cl_temperature": base.loss.cl_temperature, "num_negatives": base.loss.num_negatives}
    result = {"budget": budget, "models": rows, "training": summaries,
              "cache": {"teacher_tokens": manifest["teacher_tokens"]}, "protocol": report["protocol"],
              "wall_time_s": time.perf_counter() - t_start}
    md = ablation_markdown(rows, budget)
    atomic_write_text(out / "ablation.json", json.dumps(result, indent=1))
    atomic_write_text(out / "ablation.md", md)
    _chart(rows, out / "ablation.png")
    print(md, end="")
    print(f"[gemini-ray] ablation: {out}/ablation.md, ablation.json, ablation.png")
    return result
