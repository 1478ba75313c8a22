"""Where the student's language model is heading: runs of several lengths, each with its own schedule.

    python experiments/lm_forecast.py [--steps 30 60 120 240] [--config FILE] [--store DIR] [OVERRIDE ...]

A line through the checkpoints of one run (what `gemini-ray curve` extrapolates) is bent by that run's
learning-rate decay: its last checkpoints are taken at a tenth of the peak rate. Here each length is a run of
its own (warm-up and cosine decay stretched to it), as a longer budget would be run:

1. `gemini-ray label` writes the teacher-signal cache once (reused when it is already there; with
   label.scope=run, for the longest length);
2. for each length N: `gemini-ray distill run.name=fN label.use=require train.max_steps=N`, then
   `gemini-ray eval` of its student (the teacher's row too, for the first length only);
3. a line through the last three lengths (in log steps, and log value for perplexity and KL: a power law;
   `evaluation.targets.extrapolate_step`) gives the step at which held-out perplexity reaches 4x the
   teacher's, KL 1.5 nats and top-1 agreement 0.5 — an extrapolation, labelled as one, unless a run
   measured it.

Runs already in the store are reused (their eval/report.json), so an interrupted forecast resumes; a run the
store holds from another config is refused (`gemini_ray.training.run_record`), not reused. `--config`
and the overrides (`key=value`, e.g. `train.lr=6e-4`) go to every label and distill command, e.g.
`--config configs/quality.yaml --steps 60 120 240` for the quality budget's language model. Writes
`<store>/lm_forecast.json` and `lm_forecast.png` (the store: runs/lm-forecast, or
runs/lm-forecast-<config name> with `--config`) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gemini_ray.config import build_config  # noqa: E402
from gemini_ray.evaluation.targets import extrapolate_step  # noqa: E402
from gemini_ray.jobs.evaluate import protocol_settings  # noqa: E402
from gemini_ray.paths import atomic_path, atomic_write_json  # noqa: E402
from gemini_ray.training.run_record import check_resume  # noqa: E402

GOALS = (  # (report key, title, goal, higher is better, log value)
    ("perplexity", "held-out perplexity <= 4x the teacher's", None, False, True),
    ("kl_to_teacher", "KL to the teacher <= 1.5 nats", 1.5, False, True),
    ("teacher_top1_agreement", "top-1 agreement >= 0.5", 0.5, True, False),
)


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "gemini_ray.cli", *args], check=True, cwd=ROOT)


def run_length(store: Path, steps: int, config: str | None, overrides: list[str], with_teacher: bool) -> dict:
    """Train and evaluate one length (or read what an earlier forecast left, when it trained this config);
    returns its eval report."""
    name = f"f{steps}"
    settings = [f"run.storage_path={store}", f"run.name={name}", "label.use=require", f"train.max_steps={steps}",
                f"train.checkpoint_every={steps}", f"train.eval_every={steps}", *overrides]
    # a store left by another config is refused here, not read as this one's (distill would refuse it too)
    cfg = build_config(config, settings)
    check_resume(cfg, str(store / name))
    report = store / name / "eval" / "report.json"
    if report.exists() and _reusable(json.loads(report.read_text()), cfg, with_teacher):
        return json.loads(report.read_text())
    with_config = ["--config", config] if config else []
    if not (store / name / "student").exists():
        cli("distill", *with_config, *settings)
    cli("eval", str(store / name / "student"), *with_config, *overrides, *([] if with_teacher else ["--no-teacher"]))
    return json.loads(report.read_text())


def _reusable(report: dict, cfg, with_teacher: bool) -> bool:
    """An earlier report answers for this config when it has the rows asked for and was measured on the same
    protocol (the eval section: e.g. the quality config's whole Rotten Tomatoes sets): else the student is
    evaluated again, not retrained."""
    protocol = report.get("protocol", {})
    same = all(protocol.get(key) == value for key, value in protocol_settings(cfg.eval).items())
    return same and (not with_teacher or "teacher" in report["models"])


def forecast_goals(steps: list[int], rows: dict[int, dict], teacher: dict) -> dict[str, dict]:
    """For each of GOALS: the step a run reaches it at, measured (the last run meets it) or extrapolated
    through the last three lengths, or 'not heading there'. rows: each length's held-out LM metrics."""
    forecast = {}
    for key, title, goal, higher, log_value in GOALS:
        goal = goal if goal is not None else 4 * teacher["perplexity"]
        values = [rows[n].get(key) for n in steps]
        step = extrapolate_step(steps, values, goal, higher, log_value)
        last = values[-1]
        measured = last is not None and (last >= goal if higher else last <= goal)
        forecast[key] = {"title": title, "goal": goal, "step": step,
                         "how": "measured" if measured else ("extrapolated" if step else "not heading there")}
    return forecast


def chart(result: dict, location: str | Path) -> None:
    """One panel per goal: each length's value against its steps (log axes; top-1 on a linear one), the goal,
    the teacher where it is drawable, and a dashed segment from the last run to the forecast step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(n) for n in result["steps"]]
    runs = {int(n): row for n, row in result["runs"].items()}  # int keys, or str after a JSON round trip
    fig, axes = plt.subplots(1, len(GOALS), figsize=(13, 4))
    for ax, (key, title, _, _, log_value) in zip(axes, GOALS):
        values = [runs[n][key] for n in steps]
        ax.plot(steps, values, marker="o", label="measured (a run of each length)")
        f = result["forecast"][key]
        ax.axhline(f["goal"], color="tab:green", linestyle=":", label="goal")
        if f["how"] == "extrapolated":
            ax.plot([steps[-1], f["step"]], [values[-1], f["goal"]], color="tab:blue", linestyle="--",
                    label=f"extrapolated: step {f['step']:,.0f}")
        teacher = result["teacher"].get(key)
        if teacher and key != "teacher_top1_agreement":
            ax.axhline(teacher, color="tab:gray", linestyle="--", label="teacher")
        ax.set_xscale("log")
        if log_value:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training steps (x batch size)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(str(location)) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[30, 60, 120, 240])
    parser.add_argument("--store", default=None, help="default: runs/lm-forecast, or runs/lm-forecast-<config "
                        "name> with --config (one store per config: a store holds one config's runs)")
    parser.add_argument("--config", default=None, help="YAML config file, for every label and distill command")
    parser.add_argument("overrides", nargs="*", help="key=value, for every command")
    args = parser.parse_args()
    config = str(Path(args.config).resolve()) if args.config else None
    if len(args.steps) < 3 or sorted(set(args.steps)) != args.steps:
        parser.error("--steps: at least three lengths, increasing")
    store = (ROOT / (args.store or "runs/lm-forecast" + (f"-{Path(config).stem}" if config else ""))).resolve()
    # the longest length's budget: under label.scope=run the cache then holds every length's rows
    cli("label", *(["--config", config] if config else []), f"run.storage_path={store}", *args.overrides,
        f"train.max_steps={max(args.steps)}")
    reports = {n: run_length(store, n, config, args.overrides, with_teacher=i == 0) for i, n in enumerate(args.steps)}
    teacher = reports[args.steps[0]]["models"]["teacher"]["lm"]
    rows = {n: r["models"]["student"]["lm"] for n, r in reports.items()}
    forecast = forecast_goals(args.steps, rows, teacher)
    result = {"steps": args.steps, "config": config, "overrides": args.overrides,
              "teacher": {k: teacher.get(k) for k, *_ in GOALS},
              "runs": {n: {k: rows[n].get(k) for k, *_ in GOALS} for n in args.steps}, "forecast": forecast}
    atomic_write_json(str(store / "lm_forecast.json"), result)
    chart(result, store / "lm_forecast.png")
    print("| steps | held-out ppl | KL | top-1 agreement |\n|---|---|---|---|")
    print(f"| teacher | {teacher['perplexity']:.1f} | 0 | 1 |")
    for n in args.steps:
        r = rows[n]
        print(f"| {n} | {r['perplexity']:,.0f} | {r.get('kl_to_teacher', float('nan')):.2f} "
              f"| {r.get('teacher_top1_agreement', float('nan')):.3f} |")
    for f in forecast.values():
        where = f"step {f['step']:,.0f} ({f['how']})" if f["step"] else f["how"]
        print(f"* {f['title']} (goal {f['goal']:.3g}): {where}")
    print(f"({store / 'lm_forecast.json'}, {store / 'lm_forecast.png'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
