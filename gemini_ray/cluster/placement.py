"""Where the work runs: the resource plan of a fit, checked against the cluster's nodes before it starts,
and the shared-storage rule of multi-node runs.

Ray waits forever (Ray Data: until its no-progress timeout) for resources no node can offer, so a plan
that cannot be placed is refused up front with the numbers:

* every unit (one teacher actor, one Train worker, the miner, a read task) must fit on one node's totals;
* all units at once must fit the cluster's totals (the data stage streams beside the trainer).

Node facts come from `ray.nodes()`; the checks themselves are plain functions of dicts.

A search also sweeps up placement groups that nothing can use any more (`PlacementGroupSweeper`): Tune
stops a trial (ASHA, or a trial that reached its last report) by ending the trial's process, and Ray Train's
controller, ended with it, can restart its worker group while it dies. The group it reserves then outlives
its creator and holds its CPUs for the rest of the cluster's life (Ray 2.60; ray-project/ray#54305), and every
later trial's data stage waits for a CPU that never frees.
"""

from __future__ import annotations

import threading
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from gemini_ray.config import Config
from gemini_ray.data.budgets import CACHE_READ_CPUS, LIGHT_CPUS, STREAM_TOKENIZE_CPUS
from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import is_remote, local_path

__all__ = ["Demand", "demands", "with_worker_cpus", "alive_nodes", "check_fits", "plan_totals", "on_network_filesystem",
           "check_shared_storage", "GroupRecord", "orphans", "remove_orphaned_groups", "PlacementGroupSweeper"]

NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "ceph", "glusterfs", "gpfs", "beegfs",
                       "9p", "virtiofs", "afs", "efs", "wekafs", "panfs"}
"""Filesystem types (/proc/mounts) that every node of a cluster can mount; any 'fuse.*' type counts too
(gcsfuse, s3fs, JuiceFS...)."""


@dataclass(frozen=True)
class Demand:
    """`count` units of `per_unit` resources, each placed whole on one node."""

    what: str
    per_unit: dict[str, float]
    count: int
    keys: tuple[str, ...] = field(default=())
    """Config keys that change this demand (named in errors)."""


def demands(cfg: Config, cached: bool, trainer: bool = True) -> list[Demand]:
    """The units a run holds at once: Train workers (when `trainer`) plus the data stage beside them — the
    teacher pool, the miner, one light task and the corpus's read and tokenize tasks when labelling online;
    one fractional read from a cache."""

    out = []
    if trainer:
        t = cfg.train
        worker = {"CPU": t.cpus_per_worker or 1.0, **({"GPU": 1.0} if t.use_gpu else {}), **t.resources_per_worker}
        out.append(Demand("Train worker", worker, t.num_workers,
                          ("train.num_workers", "train.cpus_per_worker", "train.use_gpu", "train.resources_per_worker")))
    if cached:
        out.append(Demand("cache read task", {"CPU": CACHE_READ_CPUS}, 1))
    else:
        out += _teacher_demands(cfg.teacher)
        out.append(Demand("miner actor + one light task", {"CPU": 2 * LIGHT_CPUS}, 1))
        out.append(Demand("corpus read + tokenize task", {"CPU": LIGHT_CPUS + STREAM_TOKENIZE_CPUS}, 1))
    return out


def _teacher_demands(t) -> list[Demand]:
    """The teacher pool: one unit per actor holding its GPUs; an actor of a vLLM engine over several GPUs is
    a placement group of one-GPU bundles (`vllm_teacher.engine_bundles`): each tensor-parallel group on one
    node, the actor's own CPUs and resources beside the first."""
    keys = ("teacher.num_actors", "teacher.num_cpus", "teacher.num_gpus", "teacher.resources")
    tp, pp = t.tensor_parallel_size, t.pipeline_parallel_size
    if t.backend == "vllm" and tp * pp > 1:
        keys += ("teacher.tensor_parallel_size", "teacher.pipeline_parallel_size")
        return [Demand("teacher engine's tensor-parallel group", {"CPU": float(tp), "GPU": float(tp)},
                       t.num_actors * pp, keys),
                Demand("teacher actor", {"CPU": t.num_cpus, **t.resources}, t.num_actors, keys)]
    actor = {"CPU": t.num_cpus, **({"GPU": t.num_gpus} if t.num_gpus else {}), **t.resources}
    return [Demand("teacher actor", actor, t.num_actors, keys)]


