"""The fit's resource plan: trainer + the data stage beside it must fit the cluster at once (no Ray needed)."""

from __future__ import annotations

import pytest

from gemini_ray.config import config_from_dict
from gemini_ray.distill import check_resources, resources_needed
from gemini_ray.errors import GeminiRayError


def test_default_online_plan_fits_two_cpus():
    need = resources_needed(config_from_dict({}), cached=False)
    assert need["GPU"] == 0
    assert 1.0 < need["CPU"] <= 2.0  # one Train worker + teacher actor + miner + one light task
    check_resources(need, {"CPU": 2.0})


def test_cached_plan_is_lighter_than_online():
    cfg = config_from_dict({})
    assert resources_needed(cfg, cached=True)["CPU"] < resources_needed(cfg, cached=False)["CPU"]


def test_plan_that_cannot_fit_names_the_settings():
    cfg = config_from_dict({"train": {"num_workers": 2}, "teacher": {"num_actors": 2}})
    with pytest.raises(GeminiRayError) as err:
        check_resources(resources_needed(cfg, cached=False), {"CPU": 2.0})
    msg = str(err.value)
    assert "CPU needed, 2 in the cluster" in msg
    assert "train.num_workers" in msg and "teacher.num_actors" in msg and "run.check_resources" in msg


def test_gpu_teacher_on_cpu_cluster_fails():
    cfg = config_from_dict({"teacher": {"num_gpus": 1}})
    with pytest.raises(GeminiRayError, match="GPU needed, 0 in the cluster"):
        check_resources(resources_needed(cfg, cached=False), {"CPU": 16.0})
