"""Teacher backend parity: the 'hf' and 'vllm' backends on the same rows, side by side in one run.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python benchmarks/teacher_parity.py \
        [--examples 128] [--span-length 32] [--top-k 16] [--batch 32] [--dtype auto] [--threads 2] [--gpu]

Why: `teacher.backend=vllm` must label like `teacher.backend=hf` (same teacher, same spans), or a cache
labelled by one trains a different student than the other's. This measures how close, and how fast each is.

What: `--examples` (anchor, positive) pairs of `--span-length` tokens from the embedded corpus (gensim's Lee
background news), cut by `SpanPairer` with the embedded teacher's tokenizer, in calls of `--batch` examples.
Each backend in turn (hf first, then vllm; never both loaded, so neither slows the other and on a GPU both
fit) is built (start-up seconds), called once on the first batch (warm-up, not timed), then on every batch
(timed: steady-state teacher tokens/s = real tokens / seconds inside the calls). The timed outputs are
compared over real positions (attention_mask = 1):

* top-1 agreement: the two backends' highest-scoring next-token ids are equal.
* top-k overlap: |ids_hf ∩ ids_vllm| / k, averaged.
* KL(hf‖vllm) on the shared support S = ids_hf ∩ ids_vllm (nats): each side's values at the ids in S,
  softmaxed over S alone (so renormalised to S), then Σ_{i∈S} p_i log(p_i / q_i). hf gives raw logits and
  vllm log-probs; both are a shift apart, which a softmax over S removes. Positions with S empty are
  counted apart, not averaged in (none are expected). Mean and 99th percentile.
* |Δ top-k mass|: |topk_mass_hf - topk_mass_vllm|, the probability the k ids hold at T = 1 (so also the
  tail mass difference), averaged.
* embedding cosine: cos(embedding_hf, embedding_vllm) per span with a real token; mean and minimum.

Targets (from the backend issue): top-1 ≥ 0.98 and mean top-k overlap ≥ 0.9; printed PASS/MISS. Exits 0
unless a backend fails to run. `--gpu`: both backends with `--num-gpus` GPUs each (hf: one actor's GPUs,
spread by accelerate's device map beyond one; vllm: tensor parallel over them); the first `--num-gpus`
visible GPUs are used. `--backends hf`: one backend only (throughput, no parity; benchmarks/gpu.py runs the
two-GPU hf teacher so). Writes benchmarks/results/teacher_parity.json (`_gpu` with --gpu, or --out) and
prints a markdown table for the README.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"top1_agreement": 0.98, "topk_overlap": 0.9}
"""Lower bounds from the backend issue."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=128, help="(anchor, positive) pairs: 2 spans each")
    parser.add_argument("--span-length", type=int, default=32, help="tokens per span (data.span_length)")
    parser.add_argument("--top-k", type=int, default=16, help="teacher.top_k")
    parser.add_argument("--batch", type=int, default=32, help="examples per backend call")
    parser.add_argument("--dtype", default="auto", help="teacher.dtype (auto: bf16 on a GPU, fp32 on CPU)")
    parser.add_argument("--threads", type=int, default=2, help="teacher.torch_threads on CPU (both backends)")
    parser.add_argument("--gpu", action="store_true", help="run both backends on CUDA")
    parser.add_argument("--num-gpus", type=int, default=1, help="with --gpu: GPUs per backend")
    parser.add_argument("--backends", default="hf,vllm", help="comma-separated, run in this order")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/teacher_parity[_gpu].json")
    args = parser.parse_args()
    args.backends = [b for b in args.backends.split(",") if b]
    if not set(args.backends) <= {"hf", "vllm"} or not args.backends:
        parser.error(f"--backends: hf and/or vllm, got {args.backends}")
    return args


def make_batches(source: str, examples: int, span_length: int, batch: int) -> list[dict[str, np.ndarray]]:
    """The first `examples` complete pairs of the embedded corpus, in calls of `batch` examples each:
    input_ids, attention_mask (E, 2, L)."""
    from gemini_ray.data.corpus import gensim_test_data
    from gemini_ray.data.spans import STATUS_OK, SpanPairer

    lines = (gensim_test_data() / "lee_background.cor").read_text(encoding="utf-8").splitlines()
    texts = np.array([t for t in lines if t.strip()], dtype=object)
    pairs = SpanPairer(source, "causal", span_length)({"text": texts})
    keep = np.flatnonzero(pairs["status"] == STATUS_OK)[:examples]
    if len(keep) < examples:
        print(f"[teacher_parity] the corpus gives {len(keep)} pairs, fewer than --examples {examples}", file=sys.stderr)
    rows = {k: pairs[k][keep] for k in ("doc_id", "input_ids", "attention_mask")}
    return [{k: v[s : s + batch] for k, v in rows.items()} for s in range(0, len(keep), batch)]


