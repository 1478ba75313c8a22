"""The corpus cut into blocks (no Ray): every line read once whatever the block size, large files in pieces,
compressed files whole, and a file that changes under the reader refused."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from gemini_ray.config import DataConfig
from gemini_ray.data.blocks import changed_files, corpus_bytes, plan_blocks, read_block
from gemini_ray.data.corpus import parse_jsonl, split_lines
from gemini_ray.errors import GeminiRayError


def lines(seed: int, n: int = 300) -> list[str]:
    """Lines of 0-300 characters, some multi-byte, some blank."""
    rng = random.Random(seed)
    return ["".join(rng.choice("ab cd\u00e9\u4e2d") for _ in range(rng.randint(0, 300))) for _ in range(n)]


def read_all(d: DataConfig, block_bytes: int) -> list[str]:
    return [t for b in plan_blocks(d, block_bytes) for t in read_block(b, d)["text"].tolist()]


@pytest.mark.parametrize("seed", range(4))
def test_byte_ranges_read_every_line_once_whatever_the_block_size(tmp_path, seed):
    path = tmp_path / "c.txt"
    path.write_bytes(("\n".join(lines(seed)) + ("\n" if seed % 2 else "")).encode())
    whole = split_lines({"bytes": [path.read_bytes()]})["text"].tolist()
    d = DataConfig(path=str(path))
    for block_bytes in (1, 2, 7, 64, 333, 4096, 1 << 20):
        blocks = plan_blocks(d, block_bytes)
        assert len(blocks) == -(-path.stat().st_size // block_bytes)  # a large file: many blocks
        assert corpus_bytes(blocks) == path.stat().st_size
        assert read_all(d, block_bytes) == whole, block_bytes


def test_jsonl_ranges_parse_each_record_once_and_count_broken_ones(tmp_path):
    records = [json.dumps({"text": t}) for t in lines(7, 200)] + ['{"text": "cut off', "[1, 2]"]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(records) + "\n", encoding="utf-8")
    whole = parse_jsonl({"bytes": [path.read_bytes()]}, column="text")
    d = DataConfig(path=str(path))
    for block_bytes in (5, 100, 2000):
        parts = [read_block(b, d) for b in plan_blocks(d, block_bytes)]
        assert [t for p in parts for t in p["text"].tolist()] == whole["text"].tolist()
        assert sum(int(p["bad_record"].sum()) for p in parts) == 2


def test_a_compressed_file_is_one_block_and_a_directory_lists_its_files_in_order(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    with gzip.open(folder / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("three\nfour\n" * 500)
    d = DataConfig(path=str(folder), format="text")
    blocks = plan_blocks(d, 4)
    assert [b["path"].rsplit("/", 1)[-1] for b in blocks] == ["a.txt", "a.txt", "b.txt.gz"]
    assert blocks[-1]["start"] == -1  # whole: a compressed stream cannot be entered in its middle
    assert read_all(d, 4) == ["one", "two"] + ["three", "four"] * 500


def test_an_embedded_list_of_articles_is_dealt_into_blocks_that_each_mix_the_corpus():
    from gemini_ray.data.corpus import embedded_corpus

    d = DataConfig(path="embedded:lee_wikipedia")  # 300 news articles, then 106 Wikipedia articles
    articles = embedded_corpus(d.path)
    blocks = plan_blocks(d, 200_000)
    parts = [read_block(b, d)["text"].tolist() for b in blocks]
    assert len(blocks) == 17 and sorted(t for p in parts for t in p) == sorted(articles)  # each once
    assert all(set(p) & set(articles[:300]) and set(p) & set(articles[300:]) for p in parts)


def test_a_file_that_changes_after_it_was_planned_is_refused(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first document\nsecond document\n", encoding="utf-8")
    d = DataConfig(path=str(path))
    blocks = plan_blocks(d, 1 << 20)
    assert changed_files(blocks) == []
    with path.open("a", encoding="utf-8") as f:
        f.write("a third, appended while the pass runs\n")
    assert changed_files(blocks) == [str(path.resolve())]
    with pytest.raises(GeminiRayError, match=r"c.txt' grew while it was being read.*run the command again"):
        read_block(blocks[0], d)


def test_a_block_cut_to_its_share_of_max_documents(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("".join(f"document {i}\n" for i in range(10)), encoding="utf-8")
    d = DataConfig(path=str(path))
    block = {**plan_blocks(d, 1 << 20)[0], "max_documents": 3}
    assert read_block(block, d)["text"].tolist() == ["document 0", "document 1", "document 2"]
