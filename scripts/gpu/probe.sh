#!/usr/bin/env bash
# GPU call 1 (carries .w1): environment check, then the 6 SD-gain jobs at once on a MELD slice with a
# random-weight backbone of the real architecture (same speed), to time them. Leaves /tmp/probe for plan.py.
set -uo pipefail
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 DDVLM_HOME=/tmp/ddvlm_random
mkdir -p /tmp/w && cp -r .w1 /tmp/w/
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys,torch,transformers,peft,sklearn;print(sys.version.split()[0],'torch',torch.__version__,'transformers',transformers.__version__,'peft',peft.__version__,torch.cuda.get_device_name())"
  nproc; } 2>&1 | tee "$OUT/env.txt"
python3 scripts/gpu/backbone_shards.py random /tmp/w/.w1 "$DDVLM_HOME/models/all-mpnet-base-v2" >/dev/null 2>&1
start=$(date +%s)
python3 -m training.ablate --config training/configs/lora.yaml --rows text_sd,text_no_sd --seeds 0,1,2 --parallel 6 \
  --report /tmp/probe/ablation --run_dir=/tmp/probe --device=${DEVICE:-cuda} --bf16=${BF16:-true} --eval_batch_size=64 \
  --limit_dialogues=${PROBE_LIMIT:-60} --epochs=2 --stages=text > /tmp/probe_ablate.log 2>&1
echo "probe exit $? after $(( $(date +%s) - start )) s"
cp /tmp/probe/ablation.json "$OUT/probe_ablation.json" 2>/dev/null
tail -n 25 /tmp/probe/ablation/text_sd/seed0/train.log 2>/dev/null | tr '\r' '\n' | grep -v '^$' | tail -n 30
tail -n 8 /tmp/probe_ablate.log
python3 scripts/gpu/plan.py /tmp/probe/ablation.json --budget 480 | tee "$OUT/plan_for_480s.txt"
