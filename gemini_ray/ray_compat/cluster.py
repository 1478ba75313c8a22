"""Ray Core: the job's worker setup hook, the cluster the state API finds (a patch), and the placement-group
table with each group's creator (a private read).

1. The state API's cluster (patch, every process of a job; opt-out GEMINI_RAY_PIN_ADDRESS=0). A call with no
   address (`ray.util.state.get_actor(id)`: Ray Train V2's `PlacementGroupCleaner` polls the controller so,
   every second, and Ray Data's hanging detector asks for tasks) resolves it through
   `ray.dashboard.utils.get_address_for_submission_client(None)`: RAY_API_SERVER_ADDRESS, then RAY_ADDRESS,
   else /tmp/ray/ray_current_cluster (the last `ray start` on the machine, maybe another instance), else every
   GCS process on the machine: with two Ray instances it raises "Found multiple active Ray instances", and the
   cleaner's thread dies with that traceback in the run's output (ray-project/ray#25639; #54468 made a
   connected worker default to its own cluster, but that is not in Ray 2.60's `ray_address_to_api_server_url`;
   the open #65447 scopes the cleaner's queries). Ray does not hand a worker its cluster's address, so the
   job's setup hook (`setup_worker`, Ray's public `worker_process_setup_hook`) sets RAY_ADDRESS in each worker
   to the GCS address it is connected to, and `init_ray` does the same in a driver it connected itself.

2. `placement_groups` (private read; outside TESTED nothing is read, so nothing is swept: Ray's own
   behaviour). The public tables (`ray.util.placement_group_table`, the state API) do not name a group's
   creator, so this reads the GCS table that Ray's own `placement_group_table` parses
   (`ray._private.state.state`), and actors' states through `ray._private.state.actors`. Ray keeps a group
   whose creating actor died until the job ends (by design, ray-project/ray#11546); no issue asks to expose
   the creator.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from gemini_ray.ray_compat.versions import tested

__all__ = ["SETUP_HOOK", "PIN_SWITCH", "setup_worker", "pin_address", "pin_requested", "placement_groups",
           "dead_actors"]

SETUP_HOOK = "gemini_ray.ray_compat.cluster.setup_worker"
"""The job's `worker_process_setup_hook` (`gemini_ray.ray_compat.runtime_env`)."""
PIN_SWITCH = "GEMINI_RAY_PIN_ADDRESS"


def pin_requested() -> bool:
    """Whether the environment leaves RAY_ADDRESS pinning on (GEMINI_RAY_PIN_ADDRESS is not "0")."""
    return os.environ.get(PIN_SWITCH, "1") != "0"


def setup_worker() -> None:
    """The job's worker setup hook, run by Ray in every worker process as it starts: pin RAY_ADDRESS."""
    pin_address()


def pin_address() -> str | None:
    """Set RAY_ADDRESS in this process to the GCS address of the cluster it is connected to, so that Ray code
    that finds its cluster by itself finds this one. Returns the address, or None where nothing was set:
    switched off, an untested Ray, not connected, a Ray Client driver (ray://), or RAY_API_SERVER_ADDRESS set
    (which the state API prefers)."""
    ray = sys.modules.get("ray")
    if (not pin_requested() or ray is None or not ray.is_initialized()
            or os.environ.get("RAY_API_SERVER_ADDRESS")
            or not tested("pinning RAY_ADDRESS to the job's cluster", "GEMINI_RAY_PIN_ADDRESS=0 turns it off")):
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


def placement_groups() -> list[dict[str, Any]]:
    """Every placement group of the cluster: group_id, job_id, creator_actor ('' for a driver), detached,
    removed (ids in hex). Empty outside TESTED."""
    if not tested("sweeping orphaned placement groups", "none: Ray keeps them until the job ends"):
        return []
    import ray
    from ray._private.state import state  # private: the GCS accessor Ray's placement_group_table reads
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData

    groups = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        g = PlacementGroupTableData.FromString(raw)
        by_driver = not g.creator_actor_id or ray.ActorID(g.creator_actor_id).is_nil()
        groups.append({"group_id": g.placement_group_id.hex(), "job_id": g.creator_job_id.hex(),
                       "creator_actor": "" if by_driver else g.creator_actor_id.hex(),
                       "detached": g.is_detached, "removed": g.state == PlacementGroupTableData.REMOVED})
    return groups


def dead_actors(actor_ids: set[str]) -> set[str]:
    """Those of the actors (hex ids) that are dead or unknown to the cluster."""
    from ray._private.state import actors  # private: one actor's table entry by id

    dead = set()
    for actor_id in actor_ids:
        info = actors(actor_id=actor_id)
        if not info or info.get("State") == "DEAD":
            dead.add(actor_id)
    return dead
