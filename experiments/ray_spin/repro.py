"""Ray Data's streaming executor busy-loops while nothing can progress: a slow consumer (a training step)
leaves the executor's output budget full, so the tasks' ready output is not read (output backpressure) and no
task is dispatched, yet every loop step returns at once (`ray.wait` on ready refs) and the loop takes a whole
core until the consumer reads again. Plain Ray; under a minute on 2 CPUs. See README.md.

    python experiments/ray_spin/repro.py                 # CPU of the driver while its consumer sleeps
    python experiments/ray_spin/repro.py --idle-sleep    # with gemini_ray's workaround (a sleep when no task runs)
    python experiments/ray_spin/repro.py --seconds 60    # longer, to attach py-spy (its pid is printed)

The consumer sleeps between batches, so the driver's CPU time over the measured window is the executor's.
Expected: a few per cent of a core. Actual (Ray 2.60.0): 85-89 % of a core, with or without --idle-sleep.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import ray
import ray.data
from ray.data._internal.execution.execution_callback import ExecutionCallback


class IdleSleep(ExecutionCallback):
    """The workaround, for comparison: sleep 10 ms after a loop step that leaves no task running."""

    def on_execution_step(self, executor) -> None:
        topology = executor._topology
        if not any(op.get_active_tasks() for op in topology) and not all(op.has_completed() for op in topology):
            time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the slow consumer is measured")
    parser.add_argument("--step", type=float, default=0.5, help="seconds the consumer sleeps per batch")
    parser.add_argument("--idle-sleep", action="store_true", help="register the IdleSleep callback")
    parser.add_argument("--row-floats", type=int, default=100_000, help="float32 values a row holds: 100000 "
                        "(4 MB blocks) fills the output budget; 100 (4 KB blocks) does not, and the loop ends")
    args = parser.parse_args()

    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    if args.idle_sleep:
        ctx.custom_execution_callback_classes = [IdleSleep]

    # far more rows than the consumer reads in the window: with small blocks every task has finished and
    # its output waits in the executor's queue; with large ones backpressure holds tasks back (see README)
    ds = ray.data.range(4000, override_num_blocks=400).map_batches(
        lambda b: {"x": np.zeros((len(b["id"]), args.row_floats), dtype=np.float32)})
    batches = iter(ds.iter_batches(batch_size=10, prefetch_batches=1))
    next(batches)
    time.sleep(3)  # let the executor fill its budget
    print(f"driver pid {os.getpid()}: Ray {ray.__version__}, "
          f"{'with' if args.idle_sleep else 'without'} the idle sleep", flush=True)

    wall0, cpu0, taken = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - wall0 < args.seconds:
        next(batches)
        taken += 1
        time.sleep(args.step)  # the training step
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"{taken} batches in {wall:.1f} s; driver CPU {cpu:.1f} s = {cpu / wall:.0%} of a core "
          f"(the consumer slept {taken * args.step:.1f} s of it)", flush=True)
    os._exit(0)  # not ray.shutdown() under a live iterator, which logs an unrelated traceback


if __name__ == "__main__":
    main()
