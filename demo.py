"""
The PoSE story at toy scale, end to end on a CPU with the project's own tools (`make demo`: 10 min
on 2 cores of the last machine it ran on, about 17 projected for a slower one; results/demo/README.md):

  1. data      the public-domain corpus in data/train/, tokenised with the shipped 2,000-piece
               SentencePiece model (prepare_data.py); data/heldout/macbeth.txt for perplexity
  2. base      a 0.8M-parameter LLaMA pretrained from scratch at Lc = 128 tokens with plain RoPE
               (train.py --method plain): copy and passkey windows first, text mixed in later,
               because retrieval never switches on from text alone (REFERENCE.md section 8)
  3. extend    to Lt = 4 Lc = 512 tokens, each way from the same base and with the same steps and
               sequences per step: no fine-tuning (plain RoPE; linear and YaRN interpolation alone),
               PoSE at Lc with linear and with YaRN, CREAM at Lc with YaRN (PoSE's idea with head / middle /
               tail chunks, the middle drawn near the window's centre), full-length fine-tuning at Lt with YaRN
               (the cost PoSE avoids; its linear twin, 0.00 at every length in the run of 1a9bda9, is left out
               to keep the demo near 20 minutes), and CLEX (a learned continuous scaling, trained at Lc with
               factors 1..Lt/Lc) (train.py)
  4. measure   passkey accuracy and held-out perplexity at Lc .. 2 Lt (eval_passkey.py, eval_ppl.py),
               and the time and peak memory of one fine-tuning step (train.py's log). After the base (both
               cores), the fine-tunes and evaluations run as jobs of two one-thread workers, longest first
  5. report    a table (and one of passkey accuracy by key depth), out/demo/demo.json, demo_passkey.png,
               demo_ppl.png and demo_depth.png (depth x length heat-maps) beside it; results/demo/ holds
               the committed copy (copied there deliberately, so that a run never dirties it)

    python demo.py                      # the whole demo
    python demo.py --quick --work-dir /tmp/d --out /tmp/d/demo.json   # a 1-minute smoke run (tests)
    python demo.py --out results/demo/demo.json     # to update the committed results
    python demo.py --reuse              # keep models already trained in --work-dir, redo the rest
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LC, LT = 128, 512
BASE = dict(steps=900, lr=3e-3, warmup=50, batch=32)  # from scratch; copy+passkey until step 400, then text too
FINE_TUNE = dict(steps=200, lr=1e-3, warmup=20, batch=16)  # every extension: same steps, same sequences per step
# name -> (how the model was made, --rope/--factor at evaluation for the training-free ones)
VARIANTS = {
    "base (plain RoPE)": ("base", None),
    "linear, no fine-tuning": ("base", "linear"),
    "yarn, no fine-tuning": ("base", "yarn"),
    "PoSE linear": ("pose-linear", None),
    "PoSE yarn": ("pose-yarn", None),
    "no-skip control yarn": ("noskip-yarn", None),
    "CREAM yarn": ("cream-yarn", None),
    "full-length yarn": ("full-yarn", None),
    "CLEX": ("clex", None),
}

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--work-dir", default="out/demo", help="models, logs and token files (default: %(default)s)")
parser.add_argument("--out", default="out/demo/demo.json", help="results JSON; the PNGs go beside it (default: %(default)s)")
parser.add_argument("--trials", type=int, default=200, help="passkey trials per length (default: %(default)s)")
parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 384, 512, 768, 1024],
                    help="evaluation lengths in tokens (default: Lc .. 2 Lt)")
parser.add_argument("--workers", type=int, default=2, help="jobs side by side after the base, one thread each (a model this "
                    "small is bound by Python overhead: one thread per job is fastest); the base, which every job needs, "
                    "trains alone with this many threads (default: %(default)s, this machine's 2 cores)")
parser.add_argument("--seed", type=int, default=1337, help="the base's initialisation and every run's data (default: %(default)s)")
parser.add_argument("--reuse", action="store_true", help="skip training runs whose model is already in --work-dir")
parser.add_argument("--quick", action="store_true", help="a smoke run: a few steps and trials (for tests; meaningless numbers)")
args = parser.parse_args()
if args.quick:
    BASE.update(steps=30, warmup=5)
    FINE_TUNE.update(steps=3, warmup=1, batch=4)
    args.trials, args.lengths = min(args.trials, 3), [128, 256]
work = Path(args.work_dir)
ppl_data = "data/heldout/macbeth.txt"  # 36k tokens (The Tempest, held out too, would double the PPL passes' time)
if args.quick:  # perplexity on a 20k-character excerpt only
    ppl_data = work / "heldout-excerpt.txt"
    ppl_data.parent.mkdir(parents=True, exist_ok=True)
    ppl_data.write_text(Path("data/heldout/macbeth.txt").read_text()[:20000])


def run(name, cmd, threads=1, live=True):
    """Run one of the project's scripts, its output into <work>/logs/NAME.log; a live status line."""
    log = work / "logs" / f"{name.replace(' ', '-')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    t0, last = time.time(), 0.0
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, *map(str, cmd)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            f.write(line)
            if live and sys.stdout.isatty():
                print(f"\r  {name}: {line.strip()[:110]:<110}", end="", flush=True)
            elif live and time.time() - last > 30:
                print(f"  {name}: {line.strip()}", flush=True)
                last = time.time()
    if proc.wait():
        sys.exit(f"\nerror: {' '.join(map(str, cmd))} failed (exit {proc.returncode}); see {log}")
    print(f"\r  {name}: done in {time.time() - t0:.0f} s (log: {log})".ljust(124 if live else 0), flush=True)


