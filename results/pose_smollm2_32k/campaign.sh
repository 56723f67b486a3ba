#!/bin/sh
# Issue 13: PoSE on the real SmolLM2-135M (native 8k) from 8k to Lt = 32k (s = 4, PoSE's revised yarn), fine-tuned at
# Lc = 1k, beside the control that isolates the skips: the same command with --num-chunks 1 (positions 0..Lc-1, same
# seed, documents, spans, steps, tokens and yarn x4 scaling: everything but the skipped positions). Training-free rows:
# the base (no scaling) and yarn x4. 2 CPU cores: two one-thread lanes side by side. From the repo root, after
# `make smollm2` and `python scripts/get_texts.py --shakespeare`:
#   nohup sh results/pose_smollm2_32k/campaign.sh all > logs/campaign_32k.log 2>&1 &
# (`free` instead of `all`: only the training-free rows, which need no fine-tune.)
# Restartable on any machine: a finished fine-tune (its hf/ folder) or evaluation (its JSON, "complete": true) is
# skipped; a stopped fine-tune resumes from its ckpt.pt; a missing one is retrained from its seed (out/ is not
# committed); a stopped passkey run keeps its finished trials (--reuse) and a stopped PPL run is rerun.
set -e
M=cache/SmolLM2-135M-Instruct
O=results/pose_smollm2_32k
S=cache/texts/shakespeare
PY=${PY:-.venv/bin/python}
mkdir -p $O logs
export OMP_NUM_THREADS=1

data() {  # Held out of the training data: Hamlet, Othello, Lear (the evaluation documents). Same data as the 16k run.
  [ -f cache/data/smol_train.bin ] || $PY prepare_data.py --tokenizer $M --out cache/data/smol_train --min-tokens 1024 \
      $(ls $S/*.txt | grep -v -e hamlet -e othello -e lear) cache/texts/plrabn12.txt cache/texts/botchan.txt cache/texts/alice29.txt
}
train() {  # $1 = name, $2 = --num-chunks. 40 steps x 4 sequences x 1,024 tokens = 163,840 tokens (2x the 16k run's)
  [ -f out/smol32k-$1/hf/config.json ] && return
  R=""; [ -f out/smol32k-$1/ckpt.pt ] && R="--resume"
  /usr/bin/time -v $PY train.py --init-from $M --data cache/data/smol_train --train-len 1024 --target-len 32768 --rope yarn \
      --num-chunks $2 --global-batch 4 --micro-batch 2 --max-steps 40 --lr 1e-4 --warmup 2 --no-ac --eval-every 0 \
      --ckpt-every 5 --seed 1337 --dtype fp32 --device cpu --out-dir out/smol32k-$1 $R > logs/train_smol32k_$1.log 2>&1
  [ -f $O/train_$1.jsonl ] || cp out/smol32k-$1/log.jsonl $O/train_$1.jsonl  # the committed log is that of the evaluated model
}

done_() { [ -f $1 ] && grep -q '"complete": true' $1; }
passkey() {  # $1 = name, $2 = lengths, $3 = trials per length, then eval_passkey.py flags. Same seed (0) in every row.
  n=$1 L=$2 T=$3; shift 3
  f=$O/passkey_$n.json
  R=""; [ -f $f ] && R="--reuse $f"
  done_ $f || $PY eval_passkey.py --threads 1 --len $L --trials $T "$@" $R --out $f >> $O/passkey_$n.log 2>&1
}
ppl() {  # the first L tokens of Hamlet, one pass through the KV cache: PPL at each L, segments derived by report.py
  n=$1; shift
  [ -f $O/ppl_$n.json ] || $PY eval_ppl.py --threads 1 --len 2k 4k 8k 16k 24k 32k --data $S/hamlet_gut.txt "$@" \
      --out $O/ppl_$n.json > $O/ppl_$n.log 2>&1
}
# Rows that need a fine-tuned model go first (out/ does not outlive a session); the training-free rows can run any time.
# In each lane: the PPL pass (one 32k forward), then passkey at 32k (where extension shows), then 8k and 16k.
finetuned() {  # $1 = pose|control
  ppl $1 --model out/smol32k-$1/hf
  passkey $1_32k 32k 5 --model out/smol32k-$1/hf
  passkey $1 "8k 16k" "10 10" --model out/smol32k-$1/hf
}
free_a() {
  ppl yarn_free --model $M --rope yarn --factor 4
  passkey yarn_free_32k 32k 5 --model $M --rope yarn --factor 4
  passkey yarn_free "8k 16k" "10 10" --model $M --rope yarn --factor 4
}
free_b() {
  ppl none --model $M
  passkey none "8k 16k" "10 10" --model $M
  passkey none_32k 32k 5 --model $M
}
case "$1" in
train)
  data; train pose 2 & train control 1 & wait ;;
eval)  # two one-thread lanes
  (finetuned pose; free_a) > logs/campaign_32k_lane_a.log 2>&1 &
  (finetuned control; free_b) > logs/campaign_32k_lane_b.log 2>&1 &
  wait ;;
free)  # only the training-free rows (no fine-tuned model needed), two one-thread lanes
  free_a > logs/campaign_32k_lane_a.log 2>&1 &
  free_b > logs/campaign_32k_lane_b.log 2>&1 &
  wait ;;
all)
  sh $0 train && sh $0 eval ;;
*)
  echo "usage: sh $0 train|eval|free|all"; exit 2 ;;
esac
