"""Teacher stage: the Ray Data actor pool vs the same model on the same batches in a plain loop.

    python benchmarks/teacher_stage.py [--examples 192] [--threads 2]

Both sides run the embedded teacher (SmolLM2-135M, fp32) with the same torch thread count on the same
examples from the demo corpus, one after the other in this process's run. Reported:
* tokens/s of each, end to end (Ray includes starting the actor and loading the model; the loop
  includes loading the model) and in steady state (first batch start to last batch end);
* teacher-signal bytes per token, measured on the arrays that leave the actor.
Writes benchmarks/results/teacher_stage.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class TimedLabeler:
    """TeacherLabeler that also records when each batch started and ended (wall clock)."""

    def __init__(self, teacher_cfg):
        from gemini_ray.data.teacher_stage import TeacherLabeler

        self.inner = TeacherLabeler(teacher_cfg)

    def __call__(self, batch):
        t0 = time.time()
        out = self.inner(batch)
        n = len(out["doc_id"])
        out["t_start"] = np.full(n, t0)
        out["t_end"] = np.full(n, time.time())
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=192, help="examples (2 spans of 32 tokens each)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    parser.add_argument("--batch-spans", type=int, default=None, help="spans per forward (default: teacher.batch_size)")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/teacher_stage_<threads>t.json")
    parser.add_argument("--gpu", action="store_true", help="one teacher on one GPU on both sides, in teacher.dtype")
    parser.add_argument("--dtype", default="auto", help="teacher.dtype (auto: bf16 on a GPU, fp32 on CPU)")
    args = parser.parse_args()

    import ray
    import ray.data
    import torch

    from gemini_ray.config import Config
    from gemini_ray.data.cache import signal_bytes_per_token
    from gemini_ray.data.corpus import gensim_test_data
    from gemini_ray.data.spans import STATUS_OK, SpanPairer
    from gemini_ray.models.build import resolve_teacher

    cfg = Config()
    tcfg = dataclasses.replace(cfg.teacher, torch_threads=args.threads, num_cpus=1.0, dtype=args.dtype,
                               num_gpus=1.0 if args.gpu else 0.0, batch_size=args.batch_spans or cfg.teacher.batch_size)
    source = resolve_teacher(tcfg)
    texts = (gensim_test_data() / "lee_background.cor").read_text(encoding="utf-8").splitlines()
    pairs = SpanPairer(source, "causal", cfg.data.span_length)({"text": np.array(texts, dtype=object)})
    keep = np.flatnonzero(pairs["status"] == STATUS_OK)[: args.examples]
    examples = {k: v[keep] for k, v in pairs.items() if k != "status"}
    per_batch = tcfg.batch_size // 2
    batches = [{k: v[i : i + per_batch] for k, v in examples.items()} for i in range(0, len(keep), per_batch)]
    tokens = int(examples["attention_mask"].sum())
    teacher_cfg = dataclasses.asdict(tcfg)

    # --- plain loop ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    labeler = TimedLabeler(teacher_cfg)
    torch.set_num_threads(args.threads)
    t_load = time.perf_counter() - t0
    labeler_dtype = labeler.inner.dtype
    loop_out = [labeler(b) for b in batches]
    loop_total = time.perf_counter() - t0
    loop_steady = loop_out[-1]["t_end"][0] - loop_out[0]["t_start"][0]
    loop_compute = sum(o["t_end"][0] - o["t_start"][0] for o in loop_out)

    # --- Ray Data actor pool ----------------------------------------------------------------------
    del labeler
    if args.gpu:
        torch.cuda.empty_cache()
    ray.init(num_cpus=2, num_gpus=1 if args.gpu else 0, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.from_items([{k: v[i] for k, v in examples.items()} for i in range(len(keep))]).materialize()
    t0 = time.perf_counter()
    labelled = ds.map_batches(TimedLabeler, fn_constructor_kwargs={"teacher_cfg": teacher_cfg},
                              compute=ray.data.ActorPoolStrategy(size=1), batch_size=per_batch,
                              num_cpus=tcfg.num_cpus, num_gpus=tcfg.num_gpus, batch_format="numpy").materialize()
    ray_total = time.perf_counter() - t0
    stamps = labelled.select_columns(["t_start", "t_end"]).to_pandas()
    ray_steady = stamps["t_end"].max() - stamps["t_start"].min()
    spans = stamps.drop_duplicates()  # one row per batch
    ray_compute = float((spans["t_end"] - spans["t_start"]).sum())
    sample = labelled.take_batch(per_batch, batch_format="numpy")
    sample_tokens = int(sample["attention_mask"].sum())
    signal = sum(sample[k].nbytes for k in ("topk_ids", "topk_logits", "topk_mass", "embedding"))
    ray.shutdown()

    result = {
        "teacher": source, "examples": len(keep), "tokens": tokens, "torch_threads": args.threads,
        "device": "cuda" if args.gpu else "cpu", "dtype": str(labeler_dtype),
        "top_k": tcfg.top_k, "span_length": cfg.data.span_length, "batch_spans": tcfg.batch_size,
        "plain_loop": {"model_load_s": t_load, "total_s": loop_total, "steady_s": loop_steady, "compute_s": loop_compute,
                       "batch_s": [float(o["t_end"][0] - o["t_start"][0]) for o in loop_out],
                       "tokens_per_s_total": tokens / loop_total, "tokens_per_s_steady": tokens / loop_steady},
        "ray_actor_pool": {"total_s": ray_total, "steady_s": ray_steady, "compute_s": ray_compute,
                           "batch_s": sorted((spans["t_end"] - spans["t_start"]).tolist()),
                           "tokens_per_s_total": tokens / ray_total, "tokens_per_s_steady": tokens / ray_steady},
        "ratio_total": loop_total / ray_total,
        "ratio_steady": loop_steady / ray_steady,
        "ratio_compute": loop_compute / ray_compute,
        "signal_bytes_per_token_measured": signal / sample_tokens,
        "signal_bytes_per_token_formula": signal_bytes_per_token(tcfg.top_k, 576, cfg.data.seq_length),
        "full_distribution_bytes_per_token": 49152 * 4,
    }
    out = Path(args.out or Path(__file__).parent / "results" / (f"teacher_stage_{args.threads}t.json" if not args.gpu
                                                                else "teacher_stage_gpu.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    r, p = result["ray_actor_pool"], result["plain_loop"]
    print(f"| measure | plain loop | Ray Data actor pool | Ray / loop |\n|---|---|---|---|\n"
          f"| tokens/s, end to end (incl. model load) | {p['tokens_per_s_total']:.0f} | {r['tokens_per_s_total']:.0f} "
          f"| {result['ratio_total']:.2f} |\n"
          f"| tokens/s, steady state | {p['tokens_per_s_steady']:.0f} | {r['tokens_per_s_steady']:.0f} "
          f"| {result['ratio_steady']:.2f} |\n"
          f"| seconds inside the forward passes | {loop_compute:.1f} | {ray_compute:.1f} "
          f"| {result['ratio_compute']:.2f} |\n"
          f"| teacher signal, bytes/token | | {result['signal_bytes_per_token_measured']:.0f} "
          f"(full distribution: {result['full_distribution_bytes_per_token']:,}) | |")
    print(f"({tokens} tokens, {len(keep)} examples, {args.threads} torch threads; written to {out})")


if __name__ == "__main__":
    main()
