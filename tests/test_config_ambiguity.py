"""Ambiguous input is refused or made unambiguous, never resolved by a silent guess: a key repeated in a YAML
file, an override or option given twice on the command line, a run.name that is not one folder, and a corpus
directory whose files are reached twice through links. Pure: no Ray, no model.

    .venv/bin/python -m pytest tests/test_config_ambiguity.py -q
"""

import os
from pathlib import Path

import pytest

from gemini_ray.cli import main
from gemini_ray.config import Config, build_config, load_yaml_unique, read_yaml
from gemini_ray.data.corpus import _files, unique_files
from gemini_ray.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _yaml(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- repeated YAML keys


def test_a_section_given_twice_in_a_file_is_refused_naming_file_key_and_lines(tmp_path):
    path = _yaml(tmp_path, "loss:\n  lambda_kd: 0.3\ntrain:\n  max_steps: 3\nloss:\n  cl_temperature: 0.1\n")
    with pytest.raises(ConfigError) as info:
        build_config(path)
    message = str(info.value)
    assert f"config file '{path}'" in message and "'loss' twice, at lines 1 and 5" in message
    assert "Merge the two 'loss:' sections into one" in message


def test_a_key_given_twice_inside_a_section_is_refused(tmp_path):
    path = _yaml(tmp_path, "train:\n  max_steps: 3\nloss:\n  lambda_kd: 0.3\n  lambda_kd: 0.5\n")
    with pytest.raises(ConfigError, match=r"sets 'loss\.lambda_kd' twice, at lines 4 and 5.*Keep one of them"):
        read_yaml(path)


def test_a_search_space_with_a_repeated_key_is_refused(tmp_path):
    from gemini_ray.jobs.search import load_space

    path = _yaml(tmp_path, "loss.lambda_kd: {uniform: [0.2, 0.8]}\nloss.lambda_kd: {uniform: [0.1, 0.9]}\n")
    with pytest.raises(ConfigError, match=r"'loss\.lambda_kd' twice, at lines 1 and 2"):
        load_space(path)


def test_unique_keys_and_yaml_merges_still_load(tmp_path):
    assert load_yaml_unique("a: &base {p: 1, q: 2}\nb:\n  <<: *base\n  p: 3\n", "test") == \
        {"a": {"p": 1, "q": 2}, "b": {"p": 3, "q": 2}}  # a merge's keys may be overridden: YAML's own rule
    assert load_yaml_unique("", "test") is None
    with pytest.raises(ConfigError, match=r"test sets 'a\[0\]\.p' twice"):
        load_yaml_unique("a: [{p: 1, p: 2}]", "test")
    for path in sorted([*(ROOT / "configs").glob("*.yaml"), *(ROOT / "tune_spaces").glob("*.yaml"),
                         *(ROOT / "experiments" / "tune_spaces").glob("*.yaml")]):
        assert read_yaml(path), f"{path} sets no key"  # read whole: no key repeated, a mapping of keys


def test_an_override_value_with_a_repeated_key_is_refused():
    with pytest.raises(ConfigError, match=r"override 'teacher\.resources=\{gpu_a: 1, gpu_a: 2\}' sets 'gpu_a' twice"):
        build_config(None, ["teacher.resources={gpu_a: 1, gpu_a: 2}"])


# --------------------------------------------------------------------------- the command line


def test_an_override_given_twice_is_refused_naming_key_and_both_values(capsys):
    assert main(["config", "loss.lambda_kd=0.3", "train.max_steps=5", "loss.lambda_kd=0.5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no config printed
    assert "config key 'loss.lambda_kd' is given twice on the command line (loss.lambda_kd=0.3, then " \
           "loss.lambda_kd=0.5)" in captured.err and "Give it once" in captured.err
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1


def test_an_override_repeated_with_the_same_value_is_refused_too(capsys):
    assert main(["config", "run.name=a", "run.name=a"]) == 2
    assert "'run.name' is given twice" in capsys.readouterr().err


def test_build_config_still_layers_overrides_in_order():
    """Callers that layer overrides on purpose (a test's tiny settings, then its own) keep the later one."""
    assert build_config(None, ["loss.lambda_kd=0.3", "loss.lambda_kd=0.5"]).loss.lambda_kd == 0.5


def test_config_given_twice_is_refused(tmp_path, capsys):
    first = _yaml(tmp_path, "loss:\n  lambda_kd: 0.3\n", "a.yaml")
    second = _yaml(tmp_path, "train:\n  max_steps: 3\n", "b.yaml")
    with pytest.raises(SystemExit) as info:
        main(["config", "--config", str(first), "-c", str(second)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--config is given twice ({first}, then {second})" in err and "merge the two files" in err
    assert main(["config", "--config", str(first)]) == 0  # once is fine
    assert "lambda_kd: 0.3" in capsys.readouterr().out


@pytest.mark.parametrize("argv, option", [
    (["ablate", "--out", "x", "--out", "y"], "--out"),
    (["curve", "--out", "x", "--out", "y"], "--out"),
    (["eval", "student", "--out", "x", "--out", "y"], "--out"),
    (["eval", "student", "--teacher", "t1", "--teacher", "t2"], "--teacher"),
])
def test_other_options_given_twice_are_refused(argv, option, capsys):
    with pytest.raises(SystemExit) as info:  # out of range: were the option let through, no command would start
        main([*argv, "loss.lambda_kd=2"])
    assert info.value.code == 2
    assert f"{option} is given twice" in capsys.readouterr().err


# --------------------------------------------------------------------------- run.name is one folder


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "../x", "a\\b", "a\x00b", ".hidden", "x" * 201])
def test_run_name_that_is_not_one_folder_is_refused(name):
    with pytest.raises(ConfigError, match=r"config key 'run\.name'.*one folder inside run\.storage_path.*"
                                          r"e\.g\. run\.name=demo"):
        build_config(sample={"run.name": name})


def test_tune_name_is_one_folder_too():
    with pytest.raises(ConfigError, match=r"config key 'tune\.name'"):
        build_config(sample={"tune.name": ".."})


def test_names_the_commands_derive_still_pass():
    from gemini_ray.commands.ablate import _variant_configs

    cfg = build_config(sample={"run.name": "demo.v2_b-3"})
    assert {c.run.name for c in _variant_configs(cfg).values()} == \
        {"demo.v2_b-3-no-teacher", "demo.v2_b-3-kd-only", "demo.v2_b-3-cl-only", "demo.v2_b-3-kd-cl"}
    assert build_config(sample={"run.name": "007", "tune.name": "tune"}).run.name == "007"
    assert build_config(sample={"run.name": "x" * 200}).run.name == "x" * 200
    assert build_config(None, ["run.name=trial-1a2b3c_00001"]).run.name == "trial-1a2b3c_00001"


def test_overwrite_output_is_a_typed_key_off_by_default():
    assert Config().run.overwrite_output is False
    assert build_config(None, ["run.overwrite_output=true"]).run.overwrite_output is True
    with pytest.raises(ConfigError, match=r"config key 'run\.overwrite_output': expected true or false"):
        build_config(None, ["run.overwrite_output=yes please"])


# --------------------------------------------------------------------------- each corpus file read once


def _tree(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("alpha\n")
    (corpus / "sub" / "b.txt").write_text("beta\n")
    return corpus


def test_a_plain_directory_lists_every_file_once(tmp_path, capsys):
    corpus = _tree(tmp_path)
    (corpus / ".hidden.txt").write_text("skipped by Ray Data\n")
    (corpus / "c.csv").write_text("text\ngamma\n")
    assert unique_files(corpus) == [corpus / "a.txt", corpus / "c.csv", corpus / "sub" / "b.txt"]
    assert unique_files(corpus, (".csv",)) == [corpus / "c.csv"]
    assert capsys.readouterr().out == ""  # nothing reached twice: nothing said


def test_files_reached_twice_through_links_are_read_once(tmp_path, capsys):
    corpus = _tree(tmp_path)
    os.symlink("a.txt", corpus / "z-link.txt")  # a symlink to a file of the tree
    os.link(corpus / "sub" / "b.txt", corpus / "hard.txt")  # a hard link
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("kept elsewhere\n")
    os.symlink(outside, corpus / "linked.txt")  # a link to a file outside the tree: read (once)
    files = unique_files(corpus)
    assert files == [corpus / "a.txt", corpus / "hard.txt", corpus / "linked.txt"]  # the first name in order
    assert len({os.stat(f).st_ino for f in files}) == len(files)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "[gemini-ray] data.path: 2 file(s) reached twice through links are read " \
        "once: sub/b.txt (= hard.txt), z-link.txt (= a.txt)" in out
    unique_files(corpus)  # listed again (the preflight check, then the read): said once
    assert capsys.readouterr().out == ""


def test_a_symlink_loop_is_walked_once_and_does_not_hang(tmp_path, capsys):
    corpus = _tree(tmp_path)
    os.symlink("..", corpus / "sub" / "up")  # back to the top: Ray Data's listing walks it 40 levels deep
    os.symlink("..", corpus / "sub" / "up2")  # two such links: 2^40 paths
    os.symlink("sub", corpus / "sub-again")  # a second way into a folder
    assert unique_files(corpus) == [corpus / "a.txt", corpus / "sub" / "b.txt"]
    out = capsys.readouterr().out
    assert "3 folder(s) reached twice through links are walked once" in out
    assert "sub/up/ (= data.path itself)" in out and "sub-again/ (= sub/)" in out
    signature_files = [name for name, _, _ in _files(str(corpus))]
    assert signature_files == ["a.txt", "sub/b.txt"]  # the cache key's listing terminates too


def test_a_broken_link_and_a_fifo_are_not_files(tmp_path):
    corpus = _tree(tmp_path)
    os.symlink("nowhere.txt", corpus / "broken.txt")
    os.mkfifo(corpus / "pipe.txt")  # reading it would block forever
    assert unique_files(corpus) == [corpus / "a.txt", corpus / "sub" / "b.txt"]
