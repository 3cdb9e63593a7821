#!/usr/bin/env bash
# GPU call after train.sh on the same warm machine (the backbone is already assembled in /tmp/ddvlm; if
# not, the call must carry the shards .w1..w4 or find them in /tmp/w): the WOQ GPU columns of issue #5.
# Usage: [ROWS=fp32,woq,...] [ROW_TIMEOUT=s] [ROUNDS=n] scripts/gpu/quant.sh [LIMIT]   -> $OUT/quantization_gpu.{md,json}
# (default: every row a GPU runs; the compiled rows add a Triton compile of about a minute each). A row running
# past ROW_TIMEOUT seconds is stopped and reported failed; the report is rewritten after every row.
# DEVICE (default cuda), CHECKPOINT (default the embedded one), REPEATS, GPU_TMP and SHARDS let
# test/test_gpu_scripts.py run this call on a CPU with a tiny model.
set -uo pipefail
limit=${1:-1000}
tmp=${GPU_TMP:-/tmp}  # train.sh's scratch: the assembled backbone and the shards
export PYTHONUNBUFFERED=1 DDVLM_HOME=$tmp/ddvlm PYTHONPATH=$PWD
model="$DDVLM_HOME/models/all-mpnet-base-v2"
if [ ! -f "$model/config.json" ]; then
  mkdir -p "$tmp/w" && cp -r ${SHARDS:-.w[0-9]*} "$tmp/w/" 2>/dev/null
  python3 scripts/gpu/backbone_shards.py unpack "$tmp"/w/.w* "$model" || exit 3
fi
# one latency round by default: 2 more rounds of 6 rows cost ~150 s of a 15-minute device budget. ROUNDS=3 for
# eager rows alone: one round of eager FP32 read 6.3 ms in one call and 10.3 ms in the next (fifth GPU session)
python3 bench/quantization.py --device "${DEVICE:-cuda}" --limit "$limit" --repeats "${REPEATS:-20}" \
  --latency-rounds "${ROUNDS:-1}" \
  --report-dir "$OUT" ${CHECKPOINT:+--checkpoint "$CHECKPOINT"} ${ROWS:+--rows "$ROWS"} \
  ${ROW_TIMEOUT:+--row-timeout "$ROW_TIMEOUT"}
