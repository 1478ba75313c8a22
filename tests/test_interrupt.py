"""Ctrl-C: a command ends within seconds with exit status 130 and one line saying what was kept and the
command that resumes; the same command resumes from the last checkpoint.

* the CLI's line (`cli.main`), from the files an interrupted command leaves;
* Ray Train V2's own SIGINT handler (it exits with status 1 and no KeyboardInterrupt) replaced by
  `ray_compat.train`: abort the controller, then raise KeyboardInterrupt; the handler before the fit is put
  back after it;
* end to end: `python -m gemini_ray.cli distill` in a process group of its own gets SIGINT as a terminal sends
  it, then the same command (a smaller train.max_steps) resumes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from gemini_ray import cli
from gemini_ray.ray_compat import train as ray_train_compat

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(run: Path, name: str, step: int) -> None:
    (run / name).mkdir(parents=True)
    (run / name / "state.json").write_text(json.dumps({"step": step}))


def test_the_line_names_the_newest_checkpoint_and_the_command(monkeypatch, tmp_path, capsys):
    run = tmp_path / "runs" / "x"
    _checkpoint(run, "checkpoint_a", 4)
    _checkpoint(run, "checkpoint_b", 8)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # read state.json, as before the heavy imports
    monkeypatch.setattr(cli, "_run", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    argv = ["distill", f"run.storage_path={tmp_path / 'runs'}", "run.name=x", "train.max_steps=9"]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert err == (f"gemini-ray: interrupted; kept: checkpoint at step 8 under {run}. "
                   f"Resume with: {shlex.join(['gemini-ray', *argv])}\n")


def test_the_line_says_when_nothing_was_kept(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "_run", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    argv = ["distill", f"run.storage_path={tmp_path / 'my runs'}", "run.name=new"]
    assert cli.main(argv) == 130
    line = f"gemini-ray distill 'run.storage_path={tmp_path / 'my runs'}' run.name=new"  # quoted for a shell
    assert capsys.readouterr().err == f"gemini-ray: interrupted; kept: nothing was kept. Run it again with: {line}\n"


def test_an_interrupted_label_names_its_blocks(monkeypatch, tmp_path, capsys):
    cache = tmp_path / "signal_cache" / "abc"
    (cache / "blocks").mkdir(parents=True)
    (cache / "manifest.json").write_text(json.dumps({"complete": False}))
    for name in ("00000.json", "00001.json", "00004.json", "00002.counts.json"):  # counts: a block not finished
        (cache / "blocks" / name).write_text("{}")
    monkeypatch.setattr(cli, "_run", lambda args: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main(["label", f"run.storage_path={tmp_path}"]) == 130
    assert f"kept: 3 labelled block(s) of the teacher-signal cache at {cache}. Resume with:" in capsys.readouterr().err


class _Controller:
    """A stand-in for Ray Train's controller actor handle: `abort.remote()` is recorded."""

    def __init__(self) -> None:
        self.aborted = 0
        self.abort = types.SimpleNamespace(remote=self._abort)

    def _abort(self) -> str:
        self.aborted += 1
        return "ref"


def _fake_trainer_module(seen: list) -> types.ModuleType:
    """A module shaped like ray.train.v2.api.data_parallel_trainer (Ray 2.60) for the patch to wrap."""

    class DataParallelTrainer:
        def _initialize_and_run_controller(self, **kwargs):
            controller = _Controller()
            self._register_sigint_handler(controller)
            seen.append((signal.getsignal(signal.SIGINT), controller))
            if kwargs.get("interrupt"):
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # as if Ctrl-C came while the fit waits
            return "result"

        def _register_sigint_handler(self, controller):
            raise AssertionError("Ray's own handler must be replaced")

    module = types.ModuleType("fake_data_parallel_trainer")
    module.DataParallelTrainer = DataParallelTrainer
    return module


