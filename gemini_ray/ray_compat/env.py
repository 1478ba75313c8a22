"""Ray settings that only exist as environment variables, set when gemini_ray is imported (before Ray reads
them) and inherited by the processes of a Ray instance this process starts. Set one yourself to keep your
value; set them on the nodes of a cluster you start yourself (`ray start`)."""

from __future__ import annotations

import os

from gemini_ray.ray_compat.versions import tested

__all__ = ["ENV_DEFAULTS", "set_env_defaults"]

ENV_DEFAULTS = {
    # Ray Data shares the cluster between running datasets through a coordinator. A dataset whose executor dies
    # with its Train run (the training stream, stopped at max_steps) keeps its share until its request expires,
    # 180 s by default, and on a small machine the next run's stream gets nothing until then (the leak of
    # ray-project/ray#37014, closed with that expiry; #59685 is open on the coordinator's sharing). Live
    # requests are renewed every ~10 s, so 30 s is safe.
    "RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S": "30",
    # Ray Train V2 hands a worker's report to the controller through a queue of one, which the controller
    # empties once per health check, every 2 s by default: a worker that reports more often waits (2.0 s a step
    # with train.log_every=1 on a tiny model). A 0.25 s poll keeps that wait below a small step's own time.
    # No upstream issue found.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}
"""Ray's environment variables gemini_ray sets unless they are set already (tested on `TESTED`)."""


def set_env_defaults() -> None:
    """Set ENV_DEFAULTS that are not set, on a tested Ray release only (else Ray's own defaults)."""
    if tested("Ray environment defaults " + ", ".join(ENV_DEFAULTS), "set them yourself to choose"):
        for name, value in ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
