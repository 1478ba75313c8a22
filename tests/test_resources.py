"""The run's resource plan against the cluster's nodes, the shared-storage rule (no Ray needed), and the sweep
of placement groups whose creator died (one test on the shared Ray instance)."""

from __future__ import annotations

import pytest

from gemini_ray.cluster.placement import (GroupRecord, PlacementGroupSweeper, check_fits, check_shared_storage, demands,
                                  on_network_filesystem, orphans, plan_totals)
from gemini_ray.config import config_from_dict
from gemini_ray.errors import GeminiRayError

ONE_LAPTOP = [{"CPU": 2.0}]


def test_default_online_plan_fits_two_cpus():
    plan = demands(config_from_dict({}), cached=False)
    need = plan_totals(plan)
    assert "GPU" not in need
    assert 1.0 < need["CPU"] <= 2.0  # one Train worker + teacher actor + miner + one light task
    check_fits(plan, ONE_LAPTOP)


def test_cached_plan_is_lighter_than_online():
    cfg = config_from_dict({})
    assert plan_totals(demands(cfg, cached=True))["CPU"] < plan_totals(demands(cfg, cached=False))["CPU"]


def test_plan_that_cannot_fit_names_the_settings():
    cfg = config_from_dict({"train": {"num_workers": 2}, "teacher": {"num_actors": 2}})
    with pytest.raises(GeminiRayError) as err:
        check_fits(demands(cfg, cached=False), ONE_LAPTOP)
    msg = str(err.value)
    assert "CPU needed, 2 in the cluster" in msg
    assert "train.num_workers" in msg and "teacher.num_actors" in msg and "run.check_resources" in msg


def test_gpu_teacher_on_cpu_cluster_fails_fast_with_the_numbers():
    cfg = config_from_dict({"teacher": {"num_gpus": 1}})
    with pytest.raises(GeminiRayError, match="one teacher actor asks for 0.5 CPU, 1 GPU.*no node"):
        check_fits(demands(cfg, cached=False), [{"CPU": 16.0}])


def test_more_gpus_per_actor_than_any_node_has_fails_although_the_total_would_do():
    """Two 1-GPU nodes hold 2 GPUs in total, but one 2-GPU teacher actor fits neither."""
    cfg = config_from_dict({"teacher": {"num_gpus": 2}})
    nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    with pytest.raises(GeminiRayError) as err:
        check_fits(demands(cfg, cached=False), nodes)
    msg = str(err.value)
    assert "2 GPU" in msg and "node 0: 8 CPU, 1 GPU" in msg and "teacher.num_gpus" in msg
    check_fits(demands(config_from_dict({"teacher": {"num_gpus": 1}}), cached=False), nodes)


def test_custom_resources_place_teachers_and_workers_on_their_nodes():
    cfg = config_from_dict({"teacher": {"resources": {"teacher": 1}}, "train": {"resources_per_worker": {"trainer": 1},
                                                                             "num_workers": 2}})
    head, teacher, trainer = {"CPU": 1.0}, {"CPU": 1.0, "teacher": 1.0}, {"CPU": 2.0, "trainer": 2.0}
    check_fits(demands(cfg, cached=False), [head, teacher, trainer])
    with pytest.raises(GeminiRayError, match="one teacher actor asks for 0.5 CPU, 1 teacher"):
        check_fits(demands(cfg, cached=False), [head, trainer])  # no node offers 'teacher'
    with pytest.raises(GeminiRayError, match="2 trainer needed, 1 in the cluster"):
        check_fits(demands(cfg, cached=False), [head, teacher, {"CPU": 4.0, "trainer": 1.0}])


MOUNTS = """/dev/sda1 / ext4 rw 0 0
tmpfs /tmp tmpfs rw 0 0
server:/export /mnt/shared nfs4 rw 0 0
gcsfuse /mnt/bucket fuse.gcsfuse rw 0 0
"""


@pytest.mark.parametrize("path,shared", [("/home/me/runs", False), ("/tmp/runs", False), ("/mnt/shared/runs", True),
                                         ("/mnt/shared", True), ("/mnt/sharedx/runs", False),
                                         ("/mnt/bucket/a", True)])
def test_network_filesystems_are_recognised(path, shared):
    assert on_network_filesystem(path, MOUNTS) is shared


def test_multi_node_run_refuses_a_node_local_path():
    cfg = config_from_dict({"run": {"storage_path": "/tmp/runs"}})
    check_shared_storage(cfg, num_nodes=1, mounts=MOUNTS)  # one node: any path
    with pytest.raises(GeminiRayError) as err:
        check_shared_storage(cfg, num_nodes=3, mounts=MOUNTS)
    msg = str(err.value)
    assert "run.storage_path='/tmp/runs' is a node-local path" in msg and "3 nodes" in msg and "s3://" in msg
    for ok in ({"run": {"storage_path": "s3://bucket/runs"}}, {"run": {"storage_path": "/mnt/shared/runs"}},
               {"run": {"storage_path": "/tmp/runs", "storage_shared": True}}):
        check_shared_storage(config_from_dict(ok), num_nodes=3, mounts=MOUNTS)
    cache = config_from_dict({"run": {"storage_path": "gs://b/runs"}, "label": {"cache_root": "/tmp/cache"}})
    with pytest.raises(GeminiRayError, match="label.cache_root='/tmp/cache'"):
        check_shared_storage(cache, num_nodes=2, mounts=MOUNTS)


