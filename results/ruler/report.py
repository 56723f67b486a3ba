"""The RULER-style table of results/ruler/{none,yarn2_free,pose_32k,control_32k,yarn4_free}.json (campaign.sh), in markdown:
    python results/ruler/report.py
One row per task and model, one column per length; a cell is the mean string_match_all over its trials, with the
number of trials in brackets. The PNG of each model is eval_ruler.py's own (none.png, yarn2_free.png, ...).
"""
import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parents[1]))  # the repo root: eval_common
from eval_common import length_table  # noqa: E402
MODELS = {"none": "base (no scaling)", "yarn2_free": "yarn ×2, no fine-tuning",
          "pose_32k": "PoSE, yarn ×4 (fine-tuned to 32k)", "control_32k": "control (no skips), yarn ×4",
          "yarn4_free": "yarn ×4, no fine-tuning"}

runs = {m: json.loads((HERE / f"{m}.json").read_text()) for m in MODELS if (HERE / f"{m}.json").exists()}
tasks = list(dict.fromkeys(r["task"] for run in runs.values() for r in run["results"]))
cells, names = {}, {}
for task in tasks + ["mean"]:
    for m, run in runs.items():
        rs = [r for r in run["results"] if r["task"] == task or task == "mean"]
        by_len = {}
        for L in sorted({r["length"] for r in rs}):
            here = [r for r in rs if r["length"] == L]
            if task == "mean" and len(here) < len(tasks):
                continue  # a mean over the tasks that happen to have run would mislead
            by_len[L] = (float(np.mean([r["score"] for r in here])), sum(r["trials"] for r in here))
        cells[task, m], names[task, m] = by_len, f"{task}, {MODELS[m]}" + ("" if run["settings"]["complete"] else " (incomplete)")
length_table("RULER-style tasks, string_match_all (0-1) [trials]; the same prompts in every row", cells, names,
             lambda c: f"{c[0]:.2f} [{c[1]}]")
for m, run in runs.items():
    s = [t["seconds"] for t in run["trials"]]
    print(f"\n{m}: {len(s)} trials, {sum(s) / 60:.1f} min of one thread")
    for L in sorted({t["length"] for t in run["trials"]}):
        s = [t["seconds"] for t in run["trials"] if t["length"] == L]
        print(f"  {L // 1024}k: {len(s)} trials, {min(s):.0f}-{max(s):.0f} s per trial")

# PoSE against its control, prompt by prompt (the same prompts: trial i of a task at a length): which scores higher
if {"pose_32k", "control_32k"} <= runs.keys():
    score = {m: {(t["task"], t["length"], t["trial"]): t["score"] for t in runs[m]["trials"]} for m in ("pose_32k", "control_32k")}
    both = sorted(score["pose_32k"].keys() & score["control_32k"].keys(), key=lambda k: (k[1], k[0], k[2]))
    print("\nPoSE vs control on the same prompts: PoSE higher / control higher / equal, mean difference, exact sign test")
    for L in sorted({k[1] for k in both}) + [None]:
        d = [score["pose_32k"][k] - score["control_32k"][k] for k in both if L is None or k[1] == L]
        up, down = sum(x > 0 for x in d), sum(x < 0 for x in d)
        n, k = up + down, min(up, down)
        p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0  # two-sided
        print(f"  {'all' if L is None else f'{L // 1024}k':>4}: {len(d)} prompts, {up} / {down} / {len(d) - n}, "
              f"{np.mean(d):+.3f}, p = {p:.2f}")
