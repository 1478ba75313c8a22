"""Ray's quirks that gemini_ray works around, each patch in one place here (style principle 14). Each names
the Ray code path and upstream issue, was tested on the Ray versions in `TESTED_RAY`, and leaves Ray as shipped
where what it patches is missing (and, for the two later ones, outside those versions).

1. Ray Data's scheduling loop, applied in every process of a gemini_ray job. Ray Data's streaming executor
(Ray 2.60) waits for its tasks with `ray.wait(timeout=0.1)` only while some task is running
(`streaming_executor_state.process_completed_tasks`). When none is, because the consumer's read-ahead is
full and backpressure holds new tasks back, the loop never blocks: it spins on resource accounting and
metrics and takes most of a core. Beside a Ray Train worker that is the split coordinator (the actor that
feeds the trainer its shard), and on two cores it cut training from a cache to a third of its speed (README,
"Numbers"). The patch sleeps `IDLE_SLEEP_S` before a loop step that finds no running task; a step that has
tasks to wait for is unchanged. The patch must reach the coordinator's process, which Ray Data starts, so
`init_ray` names `setup_process` as the job's `worker_process_setup_hook` (`runtime_env()`), and applies it
to the driver too (a pass that runs alone executes there). Set GEMINI_RAY_PATCH_RAY_DATA=0 to run Ray Data
as shipped (that also drops the hook, and with it fix 3 in the workers). If a Ray release moves the
function, the patch is skipped with a warning. Remove it when Ray's loop blocks while it has nothing to
wait for.

2. Ctrl-C during a Ray Train V2 fit (driver only, `setup_driver`). `DataParallelTrainer` installs its own
SIGINT handler for the fit (`_register_sigint_handler`, ray-project/ray#53600 and #54188): it aborts the
controller, then calls `sys.exit(0)`, which leaves the process with exit status 1 and no KeyboardInterrupt
for the command to answer (its own comment: "for some reason the process still exits with 1"), and it
never puts the previous handler back. Patched: the first Ctrl-C aborts the controller the same way
(its workers stop; waited on for at most `ABORT_TIMEOUT_S`) and then raises KeyboardInterrupt in the
driver; a second Ctrl-C stops waiting for the abort. The handler that was installed before the fit is put
back when it returns. Fits off the main thread (a Tune trial) get no handler, as in Ray. Set
GEMINI_RAY_PATCH_TRAIN_SIGINT=0 for Ray's handler.

3. Ray's state API picks its cluster by itself (every process of a job: `pin_address`). A call with no
address (`ray.util.state.get_actor(id)`: the Ray Train V2 `PlacementGroupCleaner` polls the controller so,
every second, and Ray Data's hanging detector asks for tasks) resolves it through
`ray.dashboard.utils.get_address_for_submission_client(None)`: RAY_API_SERVER_ADDRESS, then RAY_ADDRESS,
else `services.canonicalize_bootstrap_address_or_die(None)`, which reads /tmp/ray/ray_current_cluster (the
last `ray start` on the machine, maybe another instance) and else lists every GCS process on the machine:
with two Ray instances it raises "Found multiple active Ray instances", and the cleaner's thread dies with
that traceback in the run's output (ray-project/ray#25639; #54468 made a connected worker default to its
own cluster, but that is not in Ray 2.60's `ray_address_to_api_server_url`; the open #65447 scopes the
cleaner's queries). Ray does not hand a worker its cluster's address in the environment, so the job's
setup hook sets RAY_ADDRESS, in each worker process, to the GCS address that worker is connected to, and
`init_ray` does the same in a driver that it connected itself. Set GEMINI_RAY_PIN_ADDRESS=0 to leave
RAY_ADDRESS alone.
"""

from __future__ import annotations

import importlib.abc
import logging
import os
import signal
import sys
import threading
import time
from types import ModuleType
from typing import Any, Callable

__all__ = ["IDLE_SLEEP_S", "ABORT_TIMEOUT_S", "TESTED_RAY", "SETUP_HOOK", "runtime_env", "setup_process",
           "setup_driver", "pin_address", "patched", "train_sigint_patched"]

TESTED_RAY = ("2.60",)
"""Ray releases (major.minor) the patches were tested on; fixes 2 and 3 apply to these only."""

IDLE_SLEEP_S = 0.01
"""Seconds a scheduling-loop step sleeps when no task is running: 100 idle steps a second instead of
thousands, at most 10 ms before a task whose input just arrived is dispatched."""

ABORT_TIMEOUT_S = 5.0
"""Seconds a Ctrl-C waits for Ray Train's controller to abort before the driver goes on. Its abort first stops
the placement-group cleaner, which can take up to 12 s (Ray 2.60: a state-API query of up to 10 s in flight);
a driver that goes on sooner ends its job's actors as it exits, workers included, all the same."""

SETUP_HOOK = "gemini_ray.ray_compat.patches.setup_process"
_MODULE = "ray.data._internal.execution.streaming_executor"
_TRAINER_MODULE = "ray.train.v2.api.data_parallel_trainer"
_ENV_SWITCH = "GEMINI_RAY_PATCH_RAY_DATA"
_SIGINT_SWITCH = "GEMINI_RAY_PATCH_TRAIN_SIGINT"
_ADDRESS_SWITCH = "GEMINI_RAY_PIN_ADDRESS"
_MARK = "_gemini_ray_idle_sleep"
_SIGINT_MARK = "_gemini_ray_sigint"
logger = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether the Ray Data patch (fix 1), and with it the job's setup hook, is on."""
    return os.environ.get(_ENV_SWITCH, "1") != "0"


