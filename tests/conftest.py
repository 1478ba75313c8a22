"""Shared fixtures: tiny teachers (no downloads), a small real corpus, and one Ray instance per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# a Ray Data stream that cannot get a CPU fails in 5 minutes, not Ray's default 30 (read by ray.init's processes)
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "300")
import gemini_ray  # noqa: E402,F401  (sets Ray Data's resource-request expiry before Ray starts)
from helpers import save, tiny_bert, tiny_llama, word_tokenizer  # noqa: E402  (tests/: pytest's pythonpath)


@pytest.fixture(scope="session")
def lee_texts() -> list[str]:
    """The first 40 real news articles of gensim's Lee background corpus."""
    from gemini_ray.data.corpus import gensim_test_data

    lines = (gensim_test_data() / "lee_background.cor").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()][:40]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, lee_texts) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": t}) + "\n" for t in lee_texts), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, lee_texts) -> Path:
    tok = word_tokenizer(lee_texts, masked=False)
    return save(tiny_llama(tok), tok, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory, lee_texts) -> Path:
    tok = word_tokenizer(lee_texts, masked=True)
    return save(tiny_bert(tok), tok, tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def ray_start_2_cpus():
    """The one Ray instance of the test session (Ray is slow to start on 2 cores)."""
    import ray

    from gemini_ray import ray_compat

    # address="local": a new instance even when another one runs on this machine (a user's, another suite's)
    # the dashboard serves the state API Train V2 polls; the runtime environment is the one init_ray passes
    ray.init(address="local", num_cpus=2, log_to_driver=True, runtime_env=ray_compat.runtime_env())
    yield
    ray.shutdown()
