"""
Passkey retrieval (the PoSE / YaRN protocol, REFERENCE.md section 4): a random 5-digit key hidden
at a random depth in L tokens of filler text; greedy decoding of up to 10 tokens through the KV cache
(ending early once a run of digits is followed by another character: the score cannot change then);
a trial succeeds when the first integer in the output is the key.

    python eval_passkey.py --len 32768          # the model train.py just saved (out/pose/hf)
    python eval_passkey.py --model cache/SmolLM2-135M-Instruct --len 2k 4k 8k --trials 20 --out out/pk.json
    python eval_passkey.py --model DIR --len 4k:16k:4k --rope yarn --factor 2      # training-free 2x
    python eval_passkey.py --model DIR --len 8k 16k --depths 0 0.25 0.5 0.75 1 --trials 4   # needle map

Prompt length: the most whole filler repeats that fit, so L - (tokens of one filler) < tokens <= L
(SmolLM2: one filler = 24 tokens). The key sits after round(depth * n) of the n repeats.
Trials run deepest key first: consecutive prompts then share the intro and the filler before the
key, and only the rest is prefilled (the cache keeps the shared keys/values). That is exact (causal
attention) and saves the shared prefix's share of the compute: the new tokens attend to the cached
ones without a mask (inference.py), never slower than a fresh prefill
(bench/bench_eval.py). Dynamic NTK, whose RoPE depends on the input length, shares only between
prompts of equal length. Long prompts are prefilled in 4k pieces with a progress line.
Repeatable: trials at L draw from seed (--seed, L).
"""
import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from eval_common import (Progress, add_common_args, load, parse_lengths, pyplot, resolve_device_args, reused_runs,
                         save_png, write_json)
from inference import PrefixCache, greedy, shared_prefix

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
         "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


def prompt_text(n_before, n_after, key):
    return "\n".join([INTRO, FILLER * n_before, NEEDLE.format(key=key), FILLER * n_after, QUESTION])


def build_prompt(tok, length, depth, key):
    """Token ids (BOS first) of the longest prompt with whole filler repeats that fits in `length`."""
    def ids(n):
        x = round(depth * n)
        return tok.encode(prompt_text(x, n - x, key), bos=tok.bos_id is not None)
    fixed = len(ids(0))
    if fixed > length:
        raise ValueError(f"--len {length} is below the prompt's fixed part ({fixed} tokens without filler)")
    per_filler = len(tok.encode(FILLER * 8, bos=False)) / 8
    n = int((length - fixed) / per_filler)
    while n > 0 and len(ids(n)) > length:
        n -= 1
    while len(ids(n + 1)) <= length:
        n += 1
    return ids(n)


def first_int(text):
    """The first run of digits in text as an int ("is 12345." -> 12345), None if there is none."""
    m = re.search(r"\d+", text)
    return int(m.group()) if m else None


def answer_complete(text):
    """True once text holds a run of digits followed by something else: first_int(text) can no longer change."""
    return re.search(r"\d\D", text) is not None


