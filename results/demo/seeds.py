"""How much of the demo's PoSE / CREAM / full-length comparison is the fine-tuning seed? From the base of a finished
`make demo` run (out/demo/base/hf), each extension is fine-tuned again with demo.py's own train.py flags under other
--seed values (the order of the training windows and every PoSE / CREAM position draw), and passkey-evaluated with
the demo's command (200 trials per length, the same keys and depths in every run). The demo's own seed (1337) is
rerun too: it must give the demo run's weights byte for byte and its passkey outputs trial for trial (same machine,
same thread count), which this script checks.

    python results/demo/seeds.py                                   # after make demo; writes out/demo-seeds/seeds.json
    python results/demo/seeds.py --out results/demo/seeds.json     # the committed copy

Two one-thread jobs side by side, longest first, as demo.py runs them. Restartable: a finished fine-tune or
evaluation in --work-dir is kept.
"""
import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean, stdev

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--demo-dir", default="out/demo", help="a finished demo run (default: %(default)s)")
parser.add_argument("--work-dir", default="out/demo-seeds", help="the fine-tunes and evaluations (default: %(default)s)")
parser.add_argument("--out", help="results JSON (default: WORK_DIR/seeds.json)")
parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2, 3, 4], help="fine-tuning seeds; 1337 is the "
                    "demo's own (default: %(default)s)")
parser.add_argument("--variants", nargs="+", default=["full-yarn", "cream-yarn", "pose-yarn", "noskip-yarn"],
                    help="noskip-yarn is PoSE's control: --num-chunks 1 (default: %(default)s)")
parser.add_argument("--workers", type=int, default=2, help="jobs side by side, one thread each (default: %(default)s)")
args = parser.parse_args()
demo, work = Path(args.demo_dir), Path(args.work_dir)
settings = json.loads((demo / "demo.json").read_text())["settings"]
LC, LT, FT = settings["train_len"], settings["target_len"], settings["fine_tune"]
if not (demo / "base" / "hf" / "config.json").exists():
    sys.exit(f"error: no base model at {demo}/base/hf: run `make demo` first (or pass --demo-dir)")


def run(cmd, log):
    with open(log, "a") as f:  # a rerun adds to the log (e.g. "complete: nothing to do")
        if subprocess.run([sys.executable, *map(str, cmd)], stdout=f, stderr=subprocess.STDOUT,
                          env=dict(os.environ, OMP_NUM_THREADS="1")).returncode:
            sys.exit(f"error: {' '.join(map(str, cmd))} failed; see {log}")


def job(variant, seed):
    """Fine-tune `variant` from the demo's base with `seed` (demo.py's train() flags), then its passkey evaluation."""
    out, method, rope = work / f"{variant}-s{seed}", *variant.split("-")
    method, skips = ("pose", ["--num-chunks", 1]) if method == "noskip" else (method, [])  # demo.py's control
    work.mkdir(parents=True, exist_ok=True)
    if not (out / "hf" / "config.json").exists():
        run(["train.py", "--data", demo / "data/train", "--out-dir", out, "--method", method, "--rope", rope,
             "--train-len", LC, "--target-len", LT, "--max-steps", FT["steps"], "--global-batch", FT["batch"],
             "--micro-batch", FT["batch"], "--lr", FT["lr"], "--min-lr", FT["lr"] / 10, "--warmup", FT["warmup"],
             "--decay", "cosine", "--weight-decay", 0.1, "--beta2", 0.95, "--no-ac", "--dtype", "fp32", "--device", "cpu",
             "--eval-every", 0, "--ckpt-every", FT["steps"], "--seed", seed, "--mix", "copy=0.1,passkey=0.45,text=0.45",
             "--init-from", demo / "base" / "hf", *skips], f"{out}.train.log")
    pk = work / f"{variant}-s{seed}.passkey.json"
    run(["eval_passkey.py", "--model", out / "hf", "--len", *settings["lengths"], "--threads", 1,
         "--trials", settings["trials"], "--out", pk, "--resume"], f"{out}.passkey.log")
    trials = json.loads(pk.read_text())["trials"]
    print(f"  {variant} seed {seed}: done", flush=True)
    return variant, seed, trials