def with_worker_cpus(cfg: Config, cached: bool, nodes: list[dict[str, float]], searching: bool = False) -> Config:
    """cfg with train.cpus_per_worker decided when it is None: 1 CPU a worker beside an online teacher, in a
    search (trials share the nodes) or on a cluster of several nodes; on one node, a run from a cache shares
    the node's CPUs less one cache read among its workers (each worker's torch threads follow)."""

    t = cfg.train
    if t.cpus_per_worker is not None:
        return cfg
    cpus = 1.0
    if cached and not searching and len(nodes) == 1:
        share = (nodes[0].get("CPU", 1.0) - CACHE_READ_CPUS) / t.num_workers
        # a share of half a CPU or more (two workers on two cores: 0.875 each, one torch thread); below it,
        # 1: the resource check then refuses the plan with its message rather than running it starved
        cpus = share if share >= 0.5 else 1.0
    return dataclasses.replace(cfg, train=dataclasses.replace(t, cpus_per_worker=cpus))


def plan_totals(plan: list[Demand]) -> dict[str, float]:
    """Resources the whole plan holds at once."""
    total: dict[str, float] = {}
    for d in plan:
        for name, amount in d.per_unit.items():
            total[name] = total.get(name, 0.0) + amount * d.count
    return total


def alive_nodes() -> list[dict[str, float]]:
    """Total resources of each live node of the connected Ray cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def _fmt(res: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(res.items()) if not k.startswith(("node:", "memory",
                                                                                     "object_store", "accelerator_type")))


def check_fits(plan: list[Demand], nodes: list[dict[str, float]]) -> None:
    """Refuse a plan some unit of which fits no node, or which exceeds the cluster's totals."""
    fix = ("or add nodes that offer them (run.check_resources=false skips this check on an autoscaling cluster "
           "whose nodes are not up yet).")
    for d in plan:
        if not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in d.per_unit.items()) for node in nodes):
            offered = "; ".join(f"node {i}: {_fmt(n)}" for i, n in enumerate(nodes)) or "no live nodes"
            raise GeminiRayError(
                f"one {d.what} asks for {_fmt(d.per_unit)}, but no node of the cluster offers that much ({offered}); "
                f"Ray would wait for it forever. Lower {', '.join(d.keys) or 'the request'}, " + fix)
    have: dict[str, float] = {}
    for node in nodes:
        for k, v in node.items():
            have[k] = have.get(k, 0.0) + v
    need = plan_totals(plan)
    short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}
    if short:
        what = ", ".join(f"{v:g} {k} needed, {h:g} in the cluster" for k, (v, h) in sorted(short.items()))
        keys = sorted({key for d in plan for key in d.keys})
        raise GeminiRayError(
            f"the trainer and its data stage do not fit the cluster at once ({what}; "
            + "; ".join(f"{d.count} x {d.what}: {_fmt(d.per_unit)}" for d in plan)
            + f"). Lower {', '.join(keys)}, " + fix)


# --------------------------------------------------------------------------- orphaned placement groups


@dataclass(frozen=True)
class GroupRecord:
    """What the cluster's placement-group table says of one group (ids in hex; creator_actor '' for a driver)."""

    group_id: str
    job_id: str
    creator_actor: str
    detached: bool
    removed: bool


