"""
The GPU acceptance run (issue 12): five checks, each written to <out-dir>/<n>_<name>.json as it ends ("status": "ok",
or "error" and the error: the run goes on), with env.json and logs/ (train.py's output); then a table, goals beside figures.

    python bench/gpu_check.py                        # one GPU: CUDA, bf16, NCCL; writes out/gpu/ (git-ignored)
    python bench/gpu_check.py --parts 2 4            # some parts only (e.g. a rerun of those that failed)
    python bench/gpu_check.py --smoke --device cpu   # the same code paths at toy sizes, fp32, gloo (tests/test_gpu_check.py)

1 exactness   ours vs transformers, a random TinyLlama-1.1B-shaped checkpoint (GQA, linear RoPE x8), PoSE positions:
              logits in fp32 and bf16; KV-cache decoding (inference.PrefixCache) against the full forward
2 throughput  train.py, PoSE at 2k, activation checkpointing, eager and --compile: tokens/s, peak memory, MFU
3 cost        a PoSE step at Lc = 2k against full-length steps (--method full) at 16k and 32k, beside memory_plan.py's guess
4 distributed torchrun, one rank, --shard ddp and fsdp: an uninterrupted run's losses vs --stop-after 2 then --resume
5 inference   passkey prompts of 32k and 64k tokens, SmolLM2-135M's shape: prefill, decoding, prefill after a cached prefix
"""
import argparse
import gc
import json
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

T_START = time.time()
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
           num_key_value_heads=4, rms_norm_eps=1e-5)  # HF config keys: TinyLlama-1.1B's shape