def run_length(model, tok, length, depths, keys, max_new_tokens=10, share=True, log=None, known=None, piece=4096):
    """One trial per (depth, key) at `length` tokens; returns a record per trial. known: {(depth, key): record}
    of trials already run with the same settings (--reuse), taken as they are. Prompts of over 2 pieces are
    prefilled piece by piece with a progress line (except for length-dependent RoPE: one pass)."""
    known, pairs = known or {}, [(float(d), int(k)) for d, k in zip(depths, keys)]
    trials = sorted(({"depth": d, "key": k, "ids": build_prompt(tok, length, d, k)} for d, k in pairs if (d, k) not in known),
                    key=lambda t: -t["depth"])  # deepest key first: the next prompt shares the longest prefix
    p = next(model.parameters())
    cache = PrefixCache(model.config, 1, max(len(t["ids"]) for t in trials) + max_new_tokens, p.device, p.dtype) if trials else None
    prev = []
    for i, t in enumerate(trials):
        ids, t0 = t.pop("ids"), time.perf_counter()
        shared = shared_prefix(model, ids, prev if share else [])
        meter = Progress(len(ids), shared)
        progress = lambda done, todo: print(f"  prefill {meter.line(shared + done)}", flush=True)
        text = tok.decode(greedy(model, ids, cache, shared, max_new_tokens, tok.eos_id, piece, progress,
                                 stop=lambda out: answer_complete(tok.decode(out))))
        t.update(output=text, correct=first_int(text) == t["key"], prompt_tokens=len(ids), prefilled=len(ids) - shared,
                 seconds=round(time.perf_counter() - t0, 2))
        prev = ids
        if log:
            log(i, t)
    return [known[pair] for pair in pairs if pair in known] + trials


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, lengths=["32768"])
    add = parser.add_argument
    add("--trials", type=int, nargs="+", default=[50], help="trials per length (or per depth with --depths); one number, "
    "or one per length (default: %(default)s)")
    add("--depths", type=float, nargs="+", help="a grid of key depths in [0, 1] (default: uniform random depth)")
    add("--seed", type=int, default=0, help="keys and depths at length L come from seed (SEED, L) (default: %(default)s)")
    add("--max-new-tokens", type=int, default=10, help="greedy tokens generated (default: %(default)s)")
    add("--reuse", nargs="+", default=[], help="JSON of earlier runs with the same model, rope, factor, dtype, seed and "
        "--max-new-tokens: their trials are taken, only the missing ones run (e.g. more --trials; default: none)")
    add("--resume", action="store_true", help="continue the --out file of a stopped run (as --reuse), or do nothing "
        "if it is complete (default: off)")
    args = parser.parse_args(argv)
    if args.resume and args.out and Path(args.out).exists():
        if (before := json.loads(Path(args.out).read_text()))["settings"].get("complete"):
            print(f"{args.out} is complete: nothing to do (--resume)")
            return before["results"]
        args.reuse.append(args.out)
    resolve_device_args(parser, args)
    lengths = parse_lengths(args.len)
    known = {}  # (length, depth, key) -> trial record
    for old in reused_runs(parser, args, ("model", "rope", "factor", "dtype", "seed", "max_new_tokens")):
        known |= {(t["length"], t["depth"], t["key"]): {k: v for k, v in t.items() if k != "length"} for t in old.get("trials", [])}
    if len(args.trials) not in (1, len(lengths)):
        parser.error(f"--trials: one number or one per length ({len(lengths)}), got {len(args.trials)}")
    n_trials = dict(zip(lengths, args.trials * len(lengths) if len(args.trials) == 1 else args.trials))
    if args.depths and not all(0 <= d <= 1 for d in args.depths):
        parser.error("--depths must lie in [0, 1]")
    model, tok = load(parser, args)
    # the table's depth columns: the grid, or for uniform depths bins of width 0.2 named by their centre
    cells = sorted(set(args.depths)) if args.depths else [0.1, 0.3, 0.5, 0.7, 0.9]
    work = lambda L: n_trials[L] * L ** 1.5  # for the ETA: prefill cost grows between linearly and quadratically in L
    t_start, done, results, records = time.perf_counter(), 0.0, [], []
    last_write = [t_start]
    for L in lengths:
        # two streams, so that the first k trials of a longer run are those of a k-trial run
        depths = np.repeat(args.depths, n_trials[L]) if args.depths else np.random.default_rng([args.seed, L, 0]).uniform(0, 1, n_trials[L])
        keys = np.random.default_rng([args.seed, L, 1]).integers(10000, 100000, len(depths))

        reused = {(d, k): t for (length, d, k), t in known.items() if length == L}
        finished = [dict(t, length=L) for t in reused.values()]

        def log(i, t):
            elapsed = time.perf_counter() - t_start
            eta = elapsed / (done + work(L) * (i + 1) / len(depths)) * sum(map(work, lengths)) - elapsed
            print(f"L={L} trial {i + 1}/{len(depths)} depth {t['depth']:.2f} key {t['key']} -> {t['output']!r} "
                  f"{'ok' if t['correct'] else 'MISS'} ({t['seconds']:.1f} s, ETA {eta / 60:.1f} min)", flush=True)
            finished.append(dict(t, length=L))
            # a 32k trial takes minutes on a CPU: --reuse picks a stopped run up. At most every 10 s, since each write
            # holds every trial so far: after each of the demo's 1,200 short trials, the writes grew quadratically
            if time.perf_counter() - last_write[0] > 10:
                save_partial()

        def save_partial():
            last_write[0] = time.perf_counter()
            if args.out:
                write_json(args, {"lengths": lengths, "tokenizer": str(tok.path), "complete": False}, results,
                           trials=records + finished, quiet=True)
        try:
            trials = run_length(model, tok, L, depths, keys, args.max_new_tokens, log=log, known=reused)
        except ValueError as e:
            parser.error(str(e))
        except BaseException:  # Ctrl-C or an error: keep every finished trial, those of the last 10 s too
            save_partial()
            raise
        done += work(L)
        records += [dict(t, length=L) for t in trials]
        acc = lambda ts: sum(t["correct"] for t in ts) / len(ts)
        by_depth = [{"depth": c, "trials": len(ts), "accuracy": acc(ts)} for c in cells
                    if (ts := [t for t in trials if min(cells, key=lambda c: abs(c - t["depth"])) == c])]
        results.append({"length": L, "accuracy": acc(trials), "trials": len(trials), "by_depth": by_depth,
                        "prompt_tokens": [min(t["prompt_tokens"] for t in trials), max(t["prompt_tokens"] for t in trials)]})
        if args.out:  # after every length, so that a stopped run keeps the lengths it finished (and --reuse resumes it)
            write_json(args, {"lengths": lengths, "tokenizer": str(tok.path), "complete": L == lengths[-1]}, results,
                       trials=records, quiet=L != lengths[-1])
    print(f"\npasskey retrieval, {args.model}, rope {args.rope or 'of the checkpoint'} (factor {args.factor}), "
          f"{(time.perf_counter() - t_start) / 60:.1f} min")
    print(f"{'length':>7} | {'accuracy':>8} | {'trials':>6} | by depth " + " ".join(f"{c:>5g}" for c in cells))
    for r in results:
        by = {d["depth"]: f"{d['accuracy']:.2f}" for d in r["by_depth"]}
        print(f"{r['length']:>7} | {r['accuracy']:>8.2f} | {r['trials']:>6} |          " + " ".join(f"{by.get(c, '-'):>5}" for c in cells))
    if args.out:
        grid = [[next((d["accuracy"] for d in r["by_depth"] if d["depth"] == c), np.nan) for r in results] for c in cells]
        if plt := pyplot():
            fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(results), 1.2 + 0.45 * len(cells)))
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
            ax.set(xticks=range(len(results)), xticklabels=lengths, yticks=range(len(cells)), yticklabels=cells,
                   xlabel="prompt length (tokens)", ylabel="key depth", title=Path(args.out).stem)
            fig.colorbar(im, label="accuracy")
            save_png(fig, args.out)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
