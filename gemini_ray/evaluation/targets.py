"""The quality targets a distilled student is held to, and where a curve of checkpoints is heading.

Pure functions of evaluation rows (`gemini_ray.jobs.evaluate.evaluate`), no Ray:

    met = check_targets(final, teacher, untrained, paired)   # one entry per target: value, goal, met
    step = extrapolate_step([60, 120, 180], [900.0, 600.0, 450.0], goal=153.0, higher_is_better=False,
                            log_value=True)   # the step a power law through them reaches 153 at

A goal is relative to the teacher where that is what matters (perplexity within 4x of the
teacher's, Lee and RT at 95 % of the teacher's) and to the untrained initialisation for the embedding
metrics (training must not make them worse). The extrapolation is a straight line through the last
checkpoints in log(step) (and log(value) for perplexity and KL: a power law); it is a forecast, labelled
as such wherever it is shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Target", "TARGETS", "metric_value", "goal_of", "check_targets", "extrapolate_step"]


@dataclass(frozen=True)
class Target:
    key: str
    """Where the value is in an evaluation row: 'lm.perplexity', 'lee_spearman', 'vs_teacher.speedup'."""
    title: str
    higher_is_better: bool
    absolute: float | None = None
    """The goal itself (e.g. KL <= 1.5 nats)."""
    of_teacher: float | None = None
    """The goal as a multiple of the teacher's value (e.g. perplexity <= 4x the teacher's)."""
    at_least_untrained: bool = False
    """Also no worse than the untrained initialisation."""
    log_value: bool = False
    """Extrapolate log(value) (a power law in the step): perplexity and KL fall that way."""


MAX_FORECAST_STEPS = 1e9
"""A forecast past this many steps is reported as 'not heading there'."""

TARGETS = (
    Target("lm.perplexity", "held-out perplexity <= 4x the teacher's", False, of_teacher=4.0, log_value=True),
    Target("lm.kl_to_teacher", "KL to the teacher <= 1.5 nats", False, absolute=1.5, log_value=True),
    Target("lm.teacher_top1_agreement", "top-1 agreement with the teacher >= 0.5", True, absolute=0.5),
    Target("lee_spearman", "Lee Spearman >= 95 % of the teacher's and >= the untrained student's", True,
           of_teacher=0.95, at_least_untrained=True),
    Target("rt_accuracy", "RT accuracy >= 95 % of the teacher's and >= the untrained student's", True,
           of_teacher=0.95, at_least_untrained=True),
    Target("vs_teacher.parameter_ratio", "parameters <= 40 % of the teacher's", False, absolute=0.40),
    Target("vs_teacher.speedup", "forward tokens/s >= 2.5x the teacher's", True, absolute=2.5),
)


def metric_value(row: dict[str, Any], key: str) -> float | None:
    """The value at a dotted key of an evaluation row, or None when the row lacks it."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def goal_of(target: Target, teacher: dict[str, Any], untrained: dict[str, Any] | None = None) -> float | None:
    """The target's goal value (None when it is relative to a teacher value that was not measured). With the
    untrained student's row, a target that must also be no worse than it gets the stricter of the two: the
    value a curve has to reach to meet the whole target."""
    if target.absolute is not None:
        goal = target.absolute
    else:
        reference = metric_value(teacher, target.key)
        if reference is None:
            return None
        goal = target.of_teacher * reference
    base = metric_value(untrained, target.key) if target.at_least_untrained and untrained is not None else None
    if base is None:
        return goal
    return max(goal, base) if target.higher_is_better else min(goal, base)


def _better_or_equal(target: Target, value: float, goal: float) -> bool:
    return value >= goal if target.higher_is_better else value <= goal


def check_targets(final: dict[str, Any], teacher: dict[str, Any], untrained: dict[str, Any] | None,
                  paired: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Each target at the final checkpoint: its value, goal, whether it is met, and for the embedding
    targets the untrained student's value and the paired difference's interval (`paired`: final minus
    untrained, from `paired_differences`). A target whose value was not measured has met=None."""
    out = []
    for target in TARGETS:
        value, goal = metric_value(final, target.key), goal_of(target, teacher)
        entry: dict[str, Any] = {"key": target.key, "target": target.title, "value": value, "goal": goal}
        met = None if value is None or goal is None else _better_or_equal(target, value, goal)
        if target.at_least_untrained and untrained is not None and value is not None:
            base = metric_value(untrained, target.key)
            entry["untrained"] = base
            if (paired or {}).get(target.key):
                entry["versus_untrained"] = paired[target.key]
            if base is not None and met is not None:
                met = met and _better_or_equal(target, value, base)
        entry["met"] = met
        out.append(entry)
    return out


def extrapolate_step(steps: list[int], values: list[float | None], goal: float, higher_is_better: bool,
                     log_value: bool = False, last: int = 3) -> float | None:
    """The step at which a straight line through the last `last` points, in log(step) (and log(value) when
    log_value), reaches `goal`; when the last point meets it, the first step from which every point does
    (measured, not extrapolated); None when the line does not
    head towards the goal (flat or the wrong way), would reach it only past MAX_FORECAST_STEPS, or fewer
    than two points have step > 0."""
    points = [(s, v) for s, v in zip(steps, values) if s > 0 and v is not None and (v > 0 or not log_value)]
    met = [(v >= goal) if higher_is_better else (v <= goal) for _, v in points]
    if met and met[-1]:  # measured: the first step from which every later checkpoint meets it
        first = len(met) - next((i for i, ok in enumerate(reversed(met)) if not ok), len(met))
        return float(points[first][0])
    points = points[-last:]
    if len(points) < 2 or (log_value and goal <= 0):
        return None
    x = np.log([s for s, _ in points])
    y = np.array([v for _, v in points], dtype=float)
    y, target = (np.log(y), math.log(goal)) if log_value else (y, goal)
    slope, intercept = np.polyfit(x, y, 1)
    if abs(slope) < 1e-9 * (1 + abs(y).max()) or (slope > 0) != higher_is_better:  # flat, or moving away
        return None
    log_step = (target - intercept) / slope
    return float(math.exp(log_step)) if log_step < math.log(MAX_FORECAST_STEPS) else None
