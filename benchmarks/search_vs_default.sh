#!/usr/bin/env bash
# Does a search find a better config than the default? Label the demo corpus once, search
# tune_spaces/demo_search.yaml on the cache, train the best trial's config and the default config from the
# same cache, and evaluate both side by side: the paired bootstrap of best minus default on Lee and RT
# says whether the difference is beyond the evaluation sets' noise.
#   bash benchmarks/search_vs_default.sh          (uses .venv; about 45 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
STORE=${STORE:-runs/search-vs-default}
$BIN/gemini-ray label run.storage_path=$STORE
$BIN/gemini-ray tune run.storage_path=$STORE tune.space=tune_spaces/demo_search.yaml tune.name=search
$BIN/gemini-ray distill --config $STORE/search/best_config.yaml run.storage_path=$STORE run.name=search-best \
    label.use=require
$BIN/gemini-ray distill run.storage_path=$STORE run.name=default label.use=require
$BIN/python - "$STORE" <<'PY'
import json, sys

from gemini_ray.config import build_config
from gemini_ray.evaluation.run import evaluate_students, markdown_table, paired_differences
from gemini_ray.paths import atomic_write_json

store = sys.argv[1]
cfg = build_config(None, [f"run.storage_path={store}"])
teacher, rows, _ = evaluate_students(cfg, {"search best": f"{store}/search-best/student",
                                           "default": f"{store}/default/student"})
paired = paired_differences(rows["search best"], rows["default"])
best = open(f"{store}/search/best_config.yaml").readline().strip()
print(best)
print(markdown_table({"teacher": teacher, **rows}))
for key, d in paired.items():
    verdict = "beyond noise" if d["beyond_noise"] else "noise"
    print(f"search best - default, {key}: {d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] {verdict}")
slim = {name: {k: v for k, v in row.items() if k != "items"} for name, row in rows.items()}
atomic_write_json(f"{store}/search_vs_default.json", {"best": best, "teacher": teacher, "rows": slim,
                                                      "best_minus_default": paired})
PY
