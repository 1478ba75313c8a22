"""Config: defaults validate, shipped YAMLs load, bad keys and values are refused with the key named."""

import json
from pathlib import Path

import pytest

from gemini_ray.cli import main
from gemini_ray.config import Config, all_keys, config_from_dict, config_to_dict, build_config, read_yaml
from gemini_ray.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def test_defaults_are_the_demo():
    cfg = Config()
    assert cfg.teacher.model.startswith("embedded:") and cfg.data.path.startswith("embedded:")
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_yaml_loads(path):
    """Loads, and every key the file sets holds its value in the config (none dropped or renamed on the way)."""
    loaded = config_to_dict(build_config(path))
    written = read_yaml(path)
    assert written and {s: {k: loaded[s][k] for k in keys} for s, keys in written.items()} == written


def test_demo_yaml_equals_defaults():
    assert build_config(ROOT / "configs" / "demo.yaml") == Config()


def test_overrides_apply_with_types():
    cfg = build_config(None, ["loss.lambda_kd=0.7", "train.max_steps=200", "student.hidden_size=null",
                             "teacher.trust_remote_code=false", "loss.cl_temperature=1"])
    assert cfg.loss.lambda_kd == 0.7 and cfg.train.max_steps == 200 and cfg.student.hidden_size is None
    assert isinstance(cfg.loss.cl_temperature, float)


def test_the_language_model_floor_is_a_loss_in_nats_inside_the_composite_objective():
    assert build_config(None, ["tune.max_val_loss_kd=7.9"]).tune.max_val_loss_kd == 7.9
    assert build_config(None, []).tune.max_val_loss_kd is None
    with pytest.raises(ConfigError, match="tune.metric is val/loss_kd.*tune.metric=val/objective"):
        build_config(None, ["tune.max_val_loss_kd=7.9", "tune.metric=val/loss_kd"])
    by_step = build_config(None, ["tune.max_val_loss_kd_by_step={20: 8.5, 40: 7.4, 60: 6.94}"]).tune
    assert [by_step.floor_at(s) for s in (0, 19, 20, 39, 40, 60, 80)] == [None, None, 8.5, 8.5, 7.4, 6.94, 6.94]
    assert by_step.max_val_loss_kd_by_step == {20: 8.5, 40: 7.4, 60: 6.94}
    assert build_config(None, [], base=json.loads(json.dumps(config_to_dict(build_config(
        None, ["tune.max_val_loss_kd_by_step={20: 8.5}"]))))).tune.max_val_loss_kd_by_step == {20: 8.5}  # round trip
    both = build_config(None, ["tune.max_val_loss_kd=9", "tune.max_val_loss_kd_by_step={40: 7.4}"]).tune
    assert [both.floor_at(s) for s in (20, 40)] == [9.0, 7.4]
    assert build_config(None, ["tune.max_val_loss_kd=7.9"]).tune.floor_at(5) == 7.9
    with pytest.raises(ConfigError, match="tune.max_val_loss_kd_by_step.*got 20: -1"):
        build_config(None, ["tune.max_val_loss_kd_by_step={20: -1}"])
    with pytest.raises(ConfigError, match="tune.metric is val/loss_kd"):
        build_config(None, ["tune.max_val_loss_kd_by_step={20: 8}", "tune.metric=val/loss_kd"])
    assert build_config(None, []).tune.objective_embedding == "retrieval"
    assert build_config(None, ["tune.objective_embedding=teacher_agreement"]).tune.objective_embedding == \
        "teacher_agreement"


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().loss.lambda_kd = 0.3  # type: ignore[misc]


@pytest.mark.parametrize("override, key", [
    ("loss.lambda_kd=1.5", "loss.lambda_kd"),
    ("loss.lambda_kd=-0.1", "loss.lambda_kd"),
    ("loss.cl_temperature=0", "loss.cl_temperature"),
    ("loss.kd_temperature=-1", "loss.kd_temperature"),
    ("loss.num_negatives=0", "loss.num_negatives"),
    ("teacher.top_k=0", "teacher.top_k"),
    ("train.lr=0", "train.lr"),
    ("train.layer_lr_decay=0", "train.layer_lr_decay"),
    ("train.layer_lr_decay=1.5", "train.layer_lr_decay"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.max_steps=ten", "train.max_steps"),
    ("loss.kd_form=softmax", "loss.kd_form"),
    ("run.name=a/b", "run.name"),
    ("tune.max_val_loss_kd=0", "tune.max_val_loss_kd"),
    ("tune.objective_embedding=lee", "tune.objective_embedding"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config(None, [override])


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'loss.lambda_kd'"):
        build_config(None, ["loss.lamda_kd=0.5"])
    with pytest.raises(ConfigError, match="unknown config section 'trian'.*'train'"):
        config_from_dict({"trian": {"max_steps": 3}})


def test_malformed_and_missing_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(tmp_path / "nope.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(scalar)


def test_all_keys_are_dotted():
    keys = all_keys()
    assert "loss.lambda_kd" in keys and "loss.cl_temperature" in keys and "loss.num_negatives" in keys
    assert all(k.count(".") == 1 for k in keys)


def test_cli_reports_bad_input_without_traceback(capsys):
    assert main(["distill", "loss.lambda_kd=2"]) == 2
    err = capsys.readouterr().err
    assert "loss.lambda_kd" in err and "Traceback" not in err


def test_cli_prints_effective_config(capsys):
    assert main(["config", "loss.lambda_kd=0.25"]) == 0
    assert "lambda_kd: 0.25" in capsys.readouterr().out


def test_build_config_layers_apply_in_order(tmp_path):
    """defaults <- base <- file <- fixed <- overrides <- sample: each layer wins over the ones before it,
    and values that arrive as values (base, fixed, sample) are never re-parsed from text."""
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  lambda_kd: 0.2\n  cl_temperature: 0.2\ntrain:\n  max_steps: 7\n")
    base = {"loss": {"lambda_kd": 0.1, "num_negatives": 2}, "run": {"name": "from-base"}}
    cfg = build_config(path, ["loss.cl_temperature=0.3", "train.max_steps=9"], base=base,
                       fixed={"train.max_steps": 8, "train.lr": 1e-3}, sample={"train.max_steps": 10})
    assert cfg.run.name == "from-base" and cfg.loss.num_negatives == 2  # base over defaults
    assert cfg.loss.lambda_kd == 0.2  # file over base
    assert cfg.train.lr == 1e-3  # fixed over defaults
    assert cfg.loss.cl_temperature == 0.3  # overrides over file
    assert cfg.train.max_steps == 10  # sample over overrides over fixed over file
    assert build_config(base=cfg) == cfg  # a Config as base round-trips
    assert build_config(sample={"run.name": "007"}).run.name == "007"  # a value, not YAML's int 7
    with pytest.raises(ConfigError, match="unknown config key 'loss.lamda_kd'"):
        build_config(sample={"loss.lamda_kd": 0.5})
    with pytest.raises(ConfigError, match="fixed in the search space"):
        build_config(fixed={"trian.max_steps": 5})
