"""Fault injection helpers: find live Ray actors by class and SIGKILL their processes."""

from __future__ import annotations

import os
import signal
import threading
import time


def wait_for(predicate, timeout: float, every: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("the condition was not met in time")


def alive_pids(class_contains: str) -> list[int]:
    """PIDs of live actors whose class name holds `class_contains` (Ray Data names a pool's actor class
    'MapWorker(MapBatches(CountingTeacherLabeler))')."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")])
    return [a.pid for a in actors if class_contains in a.class_name and a.pid]


class Killer(threading.Thread):
    """SIGKILLs one live actor of each target class, in order, each when `ready(kills so far)` says so."""

    def __init__(self, ready, targets: list[str]):
        super().__init__(daemon=True)
        self.ready, self.targets, self.killed, self.errors = ready, list(targets), [], []

    def run(self):
        try:
            for target in self.targets:
                wait_for(lambda: self.ready(len(self.killed)), timeout=240, every=0.01)
                # generous: a resumed distill's teacher pool comes up ~60-70 s after the command starts here
                # (Ray Train's start dominates); the run itself bounds the wait anyway
                pid = wait_for(lambda: alive_pids(target), timeout=180, every=0.05)[0]
                os.kill(pid, signal.SIGKILL)
                self.killed.append((target, pid, time.time()))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))