SMOL = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, tie_word_embeddings=True)  # SmolLM2-135M's
TINY = dict(vocab_size=2000, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
SIZES = {False: dict(big=BIG, smol=SMOL, exact_len=2048, decode=32, lc=2048, micro=4, batch=8, steps=24, cost_lens=[16384, 32768],
                     dist_len=512, passkey_lens=[32768, 65536], matmul=8192),
         True: dict(big=TINY, smol=dict(SMOL, vocab_size=2000, num_hidden_layers=2), exact_len=64, decode=8, lc=64, micro=2,
                    batch=4, steps=4, cost_lens=[512, 1024], dist_len=64, passkey_lens=[256, 512], matmul=512)}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
add = parser.add_argument
add("--out-dir", default="out/gpu", help="one JSON per part, env.json, logs/ (default: %(default)s; copy to results/ to keep)")
add("--smoke", action="store_true", help="toy sizes, fp32, a few steps: the same code paths in about a minute on a CPU")
add("--parts", type=int, nargs="+", choices=range(1, 6), default=range(1, 6), help="parts to run (default: all)")
add("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if available, else cpu (default: %(default)s)")
add("--compile", action=argparse.BooleanOptionalAction, default=None, help="part 2 also runs train.py --compile (default: on for CUDA)")
add("--timeout", type=int, default=300, help="seconds for each train.py run (default: %(default)s)")
args = parser.parse_args()

import numpy as np  # noqa: E402  (after the flags: a typo should not wait for torch)
import torch  # noqa: E402

from device import DTYPES, pick_compile, pick_device, pick_dtype  # noqa: E402
from eval_passkey import build_prompt  # noqa: E402
from inference import PrefixCache, greedy, shared_prefix  # noqa: E402
from load_hf_weights import load_model  # noqa: E402
from memory_plan import memory_plan  # noqa: E402
from model import Llama, LlamaConfig  # noqa: E402
from pose_sampler import sample_pose  # noqa: E402
from prepare_data import TokenDocs  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

try:
    dev = pick_device(args.device)
    dtype_name = "fp32" if args.smoke else pick_dtype("auto", dev)  # bf16 on CUDA (fp16 where it has none), fp32 on a CPU
    use_compile = pick_compile(False if args.smoke and args.compile is None else args.compile, dev)
except ValueError as e:
    parser.error(str(e))
cuda, S, AMP = dev != "cpu", SIZES[args.smoke], DTYPES[dtype_name]
sync = torch.cuda.synchronize if cuda else lambda: None
err = lambda a, b: dict(max_abs=(a.float() - b).abs().max().item(), rel=((a.float() - b).norm() / b.norm()).item())  # b: fp32
out, work = Path(args.out_dir), Path(args.out_dir) / "work"  # work: data, checkpoints, train.py's outputs; removed at the end
shutil.rmtree(work, ignore_errors=True)  # (prepare_data.py makes it again)
(out / "logs").mkdir(parents=True, exist_ok=True)
config = lambda c: LlamaConfig.from_hf({"model_type": "llama", **c, "max_position_embeddings": 8192})
with torch.device("meta"):
    big = Llama(config(S["big"]))  # the numbers of parts 2 and 3's model


def timed(fn):
    sync()
    t0 = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - t0


def row(res, name, value, op=None, target=None):  # a line of the table: a figure, or with op and target a goal
    met = None if op is None or value is None else bool(value <= target if op == "<=" else value >= target)
    res["rows"].append(dict(name=name, value=value, goal=op and f"{op} {target:g}", met=met))


def train(name, c, *flags, skip=1, torchrun=False):
    """train.py on config c (torchrun: one rank) into work/<name> under --timeout (SIGTERM: torchrun passes it on to its
    workers): medians of its steps after `skip`, all its losses."""
    (work / f"{name}.json").write_text(json.dumps(c))
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"] if torchrun else []
    cmd = ["timeout", "-k", "30", str(args.timeout), sys.executable, *launch, "train.py", "--config", str(work / f"{name}.json"),
           "--data", str(work / "plays"), "--out-dir", str(work / name), "--eval-every", "0", "--device", dev.split(":")[0],
           "--dtype", dtype_name, *map(str, flags)]
    log, logged = out / "logs" / f"{name}{'_resumed' if '--resume' in flags else ''}.log", work / name / "log.jsonl"
    with open(log, "w") as f:
        p, wanted = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT), flags[flags.index("--max-steps") + 1]
        while not torchrun and p.poll() is None and not (logged.exists() and logged.read_text().count('"loss"') >= wanted):
            time.sleep(0.5)  # the torchrun runs end by themselves: their checkpoints and exports are checked
        if stopped := not torchrun and p.poll() is None:  # its steps are logged: no 17 GB checkpoint, no export
            p.terminate()
    if (rc := p.wait()) and not stopped:  # 124: over --timeout
        raise RuntimeError(f"train.py {name} exited {rc}: " + " | ".join(log.read_text().strip().splitlines()[-3:])[-600:])
    steps = [r for r in map(json.loads, logged.read_text().splitlines()) if "loss" in r]
    return dict(tokens_per_s=statistics.median(r["tokens_per_s"] for r in steps[skip:]), first_step_s=steps[0]["step_time"],
                step_s=statistics.median(r["step_time"] for r in steps[skip:]), losses=[r["loss"] for r in steps],
                peak_mem_gb=max(r["peak_mem_gb"] for r in steps))


