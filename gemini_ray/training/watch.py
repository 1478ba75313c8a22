"""Where people watch a run: TensorBoard event files written live by rank 0, and loss.png at the end.

Tags are the metric names of summary.json's history (loss/kd, val/loss_kd, examples_per_s, ...), so what
TensorBoard plots and what the summary records are the same numbers. No Ray here.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from typing import Any

from gemini_ray.metric_names import LOSS_CL, LOSS_KD, VAL_LOSS_CL, VAL_LOSS_KD, VAL_STEP
from gemini_ray.paths import atomic_path, is_uri, open_dir, upload

__all__ = ["EventLog", "loss_chart", "Progress"]


class EventLog:
    """TensorBoard scalars under `location` (a directory or URI; None: off), written as they come: the
    reports are minutes apart, so tensorboardX's synchronous events writer (not SummaryWriter, whose
    background queue a flush does not drain) costs nothing. A URI is written to a local directory first
    and uploaded at every flush (an events file is appended to, not rewritten)."""

    def __init__(self, location: str | None) -> None:
        self.location, self.writer = location, None
        if location is None:
            return
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.record_writer import directory_check

        self.local = location
        if is_uri(location):
            self.local = tempfile.mkdtemp(prefix="gemini-ray-events-")
            fs, path = open_dir(location)
            fs.create_dir(path, recursive=True)  # object stores need none; file:// and mounted paths do
        directory_check(self.local)
        self.writer = EventsWriter(os.path.join(self.local, "events"))

    def add(self, metrics: dict[str, Any], step: int) -> None:
        """Every finite number in `metrics` as a scalar at `step` (the step counter itself excluded)."""
        if self.writer is None:
            return
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.write_event(Event(wall_time=time.time(), step=step, summary=scalar(key, float(value))))

    def flush(self) -> None:
        if self.writer is None:
            return
        self.writer.flush()
        if is_uri(self.location):
            upload(self.local, self.location)

    def close(self) -> None:
        if self.writer is None:
            return
        self.flush()
        self.writer.close()
        if is_uri(self.location):
            shutil.rmtree(self.local, ignore_errors=True)
        self.writer = None


def loss_chart(history: list[dict[str, Any]], location: str) -> bool:
    """loss.png: the distillation and contrastive losses per logged step, training (window means) and held
    out (at each evaluation). False (nothing written) for a history without a logged step."""
    if not history:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, train_key, val_key, title in ((axes[0], LOSS_KD, VAL_LOSS_KD, "distillation loss (KD)"),
                                          (axes[1], LOSS_CL, VAL_LOSS_CL, "contrastive loss (InfoNCE)")):
        logged = [h for h in history if train_key in h]
        ax.plot([h["step"] for h in logged], [h[train_key] for h in logged], marker=".", label="training (window mean)")
        held = {h[VAL_STEP]: h[val_key] for h in history if val_key in h and VAL_STEP in h}
        if held:
            ax.plot(sorted(held), [held[s] for s in sorted(held)], marker="o", label="held out")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(location) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True


class Progress:
    """Progress with an ETA from tqdm: a live bar on a terminal; in a log (`ray job submit`, a file) one
    plain line per update with tqdm's meter, since a bar redrawn with carriage returns is unreadable there."""

    def __init__(self, total: int, desc: str, unit: str, stream: Any = None, scaled: bool = False) -> None:
        """scaled: counts shown with SI prefixes (bytes: 12.3MB)."""
        import sys

        from tqdm import tqdm

        self.stream = stream or sys.stdout
        self.total, self.desc, self.unit, self.n, self.scaled = total, desc, unit, 0, scaled
        self.started = time.perf_counter()
        live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, unit_scale=scaled) if live else None

    def update(self, n: int = 1, note: str = "") -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            if note:
                self.bar.set_postfix_str(note)
            return
        from tqdm import tqdm

        meter = tqdm.format_meter(self.n, self.total, time.perf_counter() - self.started, prefix=self.desc,
                                  unit=self.unit, ascii=True, ncols=100, unit_scale=self.scaled)
        print(f"[gemini-ray] {meter}" + (f" {note}" if note else ""), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
