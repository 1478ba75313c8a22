"""Label scale: `gemini-ray label` on corpora 10x apart, killed and resumed, and against a plain loop.

    python benchmarks/label_scale.py [--phases scale resume loop] [--sizes-mb 10 100] [--timeout-min 40]
                                     [--overrides KEY=VALUE ...] [--variant NAME] [--label NAME]
                                     [--resume-mb 100] [--rounds 3] [--workdir /tmp/gemini-ray-label-scale-<label>]

Each phase writes its part of benchmarks/results/label_scale.json under --label (a phase run again replaces
its part; the scale phase, the sizes it ran of its --variant) and prints a markdown table.

* scale: the tiny teacher of benchmarks/scale.py (`tiny_teacher`), label.scope=corpus, for each size a
  synthetic corpus in ONE jsonl file (`make_corpus`: a large single file is what a reader must cut into byte
  ranges), one size after the other, each `gemini-ray label` in its own process with its own Ray and storage.
  Per size: the driver's peak resident memory (VmHWM polled from /proc; also the manifest's
  driver_peak_memory_mib), teacher tokens/s over the pass (teacher_tokens_this_run / wall_time_s.label_s),
  wall seconds and, where the manifest has it, teacher_actor_starts. Then the largest size against the
  smallest (goals: RSS <= 1.15x, tokens/s >= 0.9x). A run past --timeout-min is killed and recorded with how
  far it got (shard files written, the manifest's shards, its last progress line).
* resume: on the --resume-mb corpus, against a Ray head of this script's own (`ray start --head`, stopped at
  the end), so that the teacher-token counter, a detached actor, outlives the driver: `gemini-ray label`
  killed with SIGKILL half way through (shard files against the uninterrupted cache of the scale phase, or
  the manifest's progress.bytes against the corpus), then the same command to the end. Rows lost and
  duplicated (per shard file, the example ids against the uninterrupted cache) and the teacher tokens sent
  again: counter after the rerun - counter before the first run - the cache's teacher_tokens, also in blocks
  (goals: 0, 0, at most one block per teacher actor). Needs the streaming label of issue 45 (a manifest with
  teacher_actor_starts); skipped with a message otherwise.
* loop: the embedded teacher on the demo corpus (the defaults): `gemini-ray label` tokens/s against the same
  rows (the cache's example ids, paired by SpanPairer from the corpus) through TeacherLabeler in this
  process, in batches of teacher.batch_size // 2, with the actor's torch threads (teacher.torch_threads);
  --rounds rounds, which side goes first alternating, then medians and their ratio (goal >= 0.85x).
  Tokenization is outside both times (label_s starts after the corpus pass); the loop's model load is
  reported apart from its forwards.

--overrides go to every `gemini-ray label` of the run and to the loop's config: the old code's keys or the
new one's, chosen at run time (label.shards_per_round=N before issue 45, label.block_mb=N after).
--variant names the scale phase's entry (default: the overrides, or "defaults").

Every `gemini-ray` process (and the Ray it starts) imports gemini_ray from this checkout (PYTHONPATH), not
from wherever the environment's editable install points.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # this checkout's gemini_ray (in this process too), scale.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from scale import _hwm_kb, make_corpus, sentences, tiny_teacher  # noqa: E402  (benchmarks/scale.py)

COUNTER_NAME = "gemini_ray_teacher_tokens"
"""The teacher-token counter's actor name (gemini_ray.data.pipeline.COUNTER_NAME, read from there when present)."""

GOALS = {"rss_ratio_max": 1.15, "tokens_per_s_ratio_min": 0.9, "loop_ratio_min": 0.85}


