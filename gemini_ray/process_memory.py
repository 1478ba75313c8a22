"""This process's peak resident memory: what `summary.json` and the evaluation report record for the driver
(it must stay flat in the teacher's size: the teacher's weights live in its actors) and for each evaluated
model's own process."""

from __future__ import annotations

from pathlib import Path

__all__ = ["peak_rss_mib"]


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
    from the parent through fork + exec, so a child of a large process would report the parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best available (kB on Linux/BSD)
