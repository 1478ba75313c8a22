"""`gemini-ray eval MODEL_DIR`: a student (and its teacher, for reference) on the fixed protocol of
`gemini_ray.evaluation.run`: held-out language modelling, Lee similarity, Rotten Tomatoes, cost.

    gemini-ray eval runs/demo/student                    # report.json + report.md in runs/demo/eval
    gemini-ray eval runs/demo/student --no-teacher --out /tmp/report eval.rt_train=500

The config starts from the student's recorded data settings (its corpus and held-out split), under
--config and the overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gemini_ray.config import Config
from gemini_ray.evaluation.run import evaluate, write_report

__all__ = ["evaluate_model"]


def evaluate_model(model_dir: str, cfg: Config, teacher: str | None = None, with_teacher: bool = True,
                   out: str | None = None) -> dict[str, Any]:
    """Evaluate, write report.json + report.md (default <model_dir>/../eval), print the table; returns the report."""
    report = evaluate(model_dir, cfg, teacher_source=teacher, with_teacher=with_teacher)  # validate
    out = out or str(Path(model_dir).expanduser().resolve().parent / "eval")
    json_path, md_path = write_report(report, out)  # export
    print(md_path.read_text(encoding="utf-8"), end="")
    print(f"[gemini-ray] report: {json_path}")
    return report
