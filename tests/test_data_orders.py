"""experiments/data_orders.py: the spread across data orders and the per-order claims, from a compare.json."""

from __future__ import annotations

import argparse

import pytest

from helpers import benchmark_module


def _interval(d, low, high):
    return {"difference": d, "low": low, "high": high, "beyond_noise": low > 0 or high < 0}


def test_the_spread_across_orders_and_each_orders_claims():
    module = benchmark_module("data_orders", "experiments")
    orders = ["s0", "s1", "s2"]
    lee = {"kd-cl": [0.50, 0.52, 0.54], "kd-only": [0.30, 0.31, 0.32]}
    ppl = {"kd-cl": [5000.0, 6000.0, 7000.0], "kd-only": [2000.0, 2000.0, 2000.0]}
    compare = {"rows": {}, "minus_untrained": {}, "pairs": {}}
    for student in ("kd-cl", "kd-only"):
        for i, order in enumerate(orders):
            name = f"{student}-{order}"
            compare["rows"][name] = {"lm": {"perplexity": ppl[student][i]}, "lee_spearman": lee[student][i],
                                     "rt_accuracy": 0.75 + i / 1000}
            compare["minus_untrained"][name] = {"lee_spearman": _interval(lee[student][i] - 0.43, 0.01, 0.2),
                                                "rt_accuracy": _interval(0.001 * i, -0.01, 0.01)}
    for i, order in enumerate(orders):
        compare["pairs"][f"kd-cl-{order}:kd-only-{order}"] = {
            "perplexity_ratio": {"ratio": ppl["kd-cl"][i] / 2000, "low": 2.0, "high": 4.0},
            "differences": {"lee_spearman": _interval(lee["kd-cl"][i] - lee["kd-only"][i], 0.15, 0.25)}}
    summary, markdown = module.summarise(compare, orders)
    spread = summary["variants"]["kd-cl"]
    assert spread["perplexity"]["mean"] == 6000 and spread["perplexity"]["sd"] == pytest.approx(1000)
    assert spread["lee_spearman"]["min"] == 0.50 and spread["lee_spearman"]["max"] == 0.54
    assert summary["variants"]["kd-only"]["perplexity"]["sd"] == 0
    assert summary["claims"]["s2"]["kd_cl_above_kd_only_on_lee"]["difference"] == pytest.approx(0.22)
    assert summary["claims"]["s1"]["kd_cl_over_kd_only_perplexity"]["ratio"] == 3.0
    assert "| kd-cl | 6,000 ± 1,000 (5,000–7,000) | 0.520 ± 0.020 (0.500–0.540) |" in markdown
    assert "| s1 | +0.210 [+0.150, +0.250] | 3.00x [2.00, 4.00] |" in markdown


def test_overrides_after_the_seeds_are_overrides_not_seeds():
    """argparse hands --seeds every word up to the next option: `--seeds 1 2 train.lr=3e-4` must still work."""
    module = benchmark_module("data_orders", "experiments")
    parser = argparse.ArgumentParser()
    seeds, overrides = module.split_seeds(["1", "2", "train.lr=3e-4"], ["loss.lambda_kd=0.6"], parser)
    assert seeds == [1, 2]
    assert overrides == ["loss.lambda_kd=0.6", "train.lr=3e-4"]
    with pytest.raises(SystemExit):
        module.split_seeds(["1", "two"], [], parser)
