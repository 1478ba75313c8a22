"""Scale: the same short distill on corpora 10x apart in size, side by side in one run of this script.

    python benchmarks/scale.py [--sizes-mb 20 200 2000] [--steps 2] [--phases sizes tiny tokenize resume]
                               [--tokenize-mb 200]
                               [--workdir /tmp/gemini-ray-scale]

Corpora: jsonl shards of 20 MB of unique documents, each 8-24 sentences drawn (seeded) from the shipped
corpora (gensim's Lee news articles and Wikipedia pages) and numbered; made once, kept in --workdir.

Per size, `gemini-ray distill data.path=<corpus> train.max_steps=<steps>` at the defaults otherwise (the
embedded teacher, what a new user runs), each in its own process with its own Ray:
* driver peak resident memory: VmHWM of the driver process, read from /proc while it runs;
* seconds from the command's start to the end of its first training step (progress.json's clock);
* the whole command's seconds.
Then the same with a tiny teacher (phase `tiny`: a 4-layer, 64-wide random LLaMA, `tiny_teacher`), whose own
cost would not hide the data path's.

Then, on the smallest corpus (or --tokenize-mb), tokenize-and-pair throughput (documents/s over the whole
corpus): Ray's pass (`corpus_pass.corpus_stream`, the pass `gemini-ray label` makes) against a plain
multiprocessing pool of as many processes running the same SpanPairer on the same documents, alternated for
three rounds; the pool sends its examples back to the parent as Ray's pass hands them to its consumer. In
each round Ray is started (not timed) and its pass runs twice: the first also starts its processes (as a
command's first pass does), the second runs in the same Ray; the pool is started, reads the corpus and is
stopped in its time. Ratios are of the medians.

Then a resume on the 200 MB corpus (the second size): a distill killed with SIGKILL (its whole process group,
Ray included) after its first checkpoint, and the same command again: examples skipped and repeated, and the
teacher tokens each run spent.

Writes benchmarks/results/scale.json after each phase (a phase run again replaces its part) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
SHARD_BYTES = 20 * 1024 * 1024


# --------------------------------------------------------------------------- corpora


def sentences() -> list[str]:
    """Every sentence of the shipped corpora (Lee news articles, Wikipedia pages), 30-400 characters."""
    from gemini_ray.data.corpus import embedded_corpus

    texts = Path(embedded_corpus("embedded:lee_background")).read_text(encoding="utf-8").splitlines()
    texts += embedded_corpus("embedded:wikipedia")
    out = []
    for text in texts:
        out += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 30 <= len(s.strip()) <= 400]
    return out


def make_corpus(directory: Path, megabytes: int, pool: list[str], seed: int = 0,
                shard_bytes: int | None = SHARD_BYTES) -> Path:
    """jsonl shards of ~`shard_bytes` (None: one file) under `directory` holding `megabytes` of unique documents
    (made once). The documents do not depend on shard_bytes: the same seed gives the same corpus, cut otherwise."""
    done = directory / ".complete"
    if done.is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    rng, target, written, doc, shard = random.Random(seed), megabytes * 1024 * 1024, 0, 0, 0
    while written < target:
        path = directory / f"part-{shard:05d}.jsonl"
        with open(path.with_suffix(".tmp"), "w", encoding="utf-8") as f:
            size = 0
            while (shard_bytes is None or size < shard_bytes) and written + size < target:
                text = " ".join(rng.choices(pool, k=rng.randint(8, 24))) + f" (Document {doc}.)"
                line = json.dumps({"text": text}) + "\n"
                f.write(line)
                size, doc = size + len(line.encode("utf-8")), doc + 1
        path.with_suffix(".tmp").rename(path)
        written, shard = written + size, shard + 1
    done.write_text(json.dumps({"documents": doc, "bytes": written, "shards": shard}))
    return directory


# --------------------------------------------------------------------------- one distill, watched


def _hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _progress(run: Path) -> dict | None:
    try:
        return json.loads((run / "progress.json").read_text())
    except (OSError, ValueError):
        return None


def distill(corpus: Path, storage: Path, name: str, overrides: list[str], kill_after_step: int | None = None,
            log: Path | None = None) -> dict:
    """Run `gemini-ray distill` in its own process group; returns its numbers (and kills it, with its Ray,
    once progress.json passes kill_after_step)."""
    args = [sys.executable, "-m", "gemini_ray.cli", "distill", f"data.path={corpus}", "data.format=jsonl",
            f"run.storage_path={storage}", f"run.name={name}", "label.use=never", *overrides]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = open(log, "a", encoding="utf-8") if log else subprocess.DEVNULL
    start = time.time()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    peak_kb, first_step_s, killed = 0, None, False
    while proc.poll() is None:
        peak_kb = max(peak_kb, _hwm_kb(proc.pid) or 0)
        p = _progress(storage / name)
        if first_step_s is None and p and p.get("step", 0) >= 1 and p["time"] >= start:
            first_step_s = p["time"] - start
        if kill_after_step is not None and p and p["time"] >= start and p["step"] > kill_after_step:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
            subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)  # Ray daemons that left the group
            killed = True
        time.sleep(0.2)
    seconds = time.time() - start
    if not killed and proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}); see {log}")
    summary_path = storage / name / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() and not killed else None
    return {"driver_peak_rss_mb": round(peak_kb / 1024, 1), "first_step_s": round(first_step_s or -1, 1),
            "total_s": round(seconds, 1), "killed_at_step": (_progress(storage / name) or {}).get("step") if killed
            else None, "summary": summary}


def size_run(corpus: Path, storage: Path, overrides: list[str], log: Path) -> dict:
    """The short distill of one corpus size, with its corpus's counts."""
    meta = json.loads((corpus / ".complete").read_text())
    r = distill(corpus, storage, "scale", overrides, log=log)
    corpus_counts = r.pop("summary")["corpus"]
    r.update(documents=meta["documents"], bytes=meta["bytes"],
             read_before_training=corpus_counts["read_before_training"]["documents"],
             read_by_training=corpus_counts["read_by_training"]["documents"])
    return r


