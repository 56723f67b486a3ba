"""
Why the skips help where they help (issue 25, deliverable 3): two measurements side by side.

1. Where retrieval fails. Every passkey trial of study.py's cells (200 prompts per length per seed, the same
   prompts for every model) binned by the length of the prompt (where the question sits) and by the key's absolute
   position (depth x prompt tokens, to within the filler's granularity). The key-to-question distance is the
   difference of the two, so the grid holds both readings: at a fixed length, is it how far back the key is or how
   far from the start? at a fixed key position, how far the question is?
2. What each method trains. The position ids train.py's samplers give (pose_sampler.py, 4,000 windows at Lc):
   the share of training tokens at each absolute position, and of causal (query, key) pairs at each distance.
3. How it fails. Each answer's five digits against the key's: every model finds the key (its first digit), and
   a wrong later digit is usually the key's previous or next digit: the copy repeated a step or skipped one.

    python results/skips/mechanism.py                      # reads out/skips/eval, writes mechanism.json / .png
    python results/skips/mechanism.py --cells pose2-yarn-s8-200st-mix-demo noskip-yarn-s8-200st-mix-demo --s 8

No model runs here: it reads study.py's per-trial passkey JSONs (not committed: 190 kB each) and writes the binned
counts (committed), so every figure in the README comes from mechanism.json. Seconds.
"""
import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from methods import num_chunks  # noqa: E402  (results/skips/methods.py: study.py's flags)
from pose_sampler import sample_full_length, sample_pose, sample_randpos  # noqa: E402

LC, BIN = 128, 128
HERE = Path(__file__).resolve().parent
METHODS = ("pose2", "pose4", "noskip", "full", "randpos")

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--work-dir", default="out/skips", help="study.py's work dir (default: %(default)s)")
parser.add_argument("--s", type=int, default=4, help="extension ratio Lt / Lc of the cells (default: %(default)s)")
parser.add_argument("--cells", nargs="+", help="cell names without seed (default: every method at the demo's point and s)")
parser.add_argument("--step", type=int, default=200, help="the fine-tunes' step whose evaluations are read (default: %(default)s)")
parser.add_argument("--windows", type=int, default=4000, help="sampled training windows per method (default: %(default)s)")
parser.add_argument("--out", default=str(HERE / "mechanism.json"), help="(default: %(default)s)")
args = parser.parse_args()
LT = LC * args.s
cells = args.cells or [f"{m}-yarn-s{args.s}-200st-mix-demo" for m in METHODS]


def passkey_trials(cell):
    """(seeds, every trial) of the cell's complete passkey evaluations at --step, pooled over seeds."""
    seeds, trials = [], []
    for f in sorted(Path(args.work_dir, "eval").glob(f"{cell}-seed*-step{args.step}.passkey.json")):
        run = json.loads(f.read_text())
        if run["settings"].get("complete"):
            seeds.append(f.name.split("-seed")[1].split("-")[0])
            trials += run["trials"]
    return seeds, trials


