#!/usr/bin/env bash
# Does a search find a better config than the default, without giving up the language model? Label the
# demo corpus once, train the default config from the cache, search experiments/tune_spaces/demo_search.yaml on the same
# cache with the default's held-out KD loss at each evaluation as a floor on the language model
# (tune.max_val_loss_kd_by_step: a trial above it at an evaluation's step ranks behind every trial under it
# there, so ASHA's early rungs compare both halves too), train the best trial's config, and evaluate both
# side by side: the paired bootstraps of best minus default on Lee and RT, and of their perplexity ratio,
# say whether each difference is beyond the evaluation sets' noise.
#   bash experiments/search_vs_default.sh          (uses .venv; about 55 minutes on 2 cores, 2026-12-03)
#   FLOOR=none bash experiments/search_vs_default.sh   (the search without the floor)
#   SPACE=experiments/tune_spaces/demo_refine.yaml bash experiments/search_vs_default.sh   (another space, in a store of its
#   own: runs/search-vs-default-demo_refine; in one store `tune` would resume the other space's search)
#   CONFIG=configs/seed_loss.yaml ... bash experiments/search_vs_default.sh   (another default: the base config of
#   the label, the default run and the search, in a store named after it too, e.g.
#   runs/search-vs-default-seed_loss; the searches before 2026-12-04 ran against configs/seed_loss.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SPACE=${SPACE:-experiments/tune_spaces/demo_search.yaml}
SPACE_NAME=$(basename "$SPACE" .yaml)
if [ "$SPACE_NAME" = demo_search ]; then SUFFIX=; else SUFFIX=-$SPACE_NAME; fi
BASE=()
if [ -n "${CONFIG:-}" ]; then
    # another default, in a store of its own: in one store `distill run.name=default` would resume the other
    # default's finished run and `tune` the other search
    BASE=(--config "$CONFIG")
    SUFFIX=$SUFFIX-$(basename "$CONFIG" .yaml)
fi
STORE=${STORE:-runs/search-vs-default$SUFFIX}
$BIN/gemini-ray label "${BASE[@]}" run.storage_path=$STORE
$BIN/gemini-ray distill "${BASE[@]}" run.storage_path=$STORE run.name=default label.use=require
if [ "${FLOOR:-default}" = none ]; then
    FLOOR_KEY=()
else
    # the default's held-out KD loss at each of its evaluations: a trial keeps up with it at every ASHA rung
    FLOOR_KEY=("tune.max_val_loss_kd_by_step=$($BIN/python -c "import json, sys
history = json.load(open(sys.argv[1]))['training']['history']
print({int(h['val/step']): h['val/loss_kd'] for h in history if h.get('val/step', 0) > 0})" \
        "$STORE/default/summary.json")")
fi
$BIN/gemini-ray tune "${BASE[@]}" run.storage_path=$STORE tune.space=$SPACE tune.name=search \
    "${FLOOR_KEY[@]}"
$BIN/gemini-ray distill --config $STORE/search/best_config.yaml run.storage_path=$STORE run.name=search-best \
    label.use=require
$BIN/python experiments/search_vs_default.py "$STORE"
