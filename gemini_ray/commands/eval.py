"""`gemini-ray eval MODEL_DIR`: a student (and its teacher, for reference) on the fixed protocol of
`gemini_ray.jobs.evaluate`: held-out language modelling, Lee similarity, Rotten Tomatoes, cost.

    gemini-ray eval runs/demo/student                    # report.json + report.md in runs/demo/eval
    gemini-ray eval runs/demo/student --no-teacher --out /tmp/report eval.rt_train=500

The config starts from the student's recorded data settings (its corpus and held-out split), under
--config and the overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gemini_ray.config import Config
from gemini_ray.jobs.evaluate import evaluate, write_report
from gemini_ray.paths import check_output_dir, make_output_dir

__all__ = ["evaluate_model"]


def evaluate_model(model_dir: str, cfg: Config, teacher: str | None = None, with_teacher: bool = True,
                   out: str | None = None) -> dict[str, Any]:
    """Evaluate, write report.json + report.md (default <model_dir>/../eval), print the table; returns the report.
    The report folder is checked first: a folder of anything but an earlier report of ours is refused (an
    explicit --out holding one is replaced only with run.overwrite_output=true)."""
    default = out is None
    out = out or str(Path(model_dir).expanduser().resolve().parent / "eval")
    check_output_dir(out, "--out" if not default else "the report folder (--out)",
                     replace_ours=default or cfg.run.overwrite_output, override="run.overwrite_output")
    report = evaluate(model_dir, cfg, teacher_source=teacher, with_teacher=with_teacher)  # validate
    make_output_dir(out, "evaluation report")
    json_path, md_path = write_report(report, out)  # export
    print(md_path.read_text(encoding="utf-8"), end="")
    print(f"[gemini-ray] report: {json_path}")
    return report
