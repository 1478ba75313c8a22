"""Trained students side by side with their untrained initialisation, on the evaluation protocol, with paired
95 % bootstrap intervals (`compare_pair`): each student against the untrained one, and each against the
reference student (the first named), and any further pairs named with --pair, on held-out perplexity (a ratio),
Lee and RT (differences).

    python benchmarks/compare_students.py --config configs/quality.yaml --out runs/compare \
        lambda-0.5=runs/q05/student lambda-0.8=runs/q08/student

    # two seeds of two configs, each config against the other at the same seed
    python benchmarks/compare_students.py --out runs/compare --pair b-s1:a-s1 --pair b-s2:a-s2 \
        a-s1=runs/a1/student b-s1=runs/b1/student a-s2=runs/a2/student b-s2=runs/b2/student

    # the Rotten Tomatoes probe on all 12,808 snippets (configs/quality.yaml's protocol) for the default students
    python benchmarks/compare_students.py --out runs/compare --set eval.rt_train=0 --set eval.rt_test=0 \
        kd-cl=runs/ablate-kd-cl/student

The untrained student is derived from the config (the teacher's copied layers, as `gemini-ray ablate` makes
it). Writes <out>/compare.json and prints a markdown table and the intervals. A file, not a here-document:
the evaluation measures peak memory in spawned processes, which re-import the main module by its path."""

from __future__ import annotations

import argparse
import sys
from os.path import join

from gemini_ray.config import build_config
from gemini_ray.jobs.evaluate import compare_pair, evaluate_students, markdown_table
from gemini_ray.paths import atomic_write_json

UNTRAINED = "untrained"


def _students(pairs: list[str]) -> dict[str, str]:
    students = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            sys.exit(f"compare_students: '{pair}' is not NAME=STUDENT_DIR (e.g. lambda-0.8=runs/q08/student)")
        if name == UNTRAINED or name in students:
            sys.exit(f"compare_students: the name '{name}' is used twice or reserved; give each student its own")
        students[name] = path
    return students


def _pairs(pairs: list[str], students: dict[str, str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        name, sep, other = pair.partition(":")
        if not sep or name not in students or other not in students or name == other:
            sys.exit(f"compare_students: --pair '{pair}' is not NAME:OTHER with two different named students "
                     f"(named: {', '.join(students)})")
        out.append((name, other))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="the config the students were trained with")
    parser.add_argument("--out", required=True, help="directory for compare.json and the untrained student")
    parser.add_argument("--pair", action="append", default=[], metavar="NAME:OTHER",
                        help="also compare NAME against OTHER (repeatable), e.g. the same seed of two configs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config key for the evaluation (repeatable), e.g. eval.rt_test=0")
    parser.add_argument("students", nargs="+", metavar="NAME=STUDENT_DIR")
    args = parser.parse_args()
    students = _students(args.students)
    pairs = _pairs(args.pair, students)
    cfg = build_config(args.config, args.overrides)

    from gemini_ray.cluster.session import start_session
    from gemini_ray.jobs.distill_run import export_untrained

    untrained = export_untrained(cfg, start_session(cfg), join(args.out, UNTRAINED, "student"))
    teacher, rows, _ = evaluate_students(cfg, {UNTRAINED: untrained, **students})
    reference = next(iter(students))
    print(markdown_table({"teacher": teacher, **rows}))
    result = {"teacher": teacher, "rows": {}, "minus_untrained": {}, "perplexity_over_reference": {}, "pairs": {}}
    for name in students:
        against_untrained, lines = compare_pair(name, UNTRAINED, rows[name], rows[UNTRAINED])
        result["minus_untrained"][name] = against_untrained["differences"]
        if name != reference:
            against_reference, more = compare_pair(name, reference, rows[name], rows[reference])
            result["perplexity_over_reference"][name] = against_reference["perplexity_ratio"]
            lines += more
        print("\n".join(lines))
    for name, other in pairs:
        against, lines = compare_pair(name, other, rows[name], rows[other])
        result["pairs"][f"{name}:{other}"] = against
        print("\n".join(lines))
    result["rows"] = {name: {k: v for k, v in row.items() if k != "items"} for name, row in rows.items()}
    atomic_write_json(join(args.out, "compare.json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
