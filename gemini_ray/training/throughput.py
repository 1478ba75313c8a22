"""How close a run comes to its hardware: model FLOPs per token and a matmul probe of the peak. No Ray.

Per token the teacher labels (the anchor and positive spans), with matmul parameters P (embedding lookups
are free; the vocabulary head is a matmul, tied or not):

* teacher, forward only:  2 · (P_T,body + P_T,head)
* student, forward + backward (3x the forward): 6 · P_S,body per token of every span it encodes (anchors,
  positives and the K negatives) + 6 · P_S,head per labelled token (the head runs on labelled spans only).

Attention's sequence-length term is left out (≤ 4 % at 64 tokens for these widths; it grows with data.seq_length,
so long windows understate MFU).
Model-FLOPs utilisation (MFU) = these FLOPs per second ÷ the peak (`run.peak_tflops`, else `matmul_tflops`).
"""

from __future__ import annotations

import time

import torch

__all__ = ["matmul_params", "config_matmul_params", "teacher_flops", "student_flops", "matmul_tflops"]


def matmul_params(model: torch.nn.Module) -> tuple[int, int]:
    """(body, head) matmul parameters: every Linear weight but the output head's, and the head's."""
    head = model.get_output_embeddings()
    body = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    return body, head.weight.numel()


def teacher_flops(body: int, head: int, tokens: float) -> float:
    """Forward FLOPs of the teacher over `tokens` labelled tokens."""
    return 2.0 * (body + head) * tokens


def student_flops(body: int, head: int, labelled_tokens: float, encoded_tokens: float) -> float:
    """Forward + backward FLOPs of a student step: the body over every encoded token (anchors, positives,
    negatives), the head over the labelled ones."""
    return 6.0 * (body * encoded_tokens + head * labelled_tokens)


def matmul_tflops(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int = 1024,
                  repeats: int = 5) -> float:
    """The TFLOP/s an n x n matmul reaches here, with this process's torch threads (the best of `repeats`
    after a warm-up: other work on the machine only slows a matmul down, and on a run's driver the teacher
    or the corpus reader may be busy beside it): the peak MFU is measured against when run.peak_tflops is
    not given."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        (a @ b).sum().item()  # .item(): waits for the device
        if i:
            times.append(time.perf_counter() - start)
    return 2.0 * n**3 / min(times) / 1e12


def config_matmul_params(hf_config: dict, kind: str) -> tuple[int, int]:
    """matmul_params of a model built from its Hugging Face config on the meta device (no weights, no memory)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    config = AutoConfig.for_model(**{k: v for k, v in hf_config.items() if k != "quantization_config"})
    cls = AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM
    with torch.device("meta"):
        return matmul_params(cls.from_config(config))
