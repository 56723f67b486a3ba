"""Tables (markdown) and one PNG of results/pose_smollm2_32k/*.json, written by campaign.sh:
    python results/pose_smollm2_32k/report.py     # prints the tables, writes results/pose_smollm2_32k/pose_smollm2_32k.png
Passkey cells are correct / trials with a 95% Wilson interval: with 5-10 trials, only large gaps are evidence.
"""
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1]))  # the repo root: eval_ppl's segment_ppl
from eval_common import length_table  # noqa: E402
from eval_ppl import segment_ppl  # noqa: E402
ROWS = {  # file stem -> row name
    "none": "base, plain RoPE (no scaling)",
    "yarn_free": "yarn ×4, no fine-tuning",
    "control": "control: yarn ×4 fine-tuned, positions 0..1023 (--num-chunks 1)",
    "pose": "**PoSE + yarn ×4** (2 chunks over 0..32767)",
}
table = lambda title, runs, cell: length_table(title, runs, ROWS, cell)  # eval_common's markdown table


def results(stem):
    f = HERE / f"{stem}.json"
    return {r["length"]: r for r in json.loads(f.read_text())["results"]} if f.exists() else {}


def wilson(k, n, z=1.96):
    p, d = k / n, 1 + z * z / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, (p + z * z / (2 * n)) / d - half), min(1.0, (p + z * z / (2 * n)) / d + half)


def passkey_cell(r):
    k, n = round(r["accuracy"] * r["trials"]), r["trials"]
    lo, hi = wilson(k, n)
    return f"{k}/{n} [{lo:.2f}, {hi:.2f}]"


passkey = {v: results(f"passkey_{v}") | results(f"passkey_{v}_32k") for v in ROWS}
passkey = {v: rs for v, rs in passkey.items() if rs}
ppl = {v: rs for v in ROWS if (rs := results(f"ppl_{v}"))}
table("Passkey retrieval, correct / trials [95% Wilson interval]; same keys and depths in every row", passkey, passkey_cell)
table("Passkey accuracy by key depth, depth: accuracy(trials) (0.1 = key near the start; a depth no trial drew is left out)", passkey,
      lambda r: " ".join(f"{d['depth']:.1f}: {d['accuracy']:.1f}({d['trials']})" for d in r["by_depth"]))
table("Perplexity of the first L tokens of Hamlet", ppl, lambda r: f"{r['ppl']:.2f}")
table("Perplexity of the tokens between the previous length and L only (where extension shows)",
      {v: segment_ppl(rs) for v, rs in ppl.items()}, lambda r: f"{r['ppl']:.2f}")
for f in sorted(HERE.glob("train_*.jsonl")):
    recs = [json.loads(line) for line in f.open() if "loss" in json.loads(line)]
    print(f"\n{f.stem}: {len(recs)} steps, loss {recs[0]['loss']:.3f} -> {recs[-1]['loss']:.3f} "
          f"(mean of the last 5: {sum(r['loss'] for r in recs[-5:]) / 5:.3f}), {sum(r['step_time'] for r in recs) / 60:.1f} min")
print("\nwall-clock of the evaluations (one thread each, two side by side):")
for f in sorted(HERE.glob("passkey_*.json")):
    trials = json.loads(f.read_text())["trials"]
    for L in sorted({t["length"] for t in trials}):
        s = [t["seconds"] for t in trials if t["length"] == L]
        print(f"  {f.stem} {L // 1024}k: {len(s)} trials, {sum(s) / 60:.1f} min ({min(s) / 60:.1f}-{max(s) / 60:.1f} per trial)")

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib not installed: no PNG")
else:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for color, v in enumerate(ROWS):  # one colour per row in both panels
        name, style = ROWS[v].replace("**", ""), dict(marker="o", color=f"C{color}")
        if v in passkey:
            pts = sorted(passkey[v].items())
            a.plot([L for L, _ in pts], [r["accuracy"] for _, r in pts], label=name, **style)
        if v in ppl:
            pts = sorted(segment_ppl(ppl[v]).items())
            b.plot([L for L, _ in pts], [r["ppl"] for _, r in pts], label=name, **style)
    for ax in (a, b):
        ax.axvline(8192, color="grey", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens (dotted: the native 8k window)")
    a.set(ylabel="passkey accuracy", ylim=(-0.05, 1.05), title="SmolLM2-135M 8k -> 32k: passkey retrieval")
    b.set(ylabel="perplexity of the segment ending at L", yscale="log", title="Hamlet, per-segment perplexity")
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "pose_smollm2_32k.png", dpi=120)
    print(f"\nwrote {HERE / 'pose_smollm2_32k.png'}")
