#!/usr/bin/env bash
# Does a search find a better config than the default? Label the demo corpus once, search
# tune_spaces/demo_search.yaml on the cache, train the best trial's config and the default config from the
# same cache, and evaluate both side by side: the paired bootstrap of best minus default on Lee and RT
# says whether the difference is beyond the evaluation sets' noise.
#   bash benchmarks/search_vs_default.sh          (uses .venv; about 35 minutes on 2 cores)
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
$BIN/python benchmarks/search_vs_default.py "$STORE"
