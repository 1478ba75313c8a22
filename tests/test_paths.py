"""gemini_ray.paths: one answer to 'is this a URI?', and atomic writes that work on paths and URIs alike
(file:// URIs go through pyarrow's filesystem layer, as s3:// and gs:// do)."""

from __future__ import annotations

import json

import pytest

from gemini_ray.paths import (absolute, atomic_dir, atomic_path, atomic_write_json, is_remote, is_uri, join,
                              local_path, read_json, run_dir)


def test_uris_and_paths():
    assert is_uri("s3://b/x") and is_uri("file:///tmp/x") and not is_uri("runs") and not is_uri("/tmp/x")
    assert is_remote("gs://b/x") and not is_remote("file:///tmp/x") and not is_remote("runs")
    assert local_path("file:///tmp/x") == "/tmp/x" and local_path("s3://b/x") == "s3://b/x"
    assert absolute("s3://b/x") == "s3://b/x" and absolute("runs").startswith("/")
    assert join("s3://b/x/", "y", "z.json") == "s3://b/x/y/z.json"
    assert run_dir("gs://b/runs", "demo") == "gs://b/runs/demo"


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_atomic_writes_land_whole_and_leave_no_temporary(tmp_path, as_uri):
    base = f"file://{tmp_path}" if as_uri else str(tmp_path)
    atomic_write_json(join(base, "a", "x.json"), {"k": 1})
    assert read_json(join(base, "a", "x.json")) == {"k": 1}
    assert read_json(join(base, "missing.json")) is None
    with atomic_path(join(base, "a", "y.bin")) as tmp:
        tmp.write_bytes(b"123")
    assert (tmp_path / "a" / "y.bin").read_bytes() == b"123"
    with pytest.raises(RuntimeError), atomic_path(join(base, "a", "z.bin")) as tmp:  # an error: target untouched
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert not (tmp_path / "a" / "z.bin").exists()
    with atomic_dir(join(base, "d")) as tmp:
        (tmp / "f.txt").write_text("v1")
    with atomic_dir(join(base, "d")) as tmp:  # replaces the old directory whole
        (tmp / "g.txt").write_text("v2")
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert names == (["f.txt", "g.txt"] if as_uri else ["g.txt"])  # an object store: uploaded over what is there
    assert sorted(p.name for p in tmp_path.rglob("*") if p.name.startswith(".")) == []  # no temporary left
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"k": 1}
