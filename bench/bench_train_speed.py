"""
Training-step speed, ours vs transformers' LlamaForCausalLM, same random weights, CPU fp32.

    python bench/bench_train_speed.py [--seq 512 2048] [--steps 3]     # writes results/bench/train_speed.json

One step = forward + loss + backward on one sequence. Prints tokens/s and the ratio ours/theirs
(> 1: ours is faster) and writes them, with the settings and the command, to --out.
transformers is only the yardstick here (pip install -e ".[test]").
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from load_hf_weights import load_model

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--seq", type=int, nargs="+", default=[512, 2048], help="sequence lengths (default: 512 2048)")
parser.add_argument("--steps", type=int, default=5, help="timed steps per length, alternating ours/HF, after one warm-up (default: 5)")
parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: all cores)")
parser.add_argument("--out", default="results/bench/train_speed.json", help="JSON of the figures (default: %(default)s)")
args = parser.parse_args()
torch.set_num_threads(args.threads)

hf_cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096)
torch.manual_seed(0)
hf = transformers.LlamaForCausalLM(hf_cfg)
with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    ours = load_model(d)
hf.train(), ours.train()
n_params = sum(p.numel() for p in ours.parameters())
print(f"config: {n_params / 1e6:.1f}M params, hidden 512, 8 layers, 8 heads / 4 KV heads, vocab 32000; "
      f"{args.threads} threads, torch {torch.__version__}, transformers {transformers.__version__}")


def one_step(fn, ids):
    t0 = time.perf_counter()
    fn(ids).backward()
    return time.perf_counter() - t0


def hf_loss(x):
    return hf(x, labels=x).loss


def our_loss(x):
    return ours(x, labels=x)


print(f"{'seq':>6} | {'ours tok/s':>10} | {'HF tok/s':>10} | {'ours/HF':>7}")
rows = []
for T in args.seq:
    ids = torch.randint(0, 32000, (1, T))
    one_step(hf_loss, ids), one_step(our_loss, ids)  # warm-up
    # alternate the two, so that whatever else the machine does weighs on both alike
    t_hf, t_ours = [], []
    for _ in range(args.steps):
        t_hf.append(one_step(hf_loss, ids))
        t_ours.append(one_step(our_loss, ids))
    t_hf, t_ours = statistics.median(t_hf), statistics.median(t_ours)
    print(f"{T:>6} | {T / t_ours:>10.0f} | {T / t_hf:>10.0f} | {t_hf / t_ours:>7.2f}")
    rows.append({"tokens": T, "ours_s": t_ours, "transformers_s": t_hf, "ours_tok_s": T / t_ours,
                 "transformers_tok_s": T / t_hf, "ours_over_transformers": t_hf / t_ours})
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text(json.dumps({
    "command": " ".join(["python", *sys.argv]), "params": n_params, "threads": args.threads, "steps": args.steps,
    "torch": torch.__version__, "transformers": transformers.__version__, "load_average": os.getloadavg()[0],
    "results": rows}, indent=1) + "\n")
print(f"wrote {args.out}")
