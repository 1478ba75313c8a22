"""The accelerator path, measured: the teacher stage and the train stage in bf16 on one GPU, each against
the plain PyTorch loop on the same batches, next to benchmarks/balance.py's prediction; then the teacher
backends ('hf' and 'vllm') side by side, and the 'hf' teacher spread over two GPUs.

    python benchmarks/gpu.py [--examples 4096] [--steps 60] [--peak-tflops 989]

Runs, in order (each a script of its own, so one failing leaves the others' numbers):
* `teacher_stage.py --gpu --dtype bf16`: the embedded teacher in a Ray Data actor pool of one actor with one
  GPU, against the same labeler in a plain loop; tokens/s, steady state.
* `train_stage.py --gpu`: `gemini-ray distill` (one Train worker, use_gpu, bf16-mixed) from a cache against
  the plain loop of the same student steps under the same autocast.
* `teacher_parity.py --gpu --dtype bf16` (when vllm is importable): the 'vllm' backend against 'hf' on one
  GPU, on the same rows: top-1 agreement, top-k overlap, KL, mass and embedding differences, tokens/s.
* `teacher_parity.py --gpu --dtype bf16 --backends hf --num-gpus 2` (when >= 2 GPUs are visible): the 'hf'
  backend with teacher.num_gpus=2, the model spread over both by accelerate's device_map="auto".
MFU: the teacher's forward FLOPs (2 per matmul parameter and token, `teacher_flops`) at each run's tokens/s
over --peak-tflops per GPU it held (989: an H100/H200's dense bf16), and the student's reported train_mfu.
The 'vllm' backend also runs a second body forward for its embeddings (a pooling engine); its MFU counts
the useful FLOPs only, like 'hf''s. Writes benchmarks/results/gpu.json and prints the tables.
Needs a CUDA GPU; the embedded teacher and corpus only (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PARITY_GPU, HF_TWO_GPUS = RESULTS / "teacher_parity_gpu.json", RESULTS / "teacher_hf_2gpu.json"


def run(script: str, *args: str) -> bool:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT)
    return done.returncode == 0


def teacher_matmul_params() -> tuple[int, int]:
    """(body, head) matmul parameters of the embedded teacher, from its config on the meta device."""
    from transformers import AutoConfig

    from gemini_ray.config import TeacherConfig
    from gemini_ray.models.build import resolve_teacher
    from gemini_ray.training.throughput import config_matmul_params

    return config_matmul_params(AutoConfig.from_pretrained(resolve_teacher(TeacherConfig())).to_dict(), "causal")


def mfu(params: tuple[int, int], tokens_per_s: float, peak_tflops: float, gpus: int = 1) -> float:
    """Model FLOPs utilisation of a teacher forward at tokens_per_s, against `gpus` GPUs' peak."""
    from gemini_ray.training.throughput import teacher_flops

    return teacher_flops(*params, tokens_per_s) / 1e12 / (peak_tflops * gpus)


def teacher_stage_result(params: tuple[int, int], peak: float) -> dict[str, Any]:
    t = json.loads((RESULTS / "teacher_stage_gpu.json").read_text())
    rate, loop = t["ray_actor_pool"]["tokens_per_s_steady"], t["plain_loop"]["tokens_per_s_steady"]
    return {"ray_tokens_per_s": rate, "loop_tokens_per_s": loop, "ratio": rate / loop,
            "mfu": mfu(params, rate, peak), "loop_mfu": mfu(params, loop, peak)}


def train_result(peak: float) -> dict[str, Any]:
    s = json.loads((RESULTS / "train_stage_gpu.json").read_text())
    train = {"ray_examples_per_s": s["ray_train_examples_per_s"],
             "loop_examples_per_s": s["plain_loop"]["examples_per_s"], "ratio": s["ratio"],
             "tokens_per_s": s["ray_throughput"].get("train_tokens_per_s"),
             "mfu_against_probe": s["ray_throughput"].get("train_mfu"),
             "tflops": s["ray_throughput"].get("train_tflops")}
    if train["tflops"]:
        train["mfu"] = train["tflops"] / peak
    return train