def teacher_cfg(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    """The `teacher` config section each backend is built from: the same but for the backend's own keys."""
    from gemini_ray.config import TeacherConfig

    gpus = args.num_gpus if args.gpu else 0
    parallel = {"tensor_parallel_size": gpus} if backend == "vllm" and gpus > 1 else {}
    cfg = TeacherConfig(backend=backend, top_k=args.top_k, dtype=args.dtype, num_gpus=float(gpus),
                        torch_threads=args.threads, batch_size=2 * args.batch, **parallel)
    return dataclasses.asdict(cfg)


def run_backend(name: str, cfg: dict[str, Any], batches: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Build one backend, warm it up on the first batch, then time it over every batch. Returns its
    start-up and steady-state numbers and its outputs, concatenated over the batches."""
    from gemini_ray.data.teacher_stage import teacher_backend

    t0 = time.perf_counter()
    backend = teacher_backend(name)(cfg)
    startup = time.perf_counter() - t0
    backend(batches[0])  # warm-up: kernels, CUDA graphs, allocator; not timed
    outs, call_s = [], []
    for batch in batches:
        t0 = time.perf_counter()
        outs.append(backend(batch))
        call_s.append(time.perf_counter() - t0)
    merged = {k: np.concatenate([o[k] for o in outs]) for k in ("topk_ids", "topk_logits", "topk_mass",
                                                                  "embedding", "teacher_tokens", "attention_mask")}
    tokens = int(merged["teacher_tokens"].sum())
    info = {"startup_s": startup, "steady_s": sum(call_s), "tokens": tokens,
            "tokens_per_s": tokens / sum(call_s), "call_s": call_s, "dtype": _dtype(backend),
            "devices": sorted({str(d) for d in (getattr(getattr(backend, "model", None), "hf_device_map", None)
                                                or {}).values()})}
    if hasattr(backend, "close"):
        backend.close()  # vllm: stop the engine processes now, not at interpreter exit
    del backend
    gc.collect()
    _free_cuda()
    return {"info": info, "out": merged}


def _dtype(backend: Any) -> str:
    if hasattr(backend, "dtype"):
        return str(backend.dtype)  # hf
    return str(backend.generator.llm_engine.model_config.dtype)  # vllm


def _free_cuda() -> None:
    """Hand the last backend's GPU memory back before the next one starts (vLLM sizes itself on free memory)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def shared_support_kl(ids_p: np.ndarray, val_p: np.ndarray, ids_q: np.ndarray, val_q: np.ndarray) -> np.ndarray:
    """KL(p‖q) over the ids both top-k lists hold (see the module docstring).

    Args:
        ids_p, val_p, ids_q, val_q: (N, k) ids and logits (or log-probs) of each side, highest first.
    Returns:
        (N,) float64 KL in nats; NaN where the two lists share no id.
    """
    match = ids_p[:, :, None] == ids_q[:, None, :]  # (N, k, k)
    shared = match.any(-1)  # (N, k): p's i-th id is also among q's
    q_at_p = np.take_along_axis(val_q, match.argmax(-1), axis=-1)  # (N, k): q's value at p's i-th id
    lp = _masked_log_softmax(val_p.astype(np.float64), shared)  # (N, k)
    lq = _masked_log_softmax(q_at_p.astype(np.float64), shared)  # (N, k)
    with np.errstate(invalid="ignore"):  # -inf - -inf off the support; np.where drops it
        kl = np.where(shared, np.exp(lp) * (lp - lq), 0.0).sum(-1)  # (N,)
    return np.where(shared.any(-1), kl, np.nan)


def _masked_log_softmax(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """log-softmax of x (N, k) over the entries where mask is set; -inf elsewhere (and on empty rows)."""
    x = np.where(mask, x, -np.inf)
    top = np.max(x, -1, keepdims=True)  # (N, 1)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))


def parity(hf: dict[str, np.ndarray], vl: dict[str, np.ndarray]) -> dict[str, Any]:
    """The metrics of the module docstring over real positions (and spans) of the two backends' outputs."""
    k = hf["topk_ids"].shape[-1]
    real = hf["attention_mask"].reshape(-1) > 0  # (N,) N = E * 2 * L
    ids_h, ids_v = (o["topk_ids"].reshape(-1, k)[real] for o in (hf, vl))  # (n, k)
    val_h, val_v = (o["topk_logits"].reshape(-1, k)[real] for o in (hf, vl))  # (n, k)
    overlap = (ids_h[:, :, None] == ids_v[:, None, :]).any(-1).sum(-1) / k  # (n,)
    kl = shared_support_kl(ids_h, val_h, ids_v, val_v)  # (n,)
    mass_diff = np.abs(hf["topk_mass"].reshape(-1)[real] - vl["topk_mass"].reshape(-1)[real])  # (n,)
    H = hf["embedding"].shape[-1]
    spans = hf["attention_mask"].reshape(-1, hf["attention_mask"].shape[-1]).sum(-1) > 0  # (S,)
    e_h, e_v = (o["embedding"].reshape(-1, H)[spans].astype(np.float64) for o in (hf, vl))  # (s, H)
    cos = (e_h * e_v).sum(-1) / np.maximum(np.linalg.norm(e_h, axis=-1) * np.linalg.norm(e_v, axis=-1), 1e-12)
    return {
        "positions": int(real.sum()), "spans": int(spans.sum()),
        "top1_agreement": float((ids_h[:, 0] == ids_v[:, 0]).mean()),
        "topk_overlap": float(overlap.mean()),
        "topk_overlap_min": float(overlap.min()),
        "kl_shared_mean": float(np.nanmean(kl)), "kl_shared_p99": float(np.nanpercentile(kl, 99)),
        "kl_no_shared_positions": int(np.isnan(kl).sum()),
        "topk_mass_abs_diff_mean": float(mass_diff.mean()), "topk_mass_abs_diff_max": float(mass_diff.max()),
        "embedding_cosine_mean": float(cos.mean()), "embedding_cosine_min": float(cos.min()),
        "teacher_tokens_equal": bool(np.array_equal(hf["teacher_tokens"], vl["teacher_tokens"])),
    }


def table(result: dict[str, Any]) -> str:
    """The README's markdown table: metric | value | target."""
    k, b = result["top_k"], result["backends"]
    rows = []
    if "parity" in result:
        p, ok = result["parity"], result["targets_met"]
        target = {m: f"≥ {t} {'PASS' if ok[m] else 'MISS'}" for m, t in TARGETS.items()}
        rows += [
            ("top-1 agreement", f"{p['top1_agreement']:.4f}", target["top1_agreement"]),
            (f"mean top-{k} overlap", f"{p['topk_overlap']:.4f} (min {p['topk_overlap_min']:.3f})",
             target["topk_overlap"]),
            ("KL(hf‖vllm), shared support, nats", f"{p['kl_shared_mean']:.2e} (p99 {p['kl_shared_p99']:.2e})", ""),
            (f"mean \\|Δ top-{k} mass\\|",
             f"{p['topk_mass_abs_diff_mean']:.2e} (max {p['topk_mass_abs_diff_max']:.2e})", ""),
            ("span embedding cosine", f"{p['embedding_cosine_mean']:.5f} (min {p['embedding_cosine_min']:.5f})", ""),
        ]
    for name, info in b.items():
        rows.append((f"{name}: teacher tokens/s, steady", f"{info['tokens_per_s']:.0f}", ""))
        rows.append((f"{name}: start-up s", f"{info['startup_s']:.1f}", ""))
    lines = ["| metric | value | target |", "|---|---|---|"] + [f"| {m} | {v} | {t} |" for m, v, t in rows]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.gpu:  # the first --num-gpus visible GPUs: accelerate's "auto" map would spread over all of them
        visible = os.environ.get("CUDA_VISIBLE_DEVICES") or ",".join(str(i) for i in range(args.num_gpus))
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(visible.split(",")[: args.num_gpus])
    from gemini_ray.models.build import resolve_teacher

    source = resolve_teacher()
    batches = make_batches(source, args.examples, args.span_length, args.batch)
    runs = {}
    for name in args.backends:
        try:
            runs[name] = run_backend(name, teacher_cfg(args, name), batches)
        except Exception as exc:  # noqa: BLE001  (a backend that cannot run is this benchmark's one failure)
            print(f"[teacher_parity] the {name} backend failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    result: dict[str, Any] = {
        "teacher": source, "device": "cuda" if args.gpu else "cpu", "num_gpus": args.num_gpus if args.gpu else 0,
        "examples": sum(len(b["doc_id"]) for b in batches), "span_length": args.span_length, "top_k": args.top_k,
        "batch_examples": args.batch, "threads": args.threads, "dtype_requested": args.dtype,
        "backends": {name: r["info"] for name, r in runs.items()},
    }
    if {"hf", "vllm"} <= set(runs):
        result["parity"] = parity(runs["hf"]["out"], runs["vllm"]["out"])
        result["targets"] = TARGETS
        result["targets_met"] = {m: result["parity"][m] >= t for m, t in TARGETS.items()}
    result["table_markdown"] = table(result)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"teacher_parity{'_gpu' if args.gpu else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(result["table_markdown"])
    print(f"({result['examples']} examples, {result['backends'][args.backends[0]]['tokens']} real tokens, "
          f"{result['device']}, dtype {', '.join(i['dtype'] for i in result['backends'].values())}; written to {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
