"""The last step of experiments/search_vs_default.sh: evaluate the search's best config and the default
config side by side, with the paired bootstraps of best minus default on Lee and RT and of the perplexity
ratio best / default.

    python experiments/search_vs_default.py STORE

A file, not a here-document: the evaluation measures peak memory in spawned processes, which re-import
the main module by its path (a script read from stdin has none)."""

import sys

from gemini_ray.config import build_config
from gemini_ray.jobs.evaluate import compare_pair, evaluate_students, markdown_table
from gemini_ray.paths import atomic_write_json


def main(store: str) -> None:
    cfg = build_config(None, [f"run.storage_path={store}"])
    teacher, rows, _ = evaluate_students(cfg, {"search best": f"{store}/search-best/student",
                                               "default": f"{store}/default/student"})
    compared, lines = compare_pair("search best", "default", rows["search best"], rows["default"])
    with open(f"{store}/search/best_config.yaml") as f:
        best = f.readline().strip()
    print(best)
    print(markdown_table({"teacher": teacher, **rows}))
    print("\n".join(lines))
    slim = {name: {k: v for k, v in row.items() if k != "items"} for name, row in rows.items()}
    atomic_write_json(f"{store}/search_vs_default.json", {"best": best, "teacher": teacher, "rows": slim,
                                                          "best_minus_default": compared["differences"],
                                                          "perplexity_best_over_default": compared["perplexity_ratio"]})


if __name__ == "__main__":
    main(sys.argv[1])
