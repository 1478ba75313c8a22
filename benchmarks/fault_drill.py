"""Fault drill: a careless user and a hostile machine, through the real command line (docs/reliability.md).

    python benchmarks/fault_drill.py                 # ~15 min on 2 cores; writes runs/fault-drill.json

Every case runs `python -m gemini_ray.cli ...` in a subprocess, as a user would, with a tiny random Llama
teacher (tests/helpers.py: the drill is about what the tool does with files, processes and bad input, not about
the teacher) on the first 40 real articles of the Lee corpus. For each case the drill records:

* handled: the exit code is the one promised (0, 2 for a refusal, 130 for Ctrl-C) and nothing below went
  wrong;
* files_lost: files of the user's (planted beside or inside the paths given) deleted or changed;
* stuck: a run that the same command (or the resume it names) cannot finish afterwards;
* tracebacks: any 'Traceback' printed by any command of the case.

A refusal must also write nothing: the storage folder is compared before and after each refused command.
The cases are those of issue 42: output folders, damaged checkpoints, one command per run folder, Ctrl-C,
SIGKILL, a second Ray instance, environment errors and ambiguous configuration.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
ENV = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


class Drill:
    """The work folder, the tiny teacher and corpus, and the results of the cases run so far."""

    def __init__(self, work: Path) -> None:
        from helpers import save, tiny_llama, word_tokenizer

        from gemini_ray.data.corpus import gensim_test_data

        self.work = work
        lines = (gensim_test_data() / "lee_background.cor").read_text(encoding="utf-8").splitlines()
        self.texts = [line for line in lines if line.strip()][:40]
        self.corpus = work / "corpus.jsonl"
        self.corpus.write_text("".join(json.dumps({"body": t}) + "\n" for t in self.texts), encoding="utf-8")
        tok = word_tokenizer(self.texts, masked=False)
        self.teacher = save(tiny_llama(tok), tok, work / "teacher")
        self.results: list[dict] = []
        self.only: str | None = None

    def args(self, storage: Path | str, name: str = "run", steps: int = 10, *extra: str) -> list[str]:
        """The tiny settings, `extra` overrides replacing them (a key given twice is refused)."""
        base = [f"teacher.model={self.teacher}", "teacher.top_k=8", "teacher.batch_size=8",
                f"teacher.cache_dir={self.work / 'teacher-cache'}", f"data.path={self.corpus}",
                "data.text_column=body", "data.span_length=16", "student.num_layers=2", "loss.num_negatives=3",
                "mining.window=16", "train.batch_size=4", "train.log_every=1", "train.eval_every=5",
                "train.checkpoint_every=5", "train.warmup_steps=1", f"train.max_steps={steps}",
                f"run.storage_path={storage}", f"run.name={name}"]
        given = {e.split("=", 1)[0] for e in extra}
        return [b for b in base if b.split("=", 1)[0] not in given] + list(extra)

    def gemini(self, *argv: str, timeout: float = 900) -> tuple[int, str]:
        """Run `gemini-ray ARGV` as a user would; (exit code, stdout + stderr)."""
        done = subprocess.run([sys.executable, "-m", "gemini_ray.cli", *argv], cwd=self.work, env=ENV,
                              capture_output=True, text=True, timeout=timeout)
        return done.returncode, done.stdout + done.stderr

    def case(self, name: str, body: Callable[[], dict]) -> None:
        if self.only and self.only not in name:
            return
        t0 = time.time()
        try:
            found = body()
        except Exception as exc:  # noqa: BLE001  a case that breaks the drill counts as unhandled
            found = {"handled": False, "error": f"{type(exc).__name__}: {exc}"}
        found = {"case": name, "files_lost": 0, "stuck": False, "tracebacks": 0, **found,
                 "seconds": round(time.time() - t0, 1)}
        found["handled"] = bool(found.get("handled", True)) and found["files_lost"] == 0 and not found["stuck"] \
            and found["tracebacks"] == 0
        self.results.append(found)
        print(f"[drill] {'ok  ' if found['handled'] else 'FAIL'} {name} ({found['seconds']} s)"
              + (f": {found.get('said', '')[:200]}" if found.get("said") else ""), flush=True)


def _tree(folder: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file under a folder (the user's files, to count what was lost)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _lost(before: dict[str, str], folder: Path) -> int:
    after = _tree(folder)
    return sum(1 for path, digest in before.items() if after.get(path) != digest)


def _said(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("gemini-ray:")]
    return errors[-1] if errors else ""


def _refusal(drill: Drill, argv: list[str], user: Path | None, storage: Path, problem: str) -> dict:
    """A command that must be refused: exit 2, one paragraph naming `problem`, the user's files intact,
    nothing new under the storage folder."""
    before_user, before_storage = _tree(user) if user else {}, set(storage.rglob("*")) if storage.exists() else set()
    code, out = drill.gemini(*argv)
    written = [str(p) for p in (set(storage.rglob("*")) if storage.exists() else set()) - before_storage]
    return {"exit": code, "said": _said(out), "tracebacks": out.count("Traceback"),
            "files_lost": _lost(before_user, user) if user else 0, "written_by_refusal": written,
            "handled": code == 2 and problem in _said(out) and not written}


def _users_folder(drill: Drill, name: str) -> Path:
    folder = drill.work / name
    (folder / "bert").mkdir(parents=True)
    (folder / "bert" / "config.json").write_text("{}")
    (folder / "thesis.pdf").write_bytes(os.urandom(4096))
    return folder


def _newest_checkpoint(run: Path) -> Path:
    steps = {json.loads((d / "state.json").read_text())["step"]: d for d in run.glob("checkpoint_*") if d.is_dir()}
    return steps[max(steps)]


def _damage(kind: str, checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    if kind == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif kind == "same-size":
        with open(weights, "r+b") as f:
            f.seek(weights.stat().st_size - (1 << 16))
            f.write(os.urandom(1 << 15))
    else:
        (checkpoint / "optimizer.safetensors").unlink()


def _progress_step(run: Path) -> int:
    try:
        return json.loads((run / "progress.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


def _start(drill: Drill, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gemini_ray.cli", *argv], cwd=drill.work, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_step(run: Path, proc: subprocess.Popen, step: int, timeout: float = 900) -> None:
    end = time.time() + timeout
    while _progress_step(run) < step:
        if proc.poll() is not None or time.time() > end:
            raise RuntimeError(f"the run ended or stalled before step {step}")
        time.sleep(0.2)


def cases(drill: Drill) -> None:
    w = drill.work
    runs = w / "runs"

    # --- output folders: a user's files are never replaced -------------------------------------------------
    for name, extra in (("output_dir holding the user's files", []),
                        ("output_dir holding the user's files, run.overwrite_output=true",
                         ["run.overwrite_output=true"])):
        def body(extra=extra, name=name) -> dict:
            user = _users_folder(drill, f"models-{len(drill.results)}")
            return _refusal(drill, ["distill", *drill.args(runs), f"run.output_dir={user}", *extra], user, runs,
                            "holds files gemini_ray did not write")
        drill.case(name, body)

    def output_is_file() -> dict:
        target = w / "student.bin"
        target.write_bytes(os.urandom(1024))
        found = _refusal(drill, ["distill", *drill.args(runs), f"run.output_dir={target}"], None, runs, "is a file")
        return {**found, "files_lost": int(not target.is_file())}
    drill.case("output_dir that is a file", output_is_file)

    def eval_out() -> dict:
        user = _users_folder(drill, "reports")
        return _refusal(drill, ["eval", str(drill.teacher), "--no-teacher", "--out", str(user)], user, runs,
                        "holds files gemini_ray did not write")
    drill.case("eval --out holding the user's files", eval_out)

    def export_twice() -> dict:
        export = w / "export"
        code, out = drill.gemini("distill", *drill.args(runs, "base"), f"run.output_dir={export}")
        first = _tree(export)
        code2, out2 = drill.gemini("distill", *drill.args(runs, "base2", 5), f"run.output_dir={export}")
        code3, out3 = drill.gemini("distill", *drill.args(runs, "base2", 5), f"run.output_dir={export}",
                                   "run.overwrite_output=true")
        return {"exit": [code, code2, code3], "said": _said(out2), "tracebacks": (out + out2 + out3).count("Traceback"),
                "handled": code == 0 and code2 == 2 and code3 == 0 and first and _tree(export) != first}
    drill.case("an earlier export replaced only with run.overwrite_output=true", export_twice)

    # --- damaged checkpoints: never stuck --------------------------------------------------------------------
    for kind in ("truncated", "same-size", "missing"):
        def body(kind=kind) -> dict:
            import shutil

            storage = w / f"damaged-{kind}"
            shutil.copytree(runs, storage, ignore=shutil.ignore_patterns("base2", "signal_cache"))
            _damage(kind, _newest_checkpoint(storage / "base"))
            code, out = drill.gemini("distill", *drill.args(storage, "base", 15))
            summary = json.loads((storage / "base" / "summary.json").read_text()) if code == 0 else {}
            code2, out2 = drill.gemini("distill", *drill.args(storage, "base", 15))  # and again: not stuck
            resumed = summary.get("training", {}).get("resumed_from_steps")
            return {"exit": [code, code2], "said": next((l for l in out.splitlines() if "is damaged" in l), ""),
                    "resumed_from_steps": resumed, "tracebacks": (out + out2).count("Traceback"),
                    "stuck": code != 0 or code2 != 0, "handled": resumed == [5] and "step 10 is lost" in out}
        drill.case(f"newest checkpoint damaged: {kind}", body)

    # --- one command per run folder --------------------------------------------------------------------------
    drill.case("run.name=..", lambda: _refusal(drill, ["distill", *drill.args(runs, "..")], None, runs,
                                              "config key 'run.name'"))

    def two_at_once() -> dict:
        first = _start(drill, ["distill", *drill.args(runs, "twice", 15)])
        _wait_step(runs / "twice", first, 1)
        t0 = time.time()
        code, out = drill.gemini("distill", *drill.args(runs, "twice", 15))
        refused_s = time.time() - t0
        out1 = first.communicate(timeout=900)[0]
        return {"exit": [first.returncode, code], "said": _said(out), "refused_after_s": round(refused_s, 1),
                "tracebacks": (out + out1).count("Traceback"),
                "handled": first.returncode == 0 and code == 2 and "in use by another gemini-ray command" in out}
    drill.case("two distill commands on one run folder", two_at_once)

    def killed_then_rerun() -> dict:
        proc = _start(drill, ["distill", *drill.args(runs, "killed", 15)])
        _wait_step(runs / "killed", proc, 7)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code, out = drill.gemini("distill", *drill.args(runs, "killed", 15))
        return {"exit": code, "said": next((l for l in out.splitlines() if "took over" in l), ""),
                "tracebacks": out.count("Traceback"), "stuck": code != 0, "handled": "took over" in out}
    drill.case("SIGKILL, then the same command (a stale lock)", killed_then_rerun)

    def ctrl_c() -> dict:
        proc = _start(drill, ["distill", *drill.args(runs, "ctrlc", 15)])
        _wait_step(runs / "ctrlc", proc, 7)
        t0 = time.time()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
        out = proc.communicate(timeout=120)[0]
        took = time.time() - t0
        code, out2 = drill.gemini("distill", *drill.args(runs, "ctrlc", 15))
        return {"exit": [proc.returncode, code], "said": _said(out), "exit_after_s": round(took, 1),
                "tracebacks": (out + out2).count("Traceback"), "stuck": code != 0,
                "handled": proc.returncode == 130 and took < 30 and "resuming from checkpoint at step 5" in out2}
    drill.case("Ctrl-C during distill, then the same command", ctrl_c)

    def second_instance() -> dict:
        # another driver's instance on the machine, as a `gemini-ray tune` running beside would hold
        code = ("import time, ray; ray.init(address='local', num_cpus=1, include_dashboard=False); "
                "print('up', flush=True); time.sleep(3600)")
        other = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            assert other.stdout.readline().strip() == "up", "the other Ray instance did not start"
            code, out = drill.gemini("distill", *drill.args(runs, "beside", 5))
        finally:
            os.killpg(other.pid, signal.SIGINT)  # its ray.shutdown stops the instance it started
            try:
                other.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(other.pid, signal.SIGKILL)
        bad = out.count("Traceback") + out.count("Found multiple active Ray instances")
        return {"exit": code, "tracebacks": bad, "handled": code == 0}
    drill.case("a second Ray instance on the machine", second_instance)

    def label_beside_distill() -> dict:
        labeller = _start(drill, ["label", *drill.args(w / "beside-label", "l")])
        code, out = drill.gemini("distill", *drill.args(runs, "beside-label", 5))
        out1 = labeller.communicate(timeout=900)[0]
        bad = (out + out1).count("Traceback") + (out + out1).count("Found multiple active Ray instances")
        return {"exit": [labeller.returncode, code], "tracebacks": bad,
                "handled": labeller.returncode == 0 and code == 0}
    drill.case("label and distill at once, each with its own Ray", label_beside_distill)

    # --- environment errors: one paragraph, exit 2 -----------------------------------------------------------
    def cache_unwritable() -> dict:
        # the embedded GGUF teacher: teacher.cache_dir is where its conversion is kept (a directory teacher needs none)
        return _refusal(drill, ["distill", *drill.args(runs, "x", 10, "teacher.model=embedded:smollm2-135m-instruct",
                                                       "teacher.cache_dir=/proc/gemini-ray-cache")],
                        None, runs, "teacher.cache_dir '/proc/gemini-ray-cache' is not writable")
    drill.case("teacher.cache_dir not writable", cache_unwritable)

    def cut_gz() -> dict:
        data = gzip.compress(drill.corpus.read_bytes())
        cut = w / "cut.jsonl.gz"
        cut.write_bytes(data[: len(data) // 2])
        return _refusal(drill, ["distill", *drill.args(runs, "x", 10, f"data.path={cut}")], None, runs,
                        f"data.path file '{cut}' is cut short")
    drill.case("a gzip corpus cut short", cut_gz)

    def eval_short_positions() -> dict:
        from helpers import save, word_tokenizer
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = word_tokenizer(drill.texts, masked=False)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
        model = save(LlamaForCausalLM(cfg), tok, w / "short-model")
        return _refusal(drill, ["eval", str(model), "--no-teacher", "--out", str(w / "short-eval")], None, runs,
                        "eval.lm_window")
    drill.case("eval of a model whose positions end before eval.lm_window", eval_short_positions)

    def damaged_shard() -> dict:
        storage = w / "cache-runs"
        code, out = drill.gemini("label", *drill.args(storage, "c"))
        shards = sorted(storage.rglob("*.parquet"))
        data = shards[0].read_bytes()
        shards[0].write_bytes(data[: len(data) // 2])
        found = _refusal(drill, ["distill", *drill.args(storage, "c"), "label.use=require"], None, storage,
                         shards[0].name)
        return {**found, "tracebacks": found["tracebacks"] + out.count("Traceback"), "handled": code == 0
                and found["handled"]}
    drill.case("a cache shard damaged", damaged_shard)

    # --- configuration that says two things ------------------------------------------------------------------
    def duplicate_yaml() -> dict:
        cfg = w / "dup.yaml"
        cfg.write_text("loss:\n  lambda_kd: 0.3\n  lambda_kd: 0.9\n")
        return _refusal(drill, ["distill", "--config", str(cfg), *drill.args(runs, "x")], None, runs,
                        "sets 'loss.lambda_kd' twice")
    drill.case("a YAML file with a repeated key", duplicate_yaml)
    drill.case("an override given twice", lambda: _refusal(
        drill, ["distill", *drill.args(runs, "x"), "loss.lambda_kd=0.3", "loss.lambda_kd=0.9"], None, runs,
        "'loss.lambda_kd' is given twice"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="work folder (default: a new one under runs/)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "fault-drill.json"))
    parser.add_argument("--only", default=None, help="run only the cases whose name contains this text")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="fault-drill-", dir=ROOT / "runs" if (ROOT / "runs").is_dir()
                                              else None))
    work.mkdir(parents=True, exist_ok=True)
    drill = Drill(work)
    drill.only = args.only
    t0 = time.time()
    cases(drill)
    totals = {"cases": len(drill.results), "cases_handled": sum(r["handled"] for r in drill.results),
              "files_lost": sum(r["files_lost"] for r in drill.results),
              "runs_stuck": sum(bool(r["stuck"]) for r in drill.results),
              "tracebacks_shown": sum(r["tracebacks"] for r in drill.results),
              "refusals_that_wrote": sum(bool(r.get("written_by_refusal")) for r in drill.results),
              "minutes": round((time.time() - t0) / 60, 1)}
    from gemini_ray.paths import atomic_write_json

    atomic_write_json(args.out, {"totals": totals, "cases": drill.results})
    print(json.dumps(totals, indent=1))
    print(f"[drill] {args.out}")


if __name__ == "__main__":
    main()
