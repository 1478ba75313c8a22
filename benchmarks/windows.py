"""KD over whole windows against spans, at the same teacher tokens: two distils, their evaluation, and the
teacher's tokens/s per window against per span.

    python benchmarks/windows.py [--phases distill compare teacher] [--budget demo|quality] [--runs NAME ...]
                                 [--out runs/windows]

* distill: `gemini-ray distill` with the online teacher (each run in its own process and Ray), the embedded
  teacher and corpus, one run after the other: `spans`, the demo before KD windows (data.seq_length=32 =
  data.span_length: 60 steps x 8 examples of two 32-token spans), and at the same 60 steps and about the same
  teacher tokens, `windows` (2 examples of two 128-token windows a step; 192 real tokens an example on the
  Lee corpus against 63) and `windows-64` (4 examples of two 64-token windows: the demo default). Per run: wall
  seconds (the process), the teacher tokens it labelled and label-and-train seconds (summary.json), and each
  against `spans` (goal: within 10 %). `--runs` reruns some, keeping the others' records.
* compare: benchmarks/compare_students.py on the students and their untrained initialisation (the same for
  all): held-out perplexity at eval.lm_window=128 and by position range, KL, top-1 agreement, Lee, RT, each
  against the untrained one and against `spans`, with paired 95 % intervals.
* teacher: the embedded teacher in this process (teacher.torch_threads threads), the same corpus tokens cut
  into 32-token spans and into 128-token windows, 2,048 token positions a forward either way, alternating for
  --rounds rounds: real tokens/s per window against per span, on full rows only (the forward's cost: one
  over 128 tokens against four over 32) and on the corpus's rows as they come (last windows padded).

`--budget quality`: configs/quality.yaml, its 64-token spans (8 examples a step) against its 128-token windows
(4 a step), 120 steps each, the teacher online in both. Writes <out>/windows-<budget>.json (and
compare-<budget>/ from compare_students) and prints them. Every `gemini-ray` process imports gemini_ray from
this checkout (PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
        "config": None,
        "spans": ["data.seq_length=32", "data.span_length=32", "train.batch_size=8", "train.max_steps=60"],
        "windows": ["data.seq_length=128", "data.span_length=32", "train.batch_size=2", "train.max_steps=60"],
        "windows-64": ["data.seq_length=64", "data.span_length=32", "train.batch_size=4", "train.max_steps=60"],
    },
    "quality": {
        "config": "configs/quality.yaml",
        "spans": ["data.seq_length=64", "data.span_length=64", "train.batch_size=8", "label.use=never"],
        "windows": ["label.use=never"],  # the file's 128-token windows, 4 examples a step
    },
}
"""Each budget's config file (None: the built-in defaults, the demo) and its runs' overrides on top of it:
the same steps and about the same teacher tokens a step. The quality budget's runs stream the teacher online
as the demo's do (label.use=never), so that their wall times compare."""


