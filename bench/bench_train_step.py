"""
Cost of one training step on CPU: PoSE at Lc vs plain training at Lc vs full-length training at Lt.

    python bench/bench_train_step.py                      # Lc = 128, Lt / Lc = 2, 4, 8, 16 sequences per step
    python bench/bench_train_step.py --ac --reps 12       # with activation checkpointing, more repeats
    (the figures also go to --out: results/bench/train_step.json, train_step_ac.json with --ac)
    python bench/bench_train_step.py --threads 2 --clock wall

A step is what train.py does: draw 16 examples (the sampler included), forward with the loss,
backward, clip, AdamW. The three cases differ only in their examples:
    plain  Lc tokens at positions 0..Lc-1          (fine-tuning without extension)
    pose   Lc tokens at PoSE positions up to Lt-1  (sample_pose, 2 chunks)
    full   Lt tokens at positions 0..Lt-1          (sample_full_length: the baseline PoSE replaces)
Time: median of --reps steps per case, the cases interleaved step by step (order alternating), and
ratios as the median of the per-round ratios. By default one thread and the process's CPU time
(time.process_time): on a shared machine wall-clock swings several-fold with other processes' load. Memory: each case in a fresh process; "step MB" is its peak RSS minus the RSS
once the model is built (the peak is reset there via /proc/self/clear_refs, Linux only), so it holds
grads, AdamW moments and activations but not the torch runtime and weights, printed as "base".
glibc's malloc is pinned to mmap every block >= 64 kB (MALLOC_MMAP_THRESHOLD_): freed blocks then
leave the RSS at once, so the peak RSS follows the peak of live tensors. Without it, its adaptive
threshold keeps some freed blocks resident and identical runs differ by up to 10 MB. Goals: pose/plain <= 1.03 (time and memory), pose/full at
8x <= 0.15 (time) and <= 0.3 (memory).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import Llama, LlamaConfig  # noqa: E402
from pose_sampler import sample_full_length, sample_pose  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--train-len", type=int, default=128, help="Lc (default: %(default)s)")
parser.add_argument("--ratios", type=int, nargs="+", default=[2, 4, 8], help="Lt / Lc values (default: 2 4 8)")
parser.add_argument("--batch", type=int, default=16, help="sequences per step (default: %(default)s)")
parser.add_argument("--reps", type=int, default=8, help="timed steps per case, after one warm-up (default: %(default)s)")
parser.add_argument("--mem-runs", type=int, default=1, help="fresh processes per case, median (default: %(default)s)")
parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="CPU time of this process or wall-clock (default: cpu)")
parser.add_argument("--ac", action="store_true", help="activation checkpointing per block (train.py's default)")
parser.add_argument("--out", help="JSON of the figures (default: results/bench/train_step.json; train_step_ac.json with --ac)")
parser.add_argument("--child", nargs=2, metavar=("CASE", "RATIO"), help=argparse.SUPPRESS)  # memory of one case
args = parser.parse_args()
torch.set_num_threads(args.threads)
clock = time.process_time if args.clock == "cpu" else time.perf_counter
CONFIG = dict(vocab_size=1024, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4)
Lc = args.train_len


def status_mb(field):
    """VmRSS (resident now) or VmHWM (peak resident since the last reset) of this process, in MB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB


def setup(ratio):
    torch.manual_seed(0)
    rope = {"rope_type": "linear", "factor": float(ratio), "original_max_position_embeddings": Lc}
    model = Llama(LlamaConfig(**CONFIG, max_position_embeddings=Lc * ratio, rope_scaling=rope))
    model.init_weights()
    model.activation_checkpointing = args.ac
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    docs = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], size=(32, 5 * Lc * max(args.ratios)))
    return model, opt, docs


def batch(docs, case, ratio, rng):
    examples = []
    for _ in range(args.batch):
        doc = docs[rng.integers(len(docs))]
        if case == "pose":
            examples.append(sample_pose(doc, Lc, Lc * ratio, 2, rng=rng))
        else:
            examples.append(sample_full_length(doc, Lc if case == "plain" else Lc * ratio, rng=rng))
    return (torch.stack(t) for t in zip(*examples))  # (B, T), (B, T)


def step(model, opt, docs, case, ratio, rng):
    x, pos = batch(docs, case, ratio, rng)
    model(x, position_ids=pos, labels=x).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


if args.child:  # one case in a fresh process: its peak memory
    case, ratio = args.child[0], int(args.child[1])
    model, opt, docs = setup(ratio)
    sample_pose(docs[0], Lc, Lc * ratio, 2), sample_full_length(docs[0], Lc)  # touch the samplers' code pages first
    base = status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS: setup's transients do not count
    rng = np.random.default_rng(1)
    for _ in range(2):  # the second step holds the AdamW moments too
        step(model, opt, docs, case, ratio, rng)
    print(json.dumps({"base": base, "step": status_mb("VmHWM") - base}))
    sys.exit()

