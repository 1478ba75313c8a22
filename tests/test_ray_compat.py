"""`gemini_ray.ray_compat` against the installed Ray: each private name it uses exists with the signature it
expects and behaves as it assumes (contract tests, no cluster), a Ray release outside TESTED gets one warning
and stock Ray, the opt-out key leaves stock Ray, and every worker of the test session's Ray runs the
idle-loop sleep. A contract test that fails after a Ray upgrade names the workaround to check (and maybe
remove) before TESTED grows."""

from __future__ import annotations

import inspect
import logging
import os

import pytest

from gemini_ray import ray_compat
from gemini_ray.ray_compat import cluster, data, env, versions


@pytest.fixture
def untested_ray(monkeypatch):
    """This process as if it ran a Ray release outside TESTED (each warning may be given again)."""
    import ray

    monkeypatch.setattr(ray, "__version__", "2.99.0")
    monkeypatch.setattr(versions, "_warned", set())


@pytest.fixture
def clean_env(monkeypatch):
    """The idle-loop switches as a fresh process has them; put back after the test."""
    monkeypatch.setenv(data.CALLBACKS_ENV, "")
    monkeypatch.delenv(data.SWITCH, raising=False)
    monkeypatch.delenv(cluster.PIN_SWITCH, raising=False)


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


# --------------------------------------------------------------------------- the installed Ray, as assumed


def test_the_installed_ray_is_a_tested_release():
    import ray

    assert ".".join(ray.__version__.split(".")[:2]) in versions.TESTED, (
        f"Ray {ray.__version__}: run this file, check each workaround in gemini_ray/ray_compat, then add it to TESTED")


def test_the_scheduling_loop_still_waits_only_while_a_task_runs():
    """The spin the idle sleep works around: process_completed_tasks calls ray.wait only with active tasks.
    When this fails, Ray's loop changed: see whether it now blocks while idle (then remove IdleSleep)."""
    from ray.data._internal.execution import streaming_executor_state as state

    assert _params(state.process_completed_tasks) == [
        "topology", "backpressure_policies", "max_errored_blocks", "output_backpressure_guard", "metadata_fetcher"]
    source = inspect.getsource(state.process_completed_tasks)
    assert source.index("if active_tasks:") < source.index("ray.wait(")


def test_ray_data_runs_execution_callbacks_after_each_loop_step():
    import ray.data
    from ray.data import context
    from ray.data._internal.execution.execution_callback import ExecutionCallback
    from ray.data._internal.execution.interfaces.physical_operator import PhysicalOperator
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    assert context.EXECUTION_CALLBACKS_ENV_VAR == data.CALLBACKS_ENV
    assert issubclass(data.IdleSleep, ExecutionCallback)
    assert _params(ExecutionCallback.on_execution_step) == ["self", "executor"]
    run = inspect.getsource(StreamingExecutor.run)
    assert run.index("self._scheduling_loop_step(self._topology)") < run.index("callback.on_execution_step(self)")
    assert callable(PhysicalOperator.get_active_tasks) and callable(PhysicalOperator.has_completed)
    assert hasattr(ray.data.DataContext(), "execution_callback_classes")  # where the planner finds them


def test_ray_data_plans_the_callback_named_in_its_variable(monkeypatch):
    import ray.data

    monkeypatch.setenv(data.CALLBACKS_ENV, data.IDLE_SLEEP)
    assert data.IdleSleep in ray.data.DataContext().execution_callback_classes


class _Op:
    def __init__(self, tasks: int, done: bool = False) -> None:
        self.tasks, self.done = [object()] * tasks, done

    def get_active_tasks(self) -> list:
        return self.tasks

    def has_completed(self) -> bool:
        return self.done


class _Executor:
    def __init__(self, *ops: _Op) -> None:
        self._topology = {op: None for op in ops}


@pytest.mark.parametrize("ops, sleeps", [((_Op(0), _Op(0)), 1), ((_Op(0), _Op(2)), 0),
                                         ((_Op(0, done=True),), 0)])
