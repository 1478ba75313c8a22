"""One distillation run in four steps, each a function: prepare → fit → export → summarize.

`gemini-ray distill` runs them once; `gemini-ray ablate` runs them once per loss variant on one session.

    session = start_session(cfg)
    run = prepare(cfg, session)                 # student, teacher signal (cache or online), held-out rows
    result = fit_student(run)                   # Ray Train; resumes from <storage>/<name> when it exists
    student_dir, state = export(run, result)    # a plain Hugging Face directory
    students = export_checkpoints(run, result, d)  # every kept checkpoint, for a curve
    summary = summarize(run, state, student_dir)  # summary.json
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemini_ray.cluster.session import Session
from gemini_ray.config import Config, config_to_dict
from gemini_ray.data.cache import FoundCache, find_cache
from gemini_ray.data.resume import consumed_shards, earliest_resume_step
from gemini_ray.errors import GeminiRayError
from gemini_ray.jobs.student import make_student
from gemini_ray.metric_names import (LOSS_CL, LOSS_KD, LOSS_REP, VAL_LOSS_KD, VAL_OBJECTIVE, VAL_RETRIEVAL,
                                     VAL_TEACHER_AGREEMENT)
from gemini_ray.paths import atomic_write_json, check_writable, is_uri, join, run_dir
from gemini_ray.training.run_record import check_resume, record_start
from gemini_ray.training.watch import loss_chart

if TYPE_CHECKING:
    import numpy as np
    import ray.data
    import ray.train
    from torch import nn

    from gemini_ray.data.corpus_pass import Probe

__all__ = ["Run", "check_output", "prepare", "fit_student", "export",
           "export_untrained", "export_checkpoints", "summarize"]


@dataclass
class Run:
    """A prepared distillation run: what `fit_student`, `export` and `summarize` need."""

    cfg: Config
    session: Session
    out_dir: str
    """<run.storage_path>/<run.name>: checkpoints, progress.json, summary.json (path or URI)."""
    student: nn.Module
    """The student before training (teacher layers copied, or from student.from_pretrained)."""
    stream: ray.data.Dataset
    """Training rows with their teacher signal: read from a cache, or labelled online as they stream."""
    val: dict[str, np.ndarray] | None
    """The held-out rows with their teacher signal (small: one object every Train worker reads)."""
    cache: FoundCache | None
    """The teacher-signal cache the run reads, or None when the teacher labels online as the rows stream."""
    probe: Probe | None
    """What an online run read of the corpus before training (None when reading a cache: its manifest has
    the counts of the whole corpus)."""
    ledger: Any
    """The ledger of the corpus stream an online run trains from (what it read, counted as it streamed)."""
    plan: Any
    """The StreamPlan actor: the Train workers tell it which rows of the pass they trained before a resume."""
    teacher_tokens_before: int
    """The session's teacher-token counter when the run started (the run's own cost is the difference)."""
    started_at: float
    """time.time() at the command's start (a resumed driver measures its restart cost from it)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time per phase, written to summary.json."""
    peak_tflops: float | None = None
    """What MFU was reported against (run.peak_tflops or the driver's matmul probe); set by fit_student."""
    resume_from: str | None = None
    """The intact checkpoint the workers start from when Ray Train's own record was set aside
    (`data.resume.resume_point`, run before the stream is planned), else None."""


def check_output(cfg: Config) -> None:
    """Refuse a run.output_dir the export would replace: a file, a folder of anything else, or an earlier
    export of ours without run.overwrite_output=true (the default <run folder>/student is the run's own)."""
    from gemini_ray.paths import check_output_dir

    if cfg.run.output_dir:
        check_output_dir(cfg.run.output_dir, "run.output_dir", replace_ours=cfg.run.overwrite_output,
                         override="run.overwrite_output")
        if not is_uri(cfg.run.output_dir):
            check_writable(cfg.run.output_dir, "run.output_dir")
    else:
        check_output_dir(join(run_dir(cfg.run.storage_path, cfg.run.name), "student"), "the run's student folder",
                         replace_ours=True)


