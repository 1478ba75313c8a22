"""Ray Train V2: Ctrl-C during a fit (a patch) and the name of its report logger (a private read).

1. Ctrl-C during a fit (patch, driver only; opt-out GEMINI_RAY_PATCH_TRAIN_SIGINT=0). `DataParallelTrainer`
   installs its own SIGINT handler for the fit (`_register_sigint_handler`, ray-project/ray#53600 and #54188):
   it aborts the controller, then calls `sys.exit(0)`, which leaves the process with exit status 1 and no
   KeyboardInterrupt for the command to answer (its own comment: "for some reason the process still exits
   with 1"), and it never puts the previous handler back. Patched: the first Ctrl-C aborts the controller the
   same way (its workers stop; waited on for at most ABORT_TIMEOUT_S) and then raises KeyboardInterrupt in the
   driver; a second Ctrl-C stops waiting for the abort. The handler installed before the fit is put back when
   it returns. Fits off the main thread (a Tune trial) get no handler, as in Ray. `build_trainer` applies it
   (a plain call: the trainer module is imported by then).

2. `quiet_train_logs` (private read; Ray's logging outside TESTED). Train V2 logs every report at INFO under
   a logger named by its file's path (`ray.train.v2._internal.execution.context.__file__`): one line per
   report is gemini_ray's, not Ray's. No upstream issue found.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import ModuleType
from typing import Any, Callable

from gemini_ray.ray_compat.versions import tested

__all__ = ["ABORT_TIMEOUT_S", "SIGINT_SWITCH", "TRAINER_MODULE", "patch_sigint", "sigint_patched",
           "sigint_requested", "quiet_train_logs"]

ABORT_TIMEOUT_S = 5.0
"""Seconds a Ctrl-C waits for Ray Train's controller to abort before the driver goes on. Its abort first stops
the placement-group cleaner, which can take up to 12 s (Ray 2.60: a state-API query of up to 10 s in flight);
a driver that goes on sooner ends its job's actors as it exits, workers included, all the same."""

TRAINER_MODULE = "ray.train.v2.api.data_parallel_trainer"
SIGINT_SWITCH = "GEMINI_RAY_PATCH_TRAIN_SIGINT"
_MARK = "_gemini_ray_sigint"
logger = logging.getLogger("gemini_ray.ray_compat")


def sigint_requested() -> bool:
    """Whether the environment leaves the Ctrl-C patch on (GEMINI_RAY_PATCH_TRAIN_SIGINT is not "0")."""
    return os.environ.get(SIGINT_SWITCH, "1") != "0"


def patch_sigint(module: ModuleType | None = None) -> bool:
    """Replace DataParallelTrainer's SIGINT handler for the fit in `module` (default: Ray's trainer module,
    imported). Ray 2.60: `_initialize_and_run_controller(self, **kwargs)` creates the controller actor, calls
    `_register_sigint_handler(controller)` on the main thread, then blocks in `ray.get(controller.run.remote())`.
    Returns whether the patch is in place."""
    if not sigint_requested():
        return False
    if module is None:
        import importlib

        module = importlib.import_module(TRAINER_MODULE)
    trainer = getattr(module, "DataParallelTrainer", None)
    run = getattr(trainer, "_initialize_and_run_controller", None)
    if run is None or not hasattr(trainer, "_register_sigint_handler"):
        logger.warning("gemini_ray: this Ray Train has no DataParallelTrainer._register_sigint_handler; Ctrl-C "
                       "during a fit is left as shipped")
        return False
    if not tested("the Ray Train Ctrl-C handler", "GEMINI_RAY_PATCH_TRAIN_SIGINT=0 turns it off"):
        return False
    if getattr(run, _MARK, False):
        return True

    def _initialize_and_run_controller(self: Any, **kwargs: Any) -> Any:
        main = threading.current_thread() is threading.main_thread()
        before = signal.getsignal(signal.SIGINT) if main else None
        try:
            return run(self, **kwargs)
        finally:
            if before is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(signal.SIGINT, before)

    def _register_sigint_handler(self: Any, controller: Any) -> None:
        signal.signal(signal.SIGINT, _abort_then_interrupt(controller))

    setattr(_initialize_and_run_controller, _MARK, True)
    _initialize_and_run_controller.__wrapped__ = run  # type: ignore[attr-defined]
    trainer._initialize_and_run_controller = _initialize_and_run_controller
    trainer._register_sigint_handler = _register_sigint_handler
    return True


def _abort_then_interrupt(controller: Any) -> Callable[[int, Any], None]:
    """A SIGINT handler: abort the Train controller (Ray's own `TrainController.abort`: its callbacks, then its
    worker group, then it exits), then raise KeyboardInterrupt where the driver waits for the fit."""

    def on_sigint(signum: int, frame: Any) -> None:
        import ray

        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: stop waiting for the abort
        try:
            ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - the controller exits as it aborts (RayActorError), or was gone
            pass
        raise KeyboardInterrupt

    return on_sigint


def sigint_patched() -> bool:
    """Whether Ray Train V2's trainer, in this process, raises KeyboardInterrupt on Ctrl-C (if it is loaded)."""
    module = sys.modules.get(TRAINER_MODULE)
    trainer = getattr(module, "DataParallelTrainer", None)
    return bool(getattr(getattr(trainer, "_initialize_and_run_controller", None), _MARK, False))


def quiet_train_logs() -> None:
    """Ray Train's report lines at WARNING and above only (see the module's 2.)."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    if not tested("quieting Ray Train V2's report log", "none: Ray's own log lines"):
        return
    try:
        from ray.train.v2._internal.execution import context  # private: its logger is named by this file
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
