"""On paper: how to split accelerators between the teacher pool and the Train workers, and what it yields.

    python benchmarks/balance.py [--peak-tflops 989] [--mfu 0.4] [--negatives 4] [--student-layers 6]

Per token the teacher labels (anchor and positive spans), with matmul parameters P (embedding lookups are
free, the vocabulary head is a matmul):
* teacher, forward only:               C_T = 2 · (P_T,body + P_T,head)
* student, forward + backward (3x), the body also runs on the K negative spans of each example and the head
  only on the labelled spans:          C_S = 6 · ((1 + K/2) · P_S,body + P_S,head)
The pipeline is balanced when both stages take the same time per token: n_T / n_S = C_T / C_S, and then
N accelerators stream N · F · u / (C_T + C_S) tokens/s (F peak FLOP/s, u the utilisation both stages reach).
Integer splits of 8 and 64 accelerators are rounded to the better of floor/ceil. Parameter counts come
from the models' configs (built on the meta device, no weights loaded): the embedded SmolLM2-135M and its
6-layer student, and SmolLM2-1.7B's published shape with a student of the same depth ratio.
"""

from __future__ import annotations

import argparse
import json


PAIRS = {
    "SmolLM2-135M -> 6 layers (the demo)": ("embedded", 6),
    "SmolLM2-1.7B -> 6 layers": ({"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                                  "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 49152,
                                  "tie_word_embeddings": True}, 6),
}


def matmul_params(config, layers: int) -> tuple[int, int]:
    """(body, head) matmul parameters of a causal LM with `layers` of the config's layers (the library's
    count, on the meta device: the trainer's MFU uses the same)."""
    from gemini_ray.training.throughput import config_matmul_params

    return config_matmul_params({**config.to_dict(), "num_hidden_layers": layers}, "causal")


def teacher_config(spec):
    from transformers import AutoConfig, LlamaConfig

    if spec == "embedded":
        from gemini_ray.config import TeacherConfig
        from gemini_ray.models.build import resolve_teacher

        return AutoConfig.from_pretrained(resolve_teacher(TeacherConfig()))
    return LlamaConfig(**spec)


def split(n: int, ratio_t: float) -> tuple[int, int]:
    """Best integer (teachers, trainers) for n accelerators when teachers should hold `ratio_t` of them."""
    if n == 1:
        return 1, 1  # one accelerator time-shares both stages
    best = max(((t, n - t) for t in range(1, n)), key=lambda s: min(s[0] / ratio_t, s[1] / (1 - ratio_t)))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak per accelerator (H100/H200)")
    parser.add_argument("--mfu", type=float, default=0.4, help="utilisation both stages reach")
    parser.add_argument("--negatives", type=int, default=4, help="loss.num_negatives (K)")
    args = parser.parse_args()
    F = args.peak_tflops * 1e12 * args.mfu
    rows = []
    for name, (spec, student_layers) in PAIRS.items():
        cfg = teacher_config(spec)
        t_body, t_head = matmul_params(cfg, cfg.num_hidden_layers)
        s_body, s_head = matmul_params(cfg, student_layers)
        c_t = 2 * (t_body + t_head)
        c_s = 6 * ((1 + args.negatives / 2) * s_body + s_head)
        ratio_t = c_t / (c_t + c_s)
        row = {"pair": name, "teacher_gflop_per_token": c_t / 1e9, "student_gflop_per_token": c_s / 1e9,
               "teacher_share": ratio_t}
        for n in (1, 8, 64):
            n_t, n_s = split(n, ratio_t)
            tokens = F / (c_t + c_s) if n == 1 else min(n_t * F / c_t, n_s * F / c_s)
            row[f"split_{n}"] = f"{n_t}T/{n_s}S" if n > 1 else "shared"
            row[f"tokens_per_s_{n}"] = tokens
        rows.append(row)
    print(f"assumptions: {args.peak_tflops:g} TFLOP/s peak x {args.mfu:.0%} utilisation, K = {args.negatives}\n")
    print("| teacher -> student | teacher GFLOP/token | student GFLOP/token (train) | teacher share | "
          "1 acc. tokens/s | 8 acc. split, tokens/s | 64 acc. split, tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pair']} | {r['teacher_gflop_per_token']:.2f} | {r['student_gflop_per_token']:.2f} | "
              f"{r['teacher_share']:.0%} | {r['tokens_per_s_1']:,.0f} | {r['split_8']}, {r['tokens_per_s_8']:,.0f} | "
              f"{r['split_64']}, {r['tokens_per_s_64']:,.0f} |")
    print("\n" + json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
