#!/bin/sh
# Issue 16: the RULER-style table for SmolLM2-135M-Instruct (native 8k) without scaling and with training-free
# yarn x2, at 2k / 4k / 8k / 16k, every task, the same prompts in both rows (seed 0). 2 CPU cores: the two rows side by
# side, one thread each. From the repo root, after `make smollm2`:
#   nohup sh results/ruler/campaign.sh > logs/ruler.log 2>&1 &
# `campaign.sh finetuned`: the two fine-tunes of ../pose_smollm2_32k/ (PoSE and its control, yarn x4 to 32k), at 2k-16k,
# the same prompts and trials as the rows above (16k first ran alone: the rows keep those trials); it trains them first
# if out/ lacks them (`../pose_smollm2_32k/campaign.sh train`, ~1 h of both cores); then training-free yarn x4 at 2k-16k.
# Trials per task are sized to the CPU (a 16k prompt took 4-7 minutes of one core, decoding included): 5 / 5 / 3 / 2 at 2k / 4k / 8k / 16k,
# 15 per task and row, 75 prompts per row. Restartable: a stopped row keeps its finished trials (--reuse of its own
# JSON; its log is appended to); the no-scaling row also takes the 3 trials per task of calibration_2k.json (same model, seed and template).
set -e
M=cache/SmolLM2-135M-Instruct
O=results/ruler
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
done_() {  # $1 = JSON, then the lengths it must hold: complete, and run with those --len
  f=$1; shift
  [ -f $f ] && $PY -c 'import json, sys; s = json.load(open(sys.argv[1]))["settings"]; sys.exit(not (s["complete"] and s["len"] == sys.argv[2:]))' $f "$@"
}
row() {  # $1 = name, $2 = lengths, $3 = trials per length, then eval_ruler.py flags
  n=$1 L=$2 T=$3; shift 3
  f=$O/$n.json
  R=""; [ -f $f ] && R=$f; [ $n = none ] && R="$R $O/calibration_2k.json"
  done_ $f $L || $PY eval_ruler.py --model $M --threads 1 --len $L --trials $T "$@" ${R:+--reuse $R} --out $f >> $O/$n.log 2>&1
}
ALL="2k 4k 8k 16k"; TRIALS="5 5 3 2"
if [ "$1" = finetuned ]; then
  sh results/pose_smollm2_32k/campaign.sh train
  row pose_32k "$ALL" "$TRIALS" --model out/smol32k-pose/hf &
  row control_32k "$ALL" "$TRIALS" --model out/smol32k-control/hf &
  wait
  row yarn4_free "$ALL" "$TRIALS" --rope yarn --factor 4  # ran as 16k here and 2k-8k beside it, merged by --reuse
  exit
fi
row none "$ALL" "$TRIALS" &
row yarn2_free "$ALL" "$TRIALS" --rope yarn --factor 2 &
wait
