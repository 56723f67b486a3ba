"""Markdown tables of run1/ and run2/{passkey,ppl}_*.json (written by each run's campaign.sh):
    python results/smollm2_training_free/tables.py              # both runs
    python results/smollm2_training_free/tables.py run2         # one
"""
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).parent
VARIANTS = ["none", "linear", "ntk", "dynamic", "yarn"]


def load(run, kind):
    files = {v: run / f"{kind}_{v}.json" for v in VARIANTS}
    runs = {v: json.loads(f.read_text()) for v, f in files.items() if f.exists()}
    return {v: {r["length"]: r for r in data["results"]} for v, data in runs.items()}


def table(run, kind, cell, title, fill_dynamic):
    runs = load(run, kind)
    lengths = sorted({L for rs in runs.values() for L in rs})
    print(f"\n{title}\n\n| variant | " + " | ".join(f"{L // 1024}k" for L in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for v, rs in runs.items():
        cells = [cell(rs[L]) if L in rs else (fill_dynamic(runs["none"][L]) if v == "dynamic" and L in runs["none"] else "-")
                 for L in lengths]
        print(f"| {v} | " + " | ".join(cells) + " |")


def segment(rs, L):
    """PPL of the tokens between the previous length and L, from the cumulative sums (truncate mode)."""
    prev = max((p for p in rs if p < L), default=None)
    nll = math.log(rs[L]["ppl"]) * rs[L]["tokens"]
    if prev is None:
        return f"{rs[L]['ppl']:.2f}"
    return f"{math.exp((nll - math.log(rs[prev]['ppl']) * rs[prev]['tokens']) / (rs[L]['tokens'] - rs[prev]['tokens'])):.2f}"


for name in sys.argv[1:] or ["run1", "run2"]:
    run = HERE / name
    print(f"\n## {name}")
    table(run, "passkey", lambda r: f"{round(r['accuracy'] * r['trials'])}/{r['trials']}",
          "Passkey retrieval: correct / trials", lambda r: f"= none ({round(r['accuracy'] * r['trials'])}/{r['trials']})")
    table(run, "ppl", lambda r: f"{r['ppl']:.2f}", "Perplexity of the first L tokens (truncate, token-weighted)",
          lambda r: f"= none ({r['ppl']:.2f})")
    runs = {v: rs for v, rs in load(run, "ppl").items() if v != "dynamic"}
    lengths = sorted({L for rs in runs.values() for L in rs})
    print("\nPerplexity of the tokens between the previous length and L (from the same runs)\n")
    print("| variant | " + " | ".join(f"{p // 1024}k–{L // 1024}k" if p else f"0–{L // 1024}k"
                                     for p, L in zip([0] + lengths, lengths)) + " |")
    print("|---|" + "---|" * len(lengths))
    for v, rs in runs.items():
        print(f"| {v} | " + " | ".join(segment(rs, L) for L in lengths) + " |")
