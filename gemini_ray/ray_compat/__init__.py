"""Every use of a private Ray API, and every change gemini_ray makes to how Ray behaves, in one place (style
principle 14). Each names the upstream issue it works around (or says none exists), was tested on the Ray
releases in `TESTED`, and outside them leaves Ray as shipped with one warning naming the release and the
opt-out. The contract test, tests/test_ray_compat.py, checks each against the installed Ray.

| module | what | kind | opt-out |
|---|---|---|---|
| data | a sleep in Ray Data's idle scheduling loop (no upstream issue: experiments/ray_spin/) | patch, every process | run.patch_ray_data=false, GEMINI_RAY_PATCH_RAY_DATA=0 |
| data | Parquet through Ray's V1 reader (V2's listing task wants a whole CPU) | patch | - |
| data | a Ray Data task's index and context (`TaskContext`) | private read | - |
| data | a dataset's non-empty block references (a filter's empty blocks break a groupby) | DeveloperAPI | - |
| train | Ctrl-C during a Ray Train V2 fit raises KeyboardInterrupt (ray-project/ray#53600, #54188) | patch, driver | GEMINI_RAY_PATCH_TRAIN_SIGINT=0 |
| train | Train V2's per-report INFO log quieted (its logger's private name) | private read | - |
| cluster | RAY_ADDRESS pinned to the job's cluster (ray-project/ray#25639) | patch, every process | GEMINI_RAY_PIN_ADDRESS=0 |
| cluster | the placement-group table with creators (orphan sweeping) | private read | - |
| env | RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S=30 (ray-project/ray#37014), RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.25 | Ray settings | set them yourself |

How a job's workers obey: `init_ray` passes `runtime_env(cfg.run.patch_ray_data)` to `ray.init`; it names
`cluster.setup_worker` as the job's worker setup hook and carries RAY_DATA_EXECUTION_CALLBACKS (Ray Data's
own variable) to every worker when the idle-loop sleep is on. `summary.json` records `status(...)`.

    ray.init(runtime_env=ray_compat.runtime_env(cfg.run.patch_ray_data))
    ray_compat.install_idle_sleep(cfg.run.patch_ray_data)   # the driver itself
"""

from __future__ import annotations

import os
from typing import Any

from gemini_ray.ray_compat.cluster import SETUP_HOOK, pin_address, pin_requested
from gemini_ray.ray_compat.env import set_env_defaults
from gemini_ray.ray_compat.versions import TESTED, is_tested, ray_version

__all__ = ["TESTED", "ray_version", "is_tested", "set_env_defaults", "pin_address", "runtime_env",
           "install_idle_sleep", "status"]


def runtime_env(patch_ray_data: bool = True) -> dict[str, Any]:
    """The runtime environment a gemini_ray driver passes to `ray.init`: the worker setup hook (unless
    GEMINI_RAY_PIN_ADDRESS=0) and the idle-loop callback's variable (where run.patch_ray_data asks for it on a
    tested Ray). Ray merges it with that of a job submitted with `ray job submit --runtime-env`."""
    from gemini_ray.ray_compat.data import idle_sleep_env

    env: dict[str, Any] = {"worker_process_setup_hook": SETUP_HOOK} if pin_requested() else {}
    env_vars = idle_sleep_env(patch_ray_data)
    if env_vars:
        env["env_vars"] = env_vars
    return env


def install_idle_sleep(patch_ray_data: bool = True) -> bool:
    """The idle-loop sleep in this process (the driver), on or off as asked; returns whether it is active."""
    from gemini_ray.ray_compat import data

    return data.install_idle_sleep(patch_ray_data)


def status(patch_ray_data: bool = True) -> dict[str, Any]:
    """What summary.json records: the Ray release, TESTED, and for each patch whether it was asked for and
    whether it is active in this process."""
    import sys

    from gemini_ray.ray_compat import data, train

    ray = sys.modules.get("ray")
    try:
        gcs = ray.get_runtime_context().gcs_address if ray is not None and ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - a Ray Client driver has no GCS address
        gcs = None
    return {
        "ray": ray_version(),
        "tested": list(TESTED),
        "patch_ray_data": {"requested": data.idle_sleep_requested(patch_ray_data),
                           "active": data.idle_sleep_active()},
        "train_sigint": {"requested": train.sigint_requested(), "active": train.sigint_patched()},
        "pin_address": {"requested": pin_requested(),
                        "active": bool(gcs) and os.environ.get("RAY_ADDRESS") == gcs},
    }
