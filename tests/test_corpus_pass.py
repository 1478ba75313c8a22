"""The corpus pass on the shared Ray instance: blocks of the files read and tokenized-and-paired in parallel
tasks, counts kept in Ray (nothing proportional to the corpus in the driver)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from gemini_ray.config import config_from_dict

pytestmark = pytest.mark.ray


def corpus(path, texts) -> str:
    """One jsonl file, or one text file of one document per line."""
    if path.suffix == ".txt":
        path.write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return str(path)


def config(path, **data):
    return config_from_dict({"data": {"path": path, "span_length": 16, "seq_length": 32, "val_fraction": 0.2, **data},
                             "loss": {"num_negatives": 2}})


def whole_pass(cfg, llama_dir):
    """The corpus stream run to its end: (its examples, held in Ray's object store; the ledger's counts)."""
    import ray

    from gemini_ray.data.corpus_pass import corpus_stream

    stream = corpus_stream(cfg, str(llama_dir), "causal")
    try:
        return stream.examples.materialize(), stream.stats()
    finally:
        ray.kill(stream.ledger)


@pytest.fixture
def ordered(ray_start_2_cpus):
    from gemini_ray.cluster.session import init_ray

    init_ray(config_from_dict({}))  # what every command does: the corpus's order is kept


def test_the_whole_pass_collects_nothing_in_the_driver_and_splits_into_parallel_tasks(ordered, llama_dir, lee_texts,
                                                                          tmp_path, monkeypatch):
    import ray.data

    import gemini_ray.data.corpus_pass as pipeline

    texts = [lee_texts[0]] + lee_texts + lee_texts  # 40 documents: a repeat in the first block, 40 in later ones
    shuffled = random.Random(0).sample(texts, len(texts))
    monkeypatch.setattr(pipeline, "CORPUS_BLOCK_BYTES", 8 * 1024)  # several blocks: several tasks at once on 2 CPUs

    def collected(*args, **kwargs):
        raise AssertionError("the corpus pass pulled rows into the driver")

    with monkeypatch.context() as m:
        for name in ("to_pandas", "take_all", "take", "take_batch", "iter_rows", "to_arrow_refs"):
            m.setattr(ray.data.Dataset, name, collected)
        examples, stats = whole_pass(config(corpus(tmp_path / "a.txt", texts)), llama_dir)
        _, again = whole_pass(config(corpus(tmp_path / "b.jsonl", shuffled)), llama_dir)
    assert stats.documents == len(texts) and stats.duplicate_documents == 41 and stats.repeated_blocks == 0
    # a one-file corpus is cut into byte ranges of about CORPUS_BLOCK_BYTES, one read task and one tokenize
    # task each, so that every free CPU takes one (how many processes ran them depends on
    # timing: counted, not asserted)
    assert examples.num_blocks() >= 3 and stats.tokenize_processes >= 1
    assert stats.examples == examples.count() == stats.train_examples + stats.val_examples
    doc = examples.select_columns(["doc_id", "example_id", "position"]).to_pandas()
    assert doc["position"].is_unique  # every row's place in the pass (task, row) is its own, in actors too
    first = doc[doc["doc_id"] == doc["doc_id"].iloc[0]]  # lee_texts[0], three times: the repeat in its own
    assert (first["example_id"].value_counts() == 2).all()  # block is dropped, the one in a later block kept
    # the corpus fingerprint is order-free, and changes with the content
    assert again.fingerprint == stats.fingerprint and again.duplicate_documents == 41
    _, fewer = whole_pass(config(corpus(tmp_path / "c.jsonl", lee_texts[1:])), llama_dir)
    assert fewer.fingerprint != stats.fingerprint


def test_corpora_that_break_after_their_first_mib_are_read_with_counted_skips(ordered, llama_dir, lee_texts,
                                                                               tmp_path):
    """What the up-front file check cannot see (it reads the first MiB) is skipped and counted by the pass."""
    import pandas as pd

    good = [t for t in lee_texts if len(t) < 1000]
    head = (good * (1_300_000 // sum(map(len, good)) + 1))[: 1_300_000 // 500]  # past 1 MiB
    long_doc = " ".join(good)[:5000]
    body = "".join(json.dumps({"text": f"{t} ({i})"}) + "\n" for i, t in enumerate(head))
    jsonl = tmp_path / "late.jsonl"
    jsonl.write_bytes(body.encode() + b'{"text": "cut off in the mid\n' + b'{"text": "caf\xe9"}\n'
                      + json.dumps({"text": long_doc}).encode() + b"\n" + json.dumps({"text": good[0]}).encode())
    csv = tmp_path / "late.csv"
    rows = pd.DataFrame({"text": [f"{t} ({i})" for i, t in enumerate(head)] + [long_doc, good[1]]})
    csv.write_bytes(rows.to_csv(index=False).encode() + b"a,b,c\n" + b'"caf\xe9"\n')
    parquet = tmp_path / "late.parquet"
    rows.to_parquet(parquet)

    for path, bad_records, non_utf8 in ((jsonl, 1, 1), (csv, 1, 1), (parquet, 0, 0)):
        cfg = config(str(path), max_document_chars=1000)
        _, stats = whole_pass(cfg, llama_dir)
        assert (stats.skipped_bad_records, stats.skipped_non_utf8, stats.skipped_too_long) == \
            (bad_records, non_utf8, 1), path.name
        assert stats.examples > 0 and stats.documents == len(head) + 2 + bad_records + non_utf8, path.name


def test_the_fingerprint_is_the_count_sum_and_xor_of_the_unique_hashes_and_the_ledger_merges_its_blocks(
        ray_start_2_cpus):
    """The fingerprint keys label caches: fingerprint_of must equal the formula caches were keyed by (a set of
    Python ints: count, sum mod 2**64, xor), and the ledger, which merges its hash arrays every
    LEDGER_MERGE_BLOCKS blocks, must count duplicates across merges."""
    import hashlib

    import ray

    from gemini_ray.data.corpus_pass import LEDGER_MERGE_BLOCKS, CorpusLedger, fingerprint_of

    rng = np.random.default_rng(0)
    blocks = [rng.integers(-2**63, 2**63 - 1, size=50, dtype=np.int64) for _ in range(LEDGER_MERGE_BLOCKS + 6)]
    blocks[-1][:10] = blocks[0][:10]  # ten documents again, after a merge
    blocks[-2][:3] = blocks[-2][3:6]  # three repeats within a block
    seen, total, xor = set(), 0, 0
    for h in np.concatenate(blocks).tolist():
        if h not in seen:
            seen.add(h)
            total, xor = (total + h) % (1 << 64), xor ^ h
    expected = hashlib.sha256(f"{len(seen)}:{total}:{xor}".encode()).hexdigest()
    assert fingerprint_of(np.unique(np.concatenate(blocks))) == expected

    ledger = CorpusLedger.remote()
    for i, ids in enumerate(blocks):
        ray.get(ledger.record.remote((i, 0, i), ids, {"documents": len(ids)}, 1))
    ray.get(ledger.record.remote((0, 0, 0), blocks[0], {"documents": len(blocks[0])}, 1))  # a block read again
    stats = ray.get(ledger.stats.remote())
    ray.kill(ledger)
    assert stats.fingerprint == expected and stats.duplicate_documents == 13 and stats.repeated_blocks == 1
    assert stats.documents == 50 * len(blocks)