@torch.no_grad()
def part_exactness(res):
    import transformers
    c, T, n = S["big"], S["exact_len"], S["decode"]
    cfg = transformers.LlamaConfig(**c, max_position_embeddings=S["lc"], initializer_range=1.6 / c["hidden_size"] ** 0.5,
                                   rope_parameters={"rope_type": "linear", "factor": 8.0, "rope_theta": 10000.0})
    torch.manual_seed(0)  # std 1.6 / sqrt(hidden): attention scores of std ~10, so that the logits depend on the positions
    hf = transformers.LlamaForCausalLM(cfg).to(dev)
    for name, p in hf.named_parameters():  # random norms, so that a swapped or ignored one shows
        if "norm" in name:
            p.copy_(1 + 0.3 * torch.randn_like(p))
    hf.to(torch.bfloat16).save_pretrained(work / "exact")  # 16-bit on disk: the fp32 and the 16-bit models hold the same numbers
    docs, rng = TokenDocs(work / "plays"), np.random.default_rng(1)
    ids, pos = (t[None].to(dev) for t in sample_pose(np.asarray(docs[0], dtype=np.int64), T, 8 * S["lc"], 2, rng=rng))  # (1, T)
    jump = int((pos[0, 1:] - pos[0, :-1]).argmax()) + 1  # the second PoSE chunk starts here
    hf_logits = lambda dtype: transformers.LlamaForCausalLM.from_pretrained(work / "exact", dtype=dtype).to(dev)(
        ids, position_ids=pos, attention_mask=torch.ones_like(ids)).logits  # a mask: no packed-sequence guess from pos
    ref = hf_logits(torch.float32).float()
    res["transformers_bf16"] = err(hf_logits(torch.bfloat16), ref)
    for dtype, k in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        ours = load_model(work / "exact", dtype=dtype, device=dev).eval()
        r = res[k] = err(ours(ids, pos), ref)  # vs transformers in fp32
        if dtype == torch.float32:  # the check sees positions: wrong ones must move the logits
            r["rel_if_positions_0_to_T"] = err(ours(ids), ref)["rel"]
            r["rel_if_second_chunk_plus_1"] = err(ours(ids, torch.cat([pos[:, :jump], pos[:, jump:] + 1], 1)), ref)["rel"]
        cache = PrefixCache(ours.config, 1, T, dev, dtype)  # half, the rest but n after cached tokens (a CPU: the merge), n steps
        ours(ids[:, :T // 2], pos[:, :T // 2], kv_cache=cache, logits_to_keep=1)
        step = [ours(ids[:, T // 2:T - n], pos[:, T // 2:T - n], kv_cache=cache, logits_to_keep=1)[0]]
        step = torch.cat(step + [ours(ids[:, t:t + 1], pos[:, t:t + 1], kv_cache=cache)[0] for t in range(T - n, T)])
        full = ours(ids, pos)[0, T - n - 1:].float()
        r["kv_cache"] = err(step, full) | dict(same_argmax=(step.argmax(-1) == full.argmax(-1)).float().mean().item())
    row(res, "fp32 logits vs transformers: rel. error", res["fp32"]["rel"], "<=", 1e-4)
    row(res, "the same, positions 0..T-1 or chunk 2 moved by 1: min", min(v for k, v in res["fp32"].items() if "_if_" in k), ">=", 0.01)
    row(res, "bf16 logits, rel. error vs fp32: ours / transformers'", res["bf16"]["rel"] / res["transformers_bf16"]["rel"], "<=", 1.25)
    row(res, "KV-cache decoding vs full forward, fp32: rel. error", res["fp32"]["kv_cache"]["rel"], "<=", 1e-4)
    row(res, "the same in bf16: rel. error, same argmax", [res["bf16"]["kv_cache"]["rel"], res["bf16"]["kv_cache"]["same_argmax"]])


def part_throughput(res):
    lc = S["lc"]  # MFU: model FLOPs (6 x matmul parameters + causal attention per token; no recompute) / a timed matmul's
    matmul = sum(p.numel() for k, p in big.named_parameters() if p.dim() == 2 and (k != "embed_tokens.weight" or big.lm_head is None))
    fpt = res["flops_per_token"] = 6 * matmul + 6 * len(big.layers) * lc * big.config.num_attention_heads * big.config.head_dim
    for k in ["eager"] + ["compiled"] * use_compile:
        r = res[k] = train(f"tp_{k}", S["big"], "--train-len", lc, "--target-len", 8 * lc, "--global-batch", S["batch"], "--ac",
                           "--micro-batch", S["micro"], "--max-steps", S["steps"], "--compile" if k == "compiled" else "--no-compile",
                           skip=S["steps"] // 2)
        r["mfu"] = r["tokens_per_s"] * fpt / (PEAK * 1e12)
        row(res, f"train.py {k}: tokens/s, peak GB, first step s", [r["tokens_per_s"], r["peak_mem_gb"], r["first_step_s"]])
    row(res, "MFU of the compiled PoSE step", r["mfu"] if use_compile else None, ">=", 0.40)  # r: the last run
    row(res, "--compile / eager, tokens/s", r["tokens_per_s"] / res["eager"]["tokens_per_s"] if use_compile else None, ">=", 1.2)


def part_cost(res):
    lc, n_params = S["lc"], sum(p.numel() for p in big.parameters())
    for k, method, lt, T in [("pose", "pose", S["cost_lens"][-1], lc)] + [(f"full_{lt}", "full", lt, lt) for lt in S["cost_lens"]]:
        r = res[k] = train(f"cost_{k}", S["big"], "--method", method, "--train-len", lc, "--target-len", lt, "--global-batch", 1,
                           "--micro-batch", 1, "--max-steps", 3, "--ac", "--no-compile")  # T tokens per step
        plan = memory_plan(big.config, n_params, "ddp", 1, 1, T, True, act_bytes=2 if dtype_name != "fp32" else 4)
        r.update(planned_gb=sum(plan.values()) - plan["workspace"], static_gb=plan["weights"] + plan["grads"] + plan["optimizer"])
        row(res, f"{k}: s/step, peak GB ({'CUDA' if cuda else 'RSS'}), memory_plan GB", [r["step_s"], r["peak_mem_gb"], r["planned_gb"]])
        if k != "pose":
            p, above = res["pose"], lambda r: r["peak_mem_gb"] - r["static_gb"]
            r["ratios"] = dict(time=p["step_s"] / r["step_s"], memory=p["peak_mem_gb"] / r["peak_mem_gb"],
                               memory_above_static=above(p) / above(r) if cuda else None)  # RSS: more than tensors
        for what, target in (("time", 0.15), ("memory", 0.3), ("memory_above_static", 0.3)) if T == 8 * lc else ():
            row(res, f"PoSE / full at 8x ({T}): {what.replace('_', ' ')}", r["ratios"][what], "<=", target)


def part_distributed(res):
    for shard in ("ddp", "fsdp"):
        flags = ["--train-len", S["dist_len"], "--target-len", 4 * S["dist_len"], "--global-batch", 4, "--micro-batch", 2,
                 "--max-steps", 4, "--ckpt-every", 2, "--no-compile", "--shard", shard]
        a = train(f"dist_{shard}", TINY, *flags, torchrun=True)["losses"]
        train(f"dist_{shard}_halves", TINY, *flags, "--stop-after", 2, torchrun=True)
        b = train(f"dist_{shard}_halves", TINY, *flags, "--resume", torchrun=True)["losses"]  # all 4: 2 were before the stop
        res[shard] = dict(losses=a, losses_resumed=b, bitwise_equal=a == b, hf_export=(work / f"dist_{shard}_halves/hf").is_dir(),
                          max_abs_diff=max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) else float("inf"))
        row(res, f"--shard {shard}: max |loss uninterrupted - resumed| over 4 steps", res[shard]["max_abs_diff"], "<=", 1e-4)


def part_inference(res):
    tok = load_tokenizer(ROOT / "data" / "tokenizer.model")  # shipped with the project; its ids (< 2000) fit any vocab
    model = Llama(config(S["smol"])).to(dev, AMP).eval()
    model.init_weights()  # random: the timings need no trained weights
    for L in S["passkey_lens"]:
        a, b = build_prompt(tok, L, 0.9, 31415), build_prompt(tok, L, 0.5, 27182)  # deepest key first, as eval_passkey.py
        cache = PrefixCache(model.config, 1, max(len(a), len(b)) + 32, dev, AMP)
        run = lambda ids, start, new=1: greedy(model, ids, cache, start, new, eos_id=None)  # prefill ids[start:], `new` tokens
        run(a[:256], 0)  # kernels warm
        torch.cuda.reset_peak_memory_stats() if cuda else None
        (nxt,), prefill = timed(lambda: run(a, 0))
        decode = timed(lambda: run(a + [nxt], len(a), 16))[1] / 16  # 16 steps of one token
        shared = shared_prefix(model, b, a)
        after = timed(lambda: run(b, shared))[1]
        r = res[str(L)] = dict(prompt_tokens=len(a), prefill_s=prefill, decode_ms_per_token=1000 * decode, shared_prefix_tokens=shared,
                               prefill_after_prefix_s=after, same_tokens_as_a_fresh_prefill=run(b, shared, 4) == run(b, 0, 4),
                               peak_mem_gb=torch.cuda.max_memory_allocated() / 1024**3 if cuda else None)
        row(res, f"{L} tokens: prefill s, decode ms/token, peak GB; prefill after {shared} cached s",
            [prefill, r["decode_ms_per_token"], r["peak_mem_gb"], after])


subprocess.run([sys.executable, "prepare_data.py", "--tokenizer", "data/tokenizer.model", "--out", str(work / "plays"),
                "--min-tokens", "2048", "data/train"], cwd=ROOT, stdout=subprocess.DEVNULL, check=True)  # 20 plays, 0.9M tokens
x, y = torch.randn(S["matmul"], S["matmul"], device=dev, dtype=AMP), torch.empty(S["matmul"], S["matmul"], device=dev, dtype=AMP)
timed(lambda: [torch.mm(x, x, out=y) for _ in range(3)])  # warm-up, then the TFLOP/s of MFU's denominator
PEAK = 2 * S["matmul"] ** 3 * 20 / timed(lambda: [torch.mm(x, x, out=y) for _ in range(20)])[1] / 1e12
env = dict(device=dev, gpu=torch.cuda.get_device_name(0) if cuda else None, dtype=dtype_name, compile=use_compile, smoke=args.smoke,
           gpu_memory_gb=torch.cuda.get_device_properties(0).total_memory / 1024**3 if cuda else None, torch=torch.__version__,
           cuda=torch.version.cuda, python=sys.version.split()[0], argv=sys.argv[1:], matmul_peak_tflops=PEAK, sizes=S)
(out / "env.json").write_text(json.dumps(env, indent=1))  # again at the end, with the total time
results = []
for n in args.parts:
    fn = [part_exactness, part_throughput, part_cost, part_distributed, part_inference][n - 1]
    res, t0 = dict(part=n, name=fn.__name__[5:], rows=[]), time.time()
    try:
        fn(res)  # fills res as it goes: a part that fails keeps what it measured
        res["status"] = "ok"
    except Exception as e:  # noqa: BLE001  (the run goes on with the next part)
        res.update(status="error", error=f"{type(e).__name__}: {e}".splitlines()[0][:800], traceback=traceback.format_exc()[-3000:])
    res["seconds"] = round(time.time() - t0, 1)
    gc.collect()
    torch.cuda.empty_cache()  # (a no-op without CUDA)
    (out / f"{n}_{res['name']}.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"part {n} {res['name']}: {res['status']} in {res['seconds']} s" + (f" ({res['error']})" if "error" in res else ""), flush=True)
    results.append(res)
env["seconds"] = round(time.time() - T_START, 1)
(out / "env.json").write_text(json.dumps(env, indent=1))
shutil.rmtree(work, ignore_errors=True)
fmt = lambda v: ", ".join(map(fmt, v)) if isinstance(v, list) else "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)
print(f"\n{env['gpu'] or 'CPU'} ({dtype_name}, compile {use_compile}), torch {env['torch']}, {env['seconds']} s; JSON in {out}")
print(f"part | {'measure':<80} | {'value':<36} | goal      | met")
for r in results:
    for g in [dict(name="ERROR", value=r.get("error", "")[:120], goal=None)] * ("error" in r) + r["rows"]:
        met = {True: "yes", False: "NO", None: "n/a"}[g["met"]] if g["goal"] else ""
        print(f"{r['part']:<4} | {g['name']:<80} | {fmt(g['value']):<36} | {g['goal'] or '':<9} | {met}")
