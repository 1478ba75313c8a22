"""A run directory records the config it started with; a resume that would train something else is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gemini_ray.config import Config, all_keys, build_config, config_to_dict
from gemini_ray.errors import GeminiRayError
from gemini_ray.models.checkpoint import save_checkpoint
from gemini_ray.training.run_record import MAY_CHANGE, RECORD, check_resume, differences, record_start


def _checkpoint(run: Path, step: int = 4) -> None:
    """A whole checkpoint in `run`, as a Train worker leaves it (the model's kind does not matter here)."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    save_checkpoint(run / f"checkpoint_{step:06d}", model, optimizer, {"step": step})


def _cfg(tmp_path: Path, *overrides: str) -> Config:
    return build_config(None, [f"run.storage_path={tmp_path}", "run.name=r", *overrides])


def test_a_new_run_records_its_config_and_a_start_that_never_checkpointed_is_replaced(tmp_path):
    first = _cfg(tmp_path, "loss.lambda_kd=0.3")
    record_start(first, str(tmp_path / "r"))
    assert json.loads((tmp_path / "r" / RECORD).read_text()) == json.loads(json.dumps(config_to_dict(first)))
    second = _cfg(tmp_path, "loss.lambda_kd=0.7")  # the first start failed before its first checkpoint
    record_start(second, str(tmp_path / "r"))
    assert json.loads((tmp_path / "r" / RECORD).read_text())["loss"]["lambda_kd"] == 0.7


def test_a_resume_may_go_further_elsewhere_and_report_differently(tmp_path):
    record_start(_cfg(tmp_path), str(tmp_path / "r"))
    _checkpoint(tmp_path / "r")
    record = (tmp_path / "r" / RECORD).read_text()
    later = _cfg(tmp_path, "train.max_steps=200", "train.num_workers=2", "train.eval_every=7", "label.use=require",
                 "teacher.num_actors=2", "data.max_val_examples=16", "tune.num_samples=9", "eval.rt_test=50")
    check_resume(later, str(tmp_path / "r"))
    record_start(later, str(tmp_path / "r"))
    assert (tmp_path / "r" / RECORD).read_text() == record  # the record stays the run's start


def test_a_resume_that_changes_what_is_trained_is_refused_naming_each_key(tmp_path):
    record_start(_cfg(tmp_path), str(tmp_path / "r"))
    _checkpoint(tmp_path / "r")
    changed = _cfg(tmp_path, "loss.lambda_kd=0.9", "train.lr=1e-3", "train.max_steps=200")
    record_start(changed, str(tmp_path / "r"))  # a run with checkpoints keeps the record of its start
    with pytest.raises(GeminiRayError) as err:
        check_resume(changed, str(tmp_path / "r"))
    message = str(err.value)
    assert "loss.lambda_kd: 0.5 then, 0.9 now" in message and "train.lr: 0.0003 then, 0.001 now" in message
    assert "max_steps" not in message  # may change
    assert "run.name=r-2" in message and str(tmp_path / "r" / RECORD) in message
    assert message.count(" then, ") == 2


def test_a_run_from_before_records_is_checked_against_its_summary_or_resumed_unchecked(tmp_path, capsys):
    run = tmp_path / "r"
    _checkpoint(run)
    check_resume(_cfg(tmp_path, "loss.rep_weight=0"), str(run))  # no record, no summary: nothing to compare
    assert "resuming unchecked" in capsys.readouterr().out
    (run / "summary.json").write_text(json.dumps({"config": config_to_dict(_cfg(tmp_path))}))
    with pytest.raises(GeminiRayError, match=r"loss.rep_weight: 10.0 then, 0.0 now.*summary.json"):
        check_resume(_cfg(tmp_path, "loss.rep_weight=0"), str(run))
    assert not (run / RECORD).exists()  # the check writes nothing


def test_a_key_added_since_the_run_started_counts_only_when_set_off_its_default():
    recorded = json.loads(json.dumps(config_to_dict(Config())))
    del recorded["loss"]["rep_form"]  # a record written before the key existed
    assert differences(recorded, config_to_dict(Config())) == []
    other = build_config(None, ["loss.rep_form=cosine"])
    assert differences(recorded, config_to_dict(other)) == [("loss.rep_form", "similarity", "cosine")]


def test_the_keys_that_may_change_are_real_keys_or_sections():
    keys = set(all_keys())
    sections = {key.split(".")[0] for key in keys}
    assert all(entry in keys or entry in sections for entry in MAY_CHANGE)


def test_ablate_refuses_a_finished_row_of_another_config_before_starting_anything(tmp_path):
    """A rerun of `gemini-ray ablate` with another λ would otherwise report the old kd+cl row as the new one."""
    from gemini_ray.commands.ablate import _variant_configs, ablate

    old = _cfg(tmp_path, "run.name=abl")
    row = _variant_configs(old)["kd+cl"]
    record_start(row, str(tmp_path / row.run.name))
    _checkpoint(tmp_path / row.run.name)
    with pytest.raises(GeminiRayError, match=r"run 'abl-kd-cl'.*loss.lambda_kd: 0.5 then, 0.6 now"):
        ablate(_cfg(tmp_path, "run.name=abl", "loss.lambda_kd=0.6"))
