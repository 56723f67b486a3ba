"""Markdown tables of results/{passkey,ppl}_*.json (written by results/campaign.sh): python results/tables.py"""
import json
import math
from pathlib import Path

HERE = Path(__file__).parent
VARIANTS = ["none", "linear", "ntk", "dynamic", "yarn"]


def load(kind):
    runs = {v: json.loads((HERE / f"{kind}_{v}.json").read_text()) for v in VARIANTS if (HERE / f"{kind}_{v}.json").exists()}
    return {v: {r["length"]: r for r in run["results"]} for v, run in runs.items()}


def table(kind, cell, title, fill_dynamic):
    runs = load(kind)
    lengths = sorted({L for rs in runs.values() for L in rs})
    print(f"\n{title}\n\n| variant | " + " | ".join(f"{L // 1024}k" for L in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for v, rs in runs.items():
        cells = [cell(rs[L]) if L in rs else (fill_dynamic(runs["none"][L]) if v == "dynamic" and L in runs["none"] else "-")
                 for L in lengths]
        print(f"| {v} | " + " | ".join(cells) + " |")


table("passkey", lambda r: f"{r['accuracy'] * r['trials']:.0f}/{r['trials']}",
      "Passkey retrieval: correct / trials", lambda r: f"= none ({r['accuracy'] * r['trials']:.0f}/{r['trials']})")
table("ppl", lambda r: f"{r['ppl']:.2f}", "Perplexity of the first L tokens (truncate, token-weighted)",
      lambda r: f"= none ({r['ppl']:.2f})")


def segment(rs, L):
    """PPL of the tokens between the previous length and L, from the cumulative sums (truncate mode)."""
    prev = max((p for p in rs if p < L), default=None)
    nll = math.log(rs[L]["ppl"]) * rs[L]["tokens"]
    if prev is None:
        return f"{rs[L]['ppl']:.2f}"
    return f"{math.exp((nll - math.log(rs[prev]['ppl']) * rs[prev]['tokens']) / (rs[L]['tokens'] - rs[prev]['tokens'])):.2f}"


runs = {v: rs for v, rs in load("ppl").items() if v != "dynamic"}
lengths = sorted({L for rs in runs.values() for L in rs})
print("\nPerplexity of the tokens between the previous length and L (from the same runs)\n")
print("| variant | " + " | ".join(f"{p // 1024}k–{L // 1024}k" if p else f"0–{L // 1024}k" for p, L in zip([0] + lengths, lengths)) + " |")
print("|---|" + "---|" * len(lengths))
for v, rs in runs.items():
    print(f"| {v} | " + " | ".join(segment(rs, L) for L in lengths) + " |")