def test_ctrl_c_in_a_fit_aborts_the_controller_then_raises_keyboard_interrupt(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: None)
    seen: list = []
    module = _fake_trainer_module(seen)
    ray_train_compat.patch_sigint(module)
    ray_train_compat.patch_sigint(module)  # twice: wrapped once
    trainer = module.DataParallelTrainer()
    before = signal.getsignal(signal.SIGINT)
    assert trainer._initialize_and_run_controller() == "result"
    assert signal.getsignal(signal.SIGINT) is before  # put back after the fit
    with pytest.raises(KeyboardInterrupt):
        trainer._initialize_and_run_controller(interrupt=True)
    assert signal.getsignal(signal.SIGINT) is before  # and after an interrupted one
    assert [c.aborted for _, c in seen] == [0, 1]
    assert seen[0][0] is not before
    assert module.DataParallelTrainer._initialize_and_run_controller.__wrapped__.__name__ == (
        "_initialize_and_run_controller")


def test_another_ray_release_keeps_rays_handler(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "__version__", "9.1.0")
    module = _fake_trainer_module([])
    original = module.DataParallelTrainer._initialize_and_run_controller
    ray_train_compat.patch_sigint(module)
    assert module.DataParallelTrainer._initialize_and_run_controller is original


def test_the_installed_ray_train_gets_the_patch():
    code = ("import ray.train.torch; from gemini_ray.ray_compat import train as t; t.patch_sigint(); "
            "print(t.sigint_patched())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "True"


# --------------------------------------------------------------------------- end to end


def _tiny(teacher: Path, corpus: Path, storage: Path, *extra: str) -> list[str]:
    return [f"teacher.model={teacher}", "teacher.top_k=8", "teacher.batch_size=8", f"data.path={corpus}",
            "data.text_column=body", "data.span_length=16", "data.seq_length=32", "student.num_layers=2", "loss.num_negatives=3",
            "mining.window=16", "train.batch_size=4", "train.log_every=1", "train.eval_every=1000",
            "train.checkpoint_every=2", "train.warmup_steps=1", f"run.storage_path={storage}", "run.name=ctrlc",
            *extra]


def _env() -> dict[str, str]:
    """This environment without RAY_ADDRESS: the command starts a Ray instance of its own."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _whole_checkpoint(run: Path) -> bool:
    from gemini_ray.models.checkpoint import whole_checkpoint_steps

    return bool(run.is_dir() and whole_checkpoint_steps(run))


@pytest.mark.long
def test_ctrl_c_during_distill_exits_130_with_one_line_and_the_same_command_resumes(llama_dir, corpus_file,
                                                                                     tmp_path):
    storage, run = tmp_path / "runs", tmp_path / "runs" / "ctrlc"
    command = [sys.executable, "-m", "gemini_ray.cli", "distill", *_tiny(llama_dir, corpus_file, storage)]
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        driver = subprocess.Popen([*command, "train.max_steps=100000"], cwd=ROOT, env=_env(), stdout=stdout,
                                  stderr=stderr, start_new_session=True)
        try:
            deadline = time.monotonic() + 420
            while not _whole_checkpoint(run):
                assert driver.poll() is None, f"distill ended early:\n{err.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"no checkpoint in 420 s:\n{err.read_text()[-3000:]}"
                time.sleep(0.5)
            sent = time.monotonic()
            os.killpg(driver.pid, signal.SIGINT)  # as a terminal does: the whole foreground process group
            rc = driver.wait(timeout=60)
            took = time.monotonic() - sent
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait()
    said, logged = err.read_text(), out.read_text()
    lines = [line for line in said.splitlines() if line.startswith("gemini-ray:")]
    assert rc == 130 and len(lines) == 1, said[-3000:]
    expected = re.escape(shlex.join([*command, "train.max_steps=100000"]))
    found = re.fullmatch(rf"gemini-ray: interrupted; kept: checkpoint at step (\d+) under {re.escape(str(run))}\. "
                         rf"Resume with: {expected}", lines[0])
    assert found, lines[0]
    assert "Traceback" not in said + logged and "Gracefully aborting" not in said, said[-3000:]
    assert took < 30, f"{took:.1f} s from SIGINT to exit"
    kept = int(found.group(1))

    # the same command again (a run may stop earlier than it meant to go): it resumes from that checkpoint
    done = subprocess.run([*command, f"train.max_steps={kept + 2}"], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from checkpoint at step {kept} " in done.stdout + done.stderr, done.stdout[-3000:]
    assert json.loads((run / "summary.json").read_text())["training"]["steps"] == kept + 2