# --------------------------------------------------------------------------- one label run, watched


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a `gemini-ray` process and of the Ray it starts: this checkout first on the path (Ray's
    workers then import the driver's gemini_ray), no RAY_ADDRESS unless given in `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def shard_files(cache: Path) -> list[Path]:
    """The cache's shard files, wherever under it they sit."""
    return sorted(cache.rglob("shard-*.parquet")) if cache.is_dir() else []


def _count(value) -> int | None:
    return len(value) if isinstance(value, (dict, list)) else None


def done_fraction(cache: Path, expected_shards: int | None, corpus_bytes: int | None) -> float:
    """How much of the pass is done: shard files against the expected count, or the manifest's progress.bytes
    (the streaming label's) against the corpus, whichever says more."""
    done = len(shard_files(cache)) / expected_shards if expected_shards else 0.0
    progress = (read_json(cache / "manifest.json") or {}).get("progress") or {}
    if corpus_bytes and isinstance(progress, dict) and progress.get("bytes"):
        done = max(done, progress["bytes"] / corpus_bytes)
    return done


def how_far(cache: Path, log: Path) -> dict:
    """How far a cut-short run got: shard files on disk, the manifest's shard records, its progress (the
    streaming label's), and the last progress line the command printed."""
    manifest = read_json(cache / "manifest.json") or {}
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("[gemini-ray]")]
    return {"shard_files": len(shard_files(cache)), "manifest_shards_done": _count(manifest.get("shards")),
            "manifest_shards_expected": _count(manifest.get("expected_rows")), "progress": manifest.get("progress"),
            "last_progress_line": lines[-1][:300] if lines else None}


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)  # Ray daemons that left the group