def retrieval_grid(trials):
    """{length: {key-position bin: [correct, trials]}}."""
    grid = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for t in trials:
        key_pos = t["depth"] * t["prompt_tokens"]
        g = grid[t["length"]][int(key_pos // BIN) * BIN]
        g[0] += int(t["correct"])
        g[1] += 1
    return {L: dict(sorted(b.items())) for L, b in sorted(grid.items())}


def coverage(method):
    """Shares of training tokens by absolute position and of causal pairs by distance, in BIN-wide bins up to Lt."""
    rng, doc = np.random.default_rng(0), torch.arange(max(5 * LC, LT))
    pos_hist, dist_hist = np.zeros(LT // BIN), np.zeros(LT // BIN)
    for _ in range(args.windows // (4 if method == "full" else 1)):  # a full-length window holds s x Lc tokens
        if method == "full":
            _, pos = sample_full_length(doc, LT, rng=rng)
        elif method == "randpos":
            _, pos = sample_randpos(doc, LC, LT, rng=rng)
        else:
            _, pos = sample_pose(doc, LC, LT, num_chunks(method), rng=rng)
        p = pos.numpy()
        pos_hist += np.bincount(p // BIN, minlength=LT // BIN)[:LT // BIN]
        d = (p[:, None] - p[None, :])[np.tril_indices(len(p))]  # query minus key, keys at or before the query
        dist_hist += np.bincount(d // BIN, minlength=LT // BIN)[:LT // BIN]
    return dict(position=(pos_hist / pos_hist.sum()).round(4).tolist(), distance=(dist_hist / dist_hist.sum()).round(4).tolist())


def copy_errors(trials):
    """{length: the answer's per-digit accuracy (5-digit keys) and what its wrong digits are}: the key's digit
    before (the copy repeated a step), after (it skipped one), either (the two are equal), another, or missing."""
    res = {}
    for t in trials:
        r = res.setdefault(t["length"], dict(trials=0, digit_right=[0] * 5, repeat=0, skip=0, either=0, other=0, missing=0))
        key, found = str(t["key"]), re.search(r"\d+", t["output"])
        out = (found.group() if found else "").ljust(5, "?")
        r["trials"] += 1
        for i in range(5):
            if out[i] == key[i]:
                r["digit_right"][i] += 1
                continue
            repeat, skip = i > 0 and out[i] == key[i - 1], i < 4 and out[i] == key[i + 1]
            r["missing" if out[i] == "?" else "either" if repeat and skip else "repeat" if repeat else "skip" if skip
              else "other"] += 1
    return dict(sorted(res.items()))


out = dict(settings=dict(train_len=LC, target_len=LT, bin=BIN, windows=args.windows, work_dir=args.work_dir, step=args.step),
           cells={})
for cell in cells:
    seeds, trials = passkey_trials(cell)
    method = cell.split("-")[0]
    out["cells"][cell] = dict(seeds=seeds, retrieval=retrieval_grid(trials),
                              training=coverage(method) if method in METHODS else None, copy=copy_errors(trials))

print(f"passkey accuracy by the key's absolute position ({BIN}-token bins; trials pooled over seeds), and the share of "
      f"training tokens at that position (s = {args.s}, Lt = {LT})")
for cell, r in out["cells"].items():
    print(f"\n{cell} (seeds {', '.join(r['seeds']) or 'none'})")
    print("| prompt length | " + " | ".join(f"key at {b}-{b + BIN - 1}" for b in range(0, 2 * LT, BIN)) + " |")
    print("|---:|" + "---:|" * (2 * LT // BIN))
    for L, bins in r["retrieval"].items():
        print(f"| {L} | " + " | ".join(f"{bins[b][0] / bins[b][1]:.2f} ({bins[b][1]})" if b in bins else ""
                                        for b in range(0, 2 * LT, BIN)) + " |")
    if r["training"]:
        print("| training tokens at that position | " + " | ".join(f"{x:.3f}" for x in r["training"]["position"]) + " |")
        print("| training pairs at that distance | " + " | ".join(f"{x:.3f}" for x in r["training"]["distance"]) + " |")
    for L in (LT, LT * 3 // 2):
        c = r["copy"].get(L)
        if c:
            wrong = c["repeat"] + c["skip"] + c["either"] + c["other"] + c["missing"]
            digits = " / ".join(f"{x / c['trials']:.2f}" for x in c["digit_right"])
            print(f"copy at {L}: per-digit accuracy {digits}; "
                  f"of {wrong} wrong digits, the key's previous digit {c['repeat']}, its next {c['skip']}, either "
                  f"{c['either']}, another {c['other']}, none (a shorter answer) {c['missing']}")
Path(args.out).write_text(json.dumps(out, indent=1))

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

colors = dict(pose2="C0", pose4="C2", noskip="C1", full="k", randpos="C3")
fig, axes = plt.subplots(1, 4, figsize=(21, 4.4))
for cell, r in out["cells"].items():
    m = cell.split("-")[0]
    at_lt = r["retrieval"].get(LT, {})
    if at_lt:
        xs = sorted(at_lt)
        axes[0].plot([x + BIN / 2 for x in xs], [at_lt[x][0] / at_lt[x][1] for x in xs], "o-", color=colors.get(m), label=m)
    first = {L: b[0] for L, b in r["retrieval"].items() if 0 in b}
    if first:
        axes[1].plot(list(first), [c / n for c, n in first.values()], "o-", color=colors.get(m), label=m)
    c = r["copy"].get(LT)
    if c:
        axes[3].plot(range(1, 6), [x / c["trials"] for x in c["digit_right"]], "o-", color=colors.get(m), label=m)
    if r["training"]:
        axes[2].step([b * BIN for b in range(LT // BIN + 1)], [r["training"]["position"][0]] + r["training"]["position"],
                     color=colors.get(m), label=m)
axes[0].set(xlabel=f"key's absolute position (bin centre), prompt length Lt = {LT}", ylabel="passkey accuracy",
            title="at Lt: how far from the start the key is", ylim=(-0.02, 1.02))
axes[1].set(xlabel="prompt length (where the question sits)", ylabel="passkey accuracy",
            title=f"key in the first {BIN} tokens: how far the question is", ylim=(-0.02, 1.02))
axes[2].set(xlabel="absolute position", ylabel=f"share of training tokens per {BIN}-token bin",
            title="what the samplers train (position ids)")
axes[3].set(xlabel="digit of the answer", ylabel="right digit in place", xticks=range(1, 6), ylim=(-0.02, 1.02),
            title=f"at Lt = {LT}: the key is found, the copy slips")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend()
fig.tight_layout()
fig.savefig(Path(args.out).with_suffix(".png"), dpi=110)
print(f"\nwrote {args.out} and {Path(args.out).with_suffix('.png')}")
