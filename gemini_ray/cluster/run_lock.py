"""One command per run folder: a lock that names its holder. No Ray here.

    with hold_run_folder(run_dir(cfg.run.storage_path, cfg.run.name)):
        ...  # check, train, export: no other gemini-ray command writes this folder meanwhile

Two commands on one run folder (the same run.name and run.storage_path) would train into the same
checkpoints, each deleting the other's, and each write the summary and the student. The second one is
refused at once, naming the first (host, pid, command, start time).

* A local folder (or NFS): `<run folder>/.gemini-ray.lock`, held with flock(2) for the command's life. The
  kernel releases it when the process ends, however it ends (SIGKILL included), so a killed run never
  leaves a lock that blocks the next one: the next command takes it over and says whose it was.
* An object store (s3://, gs://): no lock exists there, so a lease: `<run folder>/.gemini-ray.lease.json`
  with the holder and an expiry LEASE_S ahead, renewed every LEASE_S / 4 by a thread. A lease that expired
  (its holder died) is taken over; a fresh one is refused. Taking a lease is write-then-read-back, which
  closes the window to the store's write latency, not to zero: a store without conditional writes can do
  no better.

A folder the lock had to create is removed again, with any parents it created, when the command ends
with an error while the folder is still empty: a refused command leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from gemini_ray.errors import GeminiRayError
from gemini_ray.paths import atomic_write_json, is_remote, join, local_path, open_dir, read_json

__all__ = ["LOCK_FILE", "LEASE_FILE", "LEASE_S", "hold_run_folder", "holder_text"]

LOCK_FILE = ".gemini-ray.lock"
LEASE_FILE = ".gemini-ray.lease.json"
LEASE_S = 120.0
"""How long an object-store lease lasts without renewal (renewed every LEASE_S / 4)."""


def _me(token: str) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": token,
            "command": shlex.join(["gemini-ray", *sys.argv[1:]]) if sys.argv else "?",
            "started": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S%z")}


def holder_text(holder: dict[str, Any]) -> str:
    """'pid 123 on host h since 2026-12-07 01:30:00+0000: gemini-ray distill ...'."""
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {holder.get('started', '?')}"
            f": {holder.get('command', '?')}")


def _busy(folder: str, holder: dict[str, Any] | None) -> GeminiRayError:
    who = holder_text(holder) if holder else "a process that has not said who it is yet"
    return GeminiRayError(f"the run folder '{folder}' is in use by another gemini-ray command ({who}). Wait for it "
                          "to finish or stop it, or give this command another run.name (or run.storage_path).")


def _made_dirs(folder: Path) -> list[Path]:
    """The folder and those of its parents that do not exist yet, deepest first (they are about to be made)."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    return missing


@contextlib.contextmanager
def _local_lock(folder: Path, token: str) -> Iterator[None]:
    created = _made_dirs(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = -1
    try:
        while True:  # the file may be unlinked by its holder between our open and our flock: then open again
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = _read_fd(fd)
                os.close(fd)
                fd = -1  # not ours: neither unlinked nor closed again on the way out
                raise _busy(str(folder), holder) from None
            if path.exists() and os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
            os.close(fd)
        earlier = _read_fd(fd)
        if earlier:
            print(f"[gemini-ray] took over the run folder's lock from a command that is no longer running "
                  f"({holder_text(earlier)})", flush=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me(token)).encode("utf-8"), 0)
        yield
    except BaseException:
        _release_local(fd, path)
        fd = -1
        for directory in created:  # a refused command leaves no folder behind
            try:
                directory.rmdir()
            except OSError:
                break
        raise
    finally:
        if fd >= 0:
            _release_local(fd, path)


def _read_fd(fd: int) -> dict[str, Any] | None:
    try:
        value = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _release_local(fd: int, path: Path) -> None:
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        if path.exists() and os.fstat(fd).st_ino == os.stat(path).st_ino:
            path.unlink()  # unlinked while still held: a waiter that opened it retries on the new file
    os.close(fd)


@contextlib.contextmanager
def _lease(folder: str, token: str) -> Iterator[None]:
    location = join(folder, LEASE_FILE)
    held = read_json(location)
    if isinstance(held, dict) and held.get("token") != token and float(held.get("expires", 0)) > time.time():
        raise _busy(folder, held)
    if isinstance(held, dict):
        print(f"[gemini-ray] took over the run folder's lease, which expired ({holder_text(held)})", flush=True)
    mine = _me(token)

    def write() -> None:
        atomic_write_json(location, {**mine, "expires": time.time() + LEASE_S})

    write()
    time.sleep(min(2.0, LEASE_S / 60))  # another taker's write lands in this window: read back who won
    won = read_json(location)
    if not isinstance(won, dict) or won.get("token") != token:
        raise _busy(folder, won if isinstance(won, dict) else None)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_S / 4):
            with contextlib.suppress(Exception):  # a missed renewal is retried; the lease has slack for three
                write()

    thread = threading.Thread(target=renew, name="gemini-ray-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(Exception):
            current = read_json(location)
            if isinstance(current, dict) and current.get("token") == token:
                fs, path = open_dir(location)
                fs.delete_file(path)


@contextlib.contextmanager
def hold_run_folder(folder: str) -> Iterator[None]:
    """Hold `folder` (a local path or a URI) for this command: GeminiRayError naming the holder when another
    live gemini-ray command holds it; a holder that died is taken over with a line saying whose it was."""
    token = uuid.uuid4().hex
    if is_remote(folder):
        with _lease(folder, token):
            yield
        return
    with _local_lock(Path(local_path(folder)), token):
        yield
