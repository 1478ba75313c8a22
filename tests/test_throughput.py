"""Throughput accounting: FLOPs per token, the matmul probe, tokens/s and MFU of a metrics window."""

from __future__ import annotations

import time

import pytest
import torch

from gemini_ray.training.throughput import (config_matmul_params, matmul_params, matmul_tflops, student_flops,
                                   teacher_flops)


def test_matmul_parameters_are_the_linear_weights_and_the_head(llama_dir):
    from gemini_ray.models.build import load_teacher

    model, _ = load_teacher(str(llama_dir))
    body, head = matmul_params(model)
    cfg = model.config
    H, I, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = H // cfg.num_attention_heads * cfg.num_key_value_heads
    assert body == n * (H * H * 2 + H * kv * 2 + 3 * H * I)  # q, o; k, v; gate, up, down
    assert head == cfg.vocab_size * H  # tied to the embeddings, still a matmul
    assert config_matmul_params(cfg.to_dict(), "causal") == (body, head)  # on the meta device, same counts


def test_flops_per_token_follow_the_forward_and_backward_rule():
    assert teacher_flops(100, 20, tokens=10) == 2 * 120 * 10
    # the body runs on every encoded span (anchors, positives, negatives), the head on labelled tokens only
    assert student_flops(100, 20, labelled_tokens=10, encoded_tokens=30) == 6 * (100 * 30 + 20 * 10)


def test_the_matmul_probe_measures_a_plausible_peak():
    peak = matmul_tflops(n=256, repeats=3)
    assert 1e-4 < peak < 100  # TFLOP/s of a CPU: more than 0.1 GFLOP/s, less than a GPU


def test_a_window_reports_tokens_per_second_and_mfu_from_the_tokens_it_saw(monkeypatch):
    from helpers import toy_batch

    from gemini_ray.training.train_worker import Costs, MetricsWindow

    batch = toy_batch(4)
    batch.update(teacher_tokens=torch.full((4,), 12), topk_mass=torch.ones(4, 2, 6), random_negatives=torch.zeros(4),
                 missing_negatives=torch.zeros(4))
    costs = Costs(peak_tflops=1e-3, teacher_params=(1000, 200), teacher_devices=1)
    window = MetricsWindow(((100, 20), 2, costs, False))
    clock = iter([0.0, 0.0, 2.0, 2.0, 2.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock, 2.0))
    window.restart_clock()
    for b in window.timed([batch]):
        window.add({"loss/total": 1.0, "loss/kd": 1.0, "loss/cl": 1.0, "loss/rep": 1.0}, b)
    _, rates = window.close(batch_size=4, world=1)
    labelled, encoded = 4 * 2 * 6, 4 * 2 * 6 + 4 * 2 * 6  # anchors + positives; + K = 2 negatives of 6 tokens
    assert rates["train_tokens_per_s"] == pytest.approx(labelled / 2.0)
    assert rates["train_tflops"] == pytest.approx(6 * (100 * encoded + 20 * labelled) / 2.0 / 1e12)
    assert rates["train_mfu"] == pytest.approx(rates["train_tflops"] / 1e-3)
    assert rates["teacher_tokens_per_s"] == pytest.approx(4 * 12 / 2.0)
    assert rates["teacher_mfu"] == pytest.approx(2 * 1200 * 48 / 2.0 / 1e12 / 1e-3)
    # reading a cache: no teacher runs beside the trainer, so no teacher rate
    cached = MetricsWindow(((100, 20), 2, Costs(peak_tflops=None), False))
    cached.add({"loss/total": 1.0, "loss/kd": 1.0, "loss/cl": 1.0, "loss/rep": 1.0}, batch)
    _, rates = cached.close(batch_size=4, world=1)
    assert "teacher_tokens_per_s" not in rates and "train_mfu" not in rates and rates["train_tflops"] > 0


def test_the_steady_state_summary_leaves_the_first_report_out():
    from gemini_ray.jobs.distill_run import throughput_line, throughput_summary

    history = [{"train_tokens_per_s": 10.0, "examples_per_s": 1.0}, {"train_tokens_per_s": 100.0, "examples_per_s": 2.0},
               {"train_tokens_per_s": 200.0, "examples_per_s": 4.0}]
    summary = throughput_summary(history)
    assert summary == {"train_tokens_per_s": 150.0, "examples_per_s": 3.0}
    assert throughput_line({**summary, "peak_tflops": 0.098}) == \
        "[gemini-ray] throughput (steady state): trainer 150 tok/s against 0.098 TFLOP/s"
    assert throughput_summary([]) == {}


def test_the_eta_is_the_steps_left_at_the_windows_pace():
    from gemini_ray.training.train_worker import eta_text

    assert eta_text(100, 8, 0.5) == " | ETA 27 min"  # 100 steps x 8 examples / 0.5 examples/s = 1,600 s
    assert eta_text(2, 8, 0.5) == " | ETA 32 s"
    assert eta_text(0, 8, 0.5) == "" and eta_text(5, 8, 0.0) == ""
