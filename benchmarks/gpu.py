"""The accelerator path, measured: the teacher stage and the train stage in bf16 on one GPU, each against
the plain PyTorch loop on the same batches, next to benchmarks/balance.py's prediction.

    python benchmarks/gpu.py [--examples 4096] [--steps 60] [--peak-tflops 989]

Runs, in order (each a script of its own, so one failing leaves the other's numbers):
* `teacher_stage.py --gpu --dtype bf16`: the embedded teacher in a Ray Data actor pool of one actor with one
  GPU, against the same labeler in a plain loop; tokens/s, steady state.
* `train_stage.py --gpu`: `gemini-ray distill` (one Train worker, use_gpu, bf16-mixed) from a cache against
  the plain loop of the same student steps under the same autocast.
MFU: the teacher's forward FLOPs (2 per matmul parameter and token) and the student's reported train_mfu,
against --peak-tflops (989: an H100/H200's dense bf16). Writes benchmarks/results/gpu.json and prints a table.
Needs a CUDA GPU; the embedded teacher and corpus only (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run(script: str, *args: str) -> bool:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT)
    return done.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("benchmarks/gpu.py needs a CUDA GPU; none is visible here.", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gpu = torch.cuda.get_device_name(0)
    teacher_ok = run("teacher_stage.py", "--gpu", "--dtype", "bf16", "--examples", str(args.examples),
                     "--batch-spans", "512")
    train_ok = run("train_stage.py", "--gpu", "--steps", str(args.steps), "--documents", "200",
                   "--store", "runs/gpu-train-stage")
    result: dict = {"gpu": gpu, "peak_tflops": args.peak_tflops}
    from gemini_ray.config import TeacherConfig
    from gemini_ray.models.build import resolve_teacher
    from gemini_ray.training.throughput import config_matmul_params, teacher_flops
    from transformers import AutoConfig

    body, head = config_matmul_params(AutoConfig.from_pretrained(resolve_teacher(TeacherConfig())).to_dict(), "causal")
    if teacher_ok:
        t = json.loads((RESULTS / "teacher_stage_gpu.json").read_text())
        rate, loop = t["ray_actor_pool"]["tokens_per_s_steady"], t["plain_loop"]["tokens_per_s_steady"]
        result["teacher"] = {"ray_tokens_per_s": rate, "loop_tokens_per_s": loop, "ratio": rate / loop,
                             "mfu": teacher_flops(body, head, rate) / 1e12 / args.peak_tflops}
    if train_ok:
        s = json.loads((RESULTS / "train_stage_gpu.json").read_text())
        result["train"] = {"ray_examples_per_s": s["ray_train_examples_per_s"],
                           "loop_examples_per_s": s["plain_loop"]["examples_per_s"], "ratio": s["ratio"],
                           "tokens_per_s": s["ray_throughput"].get("train_tokens_per_s"),
                           "mfu_against_probe": s["ray_throughput"].get("train_mfu"),
                           "tflops": s["ray_throughput"].get("train_tflops")}
        if result["train"]["tflops"]:
            result["train"]["mfu"] = result["train"]["tflops"] / args.peak_tflops
    (RESULTS / "gpu.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if teacher_ok and train_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
