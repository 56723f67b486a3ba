#!/bin/sh
# Issue 16: the RULER-style table for SmolLM2-135M-Instruct (native 8k) without scaling and with training-free
# yarn x2, at 2k / 4k / 8k / 16k, every task, the same prompts in both rows (seed 0). 2 CPU cores: the two rows side by
# side, one thread each. From the repo root, after `make smollm2`:
#   nohup sh results/ruler/campaign.sh > logs/ruler.log 2>&1 &
# `campaign.sh finetuned`: the two fine-tunes of ../pose_smollm2_32k/ (PoSE and its control, yarn x4 to 32k), at 16k
# only (twice the native window, where the rows above part), the same prompts; it trains them first if out/ lacks
# them (`../pose_smollm2_32k/campaign.sh train`, ~1 h of both cores).
# Trials per task are sized to the CPU (a 16k prompt took 4-7 minutes of one core, decoding included): 5 / 5 / 3 / 2 at 2k / 4k / 8k / 16k,
# 15 per task and row, 75 prompts per row. Restartable: a stopped row keeps its finished trials (--reuse of its own
# JSON; its log is appended to); the no-scaling row also takes the 3 trials per task of calibration_2k.json (same model, seed and template).
set -e
M=cache/SmolLM2-135M-Instruct
O=results/ruler
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
done_() { [ -f $1 ] && grep -q '"complete": true' $1; }
row() {  # $1 = name, then eval_ruler.py flags
  n=$1; shift
  f=$O/$n.json
  R=""; [ -f $f ] && R=$f; [ $n = none ] && R="$R $O/calibration_2k.json"
  done_ $f || $PY eval_ruler.py --model $M --threads 1 --len 2k 4k 8k 16k --trials 5 5 3 2 "$@" ${R:+--reuse $R} --out $f >> $O/$n.log 2>&1
}
if [ "$1" = finetuned ]; then
  sh results/pose_smollm2_32k/campaign.sh train
  row pose_32k --model out/smol32k-pose/hf --len 16k --trials 2 &
  row control_32k --model out/smol32k-control/hf --len 16k --trials 2 &
  wait
  exit
fi
row none &
row yarn2_free --rope yarn --factor 2 &
wait
