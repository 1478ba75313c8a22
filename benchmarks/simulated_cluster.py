"""A tiny distill on a simulated 3-node Ray cluster on this one machine (`ray.cluster_utils.Cluster`).

    python benchmarks/simulated_cluster.py [--out DIR] [section.key=value ...]

Nodes: a head (1 CPU), a teacher node (1 CPU + custom resource `teacher`) and a trainer node (2 CPUs +
custom resource `trainer`: 2). The run asks for `teacher.resources={teacher: 1}` and two DDP Train workers
with `train.resources_per_worker={trainer: 1}`, so the teacher actors can only land on the teacher node
and the Train workers only on the trainer node. Storage is one local directory, declared shared
(`run.storage_shared=true`: all three nodes are processes of this machine).

Prints and writes <out>/simulated_cluster.json: where each actor ran (read back from Ray's state API),
the per-stage wall times of the run (summary.json's `wall_time_s`) and the loss at the first and last step.
Defaults: the embedded teacher and corpus, 10 steps; tests/test_cluster_placement.py runs it on a tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import gemini_ray  # noqa: E402,F401  (sets Ray Data's resource-request expiry before any node starts)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import free_port  # noqa: E402

NODES = {
    "head": {"num_cpus": 1},
    "teacher": {"num_cpus": 1, "resources": {"teacher": 1}},
    "trainer": {"num_cpus": 2, "resources": {"trainer": 2}},
}
PLACEMENT = ["teacher.resources={teacher: 1}", "train.num_workers=2", "train.resources_per_worker={trainer: 1}",
             "train.cpus_per_worker=1", "run.storage_shared=true", "train.max_steps=10", "train.batch_size=4",
             "train.log_every=5", "train.eval_every=10", "train.checkpoint_every=10", "run.name=simulated-cluster"]


def _role(actor, roles: dict[str, str]) -> str:
    return roles.get(actor.node_id, actor.node_id[:8])


def run(out: Path, overrides: list[str]) -> dict:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from gemini_ray.commands.distill import distill
    from gemini_ray.config import build_config

    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={**NODES["head"], "include_dashboard": True,
                                                            "dashboard_host": "127.0.0.1",
                                                            "dashboard_port": free_port()})
    try:
        roles = {cluster.head_node.node_id: "head"}
        for role in ("teacher", "trainer"):
            roles[cluster.add_node(**NODES[role]).node_id] = role
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        start_s = time.perf_counter() - t0
        cfg = build_config(None, PLACEMENT + [f"run.storage_path={out / 'runs'}", f"run.ray_address={cluster.address}"]
                          + overrides)
        summary = distill(cfg)
        actors = list_actors(detail=True, limit=10_000, raise_on_missing_output=False)
        placement: dict[str, list[str]] = {}
        for a in actors:
            name = a.repr_name or a.class_name
            if "TeacherLabeler" in name:
                key = "teacher actor"
            elif "RayTrainWorker" in (a.class_name or ""):
                key = "Train worker"
            elif "HardNegativeMiner" in name:
                key = "miner actor"
            else:
                continue
            placement.setdefault(key, []).append(_role(a, roles))
        result = {
            "nodes": NODES,
            "placement": {k: sorted(v) for k, v in placement.items()},
            "cluster_start_s": start_s,
            "stage_s": summary["wall_time_s"],
            "steps": summary["training"]["steps"],
            "workers": summary["config"]["train"]["num_workers"],
            "loss_first": summary["training"]["first"]["loss/total"],
            "loss_last": summary["training"]["last"]["loss/total"],
            "student": summary["student"]["path"],
            "teacher": summary["teacher"]["source"],
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="output directory (default: a new temporary directory)")
    args, overrides = parser.parse_known_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="gemini-ray-cluster-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    result = run(out, overrides)
    (out / "simulated_cluster.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    print("| stage | seconds |\n|---|---|")
    print(f"| start 3 nodes | {result['cluster_start_s']:.1f} |")
    for stage, s in result["stage_s"].items():
        print(f"| {stage} | {s:.1f} |")
    print(f"placement: {json.dumps(result['placement'])}")
    print(f"loss {result['loss_first']:.3f} -> {result['loss_last']:.3f} over {result['steps']} steps "
          f"on {result['workers']} workers")
    print(f"[simulated-cluster] {out / 'simulated_cluster.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
