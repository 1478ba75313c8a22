"""Where the work runs: the resource plan of a fit, checked against the cluster's nodes before it starts,
and the shared-storage rule of multi-node runs.

Ray waits forever (Ray Data: until its no-progress timeout) for resources no node can offer, so a plan
that cannot be placed is refused up front with the numbers:

* every unit (one teacher actor, one Train worker, the miner, a read task) must fit on one node's totals;
* all units at once must fit the cluster's totals (the data stage streams beside the trainer).

Node facts come from `ray.nodes()`; the checks themselves are plain functions of dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gemini_ray.config import Config
from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import is_remote, local_path

__all__ = ["Demand", "demands", "alive_nodes", "check_fits", "plan_totals", "on_network_filesystem",
           "check_shared_storage"]

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
    teacher pool, the miner and one light task when labelling online; one fractional read from a cache."""
    from gemini_ray.pipeline import CACHE_READ_CPUS, LIGHT_CPUS

    out = []
    if trainer:
        t = cfg.train
        worker = {"CPU": t.cpus_per_worker, **({"GPU": 1.0} if t.use_gpu else {}), **t.resources_per_worker}
        out.append(Demand("Train worker", worker, t.num_workers,
                          ("train.num_workers", "train.cpus_per_worker", "train.use_gpu", "train.resources_per_worker")))
    if cached:
        out.append(Demand("cache read task", {"CPU": CACHE_READ_CPUS}, 1))
    else:
        t = cfg.teacher
        actor = {"CPU": t.num_cpus, **({"GPU": t.num_gpus} if t.num_gpus else {}), **t.resources}
        out.append(Demand("teacher actor", actor, t.num_actors,
                          ("teacher.num_actors", "teacher.num_cpus", "teacher.num_gpus", "teacher.resources")))
        out.append(Demand("miner actor + one light task", {"CPU": 2 * LIGHT_CPUS}, 1))
    return out


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
