"""Train stage: the student's step inside Ray Train vs the same step in a plain PyTorch loop, same batches.

    python benchmarks/train_stage.py [--steps 40] [--documents 60] [--store runs/train-stage] [--gpu]
                                     [--ray-env KEY=VALUE ...]

1. `gemini-ray label data.max_documents=N` writes a teacher-signal cache (reused when it is already there).
2. Ray: `gemini-ray distill label.use=require` trains the demo student from that cache for --steps steps
   (one Train worker, the default CPUs: 1.75 on 2 cores, two torch threads). Its steady-state examples/s
   is the mean of the reports after the first (summary.json's training.throughput); their median is printed
   too (a window that overlaps the cache read of a pass is slower: the plain loop reads before its clock).
3. Plain loop, in this process: the same student (derived from the teacher as distill derives it), the same
   cache rows in the same order and batch size, the library's compute_loss and optimizer step, the same torch
   thread count; timed from the end of the first report window (train.log_every steps) to the last step.

--gpu: the teacher labels on a GPU, and both sides train on one GPU in train.precision=bf16-mixed (the
plain loop under the same autocast).

Both sides exclude evaluation and checkpoint time (the Ray side's report windows exclude them). Prints
both rates and their ratio, and writes benchmarks/results/train_stage.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "gemini_ray.cli", *args], check=True, cwd=ROOT,
                   env={**os.environ, **(env or {})})


def cached_batches(cache: Path, batch_size: int, steps: int, num_negatives: int):
    """The cache's training rows in the order a first pass reads them (shards in order), as the torch batches
    the trainer gets (the same arrays: Ray Data's numpy view of the same parquet files, read without Ray)."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from ray.data.block import BlockAccessor

    from gemini_ray.data.cache import shard_name
    from gemini_ray.data.pipeline import TRAIN_COLUMNS

    manifest = json.loads((cache / "manifest.json").read_text())
    parts = [BlockAccessor.for_block(pq.read_table(cache / shard_name(s), columns=TRAIN_COLUMNS)).to_batch_format("numpy")
             for s in manifest["shards_train"]]
    rows = {c: np.concatenate([p[c] for p in parts]) for c in TRAIN_COLUMNS}
    n = len(rows["doc_id"]) // batch_size
    for i in range(steps):
        window = slice((i % n) * batch_size, (i % n + 1) * batch_size)
        batch = {c: torch.as_tensor(np.ascontiguousarray(v[window])) for c, v in rows.items()}
        for key in ("neg_input_ids", "neg_attention_mask", "neg_mask"):
            batch[key] = batch[key][:, :num_negatives]
        yield batch


def plain_loop(store: Path, steps: int, threads: int, overrides: list[str]) -> dict[str, float]:
    import torch

    from gemini_ray.config import build_config
    from gemini_ray.models.build import DistillStudent, build_student, teacher_meta
    from gemini_ray.models.numerics import Precision
    from gemini_ray.training.train_step import compute_loss, make_optimizer, set_lr

    cfg = build_config(None, [f"run.storage_path={store}", *overrides])
    device = torch.device("cuda" if cfg.train.use_gpu else "cpu")
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    model = build_student(teacher_meta(cfg.teacher), cfg.student, seed=cfg.train.seed)
    model = model.to(device)
    student, optimizer = DistillStudent(model).train(), make_optimizer(model, cfg.train)
    precision = Precision(cfg.train.precision, device)
    cache = next((store / "signal_cache").iterdir())
    warm = cfg.train.log_every
    started = None
    for step, batch in enumerate(cached_batches(cache, cfg.train.batch_size, steps, cfg.loss.num_negatives)):
        batch = {k: v.to(device) for k, v in batch.items()}
        if step == warm:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        set_lr(optimizer, step, cfg.train)
        parts = compute_loss(student, batch, cfg.loss, across_ranks=False, autocast=precision.autocast)
        precision.backward(parts.total)
        precision.step(student.parameters(), optimizer, cfg.train.grad_clip)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"examples_per_s": (steps - warm) * cfg.train.batch_size / seconds, "steps_timed": steps - warm,
            "threads": threads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--documents", type=int, default=60)
    parser.add_argument("--store", default="runs/train-stage")
    parser.add_argument("--gpu", action="store_true", help="teacher and training on one GPU, bf16")
    parser.add_argument("--ray-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the Ray side only (its Ray instance inherits it)")
    args = parser.parse_args()
    ray_env = dict(item.split("=", 1) for item in args.ray_env)
    store = (ROOT / args.store).resolve()
    data = [f"run.storage_path={store}", f"data.max_documents={args.documents}"]
    gpu = ["teacher.num_gpus=1", "train.use_gpu=true", "train.precision=bf16-mixed"] if args.gpu else []
    cli("label", *data, *gpu[:1])
    t0 = time.perf_counter()
    cli("distill", *data, *gpu, "label.use=require", f"train.max_steps={args.steps}", "run.name=ray-train",
        f"train.checkpoint_every={args.steps}", f"train.eval_every={args.steps}", env=ray_env)
    ray_wall = time.perf_counter() - t0
    summary = json.loads((store / "ray-train" / "summary.json").read_text())
    ray_rate = summary["training"]["throughput"]["examples_per_s"]
    windows = [h["examples_per_s"] for h in summary["training"]["history"] if "examples_per_s" in h][1:]
    threads = max(1, round(summary["config"]["train"]["cpus_per_worker"] or 1))
    plain = plain_loop(store, args.steps, threads, gpu)
    median = statistics.median(windows)
    result = {"steps": args.steps, "ray_train_examples_per_s": ray_rate, "plain_loop": plain,
              "ratio": ray_rate / plain["examples_per_s"], "ray_window_examples_per_s": windows,
              "ray_median_window_examples_per_s": median, "median_ratio": median / plain["examples_per_s"],
              "ray_command_wall_s": ray_wall, "ray_env": ray_env,
              "ray_throughput": summary["training"]["throughput"]}
    out = ROOT / "benchmarks" / "results" / ("train_stage_gpu.json" if args.gpu else "train_stage.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"| side | examples/s (steady state) |\n|---|---|\n| Ray Train (1 worker, {threads} threads) | "
          f"{ray_rate:.2f} |\n| plain loop ({threads} threads) | {plain['examples_per_s']:.2f} |\n"
          f"Ray / loop: **{result['ratio']:.2f}** (mean of Ray's report windows after the first; their median "
          f"{median:.2f}: {result['median_ratio']:.2f})  ({out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
