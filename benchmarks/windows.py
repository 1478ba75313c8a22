"""KD over whole windows against spans, at the same teacher tokens: two distils, their evaluation, and the
teacher's tokens/s per window against per span.

    python benchmarks/windows.py [--phases distill compare teacher] [--budget demo] [--out runs/windows]

* distill: `gemini-ray distill` twice with the online teacher (each in its own process and Ray), the embedded
  teacher and corpus: `spans`, the demo budget before KD windows (data.seq_length=32 = data.span_length: 60
  steps x 8 examples of two 32-token spans), and `windows`, the demo default (data.seq_length=128: two
  128-token windows an example, 40 steps x 4 examples, about the same teacher tokens: 192 real tokens an
  example on the Lee corpus against 63). Per run: wall seconds (the process), the teacher tokens it labelled
  (summary.json), training seconds. The teacher-token and wall-time ratios must sit within 10 %.
* compare: benchmarks/compare_students.py on both students and their untrained initialisation (the same
  for both): held-out perplexity at eval.lm_window=128 and by position range, KL, top-1 agreement, Lee, RT,
  each student against the untrained one and windows against spans, with paired 95 % intervals.
* teacher: the embedded teacher in this process (teacher.torch_threads threads), the same corpus tokens cut
  into 32-token spans and into 128-token windows, 2,048 tokens a forward either way, alternating for
  --rounds rounds: tokens/s per window against per span (one forward over 128 tokens against four over 32).

Writes <out>/windows.json (and compare/ from compare_students) and prints the tables. Every `gemini-ray`
process imports gemini_ray from this checkout (PYTHONPATH).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BUDGETS = {
    "demo": {
        "spans": ["data.seq_length=32", "data.span_length=32", "train.batch_size=8", "train.max_steps=60"],
        "windows": ["data.seq_length=128", "data.span_length=32", "train.batch_size=4", "train.max_steps=40"],
    },
}
"""Each budget's two runs: the overrides on top of the built-in defaults (the demo)."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def distill(out: Path, budget: str) -> dict[str, dict[str, float]]:
    """Both runs of the budget, one after the other: wall seconds, teacher tokens, training seconds."""
    runs = {}
    for name, overrides in BUDGETS[budget].items():
        args = [sys.executable, "-m", "gemini_ray", "distill", *overrides, f"run.storage_path={out}",
                f"run.name={budget}-{name}", "train.checkpoint_every=1000"]
        t0 = time.perf_counter()
        with open(out / f"{budget}-{name}.log", "w") as log:
            subprocess.run(args, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, check=True)
        wall = time.perf_counter() - t0
        summary = json.loads((out / f"{budget}-{name}" / "summary.json").read_text())
        runs[name] = {"wall_s": wall, "teacher_tokens": summary["teacher_signal"]["teacher_tokens_this_run"],
                      "label_and_train_s": summary["wall_time_s"].get("label_and_train_s"), "student": summary["student"]["path"],
                      "overrides": overrides, "history_last": summary["training"]["history"][-1]}
        print(f"{name}: {wall:.0f} s, {runs[name]['teacher_tokens']:,} teacher tokens", flush=True)
    spans, windows = runs["spans"], runs["windows"]
    runs["ratios"] = {"teacher_tokens": windows["teacher_tokens"] / spans["teacher_tokens"],
                      "wall": windows["wall_s"] / spans["wall_s"]}
    return runs


def compare(out: Path, runs: dict[str, dict]) -> dict:
    """compare_students on both students (windows against spans, each against the untrained student)."""
    dest = out / "compare"
    args = [sys.executable, str(ROOT / "benchmarks" / "compare_students.py"), "--out", str(dest),
            "--pair", "windows:spans", f"spans={runs['spans']['student']}", f"windows={runs['windows']['student']}"]
    subprocess.run(args, cwd=ROOT, env=_env(), check=True)
    return json.loads((dest / "compare.json").read_text())


def teacher(rounds: int) -> dict[str, float]:
    """Tokens/s of the embedded teacher on the same tokens as 32-token spans and as 128-token windows."""
    import numpy as np
    import torch

    from gemini_ray.config import TeacherConfig
    from gemini_ray.data.corpus import gensim_test_data
    from gemini_ray.data.spans import SpanPairer
    from gemini_ray.data.teacher_stage import TeacherLabeler
    from gemini_ray.models.build import load_tokenizer, resolve_teacher

    cfg = TeacherConfig()
    labeler = TeacherLabeler(dict(vars(cfg)), span_length=32)
    tok = load_tokenizer(resolve_teacher(cfg))
    texts = [t for t in (gensim_test_data() / "lee_background.cor").read_text().splitlines() if t.strip()][:60]
    rows = {}
    for W in (32, 128):
        r = SpanPairer("", "causal", 32, tokenizer=tok, seq_length=W)({"text": np.array(texts, dtype=object)})
        ok = r["status"] == "ok"
        rows[W] = {"input_ids": r["input_ids"][ok], "attention_mask": r["attention_mask"][ok]}
    rates: dict[int, list[float]] = {32: [], 128: []}
    for i in range(rounds):
        for W in ((32, 128) if i % 2 == 0 else (128, 32)):
            per_forward = 2048 // (2 * W)  # examples: 2,048 tokens a forward
            n = min(len(rows[W]["input_ids"]), 4096 // (2 * W) * 2)  # about 8 k tokens a round
            t0, tokens = time.perf_counter(), 0
            for s in range(0, n, per_forward):
                out = labeler({k: v[s : s + per_forward] for k, v in rows[W].items()})
                tokens += int(out["teacher_tokens"].sum())
            rates[W].append(tokens / (time.perf_counter() - t0))
    med = {W: statistics.median(v) for W, v in rates.items()}
    return {"threads": torch.get_num_threads(), "rounds": rounds, "spans_tokens_per_s": rates[32],
            "windows_tokens_per_s": rates[128], "ratio": med[128] / med[32]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phases", nargs="+", default=["distill", "compare", "teacher"])
    p.add_argument("--budget", default="demo", choices=sorted(BUDGETS))
    p.add_argument("--out", default="runs/windows")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "windows.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    if "distill" in a.phases:
        result["distill"] = distill(out, a.budget)
        path.write_text(json.dumps(result, indent=1))
    if "compare" in a.phases:
        result["compare"] = compare(out, result["distill"])
        path.write_text(json.dumps(result, indent=1))
    if "teacher" in a.phases:
        result["teacher"] = teacher(a.rounds)
        path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "compare"}, indent=1))


if __name__ == "__main__":
    main()
