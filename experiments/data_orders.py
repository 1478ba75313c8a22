"""The training's own run-to-run variation: the KD + CL and KD-only students of the ablation, retrained in
other data orders, side by side with the evaluation sets' bootstrap noise.

    python experiments/data_orders.py [--seeds 1 2 3] [--in-order ablate] [--config FILE] [--set KEY=VALUE] \
        [OVERRIDE ...]

With a causal teacher a run is deterministic whatever `train.seed` (docs/evaluation.md, "Seeds"): what varies between
runs that a user would call the same is which rows a run reads and in which order. For each seed S this
trains both students with `train.shuffle_first_pass=true train.seed=S` from the teacher-signal cache
(`label.use=require`: run `gemini-ray label` or `gemini-ray ablate` with the same config first; the cache
is looked up where the config keeps it, not in the store), as `<store>/kd-cl-sS` and `<store>/kd-only-sS`;
a student already there is reused when its run was this config (another is refused, as `distill` would).
`--in-order NAME` adds the ablation's own students (`<run.storage_path>/NAME-kd-cl` and `NAME-kd-only`: the
cache order) as the row `s0`. Then
`benchmarks/compare_students.py` evaluates them all beside the teacher and the untrained student (the
overrides after `--set` go to the evaluation only, e.g. `--set eval.rt_train=0 --set eval.rt_test=0`), each
KD + CL student paired against the KD-only student of its own order.

Writes `<store>/data_orders.md` and `.json` (the store: runs/data-orders, or runs/data-orders-<config name>
with --config): per order, perplexity, Lee, RT and the paired claims; per variant, the mean, the standard
deviation and the range across orders.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gemini_ray.commands.ablate import VARIANTS  # noqa: E402
from gemini_ray.config import build_config  # noqa: E402
from gemini_ray.paths import absolute, atomic_write_json, atomic_write_text, join, run_dir  # noqa: E402
from gemini_ray.training.run_record import check_resume  # noqa: E402

STUDENTS = {"kd-cl": "kd+cl", "kd-only": "kd-only"}
"""Name in the store -> the ablation's variant (its settings: `ablate.VARIANTS`)."""
METRICS = (("perplexity", "held-out ppl", "{:,.0f}"), ("lee_spearman", "Lee Spearman", "{:.3f}"),
           ("rt_accuracy", "RT accuracy", "{:.3f}"))


def _value(row: dict[str, Any], key: str) -> float:
    if key == "perplexity" and "lm" not in row:
        sys.exit("data_orders: the students have no held-out perplexity (data.val_fraction=0?): the spread needs it")
    return row["lm"][key] if key == "perplexity" else row[key]


def _interval(d: dict[str, Any], key: str = "difference") -> str:
    return f"{d[key]:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if key == "difference" else \
        f"{d[key]:.2f}x [{d['low']:.2f}, {d['high']:.2f}]"


def summarise(compare: dict[str, Any], orders: list[str]) -> tuple[dict[str, Any], str]:
    """(summary, markdown) of a compare.json whose students are named <student>-<order> for each of STUDENTS
    and `orders`, with the pairs kd-cl-<order>:kd-only-<order>."""
    rows, summary = compare["rows"], {"orders": orders, "variants": {}, "claims": {}}
    lines = ["| student | order | held-out ppl | Lee Spearman | RT accuracy | Lee vs untrained | RT vs untrained |",
             "|---|---|---|---|---|---|---|"]
    for student in STUDENTS:
        spread = {}
        for order in orders:
            name, minus = f"{student}-{order}", compare["minus_untrained"][f"{student}-{order}"]
            row = rows[name]
            lines.append(f"| {student} | {order} | " + " | ".join(fmt.format(_value(row, k)) for k, _, fmt in METRICS)
                         + f" | {_interval(minus['lee_spearman'])} | {_interval(minus['rt_accuracy'])} |")
        for key, _, _ in METRICS:
            values = [_value(rows[f"{student}-{order}"], key) for order in orders]
            spread[key] = {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                           "min": min(values), "max": max(values)}
        summary["variants"][student] = spread
    lines += ["", "| student | " + " | ".join(f"{title}: mean ± sd (range)" for _, title, _ in METRICS) + " |",
              "|---|---|---|---|"]
    for student, spread in summary["variants"].items():
        lines.append(f"| {student} | " + " | ".join(
            f"{fmt.format(spread[k]['mean'])} ± {fmt.format(spread[k]['sd'])} ({fmt.format(spread[k]['min'])}–"
            f"{fmt.format(spread[k]['max'])})" for k, _, fmt in METRICS) + " |")
    lines += ["", "| order | KD + CL − KD-only on Lee | KD + CL / KD-only perplexity | KD + CL − untrained on Lee | "
              "KD + CL − untrained on RT |", "|---|---|---|---|---|"]
    for order in orders:
        pair = compare["pairs"][f"kd-cl-{order}:kd-only-{order}"]
        minus = compare["minus_untrained"][f"kd-cl-{order}"]
        claims = {"kd_cl_above_kd_only_on_lee": pair["differences"]["lee_spearman"],
                  "kd_cl_over_kd_only_perplexity": pair["perplexity_ratio"],
                  "kd_cl_above_untrained_on_lee": minus["lee_spearman"],
                  "kd_cl_above_untrained_on_rt": minus["rt_accuracy"]}
        summary["claims"][order] = claims
        lines.append(f"| {order} | {_interval(claims['kd_cl_above_kd_only_on_lee'])} | "
                     f"{_interval(claims['kd_cl_over_kd_only_perplexity'], 'ratio')} | "
                     f"{_interval(claims['kd_cl_above_untrained_on_lee'])} | "
                     f"{_interval(claims['kd_cl_above_untrained_on_rt'])} |")
    return summary, "\n".join(lines) + "\n"


