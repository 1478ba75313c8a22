"""How much faster the student's forward pass is than its teacher's, with an interval.

    python benchmarks/speed.py runs/quality/student [--rounds 30] [--batch 8x128 --batch 1x128] [--out FILE]

`gemini-ray eval` times each model alternately as one column of its report (the median of 3 rounds until
2026-12-05, of 10 since): on this 2-core machine that ratio read 2.31x to 2.89x for one architecture across
runs. This script settles it: per batch shape it runs `--rounds` rounds of `jobs.evaluate.forward_times`,
each timing the teacher and the student back to back on the same random batch (the order alternating
between rounds, so neither always runs on a warmer cache), and takes the ratio within each round (teacher
seconds / student seconds: a slow moment of the machine slows both). It reports the median ratio with a
95 % bootstrap interval over rounds, and each model's median tokens/s.

The teacher is the one the student was distilled from (its `gemini_ray.json`), or `--teacher`. Training does
not change the speed: any student of an architecture times the same. Run it on a quiet machine. Writes
`--out` (default `<student>/../speed.json`) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gemini_ray.evaluation.metrics import bootstrap_interval  # noqa: E402
from gemini_ray.jobs.evaluate import forward_times, load_model, read_student_meta  # noqa: E402
from gemini_ray.paths import atomic_write_json  # noqa: E402


def shape(text: str) -> tuple[int, int]:
    rows, sep, length = text.partition("x")
    if not sep or not rows.isdigit() or not length.isdigit() or int(rows) < 1 or int(length) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not ROWSxTOKENS with two positive integers (e.g. 8x128)")
    return int(rows), int(length)


def summarise(times: dict[str, list[float]], batch: tuple[int, int]) -> dict[str, object]:
    """Median per-round speedup with its bootstrap interval, and each model's median tokens/s."""
    ratio = np.asarray(times["teacher"]) / np.asarray(times["student"])
    lo, hi = bootstrap_interval(lambda i: float(np.median(ratio[i])), len(ratio))
    tokens = batch[0] * batch[1]
    return {"batch": list(batch), "rounds": len(ratio), "speedup": float(np.median(ratio)), "speedup_ci": [lo, hi],
            "speedup_range": [float(ratio.min()), float(ratio.max())],
            "teacher_tokens_per_s": tokens / float(np.median(times["teacher"])),
            "student_tokens_per_s": tokens / float(np.median(times["student"])),
            "seconds": times}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("student", help="an exported student directory (…/student)")
    parser.add_argument("--teacher", default=None, help="the teacher (default: the one the student records)")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per batch shape (default 30)")
    parser.add_argument("--batch", type=shape, action="append", default=None,
                        help="ROWSxTOKENS, repeatable (default 8x128, the evaluation's)")
    parser.add_argument("--out", default=None, help="JSON to write (default <student>/../speed.json)")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error(f"--rounds {args.rounds}: give at least 2 rounds for an interval (30 is the default)")
    if not (Path(args.student).expanduser() / "config.json").is_file():
        parser.error(f"{args.student} is not a model directory (no config.json): give a distilled student, "
                     "e.g. runs/quality/student")
    teacher_source = args.teacher or read_student_meta(args.student).get("teacher")
    if not teacher_source:
        parser.error(f"{args.student} records no teacher (no gemini_ray.json): name one with --teacher")
    student = load_model("student", args.student)
    teacher = load_model("teacher", teacher_source)
    for m in (student, teacher):
        m.model.eval()
    results = [summarise(forward_times([teacher, student], batch, args.rounds), batch)
               for batch in args.batch or [(8, 128)]]
    report = {"student": str(args.student), "teacher": teacher_source, "torch_threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "results": results}
    out = args.out or str(Path(args.student).expanduser().resolve().parent / "speed.json")
    atomic_write_json(out, report)
    print(f"teacher {teacher_source}\nstudent {args.student} ({torch.get_num_threads()} torch threads)\n")
    print("| batch | rounds | teacher tokens/s | student tokens/s | speedup (median of rounds) [95 % CI] | range |")
    print("|---|---|---|---|---|---|")
    for r in results:
        lo, hi = r["speedup_ci"]
        print(f"| {r['batch'][0]}x{r['batch'][1]} | {r['rounds']} | {r['teacher_tokens_per_s']:.0f} | "
              f"{r['student_tokens_per_s']:.0f} | {r['speedup']:.2f}x [{lo:.2f}, {hi:.2f}] | "
              f"{r['speedup_range'][0]:.2f}–{r['speedup_range'][1]:.2f} |")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