def _switched_on(name: str) -> bool:
    return os.environ.get(name, "1") != "0"


def _tested_ray() -> bool:
    import ray

    return ".".join(ray.__version__.split(".")[:2]) in TESTED_RAY


def runtime_env() -> dict[str, Any]:
    """The runtime environment a gemini_ray driver passes to `ray.init`: the setup hook, unless switched off.
    Ray merges it with the runtime environment of a job submitted with `ray job submit --runtime-env`."""
    return {"worker_process_setup_hook": SETUP_HOOK} if enabled() else {}


def setup_process() -> None:
    """The job's worker setup hook (and, from `init_ray`, the driver's): in a worker, pin RAY_ADDRESS to its
    cluster (fix 3); patch Ray Data's scheduling loop in this process: now if Ray Data's executor is loaded,
    else when it is first imported (most worker processes never import it, and importing it costs ~0.7 s of
    CPU)."""
    if _is_worker():
        pin_address()
    module = sys.modules.get(_MODULE)
    if module is not None:
        _patch(module)
    elif not any(isinstance(finder, _PatchOnImport) and finder.module == _MODULE for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport(_MODULE, _patch))


def setup_driver() -> None:
    """The driver's own patches: Ctrl-C during a Ray Train fit raises KeyboardInterrupt (fix 2), now if Ray
    Train V2's trainer module is loaded, else when it is first imported."""
    if not _switched_on(_SIGINT_SWITCH):
        return
    module = sys.modules.get(_TRAINER_MODULE)
    if module is not None:
        _patch_train_sigint(module)
    elif not any(isinstance(f, _PatchOnImport) and f.module == _TRAINER_MODULE for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport(_TRAINER_MODULE, _patch_train_sigint))


# --------------------------------------------------------------------------- 1. Ray Data's scheduling loop


def _patch(module: ModuleType) -> None:
    original = getattr(module, "process_completed_tasks", None)
    if original is None:
        logger.warning("gemini_ray: this Ray has no %s.process_completed_tasks; Ray Data's scheduling loop "
                       "left as shipped", _MODULE)
        return
    if not getattr(original, _MARK, False):
        module.process_completed_tasks = _sleep_when_idle(original)  # type: ignore[attr-defined]


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when `module` is imported, wraps its loader to run `patch` on it."""

    def __init__(self, module: str = _MODULE, patch: Callable[[ModuleType], None] = _patch) -> None:
        self.module, self.patch = module, patch

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != self.module:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None and spec.loader is not None:
                load, patch = spec.loader.exec_module, self.patch

                def load_and_patch(module: ModuleType) -> None:
                    load(module)
                    patch(module)

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


# --------------------------------------------------------------------------- 2. Ctrl-C during a Ray Train fit


def _patch_train_sigint(module: ModuleType) -> None:
    """Replace DataParallelTrainer's SIGINT handler for the fit (Ray 2.60:
    `_initialize_and_run_controller` creates the controller actor, calls `_register_sigint_handler(controller)`
    on the main thread, then blocks in `ray.get(controller.run.remote())`)."""
    trainer = getattr(module, "DataParallelTrainer", None)
    run = getattr(trainer, "_initialize_and_run_controller", None)
    if run is None or not hasattr(trainer, "_register_sigint_handler") or not _tested_ray():
        logger.info("gemini_ray: Ray Train's Ctrl-C handling left as shipped (Ray %s)",
                    sys.modules["ray"].__version__)
        return
    if getattr(run, _SIGINT_MARK, False):
        return

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

    setattr(_initialize_and_run_controller, _SIGINT_MARK, True)
    _initialize_and_run_controller.__wrapped__ = run  # type: ignore[attr-defined]
    trainer._initialize_and_run_controller = _initialize_and_run_controller
    trainer._register_sigint_handler = _register_sigint_handler


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


def train_sigint_patched() -> bool:
    """Whether Ray Train V2's trainer, in this process, raises KeyboardInterrupt on Ctrl-C (imports it)."""
    import importlib

    trainer = getattr(importlib.import_module(_TRAINER_MODULE), "DataParallelTrainer", None)
    return bool(getattr(getattr(trainer, "_initialize_and_run_controller", None), _SIGINT_MARK, False))


# --------------------------------------------------------------------------- 3. the state API's cluster


def _is_worker() -> bool:
    """Whether this process is a Ray worker (a task or actor process), connected to its cluster."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    from ray._private.worker import global_worker  # private: the mode Ray started this process in

    return global_worker.mode == ray.WORKER_MODE


def pin_address() -> str | None:
    """Set RAY_ADDRESS in this process to the GCS address of the cluster it is connected to, so that Ray code
    that finds its cluster by itself finds this one (fix 3). Returns the address, or None where nothing was
    set: switched off, another Ray release, not connected, a Ray Client driver (ray://), or
    RAY_API_SERVER_ADDRESS set (which the state API prefers)."""
    ray = sys.modules.get("ray")
    if (not _switched_on(_ADDRESS_SWITCH) or ray is None or not ray.is_initialized() or not _tested_ray()
            or os.environ.get("RAY_API_SERVER_ADDRESS")):
        return None
    try:
        if ray.util.client.ray.is_connected():
            return None
        address = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - a Ray without these leaves RAY_ADDRESS as it was
        return None
    if address:
        os.environ["RAY_ADDRESS"] = address
    return address or None
