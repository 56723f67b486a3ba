"""Retention report: each model's zero-shot accuracy (95% Wilson interval) and its paired difference from the base
on the same items (the difference with Newcombe's 95% interval for paired proportions, the exact McNemar p), per task; a bar plot per task. Reads results/retention/tasks_<name>.json (eval_tasks.py; partial ones too,
marked), prints markdown tables and writes retention.png.

    .venv/bin/python results/retention/report.py            # from the repo root
"""
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from eval_common import pyplot, save_png  # noqa: E402
from eval_tasks import NORM_TASKS, wilson  # noqa: E402

ROWS = {"base": "base (no scaling)", "yarn4_free": "yarn x4, training-free", "pose": "PoSE fine-tune (32k, yarn x4)",
        "control": "control fine-tune (no skips)"}
TASKS = ["hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "boolq", "lambada", "mmlu"]


def metric(task):
    """The metric lm-eval's leaderboards quote: acc_norm where the task has it, else acc."""
    return "acc_norm" if task in NORM_TASKS else "acc"


def mcnemar(b, c):
    """Exact two-sided McNemar p: of the b + c discordant items, b went one way; binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def newcombe(a, b, c, d):
    """95% interval of the paired difference p_model - p_base = (b - c) / n, where a items are right for both, b
    only for the model (gained), c only for the base (lost), d for neither: Newcombe's method 10 (Stat. Med. 1998),
    the two Wilson intervals combined with the pairs' correlation; unconditional, sound with few discordant items."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    (l1, u1), (l2, u2) = wilson(a + b, n), wilson(a + c, n)
    A = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(A) if A else 0.0
    dl = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    du = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return p1 - p2 - dl, p1 - p2 + du


def paired(base, other, m):
    """(n, difference, (low, high), gained, lost, McNemar p) on the items both runs hold."""
    b = {r["id"]: r[m] for r in base}
    pairs = [(r[m], b[r["id"]]) for r in other if r["id"] in b]
    n = len(pairs)
    if n < 2:
        return None
    cnt = {(x, y): pairs.count((x, y)) for x in (0, 1) for y in (0, 1)}
    gained, lost = cnt[1, 0], cnt[0, 1]
    return n, (gained - lost) / n, newcombe(cnt[1, 1], gained, lost, cnt[0, 0]), gained, lost, mcnemar(gained, lost)


def main(folder=HERE):
    """folder: where tasks_<row>.json are read and retention.png is written (default: this folder; another one,
    e.g. a snapshot of files that running evaluations keep rewriting: report.py /tmp/snap)."""
    folder = Path(folder)
    runs = {k: json.loads((folder / f"tasks_{k}.json").read_text()) for k in ROWS if (folder / f"tasks_{k}.json").is_file()}
    if "base" not in runs:
        sys.exit(f"{folder}/tasks_base.json: missing; run results/retention/campaign.sh free first")
    tasks = [t for t in TASKS if t in runs["base"]["items"]]
    # every table on the items that every model has finished (the runs may stop at different --limit)
    common = {t: set.intersection(*({r["id"] for r in run["items"].get(t, [])} for run in runs.values())) for t in tasks}
    for run in runs.values():
        run["items"] = {t: [r for r in run["items"].get(t, []) if r["id"] in common[t]] for t in tasks}
    print("items per task, common to " + ", ".join(runs) + ": " + ", ".join(f"{t} {len(common[t])}" for t in tasks))
    pct = lambda x: f"{100 * x:.1f}"
    print("\n## Accuracy (%, 95% Wilson interval; acc_norm for HellaSwag, PIQA, ARC, else acc; LAMBADA also perplexity)\n")
    print("| model | " + " | ".join(tasks) + " |\n|---|" + "---|" * len(tasks))
    for k, run in runs.items():
        cells = []
        for t in tasks:
            rs = run["items"].get(t, [])
            if not rs:
                cells.append("-")
                continue
            m, n = metric(t), len(rs)
            s = sum(r[m] for r in rs)
            lo, hi = wilson(s, n)
            cell = f"{pct(s / n)} ({pct(lo)}-{pct(hi)}), n={n}"
            if t == "lambada":
                cell += f"; ppl {math.exp(-sum(r['ll'][0] for r in rs) / n):.1f}"
            cells.append(cell)
        print(f"| {ROWS[k]}{'' if run.get('complete') else ' (partial)'} | " + " | ".join(cells) + " |")
    print("\n## Paired differences on the same items (points; 95% interval; +gained/-lost; McNemar p)\n")
    print("| model | " + " | ".join(tasks) + " | mean over tasks |\n|---|" + "---|" * (len(tasks) + 1))
    pairs = [(k, "base") for k in runs if k != "base"] + [("pose", "control")] * ("pose" in runs and "control" in runs)
    for k, ref in pairs:
        cells, means = [], []
        for t in tasks:
            p = paired(runs[ref]["items"].get(t, []), runs[k]["items"].get(t, []), metric(t))
            if p is None:
                cells.append("-")
                continue
            n, mean, (lo, hi), g, l, pv = p
            means.append(mean)
            cells.append(f"{100 * mean:+.1f} ({100 * lo:+.1f}, {100 * hi:+.1f}) +{g}/-{l} p={pv:.2g}")
        print(f"| {ROWS[k]} − {ref} | " + " | ".join(cells) + f" | {100 * sum(means) / len(means):+.1f} |" if means else "")
    if "lambada" in tasks:  # the word's log-likelihood, paired: a finer measure than the greedy word's accuracy
        print("\nLAMBADA, mean change of the last word's log-likelihood (nats, 95% normal interval, same passages):")
        for k, ref in pairs:
            b = {r["id"]: r["ll"][0] for r in runs[ref]["items"]["lambada"]}
            d = [r["ll"][0] - b[r["id"]] for r in runs[k]["items"]["lambada"]]
            if len(d) > 1:
                mean = sum(d) / len(d)
                half = 1.96 * math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
                print(f"  {ROWS[k]} − {ref}: {mean:+.3f} ({mean - half:+.3f}, {mean + half:+.3f}), n = {len(d)}")
    plot(runs, tasks, folder)


def plot(runs, tasks, folder):
    plt = pyplot()
    if not plt:
        return
    fig, ax = plt.subplots(figsize=(10, 4))
    w = 0.8 / len(runs)
    for j, (k, run) in enumerate(runs.items()):
        xs, ys, lo, hi = [], [], [], []
        for i, t in enumerate(tasks):
            rs = run["items"].get(t, [])
            if rs:
                s, n = sum(r[metric(t)] for r in rs), len(rs)
                a, b = wilson(s, n)
                xs.append(i + (j - (len(runs) - 1) / 2) * w)
                ys.append(100 * s / n)
                lo.append(100 * (s / n - a))
                hi.append(100 * (b - s / n))
        ax.bar(xs, ys, w, yerr=[lo, hi], capsize=2, label=ROWS[k] + ("" if run.get("complete") else " (partial)"))
    ax.set_xticks(range(len(tasks)), [f"{t}\n({metric(t)})" for t in tasks], fontsize=8)
    ax.set_ylabel("accuracy, % (95% interval)")
    ax.set_title("SmolLM2-135M-Instruct, zero-shot, same items for every model")
    ax.legend(fontsize=7)
    save_png(fig, folder / "retention.png")


if __name__ == "__main__":
    main(*sys.argv[1:2])
