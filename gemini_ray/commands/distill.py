"""`gemini-ray distill`: setup → fit → export → summary, on Ray Data + Ray Train.

    gemini-ray distill                                  # the embedded demo (real teacher, real corpus)
    gemini-ray distill --config my.yaml loss.lambda_kd=0.7 train.max_steps=200

Running the same command again with the same run.name and run.storage_path resumes from the latest
checkpoint; a resume whose config differs from the run's start in what it trains is refused
(gemini_ray/training/run_record.py: raising train.max_steps, the resources and the reporting may change).
Outputs: <storage_path>/<name>/student (a plain HF directory) and <...>/summary.json. An existing
run.output_dir is refused unless it is empty, or an earlier export of ours and run.overwrite_output=true.

Faults: a dead worker (or its node) makes Ray Train restart the worker group from the latest checkpoint,
up to train.max_failures times; a dead driver is resumed by running the command again. Both are counted
in summary.json ('training.resumes'). A NaN or infinite loss stops the run with an error naming the step
and the loss part; the last good checkpoint is kept and nothing is exported.
"""

from __future__ import annotations

import time
from typing import Any

from gemini_ray.cluster.run_lock import hold_run_folder
from gemini_ray.cluster.session import start_session
from gemini_ray.config import Config
from gemini_ray.jobs.distill_run import export, fit_student, prepare, summarize
from gemini_ray.paths import run_dir
from gemini_ray.training.run_record import check_resume

__all__ = ["distill"]


def distill(cfg: Config) -> dict[str, Any]:
    """Run the whole distillation; returns the summary (also written to summary.json). The run folder is held
    for the whole command: a second command on it is refused at once (`run_lock`)."""
    with hold_run_folder(run_dir(cfg.run.storage_path, cfg.run.name)):
        check_resume(cfg, run_dir(cfg.run.storage_path, cfg.run.name))  # a resume of another config: refused now
        t_start, started_at = time.perf_counter(), time.time()
        session = start_session(cfg)  # setup: the teacher's metadata (never its weights), Ray
        run = prepare(cfg, session, started_at=started_at)  # the student and its teacher signal
        result = fit_student(run)  # fit
        student_dir, state = export(run, result)  # export
        return summarize(run, state, student_dir, t_start=t_start)  # summary
