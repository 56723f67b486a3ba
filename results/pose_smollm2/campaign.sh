#!/bin/sh
# Issue 7: PoSE on the real SmolLM2-135M (native 8k), fine-tuned at Lc = 1k to Lt = 16k (s = 2) with yarn and
# with linear, then evaluated beside the base and training-free yarn. 2 CPU cores: everything runs as two
# one-thread lanes side by side. From the repo root (after `make smollm2` and `python scripts/get_texts.py --shakespeare`):
#   nohup sh results/pose_smollm2/campaign.sh train > logs/campaign_pose_train.log 2>&1 &    # ~40 min
#   nohup sh results/pose_smollm2/campaign.sh eval  > logs/campaign_pose_eval.log 2>&1 &     # ~2 h
# Restartable: a finished training run (its hf/ folder) or evaluation (its JSON, "complete": true) is skipped;
# a stopped training run resumes from its ckpt.pt, a stopped passkey run from its finished lengths (--reuse).
set -e
M=cache/SmolLM2-135M-Instruct
O=results/pose_smollm2
S=cache/texts/shakespeare
PY=${PY:-python}
mkdir -p $O logs
export OMP_NUM_THREADS=1

train() {  # $1 = rope. Held out of the data: Hamlet, Othello, Lear (the perplexity documents).
  [ -f cache/data/smol_train.bin ] || $PY prepare_data.py --tokenizer $M --out cache/data/smol_train --min-tokens 1024 \
      $(ls $S/*.txt | grep -v -e hamlet -e othello -e lear) cache/texts/plrabn12.txt cache/texts/botchan.txt cache/texts/alice29.txt
  [ -f out/smol-pose-$1/hf/config.json ] && return
  R=""; [ -f out/smol-pose-$1/ckpt.pt ] && R="--resume"
  $PY train.py --init-from $M --data cache/data/smol_train --train-len 1024 --target-len 16384 --rope $1 \
      --global-batch 4 --micro-batch 2 --max-steps 20 --lr 1e-4 --warmup 2 --no-ac --eval-every 0 --ckpt-every 5 \
      --dtype fp32 --device cpu --out-dir out/smol-pose-$1 $R > logs/train_smol_$1.log 2>&1
  cp out/smol-pose-$1/log.jsonl $O/train_$1.jsonl
}

done_() { [ -f $1 ] && grep -q '"complete": true' $1; }
passkey() {  # $1 = name, then eval_passkey.py flags
  n=$1; shift
  R=""; [ -f $O/passkey_$n.json ] && R="--reuse $O/passkey_$n.json"
  done_ $O/passkey_$n.json || $PY eval_passkey.py --threads 1 --len 2k 4k 8k 12k 16k --trials 10 "$@" $R --out $O/passkey_$n.json
}
ppl() {  # the three plays of issue 4's second run, first L tokens, token-weighted
  n=$1; shift
  [ -f $O/ppl_$n.json ] || $PY eval_ppl.py --threads 1 --len 2k 4k 8k 12k 16k --data $S/hamlet_gut.txt $S/othello_gut.txt \
      $S/lear_gut.txt "$@" --out $O/ppl_$n.json
}
step_cost() {  # one optimizer step of one sequence, activation checkpointing on: PoSE at 1k vs full-length at 16k
  for m in pose full; do
    [ -f $O/step_$m.jsonl ] && continue
    $PY train.py --init-from $M --data cache/data/smol_train --train-len 1024 --target-len 16384 --rope yarn --method $m \
        --global-batch 1 --max-steps 1 --eval-every 0 --dtype fp32 --device cpu --out-dir out/step-$m > logs/step_$m.log 2>&1
    cp out/step-$m/log.jsonl $O/step_$m.jsonl
  done
}

export_check() {
  [ -f $O/export_yarn.json ] || $PY scripts/check_export.py --threads 1 --model out/smol-pose-yarn/hf --data $S/hamlet_gut.txt \
      --len 16384 --out $O/export_yarn.json
}
# Each piece is skipped once its output exists, so the lanes share the work in this order (a 16k perplexity pass of one
# play takes ~6 min on one thread, a 16k passkey trial 1.2-8.0 min, longer the shallower the key: passkey_pose_yarn_16k.log).
lane_a() {
  passkey pose_yarn --model out/smol-pose-yarn/hf
  ppl pose_yarn --model out/smol-pose-yarn/hf
  export_check
  passkey none --model $M
}
lane_b() {
  # PoSE-linear retrieves no key at 2k, 4k or 8k (inside the native window, where no extension is involved): its
  # 12k/16k trials (~60 min of a core) were not run; the core went to the perplexities and the step costs instead
  passkey pose_linear --model out/smol-pose-linear/hf --len 2k 4k 8k
  ppl pose_linear --model out/smol-pose-linear/hf
  ppl pose_yarn --model out/smol-pose-yarn/hf
  step_cost
  export_check
  ppl linear_free --model $M --rope linear --factor 2
  passkey yarn_free --model $M --rope yarn --factor 2
}

case "$1" in
train)
  train yarn & train linear & wait ;;
eval)
  # the old runs' trials (issue 4, same seed and settings) are reused: only the missing ones run
  [ -f $O/passkey_none.json ] || cp results/smollm2_training_free/run2/passkey_none.json $O/passkey_none.json
  [ -f $O/passkey_yarn_free.json ] || cp results/smollm2_training_free/run2/passkey_yarn.json $O/passkey_yarn_free.json
  [ -f $O/passkey_linear_free.json ] || cp results/smollm2_training_free/run2/passkey_linear.json $O/passkey_linear_free.json  # 0 everywhere: kept as run
  [ -f $O/ppl_none.json ] || cp results/smollm2_training_free/run2/ppl_none.json $O/ppl_none.json
  [ -f $O/ppl_yarn_free.json ] || cp results/smollm2_training_free/run2/ppl_yarn.json $O/ppl_yarn_free.json
  lane_a > logs/campaign_pose_lane_a.log 2>&1 &
  lane_b > logs/campaign_pose_lane_b.log 2>&1 &
  wait ;;
lane-a|lane-b)  # one lane alone, e.g. to restart it
  lane_${1#lane-} ;;
*)
  echo "usage: sh $0 train|eval|lane-a|lane-b"; exit 2 ;;
esac
