"""Forward timing (jobs.evaluate.forward_times, benchmarks/speed.py): the order alternates, the speedup is taken
within each round, bad shapes are refused."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest
import torch

from helpers import benchmark_module
from gemini_ray.jobs.evaluate import Model, forward_times, throughput


class Recorder(torch.nn.Module):
    def __init__(self, name: str, calls: list[str]):
        super().__init__()
        self.name, self.calls = name, calls
        self.config = SimpleNamespace(vocab_size=10)

    def forward(self, input_ids, attention_mask):
        assert input_ids.shape == attention_mask.shape == (2, 5)
        self.calls.append(self.name)
        return input_ids


def test_rounds_time_both_models_on_one_batch_in_alternating_order():
    calls: list[str] = []
    models = [Model(name, "", Recorder(name[0], calls), None, "causal", "") for name in ("teacher", "student")]
    times = forward_times(models, (2, 5), rounds=3)
    assert calls == ["t", "s", "s", "t", "t", "s", "s", "t"]  # a warm-up round, then 3 timed, alternating
    assert len(times["teacher"]) == len(times["student"]) == 3
    assert set(throughput(models, (2, 5), repeats=2)) == {"teacher", "student"}


def test_the_speedup_is_the_median_of_per_round_ratios():
    speed = benchmark_module("speed")
    # the machine slows down in the second half: tokens/s medians would mix rounds, per-round ratios do not
    times = {"teacher": [1.0, 1.0, 1.0, 3.0, 3.0], "student": [0.4, 0.4, 0.5, 1.2, 1.2]}
    out = speed.summarise(times, (8, 128))
    assert out["speedup"] == pytest.approx(2.5)
    lo, hi = out["speedup_ci"]
    assert 2.0 <= lo <= 2.5 <= hi <= 2.5 + 1e-9
    assert out["speedup_range"] == pytest.approx([2.0, 2.5])
    assert out["teacher_tokens_per_s"] == pytest.approx(1024 / 1.0)
    assert out["student_tokens_per_s"] == pytest.approx(1024 / 0.5)


@pytest.mark.parametrize("text", ["8", "8x", "x128", "0x128", "8x-1", "axb"])
def test_a_batch_shape_must_be_two_positive_integers(text):
    speed = benchmark_module("speed")
    with pytest.raises(argparse.ArgumentTypeError, match="ROWSxTOKENS"):
        speed.shape(text)
    assert speed.shape("8x128") == (8, 128)