def _distill(store: Path, name: str, variant: str, seed: int, config: str | None, overrides: list[str]) -> str:
    """Train one student in its data order unless the store already holds it from this config; returns its
    directory. The cache is the one the config's own storage path holds."""
    base = build_config(config, overrides)
    cache_root = base.label.cache_root or join(absolute(base.run.storage_path), "signal_cache")
    settings = [f"run.storage_path={store}", f"run.name={name}", f"label.cache_root={cache_root}",
                "label.use=require", "train.shuffle_first_pass=true", f"train.seed={seed}",
                *[f"{k}={v}" for k, v in VARIANTS[variant].items()], *overrides]
    check_resume(build_config(config, settings), str(store / name))  # a store left by another config: refused
    student = store / name / "student"
    if not (student / "config.json").exists():
        subprocess.run([sys.executable, "-m", "gemini_ray.cli", "distill", *(["--config", config] if config else []),
                        *settings], check=True, cwd=ROOT)
    return str(student)


def split_seeds(values: list[str], overrides: list[str],
                parser: argparse.ArgumentParser) -> tuple[list[int], list[str]]:
    """`--seeds 1 2 train.lr=3e-4`: argparse gives --seeds every word up to the next option, so the words with
    '=' are taken back as overrides (after those typed before --seeds); the rest must be integers."""
    words = [value for value in values if "=" not in value]
    bad = [word for word in words if not word.lstrip("-").isdigit()]
    if bad:
        parser.error(f"--seeds: '{bad[0]}' is neither a seed (an integer) nor a key=value override")
    return [int(word) for word in words], [*overrides, *(value for value in values if "=" in value)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", default=["1", "2", "3"],
                        help="data-order seeds (default 1 2 3); key=value overrides may follow them")
    parser.add_argument("--in-order", default=None, metavar="NAME",
                        help="add the ablation's students runs/NAME-kd-cl and runs/NAME-kd-only as the order s0")
    parser.add_argument("--store", default=None, help="default: runs/data-orders[-<config name>]")
    parser.add_argument("--config", default=None, help="YAML config file, for every distill and the evaluation")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="eval_overrides",
                        help="a config override for the evaluation only (repeatable)")
    parser.add_argument("overrides", nargs="*", help="key=value, for every distill and the evaluation")
    args = parser.parse_args()
    args.seeds, args.overrides = split_seeds(args.seeds, args.overrides, parser)
    if len(set(args.seeds)) != len(args.seeds) or (0 in args.seeds and args.in_order):
        parser.error("--seeds: distinct seeds (0 is the name of the --in-order students when they are added)")
    if len(args.seeds) + bool(args.in_order) < 2:
        parser.error("at least two orders: a spread needs two runs")
    config = str(Path(args.config).resolve()) if args.config else None
    store = (ROOT / (args.store or "runs/data-orders" + (f"-{Path(config).stem}" if config else ""))).resolve()
    students: dict[str, str] = {}
    orders = []
    if args.in_order:
        orders.append("s0")
        storage = build_config(config, args.overrides).run.storage_path
        for student in STUDENTS:
            path = Path(run_dir(absolute(storage), f"{args.in_order}-{student}")) / "student"
            if not (path / "config.json").exists():
                parser.error(f"--in-order {args.in_order}: no student at {path}; run `gemini-ray ablate "
                             f"run.name={args.in_order}` first, or leave --in-order out")
            students[f"{student}-s0"] = str(path)
    for seed in args.seeds:
        orders.append(f"s{seed}")
        for student, variant in STUDENTS.items():
            students[f"{student}-s{seed}"] = _distill(store, f"{student}-s{seed}", variant, seed, config,
                                                      args.overrides)
    compare_dir = store / "compare"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_students.py"), "--out", str(compare_dir),
                    *(["--config", config] if config else []),
                    *[a for o in [*args.overrides, *args.eval_overrides] for a in ("--set", o)],
                    *[a for order in orders for a in ("--pair", f"kd-cl-{order}:kd-only-{order}")],
                    *[f"{name}={path}" for name, path in students.items()]], check=True, cwd=ROOT)
    summary, markdown = summarise(json.loads((compare_dir / "compare.json").read_text()), orders)
    atomic_write_json(store / "data_orders.json", {"seeds": args.seeds, "in_order": args.in_order, "config": config,
                                                   "overrides": args.overrides, "eval_overrides": args.eval_overrides,
                                                   **summary})
    atomic_write_text(store / "data_orders.md", markdown)
    print(markdown + f"({store / 'data_orders.md'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
