#!/usr/bin/env bash
# GPU final call (carries the last shard; earlier calls left the others in $GPU_TMP/w): assemble the backbone,
# run the planned jobs of one config (CONFIG, default training/configs/lora.yaml; ARGS: more --key=value
# overrides) at once, bring back reports, logs and the best self-distilled run's checkpoint (the embedded
# default candidate). Usage: scripts/gpu/train.sh BUDGET_SECONDS
# The ablation runs are killed 30 s before BUDGET_SECONDS so that what they logged still comes back.
# GPU_TMP (default /tmp): the device's scratch (shards, assembled backbone, runs, logs); SHARDS (default
# .w[0-9]*, the carried shard folders). test/test_gpu_scripts.py runs this script on a CPU with both moved.
set -uo pipefail
budget=${1:?budget seconds}
tmp=${GPU_TMP:-/tmp}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 DDVLM_HOME=$tmp/ddvlm PYTHONPATH=$PWD GPU_TMP=$tmp
mkdir -p "$tmp/w" && cp -r ${SHARDS:-.w[0-9]*} "$tmp/w/"
python3 scripts/gpu/backbone_shards.py unpack "$tmp"/w/.w* "$DDVLM_HOME/models/all-mpnet-base-v2" || exit 3
if [ -n "${PLAN:-}" ]; then  # a plan chosen beforehand, e.g. PLAN='PARALLEL=6;ROWS=text_sd,text_no_sd;SEEDS=0,1,2;EPOCHS=5;EXTRA=0;TIME_BUDGET_MIN=8'
  echo "$PLAN" | tr ';' '\n' > "$tmp/plan.sh"
else
  python3 scripts/gpu/plan.py "$tmp/probe/ablation.json" --budget "$budget" > "$tmp/plan.sh"
fi
cat "$tmp/plan.sh"; source "$tmp/plan.sh"
config=${CONFIG:-training/configs/lora.yaml}
# one runs directory per config file, epochs and ARGS: a call with the same PLAN resumes its runs (the loop
# refuses a run dir that holds another configuration's state)
runs=${RUNS:-$tmp/gpu_runs/$(basename "$config" .yaml)_e${EPOCHS}$(printf '%s' "${ARGS:-}" | tr -c 'A-Za-z0-9.=-' '_')}
# state_every=0: a run writes its resume state only when it stops (time budget or last epoch), not after every
# epoch: a full fine-tune's state is 1.7 GB, and 6 runs writing it each epoch would spend the GPU's time on disk
common=(--config "$config" --device=${DEVICE:-cuda} --bf16=${BF16:-true} --eval_batch_size=64 --epochs="$EPOCHS"
        --time_budget_min="$TIME_BUDGET_MIN" --state_every="${STATE_EVERY:-0}" --run_dir="$runs" --stages=text
        ${LIMIT:+--limit_dialogues=$LIMIT} ${ARGS:-})
timeout -k 10 $((budget - 30)) python3 -m training.ablate "${common[@]}" --rows "$ROWS" --seeds "$SEEDS" --parallel "$PARALLEL" \
  --report "$OUT/ablation" > "$tmp/ablate_main.log" 2>&1 &
if [ "$EXTRA" = 1 ]; then
  timeout -k 10 $((budget - 30)) python3 -m training.ablate "${common[@]}" --rows text_no_speakers --seeds 0 --parallel 1 \
    --report "$OUT/ablation_no_speakers" > "$tmp/ablate_extra.log" 2>&1 &
fi
wait  # a run killed at the deadline still leaves its train.log for collect.py
python3 scripts/gpu/collect.py "$runs" "$OUT"
tail -n 30 "$tmp/ablate_main.log"