def test_a_loop_step_sleeps_only_when_no_task_runs(monkeypatch, ops, sleeps):
    slept: list = []
    monkeypatch.setattr(data.time, "sleep", slept.append)
    data.IdleSleep().on_execution_step(_Executor(*ops))
    assert slept == [data.IDLE_SLEEP_S] * sleeps


def test_an_executor_without_its_topology_is_left_alone(monkeypatch):
    slept: list = []
    monkeypatch.setattr(data.time, "sleep", slept.append)
    data.IdleSleep().on_execution_step(object())
    assert slept == []


def test_the_private_names_the_other_workarounds_read():
    import ray.data
    from ray._private import state
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData
    from ray.data import read_api
    from ray.data._internal.execution.interfaces.task_context import TaskContext
    from ray.train.v2._internal.execution import context as train_context
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    # data: a task's index and its kept dict; V1 reader switch; non-empty blocks
    assert {"task_idx", "kwargs"} <= set(_params(TaskContext)) and TaskContext.get_current() is None
    assert data.task_context() is None  # outside a Ray Data task
    assert hasattr(ray.data.DataContext(), "use_datasource_v2")
    assert "use_datasource_v2" in inspect.getsource(read_api.read_parquet)
    assert "iter_internal_ref_bundles" in dir(ray.data.Dataset)
    # train: Ray's own Ctrl-C handler and where it is installed; the report logger's name
    assert _params(DataParallelTrainer._register_sigint_handler) == ["self", "controller"]
    assert _params(DataParallelTrainer._initialize_and_run_controller) == ["self", "controller_init_kwargs"]
    assert "self._register_sigint_handler(controller)" in inspect.getsource(
        DataParallelTrainer._initialize_and_run_controller)
    assert train_context.logger.name == train_context.__file__
    # cluster: the GCS placement-group table and an actor's entry
    assert callable(state.state._connect_and_get_accessor) and "actor_id" in _params(state.actors)
    assert {"placement_group_id", "creator_job_id", "creator_actor_id", "is_detached", "state"} <= set(
        PlacementGroupTableData.DESCRIPTOR.fields_by_name)


def test_the_environment_defaults_are_variables_ray_reads():
    from ray.data._internal.cluster_autoscaler import default_cluster_autoscaler_v2
    from ray.train.v2._internal import constants

    assert "RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S" in inspect.getsource(default_cluster_autoscaler_v2)
    assert constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR == "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    assert set(env.ENV_DEFAULTS) == {"RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"}


# --------------------------------------------------------------------------- on, off, and another Ray release


def test_the_job_gets_the_hook_and_the_callback(clean_env):
    assert ray_compat.runtime_env() == {"worker_process_setup_hook": "gemini_ray.ray_compat.cluster.setup_worker",
                                        "env_vars": {data.CALLBACKS_ENV: data.IDLE_SLEEP}}
    assert ray_compat.install_idle_sleep(True) and data.IDLE_SLEEP in os.environ[data.CALLBACKS_ENV]
    assert ray_compat.status()["patch_ray_data"] == {"requested": True, "active": True}


def test_the_opt_out_key_leaves_stock_ray(clean_env, monkeypatch, tmp_path):
    from gemini_ray.config import build_config

    cfg = build_config(overrides=[f"run.storage_path={tmp_path}", "run.patch_ray_data=false"])
    assert cfg.run.patch_ray_data is False
    assert ray_compat.runtime_env(cfg.run.patch_ray_data) == {
        "worker_process_setup_hook": "gemini_ray.ray_compat.cluster.setup_worker"}  # RAY_ADDRESS pinning stays
    ray_compat.install_idle_sleep(True)
    assert not ray_compat.install_idle_sleep(cfg.run.patch_ray_data)  # taken out again
    assert data.IDLE_SLEEP not in os.environ[data.CALLBACKS_ENV]
    assert ray_compat.status(False)["patch_ray_data"] == {"requested": False, "active": False}
    monkeypatch.setenv(data.SWITCH, "0")  # the environment variable still works
    assert "env_vars" not in ray_compat.runtime_env(True) and not ray_compat.install_idle_sleep(True)


