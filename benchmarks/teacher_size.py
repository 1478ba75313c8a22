"""Driver peak memory is flat in teacher size: the same distill run on a teacher and on one 4x as deep.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python benchmarks/teacher_size.py [--work DIR]

Why: the teacher runs in its Ray actors; the driver only needs it to derive the student (the copied layers)
and so should not hold the whole teacher. If it does, the driver's memory grows with the teacher, and a
teacher that fits the actors' nodes may still not fit the head node.

What: two random-weight Llama teachers of one width (hidden 1024, MLP 2816, 16 heads, 4 KV heads) with the
embedded teacher's vocabulary and tokenizer (so the embedded corpus works), 8 and 32 layers, saved in bf16
(~0.3 and ~0.8 GB). For each, `gemini-ray distill` runs as a subprocess with the same tiny student
(2 layers), corpus slice and steps, and the driver process's peak resident memory is read two ways:
(a) its RSS polled every 0.1 s from here (psutil), (b) summary.json's `driver_peak_memory_mib` when the run
writes one. Prints a table and the ratio big/small against the target (<= 1.10x); writes
benchmarks/results/teacher_size.json. Exits non-zero only when a run fails, never on a missed target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (8, 32)
"""The two teachers' depths: the big one is 4x the small one, at the same width."""
WIDTH = {"hidden_size": 1024, "intermediate_size": 2816, "num_attention_heads": 16, "num_key_value_heads": 4,
         "head_dim": 64, "max_position_embeddings": 2048}
TARGET = 1.10
"""Driver peak memory of the big teacher's run over the small one's, at most."""
POLL_S = 0.1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="folder for the teachers and runs (default: a new one in /tmp)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "teacher_size.json"))
    parser.add_argument("--steps", type=int, default=2, help="train.max_steps of each run")
    return parser.parse_args()


def build_teacher(out: Path, layers: int) -> dict[str, Any]:
    """A random-weight Llama of `layers` x WIDTH with the embedded teacher's vocabulary, saved in bf16 to `out`
    (kept when already there, so a rerun with the same --work skips the build)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from gemini_ray.models.build import resolve_teacher

    if not (out / "config.json").is_file():
        embedded = resolve_teacher()
        cfg = LlamaConfig.from_pretrained(embedded)
        for key, value in {**WIDTH, "num_hidden_layers": layers}.items():
            setattr(cfg, key, value)
        torch.manual_seed(layers)
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(embedded).save_pretrained(out)
        del model
    with open(out / "config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    params = _param_count(cfg)
    disk = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return {"layers": cfg["num_hidden_layers"], "params": params, "disk_gb": disk / 1e9, "dir": str(out)}


def _param_count(cfg: dict[str, Any]) -> int:
    """Parameters of a Llama config (bias-free, tied or untied head), without building the model."""
    h, m, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg.get("head_dim", h // cfg["num_attention_heads"])
    q = cfg["num_attention_heads"] * cfg.get("head_dim", h // cfg["num_attention_heads"])
    layer = h * q + 2 * h * kv + q * h + 3 * h * m + 2 * h  # q, k, v, o; gate, up, down; two norms
    head = 0 if cfg.get("tie_word_embeddings", True) else v * h
    return v * h + cfg["num_hidden_layers"] * layer + h + head


def distill_command(teacher: str, storage: Path, name: str, steps: int) -> list[str]:
    """The same small run for every teacher: 2-layer student, a slice of the embedded corpus, no cache."""
    overrides = [f"teacher.model={teacher}", "teacher.batch_size=16", "teacher.top_k=16",
                 "student.num_layers=2", "data.max_documents=24", "data.max_val_examples=8",
                 "loss.num_negatives=3", "mining.window=16", "label.use=never",
                 f"train.max_steps={steps}", "train.batch_size=4", "train.warmup_steps=1", "train.log_every=1",
                 "train.eval_every=1000", "train.checkpoint_every=1000", "run.peak_tflops=1",
                 f"run.storage_path={storage}", f"run.name={name}"]
    return [sys.executable, "-m", "gemini_ray", "distill", *overrides]  # the driver is this child process


def run_polled(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run `cmd`, polling its RSS every POLL_S s; returns the exit code, peak RSS (MiB) and wall seconds."""
    import psutil

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    peak, t0 = 0, time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.Error:  # exited between poll() and the read
                pass
            time.sleep(POLL_S)
    return {"rc": proc.returncode, "poll_peak_mib": peak / 2**20, "wall_s": time.perf_counter() - t0}


def _find_key(tree: Any, key: str) -> Any:
    """The first value of `key` anywhere in a nested dict/list, or None."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            found = _find_key(item, key)
            if found is not None:
                return found
    return None


def summary_peak(run_folder: Path) -> float | None:
    """summary.json's driver_peak_memory_mib (wherever in it the run puts it), or None when absent."""
    path = run_folder / "summary.json"
    if not path.is_file():
        return None
    peak = _find_key(json.loads(path.read_text(encoding="utf-8")), "driver_peak_memory_mib")
    return float(peak) if peak is not None else None


def measure(teacher: dict[str, Any], storage: Path, steps: int) -> dict[str, Any]:
    """One distill run on `teacher`: its driver's peak memory both ways and its wall time."""
    name = f"teacher{teacher['layers']}"
    log = storage / f"{name}.log"
    print(f"[teacher_size] distill on the {teacher['layers']}-layer teacher (log: {log})", flush=True)
    result = {**teacher, **run_polled(distill_command(teacher["dir"], storage, name, steps), log)}
    result["summary_peak_mib"] = summary_peak(storage / name)
    if result["rc"] != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        print("\n".join(tail), file=sys.stderr)
    return result


def ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Big teacher's driver peak over the small one's, per method (None where a method has no number)."""
    small, big = rows[0], rows[-1]
    return {k: (big[k] / small[k] if big.get(k) and small.get(k) else None)
            for k in ("poll_peak_mib", "summary_peak_mib")}


def print_table(rows: list[dict[str, Any]], ratio: dict[str, float | None]) -> None:
    def num(x: float | None, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    print("\n| teacher layers | params (M) | GB on disk | driver peak MiB (poll) | driver peak MiB (summary) "
          "| wall s | rc |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['layers']} | {r['params'] / 1e6:.0f} | {r['disk_gb']:.2f} | {num(r['poll_peak_mib'], '.0f')} "
              f"| {num(r['summary_peak_mib'], '.0f')} | {r['wall_s']:.0f} | {r['rc']} |")
    for key, label in (("poll_peak_mib", "poll"), ("summary_peak_mib", "summary")):
        value = ratio[key]
        verdict = "n/a" if value is None else ("met" if value <= TARGET else "missed")
        shown = "n/a" if value is None else f"{value:.2f}x"
        print(f"big/small driver peak ({label}): {shown}, target <= {TARGET:.2f}x: {verdict}")


def main() -> int:
    args = parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="teacher_size-")).resolve()
    storage = work / f"runs-{int(time.time())}"  # fresh each time: no resume of an earlier run
    storage.mkdir(parents=True, exist_ok=True)
    teachers = [build_teacher(work / f"teacher{n}", n) for n in LAYERS]
    rows = [measure(t, storage, args.steps) for t in teachers]
    ratio = ratios(rows)
    print_table(rows, ratio)
    result = {"target_ratio": TARGET, "steps": args.steps, "work": str(work), "runs": rows,
              "ratio_big_over_small": ratio, "width": WIDTH,
              "command": distill_command("<teacher>", storage, "<name>", args.steps)[3:]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"[teacher_size] wrote {args.out}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