def test_custom_resource_config_is_validated():
    from gemini_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="'GPU' is not a custom resource"):
        config_from_dict({"teacher": {"resources": {"GPU": 1}}})
    with pytest.raises(ConfigError, match="expected a mapping"):
        config_from_dict({"train": {"resources_per_worker": 2}})
    with pytest.raises(ConfigError, match="must be > 0"):
        config_from_dict({"train": {"resources_per_worker": {"trainer": 0}}})


def test_orphans_are_groups_of_this_job_whose_creating_actor_died():
    groups = [GroupRecord("a", "01", "dead-controller", detached=False, removed=False),   # the orphan
              GroupRecord("b", "01", "live-controller", detached=False, removed=False),   # in use
              GroupRecord("c", "01", "", detached=False, removed=False),                  # a driver's (Tune's)
              GroupRecord("d", "01", "dead-controller", detached=True, removed=False),    # detached: kept on purpose
              GroupRecord("e", "01", "dead-controller", detached=False, removed=True),    # already gone
              GroupRecord("f", "02", "dead-other-job", detached=False, removed=False)]    # another job's
    assert orphans(groups, {"dead-controller", "dead-other-job"}, "01") == ["a"]
    assert orphans(groups, set(), "01") == []


@pytest.mark.ray
def test_sweeper_frees_the_group_of_a_killed_actor_and_keeps_the_others(ray_start_2_cpus):
    """What Tune does to a trial's Train controller: the actor that reserved a group is killed. Ray keeps the
    group (and its CPUs) until the job ends; the sweeper removes it and leaves a live actor's and the driver's."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    @ray.remote(num_cpus=0)
    class Reserver:
        def reserve(self) -> str:
            group = placement_group([{"CPU": 0.1}])
            ray.get(group.ready())
            return group.id.hex()

    def state(group_id: str) -> str:
        return ray.util.placement_group_table()[group_id]["state"]

    driver_group = placement_group([{"CPU": 0.1}])
    ray.get(driver_group.ready())
    killed, alive = Reserver.remote(), Reserver.remote()
    orphan, in_use = ray.get([killed.reserve.remote(), alive.reserve.remote()])
    ray.kill(killed)
    ray.get(alive.reserve.remote())  # (a third group, of the live actor)
    try:
        with PlacementGroupSweeper(every_s=0.2, settle_s=0.2) as sweeper:
            pass
        assert sweeper.failure is None and sweeper.removed == 1
        assert state(orphan) == "REMOVED" and state(in_use) == "CREATED"
        assert state(driver_group.id.hex()) == "CREATED"
    finally:
        remove_placement_group(driver_group)
        ray.kill(alive)
        with PlacementGroupSweeper(every_s=0.2, settle_s=0.2) as sweeper:  # the live actor's two, now orphans
            pass
        assert sweeper.removed == 2


def test_worker_cpus_use_the_node_when_training_from_a_cache_alone():
    from gemini_ray.cluster.placement import with_worker_cpus

    cfg = config_from_dict({})
    assert cfg.train.cpus_per_worker is None  # auto
    cached = with_worker_cpus(cfg, cached=True, nodes=ONE_LAPTOP)
    assert cached.train.cpus_per_worker == 1.75  # both cores (two torch threads) beside one cache read
    check_fits(demands(cached, cached=True), ONE_LAPTOP)  # the whole plan still fits
    assert with_worker_cpus(cfg, cached=False, nodes=ONE_LAPTOP).train.cpus_per_worker == 1.0  # teacher beside
    assert with_worker_cpus(cfg, cached=True, nodes=ONE_LAPTOP, searching=True).train.cpus_per_worker == 1.0
    assert with_worker_cpus(cfg, cached=True, nodes=[{"CPU": 8.0}] * 2).train.cpus_per_worker == 1.0
    two = config_from_dict({"train": {"num_workers": 2}})
    assert with_worker_cpus(two, cached=True, nodes=[{"CPU": 16.0}]).train.cpus_per_worker == 7.875
    on_laptop = with_worker_cpus(two, cached=True, nodes=ONE_LAPTOP)  # two workers share the two cores
    assert on_laptop.train.cpus_per_worker == 0.875
    check_fits(demands(on_laptop, cached=True), ONE_LAPTOP)
    eight = config_from_dict({"train": {"num_workers": 8}})  # a share under half a CPU: 1, and refused
    assert with_worker_cpus(eight, cached=True, nodes=ONE_LAPTOP).train.cpus_per_worker == 1.0
    fixed = config_from_dict({"train": {"cpus_per_worker": 1.0}})
    assert with_worker_cpus(fixed, cached=True, nodes=ONE_LAPTOP).train.cpus_per_worker == 1.0  # as set