def test_the_callback_keeps_callbacks_set_before_it(clean_env, monkeypatch):
    monkeypatch.setenv(data.CALLBACKS_ENV, "mine.Callback")
    assert ray_compat.runtime_env()["env_vars"] == {data.CALLBACKS_ENV: f"mine.Callback,{data.IDLE_SLEEP}"}
    ray_compat.install_idle_sleep(True)
    ray_compat.install_idle_sleep(False)
    assert os.environ[data.CALLBACKS_ENV] == "mine.Callback"


def test_another_ray_release_gets_one_warning_and_stock_ray(clean_env, untested_ray, caplog, monkeypatch):
    import ray.data

    caplog.set_level(logging.WARNING, logger="gemini_ray.ray_compat")
    assert ray_compat.runtime_env() == {"worker_process_setup_hook": "gemini_ray.ray_compat.cluster.setup_worker"}
    assert not ray_compat.install_idle_sleep(True)  # the same patch asked twice: one warning
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "Ray 2.99.0" in warned[0] and "run.patch_ray_data=false" in warned[0], warned
    assert ray_compat.status()["patch_ray_data"] == {"requested": True, "active": False}

    assert cluster.pin_address() is None and cluster.placement_groups() == []
    seen = []
    monkeypatch.setattr(ray.data, "read_parquet", lambda paths, **kw: seen.append(
        ray.data.DataContext.get_current().use_datasource_v2))
    data.read_parquet_v1("x.parquet")
    assert seen == [ray.data.DataContext.get_current().use_datasource_v2]  # Ray's default reader, untouched
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "7")
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    env.set_env_defaults()
    assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" not in os.environ
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == len(set(messages)) >= 4, messages  # one per patch: loop, sweep, reader, env


def test_the_v1_reader_switch_is_put_back(monkeypatch):
    import ray.data

    seen = []
    monkeypatch.setattr(ray.data, "read_parquet", lambda paths, **kw: seen.append(
        ray.data.DataContext.get_current().use_datasource_v2))
    before = ray.data.DataContext.get_current().use_datasource_v2
    data.read_parquet_v1("x.parquet")
    assert seen == [False] and ray.data.DataContext.get_current().use_datasource_v2 == before


def test_init_ray_passes_the_runtime_env_and_applies_the_key_to_the_driver(clean_env, monkeypatch, tmp_path):
    import ray

    from gemini_ray.cluster.session import init_ray
    from gemini_ray.config import build_config

    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    for on in (True, False):
        init_ray(build_config(overrides=[f"run.storage_path={tmp_path}", f"run.patch_ray_data={str(on).lower()}"]))
        assert seen["runtime_env"] == ray_compat.runtime_env(on) and data.idle_sleep_active() is on


def test_status_is_what_summary_json_records(clean_env):
    import json

    status = json.loads(json.dumps(ray_compat.status()))
    assert set(status) == {"ray", "tested", "patch_ray_data", "train_sigint", "pin_address"}
    assert all(set(status[k]) == {"requested", "active"} for k in ("patch_ray_data", "train_sigint", "pin_address"))


# --------------------------------------------------------------------------- a Ray instance (the session's)


@pytest.mark.ray
def test_a_dataset_runs_the_callback_in_the_driver_and_in_every_worker(ray_start_2_cpus, clean_env, monkeypatch):
    import ray
    import ray.data

    steps: list = []
    monkeypatch.setattr(data.IdleSleep, "on_execution_step", lambda self, executor: steps.append(
        type(getattr(executor, "_topology", None)).__name__))
    ray_compat.install_idle_sleep(True)
    assert ray.data.range(20, override_num_blocks=4).map_batches(lambda b: b).count() == 20
    assert steps and set(steps) == {"dict"}  # called with the executor, whose _topology is {op: state}

    @ray.remote(num_cpus=0.1)
    def in_a_worker() -> tuple[bool, bool]:
        import ray.data

        from gemini_ray.ray_compat import data as worker_data

        ray.data.range(8, override_num_blocks=2).map_batches(lambda b: b).materialize()
        return worker_data.idle_sleep_active(), worker_data.IdleSleep in (
            ray.data.DataContext.get_current().execution_callback_classes)

    assert ray.get(in_a_worker.remote()) == (True, True)
