#!/bin/sh
# The demo's PoSE + YaRN fine-tune and its two evaluations, again, from the base of a finished `make demo` run
# (out/demo/base/hf), with demo.py's own commands; then compare with out/demo (weights byte for byte, every trial).
# From the repo root: sh results/demo/repeat_pose_yarn.sh  (run for repeat_pose_yarn.json with out/demo -> /tmp/rep)
set -e
W=out/demo
R=out/demo-repeat
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
$PY train.py --data $W/data/train --out-dir $R/pose-yarn --method pose --rope yarn --train-len 128 --target-len 512 \
    --max-steps 200 --global-batch 16 --micro-batch 16 --lr 0.001 --min-lr 0.0001 --warmup 20 --decay cosine \
    --weight-decay 0.1 --beta2 0.95 --no-ac --dtype fp32 --device cpu --eval-every 0 --ckpt-every 200 --seed 1337 \
    --mix copy=0.1,passkey=0.45,text=0.45 --init-from $W/base/hf > $R.train.log 2>&1
$PY eval_passkey.py --model $R/pose-yarn/hf --len 128 256 384 512 768 1024 --threads 1 --trials 200 --out $R/pk.json > $R.pk.log 2>&1
$PY eval_ppl.py --model $R/pose-yarn/hf --len 128 256 384 512 768 1024 --threads 1 --data data/heldout --mode sliding \
    --out $R/ppl.json > $R.ppl.log 2>&1
cmp $R/pose-yarn/hf/model.safetensors $W/pose-yarn/hf/model.safetensors && echo "weights: identical"
$PY - <<PY
import json
key = lambda f, ks: sorted(tuple(t[k] for k in ks) for t in json.load(open(f))["trials"])
print("passkey trials identical:", key("$R/pk.json", ("length", "depth", "key", "output")) ==
      key("$W/eval/pose-yarn.passkey.json", ("length", "depth", "key", "output")))
ppl = lambda f: [r["ppl"] for r in json.load(open(f))["results"]]
print("perplexities identical:", ppl("$R/ppl.json") == ppl("$W/eval/pose-yarn.ppl.json"))
PY