n_params = sum(p.numel() for p in Llama(LlamaConfig(**CONFIG)).parameters())
print(f"model: {n_params / 1e6:.2f}M params ({CONFIG}); Lc = {Lc}, {args.batch} sequences per step, "
      f"AC {'on' if args.ac else 'off'}, {args.threads} threads, {args.clock} time, torch {torch.__version__}, "
      f"load average {os.getloadavg()[0]:.1f}")
CASES = ("plain", "pose", "full")
_, _, docs = setup(max(args.ratios))
sampler_ms = {}
for case in ("plain", "pose"):  # the only work in which PoSE and plain differ: drawing the examples
    rng, t0 = np.random.default_rng(0), time.perf_counter()
    for _ in range(50):
        batch(docs, case, max(args.ratios), rng)
    sampler_ms[case] = (time.perf_counter() - t0) / 50 * 1e3
    print(f"sampler, {args.batch} examples: {case} {sampler_ms[case]:.2f} ms per step")
rows = []
for ratio in args.ratios:
    model, opt, docs = setup(ratio)
    rng, times = np.random.default_rng(1), {c: [] for c in CASES}
    for rep in range(args.reps + 1):
        # alternate the order (no case always runs first); pose and plain are cheap: 3 of each per round
        for case in ("full",) + ("pose", "plain") * 3 if rep % 2 else ("plain", "pose") * 3 + ("full",):
            t0 = clock()
            step(model, opt, docs, case, ratio, rng)
            if rep:  # the first round warms up
                times[case].append(clock() - t0)
    mem = {}
    for case in CASES:
        cmd = [sys.executable, __file__, "--child", case, str(ratio), "--train-len", str(Lc), "--batch", str(args.batch),
               "--ratios", *map(str, args.ratios), "--threads", str(args.threads)] + (["--ac"] if args.ac else [])
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # see the docstring
        runs = [json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout) for _ in range(args.mem_runs)]
        mem[case] = {k: statistics.median(r[k] for r in runs) for k in ("base", "step")}
    t = {c: statistics.median(v) for c, v in times.items()}
    # ratios: median over rounds of the within-round ratio, so load from other processes mostly cancels
    t["pose/plain"] = statistics.median(a / b for a, b in zip(times["pose"], times["plain"]))
    t["pose/full"] = statistics.median(a / b for a, b in zip(times["pose"][::3], times["full"]))
    rows.append((ratio, t, mem))
    print(f"  Lt/Lc = {ratio} done", file=sys.stderr, flush=True)

print(f"\n{'Lt/Lc':>5} {'Lt':>5} | {'plain s':>7} {'pose s':>7} {'full s':>7} | {'pose/plain':>10} {'pose/full':>9} | "
      f"{'plain MB':>8} {'pose MB':>8} {'full MB':>8} | {'pose/plain':>10} {'pose/full':>9} | {'base MB':>7}")
for ratio, t, mem in rows:
    m = {c: mem[c]["step"] for c in CASES}
    print(f"{ratio:>5} {ratio * Lc:>5} | {t['plain']:>7.3f} {t['pose']:>7.3f} {t['full']:>7.3f} | "
          f"{t['pose/plain']:>10.3f} {t['pose/full']:>9.3f} | {m['plain']:>8.0f} {m['pose']:>8.0f} {m['full']:>8.0f} | "
          f"{m['pose'] / m['plain']:>10.3f} {m['pose'] / m['full']:>9.3f} | {mem['pose']['base']:>7.0f}")
ratio, t, mem = rows[-1]
goals = [("time pose/plain <= 1.03", max(r[1]["pose/plain"] for r in rows) <= 1.03),
         ("memory pose/plain <= 1.03", max(r[2]["pose"]["step"] / r[2]["plain"]["step"] for r in rows) <= 1.03),
         (f"time pose/full at {ratio}x <= 0.15", t["pose/full"] <= 0.15),
         (f"memory pose/full at {ratio}x <= 0.3", mem["pose"]["step"] / mem["full"]["step"] <= 0.3)]
print("\ngoals: " + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in goals))
out = Path(args.out or f"results/bench/train_step{'_ac' if args.ac else ''}.json")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({
    "command": " ".join(["python", *sys.argv]), "params": n_params, "config": CONFIG, "train_len": Lc, "batch": args.batch,
    "ac": args.ac, "threads": args.threads, "clock": args.clock, "reps": args.reps, "torch": torch.__version__,
    "load_average": os.getloadavg()[0], "goals": dict(goals), "sampler_ms_per_step": sampler_ms,
    "results": [{"ratio": ratio, "target_len": ratio * Lc, "seconds": {c: t[c] for c in CASES},
                 "pose_over_plain_time": t["pose/plain"], "pose_over_full_time": t["pose/full"],
                 "step_mb": {c: mem[c]["step"] for c in CASES}, "base_mb": mem["pose"]["base"],
                 "pose_over_plain_memory": mem["pose"]["step"] / mem["plain"]["step"],
                 "pose_over_full_memory": mem["pose"]["step"] / mem["full"]["step"]} for ratio, t, mem in rows]},
    indent=1) + "\n")
print(f"wrote {out}")