def tiny_teacher(directory: Path, pool: list[str]) -> Path:
    """A 4-layer, 64-wide LLaMA (random weights) with a 4,000-word tokenizer trained on the corpora's sentences,
    built once with the test suite's helpers: its forward pass costs next to nothing, so the time to step 1
    is the data path's and Ray's."""
    if not (directory / "config.json").is_file():
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import save, tiny_llama, word_tokenizer

        tokenizer = word_tokenizer(pool, masked=False, vocab_size=4000)
        save(tiny_llama(tokenizer, layers=4, hidden=64), tokenizer, directory)
    return directory


# --------------------------------------------------------------------------- tokenize throughput


_PAIRER = None


def _init_pairer(source: str, span_length: int) -> None:
    global _PAIRER
    from gemini_ray.data.spans import SpanPairer

    _PAIRER = SpanPairer(source, "causal", span_length)


def _pair_chunk(texts: list[str]) -> dict:
    """The chunk's examples (status 'ok'), sent back to the parent as Ray's pass hands its rows to its consumer."""
    import numpy as np

    rows = _PAIRER({"text": np.array(texts, dtype=object)})
    ok = rows.pop("status") == "ok"
    return {k: v[ok] for k, v in rows.items()}


def _pool_pass(corpus: Path, source: str, span_length: int, processes: int, work) -> tuple[int, float]:
    """(examples, seconds) of a spawn pool mapping `work` over 256-document chunks read in the parent."""
    t0 = time.perf_counter()
    chunks, chunk = [], []
    for path in sorted(corpus.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                chunk.append(json.loads(line)["text"])
                if len(chunk) == 256:
                    chunks.append(chunk)
                    chunk = []
    chunks.append(chunk)
    with multiprocessing.get_context("spawn").Pool(processes, _init_pairer, (source, span_length)) as pool:
        examples = sum(r if isinstance(r, int) else len(r["doc_id"]) for r in pool.imap(work, chunks))
    return examples, time.perf_counter() - t0


def tokenize_throughput(corpus: Path, processes: int, rounds: int = 3) -> dict:
    """Documents/s of Ray's tokenize-and-pair pass and of a multiprocessing pool, same tokenizer and corpus,
    alternated for `rounds` rounds: each starts Ray (not timed), times a pass that starts its worker
    processes (cold) and one more (warm), stops Ray, then times the pool (its start and corpus read included).
    The ratios are of the medians."""
    import statistics

    import ray

    from gemini_ray.cluster.session import init_ray
    from gemini_ray.config import build_config
    from gemini_ray.data.corpus_pass import corpus_stream
    from gemini_ray.models.build import resolve_teacher

    cfg = build_config(None, [f"data.path={corpus}", "data.format=jsonl"])
    source = resolve_teacher(cfg.teacher)
    times: dict[str, list[float]] = {"ray_cold_s": [], "ray_warm_s": [], "pool_s": []}
    for _ in range(rounds):
        ray.init(num_cpus=processes, include_dashboard=False)
        init_ray(cfg)
        for key in ("ray_cold_s", "ray_warm_s"):
            t0 = time.perf_counter()
            stream = corpus_stream(cfg, source, "causal")
            examples = sum(b.num_rows for b in stream.examples.iter_batches(batch_size=None, batch_format="pyarrow"))
            times[key].append(round(time.perf_counter() - t0, 1))
            stats = stream.stats()
        ray.shutdown()
        pool_examples, pool_s = _pool_pass(corpus, source, cfg.data.span_length, processes, _pair_chunk)
        times["pool_s"].append(round(pool_s, 1))
        print(f"tokenize round: {({k: v[-1] for k, v in times.items()})}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    docs = stats.documents
    return {"documents": docs, "processes": processes, "rounds": rounds, "ray_examples": examples,
            "pool_examples": pool_examples, **times,
            **{k.replace("_s", "_docs_per_s"): round(docs / v, 1) for k, v in med.items()},
            "ray_vs_pool": round(med["pool_s"] / med["ray_cold_s"], 3),
            "ray_warm_vs_pool": round(med["pool_s"] / med["ray_warm_s"], 3),
            "ray_tokenize_processes": stats.tokenize_processes}


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[20, 200, 2000])
    parser.add_argument("--steps", type=int, default=2, help="train.max_steps of each size's distill")
    parser.add_argument("--workdir", default="/tmp/gemini-ray-scale")
    parser.add_argument("--phases", nargs="+", default=["sizes", "tiny", "tokenize", "resume"],
                        choices=["sizes", "tiny", "tokenize", "resume"])
    parser.add_argument("--tokenize-mb", type=int, default=None,
                        help="the corpus size of the tokenize phase (default: the smallest of --sizes-mb)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    args = parser.parse_args()
    work = Path(args.workdir)
    log = work / "distill.log"
    work.mkdir(parents=True, exist_ok=True)
    pool = sentences()
    corpora = {mb: make_corpus(work / f"corpus-{mb}mb", mb, pool) for mb in args.sizes_mb}
    out = Path(args.out)
    results: dict = json.loads(out.read_text()) if out.is_file() else {}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))

    for phase, key in (("sizes", "sizes"), ("tiny", "sizes_tiny_teacher")):
        if phase not in args.phases:
            continue
        over = [f"train.max_steps={args.steps}"]
        if phase == "tiny":
            over += [f"teacher.model={tiny_teacher(work / 'tiny-teacher', pool)}", "student.num_layers=2"]
        results.update(steps=args.steps)
        results[key] = {}
        for mb, corpus in corpora.items():
            results[key][str(mb)] = size_run(corpus, work / f"runs-{phase}-{mb}mb-{int(time.time())}", over, log)
            save()
            print(f"{phase} {mb} MB: {results[key][str(mb)]}", flush=True)

    if "tokenize" in args.phases:
        mb = args.tokenize_mb or min(corpora)
        corpus = corpora.get(mb) or make_corpus(work / f"corpus-{mb}mb", mb, pool)
        results["tokenize"] = {"size_mb": mb, **tokenize_throughput(corpus, processes=os.cpu_count() or 2)}
        save()
        print(f"tokenize: {results['tokenize']}", flush=True)

    if "resume" in args.phases and len(corpora) > 1:
        mb = sorted(corpora)[1]
        storage = work / f"resume-{mb}mb-{int(time.time())}"
        over = ["train.max_steps=8", "train.checkpoint_every=4", "train.log_every=1", "train.eval_every=100",
                "data.max_val_examples=64"]  # a shorter start: this phase measures what a resume repeats
        first = distill(corpora[mb], storage, "resume", over, kill_after_step=5, log=log)
        second = distill(corpora[mb], storage, "resume", over, log=log)
        s = second.pop("summary")
        event = s["training"]["resumes"][0]
        tokens = s["teacher_signal"]["teacher_tokens_this_run"]
        per_example = 2 * s["config"]["data"]["span_length"]
        val_rows = s["corpus"]["read_before_training"]["val_examples"]
        results["resume"] = {"size_mb": mb, "killed_at_step": first["killed_at_step"],
                             "resumed_from_step": event["step"], "examples_skipped": event["examples_skipped"],
                             "examples_repeated": event["examples_repeated"],
                             "teacher_tokens_second_run": tokens,
                             # every span of these long documents is full: 2 x data.span_length tokens an example
                             "train_examples_labelled_second_run": tokens // per_example - val_rows,
                             "train_examples_of_the_run": 8 * 8, "first_step_s_second_run": second["first_step_s"]}
        save()
        print(f"resume: {results['resume']}", flush=True)

    for key, teacher in (("sizes", "the embedded teacher"), ("sizes_tiny_teacher", "a tiny teacher")):
        sizes = results.get(key) or {}
        if not sizes:
            continue
        base = sizes[min(sizes, key=int)]
        print(f"\n{teacher}:\n| corpus | documents | driver peak RSS | vs smallest | command start -> step 1 | "
              "vs smallest | total |\n|---|---|---|---|---|---|---|")
        for mb, r in sizes.items():
            print(f"| {mb} MB | {r['documents']:,} | {r['driver_peak_rss_mb']:.0f} MB | "
                  f"{r['driver_peak_rss_mb'] / base['driver_peak_rss_mb']:.2f}x | {r['first_step_s']:.0f} s | "
                  f"{r['first_step_s'] / base['first_step_s']:.2f}x | {r['total_s']:.0f} s |")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
