"""Ray Data's idle scheduling loop: training from a cache with gemini_ray's idle-loop sleep and without it.

    python benchmarks/idle_loop.py [--rounds 2] [--steps 40] [--store runs/idle-loop]

In Ray 2.60 the streaming executor's loop blocks only while one of its tasks runs; while the trainer's
read-ahead is full none does, and the split coordinator that feeds the Train worker spins a core
(`gemini_ray/ray_compat/data.py`, experiments/ray_spin/). On two cores that halves training from a cache
larger than the read-ahead. This labels the whole embedded corpus once (`gemini-ray label`), then trains
`--steps` steps from the cache with `run.patch_ray_data=true` and `=false`, alternated `--rounds` times in
fresh run folders, and compares summary.json's steady-state examples/s (the report windows after the first)
and the losses (the sleep must change nothing but the speed). Writes benchmarks/results/idle_loop.json.
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
BASE = ["--config", "configs/seed_loss.yaml"]


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "gemini_ray.cli", *args], check=True, cwd=ROOT)


def train(store: Path, name: str, steps: int, patch: bool) -> dict[str, float]:
    """One distill from the cache; its steady-state rate, final losses and what summary.json says was active."""
    t0 = time.perf_counter()
    cli("distill", *BASE, f"run.storage_path={store}", f"run.name={name}", "label.use=require",
        f"train.max_steps={steps}", f"train.checkpoint_every={steps}", f"train.eval_every={steps}",
        f"run.patch_ray_data={str(patch).lower()}")
    summary = json.loads((store / name / "summary.json").read_text())
    history = summary["training"]["history"]
    windows = [h["examples_per_s"] for h in history if "examples_per_s" in h][1:]
    return {"examples_per_s": summary["training"]["throughput"]["examples_per_s"],
            "median_window_examples_per_s": statistics.median(windows),
            "loss_kd_last": [h["loss/kd"] for h in history if "loss/kd" in h][-1],
            "command_wall_s": time.perf_counter() - t0,
            "patch_in_summary": summary.get("ray_compat", {}).get("patch_ray_data")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--store", default="runs/idle-loop")
    args = parser.parse_args()
    store = (ROOT / args.store).resolve()
    cli("label", *BASE, f"run.storage_path={store}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for r in range(1, args.rounds + 1):
        for patch in (True, False) if r % 2 else (False, True):  # alternate who goes first
            name = f"{stamp}-{'on' if patch else 'off'}-{r}"
            rows.append({"round": r, "patch": patch, **train(store, name, args.steps, patch)})
    on = [x["examples_per_s"] for x in rows if x["patch"]]
    off = [x["examples_per_s"] for x in rows if not x["patch"]]
    result = {"steps": args.steps, "runs": rows, "ratio_of_means": statistics.mean(on) / statistics.mean(off)}
    out = ROOT / "benchmarks" / "results" / "idle_loop.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    print("| round | idle-loop sleep | examples/s (steady) | median window | last KD loss |\n|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['round']} | {'on' if x['patch'] else 'off'} | {x['examples_per_s']:.2f} | "
              f"{x['median_window_examples_per_s']:.2f} | {x['loss_kd_last']:.3f} |")
    print(f"on / off: **{result['ratio_of_means']:.2f}x** ({out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
