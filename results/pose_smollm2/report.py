"""Tables (markdown) and one PNG of results/pose_smollm2/*.json, written by campaign.sh:
    python results/pose_smollm2/report.py        # prints the tables, writes results/pose_smollm2/pose_smollm2.png
"""
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1]))  # the repo root: eval_ppl's segment_ppl
from eval_common import length_table  # noqa: E402
from eval_ppl import segment_ppl  # noqa: E402
VARIANTS = {  # file stem -> row name
    "none": "base, plain RoPE (no scaling)",
    "linear_free": "linear ×2, no fine-tuning",
    "yarn_free": "yarn ×2, no fine-tuning",
    "pose_linear": "**PoSE + linear ×2** (1k-token steps)",
    "pose_yarn": "**PoSE + yarn ×2** (1k-token steps)",
}
table = lambda title, runs, cell: length_table(title, runs, VARIANTS, cell)  # eval_common's markdown table


def load(kind):
    out = {}
    for v in VARIANTS:
        f = HERE / f"{kind}_{v}.json"
        if f.exists():
            out[v] = {r["length"]: r for r in json.loads(f.read_text())["results"]}
    return out


passkey, ppl = load("passkey"), load("ppl")
table("Passkey retrieval, correct / trials", passkey, lambda r: f"{round(r['accuracy'] * r['trials'])}/{r['trials']}")
table("Perplexity of the first L tokens of Hamlet, Othello, King Lear (token-weighted)", ppl, lambda r: f"{r['ppl']:.2f}")
table("Perplexity of the tokens between the previous length and L only", {v: segment_ppl(rs) for v, rs in ppl.items()},
      lambda r: f"{r['ppl']:.2f}")
for f in sorted(HERE.glob("train_*.jsonl")):
    recs = [json.loads(line) for line in f.open() if "loss" in json.loads(line)]
    print(f"\n{f.stem}: {len(recs)} steps, loss {recs[0]['loss']:.3f} -> {recs[-1]['loss']:.3f} "
          f"(mean of the last 5: {sum(r['loss'] for r in recs[-5:]) / 5:.3f}), {sum(r['step_time'] for r in recs) / 60:.1f} min")
for m in ("pose", "full"):
    if (f := HERE / f"step_{m}.jsonl").exists():
        r = json.loads(f.read_text().splitlines()[-1])
        print(f"one {m} step: {r['step_time']:.1f} s, peak RSS {r['peak_mem_gb']:.2f} GB")

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib not installed: no PNG")
else:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for color, v in enumerate(VARIANTS):  # one colour per variant in both panels
        name, style = VARIANTS[v].replace("**", ""), dict(marker="o", color=f"C{color}")
        if v in passkey:
            pts = sorted(passkey[v].items())
            a.plot([L for L, _ in pts], [r["accuracy"] for _, r in pts], label=name, **style)
        if v in ppl:
            pts = sorted(ppl[v].items())
            b.plot([L for L, _ in pts], [r["ppl"] for _, r in pts], label=name, **style)
    for ax in (a, b):
        ax.axvline(8192, color="grey", ls=":", lw=1)
        ax.set_xlabel("tokens (dotted: the native 8k window)")
    a.set(ylabel="passkey accuracy", ylim=(-0.05, 1.05), title="SmolLM2-135M: passkey retrieval")
    b.set(ylabel="perplexity (first L tokens, token-weighted)", yscale="log", title="perplexity, three held-out plays")
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "pose_smollm2.png", dpi=120)
    print(f"\nwrote {HERE / 'pose_smollm2.png'}")