def backend_results(path: Path, params: tuple[int, int], peak: float) -> dict[str, Any]:
    """Each backend of a teacher_parity.py result: tokens/s, start-up, MFU (over the GPUs it held)."""
    r = json.loads(path.read_text())
    gpus = max(int(r["num_gpus"]), 1)
    return {name: {"gpus": gpus, "tokens_per_s": b["tokens_per_s"], "startup_s": b["startup_s"],
                   "mfu": mfu(params, b["tokens_per_s"], peak, gpus), "devices": b.get("devices", [])}
            for name, b in r["backends"].items()}


def run_backends(examples: int) -> dict[str, bool | None]:
    """The two teacher_parity.py runs; None where the machine cannot run one (no vllm, one GPU)."""
    import torch

    common = ["--gpu", "--dtype", "bf16", "--examples", str(examples), "--batch", "256"]
    ok: dict[str, bool | None] = {"parity": None, "hf_two_gpus": None}
    if importlib.util.find_spec("vllm") is not None:
        ok["parity"] = run("teacher_parity.py", *common, "--out", str(PARITY_GPU))
    else:
        print("[gpu] vllm is not importable: the vllm-vs-hf parity run is skipped", file=sys.stderr)
    if torch.cuda.device_count() >= 2:
        ok["hf_two_gpus"] = run("teacher_parity.py", *common, "--backends", "hf", "--num-gpus", "2",
                                "--out", str(HF_TWO_GPUS))
    else:
        print("[gpu] one GPU visible: the two-GPU hf teacher run is skipped", file=sys.stderr)
    return ok


def throughput_table(result: dict[str, Any]) -> str:
    """teacher run | GPUs | tokens/s | MFU, one row per teacher measured."""
    rows = []
    if "teacher" in result:
        t = result["teacher"]
        rows += [("hf, Ray Data actor pool (teacher_stage)", 1, t["ray_tokens_per_s"], t["mfu"]),
                 ("hf, plain loop (teacher_stage)", 1, t["loop_tokens_per_s"], t["loop_mfu"])]
    for key, label in (("teacher_backends", "{} (teacher_parity)"), ("hf_two_gpus", "{}, device_map=auto")):
        for name, b in result.get(key, {}).items():
            rows.append((label.format(name), b["gpus"], b["tokens_per_s"], b["mfu"]))
    lines = ["| teacher run | GPUs | tokens/s, steady | MFU |", "|---|---|---|---|"]
    return "\n".join(lines + [f"| {n} | {g} | {r:,.0f} | {m:.2%} |" for n, g, r, m in rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 TFLOP/s of one GPU")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU; none is visible here.", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    peak = args.peak_tflops
    ok = {"teacher": run("teacher_stage.py", "--gpu", "--dtype", "bf16", "--examples", str(args.examples),
                         "--batch-spans", "512"),
          "train": run("train_stage.py", "--gpu", "--steps", str(args.steps), "--documents", "200",
                       "--store", "runs/gpu-train-stage"),
          **run_backends(args.examples)}
    params = teacher_matmul_params()
    result: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
                              "peak_tflops": peak, "runs_ok": ok}
    if ok["teacher"]:
        result["teacher"] = teacher_stage_result(params, peak)
    if ok["train"]:
        result["train"] = train_result(peak)
    if ok["parity"]:
        result["teacher_backends"] = backend_results(PARITY_GPU, params, peak)
        parity = json.loads(PARITY_GPU.read_text())
        result["teacher_parity"] = {**parity.get("parity", {}), "targets_met": parity.get("targets_met")}
    if ok["hf_two_gpus"]:
        result["hf_two_gpus"] = backend_results(HF_TWO_GPUS, params, peak)
    (RESULTS / "gpu.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    if ok["parity"]:
        print(f"\nTeacher backends on {result['gpu']}, bf16:\n{json.loads(PARITY_GPU.read_text())['table_markdown']}")
    print(f"\nTeacher throughput and MFU (peak {peak:g} TFLOP/s per GPU):\n{throughput_table(result)}")
    return 0 if all(v is not False for v in ok.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
