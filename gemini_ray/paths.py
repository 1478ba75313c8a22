"""Paths and URIs: the one module that knows whether a location is a local path or an object store.

Every file gemini_ray writes goes through here, under a temporary name that is renamed (moved) into place
when complete, so a kill at any moment leaves either the old file or the new one, never half of one:

    atomic_write_json("runs/demo/summary.json", summary)          # local path
    atomic_write_json("s3://bucket/runs/demo/summary.json", summary)  # object store, same call
    with atomic_path("runs/tune/search.png") as tmp:              # for writers that want a file name
        fig.savefig(tmp)

A location is a local path (`runs`, `~/x`, `/abs`) or a URI (`scheme://...`). `file://` URIs are URIs to
pyarrow and Ray (read and written through their filesystem layer) but name this machine's disk, so
`is_remote` is False for them: placement checks treat them like local paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow.fs as pafs

from gemini_ray.errors import GeminiRayError

__all__ = ["is_uri", "is_remote", "absolute", "local_path", "join", "run_dir", "open_dir", "read_json", "atomic_path",
           "atomic_dir", "atomic_write_text", "atomic_write_bytes", "atomic_write_json", "upload", "sha256_file",
           "check_writable", "remove_tree", "package_file", "OUTPUT_MARKER", "mark_output", "make_output_dir",
           "is_our_output", "check_output_dir"]


def is_uri(location: str | Path) -> bool:
    """`scheme://...` (s3://, gs://, file://, ...): read and written through pyarrow's filesystems."""
    return "://" in str(location)


def is_remote(location: str | Path) -> bool:
    """A URI that does not name this machine's disk (every URI but file://)."""
    return is_uri(location) and not str(location).startswith("file://")


def absolute(location: str | Path) -> str:
    """URIs unchanged; local paths with ~ expanded, made absolute (Ray Train needs absolute storage paths)."""
    if is_uri(location):
        return str(location)
    return os.path.abspath(os.path.expanduser(str(location)))


def local_path(location: str | Path) -> str:
    """The absolute local path of a local location or a file:// URI (other URIs are returned unchanged)."""
    text = str(location)
    if not is_uri(text) or text.startswith("file://"):
        return os.path.abspath(os.path.expanduser(text.removeprefix("file://")))
    return text


def join(location: str | Path, *names: str) -> str:
    """`location/name/...` for paths and URIs alike."""
    return "/".join([str(location).rstrip("/"), *names])


def run_dir(storage_path: str, name: str) -> str:
    """<storage_path>/<name>, absolute for local paths."""
    return join(absolute(storage_path), name)


def open_dir(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local directory or a URI."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), absolute(location)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _parent_and_name(location: str | Path) -> tuple[str, str]:
    parent, _, name = str(location).rstrip("/").rpartition("/")
    return parent or ".", name


def read_json(location: str | Path) -> Any:
    """A JSON file's value (path or URI), or None when it is missing or unreadable."""
    fs, path = open_dir(location)
    try:
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None


@contextlib.contextmanager
def atomic_path(location: str | Path) -> Iterator[Path]:
    """Yield a local temporary file name; when the block ends without error, the file becomes `location`.

    Local: the temporary file lies beside the target (same filesystem) and is renamed over it. URI: it is
    written locally, uploaded under a temporary name beside the target, then moved into place. On error
    the temporary file is removed and the target is untouched."""
    if not is_uri(location):
        location = os.path.expanduser(str(location))
    parent, name = _parent_and_name(location)
    if not is_uri(location):
        Path(parent).mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give it the mode a plain open() would
        try:
            yield Path(tmp)
            os.replace(tmp, location)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
    with tempfile.TemporaryDirectory(prefix="gemini-ray-") as local:
        tmp = Path(local) / name
        yield tmp
        fs, path = open_dir(location)
        fs.create_dir(_parent_and_name(path)[0], recursive=True)
        staged = join(_parent_and_name(path)[0], f".{name}.{uuid.uuid4().hex}.tmp")
        with fs.open_output_stream(staged) as out, open(tmp, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        fs.move(staged, path)


def atomic_write_bytes(location: str | Path, data: bytes) -> None:
    """Write bytes to a path or URI under a temporary name, then rename (move) it into place."""
    with atomic_path(location) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(location: str | Path, text: str) -> None:
    """atomic_write_bytes for UTF-8 text."""
    atomic_write_bytes(location, text.encode("utf-8"))


def atomic_write_json(location: str | Path, value: Any, default: Any = None) -> None:
    """atomic_write_text of `value` as indented JSON (`default`: json.dumps' fallback for other types)."""
    atomic_write_text(location, json.dumps(value, indent=1, default=default))


def upload(local: str | Path, location: str) -> None:
    """Copy a local file or directory to a URI (recursively for a directory)."""
    pafs.copy_files(str(local), location)


def remove_tree(path: str | Path) -> None:
    """Delete a local directory and everything in it (nothing when it is missing)."""
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(location: str | Path, replace: bool = True,
               replace_if: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary local directory; when the block ends without error it becomes `location`.

    Local: made beside the target and renamed into place; an existing target is replaced (replace=True) or
    kept, the new one discarded (replace=False: another process finished the same work first). replace_if:
    asked at the moment of replacing; False raises GeminiRayError and leaves the target as it is. URI: the
    directory is uploaded file by file over what is there (an object store has no directories to rename;
    each object appears whole)."""
    if is_uri(location):
        with tempfile.TemporaryDirectory(prefix="gemini-ray-") as local:
            yield Path(local)
            fs, path = open_dir(location)
            fs.create_dir(path, recursive=True)
            upload(local, str(location))
        return
    target = Path(location).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: give it the mode a plain mkdir would
    try:
        yield tmp
        if not target.exists():
            try:
                os.replace(tmp, target)
            except OSError:  # another process put a non-empty directory there in the meantime
                if replace or not target.is_dir():
                    raise
        elif replace:
            if replace_if is not None and not replace_if(target):
                raise GeminiRayError(f"'{target}' changed while the command ran: it now holds files gemini_ray "
                                     f"did not write, and is left as it is. Move them away and run again.")
            old = target.with_name(f".{target.name}.old")
            remove_tree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            remove_tree(old)
    finally:
        remove_tree(tmp)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a local file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_file(module: str, relative: str, needed_for: str, package: str, install: str) -> Path:
    """A file or folder shipped inside an installed package (the embedded teacher, corpora, evaluation sets),
    found without importing the package. GeminiRayError naming the install command when it is missing.

    Args:
        module: the import name, e.g. 'gensim'; relative: the path inside it, e.g. 'test/test_data'.
        needed_for: what needs it, e.g. 'the embedded corpus'; package: its pip name; install: the command.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise GeminiRayError(f"{needed_for} needs the '{package}' package files, which are not installed. "
                             f"Install them with: {install}")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.exists():
        raise GeminiRayError(f"'{path}' is missing from the {package} package. Reinstall it with: {install}")
    return path


# --------------------------------------------------------------------------- can we write there?


def _nearest_existing(path: Path) -> Path:
    """`path` itself or the closest ancestor that exists (as anything: file, directory, link)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def check_writable(location: str, key: str) -> None:
    """Raise GeminiRayError unless a file can be created in `location` (or, when it does not exist yet, in
    the directory that would hold it). URIs are not checked here: their store says.

    `os.access` answers from permission bits, which root ignores and a read-only mount or a full quota
    overrides, so the only honest test is to create a file and delete it again. Nothing is left behind:
    a directory that does not exist yet is not created (the run creates it).

    Args:
        location: the configured local directory, e.g. cfg.run.storage_path.
        key: its dotted config key, named in the message, e.g. 'run.storage_path'.
    """
    if is_uri(location):
        return
    target = Path(location).expanduser().absolute()
    fix = f"Set {key} to a directory you can write to (e.g. {key}=runs) or fix its permissions."
    base = _nearest_existing(target)
    if not base.is_dir():
        raise GeminiRayError(
            f"{key} '{location}' is not writable: '{base}' is a file, not a directory. {fix}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gemini-ray-write-probe-", suffix=".tmp", dir=base)
    except OSError as exc:
        where = "it" if base == target else f"'{base}' (where it would be created)"
        raise GeminiRayError(
            f"{key} '{location}' is not writable: a file cannot be created in {where}: {exc.strerror or exc}. {fix}"
        ) from None
    os.close(fd)
    os.unlink(probe)


# --------------------------------------------------------------------------- folders we may replace

OUTPUT_MARKER = ".gemini-ray-output.json"
"""The file gemini_ray writes into every folder it exports or reports into (a student, an eval report, an
ablation or a curve): a later command may replace such a folder, and no other."""

_LEGACY_MARKER = "gemini_ray.json"
"""What marked an exported student before OUTPUT_MARKER existed (its teacher, kind and data settings)."""
_LEGACY_REPORTS = ({"report.json", "report.md"}, {"curve.json", "curve.md", "curve.png", "students"},
                   {"ablation.json", "ablation.md", "ablation.png"})
"""What an eval, curve or ablation folder written before OUTPUT_MARKER existed held: a folder of only these
names is one of ours."""


def _marker_text(what: str) -> str:
    import datetime

    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return json.dumps({"written_by": "gemini_ray", "what": what, "at": stamp}) + "\n"


def mark_output(directory: str | Path, what: str) -> None:
    """Write OUTPUT_MARKER into a local folder gemini_ray is writing (what: e.g. 'student export')."""
    (Path(directory) / OUTPUT_MARKER).write_text(_marker_text(what), encoding="utf-8")


def make_output_dir(location: str | Path, what: str) -> None:
    """Create an output folder (path or URI) and mark it as ours (OUTPUT_MARKER), after `check_output_dir`
    allowed it: a later command may then replace what this one writes there."""
    if not is_uri(location):
        try:
            Path(location).expanduser().mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GeminiRayError(f"cannot create the output folder '{location}': {exc.strerror or exc}. Choose "
                                 "another folder you can write to.") from None
    atomic_write_text(join(str(location), OUTPUT_MARKER), _marker_text(what))


def _entries(location: str | Path) -> list[str] | None:
    """The names in a folder (path or URI); None when nothing is there, ['<file>'] for a file."""
    fs, path = open_dir(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type != pafs.FileType.Directory:
        return ["<file>"]
    return [i.base_name for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))]


def is_our_output(location: str | Path) -> bool:
    """True when a folder holds OUTPUT_MARKER (or an export of ours from before the marker existed)."""
    names = _entries(location)
    if not names or names == ["<file>"]:
        return False
    if OUTPUT_MARKER in names or any(set(names) <= report for report in _LEGACY_REPORTS):
        return True
    legacy = read_json(join(str(location), _LEGACY_MARKER)) if _LEGACY_MARKER in names else None
    return isinstance(legacy, dict) and {"teacher", "kind"} <= set(legacy)


def check_output_dir(location: str | Path, key: str, replace_ours: bool, override: str | None = None) -> None:
    """Refuse an output folder a command would delete or overwrite files of. Writes nothing.

    Allowed: a folder that does not exist yet, an empty one, and, when `replace_ours`, a folder gemini_ray
    wrote before (OUTPUT_MARKER). A file in its place, or a folder of anything else, is refused always: no
    setting makes gemini_ray replace a folder it did not write.

    Args:
        location: the output folder (path or URI).
        key: what the user set, named in the message: 'run.output_dir', '--out'.
        replace_ours: an earlier output of ours may be replaced (run.overwrite_output=true, or a default
            location inside the run's own folder).
        override: the setting that allows replacing one of ours, named in the fix (None: there is none).
    """
    names = _entries(location)
    if names is None or not names:
        return
    if names == ["<file>"]:
        raise GeminiRayError(f"{key} '{location}' is a file, not a folder: the command would write a folder "
                             f"there. Choose another {key}, or move the file away.")
    if is_our_output(location):
        if replace_ours:
            return
        how = f" or set {override}=true to replace that earlier output" if override else ""
        raise GeminiRayError(f"{key} '{location}' already holds an earlier output of gemini_ray. Choose another "
                             f"{key}{how}.")
    shown = ", ".join(sorted(names)[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")
    raise GeminiRayError(f"{key} '{location}' is a folder that holds files gemini_ray did not write ({shown}); "
                         f"they would be replaced. Choose an empty or new folder for {key}: gemini_ray never "
                         "replaces a folder it did not write.")
