"""Can this process write where the config says? Checked by trying, before any work starts.

`os.access` answers from permission bits, which root ignores and a read-only mount or a full quota
overrides, so the only honest test is to create a file and delete it again:

    check_writable("runs", "run.storage_path")     # GeminiRayError naming the key and the fix, or None

Nothing is left behind: a directory that does not exist yet is not created (the run creates it); the
probe goes into its nearest existing ancestor instead, which is where the run's mkdir would write.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gemini_ray.errors import GeminiRayError

__all__ = ["check_writable"]


def _nearest_existing(path: Path) -> Path:
    """`path` itself or the closest ancestor that exists (as anything: file, directory, link)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def check_writable(path: str, key: str) -> None:
    """Raise GeminiRayError unless a file can be created in `path` (or, when it does not exist yet, in
    the directory that would hold it). URIs (s3://, gs://, ...) are not checked here: their store says.

    Args:
        path: the configured local directory, e.g. cfg.run.storage_path.
        key: its dotted config key, named in the message, e.g. 'run.storage_path'.
    """
    if "://" in path:
        return
    target = Path(path).expanduser().absolute()
    fix = f"Set {key} to a directory you can write to (e.g. {key}=runs) or fix its permissions."
    base = _nearest_existing(target)
    if not base.is_dir():
        raise GeminiRayError(
            f"{key} '{path}' is not writable: '{base}' is a file, not a directory. {fix}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gemini-ray-write-probe-", suffix=".tmp", dir=base)
    except OSError as exc:
        where = "it" if base == target else f"'{base}' (where it would be created)"
        raise GeminiRayError(
            f"{key} '{path}' is not writable: a file cannot be created in {where}: {exc.strerror or exc}. {fix}"
        ) from None
    os.close(fd)
    os.unlink(probe)