def _check_steps(cfg: Config, train_examples: int, where: str) -> None:
    """Refuse a corpus (or cache) too small for one training step."""
    if train_examples < cfg.train.batch_size * cfg.train.num_workers:
        raise GeminiRayError(
            f"{where} gives {train_examples} training examples, fewer than one step needs "
            f"(train.batch_size={cfg.train.batch_size} x train.num_workers={cfg.train.num_workers}). "
            "Lower train.batch_size or add documents.")


def _teacher_signal(cfg: Config, session: Session, cache: FoundCache | None, plan: Any
                    ) -> tuple[ray.data.Dataset, dict[str, np.ndarray] | None, Probe | None, Any]:
    """(training stream, held-out rows, what was read before training, the training stream's ledger). The
    stream leaves out the rows `plan` (a StreamPlan) says were trained: a resumed run goes on where it was.

    From a cache: its shards. Online: the corpus is read only as far as the held-out rows and the checks
    need (`probe_corpus`); the held-out rows are labelled by the teacher pool; then the training rows
    stream from the files through the teacher into the trainer, which starts on the first of them. The
    teacher labels only the rows the run uses, max_steps batches (a run longer than the corpus makes further
    passes, each labelled again; 'gemini-ray label' labels once)."""
    from gemini_ray.data.corpus_pass import online_rows, probe_corpus
    from gemini_ray.data.pipeline import label_and_mine, label_rows, read_cached_signal

    if cache is not None:
        print(f"[gemini-ray] reading the teacher signal from the cache {cache.directory}")
        _check_steps(cfg, cache.manifest["corpus"]["train_examples"], f"the cache at '{cache.directory}'")
        consumed = consumed_shards(cfg, cache.manifest) if plan is not None else frozenset()
        return (*read_cached_signal(cache.directory, cache.manifest, cfg.loss.num_negatives, plan, consumed,
                                    cfg.train.seed, cfg.train.shuffle_first_pass), None, None)
    probe = probe_corpus(cfg, session.teacher_source, session.kind)
    print(probe.stats.line(read="" if probe.whole else " (the start read before training)"), flush=True)
    _check_steps(cfg, probe.stats.train_examples, "the corpus")
    val = label_rows(session.pinned(cfg), probe.val) if probe.val is not None else None
    t = cfg.train
    steps_left = t.max_steps - earliest_resume_step(cfg)
    rows = online_rows(cfg, session.teacher_source, session.kind, max(1, steps_left) * t.examples_per_step,
                       plan)
    return label_and_mine(session.pinned(cfg), rows.examples), val, probe, rows.ledger


def prepare(cfg: Config, session: Session, started_at: float | None = None, own_session: bool = True) -> Run:
    """Check where results go, derive the student, and line up the teacher signal for `fit_student`. The
    Run's config is the user's with the placement decided (`with_worker_cpus`); run_config.json records the
    user's, which a resume must match.

    own_session: the session was started for this run alone (its setup time is the run's); False when a
    session serves several runs (the ablation)."""
    import ray

    from gemini_ray.cluster.placement import alive_nodes, check_fits, demands, with_worker_cpus
    from gemini_ray.data.resume import StreamPlan, resume_point
    from gemini_ray.data.pipeline import teacher_token_counter


    out_dir = run_dir(cfg.run.storage_path, cfg.run.name)
    if not is_uri(out_dir):  # tried by writing a probe file (permission bits say nothing for root or read-only mounts)
        check_writable(cfg.run.storage_path, "run.storage_path")
    check_output(cfg)
    check_resume(cfg, out_dir)  # a resume must train what the run started to: refused when a key differs
    resume_from = resume_point(out_dir)  # damaged checkpoints set aside before the stream skips what they trained
    seconds = dict(session.seconds) if own_session else {}
    student = make_student(cfg, session)
    tokens_before = ray.get(teacher_token_counter().total.remote())
    t0 = time.perf_counter()
    cache = find_cache(cfg, session.identity)
    # what runs: the user's config with train.cpus_per_worker decided from the nodes when it is unset
    placed = with_worker_cpus(cfg, cached=cache is not None, nodes=alive_nodes())
    plan = StreamPlan.remote()
    stream, val, probe, ledger = _teacher_signal(placed, session, cache, plan)
    seconds["probe_and_val_label_s"] = time.perf_counter() - t0
    if cfg.run.check_resources:
        check_fits(demands(placed, cached=cache is not None), alive_nodes())
    record_start(cfg, out_dir)  # every check passed: the user's config, for a later resume to match
    return Run(cfg=placed, session=session, out_dir=out_dir, student=student, stream=stream, val=val, cache=cache,
               probe=probe, ledger=ledger, plan=plan, teacher_tokens_before=tokens_before,
               started_at=started_at or time.time(), seconds=seconds, resume_from=resume_from)


