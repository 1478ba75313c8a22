"""The student a run starts from, as `distill` builds it: shared by distill, the ablation's untrained row and
every search trial (`commands/tune.py`), so that a trial trains exactly what `distill` would for its config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gemini_ray.config import Config
from gemini_ray.errors import GeminiRayError

if TYPE_CHECKING:
    from torch import nn

    from gemini_ray.cluster.session import Session

__all__ = ["check_student", "make_student", "same_student"]


def check_student(cfg: Config, session: Session, student: nn.Module | None = None) -> None:
    """Refuse what distill refuses of a student for `cfg`: loss.objective=lm beside a teacher that is not
    causal, and the cosine representation term (loss.rep_weight > 0, loss.rep_form=cosine) on a student
    whose width differs from the teacher's (None: not built yet, so only the first)."""
    if cfg.loss.objective == "lm" and session.kind != "causal":
        raise GeminiRayError("loss.objective=lm (next-token cross-entropy) needs a causal teacher's tokenizer and "
                             f"spans; this teacher is {session.kind}. Use loss.objective=distill.")
    if student is None:
        return
    widths = student.config.hidden_size, session.teacher_config.hidden_size
    if cfg.loss.rep_weight > 0 and cfg.loss.rep_form == "cosine" and widths[0] != widths[1]:
        raise GeminiRayError(
            f"loss.rep_weight={cfg.loss.rep_weight} compares the student's span embeddings with the teacher's, "
            f"but the student is {widths[0]} wide and the teacher {widths[1]}. Set loss.rep_form=similarity "
            "(compares similarities, any width), loss.rep_weight=0, or use a student as wide as the teacher "
            "(drop student.hidden_size).")


def make_student(cfg: Config, session: Session) -> nn.Module:
    """The student a run of `cfg` starts from: student.from_pretrained, or derived from the teacher (its
    copied layers, or random, seeded by train.seed), after `check_student`. Used by distill, the ablation's
    untrained row and every search trial."""
    from gemini_ray.models.build import build_student, count_parameters, load_student

    check_student(cfg, session)  # before the build: copying a large teacher's layers takes a while
    if cfg.student.from_pretrained:
        student = load_student(cfg.student.from_pretrained, session.teacher, session.tokenizer)
    else:
        student = build_student(session.teacher, cfg.student, seed=cfg.train.seed)
    check_student(cfg, session, student)
    n_teacher, n_student = session.teacher_params, count_parameters(student)
    print(f"[gemini-ray] teacher {session.teacher_source} ({session.kind}, {n_teacher / 1e6:.1f} M params); "
          f"student {n_student / 1e6:.1f} M params ({n_student / n_teacher:.0%} of the teacher)")
    return student


def same_student(a: Config, b: Config) -> bool:
    """`make_student` builds the same weights for both configs: it reads student.* and train.seed (it may
    still refuse one config and not the other: `check_student`)."""
    return a.student == b.student and a.train.seed == b.train.seed
