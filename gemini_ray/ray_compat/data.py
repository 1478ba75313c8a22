"""Ray Data: the idle scheduling loop (a patch), Ray's V1 Parquet reader (a patch), a task's context and a
dataset's block references (private reads).

1. Ray Data's idle scheduling loop (patch, opt-out `run.patch_ray_data=false` or GEMINI_RAY_PATCH_RAY_DATA=0).
   The streaming executor (Ray 2.60) waits for its tasks with `ray.wait(timeout=0.1)` only while one is running
   (`streaming_executor_state.process_completed_tasks`: `if active_tasks:`). When none is, because the
   consumer's read-ahead is full and backpressure holds new tasks back, the loop never blocks: it spins on
   resource accounting and metrics and takes a whole core. Beside a Ray Train worker that is the split
   coordinator (the actor that feeds the trainer its shard); on two cores it cut training from a cache to a
   third of its speed. No upstream issue exists (related: ray-project/ray#63544, the loop's overhead; #42377
   and #45934, the 0.1 s wait itself); the report to file is experiments/ray_spin/. `IdleSleep` sleeps
   IDLE_SLEEP_S after a loop step that leaves no task running. It is not a patch of Ray's code but a Ray Data
   execution callback, named in Ray Data's own RAY_DATA_EXECUTION_CALLBACKS: the driver sets it in its own
   environment and, through the job's runtime environment, in every worker's, so a dataset executed anywhere in
   the job (the split coordinator included) runs it, and no module is rewritten on import. Private: it
   subclasses `ray.data._internal...ExecutionCallback` and reads the executor's `_topology`. Remove it when
   Ray's loop blocks while it has nothing to wait for.

2. `read_parquet_v1` (patch of a DataContext setting; stock `ray.data.read_parquet` outside TESTED). Ray
   2.60's default Parquet reader (DataSource V2) first runs a listing task that asks for a whole CPU, which a
   trainer and a teacher pool holding all but a fraction of a node never leave free (Ray Data then waits until
   its no-progress timeout). No upstream issue found.

3. `task_context` (private read, used on every release: there is no public way to ask it). The index of the
   Ray Data task a batch is mapped in, and a dict that lives as long as the task: what a row's position
   (task, row) is made of. No upstream issue asks for a public API.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import ray
import ray.data

from gemini_ray.ray_compat.versions import tested

try:  # private: the base class Ray Data instantiates its execution callbacks from
    from ray.data._internal.execution.execution_callback import ExecutionCallback
except ImportError:  # a Ray release that moved it: IdleSleep is then never registered
    ExecutionCallback = None  # type: ignore[assignment,misc]

__all__ = ["IDLE_SLEEP_S", "CALLBACKS_ENV", "IDLE_SLEEP", "SWITCH", "IdleSleep", "idle_sleep_requested",
           "idle_sleep_env", "install_idle_sleep", "idle_sleep_active", "read_parquet_v1", "task_context"]

IDLE_SLEEP_S = 0.01
"""Seconds the loop sleeps after a step that leaves no task running: 100 idle steps a second instead of
thousands, at most 10 ms before a task whose input just arrived is dispatched."""

CALLBACKS_ENV = "RAY_DATA_EXECUTION_CALLBACKS"
"""Ray Data's variable of extra execution callbacks (`ray.data.context.EXECUTION_CALLBACKS_ENV_VAR`):
comma-separated "module.Class" names, read each time a dataset is planned, in the process that executes it."""

IDLE_SLEEP = "gemini_ray.ray_compat.data.IdleSleep"
SWITCH = "GEMINI_RAY_PATCH_RAY_DATA"
"""Environment opt-out, kept beside the config key run.patch_ray_data: "0" turns the patch off."""
_OPT_OUT = "run.patch_ray_data=false (or GEMINI_RAY_PATCH_RAY_DATA=0) turns it off on any release"
logger = logging.getLogger("gemini_ray.ray_compat")


class IdleSleep(ExecutionCallback or object):  # type: ignore[misc]
    """A Ray Data execution callback: after a scheduling-loop step that leaves no task running (and the
    execution not finished), sleep IDLE_SLEEP_S. A step with a task to wait for is unchanged."""

    def on_execution_step(self, executor: Any) -> None:
        topology = getattr(executor, "_topology", None)  # private: {operator: its state}
        if topology is None:
            return
        if not any(op.get_active_tasks() for op in topology) and not all(op.has_completed() for op in topology):
            time.sleep(IDLE_SLEEP_S)


def idle_sleep_requested(patch_ray_data: bool = True) -> bool:
    """Whether the config key (run.patch_ray_data) and the environment (GEMINI_RAY_PATCH_RAY_DATA) ask for it."""
    return bool(patch_ray_data) and os.environ.get(SWITCH, "1") != "0"


def _callbacks() -> list[str]:
    """The execution callbacks this process's environment names."""
    return [n.strip() for n in os.environ.get(CALLBACKS_ENV, "").split(",") if n.strip()]


def idle_sleep_env(patch_ray_data: bool = True) -> dict[str, str]:
    """The environment variables a job's runtime environment carries to its workers: the callback, where
    requested, on a tested Ray whose Ray Data has execution callbacks; else none (Ray as shipped)."""
    if not idle_sleep_requested(patch_ray_data) or not tested("the Ray Data idle-loop sleep", _OPT_OUT):
        return {}
    if ExecutionCallback is None:
        logger.warning("gemini_ray: this Ray Data has no ExecutionCallback; its scheduling loop is left as shipped")
        return {}
    names = _callbacks()
    return {CALLBACKS_ENV: ",".join(names if IDLE_SLEEP in names else [*names, IDLE_SLEEP])}


def install_idle_sleep(patch_ray_data: bool = True) -> bool:
    """Apply the patch (or not) in this process, the driver: datasets it executes then run the callback.
    Returns whether it is active."""
    env = idle_sleep_env(patch_ray_data)
    if env:
        os.environ.update(env)
    elif IDLE_SLEEP in _callbacks():  # switched off after an earlier run in this process
        os.environ[CALLBACKS_ENV] = ",".join(n for n in _callbacks() if n != IDLE_SLEEP)
    return idle_sleep_active()


def idle_sleep_active() -> bool:
    """Whether datasets this process executes run IdleSleep."""
    return ExecutionCallback is not None and IDLE_SLEEP in _callbacks()


# --------------------------------------------------------------------------- 2. Ray's V1 Parquet reader


def read_parquet_v1(paths: Any, **kwargs: Any) -> ray.data.Dataset:
    """ray.data.read_parquet through Ray's V1 reader (see the module's 2.); Ray's default reader outside
    TESTED or where DataContext has no use_datasource_v2."""
    ctx = ray.data.DataContext.get_current()
    if not hasattr(ctx, "use_datasource_v2") or not tested("the V1 Parquet reader", "none: Ray's default reader"):
        return ray.data.read_parquet(paths, **kwargs)
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        return ray.data.read_parquet(paths, **kwargs)
    finally:
        ctx.use_datasource_v2 = v2


# --------------------------------------------------------------------------- 3. a task's context


def task_context() -> tuple[int, dict[str, Any]] | None:
    """(the index of the Ray Data task this runs in, a dict kept for the task's life), or None outside one."""
    from ray.data._internal.execution.interfaces.task_context import TaskContext  # private

    ctx = TaskContext.get_current()
    return None if ctx is None else (ctx.task_idx, ctx.kwargs)