def fit_student(run: Run) -> ray.train.Result:
    """Train the student with Ray Train; the same run.name and storage path resume from the latest checkpoint."""
    from gemini_ray.training.throughput import config_matmul_params
    from gemini_ray.training.trainer import build_trainer, fit, run_spec

    spec = run_spec(run.cfg, run.student.config.to_dict(), run.session.kind, run.student.state_dict(), run.val,
                    join(run.out_dir, "progress.json"), started_at=run.started_at, plan=run.plan,
                    resume_from=run.resume_from, tensorboard_dir=join(run.out_dir, "tensorboard"),
                    teacher_params=None if run.cache else config_matmul_params(run.session.teacher_config.to_dict(),
                                                                               run.session.kind))
    run.peak_tflops = spec.costs.peak_tflops
    storage, _, name = run.out_dir.rpartition("/")
    trainer = build_trainer(run.cfg, spec, run.stream, name=name, storage_path=storage,
                            num_to_keep=run.cfg.train.keep_checkpoints)
    t0 = time.perf_counter()
    result = fit(trainer, run.cfg, spec, where=run.out_dir)
    run.seconds["label_and_train_s"] = time.perf_counter() - t0
    return result


def _student_meta(cfg: Config, session: Session) -> dict[str, Any]:
    """gemini_ray.json beside an exported student: what `gemini-ray eval` needs (teacher, kind, data, loss, corpus)."""
    as_dict = config_to_dict(cfg)
    return {"teacher": session.teacher_source, "kind": session.kind, "data": as_dict["data"],
            "loss": as_dict["loss"], "corpus_signature": session.identity["corpus"]}


def export_untrained(cfg: Config, session: Session, student_dir: str) -> str:
    """The student as `prepare` derives it (the teacher's copied layers, or student.from_pretrained), saved
    untrained as an exported student: the baseline every trained student must beat."""
    from gemini_ray.models.export import save_student

    return save_student(make_student(cfg, session), student_dir, session.teacher_source,
                        {**_student_meta(cfg, session), "untrained": True})


def export(run: Run, result: ray.train.Result) -> tuple[str, dict[str, Any]]:
    """The final checkpoint as a plain Hugging Face directory (run.output_dir or <out_dir>/student) with
    gemini_ray.json beside the weights (what `gemini-ray eval` needs: teacher, kind, data, loss, corpus).
    Returns (student directory, the checkpoint's training state)."""
    import json

    from gemini_ray.models.export import export_student

    t0 = time.perf_counter()
    cfg, session = run.cfg, run.session
    student_dir = cfg.run.output_dir or join(run.out_dir, "student")
    with result.checkpoint.as_directory() as ckpt:
        state = json.loads((Path(ckpt) / "state.json").read_text(encoding="utf-8"))
        export_student(ckpt, student_dir, session.teacher_source, _student_meta(cfg, session))
    run.seconds["export_s"] = time.perf_counter() - t0
    return student_dir, state


def export_checkpoints(run: Run, result: ray.train.Result, directory: str,
                       exported: dict[int, str] | None = None) -> dict[int, str]:
    """Every checkpoint Ray Train kept (train.keep_checkpoints) as an exported student at
    <directory>/step-<N>: {step: student directory}, by step. `exported`: steps already exported (the final
    student), used as they are."""
    from gemini_ray.models.export import export_student

    students = dict(exported or {})
    for checkpoint, _ in result.best_checkpoints:
        with checkpoint.as_directory() as ckpt:
            step = json.loads((Path(ckpt) / "state.json").read_text(encoding="utf-8"))["step"]
            if step in students:
                continue
            students[step] = export_student(ckpt, join(directory, f"step-{step:06d}"), run.session.teacher_source,
                                            _student_meta(run.cfg, run.session))
    return dict(sorted(students.items()))


