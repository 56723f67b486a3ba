"""The tables of results/demo/README.md, in markdown, from demo.json (written by `python demo.py`):
    python results/demo/report.py [results/demo/demo.json]
Passkey accuracy by key depth at Lt, over Lc..Lt and over every length: depths pooled as demo.py bins them (uniform
depths, binned by their centre), each cell with its number of trials in brackets.
"""
import json
import sys
from pathlib import Path

run = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("demo.json")).read_text())
s, rows = run["settings"], run["results"]
Lc, Lt, lengths = s["train_len"], s["target_len"], s["lengths"]
variants = list(dict.fromkeys(r["variant"] for r in rows))
cell = {(r["variant"], r["length"]): r for r in rows}
print(f"Passkey accuracy over {s['trials']} trials per length / held-out perplexity\n")
print("| variant | " + " | ".join(f"{L:,}" + (" (Lc)" if L == Lc else " (Lt)" if L == Lt else "") for L in lengths) + " |")
print("|---|" + "---|" * len(lengths))
for v in variants:
    print(f"| {v} | " + " | ".join(f"{cell[v, L]['passkey']:.2f} / {cell[v, L]['ppl']:.1f}" for L in lengths) + " |")


def by_depth(v, Ls):
    rs = [cell[v, L] for L in Ls]
    depths = sorted({d for r in rs for d in r["passkey_trials_by_depth"]}, key=float)
    n = {d: sum(r["passkey_trials_by_depth"].get(d, 0) for r in rs) for d in depths}
    k = {d: sum(r["passkey_by_depth"].get(d, 0) * r["passkey_trials_by_depth"].get(d, 0) for r in rs) for d in depths}
    return depths, [f"{k[d] / n[d]:.2f} ({n[d]})" for d in depths], sum(r["passkey"] for r in rs) / len(rs)


for title, Ls in ((f"at Lt = {Lt}", [Lt]), (f"over Lc..Lt ({', '.join(str(L) for L in lengths if Lc <= L <= Lt)})",
                                           [L for L in lengths if Lc <= L <= Lt]), ("over every length", lengths)):
    depths = by_depth(variants[0], Ls)[0]
    print(f"\nPasskey accuracy by key depth {title} (trials)\n\n| variant | " + " | ".join(depths) + " | all |")
    print("|---|" + "---:|" * (len(depths) + 1))
    for v in variants:
        _, cells, overall = by_depth(v, Ls)
        print(f"| {v} | " + " | ".join(cells) + f" | {overall:.3f} |")
print(f"\nCost of one training step (median over the steps after the 3rd; peak RSS of the process): the base "
      f"{s['base']['batch']} windows on {s.get('workers', 1)} threads alone, each fine-tune {s['fine_tune']['batch']} sequences on one "
      "thread beside another job:")
for made, c in run["step_costs"].items():
    print(f"  {made}: {c['step_time_s']:.3f} s, {c['peak_rss_gb']:.2f} GB ({c['steps']} steps)")
print(f"\nwhole run: {run['wall_minutes']} min")
