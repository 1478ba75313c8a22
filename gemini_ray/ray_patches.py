"""A fix for Ray Data's scheduling loop, applied in every process of a gemini_ray job.

Ray Data's streaming executor (Ray 2.60) waits for its tasks with `ray.wait(timeout=0.1)` only while some
task is running (`streaming_executor_state.process_completed_tasks`). When none is, because the consumer's
read-ahead is full and backpressure holds new tasks back, the loop never blocks: it spins on resource
accounting and metrics and takes most of a core. Beside a Ray Train worker that is the split coordinator
(the actor that feeds the trainer its shard), and on two cores it cut training from a cache to a third of
its speed (README, "Numbers"). The patch sleeps `IDLE_SLEEP_S` before a loop step that finds no running
task; a step that has tasks to wait for is unchanged.

The patch must reach the coordinator's process, which Ray Data starts, so `init_ray` names `setup_process`
as the job's `worker_process_setup_hook` (`runtime_env()`), and applies it to the driver too (a pass that runs
alone executes there). Set GEMINI_RAY_PATCH_RAY_DATA=0 to run Ray Data as shipped. If a Ray release moves
the function, the patch is skipped with a warning and Ray runs as shipped. Remove this module when Ray's
loop blocks while it has nothing to wait for.
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import sys
import time
from types import ModuleType
from typing import Any

__all__ = ["IDLE_SLEEP_S", "SETUP_HOOK", "runtime_env", "setup_process", "patched"]

IDLE_SLEEP_S = 0.01
"""Seconds a scheduling-loop step sleeps when no task is running: 100 idle steps a second instead of
thousands, at most 10 ms before a task whose input just arrived is dispatched."""

SETUP_HOOK = "gemini_ray.ray_patches.setup_process"
_MODULE = "ray.data._internal.execution.streaming_executor"
_ENV_SWITCH = "GEMINI_RAY_PATCH_RAY_DATA"
_MARK = "_gemini_ray_idle_sleep"
logger = logging.getLogger(__name__)


def enabled() -> bool:
    return os.environ.get(_ENV_SWITCH, "1") != "0"


def runtime_env() -> dict[str, Any]:
    """The runtime environment a gemini_ray driver passes to `ray.init`: the setup hook, unless switched off.
    Ray merges it with the runtime environment of a job submitted with `ray job submit --runtime-env`."""
    return {"worker_process_setup_hook": SETUP_HOOK} if enabled() else {}


def setup_process() -> None:
    """Patch Ray Data's scheduling loop in this process: now if Ray Data's executor is loaded, else when it
    is first imported (most worker processes never import it, and importing it costs ~0.7 s of CPU)."""
    module = sys.modules.get(_MODULE)
    if module is not None:
        _patch(module)
    elif not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def _patch(module: ModuleType) -> None:
    original = getattr(module, "process_completed_tasks", None)
    if original is None:
        logger.warning("gemini_ray: this Ray has no %s.process_completed_tasks; Ray Data's scheduling loop "
                       "left as shipped", _MODULE)
        return
    if not getattr(original, _MARK, False):
        module.process_completed_tasks = _sleep_when_idle(original)  # type: ignore[attr-defined]


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when Ray Data's executor module is imported, wraps its loader to patch it."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != _MODULE:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None and spec.loader is not None:
                load = spec.loader.exec_module

                def load_and_patch(module: ModuleType) -> None:
                    load(module)
                    _patch(module)

                spec.loader.exec_module = load_and_patch  # this spec's own loader instance
                return spec
        return None


def _sleep_when_idle(original: Any) -> Any:
    def process_completed_tasks(topology: Any, *args: Any, **kwargs: Any) -> Any:
        if not any(op.get_active_tasks() for op in topology):
            time.sleep(IDLE_SLEEP_S)
        return original(topology, *args, **kwargs)

    setattr(process_completed_tasks, _MARK, True)
    process_completed_tasks.__wrapped__ = original  # type: ignore[attr-defined]
    return process_completed_tasks


def patched() -> bool:
    """Whether this process runs the patched loop (imports Ray Data's executor)."""
    import importlib

    module = importlib.import_module(_MODULE)
    return bool(getattr(getattr(module, "process_completed_tasks", None), _MARK, False))
