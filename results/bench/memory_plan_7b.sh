#!/bin/sh
# train.py's memory plan for the paper's run (LLaMA-7B, Lc = 2k, micro-batch 1, activation checkpointing) on 8 devices
# of 48 GB, with bf16 autocast (the default on CUDA; given here so that a CPU-only machine prints the GPU plan):
# every --shard choice, and what --shard auto picks. The plan needs only config.json and a token file, so both are
# made up in a temporary folder (the config is tests/test_train.py's LLAMA_7B). From the repo root:
#   sh results/bench/memory_plan_7b.sh            # writes results/bench/memory_plan_7b.txt
set -e
PY=${PY:-.venv/bin/python}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
$PY - "$D" <<'PYEOF'
import json, sys
sys.path.insert(0, ".")
from prepare_data import write_token_file
d = sys.argv[1]
json.dump({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "vocab_size": 32000, "max_position_embeddings": 2048, "torch_dtype": "float16"},
          open(f"{d}/config.json", "w"))
write_token_file([[1] * 16384] * 10, f"{d}/long", vocab_size=32000)
PYEOF
{
  for s in ddp zero1 fsdp auto; do
    echo "\$ WORLD_SIZE=8 python train.py --dry-run --device-memory 48 --dtype bf16 --init-from 7B --data TOKENS --shard $s"
    WORLD_SIZE=8 $PY train.py --dry-run --device-memory 48 --dtype bf16 --init-from "$D" --data "$D/long" --shard $s 2>&1 \
      | grep -v '^data: ' || true
  done
} > results/bench/memory_plan_7b.txt
cat results/bench/memory_plan_7b.txt