def _held_out_lm(history: list[dict[str, Any]], window: int) -> dict[str, Any] | None:
    """Perplexity, KL and top-1 agreement on the held-out KD windows (the training window), overall and by
    position range, at the first and the last evaluation of the run (None: no held-out rows, or a masked
    student)."""
    from gemini_ray.metric_names import VAL_PERPLEXITY, VAL_STEP, lm_figures

    scored = [h for h in history if VAL_PERPLEXITY in h]
    if not scored:
        return None
    return {"window": window, **{when: {"step": h.get(VAL_STEP), **lm_figures(h)}
                                 for when, h in (("first", scored[0]), ("last", scored[-1]))}}


def _print_held_out_lm(lm: dict[str, Any] | None) -> None:
    """The end-of-run line of the held-out windows' perplexity, by position range."""
    if lm:
        ranges = ", ".join(f"{label}: {v['perplexity']:,.0f}" for label, v in lm["last"]["by_position"].items())
        print(f"[gemini-ray] held-out {lm['window']}-token windows: perplexity {lm['first']['perplexity']:,.0f} -> "
              f"{lm['last']['perplexity']:,.0f} (by position {ranges}), top-1 agreement with the teacher "
              f"{lm['last']['teacher_top1_agreement']:.3f}")


def _training_section(state: dict[str, Any]) -> dict[str, Any]:
    resumes, history = state.get("resumes", []), state["history"]
    return {"steps": state["step"], "epochs_started": state["epoch"] + 1,
            "resumed_from_steps": state["resumed_from_steps"], "resumes": resumes,
            "worker_group_restarts": sum(r["cause"] == "worker_group_restart" for r in resumes),
            "driver_restarts": sum(r["cause"] == "driver_restart" for r in resumes),
            "steps_repeated": sum(r["steps_repeated"] or 0 for r in resumes),
            **state["totals"],
            "first": history[0] if history else None, "last": history[-1] if history else None,
            "throughput": throughput_summary(history), "history": history}


THROUGHPUT_KEYS = ("train_tokens_per_s", "train_tflops", "train_mfu", "teacher_tokens_per_s", "teacher_tflops",
                   "teacher_mfu", "examples_per_s")


def throughput_line(t: dict[str, Any]) -> str:
    """'[gemini-ray] throughput (steady state): trainer 410 tok/s (MFU 3.2%), teacher ... against 0.098 TFLOP/s'."""
    parts = []
    for key, label in (("train", "trainer"), ("teacher", "teacher")):
        if f"{key}_tokens_per_s" in t:
            mfu = f" (MFU {t[key + '_mfu']:.1%})" if f"{key}_mfu" in t else ""
            parts.append(f"{label} {t[key + '_tokens_per_s']:,.0f} tok/s{mfu}")
    peak = f" against {t['peak_tflops']:.3g} TFLOP/s" if t.get("peak_tflops") else ""
    return f"[gemini-ray] throughput (steady state): {', '.join(parts) or 'no report'}{peak}"


def throughput_summary(history: list[dict[str, Any]]) -> dict[str, float]:
    """The mean of each throughput figure over the reports after the first (the first window holds the
    Train workers' start and the stream's first batches); over all reports when there is only one."""
    steady = history[1:] or history
    return {k: sum(h[k] for h in steady) / len(steady) for k in THROUGHPUT_KEYS if steady and all(k in h for h in steady)}


def _corpus_section(run: Run) -> dict[str, Any]:
    """The corpus counts: of the pass that made the cache; online, of what was read before training (the
    whole corpus when it was small) and of what the training stream read (counted as it streamed)."""
    import ray

    if run.probe is None:
        return {"counted_by": "the label pass that made the cache", **run.cache.manifest["corpus"]}
    streamed = ray.get(run.ledger.stats.remote())
    ray.kill(run.ledger)
    return {"counted_by": "the reads of this run (the corpus is streamed, not counted whole first)",
            "read_before_training": {"whole_corpus": run.probe.whole, **run.probe.stats.as_dict()},
            "read_by_training": streamed.as_dict()}


