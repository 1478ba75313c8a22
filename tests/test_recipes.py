"""Every recipe under configs/ that names a launcher cluster file (`clusters/<name>.yaml`, anywhere in its text,
comments included) must schedule on that file: its teacher actors and Train workers packed onto the node types'
GPUs, CPUs and custom resources within each type's max_workers and the file's global max_workers; and its
run.peak_tflops unset (measured) or the dense bf16 peak of the GPU its Train workers land on.

    python -m pytest tests/test_recipes.py -q

A recipe that asks for more than its cluster holds does not fail: with run.check_resources=false (as cluster
recipes set, since the launcher starts nodes on demand) it waits forever for nodes the autoscaler may not start.
Recipes load through `build_config`, so each is validated as `gemini-ray distill --config` would. No Ray.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from gemini_ray.config import Config, build_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_MENTION = re.compile(r"\bclusters/([\w.-]+\.ya?ml)\b")

# --------------------------------------------------------------------------- what the hardware offers

PEAK_BF16_TFLOPS = {
    # Dense (no 2:4 sparsity) bf16 tensor-core peak of one GPU, in TFLOP/s: what MFU is measured against.
    # Vendor datasheets print the sparse figure, twice these, with an asterisk.
    "A10G": 70.0,    # AWS's variant of the A10 (125): NVIDIA publishes no A10G datasheet; 70 is the figure AWS
                     # users quote (baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference) and a 10240^2
                     # bf16 matmul measures 69.5 on one (github.com/zzc0721/torch-performance-test-data #126)
    "L4": 121.0,     # NVIDIA L4 datasheet: BF16 Tensor Core 242 TFLOPS with sparsity
    "L40S": 362.05,  # NVIDIA L40S datasheet: BF16 Tensor Core 362.05 | 733 with sparsity
    "A100": 312.0,   # NVIDIA A100 datasheet (40 and 80 GB, SXM and PCIe): BF16 Tensor Core 312 | 624 sparse
    "H100": 989.4,   # NVIDIA H100 SXM datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity (989 dense)
}

INSTANCES = {
    # instance / machine type: (vCPUs, GPUs, GPU). AWS from the EC2 accelerated-computing instance tables,
    # GCP from Compute Engine's machine-type pages. Add a row when a cluster file uses another type.
    "m5.2xlarge": (8, 0, None),
    "g5.xlarge": (4, 1, "A10G"),
    "g5.12xlarge": (48, 4, "A10G"),
    "g6e.xlarge": (4, 1, "L40S"),
    "p4de.24xlarge": (96, 8, "A100"),
    "p5.48xlarge": (192, 8, "H100"),
    "n2-standard-8": (8, 0, None),
    "g2-standard-8": (8, 1, "L4"),     # G2 machine types come with their L4s
    "g2-standard-48": (48, 4, "L4"),
    "n1-standard-8": (8, 0, None),     # N1 takes GPUs as guestAccelerators
}

GCP_ACCELERATORS = {"nvidia-tesla-t4": "T4", "nvidia-tesla-v100": "V100"}
"""guestAccelerators acceleratorType (its last path part) -> GPU. Neither has bf16 tensor cores: a recipe on
them leaves run.peak_tflops unset."""


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]  # what Ray advertises on one node: CPU, GPU and custom resources
    gpu: Optional[str]           # the GPU model, for run.peak_tflops
    max_nodes: int               # a worker type's max_workers (the head: 1)
    head: bool = False


def node_types(path: Path) -> dict[str, NodeType]:
    """A launcher YAML's node types with the resources one node of each offers: `resources` as declared, CPU and
    GPU filled in from the instance / machine type (and GCP's guestAccelerators) where not declared."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    types = {}
    for name, t in config["available_node_types"].items():
        node = t.get("node_config", {})
        machine = node.get("InstanceType") or node.get("machineType")
        assert machine in INSTANCES, (f"{path.name}: node type '{name}' runs '{machine}', which tests/test_recipes.py "
                                      "does not know: add its vCPUs, GPUs and GPU model to INSTANCES")
        cpus, gpus, gpu = INSTANCES[machine]
        for acc in node.get("guestAccelerators", []):
            kind = str(acc["acceleratorType"]).rsplit("/", 1)[-1]
            assert kind in GCP_ACCELERATORS, f"{path.name}: unknown acceleratorType '{kind}': add it to GCP_ACCELERATORS"
            gpus, gpu = gpus + int(acc.get("acceleratorCount", 1)), GCP_ACCELERATORS[kind]
        offered = {"CPU": cpus, "GPU": gpus, **t.get("resources", {})}
        head = name == config["head_node_type"]
        types[name] = NodeType(name, offered, gpu if offered["GPU"] else None,
                               1 if head else t.get("max_workers", 0), head)
    return types


def global_max_workers(path: Path) -> int:
    return yaml.safe_load(path.read_text(encoding="utf-8"))["max_workers"]


# --------------------------------------------------------------------------- what a recipe asks for


@dataclass(frozen=True)
class Bundle:
    """What one teacher actor or Train worker needs, all on one node (an actor cannot span nodes)."""
    label: str
    needs: dict[str, float]


def demands(cfg: Config) -> list[Bundle]:
    t, tr = cfg.teacher, cfg.train
    teacher = {"CPU": t.num_cpus, "GPU": t.num_gpus, **t.resources}
    # train.cpus_per_worker=None is 1 CPU on a multi-node cluster (TrainConfig.cpus_per_worker)
    worker = {"CPU": tr.cpus_per_worker or 1, "GPU": 1 if tr.use_gpu else 0, **tr.resources_per_worker}
    return ([Bundle(f"teacher actor {i + 1}/{t.num_actors}", teacher) for i in range(t.num_actors)]
            + [Bundle(f"Train worker {i + 1}/{tr.num_workers}", worker) for i in range(tr.num_workers)])


def pack(bundles: list[Bundle], types: dict[str, NodeType], max_workers: int) -> tuple[dict[str, str], list[str]]:
    """Greedy first-fit-decreasing: each bundle, largest GPU then CPU need first, goes to the first started node
    with room, else starts the smallest node type that holds it and has nodes left (per type and globally).
    Returns {bundle label: node type} and one line per bundle that fits nowhere."""
    started = [(t.name, dict(t.resources)) for t in types.values() if t.head]  # the head is up from the start
    count = {n: 0 for n, t in types.items() if not t.head}
    placed, problems = {}, []

    def fits(free: dict[str, float], needs: dict[str, float]) -> bool:
        return all(free.get(k, 0) >= v for k, v in needs.items() if v)

    for b in sorted(bundles, key=lambda b: (-b.needs.get("GPU", 0), -b.needs.get("CPU", 0))):
        node = next((node for node in started if fits(node[1], b.needs)), None)
        if node is None:
            workers = sum(count.values())
            room = [types[n] for n in count if count[n] < types[n].max_nodes and workers < max_workers
                    and fits(types[n].resources, b.needs)]
            if room:
                t = min(room, key=lambda t: (t.resources.get("GPU", 0), t.resources.get("CPU", 0)))
                count[t.name] += 1
                node = (t.name, dict(t.resources))
                started.append(node)
        if node is None:
            hold = [n for n in count if fits(types[n].resources, b.needs)]
            why = (f"the node types that could hold it ({', '.join(hold)}) are all started: "
                   f"{', '.join(f'{n} {count[n]}/{types[n].max_nodes}' for n in hold)}, "
                   f"{sum(count.values())}/{max_workers} worker nodes in all") if hold else \
                "no worker node type offers that much on one node"
            problems.append(f"{b.label} needs {_fmt(b.needs)}: {why}")
            continue
        for k, v in b.needs.items():
            node[1][k] = node[1].get(k, 0) - v
        placed[b.label] = node[0]
    return placed, problems


def _fmt(needs: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in needs.items() if v) + "}"


def peak_problems(cfg: Config, placed: dict[str, str], types: dict[str, NodeType]) -> list[str]:
    """run.peak_tflops must be unset (each Train worker measures its GPU) or the trainer GPU's dense bf16 peak;
    teacher.peak_tflops, when set, the teacher GPU's."""
    problems = []
    for key, peak, pool in (("run.peak_tflops", cfg.run.peak_tflops if cfg.train.use_gpu else None, "Train worker"),
                            ("teacher.peak_tflops", cfg.teacher.peak_tflops, "teacher actor")):
        if peak is None:
            continue
        for gpu in sorted({types[n].gpu for label, n in placed.items() if label.startswith(pool)}, key=str):
            expected = PEAK_BF16_TFLOPS.get(gpu)
            if expected is None:
                problems.append(f"{key}={peak:g}: the {pool}s' GPU '{gpu}' has no entry in PEAK_BF16_TFLOPS")
            elif not math.isclose(peak, expected, rel_tol=0.01):
                problems.append(f"{key}={peak:g}, but the {pool}s run on {gpu}s, whose dense bf16 peak is "
                                f"{expected:g}: set {key}={expected:g}, or leave it unset")
    return problems


# --------------------------------------------------------------------------- the check


def clusters_named(recipe: Path) -> list[Path]:
    return [ROOT / "clusters" / name for name in dict.fromkeys(CLUSTER_MENTION.findall(recipe.read_text("utf-8")))]


def recipe_problems(recipe: Path) -> list[str]:
    """Why `recipe` would not run on each cluster file it names (an empty list when it fits all of them)."""
    cfg = build_config(recipe, [])
    problems = []
    for cluster in clusters_named(recipe):
        if not cluster.is_file():
            problems.append(f"names clusters/{cluster.name}, which does not exist")
            continue
        types = node_types(cluster)
        placed, unplaced = pack(demands(cfg), types, global_max_workers(cluster))
        problems += [f"on clusters/{cluster.name}: {p}" for p in unplaced + peak_problems(cfg, placed, types)]
    return problems


RECIPES = sorted(p for p in (ROOT / "configs").glob("*.yaml") if clusters_named(p))


def test_recipes_that_name_a_cluster_are_found():
    names = {p.name for p in RECIPES}
    assert {"cluster-1.7b.yaml", "cluster-70b.yaml"} <= names, names


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_fits_the_clusters_it_names(recipe):
    problems = recipe_problems(recipe)
    assert not problems, f"configs/{recipe.name} cannot schedule:\n" + "\n".join(problems)


def test_instance_table_matches_declared_resources():
    """A node type that declares CPU or GPU (GCP's do) must not promise more than its machine has."""
    for cluster in sorted((ROOT / "clusters").glob("*.yaml")):
        config = yaml.safe_load(cluster.read_text(encoding="utf-8"))
        for name, t in config["available_node_types"].items():
            node = t["node_config"]
            cpus, gpus, _ = INSTANCES[node.get("InstanceType") or node.get("machineType")]
            gpus += sum(int(a.get("acceleratorCount", 1)) for a in node.get("guestAccelerators", []))
            declared = t.get("resources", {})
            assert declared.get("CPU", cpus) <= cpus and declared.get("GPU", gpus) <= gpus, \
                f"{cluster.name}: node type '{name}' declares {declared}, its machine has {cpus} vCPUs, {gpus} GPUs"


# --------------------------------------------------------------------------- controls: broken recipes are caught


def _recipe(tmp_path: Path, cluster: str, **sections: dict[str, Any]) -> Path:
    """A recipe in tmp_path naming clusters/<cluster> in a comment, as the shipped recipes do."""
    path = tmp_path / "recipe.yaml"
    path.write_text(f"# ray up clusters/{cluster}\n" + yaml.safe_dump(sections), encoding="utf-8")
    return path


GPU_TEACHER = {"num_gpus": 1, "num_cpus": 4, "resources": {"teacher": 1}}
GPU_TRAIN = {"use_gpu": True, "cpus_per_worker": 4, "resources_per_worker": {"trainer": 1}}


def test_control_a_recipe_that_fits(tmp_path):
    recipe = _recipe(tmp_path, "aws.yaml", teacher={**GPU_TEACHER, "num_actors": 2},
                     train={**GPU_TRAIN, "num_workers": 4})
    assert recipe_problems(recipe) == []


def test_control_too_many_teacher_actors_is_caught(tmp_path):
    """The issue's recipe: 3 teacher actors on a cluster of at most 2 teacher nodes."""
    recipe = _recipe(tmp_path, "aws.yaml", teacher={**GPU_TEACHER, "num_actors": 3},
                     train={**GPU_TRAIN, "num_workers": 4})
    problems = recipe_problems(recipe)
    assert len(problems) == 1 and "teacher actor" in problems[0] and "teacher 2/2" in problems[0], problems


def test_control_too_many_train_workers_is_caught(tmp_path):
    recipe = _recipe(tmp_path, "gcp.yaml", teacher={**GPU_TEACHER, "num_actors": 2},
                     train={**GPU_TRAIN, "num_workers": 5})
    problems = recipe_problems(recipe)
    assert len(problems) == 1 and "Train worker" in problems[0] and "trainer 4/4" in problems[0], problems


def test_control_the_global_max_workers_is_caught(tmp_path):
    """Per type 2 teacher + 4 trainer nodes would do; the file's max_workers of 5 does not."""
    cluster = yaml.safe_load((ROOT / "clusters" / "aws.yaml").read_text(encoding="utf-8"))
    cluster["max_workers"] = 5
    (tmp_path / "clusters").mkdir()
    (tmp_path / "clusters" / "small.yaml").write_text(yaml.safe_dump(cluster), encoding="utf-8")
    types = node_types(tmp_path / "clusters" / "small.yaml")
    cfg = build_config(None, ["teacher.num_actors=2", "teacher.num_gpus=1", "teacher.num_cpus=4",
                              "teacher.resources={teacher: 1}", "train.num_workers=4", "train.use_gpu=true",
                              "train.cpus_per_worker=4", "train.resources_per_worker={trainer: 1}"])
    _, problems = pack(demands(cfg), types, 5)
    assert len(problems) == 1 and "5/5 worker nodes in all" in problems[0], problems
    assert pack(demands(cfg), types, 6)[1] == []


def test_control_an_actor_larger_than_any_node_is_caught(tmp_path):
    """Two g5.xlarge teacher nodes hold 2 GPUs between them, but one actor cannot span them; nor 5 CPUs on 4."""
    for teacher in ({**GPU_TEACHER, "num_gpus": 2}, {**GPU_TEACHER, "num_cpus": 5}):
        recipe = _recipe(tmp_path, "aws.yaml", teacher={**teacher, "num_actors": 1},
                         train={**GPU_TRAIN, "num_workers": 1})
        problems = recipe_problems(recipe)
        assert len(problems) == 1 and "no worker node type offers that much on one node" in problems[0], problems


def test_control_a_custom_resource_no_node_offers_is_caught(tmp_path):
    recipe = _recipe(tmp_path, "aws.yaml", teacher={**GPU_TEACHER, "num_actors": 1, "resources": {"teachr": 1}},
                     train={**GPU_TRAIN, "num_workers": 1})
    assert any("teacher actor 1/1" in p and "no worker node type" in p for p in recipe_problems(recipe))


def test_control_a_vllm_engine_needs_an_eight_gpu_node(tmp_path):
    """The 70B teacher's engine on the small cluster: no g5.xlarge holds 8 GPUs."""
    teacher = {**GPU_TEACHER, "num_actors": 1, "backend": "vllm", "tensor_parallel_size": 8, "num_gpus": 8}
    assert recipe_problems(_recipe(tmp_path, "aws.yaml", teacher=teacher, train={**GPU_TRAIN, "num_workers": 1}))
    assert recipe_problems(_recipe(tmp_path, "aws-70b.yaml", teacher=teacher,
                                   train={**GPU_TRAIN, "num_workers": 3})) == []


def test_control_a_wrong_peak_is_caught(tmp_path):
    """The issue's other half: an H100's 989 on A10G (AWS) / L4 (GCP) trainers; the right peak or none passes."""
    for cluster, gpu in (("aws.yaml", "A10G"), ("gcp.yaml", "L4")):
        recipe = _recipe(tmp_path, cluster, teacher={**GPU_TEACHER, "num_actors": 1},
                         train={**GPU_TRAIN, "num_workers": 1}, run={"peak_tflops": 989})
        problems = recipe_problems(recipe)
        assert len(problems) == 1 and f"run on {gpu}s" in problems[0], problems
        for peak in (PEAK_BF16_TFLOPS[gpu], None):
            fixed = _recipe(tmp_path, cluster, teacher={**GPU_TEACHER, "num_actors": 1},
                            train={**GPU_TRAIN, "num_workers": 1}, run={"peak_tflops": peak})
            assert recipe_problems(fixed) == []


def test_control_a_teacher_peak_of_another_gpu_is_caught(tmp_path):
    """teacher.peak_tflops (the teacher's MFU) is checked against the teacher nodes' GPU, not the trainers'."""
    recipe = _recipe(tmp_path, "aws.yaml", teacher={**GPU_TEACHER, "num_actors": 1, "peak_tflops": 989},
                     train={**GPU_TRAIN, "num_workers": 1})
    problems = recipe_problems(recipe)
    assert len(problems) == 1 and "teacher.peak_tflops=989, but the teacher actors run on A10Gs" in problems[0]
    fixed = _recipe(tmp_path, "aws.yaml", teacher={**GPU_TEACHER, "num_actors": 1, "peak_tflops": 70},
                    train={**GPU_TRAIN, "num_workers": 1})
    assert recipe_problems(fixed) == []


def test_control_gcp_guest_accelerators_count_as_gpus(tmp_path):
    """An N1 trainer with an attached T4: one GPU from guestAccelerators; a peak for it is refused."""
    cluster = yaml.safe_load((ROOT / "clusters" / "gcp.yaml").read_text(encoding="utf-8"))
    cluster["available_node_types"]["trainer"]["resources"] = {"trainer": 1}
    cluster["available_node_types"]["trainer"]["node_config"].update(
        machineType="n1-standard-8", guestAccelerators=[{"acceleratorCount": 1, "acceleratorType": "nvidia-tesla-t4"}])
    path = tmp_path / "n1.yaml"
    path.write_text(yaml.safe_dump(cluster), encoding="utf-8")
    types = node_types(path)
    assert types["trainer"].resources == {"CPU": 8, "GPU": 1, "trainer": 1} and types["trainer"].gpu == "T4"
    cfg = build_config(None, ["train.num_workers=1", "train.use_gpu=true", "train.resources_per_worker={trainer: 1}",
                              "run.peak_tflops=65"])
    placed, problems = pack(demands(cfg), types, 6)
    assert problems == [] and placed["Train worker 1/1"] == "trainer"
    assert "'T4' has no entry" in peak_problems(cfg, placed, types)[0]


def test_control_a_missing_cluster_file_is_caught(tmp_path):
    recipe = _recipe(tmp_path, "nowhere.yaml", teacher={**GPU_TEACHER, "num_actors": 1})
    assert recipe_problems(recipe) == ["names clusters/nowhere.yaml, which does not exist"]


def test_control_an_invalid_recipe_fails_to_load(tmp_path):
    """Recipes load through build_config: a vLLM engine whose GPUs differ from num_gpus is refused."""
    from gemini_ray.errors import ConfigError

    teacher = {**GPU_TEACHER, "backend": "vllm", "tensor_parallel_size": 8, "num_gpus": 4}
    with pytest.raises(ConfigError, match="teacher.num_gpus"):
        recipe_problems(_recipe(tmp_path, "aws-70b.yaml", teacher=teacher))
