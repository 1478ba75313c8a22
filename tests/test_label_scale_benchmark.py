"""benchmarks/label_scale.py's pure parts: the cache comparison of its resume phase, how far a pass got, and
the scale ratios, on hand-made caches and manifests (no Ray, no teacher)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from helpers import benchmark_module

bench = benchmark_module("label_scale")


def _cache(directory, shards: dict[int, list[int]]):
    directory.mkdir(parents=True)
    for shard, ids in shards.items():
        pq.write_table(pa.table({"example_id": pa.array(ids, pa.int64())}), directory / f"shard-{shard:05d}.parquet")
    return directory


def test_identical_caches_lose_and_duplicate_nothing(tmp_path):
    shards = {0: [1, 2, 3], 1: [4, 5]}
    r = bench.compare_caches(_cache(tmp_path / "a", shards), _cache(tmp_path / "b", shards))
    assert (r["rows_lost"], r["rows_duplicated"], r["shards_differing"]) == (0, 0, 0)
    assert r["rows_reference"] == r["rows_resumed"] == 5


def test_a_missing_row_a_copy_a_stray_and_a_missing_shard_are_counted(tmp_path):
    reference = _cache(tmp_path / "a", {0: [1, 2, 3], 1: [4, 5], 2: [6]})
    # shard 0 lost row 3 and holds row 1 twice; shard 1 holds row 6, which belongs to shard 2; shard 2 is missing
    resumed = _cache(tmp_path / "b", {0: [1, 1, 2], 1: [4, 5, 6]})
    r = bench.compare_caches(reference, resumed)
    assert r["rows_lost"] == 2  # row 3 of shard 0, row 6 of shard 2
    assert r["rows_duplicated"] == 2  # the copy of row 1, the stray row 6 in shard 1
    assert r["shards_differing"] == 3
    assert (r["shard_files_reference"], r["shard_files_resumed"]) == (3, 2)


def test_done_fraction_takes_shard_files_or_the_manifests_bytes_whichever_says_more(tmp_path):
    cache = _cache(tmp_path / "c", {0: [1], 1: [2]})
    assert bench.done_fraction(cache, expected_shards=8, corpus_bytes=1000) == 0.25
    (cache / "manifest.json").write_text(json.dumps({"progress": {"bytes": 600}}))
    assert bench.done_fraction(cache, expected_shards=8, corpus_bytes=1000) == 0.6
    assert bench.done_fraction(tmp_path / "none", expected_shards=8, corpus_bytes=None) == 0.0


def test_scale_ratios_compare_the_largest_finished_size_with_the_one_a_tenth_of_it():
    sizes = {"10": {"status": "finished", "driver_peak_rss_mib": 600.0, "tokens_per_s": 1000.0},
             "100": {"status": "finished", "driver_peak_rss_mib": 660.0, "tokens_per_s": 950.0},
             "1000": {"status": "timed_out", "driver_peak_rss_mib": 900.0}}
    r = bench.scale_ratios(sizes)
    assert r["sizes_mb"] == [10, 100] and r["driver_peak_rss"] == 1.1 and r["tokens_per_s"] == 0.95
    assert r["rss_goal_met"] and r["tokens_per_s_goal_met"]
    assert bench.scale_ratios({"10": sizes["10"], "1000": sizes["1000"]}) is None  # one finished size: no ratio
    one = {"status": "finished", "driver_peak_rss_mib": 500.0, "tokens_per_s": 900.0}
    assert bench.scale_ratios({"1": one, **sizes})["sizes_mb"] == [10, 100]  # 10x apart, not the smallest


def test_pass_figures_read_the_new_manifest_fields_when_present_and_none_when_not():
    old = {"teacher_tokens_this_run": 2000, "wall_time_s": {"label_s": 4.0, "total_s": 9.0}, "shards": {"0": {}}}
    assert bench.pass_figures(old)["tokens_per_s"] == 500.0
    assert bench.pass_figures(old)["teacher_actor_starts"] is None
    new = {**old, "teacher_actor_starts": 1, "progress": {"bytes": 10}, "shards": [0, 1]}
    assert bench.pass_figures(new)["teacher_actor_starts"] == 1 and bench.pass_figures(new)["shards"] == 2
