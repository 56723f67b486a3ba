"""
When do PoSE's skips matter? A controlled study at toy scale (issue 25; results/skips/README.md).

Every cell fine-tunes a base with train.py exactly as `make demo` does (200 steps x 16 sequences, lr 1e-3 cosine to
1e-4, 20 warm-up steps, AdamW (0.9, 0.95), wd 0.1, mix copy 0.1 / passkey 0.45 / text 0.45) and moves ONE thing from
the demo's point (PoSE, 2 chunks, YaRN, s = Lt / Lc = 4, 200 steps, the demo's mix, the demo's base):

  method   pose2 (the demo's PoSE), pose4 (4 chunks), noskip (the control: --num-chunks 1, positions 0..Lc-1, the
           same YaRN s: PoSE with its one ingredient removed), randpos, full (full-length at Lt: the ceiling),
           fullvar (full-length whose passkey prompts take 128..Lt tokens, not all Lt: 'prompts', at s = 8)
  ratio    s = 4, 8, 16 (Lt = 512, 1024, 2048)
  rope     yarn, linear; on a second base with head dim 64 ('hd64': 2 heads of 64 instead of 4 of 32, same width),
           since linear scaling scores 0.00 on the demo's head-dim-32 base even after fine-tuning; linear's gate
           (full-length + linear >= 0.9 at Lt) also after 1,000 steps and on a 4-layer head-dim-64 base ('l4hd64')
  steps    200 and 1,000 (the 1,000-step runs evaluated every 200 steps from their checkpoints)
  data     the demo's mix, and text only (judged by loss per position: text erases the base's retrieval)

under seeds 1337 (the demo's), 1, 2: the fine-tune's data order and position draws; the base is the same. Each cell
is evaluated with eval_passkey.py (200 trials per length at Lc, Lt/2, Lt, 1.5 Lt, 2 Lt; the same keys and depths
for every model, so cells pair trial by trial) and by the mean loss per 128-token position segment of held-out
Macbeth in windows of 2 Lt tokens (one causal pass per window, so the segment at position p sees p tokens before).

    python results/skips/study.py                                   # after make demo (its base: out/demo/base/hf)
    python results/skips/study.py --groups method ratio8            # some groups only
    python results/skips/study.py --groups ratio16 --methods pose2 noskip   # some methods only
    python results/skips/study.py --report-only                     # tables, JSON and figures from what is done
    python results/skips/study.py --quick --work-dir /tmp/sk        # a smoke run of every code path (meaningless)

Restartable: a finished fine-tune, checkpoint or evaluation in --work-dir is kept; two one-thread jobs side by side.
skips.json is the record (per-trial passkey outcomes at Lt included): a run it holds is reported even when the work
dir that made it is gone.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean, stdev

from methods import METHOD_FLAGS  # results/skips/methods.py

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
LC = 128
FT = dict(steps=200, lr=1e-3, warmup=20, batch=16)  # demo.py's FINE_TUNE
MIX = "copy=0.1,passkey=0.45,text=0.45"
SEEDS = (1337, 1, 2)
DEMO_POINT = dict(method="pose2", s=4, rope="yarn", steps=200, data="mix", base="demo")


def cell(**move):
    return dict(DEMO_POINT, **move)


def cells_of(groups):
    """The cells of these groups, each once (groups share their control and ceiling cells)."""
    return list({name(c): c for cells in groups.values() for c in cells}.values())


# The design: each group moves one axis from the demo's point (every group includes the control and the ceiling)
GROUPS = {
    "method": [cell(method=m) for m in ("pose2", "pose4", "noskip", "randpos", "full")],
    # the demo's recipe pretrained under other seeds: PoSE beat its control by +0.38 on one base and tied on another
    "bases": [cell(method=m, base=b) for b in ("seed1", "seed2") for m in ("pose2", "noskip", "full")],
    "ratio8": [cell(method=m, s=8) for m in ("pose2", "pose4", "noskip", "full")],
    "linear": [cell(method=m, rope=r, base="hd64") for r in ("linear", "yarn") for m in ("full", "pose2", "noskip")],
    "steps": [cell(method=m, steps=1000) for m in ("pose2", "noskip", "full")],
    # linear fails at 200 steps on the head-dim-64 base too (full-length 0.00 at Lt): does it come with 1,000 steps, or
    # with 4 layers (the other suggestion)? Only the gate cell: PoSE and the control would follow if it reached
    # 0.9 at Lt, and it does not (README)
    "linear1000": [cell(method="full", rope="linear", base="hd64", steps=1000)],
    "linear_l4": [cell(method="full", rope="linear", base="l4hd64")],
    "ratio16": [cell(method=m, s=16) for m in ("pose2", "pose4", "noskip", "full")],
    "text": [cell(method=m, data="text") for m in ("pose2", "noskip", "full")],
    # full-length at s = 8 keeps 0.56 at Lc: its passkey prompts all fill the Lt window; with prompts of Lc..Lt tokens?
    "prompts": [cell(method=m, s=8) for m in ("full", "fullvar")],
}

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--demo-dir", default="out/demo", help="a finished make demo run: its base and token files (default: %(default)s)")
parser.add_argument("--work-dir", default="out/skips", help="models, evaluations, logs (default: %(default)s)")
parser.add_argument("--out", help="summary JSON, figures beside it; runs it records that --work-dir lacks are kept (default: "
                    "results/skips/skips.json; with --quick, skips.json in --work-dir)")
parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS), help="(default: all, in this order)")
parser.add_argument("--methods", nargs="+", choices=list(METHOD_FLAGS), help="only these methods' cells (default: all)")
parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="fine-tuning seeds (default: %(default)s)")
parser.add_argument("--trials", type=int, default=200, help="passkey trials per length (default: %(default)s)")
parser.add_argument("--workers", type=int, default=2, help="one-thread jobs side by side (default: %(default)s)")
parser.add_argument("--seeds-dir", default="out/demo-seeds", help="results/demo/seeds.py's fine-tunes: the demo-point "
                    "cells of pose2 / noskip / full are the same runs (its flags, seeds and base), so they are taken from "
                    "there when present (default: %(default)s)")
parser.add_argument("--report-only", action="store_true", help="no training or evaluation: report what is finished")
parser.add_argument("--quick", action="store_true", help="smoke run: 4 steps, 2 trials, 2 seeds, tiny base (meaningless)")
args = parser.parse_args()
if args.quick:
    FT.update(steps=4, warmup=1, batch=4)
    args.trials, args.seeds = 2, args.seeds[:2]
args.out = args.out or (f"{args.work_dir}/skips.json" if args.quick else "results/skips/skips.json")  # a smoke run never touches the record
demo, work = Path(args.demo_dir), Path(args.work_dir)
PY = sys.executable


def name(c, seed=None):
    parts = [c["method"], c["rope"], f"s{c['s']}", f"{c['steps']}st", c["data"], c["base"]]
    return "-".join(map(str, parts)) + (f"-seed{seed}" if seed is not None else "")


def run(cmd, log):
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:  # a rerun adds to the log (e.g. "complete: nothing to do")
        if subprocess.run([PY, *map(str, cmd)], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")).returncode:
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed; see {log}")


# ----------------------------------------------------------------------------- bases
def demo_base():
    if not (demo / "base" / "hf" / "config.json").exists():
        sys.exit(f"error: no base model at {demo}/base/hf: run `make demo` first (or pass --demo-dir)")
    return demo / "base" / "hf"


def other_base(kind):
    """The demo's base recipe (demo.py's BASE and mix schedule) on a head-dim-64 config (2 heads of 64; 'hd64'; with
    4 layers instead of 2: 'l4hd64'), or on the demo's config under another pretraining seed ('seed1', 'seed2')."""
    out = work / f"base-{kind}"
    if (out / "hf" / "config.json").exists():
        return out / "hf"
    config = json.loads((ROOT / "data/demo_model.json").read_text())
    if kind in ("hd64", "l4hd64"):
        config.update(num_attention_heads=2)  # hidden 128 / 2 heads = head dim 64, SmolLM2's
    if kind == "l4hd64":
        config.update(num_hidden_layers=4)
    work.mkdir(parents=True, exist_ok=True)
    (work / f"base-{kind}.json").write_text(json.dumps(config))
    steps = 30 if args.quick else 900
    run(["train.py", "--data", demo / "data/train", "--out-dir", out, "--method", "plain", "--rope", "none",
         "--train-len", LC, "--target-len", 4 * LC, "--max-steps", steps, "--global-batch", 32, "--micro-batch", 32,
         "--lr", 3e-3, "--min-lr", 3e-4, "--warmup", 50 if not args.quick else 5, "--decay", "cosine", "--weight-decay", 0.1,
         "--beta2", 0.95, "--no-ac", "--dtype", "fp32", "--device", "cpu", "--eval-every", 0, "--ckpt-every", steps,
         "--seed", int(kind[4:]) if kind.startswith("seed") else 1337, "--config", work / f"base-{kind}.json",
         "--mix", "copy=0.5,passkey=0.5", "--mix-from", f"{steps * 4 // 9}:{MIX}", "--gap-warmup", steps * 2 // 3],
        work / "logs" / f"base-{kind}.log")
    return out / "hf"


_bases, _lock = {}, threading.Lock()


def base(kind):
    with _lock:  # one build per base, whichever job asks first; the others wait for it
        if kind not in _bases:
            _bases[kind] = demo_base() if kind == "demo" else other_base(kind)
        return _bases[kind]


# ----------------------------------------------------------------------------- one cell: fine-tune, evaluate
def lengths(c):
    lt = LC * c["s"]
    return [LC, lt // 2, lt, lt * 3 // 2, 2 * lt] if not args.quick else [LC, lt, 2 * lt]


def export(ckpt_file, out):
    """An HF folder from one of train.py's ckpt.pt files (the config is saved inside it)."""
    import torch
    from load_hf_weights import save_model
    from model import Llama, LlamaConfig
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    model = Llama(LlamaConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"], strict=True)
    save_model(model, out, dtype=torch.float32, tokenizer_dir=str(demo / "base" / "hf"))


def fine_tune(c, seed):
    """The fine-tune's HF folders: {steps: path}; the 1,000-step runs also every 200 steps (stop, export, resume:
    train.py's resume is exact, so the losses are those of an uninterrupted run)."""
    out = work / name(c, seed)
    total = FT["steps"] * c["steps"] // 200  # (--quick: 4 steps for every 200)
    stops = list(range(FT["steps"], total + 1, FT["steps"]))
    models = {k: out / f"step{k}" / "hf" for k in stops}
    if all((m / "config.json").exists() for m in models.values()):
        return models
    same = {"pose2": "pose-yarn", "noskip": "noskip-yarn", "full": "full-yarn"}.get(c["method"])
    twin = Path(args.seeds_dir) / f"{same}-s{seed}" / "hf"
    if same and c == cell(method=c["method"]) and (twin / "config.json").exists() and not args.quick:
        models[stops[0]].parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(twin, models[stops[0]])
        return models
    data = demo / "data/train"
    cmd = ["train.py", "--data", data, "--out-dir", out, "--rope", c["rope"], "--train-len", LC, "--target-len", LC * c["s"],
           "--max-steps", total, "--global-batch", FT["batch"], "--micro-batch", FT["batch"], "--lr", FT["lr"],
           "--min-lr", FT["lr"] / 10, "--warmup", FT["warmup"], "--decay", "cosine", "--weight-decay", 0.1, "--beta2", 0.95,
           "--no-ac", "--dtype", "fp32", "--device", "cpu", "--eval-every", 0, "--ckpt-every", 0, "--seed", seed,
           "--mix", MIX if c["data"] == "mix" else "text=1", "--init-from", base(c["base"]), *METHOD_FLAGS[c["method"]]]
    for k in stops:
        if (models[k] / "config.json").exists():
            continue
        resume = ["--resume"] if (out / "ckpt.pt").exists() else []
        run(cmd + ["--stop-after", k] + resume, work / "logs" / f"{name(c, seed)}.train{k}.log")
        export(out / "ckpt.pt", models[k])
    (out / "ckpt.pt").unlink(missing_ok=True)  # 3x the weights (AdamW state); the HF folders are what is evaluated
    shutil.rmtree(out / "hf", ignore_errors=True)
    return models


def segment_loss(model_dir, max_len):
    """Mean next-token loss per LC-token segment of absolute position, held-out Macbeth in windows of max_len tokens
    (BOS + max_len - 1 tokens, non-overlapping): how well the model uses position p, p = 0 .. max_len - 1."""
    import torch
    from load_hf_weights import load_model
    from tokenizer import load_tokenizer
    torch.set_num_threads(1)
    tok = load_tokenizer(demo / "base" / "hf")
    ids = tok.encode((ROOT / "data/heldout/macbeth.txt").read_text(), bos=False)
    model = load_model(model_dir).eval()
    n = max_len - 1
    windows = [[tok.bos_id] + ids[i:i + n] for i in range(0, len(ids) - n + 1, n)]
    if args.quick:
        windows = windows[:2]
    nll = torch.zeros(max_len - 1)
    with torch.no_grad():
        for w in windows:
            x = torch.tensor([w])
            logits = model(x[:, :-1])
            nll += torch.nn.functional.cross_entropy(logits[0].float(), x[0, 1:], reduction="none")
    nll /= len(windows)
    # the loss of predicting token p+1 from positions 0..p, binned by the predicting position p
    return dict(windows=len(windows), segment_len=LC,
                loss=[round(nll[i:i + LC].mean().item(), 5) for i in range(0, max_len - 1, LC)])


def evaluate(c, seed, step, model_dir):
    tag = f"{name(c, seed)}-step{step}"
    pk, seg = work / "eval" / f"{tag}.passkey.json", work / "eval" / f"{tag}.segments.json"
    run(["eval_passkey.py", "--model", model_dir, "--len", *lengths(c), "--threads", 1, "--trials", args.trials,
         "--out", pk, "--resume"], work / "logs" / f"{tag}.passkey.log")
    if not seg.exists():
        seg.parent.mkdir(parents=True, exist_ok=True)
        tmp = seg.with_suffix(".tmp")
        tmp.write_text(json.dumps(segment_loss(model_dir, 2 * LC * c["s"])))
        tmp.replace(seg)
    return json.loads(pk.read_text()), json.loads(seg.read_text())


def job(c, seed):
    try:
        models = fine_tune(c, seed)
        for step, model_dir in models.items():
            evaluate(c, seed, step, model_dir)
        print(f"  done: {name(c, seed)}", flush=True)
    except Exception as e:  # one failed cell must not stop the others; the report shows it missing
        print(f"  FAILED: {name(c, seed)}: {e}", flush=True)


# ----------------------------------------------------------------------------- report
def passkey_rows(pk):
    by_len = {r["length"]: r for r in pk["results"]}
    return by_len, pk["trials"]


def collect():
    """Every finished (cell, seed, step): passkey per length, by depth, per trial; segment losses."""
    runs = []
    for c in cells_of(GROUPS):
        for seed in args.seeds:
            step_of = lambda f: int(f.name.rsplit("-step", 1)[1].split(".")[0])
            step_s = step_seconds(work / name(c, seed) / "log.jsonl")  # one fine-tune, however many stops
            for pk_file in sorted((work / "eval").glob(f"{name(c, seed)}-step*.passkey.json"), key=step_of):
                step = step_of(pk_file)
                seg_file = pk_file.with_name(pk_file.name.replace(".passkey.", ".segments."))
                pk = json.loads(pk_file.read_text())
                if not pk["settings"].get("complete", True) or not seg_file.exists():
                    continue
                lt = LC * c["s"]
                by_len = {r["length"]: r["accuracy"] for r in pk["results"]}
                deep = sorted((t for t in pk["trials"] if t["length"] == lt), key=lambda t: (round(t["depth"], 6), t["key"]))
                runs.append(dict(cell=c, name=name(c), seed=seed, step=step, Lt=lt, passkey=by_len,
                                 at_Lt=by_len.get(lt), at_2Lt=by_len.get(2 * lt),
                                 at_Lt_by_depth={d: _acc([t for t in deep if abs(t["depth"] - d) <= 0.1])
                                                 for d in (0.1, 0.3, 0.5, 0.7, 0.9)},
                                 by_distance=binned(pk["trials"], lambda t: (1 - t["depth"]) * t["prompt_tokens"]),
                                 by_key_position=binned(pk["trials"], lambda t: t["depth"] * t["prompt_tokens"]),
                                 segments=json.loads(seg_file.read_text())["loss"], step_s=step_s,
                                 # every model sees the same (depth, key) trials: outcomes in that order pair trial by trial
                                 trials_at_Lt="".join("01"[t["correct"]] for t in deep)))
    return runs


def recorded(runs, record):
    """The runs the --out JSON records that the work dir no longer holds (the work dir is a cache; the committed JSON is
    the record): kept as recorded. Runs recorded before per-trial outcomes were kept lack them (trials_at_Lt None)."""
    have = {(r["name"], r["seed"], r["step"]) for r in runs}
    old = [r for r in record["runs"] if (r["name"], r["seed"], r["step"]) not in have]
    for r in old:
        r.setdefault("trials_at_Lt", None)
        for k in ("passkey", "at_Lt_by_depth", "by_distance", "by_key_position"):  # JSON made the numeric keys strings
            r[k] = {float(x) if k == "at_Lt_by_depth" else int(x): v for x, v in r[k].items()}
    if old:
        print(f"{len(old)} runs taken from {args.out} (their evaluations are not in {work})")
    return old


def step_seconds(log):
    """The fine-tune's median seconds per optimizer step (train.py's log; None for cells copied from seeds.py)."""
    times = [r["step_time"] for r in map(json.loads, log.read_text().splitlines()) if "step_time" in r] if log.is_file() else []
    return sorted(times)[len(times) // 2] if times else None


def binned(trials, where):
    """Accuracy over all lengths by LC-token bins of a trial's `where` (approximate: the key sits at its depth's share
    of the prompt's filler): the key-to-question distance, or the key's absolute position. {bin start: (acc, n)}"""
    bins = {}
    for t in trials:
        bins.setdefault(int(where(t)) // LC * LC, []).append(t)
    return {b: [_acc(ts), len(ts)] for b, ts in sorted(bins.items())}


def _acc(ts):
    return sum(t["correct"] for t in ts) / len(ts) if ts else None


def stats(xs):
    xs = [x for x in xs if x is not None]
    return dict(mean=mean(xs), sd=stdev(xs) if len(xs) > 1 else 0.0, n=len(xs)) if xs else None


REGIONS = ("0-Lc", "Lc-Lt", "Lt-2Lt")


def regions(run):
    """A run's held-out loss per position region: the mean of its LC-token segments below Lc, from Lc to Lt, beyond Lt."""
    seg, s = run["segments"], run["Lt"] // LC
    return dict(zip(REGIONS, (mean(seg[:1]), mean(seg[1:s]), mean(seg[s:2 * s]))))


def report(runs, record):
    """Per (cell, step): mean +- sd over seeds; paired by seed against the control (noskip) and the ceiling (full)
    of the same group point."""
    table = []
    keyf = lambda r: (r["name"], r["step"])
    previous = {((r["name"], r["step"]), ref): r[f"minus_{ref}"] for r in record["table"] for ref in ("noskip", "full")
                if f"minus_{ref}" in r}
    for k in dict.fromkeys(map(keyf, runs)):
        mine = [r for r in runs if keyf(r) == k]
        c = mine[0]["cell"]
        row = dict(name=k[0], step=k[1], cell=c, Lt=mine[0]["Lt"], seeds=[r["seed"] for r in mine],
                   at_Lt=stats(r["at_Lt"] for r in mine), at_2Lt=stats(r["at_2Lt"] for r in mine),
                   passkey={L: stats(r["passkey"][L] for r in mine) for L in mine[0]["passkey"]},
                   at_Lt_by_depth={d: stats(r["at_Lt_by_depth"][d] for r in mine) for d in mine[0]["at_Lt_by_depth"]},
                   segments=[mean(x) for x in zip(*(r["segments"] for r in mine))], step_s=stats(r["step_s"] for r in mine),
                   by_distance={b: stats(r["by_distance"].get(b, [None])[0] for r in mine) for b in mine[0]["by_distance"]},
                   by_key_position={b: stats(r["by_key_position"].get(b, [None])[0] for r in mine)
                                    for b in mine[0]["by_key_position"]})
        row["loss"] = {region: stats(regions(r)[region] for r in mine) for region in REGIONS}
        for ref in ("noskip", "full"):  # paired by seed: the same seed's data order, the same passkey trials
            other = {r["seed"]: r for r in runs if r["name"] == name(dict(c, method=ref)) and r["step"] == k[1]}
            pairs = [(r, other[r["seed"]]) for r in mine if r["seed"] in other]
            if c["method"] != ref and pairs:
                diff = lambda a, b: None if a is None or b is None else a - b
                diffs = [diff(a["at_Lt"], b["at_Lt"]) for a, b in pairs]
                diffs2 = [diff(a["at_2Lt"], b["at_2Lt"]) for a, b in pairs]
                loss = {region: stats(regions(a)[region] - regions(b)[region] for a, b in pairs) for region in REGIONS}
                row[f"minus_{ref}"] = dict(at_Lt=stats(diffs), at_2Lt=stats(diffs2), loss=loss, seeds=[a["seed"] for a, _ in pairs],
                                           **trial_pairs(pairs, previous.get((k, ref))))
        table.append(row)
    return table


def trial_pairs(pairs, before):
    """Over all trials at Lt of all paired seeds, which of the two retrieved the same key at the same depth, and a sign
    test on those; for runs recorded without per-trial outcomes, the counts the --out JSON recorded for these pairs."""
    if any(a["trials_at_Lt"] is None or b["trials_at_Lt"] is None for a, b in pairs):
        same = before and before["seeds"] == [a["seed"] for a, _ in pairs]
        return {k: before[k] if same else None for k in ("trials_won", "trials_lost", "sign_test_p")}
    for a, b in pairs:
        if len(a["trials_at_Lt"]) != len(b["trials_at_Lt"]):
            sys.exit(f"error: {a['name']} and its reference were evaluated on different passkey trials at Lt")
    wins = sum(x > y for a, b in pairs for x, y in zip(a["trials_at_Lt"], b["trials_at_Lt"]))
    losses = sum(x < y for a, b in pairs for x, y in zip(a["trials_at_Lt"], b["trials_at_Lt"]))
    return dict(trials_won=wins, trials_lost=losses, sign_test_p=sign_test(wins, losses))


def sign_test(wins, losses):
    """Two-sided exact sign test on the discordant trials."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def fmt(st, pm=True):
    return "—" if st is None else f"{st['mean']:.2f} ± {st['sd']:.2f}" if pm and st["n"] > 1 else f"{st['mean']:.2f}"


def print_tables(table):
    print("\n| cell (method-rope-s-steps-data-base) | step | seeds | passkey at Lt | at 2 Lt | − control at Lt (paired) "
          "| trials won / lost vs control (p) | − full at Lt | s / step |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in table:
        ctl, full = r.get("minus_noskip"), r.get("minus_full")
        won = f"{ctl['trials_won']} / {ctl['trials_lost']} ({ctl['sign_test_p']:.2g})" if ctl and ctl["trials_won"] is not None else "—"
        print(f"| {r['name']} | {r['step']} | {len(r['seeds'])} | {fmt(r['at_Lt'])} | {fmt(r['at_2Lt'])} | "
              f"{fmt(ctl['at_Lt']) if ctl else '—'} | {won} | {fmt(full['at_Lt']) if full else '—'} | "
              + (f"{r['step_s']['mean']:.2f} |" if r["step_s"] else "— |"))


def print_losses(table):
    print("\nheld-out Macbeth: mean loss (nats per token) of the position segments in each region, mean ± sd over seeds; "
          "− control paired by seed\n\n| cell | step | loss 0–Lc | Lc–Lt | Lt–2 Lt | − control, Lc–Lt | − control, Lt–2 Lt |"
          "\n|---|---:|---:|---:|---:|---:|---:|")
    for r in table:
        ctl = r.get("minus_noskip")
        print(f"| {r['name']} | {r['step']} | " + " | ".join(fmt(r["loss"][g]) for g in REGIONS) + " | "
              + (" | ".join(f"{ctl['loss'][g]['mean']:+.3f} ± {ctl['loss'][g]['sd']:.3f}" for g in REGIONS[1:]) if ctl
                 else "— | —") + " |")


def plots(table, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figures")
        return
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.2))
    COLORS = dict(pose2="C0", pose4="C2", noskip="C1", randpos="C3", full="k", fullvar="0.55")  # one colour per method in every panel
    for m in METHOD_FLAGS:  # passkey at Lt against s, the demo point's other settings
        pts = sorted((r["cell"]["s"], r["at_Lt"]) for r in table if r["cell"]["method"] == m and r["step"] == 200
                     and {k: v for k, v in r["cell"].items() if k not in ("s", "method")} ==
                     {k: v for k, v in DEMO_POINT.items() if k not in ("s", "method")} and r["at_Lt"])
        if pts:
            ax1.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1]["sd"] for p in pts], marker="o", color=COLORS[m],
                         capsize=3, label=m)
    ax1.set(xscale="log", xticks=[4, 8, 16], xticklabels=["4", "8", "16"], xlabel="s = Lt / Lc (Lc = 128)",
            ylabel="passkey accuracy at Lt (mean ± sd over seeds)", ylim=(-0.02, 1.02), title="YaRN, 200 steps")
    ax1.minorticks_off()  # the log axis's minor labels ("6 x 10^0") say nothing here
    ax1.legend(fontsize=8)
    for m in ("pose2", "noskip", "full"):  # against fine-tuning steps, s = 4
        pts = sorted((r["step"], r["at_Lt"]) for r in table if r["name"] == name(cell(method=m, steps=1000)) and r["at_Lt"])
        if pts:
            ax2.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1]["sd"] for p in pts], marker="o", color=COLORS[m],
                         capsize=3, label=m)
    ax2.set(xlabel="fine-tuning step (a 1,000-step cosine schedule)", ylabel="passkey accuracy at Lt = 512",
            ylim=(-0.02, 1.02), title="s = 4, YaRN: passkey")
    ax2.legend(fontsize=8)
    for m in ("pose2", "full"):  # the same runs through the held-out loss: the gain over the control from Lc to Lt
        pts = sorted((r["step"], r["minus_noskip"]["loss"]["Lc-Lt"]) for r in table
                     if r["name"] == name(cell(method=m, steps=1000)) and "minus_noskip" in r)
        if pts:
            ax3.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1]["sd"] for p in pts], marker="o", color=COLORS[m],
                         capsize=3, label=f"{m} − control")
    ax3.axhline(0, color="0.6", lw=0.8)
    ax3.set(xlabel="fine-tuning step (a 1,000-step cosine schedule)", ylabel="loss at positions Lc..Lt − the control's (nats)",
            title="s = 4, YaRN: held-out text, paired by seed")
    ax3.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_name("skips.png"), dpi=110)
    print(f"wrote {out.with_name('skips.png')}")


if not args.report_only:
    cells = [(c, seed) for c in cells_of({g: GROUPS[g] for g in args.groups}) for seed in args.seeds
             if not args.methods or c["method"] in args.methods]
    print(f"{len(cells)} fine-tunes ({', '.join(args.groups)}) x seeds {args.seeds}, {args.workers} one-thread jobs at once")
    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(lambda cs: job(*cs), cells))
out = Path(args.out)
record = json.loads(out.read_text()) if out.is_file() else dict(runs=[], table=[])  # read once: its runs and its pair counts
runs = collect()
runs += recorded(runs, record)
table = report(runs, record)
print_tables(table)
print_losses(table)
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(dict(settings=dict(train_len=LC, fine_tune=FT, mix=MIX, demo_point=DEMO_POINT, seeds=args.seeds,
                                             trials=args.trials, groups={g: [name(c) for c in GROUPS[g]] for g in GROUPS},
                                             quick=args.quick),
                               runs=runs, table=table),
                          indent=1) + "\n")
print(f"wrote {out}")
plots(table, out)
