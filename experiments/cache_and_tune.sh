#!/usr/bin/env bash
# Label once, then train from the cache and run the quick search; prints the cache's size, the data wait from
# the cache and the search's teacher tokens (docs/cache-and-tune.md).
#   bash experiments/cache_and_tune.sh            (uses .venv; about 15 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export HF_HUB_OFFLINE=1
STORE=${STORE:-runs/bench}
$BIN/gemini-ray label run.storage_path=$STORE
$BIN/gemini-ray distill run.storage_path=$STORE run.name=from-cache label.use=require
$BIN/gemini-ray tune run.storage_path=$STORE tune.space=tune_spaces/quick.yaml
$BIN/python - "$STORE" <<'PY'
import glob, json, sys
store = sys.argv[1]
for m in sorted(glob.glob(f"{store}/signal_cache/*/manifest.json")):
    d = json.load(open(m))
    print(f"cache {m}: rows={d['rows']} teacher_tokens={d['teacher_tokens']} bytes/token(on disk, all columns)="
          f"{d['bytes_per_token']:.0f} signal_bytes/token={d.get('signal_bytes_per_token', 0):.0f} "
          f"negative_id_bytes/token={d.get('negative_bytes_per_token', 0):.0f} label_s={d['wall_time_s']['label_s']:.0f}")
s = json.load(open(f"{store}/from-cache/summary.json"))
hist = s["training"]["history"]
steady = [h["data_wait_fraction"] for h in hist[1:]]
print(f"distill from cache: teacher tokens this run={s['teacher_signal']['teacher_tokens_this_run']} "
      f"data wait: first window {hist[0]['data_wait_fraction']:.1%}, after it mean {sum(steady)/len(steady):.2%} "
      f"KD {s['training']['first']['loss/kd']:.3f} -> {s['training']['last']['loss/kd']:.3f}")
t = json.load(open(f"{store}/tune/tune_summary.json"))
print(f"tune: trials={t['trials']} errored={t['errored']} teacher tokens in cache={t['teacher_tokens_in_cache']} "
      f"during search={t['teacher_tokens_during_search']} best={t['best']}")
PY
