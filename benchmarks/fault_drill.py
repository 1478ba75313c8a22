"""Fault drill on the embedded default (real teacher, real corpus): kill the driver, a teacher actor and a
Ray Train worker with SIGKILL during one distillation, and report what it cost (README, Reliability).

    python benchmarks/fault_drill.py                 # ~7 min on 2 cores; writes runs/fault-drill.json

1. `gemini-ray distill` runs in a subprocess joined to this script's Ray; it is killed a few steps after
   its second checkpoint.
2. The same command runs again (here, in-process): it resumes; a teacher actor is killed as soon as the
   resumed run's pool is up, and a Train worker a few steps after the next checkpoint.
3. The summary says where each resume started, the steps done twice and the seconds each resume took.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from faults import Killer, alive_pids, wait_for  # noqa: E402


def main() -> None:
    import ray

    from gemini_ray.cli import main as cli

    steps, every, name = 40, 10, "fault-drill"
    run = ROOT / "runs" / name
    args = [f"train.max_steps={steps}", f"train.checkpoint_every={every}", "train.log_every=1",
            "run.storage_path=runs", f"run.name={name}", "label.use=never"]  # the teacher runs online
    if run.exists():
        raise SystemExit(f"{run} exists: remove it to run the drill from the start")
    ray.init(num_cpus=2, address="local")
    progress = lambda: json.loads((run / "progress.json").read_text()) if (run / "progress.json").exists() else None  # noqa: E731
    t0 = time.time()
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "gemini_ray.cli", "distill", *args], cwd=ROOT, env=env,
                              start_new_session=True)
    first = wait_for(lambda: (p := progress()) and p["step"] >= 2 * every + 3 and p, timeout=1800, every=0.02)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    killed_at, t_kill = progress()["step"], time.time()
    wait_for(lambda: not alive_pids("CountingTeacherLabeler") and not alive_pids("RayTrainWorker"), 120, 0.2)

    def ready(n: int) -> bool:
        if n == 0:
            return True
        p = progress()
        return bool(p) and p["fit_id"] != first["fit_id"] and p["step"] >= (killed_at // every + 1) * every + 3

    killer = Killer(ready, ["CountingTeacherLabeler", "RayTrainWorker"])
    killer.start()
    t_resume = time.time()
    assert cli(["distill", *args]) == 0
    killer.join(timeout=5)
    summary = json.loads((run / "summary.json").read_text())
    t = summary["training"]
    result = {
        "faults_injected": [k[0] for k in killer.killed] + ["driver (gemini-ray distill)"],
        "killer_errors": killer.errors,
        "driver_killed_at_step": killed_at,
        "resumes": t["resumes"],
        "steps": t["steps"], "examples": t["examples"], "examples_expected": steps * 8,
        "steps_repeated": t["steps_repeated"],
        "first_run_s_until_kill": round(t_kill - t0, 1),
        "second_run_s": round(time.time() - t_resume, 1),
        "kd_first_last": [t["first"]["loss/kd"], t["last"]["loss/kd"]],
    }
    (ROOT / "runs" / "fault-drill.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
