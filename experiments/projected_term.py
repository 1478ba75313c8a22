"""Does a projected representation term move Rotten Tomatoes? A plain-loop experiment, not a library feature.

    python experiments/projected_term.py --store runs NAME WEIGHT FORM [KEY=VALUE ...]
    python benchmarks/compare_students.py --out runs/projected/compare --set eval.rt_train=0 --set eval.rt_test=0 \
        base=runs/projected/base/student cos1=runs/projected/cos1/student

The RT metric is a linear probe on the student's mean-pooled embedding. If a learned linear map W took the
student's pooled span embedding z_S to the teacher's z_T, any linear probe on the teacher's embedding would
have an equal one on the student's: so a term that trains W z_S toward z_T should carry the teacher's linearly
readable features (sentiment among them) into the student, where the cosine form (W fixed to the identity)
pulls the student's vectors themselves and costs Lee. This trains the config's student on the cache's rows in
first-pass order (the library's compute_loss, optimizer and schedule: with WEIGHT 0 it reproduces `gemini-ray
distill label.use=require` to the digit) plus WEIGHT x the term, with W (H_S x H_T, identity-initialised, its
own AdamW at 1e-3) discarded after training. FORM 'cos': 1 − cos(W z_S, z_T); 'mse': ‖W z_S − z_T‖² over the
teacher embeddings' variance. Writes <store>/projected/NAME/student (an exported student that `eval` and
compare_students read). Measured 2026-12-04 on the demo: no RT gain (docs/log.md, 2026-12-04).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # train_stage stays a benchmark
from train_stage import ROOT, cached_batches  # noqa: E402


def projected_loss(student: torch.Tensor, teacher: torch.Tensor, proj: torch.nn.Linear, form: str) -> torch.Tensor:
    mapped, teacher = proj(student.float()), teacher.float()
    if form == "cos":
        return (1 - F.cosine_similarity(mapped, teacher, dim=-1)).mean()
    return F.mse_loss(mapped, teacher) / teacher.var(dim=0).mean().clamp(min=1e-8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="runs", help="run.storage_path holding the cache (gemini-ray label)")
    parser.add_argument("name")
    parser.add_argument("weight", type=float, help="ν, the term's weight (0: the library's loss alone)")
    parser.add_argument("form", choices=["cos", "mse"])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()

    from gemini_ray.config import build_config, config_to_dict
    from gemini_ray.models.build import DistillStudent, build_student, teacher_meta
    from gemini_ray.models.export import save_student
    from gemini_ray.training.train_step import compute_loss, make_optimizer, set_lr

    store = (ROOT / args.store).resolve()
    cfg = build_config(None, [f"run.storage_path={store}", *args.overrides])
    caches = sorted((store / "signal_cache").glob("*/manifest.json"))
    if len(caches) != 1:
        sys.exit(f"projected_term: expected one cache under {store}/signal_cache, found {len(caches)}; "
                 f"run `gemini-ray label run.storage_path={args.store}` in a store of its own")
    teacher = teacher_meta(cfg.teacher)
    torch.manual_seed(cfg.train.seed)
    model = build_student(teacher, cfg.student, seed=cfg.train.seed)
    width = teacher.config.hidden_size

    class KeepSpans(DistillStudent):  # the anchor and positive spans' pooled embeddings, with their gradient
        def forward(self, ids, att, num_labelled):
            logits, pooled = super().forward(ids, att, num_labelled)
            self.spans = pooled[:num_labelled]
            return logits, pooled

    student, optimizer = KeepSpans(model).train(), make_optimizer(model, cfg.train)
    proj = torch.nn.Linear(model.config.hidden_size, width)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(width, model.config.hidden_size))
        proj.bias.zero_()
    proj_optimizer = torch.optim.AdamW(proj.parameters(), lr=1e-3, weight_decay=0.0)
    t0 = time.perf_counter()
    batches = cached_batches(caches[0].parent, cfg.train.batch_size, cfg.train.max_steps, cfg.loss.num_negatives)
    for step, batch in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        proj_optimizer.zero_grad(set_to_none=True)
        set_lr(optimizer, step, cfg.train)
        parts = compute_loss(student, batch, cfg.loss, across_ranks=False)
        t_emb = batch["teacher_embedding"]
        term = projected_loss(student.spans, torch.cat([t_emb[:, 0], t_emb[:, 1]]), proj, args.form)
        (parts.total + args.weight * term if args.weight > 0 else parts.total).backward()
        torch.nn.utils.clip_grad_norm_([*student.parameters(), *proj.parameters()], cfg.train.grad_clip)
        optimizer.step()
        proj_optimizer.step()
        if step % 10 == 0 or step == cfg.train.max_steps - 1:
            print(f"step {step}: total {parts.total.item():.3f}, kd {parts['kd'].item():.3f}, cl {parts['cl'].item():.3f}, "
                  f"rep {parts['rep'].item():.4f}, projected {term.item():.4f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    out = store / "projected" / args.name / "student"
    as_dict = config_to_dict(cfg)
    meta = {"teacher": teacher.source, "kind": teacher.kind, "data": as_dict["data"], "loss": as_dict["loss"],
            "projected_term": vars(args)}
    save_student(model, str(out), teacher.source, meta)
    print(f"projected_term: {out}\n{json.dumps(vars(args))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