def acc(trials, lengths, depth=None):
    ts = [t for t in trials if t["length"] in lengths and (depth is None or abs(t["depth"] - depth) <= 0.1)]
    return sum(t["correct"] for t in ts) / len(ts)


print(f"{len(args.variants)} variants x {len(args.seeds)} seeds from {demo}/base/hf, {args.workers} one-thread jobs at once")
with ThreadPoolExecutor(args.workers) as pool:
    done = list(pool.map(lambda vs: job(*vs), [(v, s) for v in args.variants for s in args.seeds]))
within = [L for L in settings["lengths"] if LC <= L <= LT]
rows = []
for variant, seed, trials in done:
    rows.append(dict(variant=variant, seed=seed, at_Lt=acc(trials, [LT]), at_Lt_depth_07=acc(trials, [LT], 0.7),
                     at_Lt_depth_09=acc(trials, [LT], 0.9), Lc_to_Lt=acc(trials, within),
                     beyond_Lt=acc(trials, [L for L in settings["lengths"] if L > LT]),
                     by_length={L: acc(trials, [L]) for L in settings["lengths"]}))
    if seed == settings["seed"]:  # the demo's own seed: the same arithmetic must give the same model and outputs
        same_w = (work / f"{variant}-s{seed}/hf/model.safetensors").read_bytes() == \
            (demo / variant / "hf/model.safetensors").read_bytes()
        key = lambda ts: sorted((t["length"], t["depth"], t["key"], t["output"]) for t in ts)
        same_out = key(trials) == key(json.loads((demo / "eval" / f"{variant}.passkey.json").read_text())["trials"])
        rows[-1].update(repeats_demo_weights=same_w, repeats_demo_outputs=same_out)
cols = ["at_Lt", "at_Lt_depth_07", "at_Lt_depth_09", "Lc_to_Lt", "beyond_Lt"]
summary = {}
print(f"\npasskey accuracy, {settings['trials']} trials per length (depth d: keys at depths d +- 0.1 at Lt = {LT}); "
      f"mean +- standard deviation over seeds {', '.join(map(str, args.seeds))}\n")
print("| variant | seed | at Lt | Lt, depth 0.7 | Lt, depth 0.9 | Lc..Lt | beyond Lt |\n|---|---|---:|---:|---:|---:|---:|")
for variant in args.variants:
    mine = [r for r in rows if r["variant"] == variant]
    for r in mine:
        print(f"| {variant} | {r['seed']} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |")
    summary[variant] = {c: dict(mean=mean(r[c] for r in mine), std=stdev(r[c] for r in mine) if len(mine) > 1 else 0.0,
                                min=min(r[c] for r in mine), max=max(r[c] for r in mine)) for c in cols}
    print(f"| **{variant}** | mean ± sd | " + " | ".join(f"{summary[variant][c]['mean']:.2f} ± {summary[variant][c]['std']:.2f}"
                                                       for c in cols) + " |")
for r in rows:
    if "repeats_demo_weights" in r:
        print(f"seed {r['seed']} {r['variant']}: weights identical to the demo run's: {r['repeats_demo_weights']}, "
              f"passkey outputs identical: {r['repeats_demo_outputs']}")
paired = {}  # what the skips add: PoSE minus its no-skip control, seed by seed (same data order, same passkey trials)
if {"pose-yarn", "noskip-yarn"} <= set(args.variants):
    by = {(r["variant"], r["seed"]): r for r in rows}
    print("\nPoSE yarn minus the no-skip control, paired by seed (mean ± sd over seeds; seeds where PoSE is ahead / behind)")
    for c in cols:
        d = [by["pose-yarn", s][c] - by["noskip-yarn", s][c] for s in args.seeds]
        paired[c] = dict(mean=mean(d), std=stdev(d) if len(d) > 1 else 0.0, by_seed=dict(zip(args.seeds, d)),
                         ahead=sum(x > 0 for x in d), behind=sum(x < 0 for x in d))
        print(f"  {c:<15} {paired[c]['mean']:+.3f} ± {paired[c]['std']:.3f}  ({paired[c]['ahead']} / {paired[c]['behind']})")
out = Path(args.out or work / "seeds.json")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(dict(demo_dir=str(demo), demo_settings=settings, seeds=args.seeds, runs=rows, summary=summary,
                               pose_minus_control=paired),
                          indent=1) + "\n")
print(f"wrote {out}")