def orphans(groups: list[GroupRecord], dead_actors: set[str], job_id: str) -> list[str]:
    """Ids of this job's groups, not detached and not removed, whose creating actor is dead. Ray keeps such a
    group until the job ends; in a gemini_ray job the only actors that create groups are Ray Train controllers,
    whose group serves only the workers that died with them, so nothing can schedule into it again."""
    return [g.group_id for g in groups
            if g.job_id == job_id and g.creator_actor and not g.detached and not g.removed
            and g.creator_actor in dead_actors]


def _group_records() -> tuple[list[GroupRecord], set[str]]:
    """(every placement group of the cluster, the ids of dead actors among their creators), read through
    `ray_compat.cluster` (the public tables do not name a group's creator)."""
    from gemini_ray.ray_compat.cluster import dead_actors, placement_groups

    groups = [GroupRecord(**g) for g in placement_groups()]
    return groups, dead_actors({g.creator_actor for g in groups if g.creator_actor and not g.removed})


def remove_orphaned_groups() -> int:
    """Remove this job's placement groups whose creator is dead; returns how many."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    groups, dead = _group_records()
    found = orphans(groups, dead, ray.get_runtime_context().get_job_id())
    for group_id in found:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id))))
    return len(found)


class PlacementGroupSweeper:
    """While a search runs, every `every_s` seconds, and twice at its end (`settle_s` apart): remove this job's
    orphaned placement groups.

    with PlacementGroupSweeper() as sweeper:
        tuner.fit()
    sweeper.removed  # how many it removed
    """

    def __init__(self, every_s: float = 5.0, settle_s: float = 2.0):
        self.every_s, self.settle_s, self.removed, self.failure = every_s, settle_s, 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="placement-group-sweeper", daemon=True)

    def _sweep(self) -> None:
        try:
            self.removed += remove_orphaned_groups()
        except Exception as e:  # a sweep that fails (Ray's private table changed) must not end the search
            if self.failure is None:
                self.failure = e
                print(f"[gemini-ray] warning: could not check for orphaned placement groups ({e!r}); a trial "
                      "stopped by Tune may leave its CPUs reserved (ray-project/ray#54305)")

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sweep()

    def __enter__(self) -> PlacementGroupSweeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sweep()
        time.sleep(self.settle_s)  # the last trial's controller may still be dying, and reserving
        self._sweep()


# --------------------------------------------------------------------------- shared storage


def _mount_type(path: Path, mounts: str) -> str:
    """Filesystem type of the longest mount point above `path`, from /proc/mounts text."""
    best, fstype = "", ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (str(path) == point or str(path).startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, fstype = point, parts[2]
    return fstype


def on_network_filesystem(path: str, mounts: str | None = None) -> bool:
    """Whether a local path lies on a filesystem other nodes can mount too (NFS, Lustre, FUSE...)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text(encoding="utf-8")
        except OSError:  # not Linux: cannot tell
            return False
    p = Path(local_path(path))
    fstype = _mount_type(p, mounts)
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse.")


def check_shared_storage(cfg: Config, num_nodes: int, mounts: str | None = None) -> None:
    """On a multi-node cluster, checkpoints, the teacher cache and Tune results must go where every node
    reads and writes the same files: refuse a node-local path."""
    if num_nodes <= 1 or cfg.run.storage_shared:
        return
    paths = {"run.storage_path": cfg.run.storage_path}
    for key in ("cache_root", "path"):
        if getattr(cfg.label, key):
            paths[f"label.{key}"] = getattr(cfg.label, key)
    for key, path in paths.items():
        if is_remote(path) or on_network_filesystem(path, mounts):
            continue
        raise GeminiRayError(
            f"{key}='{path}' is a node-local path, but the cluster has {num_nodes} nodes: checkpoints written by a "
            "Train worker on one node, the teacher cache and Tune results would be invisible to the others. Use "
            f"shared storage: {key}=s3://bucket/gemini-ray (or gs://..., or an NFS/Lustre/FUSE mount present on "
            "every node), or set run.storage_shared=true if this path is one filesystem all nodes see.")