def summarize(run: Run, state: dict[str, Any], student_dir: str, t_start: float | None = None) -> dict[str, Any]:
    """Write <out_dir>/summary.json (config, teacher, student, corpus, teacher signal, training, wall times,
    Ray patches) and print the headline; returns the summary. t_start: perf_counter() when the command started."""
    import ray

    from gemini_ray import ray_compat
    from gemini_ray.data.cache import signal_bytes_per_token
    from gemini_ray.data.pipeline import teacher_token_counter
    from gemini_ray.models.build import count_parameters
    from gemini_ray.process_memory import peak_rss_mib

    cfg, session = run.cfg, run.session
    if t_start is not None:
        run.seconds["total_s"] = time.perf_counter() - t_start
    n_student = count_parameters(run.student)
    source_note = ({"cache": run.cache.directory, "cache_teacher_tokens": run.cache.manifest["teacher_tokens"]}
                   if run.cache else {"cache": None})
    tokens = ray.get(teacher_token_counter().total.remote()) - run.teacher_tokens_before
    summary = {
        "config": config_to_dict(cfg),
        "teacher": {"source": session.teacher_source, "kind": session.kind, "parameters": session.teacher_params,
                    "vocab_size": session.teacher_config.vocab_size, "revision": session.teacher.revision,
                    "backend": cfg.teacher.backend},
        "student": {"path": str(student_dir), "parameters": n_student,
                    "parameter_ratio": n_student / session.teacher_params},
        "corpus": _corpus_section(run),
        "teacher_signal": {**source_note, "teacher_tokens_this_run": tokens},
        "training": _training_section(state),
        "held_out_lm": _held_out_lm(state["history"], cfg.data.seq_length),
        "teacher_signal_bytes_per_token": signal_bytes_per_token(cfg.teacher.top_k, session.teacher_config.hidden_size,
                                                                 cfg.data.seq_length),
        "full_distribution_bytes_per_token": session.teacher_config.vocab_size * 4,
        "wall_time_s": run.seconds,
        "driver_peak_memory_mib": round(peak_rss_mib(), 1),  # flat in the teacher's size: its weights stay in actors
        "ray_compat": ray_compat.status(cfg.run.patch_ray_data),  # Ray release; each patch: requested, active
    }
    summary["training"]["throughput"]["peak_tflops"] = run.peak_tflops
    summary_path = join(run.out_dir, "summary.json")
    atomic_write_json(summary_path, summary)
    loss_chart(state["history"], join(run.out_dir, "loss.png"))
    first, last = summary["training"]["first"], summary["training"]["last"]
    if first and last:
        rep = (f", {cfg.loss.rep_form} loss {first[LOSS_REP]:.3f} -> {last[LOSS_REP]:.3f}"
               if cfg.loss.rep_weight > 0 and LOSS_REP in first and LOSS_REP in last else "")
        print(f"[gemini-ray] KD loss {first[LOSS_KD]:.3f} -> {last[LOSS_KD]:.3f}, "
              f"CL loss {first[LOSS_CL]:.3f} -> {last[LOSS_CL]:.3f}{rep} over {state['step']} steps")
        if VAL_OBJECTIVE in first and VAL_OBJECTIVE in last:
            print(f"[gemini-ray] held-out: KD loss {first[VAL_LOSS_KD]:.3f} -> {last[VAL_LOSS_KD]:.3f}, retrieval MRR "
                  f"{first[VAL_RETRIEVAL]:.3f} -> {last[VAL_RETRIEVAL]:.3f}, objective {last[VAL_OBJECTIVE]:.3f} "
                  "(1 = where training started, lower is better)")
        if VAL_TEACHER_AGREEMENT in first and VAL_TEACHER_AGREEMENT in last:
            print(f"[gemini-ray] held-out: span similarities ranked as the teacher ranks them (Spearman) "
                  f"{first[VAL_TEACHER_AGREEMENT]:.3f} -> {last[VAL_TEACHER_AGREEMENT]:.3f}")
    _print_held_out_lm(summary["held_out_lm"])
    print(throughput_line(summary["training"]["throughput"]))
    print(f"[gemini-ray] student: {student_dir}")
    print(f"[gemini-ray] summary: {summary_path}")
    return summary