def run_label(overrides: list[str], cache: Path, log: Path, timeout_s: float, env: dict[str, str] | None = None,
              kill_at: float | None = None, expected_shards: int | None = None,
              corpus_bytes: int | None = None) -> dict:
    """`gemini-ray label label.path=<cache> <overrides>` in a process group of its own, watched: its driver's
    peak resident memory and its wall time. SIGKILLed (with the Ray it started) past timeout_s, or once
    `kill_at` of the pass is done (`done_fraction`). status: finished, failed, timed_out or killed."""
    args = [sys.executable, "-m", "gemini_ray.cli", "label", f"label.path={cache}", *overrides]
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(args)}\n")
        out.flush()
        start = time.time()
        proc = subprocess.Popen(args, cwd=ROOT, env=env or child_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        peak_kb, status, checked = 0, None, 0.0
        while proc.poll() is None:
            peak_kb = max(peak_kb, _hwm_kb(proc.pid) or 0)
            now = time.time()
            if now - start > timeout_s:
                status = "timed_out"
            elif kill_at is not None and now - checked > 1.0:
                checked = now
                if done_fraction(cache, expected_shards, corpus_bytes) >= kill_at:
                    status = "killed"
            if status:
                _kill(proc)
                break
            time.sleep(0.5)
        proc.wait()
    seconds = time.time() - start
    return {"status": status or ("finished" if proc.returncode == 0 else "failed"), "returncode": proc.returncode,
            "wall_s": round(seconds, 1), "timeout_s": timeout_s, "driver_peak_rss_mib": round(peak_kb / 1024, 1),
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "command": "python -m gemini_ray.cli label " + " ".join(args[4:]), "log": str(log)}


def pass_figures(manifest: dict) -> dict:
    """What a finished run's manifest says about its pass (the streaming label's fields where present)."""
    wall = manifest.get("wall_time_s") or {}
    tokens, label_s = manifest.get("teacher_tokens_this_run"), wall.get("label_s")
    return {"rows": manifest.get("rows"), "teacher_tokens": manifest.get("teacher_tokens"),
            "teacher_tokens_this_run": tokens,
            "tokens_per_s": round(tokens / label_s, 1) if tokens and label_s else None,
            "wall_time_s": {k: round(v, 1) for k, v in wall.items() if isinstance(v, (int, float))},
            "manifest_driver_peak_memory_mib": manifest.get("driver_peak_memory_mib"),
            "teacher_actor_starts": manifest.get("teacher_actor_starts"),
            "shards": _count(manifest.get("shards")), "cache_bytes": manifest.get("bytes"),
            "rows_lost": manifest.get("rows_lost"), "rows_duplicated": manifest.get("rows_duplicated"),
            "progress": manifest.get("progress")}


def one_file_corpus(work: Path, mb: int, pool: list[str]) -> tuple[Path, dict]:
    """The `mb` MB corpus of benchmarks/scale.py (the same documents) as one jsonl file, and its counts."""
    directory = make_corpus(work / f"corpus-{mb}mb-one-file", mb, pool, shard_bytes=None)
    return directory / "part-00000.jsonl", json.loads((directory / ".complete").read_text())


def measured_run(overrides: list[str], storage: Path, timeout_s: float, **watch) -> dict:
    """run_label into <storage>/cache, with the manifest's figures when it finished and how far it got when not."""
    cache = storage / "cache"
    run = run_label([f"run.storage_path={storage}", *overrides], cache, storage / "label.log", timeout_s, **watch)
    manifest = read_json(cache / "manifest.json") or {}
    if run["status"] == "finished":
        run.update(pass_figures(manifest), cache=str(cache))
    else:
        run["got_to"] = how_far(cache, Path(run["log"]))
    return run


# --------------------------------------------------------------------------- phase: scale


def scale_phase(sizes_mb: list[int], overrides: list[str], work: Path, pool: list[str], timeout_s: float,
                record, previous: dict | None = None) -> dict:
    """Each size's `gemini-ray label` with the tiny teacher; `record(part)` saves the part after every size.
    previous: this variant's part of an earlier run, whose other sizes are kept."""
    teacher = tiny_teacher(work / "tiny-teacher", pool)
    part: dict = {"overrides": overrides, "sizes": dict((previous or {}).get("sizes", {}))}
    for mb in sizes_mb:
        corpus, meta = one_file_corpus(work, mb, pool)
        storage = work / "runs" / f"scale-{mb}mb-{int(time.time())}"
        over = [f"data.path={corpus}", "data.format=jsonl", f"teacher.model={teacher}", "label.scope=corpus",
                *overrides]
        print(f"scale {mb} MB: {storage}", flush=True)
        run = measured_run(over, storage, timeout_s)
        part["sizes"][str(mb)] = {"corpus_bytes": meta["bytes"], "documents": meta["documents"], **run}
        part["sizes"] = dict(sorted(part["sizes"].items(), key=lambda kv: int(kv[0])))
        part["ratios"] = scale_ratios(part["sizes"])
        record(part)
        print(f"scale {mb} MB: {run['status']} in {run['wall_s']:.0f} s", flush=True)
    return part


def scale_ratios(sizes: dict) -> dict | None:
    """The largest finished size against the finished one nearest a tenth of it: driver RSS (polled and the
    manifest's) and tokens/s."""
    done = {int(mb): r for mb, r in sizes.items() if r["status"] == "finished"}
    if len(done) < 2:
        return None
    top = max(done)
    low = min((mb for mb in done if mb < top), key=lambda mb: abs(math.log(top / 10 / mb)))
    small, large = done[low], done[top]

    def ratio(key: str) -> float | None:
        a, b = small.get(key), large.get(key)
        return round(b / a, 3) if a and b else None

    rss, tps = ratio("driver_peak_rss_mib"), ratio("tokens_per_s")
    return {"sizes_mb": [low, top], "driver_peak_rss": rss,
            "manifest_driver_peak_memory": ratio("manifest_driver_peak_memory_mib"), "tokens_per_s": tps,
            "rss_goal_met": rss is not None and rss <= GOALS["rss_ratio_max"],
            "tokens_per_s_goal_met": tps is not None and tps >= GOALS["tokens_per_s_ratio_min"]}


def _or_dash(value) -> str:
    return "-" if value is None else str(value)


def scale_table(variant: str, part: dict) -> str:
    rows = [f"\nscale, {variant}:\n| corpus | status | rows | driver peak RSS (polled / manifest) | teacher tokens/s | "
            "label_s | wall | teacher actor starts | how far |\n|---|---|---|---|---|---|---|---|---|"]
    for mb, r in part["sizes"].items():
        got = r.get("got_to") or {}
        far = (f"{got.get('shard_files')} shard files, manifest {got.get('manifest_shards_done')}/"
               f"{got.get('manifest_shards_expected')}" if got else "")
        label_s = (r.get("wall_time_s") or {}).get("label_s")
        rows.append(f"| {mb} MB | {r['status']} | {r.get('rows') or ''} | {r['driver_peak_rss_mib']:.0f} / "
                    f"{r.get('manifest_driver_peak_memory_mib') or '-'} MiB | {r.get('tokens_per_s') or '-'} | "
                    f"{label_s or '-'} | {r['wall_s']:.0f} s | {_or_dash(r.get('teacher_actor_starts'))} | {far} |")
    q = part.get("ratios")
    if q:
        rows.append(f"\n{q['sizes_mb'][1]} MB vs {q['sizes_mb'][0]} MB: driver RSS {q['driver_peak_rss']}x "
                    f"(goal <= {GOALS['rss_ratio_max']}), tokens/s {q['tokens_per_s']}x "
                    f"(goal >= {GOALS['tokens_per_s_ratio_min']})")
    return "\n".join(rows)


# --------------------------------------------------------------------------- phase: resume


class LocalHead:
    """A Ray head of this script's own (`ray start --head --block` on 127.0.0.1, free ports, its own temp dir,
    token auth), stopped by its process group: never `ray stop`, which would stop every Ray on the machine."""

    def __init__(self, work: Path, num_cpus: int = 2):
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import free_port

        self.port, self.num_cpus = free_port(), num_cpus
        self.temp = Path(tempfile.mkdtemp(prefix="lsr-", dir="/tmp"))  # short: Ray's socket paths have a limit
        self.ports = [f"--{name}={free_port()}" for name in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
            "ray-client-server-port", "node-manager-port", "object-manager-port")]
        self.address = f"127.0.0.1:{self.port}"
        auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
        self.head_env = child_env(**auth)
        self.env = child_env(RAY_ADDRESS=self.address, **auth)  # what a `gemini-ray label` on it runs with
        self.log = work / "head.log"

    def __enter__(self) -> LocalHead:
        ray_bin = Path(sys.executable).parent / "ray"
        self.log_file = open(self.log, "a", encoding="utf-8")
        self.proc = subprocess.Popen(
            [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.port}",
             f"--num-cpus={self.num_cpus}", "--include-dashboard=false", f"--temp-dir={self.temp}",
             "--disable-usage-stats", *self.ports],
            env=self.head_env, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180
        while True:
            try:
                self.counter()
                return self
            except (RuntimeError, subprocess.TimeoutExpired):  # not up yet
                if self.proc.poll() is not None or time.time() > deadline:
                    self.__exit__()
                    raise SystemExit(f"the Ray head did not start; see {self.log}") from None
                time.sleep(2)

    def __exit__(self, *exc) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)  # like Ctrl-C: ray start --block stops what it started
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        subprocess.run(["pkill", "-KILL", "-s", str(self.proc.pid)], check=False)  # what outlived the head
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # a stale record hangs ray.init()
        if current.is_file() and current.read_text().strip().endswith(f":{self.port}"):
            current.unlink()
        shutil.rmtree(self.temp, ignore_errors=True)
        self.log_file.close()

    def counter(self) -> dict:
        """{tokens, counters}: the teacher tokens every counter actor of that name holds, whatever namespace
        each driver gave it (a driver without a namespace gets an anonymous one). Read in a process of its own,
        so this script never joins the cluster itself."""
        done = subprocess.run([sys.executable, "-c", _READ_COUNTER, self.address, COUNTER_NAME], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        return json.loads(done.stdout.strip().splitlines()[-1])


_READ_COUNTER = """
import json, sys
import ray
from ray.util import list_named_actors
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
try:
    from gemini_ray.data.pipeline import COUNTER_NAME as name
except ImportError:
    name = sys.argv[2]
found = [a for a in list_named_actors(all_namespaces=True) if a["name"] == name]
tokens = sum(ray.get(ray.get_actor(a["name"], namespace=a["namespace"]).total.remote()) for a in found)
print(json.dumps({"tokens": int(tokens), "counters": len(found)}))
"""


def example_ids(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["example_id"]).column(0).to_numpy()


def compare_caches(reference: Path, resumed: Path) -> dict:
    """Per shard file (by its path in the cache), the resumed cache's example ids against the reference's:
    rows lost (in the reference's file, not in the resumed one's) and rows duplicated (rows of the resumed
    file beyond those it shares with the reference's: copies and strays)."""
    import numpy as np

    ref = {p.relative_to(reference).as_posix(): p for p in shard_files(reference)}
    new = {p.relative_to(resumed).as_posix(): p for p in shard_files(resumed)}
    empty = np.array([], dtype=np.int64)
    lost = duplicated = rows_ref = rows_new = 0
    differ = []
    for name in sorted(ref.keys() | new.keys()):
        a = example_ids(ref[name]) if name in ref else empty
        b = example_ids(new[name]) if name in new else empty
        shared = np.intersect1d(a, b).size
        lost += np.unique(a).size - shared
        duplicated += b.size - shared
        rows_ref, rows_new = rows_ref + a.size, rows_new + b.size
        if np.unique(a).size != shared or b.size != shared:
            differ.append(name)
    return {"shard_files_reference": len(ref), "shard_files_resumed": len(new), "rows_reference": rows_ref,
            "rows_resumed": rows_new, "rows_lost": int(lost), "rows_duplicated": int(duplicated),
            "shards_differing": len(differ), "first_shards_differing": differ[:10]}


def reference_cache(results: dict, mb: int) -> Path | None:
    """A finished, uninterrupted cache of this corpus size from the scale phase of these results (any variant)."""
    for part in (results.get("scale") or {}).values():
        r = part["sizes"].get(str(mb)) or {}
        if r.get("status") == "finished" and (Path(r["cache"]) / "manifest.json").is_file():
            return Path(r["cache"])
    return None


def any_manifest(results: dict) -> dict | None:
    for part in (results.get("scale") or {}).values():
        for r in part["sizes"].values():
            if r.get("status") == "finished":
                return read_json(Path(r["cache"]) / "manifest.json")
    return None


def resume_phase(mb: int, overrides: list[str], work: Path, pool: list[str], timeout_s: float, kill_at: float,
                 results: dict) -> dict:
    """Kill a `gemini-ray label` on an external head half way, run it again, and check what it lost, duplicated
    and sent to the teacher twice."""
    why = ("the manifest has no teacher_actor_starts: this label is not the streaming, resumable pass of "
           "issue 45, whose resume this phase measures")
    seen = any_manifest(results)
    if seen is not None and "teacher_actor_starts" not in seen:
        return {"skipped": why}
    teacher = tiny_teacher(work / "tiny-teacher", pool)
    corpus, meta = one_file_corpus(work, mb, pool)
    over = [f"data.path={corpus}", "data.format=jsonl", f"teacher.model={teacher}", "label.scope=corpus", *overrides]
    reference, uninterrupted = reference_cache(results, mb), None
    if reference is None:  # no scale run of this size yet: an uninterrupted one first (its own local Ray)
        uninterrupted = measured_run(over, work / "runs" / f"resume-reference-{mb}mb-{int(time.time())}", timeout_s)
        if uninterrupted["status"] != "finished":
            return {"size_mb": mb, "failed": "the uninterrupted run did not finish", "uninterrupted": uninterrupted}
        reference = Path(uninterrupted["cache"])
    ref_manifest = read_json(reference / "manifest.json") or {}
    if "teacher_actor_starts" not in ref_manifest:
        return {"skipped": why, "reference": str(reference)}

    storage = work / "runs" / f"resume-{mb}mb-{int(time.time())}"
    expected = len(shard_files(reference))
    with LocalHead(work) as head:
        before = head.counter()
        first = measured_run(over, storage, timeout_s, env=head.env, kill_at=kill_at, expected_shards=expected,
                             corpus_bytes=meta["bytes"])
        time.sleep(5)  # the killed job's last counts land
        middle = head.counter()
        second = measured_run(over, storage, timeout_s, env=head.env)
        after = head.counter()
    result = {"size_mb": mb, "kill_at": kill_at, "reference": str(reference), "expected_shard_files": expected,
              "counter_before": before, "counter_after_kill": middle, "counter_after_rerun": after,
              "first": first, "second": second, "uninterrupted": uninterrupted}
    if second["status"] != "finished":
        return {**result, "failed": "the rerun did not finish"}
    manifest = read_json(storage / "cache" / "manifest.json") or {}
    resent = after["tokens"] - before["tokens"] - manifest["teacher_tokens"]
    blocks = _count(manifest.get("shards_train")) or len(shard_files(storage / "cache"))
    per_block = manifest["teacher_tokens"] / max(blocks, 1)
    actors = ((manifest.get("config") or {}).get("teacher") or {}).get("num_actors", 1)
    result.update(compare_caches(reference, storage / "cache"),
                  teacher_tokens_first_run=middle["tokens"] - before["tokens"],
                  teacher_tokens_second_run=after["tokens"] - middle["tokens"],
                  cache_teacher_tokens=manifest["teacher_tokens"], tokens_sent_again=resent,
                  tokens_per_block=round(per_block, 1), blocks_sent_again=round(resent / per_block, 2),
                  teacher_actors=actors, teacher_actor_starts=[first.get("teacher_actor_starts"),
                                                               second.get("teacher_actor_starts")])
    result["goals_met"] = (result["rows_lost"] == 0 and result["rows_duplicated"] == 0
                           and result["blocks_sent_again"] <= actors)
    return result


def resume_table(r: dict) -> str:
    if "skipped" in r or "failed" in r:
        return f"\nresume: {'skipped, ' + r['skipped'] if 'skipped' in r else r['failed']}"
    return (f"\nresume, {r['size_mb']} MB, killed at {r['first'].get('got_to', {}).get('shard_files')} of "
            f"{r['expected_shard_files']} shard files:\n| rows lost | rows duplicated | tokens sent again | "
            f"in blocks | teacher actors | rerun wall |\n|---|---|---|---|---|---|\n| {r['rows_lost']} | "
            f"{r['rows_duplicated']} | {r['tokens_sent_again']:,} | {r['blocks_sent_again']} | {r['teacher_actors']} | "
            f"{r['second']['wall_s']:.0f} s |")


# --------------------------------------------------------------------------- phase: loop


def documents(data) -> list[str]:
    """The corpus's documents, read as the pass reads them (an embedded corpus, a text or jsonl file)."""
    from gemini_ray.data.corpus import embedded_corpus, split_lines

    found = embedded_corpus(data.path) if data.path.startswith("embedded:") else Path(data.path)
    if isinstance(found, list):
        return found
    if data.format == "jsonl" or found.suffix in (".jsonl", ".json"):
        return [json.loads(line)[data.text_column] for line in found.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    return split_lines({"bytes": [found.read_bytes()]})["text"].tolist()


def labelled_rows(cfg, cache: Path) -> dict:
    """The rows `gemini-ray label` labelled into `cache` (by example id), made again by SpanPairer from the
    corpus: one dict of column arrays (E rows), in corpus order. Not timed."""
    import numpy as np

    from gemini_ray.data.spans import STATUS_OK, SpanPairer
    from gemini_ray.models.build import teacher_meta

    ids = np.concatenate([example_ids(p) for p in shard_files(cache)])
    meta = teacher_meta(cfg.teacher)
    pairer = SpanPairer(meta.source, meta.kind, cfg.data.span_length, cfg.data.mlm_probability, cfg.data.seed,
                        cfg.teacher.trust_remote_code)
    rows = pairer({"text": np.array(documents(cfg.data), dtype=object)})
    keep = (rows.pop("status") == STATUS_OK) & np.isin(rows["example_id"], ids)
    keep &= np.isin(np.arange(len(keep)), np.unique(rows["example_id"], return_index=True)[1])  # one copy each
    out = {k: v[keep] for k, v in rows.items()}
    if len(out["example_id"]) != np.unique(ids).size:
        raise SystemExit(f"the loop found {len(out['example_id'])} of the cache's {np.unique(ids).size} examples")
    return out


def plain_loop(cfg, rows: dict) -> dict:
    """The rows through TeacherLabeler in this process, in the teacher stage's batches (teacher.batch_size // 2
    examples): seconds in the forwards, and the model load apart. TeacherLabeler sets torch's threads to
    teacher.torch_threads on CPU, as in the actor."""
    import torch

    from gemini_ray.data.teacher_stage import TeacherLabeler

    t0 = time.perf_counter()
    labeler = TeacherLabeler(dataclasses.asdict(cfg.teacher))
    load_s = time.perf_counter() - t0
    per, n, tokens = max(1, cfg.teacher.batch_size // 2), len(rows["example_id"]), 0
    t1 = time.perf_counter()
    for s in range(0, n, per):
        tokens += int(labeler({k: v[s : s + per] for k, v in rows.items()})["teacher_tokens"].sum())
    forward_s = time.perf_counter() - t1
    return {"rows": n, "teacher_tokens": tokens, "model_load_s": round(load_s, 1), "forward_s": round(forward_s, 1),
            "tokens_per_s": round(tokens / forward_s, 1), "torch_threads": torch.get_num_threads(),
            "batch_examples": per}


def loop_phase(rounds: int, overrides: list[str], work: Path, timeout_s: float, record) -> dict:
    """`gemini-ray label` (the defaults and `overrides`) against the plain loop over the same rows, alternated."""
    from gemini_ray.config import build_config

    cfg = build_config(None, overrides)
    part: dict = {"overrides": overrides, "teacher": cfg.teacher.model, "corpus": cfg.data.path,
                  "teacher_num_cpus": cfg.teacher.num_cpus, "torch_threads": cfg.teacher.torch_threads,
                  "tokenization": "excluded from both (label_s starts after the corpus pass)", "rounds": []}
    rows = None
    for i in range(rounds):
        order = ["label", "loop"] if i % 2 == 0 else ["loop", "label"]  # round 0 labels first: its rows
        this: dict = {"order": order}
        for side in order:
            if side == "label":
                storage = work / "runs" / f"loop-{i}-{int(time.time())}"
                run = measured_run(overrides, storage, timeout_s)
                if run["status"] != "finished":
                    raise SystemExit(f"loop round {i}: `gemini-ray label` {run['status']}; see {run['log']}")
                this["label"] = run
                if rows is None:
                    rows = labelled_rows(cfg, Path(run["cache"]))
            else:
                this["loop"] = plain_loop(cfg, rows)
        this["ratio"] = round(this["label"]["tokens_per_s"] / this["loop"]["tokens_per_s"], 3)
        part["rounds"].append(this)
        print(f"loop round {i}: label {this['label']['tokens_per_s']} tokens/s, loop {this['loop']['tokens_per_s']} "
              f"tokens/s", flush=True)
        record(part)
    label_tps = statistics.median(r["label"]["tokens_per_s"] for r in part["rounds"])
    loop_tps = statistics.median(r["loop"]["tokens_per_s"] for r in part["rounds"])
    part.update(label_tokens_per_s=label_tps, loop_tokens_per_s=loop_tps, ratio=round(label_tps / loop_tps, 3),
                median_round_ratio=statistics.median(r["ratio"] for r in part["rounds"]),  # drift-proof
                goal_met=label_tps / loop_tps >= GOALS["loop_ratio_min"])
    record(part)
    return part


def loop_table(part: dict) -> str:
    rows = ["\nloop (embedded teacher, demo corpus):\n| round | label tokens/s | label_s | loop tokens/s | loop "
            "forwards | loop model load | label / loop |\n|---|---|---|---|---|---|---|"]
    for i, r in enumerate(part["rounds"]):
        rows.append(f"| {i} ({' then '.join(r['order'])}) | {r['label']['tokens_per_s']} | "
                    f"{r['label']['wall_time_s'].get('label_s')} s | {r['loop']['tokens_per_s']} | "
                    f"{r['loop']['forward_s']} s | {r['loop']['model_load_s']} s | {r['ratio']} |")
    if "ratio" in part:
        rows.append(f"| median | {part['label_tokens_per_s']} | | {part['loop_tokens_per_s']} | | | {part['ratio']} "
                    f"(of the medians; goal >= {GOALS['loop_ratio_min']}), {part['median_round_ratio']} (per round) |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phases", nargs="+", default=["scale", "resume", "loop"], choices=["scale", "resume", "loop"])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--timeout-min", type=float, default=40.0, help="per `gemini-ray label` run")
    parser.add_argument("--overrides", nargs="*", default=[], help="KEY=VALUE for every `gemini-ray label` run")
    parser.add_argument("--variant", default=None, help="the scale phase's entry (default: the overrides)")
    parser.add_argument("--label", default="new", help="the results' top-level key (today's code: 'today')")
    parser.add_argument("--resume-mb", type=int, default=100)
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of the pass done when it is killed")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the loop phase")
    parser.add_argument("--workdir", default=None, help="corpora, teacher, runs (default: /tmp/gemini-ray-label-scale-"
                        "<label>: a run of other code beside this one keeps to its own)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "label_scale.json"))
    args = parser.parse_args()
    work = Path(args.workdir or f"/tmp/gemini-ray-label-scale-{args.label}")
    out, timeout_s = Path(args.out), args.timeout_min * 60
    work.mkdir(parents=True, exist_ok=True)
    everything: dict = read_json(out) or {}
    results = everything.setdefault(args.label, {})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    results["machine"] = {"commit": commit.stdout.strip(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(everything, indent=1))

    def recorder(*keys: str):
        def record(part: dict) -> None:
            node = results
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = part
            save()
        return record

    pool = sentences() if {"scale", "resume"} & set(args.phases) else []
    tables = []
    if "scale" in args.phases:
        variant = args.variant or (" ".join(args.overrides) or "defaults")
        t0 = time.time()
        part = scale_phase(args.sizes_mb, args.overrides, work, pool, timeout_s, recorder("scale", variant),
                           previous=(results.get("scale") or {}).get(variant))
        part["phase_s"] = round(time.time() - t0)
        recorder("scale", variant)(part)
        tables.append(scale_table(variant, part))
    if "resume" in args.phases:
        t0 = time.time()
        part = resume_phase(args.resume_mb, args.overrides, work, pool, timeout_s, args.kill_at, results)
        part["phase_s"] = round(time.time() - t0)
        recorder("resume")(part)
        tables.append(resume_table(part))
    if "loop" in args.phases:
        t0 = time.time()
        part = loop_phase(args.rounds, args.overrides, work, timeout_s, recorder("loop"))
        part["phase_s"] = round(time.time() - t0)
        recorder("loop")(part)
        tables.append(loop_table(part))
    print("\n".join(tables) + f"\n\nwritten: {out} ({args.label})")


if __name__ == "__main__":
    main()