def _runs(budget: str) -> list[str]:
    return [name for name in BUDGETS[budget] if name != "config"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def distill(out: Path, budget: str, names: list[str], runs: dict[str, dict]) -> dict[str, dict]:
    """The budget's runs `names`, one after the other (into `runs`, the records kept from before): wall
    seconds, teacher tokens, label-and-train seconds."""
    for name in names:
        config = BUDGETS[budget]["config"]
        overrides = [*(["--config", config] if config else []), *BUDGETS[budget][name]]
        shutil.rmtree(out / f"{budget}-{name}", ignore_errors=True)  # a fresh run, not a resume of an earlier one
        args = [sys.executable, "-m", "gemini_ray", "distill", *overrides, f"run.storage_path={out}",
                f"run.name={budget}-{name}", "train.checkpoint_every=1000"]
        t0 = time.perf_counter()
        with open(out / f"{budget}-{name}.log", "w") as log:
            subprocess.run(args, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, check=True)
        wall = time.perf_counter() - t0
        summary = json.loads((out / f"{budget}-{name}" / "summary.json").read_text())
        runs[name] = {"wall_s": wall, "teacher_tokens": summary["teacher_signal"]["teacher_tokens_this_run"],
                      "label_and_train_s": summary["wall_time_s"].get("label_and_train_s"),
                      "student": summary["student"]["path"], "overrides": overrides,
                      "held_out_lm": summary.get("held_out_lm")}
        print(f"{name}: {wall:.0f} s, {runs[name]['teacher_tokens']:,} teacher tokens", flush=True)
    runs = {name: run for name, run in runs.items() if name in _runs(budget)}  # records of this budget's runs
    for name, run in runs.items():
        if name != "spans" and "spans" in runs:
            run["versus_spans"] = {"teacher_tokens": run["teacher_tokens"] / runs["spans"]["teacher_tokens"],
                                   "wall": run["wall_s"] / runs["spans"]["wall_s"]}
    return runs


def compare(out: Path, budget: str, runs: dict[str, dict]) -> dict:
    """compare_students on the students (each against the untrained one and against `spans`), under the
    budget's evaluation protocol (its config's eval section)."""
    dest = out / f"compare-{budget}"
    config = BUDGETS[budget]["config"]
    names = sorted(runs, key=lambda name: name != "spans")  # spans first: the reference of the others
    args = [sys.executable, str(ROOT / "benchmarks" / "compare_students.py"), "--out", str(dest),
            *(["--config", config] if config else []),
            *(arg for name in names[1:] for arg in ("--pair", f"{name}:spans")),  # each pair whole in the json
            *(f"{name}={runs[name]['student']}" for name in names)]
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
        full = ok & (r["attention_mask"].sum((1, 2)) == 2 * W)  # no padding: the forward's cost per token
        for kind, keep in (("corpus", ok), ("full", full)):
            rows[kind, W] = {"input_ids": r["input_ids"][keep], "attention_mask": r["attention_mask"][keep]}
    rates: dict[tuple[str, int], list[float]] = {key: [] for key in rows}
    for i in range(rounds):
        for key in (list(rows) if i % 2 == 0 else list(rows)[::-1]):
            W = key[1]
            per_forward = 2048 // (2 * W)  # examples: 2,048 token positions a forward
            n = min(len(rows[key]["input_ids"]), 6144 // (2 * W))  # about 6 k positions a round
            t0, tokens = time.perf_counter(), 0
            for s in range(0, n, per_forward):
                out = labeler({k: v[s : s + per_forward] for k, v in rows[key].items()})
                tokens += int(out["teacher_tokens"].sum())
            rates[key].append(tokens / (time.perf_counter() - t0))
    med = {key: statistics.median(v) for key, v in rates.items()}
    return {"threads": torch.get_num_threads(), "rounds": rounds,
            **{f"{kind}_{'spans' if W == 32 else 'windows'}_tokens_per_s": v for (kind, W), v in rates.items()},
            "ratio_full": med["full", 128] / med["full", 32], "ratio_corpus": med["corpus", 128] / med["corpus", 32]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phases", nargs="+", default=["distill", "compare", "teacher"])
    p.add_argument("--budget", default="demo", choices=sorted(BUDGETS))
    p.add_argument("--out", default="runs/windows")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", nargs="+", default=["spans", "windows", "windows-64"], choices=["spans", "windows", "windows-64"])
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"windows-{a.budget}.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    if "distill" in a.phases:
        result["distill"] = distill(out, a.budget, a.runs or _runs(a.budget), result.get("distill", {}))
        path.write_text(json.dumps(result, indent=1))
    if "compare" in a.phases:
        result["compare"] = compare(out, a.budget, result["distill"])
        path.write_text(json.dumps(result, indent=1))
    if "teacher" in a.phases:
        result["teacher"] = teacher(a.rounds)
        path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "compare"}, indent=1))


if __name__ == "__main__":
    main()
