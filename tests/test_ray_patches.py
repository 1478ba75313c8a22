"""The scheduling-loop patch (`gemini_ray.ray_compat.patches`): what it does to a loop step, when it is installed,
and that every process of the test session's Ray has it."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from gemini_ray.ray_compat import patches as ray_patches


class _Op:
    def __init__(self, tasks: int) -> None:
        self.tasks = [object()] * tasks

    def get_active_tasks(self) -> list:
        return self.tasks


@pytest.mark.parametrize("active, sleeps", [((0, 0), 1), ((0, 2), 0)])
def test_a_loop_step_sleeps_only_when_no_task_runs(monkeypatch, active, sleeps):
    slept, calls = [], []
    monkeypatch.setattr(ray_patches.time, "sleep", slept.append)
    step = ray_patches._sleep_when_idle(lambda topology, *a, **k: calls.append((topology, a, k)) or 7)
    topology = {_Op(n): None for n in active}
    assert step(topology, "policies", max_errored_blocks=3) == 7
    assert calls == [(topology, ("policies",), {"max_errored_blocks": 3})]  # the original step, unchanged
    assert slept == [ray_patches.IDLE_SLEEP_S] * sleeps


def test_patching_twice_wraps_once_and_a_moved_function_is_left_alone(caplog):
    module = types.ModuleType("fake_executor")
    module.process_completed_tasks = original = lambda topology: None
    ray_patches._patch(module)
    ray_patches._patch(module)
    assert module.process_completed_tasks.__wrapped__ is original
    moved = types.ModuleType("fake_executor")
    ray_patches._patch(moved)  # a Ray without the function: a warning, no error
    assert "left as shipped" in caplog.text


def test_the_patch_lands_when_ray_data_is_first_imported_and_only_then():
    code = ("import sys; from gemini_ray.ray_compat import patches as p; p.setup_process(); p.setup_process(); "
            "assert sum(isinstance(f, p._PatchOnImport) for f in sys.meta_path) == 1; "
            "assert p._MODULE not in sys.modules; import ray.data; "
            "assert p._MODULE not in sys.modules; print(p.patched())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_the_switch_turns_the_hook_off(monkeypatch):
    assert ray_patches.runtime_env() == {"worker_process_setup_hook": "gemini_ray.ray_compat.patches.setup_process"}
    monkeypatch.setenv("GEMINI_RAY_PATCH_RAY_DATA", "0")
    assert ray_patches.runtime_env() == {}


def test_init_ray_passes_the_hook_and_patches_the_driver(monkeypatch, tmp_path):
    import ray

    from gemini_ray.cluster.session import init_ray
    from gemini_ray.config import build_config

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(ray_patches, "setup_process", lambda: seen.update(driver=True))
    init_ray(build_config(overrides=[f"run.storage_path={tmp_path}"]))
    assert seen["runtime_env"] == ray_patches.runtime_env() and seen["driver"]


def test_every_worker_of_the_session_gets_the_patch(ray_start_2_cpus):
    import ray

    @ray.remote(num_cpus=0.1)
    def patched() -> bool:
        return ray_patches.patched()

    assert ray.get(patched.remote())
