"""Search spaces: YAML files of dotted config keys, each searched (a distribution) or fixed (a value).

    space = load_space("tune_spaces/quick.yaml")
    cfg, space = search_config("my.yaml", ["tune.num_samples=8"])    # the config a search runs
    validate_space(cfg, space, max_negatives=8)                        # searchable keys; every extreme valid
    param_space = tune_distributions(space)                            # Ray Tune's objects (imports ray.tune)

Precedence of a trial's config: defaults <- --config file <- the space's fixed values <- command-line
overrides <- the trial's sample (all through config.build_config).

What a space may search: the student (student.*, each trial builds its own), the loss (loss.*) and the
training run (train.*). Not the teacher signal: a search reads one teacher-signal cache, labelled before
its first trial, so keys of the sections that make or choose that cache (teacher.*, data.*, mining.*,
label.*) are refused when searched (`SIGNAL_SECTIONS`). Fixed to one value in a space they are fine: they
apply to the base config, which the cache is labelled for.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemini_ray.config import Config, all_keys, build_config, read_yaml
from gemini_ray.errors import ConfigError

__all__ = ["SearchSpace", "SIGNAL_SECTIONS", "load_space", "search_config", "validate_space", "tune_distributions",
           "rows_longest_trial"]

_DISTRIBUTIONS = ("uniform", "loguniform", "choice", "grid", "randint")
_RANGES = ("uniform", "loguniform", "randint")


@dataclass(frozen=True)
class SearchSpace:
    path: str
    search: dict[str, dict[str, Any]]
    """{dotted key: {distribution: args}}, e.g. {'loss.lambda_kd': {'uniform': [0.2, 0.8]}}."""
    fixed: dict[str, Any]
    """{dotted key: value} set for every trial."""


def _distribution(path: str | Path, key: str, value: dict[str, Any]) -> dict[str, Any]:
    if len(value) != 1 or next(iter(value)) not in _DISTRIBUTIONS:
        raise ConfigError(f"search space '{path}': '{key}' must be one of {list(_DISTRIBUTIONS)}, "
                          f"e.g. {{uniform: [0.2, 0.8]}}; got {value!r}")
    kind, args = next(iter(value.items()))
    if not isinstance(args, list) or not args or (kind in _RANGES and len(args) != 2):
        raise ConfigError(f"search space '{path}': '{key}: {kind}' needs a list "
                          f"{'[low, high]' if kind in _RANGES else 'of values'}")
    if kind in _RANGES and not args[0] < args[1]:
        raise ConfigError(f"search space '{path}': '{key}: {kind}' needs low < high, got {args}")
    if kind == "loguniform" and args[0] <= 0:
        raise ConfigError(f"search space '{path}': '{key}: loguniform' needs low > 0, got {args}")
    return {kind: args}


def load_space(path: str | Path) -> SearchSpace:
    """Read a search space. Every key must be a config key; every distribution must be well formed."""
    raw = read_yaml(path)
    keys = all_keys()
    search, fixed = {}, {}
    for key, value in raw.items():
        if key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"search space '{path}': '{key}' is not a config key.{hint}")
        if isinstance(value, dict):
            search[key] = _distribution(path, key, value)
        else:
            fixed[key] = value
    if not search:
        raise ConfigError(f"search space '{path}' searches no key; give at least one distribution.")
    return SearchSpace(str(path), search, fixed)


def search_config(file: str | Path | None, overrides: list[str]) -> tuple[Config, SearchSpace]:
    """The config a search runs (its space's fixed values included) and the space, named by tune.space."""
    space = load_space(build_config(file, overrides).tune.space)
    return build_config(file, overrides, fixed=space.fixed), space


def _extremes(dist: dict[str, Any]) -> list[Any]:
    kind, args = next(iter(dist.items()))
    if kind == "randint":
        return [args[0], args[1] - 1]  # Tune's randint excludes the upper bound
    return list(args) if kind in ("choice", "grid") else [args[0], args[1]]


SIGNAL_SECTIONS = ("teacher", "data", "mining", "label")
"""Config sections a search cannot vary: what the teacher says and of which rows. `cache_identity` hashes
teacher.top_k, the teacher's weights and tokenizer (teacher.model, .revision, .gguf_file, .kind), every
data.* key but one (the corpus: path, format, text_column, max_documents; span_length, val_fraction,
max_val_examples, seed, mlm_probability), mining.* and label.max_negatives. The rest is refused too:
data.max_document_chars decides which documents are read (rows exist or not; it is not in the key),
teacher.dtype and teacher.backend change the numbers the teacher gives, the rest of teacher.* sizes the
labelling pass, and the rest of label.* chooses or makes the cache the driver reads once for every trial."""


def _check_searchable(space: SearchSpace) -> None:
    """Refuse a space that searches a key of SIGNAL_SECTIONS: every trial reads the one cache labelled before
    the search, so such a key would be range-checked and then ignored by every trial."""
    refused = [key for key in space.search if key.split(".", 1)[0] in SIGNAL_SECTIONS]
    if refused:
        raise ConfigError(
            f"search space '{space.path}' searches {', '.join(refused)}: these set the teacher signal, and every "
            "trial of a search reads one cache, labelled before the first. Run one search per value, each with its "
            "own 'gemini-ray label' (fix the key with a plain value in the space or on the command line); a space "
            "may search student.*, loss.* and train.* keys.")


def validate_space(cfg: Config, space: SearchSpace, max_negatives: int | None) -> None:
    """The space searches no key of the teacher signal (`SIGNAL_SECTIONS`), and every extreme value of every
    distribution makes a valid config (λ in [0, 1], τ > 0, K ≤ K_max)."""
    _check_searchable(space)
    for key, dist in space.search.items():
        for value in _extremes(dist):
            try:
                trial = build_config(base=cfg, sample={key: value})
            except ConfigError as exc:
                raise ConfigError(f"search space '{space.path}': {key}={value} is invalid: {exc}") from None
            if max_negatives is not None and trial.loss.num_negatives > max_negatives:
                raise ConfigError(
                    f"search space '{space.path}': loss.num_negatives={trial.loss.num_negatives} exceeds K_max="
                    f"{max_negatives} mined into the cache. Search K <= {max_negatives} or raise label.max_negatives."
                )


_RUN_LENGTH = ("train.max_steps", "train.batch_size", "train.num_workers", "train.grad_accum_steps")


def rows_longest_trial(cfg: Config, space: SearchSpace) -> int:
    """Training rows the search's longest trial reads (with a step of slack): every combination of the
    extremes of the searched keys that set a run's length (`cache.rows_a_run_reads`)."""
    import itertools

    from gemini_ray.data.cache import rows_a_run_reads

    keys = [k for k in _RUN_LENGTH if k in space.search]
    most = 0
    for values in itertools.product(*(_extremes(space.search[k]) for k in keys)):
        t = build_config(base=cfg, sample=dict(zip(keys, values))).train
        most = max(most, rows_a_run_reads(t.max_steps, t.examples_per_step))
    return most


def tune_distributions(space: SearchSpace) -> dict[str, Any]:
    """The space's distributions as Ray Tune search-space objects."""
    from ray import tune

    make = {"uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
            "choice": tune.choice, "grid": tune.grid_search, "randint": lambda a: tune.randint(*a)}
    return {key: make[kind](args) for key, dist in space.search.items() for kind, args in dist.items()}
