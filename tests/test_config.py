"""Config: defaults validate, shipped YAMLs load, bad keys and values are refused with the key named."""

from pathlib import Path

import pytest

from gemini_ray.cli import main
from gemini_ray.config import Config, all_keys, config_from_dict, config_to_dict, load_config
from gemini_ray.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def test_defaults_are_the_demo():
    cfg = Config()
    assert cfg.teacher.model.startswith("embedded:") and cfg.data.path.startswith("embedded:")
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_yaml_loads(path):
    assert isinstance(load_config(path), Config)


def test_demo_yaml_equals_defaults():
    assert load_config(ROOT / "configs" / "demo.yaml") == Config()


def test_overrides_apply_with_types():
    cfg = load_config(None, ["loss.lambda_kd=0.7", "train.max_steps=200", "student.hidden_size=null",
                             "teacher.trust_remote_code=false", "loss.cl_temperature=1"])
    assert cfg.loss.lambda_kd == 0.7 and cfg.train.max_steps == 200 and cfg.student.hidden_size is None
    assert isinstance(cfg.loss.cl_temperature, float)


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
    ("train.batch_size=0", "train.batch_size"),
    ("train.max_steps=ten", "train.max_steps"),
    ("loss.kd_form=softmax", "loss.kd_form"),
    ("run.name=a/b", "run.name"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'loss.lambda_kd'"):
        load_config(None, ["loss.lamda_kd=0.5"])
    with pytest.raises(ConfigError, match="unknown config section 'trian'.*'train'"):
        config_from_dict({"trian": {"max_steps": 3}})


def test_malformed_and_missing_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


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