def train(name, method, rope, init_from, steps, lr, warmup, batch, extra=(), threads=1, live=True):
    out = work / name
    if args.reuse and (out / "hf" / "config.json").exists():
        print(f"  {name}: reusing {out}/hf")
        return out
    cmd = ["train.py", "--data", work / "data/train", "--out-dir", out, "--method", method, "--rope", rope,
           "--train-len", LC, "--target-len", LT, "--max-steps", steps, "--global-batch", batch, "--micro-batch", batch,
           "--lr", lr, "--min-lr", lr / 10, "--warmup", warmup, "--decay", "cosine", "--weight-decay", 0.1, "--beta2", 0.95,
           "--no-ac", "--dtype", "fp32", "--device", "cpu", "--eval-every", 0, "--ckpt-every", steps, "--seed", args.seed, *extra]
    run(name, cmd + (["--init-from", init_from] if init_from else ["--config", "data/demo_model.json"]), threads, live)
    return out


def step_cost(out):
    """Median step time after the first 3 steps and peak RSS, from train.py's log.jsonl."""
    steps = [json.loads(line) for line in open(out / "log.jsonl")]
    times = sorted(s["step_time"] for s in steps if "step_time" in s and s["step"] > 3) or [steps[-1]["step_time"]]
    return dict(step_time_s=times[len(times) // 2], peak_rss_gb=max(s.get("peak_mem_gb", 0) for s in steps), steps=len(times))


def evaluate(name, made, rope):
    """Passkey accuracy and held-out PPL per length of one variant, one thread (a model this small is
    bound by Python overhead, not by matrix products): [{variant, length, passkey, ppl}]."""
    scaling = ["--rope", rope, "--factor", LT // LC] if rope else []
    common = ["--model", work / made / "hf", "--len", *args.lengths, "--threads", 1, *scaling]
    tag = made + (f"-{rope}" if rope else "")
    pk, ppl = work / "eval" / f"{tag}.passkey.json", work / "eval" / f"{tag}.ppl.json"
    run(f"eval {tag} passkey", ["eval_passkey.py", *common, "--trials", args.trials, "--out", pk], threads=1, live=False)
    run(f"eval {tag} ppl", ["eval_ppl.py", *common, "--data", ppl_data, "--mode", "sliding", "--out", ppl],
        threads=1, live=False)
    passkey = {r["length"]: r for r in json.load(open(pk))["results"]}
    return [dict(variant=name, length=r["length"], passkey=passkey[r["length"]]["accuracy"], ppl=r["ppl"],
                 passkey_by_depth={d["depth"]: d["accuracy"] for d in passkey[r["length"]]["by_depth"]},
                 passkey_trials_by_depth={d["depth"]: d["trials"] for d in passkey[r["length"]]["by_depth"]})
            for r in json.load(open(ppl))["results"]]


t_start = time.time()
print(f"1/4 data: tokenising data/train into {work}/data")
run("data train", ["prepare_data.py", "--tokenizer", "data/tokenizer.model", "--out", work / "data" / "train",
                   "--min-tokens", LC, "data/train"])
print(f"2/4 base: pretraining at Lc = {LC} tokens, {BASE['steps']} steps x {BASE['batch']} windows, {args.workers} threads")
switch = BASE["steps"] * 4 // 9  # step 400 of 900: text joins once retrieval has switched on
base = train("base", "plain", "none", None, BASE["steps"], BASE["lr"], BASE["warmup"], BASE["batch"],
             ["--mix", "copy=0.5,passkey=0.5", "--mix-from", f"{switch}:copy=0.1,passkey=0.45,text=0.45",
              "--gap-warmup", BASE["steps"] * 2 // 3], threads=args.workers)
print(f"3/4 extension to Lt = {LT}: {FINE_TUNE['steps']} steps x {FINE_TUNE['batch']} sequences each, and 4/4 evaluation of "
      f"each model at {', '.join(map(str, args.lengths))} tokens ({args.trials} passkey trials per length, perplexity on "
      f"{ppl_data}): {args.workers} jobs side by side, one thread each")
FINE_TUNES = ("full-yarn", "clex", "cream-yarn", "pose-yarn", "noskip-yarn", "pose-linear")  # longest first: a full-length step is ~5x PoSE's


def job(made, evaluate_only=None):
    """One worker's job: fine-tune `made` from the base (unless it is the base), then evaluate its variants. The
    jobs are queued longest first, so that the workers finish together (longest-processing-time scheduling)."""
    if made != "base":
        method, rope = (made + "-none").split("-")[:2]
        # the control: PoSE's run with its one ingredient removed, one chunk (positions 0..Lc-1, no skip), same YaRN s
        method, skips = ("pose", ["--num-chunks", 1]) if method == "noskip" else (method, [])
        train(made, method, rope, base / "hf", FINE_TUNE["steps"], FINE_TUNE["lr"], FINE_TUNE["warmup"],
              FINE_TUNE["batch"], ["--mix", "copy=0.1,passkey=0.45,text=0.45", *skips], live=False)
    return [r for name, (m, rope) in VARIANTS.items() if m == made and evaluate_only in (None, name)
            for r in evaluate(name, m, rope)]


with ThreadPoolExecutor(args.workers) as workers:
    pending = [workers.submit(job, made) for made in FINE_TUNES]
    pending += [workers.submit(job, "base", name) for name, (m, _) in VARIANTS.items() if m == "base"]
    results = [r for p in pending for r in p.result()]
results.sort(key=lambda r: (list(VARIANTS).index(r["variant"]), r["length"]))
models = {made: work / made for made in ("base",) + FINE_TUNES}
costs = {made: step_cost(out) for made, out in models.items()}

# ----------------------------------------------------------------------------- report
print(f"\npasskey accuracy / held-out perplexity (Lc = {LC}, Lt = {LT}; {args.trials} trials per length)")
print(f"{'variant':<24}" + "".join(f"{L:>14}" for L in args.lengths))
for name in VARIANTS:
    row = {r["length"]: r for r in results if r["variant"] == name}
    print(f"{name:<24}" + "".join(f"{row[L]['passkey']:>7.2f} {row[L]['ppl']:>6.1f}" for L in args.lengths))
depths = sorted({d for r in results for d in r["passkey_by_depth"]})
print(f"\npasskey accuracy by key depth (uniform depths binned by their centre), all lengths pooled ({len(args.lengths)} x "
      f"{args.trials} trials per variant)")
print(f"{'variant':<24}" + "".join(f"{d:>7g}" for d in depths) + f"{'all':>7}")
by_depth = {}
for name in VARIANTS:
    rows = [r for r in results if r["variant"] == name]
    cell = lambda d: sum(r["passkey_by_depth"].get(d, 0) * r["passkey_trials_by_depth"].get(d, 0) for r in rows) / \
        max(1, sum(r["passkey_trials_by_depth"].get(d, 0) for r in rows))
    by_depth[name] = {d: cell(d) for d in depths}
    print(f"{name:<24}" + "".join(f"{by_depth[name][d]:>7.2f}" for d in depths) + f"{sum(r['passkey'] for r in rows) / len(rows):>7.2f}")
pose, full = costs["pose-yarn"]["step_time_s"], costs["full-yarn"]["step_time_s"]
print(f"\nfine-tuning step ({FINE_TUNE['batch']} sequences): PoSE {pose:.3f} s at {LC} tokens, full-length {full:.3f} s "
      f"at {LT} tokens ({full / pose:.1f}x); peak RSS PoSE {costs['pose-yarn']['peak_rss_gb']:.2f} GB, "
      f"full {costs['full-yarn']['peak_rss_gb']:.2f} GB; whole demo {(time.time() - t_start) / 60:.1f} min")
settings = dict(train_len=LC, target_len=LT, base=BASE, fine_tune=FINE_TUNE, trials=args.trials, lengths=args.lengths,
                workers=args.workers, seed=args.seed, quick=args.quick, model="data/demo_model.json",
                tokenizer="data/tokenizer.model", ppl_data=f"{ppl_data} (sliding windows, stride L/2)")
out = Path(args.out)
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(dict(settings=settings, results=results, passkey_by_depth_all_lengths=by_depth, step_costs=costs,
                               wall_minutes=round((time.time() - t_start) / 60, 2)), indent=1) + "\n")
print(f"wrote {out}")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: no plots (pip install matplotlib)")
    sys.exit(0)
for metric, label in (("passkey", "passkey accuracy"), ("ppl", "held-out perplexity")):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in VARIANTS:
        rows = [r for r in results if r["variant"] == name]
        ax.plot([r["length"] for r in rows], [r[metric] for r in rows], marker="o", label=name,
                linestyle="-" if "PoSE" in name else "--" if "full" in name else ":")
    for x, text in ((LC, "Lc"), (LT, "Lt")):
        ax.axvline(x, color="grey", lw=0.8)
        ax.text(x, 1.02, text, transform=ax.get_xaxis_transform(), ha="center")
    ax.set(xlabel="tokens", ylabel=label, yscale="log" if metric == "ppl" else "linear")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out.with_name(f"{out.stem}_{metric}.png")
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")
heat = [name for name in ("PoSE yarn", "no-skip control yarn", "CREAM yarn", "full-length yarn") if name in VARIANTS]
fig, axes = plt.subplots(1, len(heat), figsize=(4 * len(heat), 3.4), sharey=True)
for ax, name in zip(axes, heat):
    rows = [r for r in results if r["variant"] == name]
    grid = [[r["passkey_by_depth"].get(d, float("nan")) for r in rows] for d in depths]
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
    for i, line in enumerate(grid):
        for j, v in enumerate(line):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set(xticks=range(len(rows)), xticklabels=[r["length"] for r in rows], yticks=range(len(depths)), yticklabels=depths,
           xlabel="tokens", title=name)
axes[0].set_ylabel("key depth")
fig.colorbar(im, ax=axes, label="passkey accuracy", shrink=0.8)
png = out.with_name(f"{out.stem}_depth.png")
fig.savefig(png, dpi=110)
print(f"wrote {png}")
