"""TensorBoard event files (read back with tensorboard's own reader) and loss.png."""

from __future__ import annotations

import pytest

from gemini_ray.training.watch import EventLog, loss_chart
from helpers import read_scalars


def test_the_event_log_holds_every_logged_number_under_its_summary_name(tmp_path):
    log = EventLog(str(tmp_path / "tensorboard"))
    log.add({"step": 5, "loss/kd": 9.5, "val/loss_kd": 10.0, "examples_per_s": 0.5, "restarts": 0,
             "note": "text", "flag": True, "val/retrieval_mrr": float("nan")}, 5)
    log.add({"step": 10, "loss/kd": 8.0, "examples_per_s": 0.6, "restarts": 0}, 10)
    log.close()
    scalars = read_scalars(tmp_path / "tensorboard")
    assert set(scalars) == {"loss/kd", "val/loss_kd", "examples_per_s", "restarts"}  # numbers only, NaN left out
    assert scalars["loss/kd"] == [(5, 9.5), (10, 8.0)]
    EventLog(None).add({"loss/kd": 1.0}, 1)  # off: nothing happens


def test_the_loss_chart_is_written_from_a_history_and_not_from_an_empty_one(tmp_path):
    history = [{"step": s, "loss/kd": 10 - s / 10, "loss/cl": 2 - s / 100, "val/step": s, "val/loss_kd": 11 - s / 10,
                "val/loss_cl": 1.5} for s in (5, 10, 15, 20)]
    assert loss_chart(history, str(tmp_path / "loss.png"))
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not loss_chart([], str(tmp_path / "none.png")) and not (tmp_path / "none.png").exists()


def test_events_for_a_uri_are_uploaded_at_each_flush(tmp_path):
    pytest.importorskip("pyarrow.fs")
    target = f"file://{tmp_path}/remote/tensorboard"
    log = EventLog(target)
    log.add({"loss/kd": 3.0}, 1)
    log.flush()
    assert read_scalars(tmp_path / "remote" / "tensorboard")["loss/kd"] == [(1, 3.0)]
    log.close()


def test_progress_in_a_log_is_one_plain_line_per_update_with_an_eta():
    import io

    from gemini_ray.training.watch import Progress

    log = io.StringIO()  # not a terminal, as in a `ray job submit` log
    progress = Progress(4, "labelling", "shard", stream=log)
    progress.update(1, "shards [0] done")
    progress.update(3)
    progress.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert lines[0].startswith("[gemini-ray] labelling:  25%") and "1/4 [" in lines[0] and "<" in lines[0]  # elapsed<ETA
    assert lines[0].endswith("shards [0] done") and "4/4" in lines[1]
