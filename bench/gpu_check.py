"""
The GPU acceptance run (issue 12): five checks on one GPU, each written to <out-dir>/<part>.json as soon as
it ends (env.json: the machine; logs/: what each train.py run printed), then one table, goals beside figures.

    python bench/gpu_check.py                         # one H200: <= 8 minutes, out/gpu/ (git-ignored)
    python bench/gpu_check.py --parts 2 4             # only some parts (e.g. a rerun of those that failed)
    python bench/gpu_check.py --smoke --device cpu    # the same code paths at toy sizes, ~1-2 min (tests/test_gpu_check.py)

1 exactness   our Llama vs transformers' LlamaForCausalLM, the same random ~1B checkpoint (TinyLlama-1.1B shape,
              GQA 32/4 heads, linear RoPE x8) written by save_pretrained and read by load_model, PoSE position ids:
              logits in fp32 and bf16; KV-cache decoding (a fresh prefill, a prefill after cached tokens, then
              one token at a time) against the full forward
2 throughput  train.py itself, PoSE at 2k, bf16 autocast, activation checkpointing, eager and --compile: tokens/s
              (train.py's log.jsonl), peak memory, MFU against a bf16 matmul peak timed here; and one training step
              of ours and of transformers on the same batches in this process (both eager), for the ratio
3 cost        one PoSE step at Lc = 2k against one full-length step (train.py --method full) at 16k and 32k
4 distributed torchrun --nproc_per_node 1 (NCCL on CUDA, gloo on a CPU), --shard ddp and fsdp: an uninterrupted
              run against --stop-after and --resume, the losses compared
5 inference   passkey prompts (eval_passkey.build_prompt) of 32k and 64k tokens on a random SmolLM2-135M-shaped
              model: prefill seconds, greedy decode ms/token, a prefill after a shared cached prefix, peak memory

MFU counts model FLOPs only: 6 x (matmul parameters, lm_head included) per token plus causal attention,
6 x layers x T x heads x head_dim per token; activation checkpointing's recompute is not counted.
Each part runs under its own time budget; one that fails or overruns records its error and the run goes on.
train.py runs for throughput and cost are stopped once they have logged their steps (no checkpoint, no export).
"""
import time

T_START = time.time()  # the time limit counts the imports too
import argparse  # noqa: E402
import gc
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import traceback
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# HF config keys. BIG: TinyLlama-1.1B's shape; SMOL: SmolLM2-135M's; DIST: small, for the torchrun round trips.
BIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
           num_key_value_heads=4, rms_norm_eps=1e-5)
SMOL = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
DIST = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
TINY = dict(vocab_size=2000, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-5)
# sizes of the real run and of --smoke (CPU, seconds)
SIZES = {False: dict(big=BIG, smol=SMOL, dist=DIST, exact_len=2048, decode=32, lc=2048, micro=4, batch=8, steps=24,
                     inproc_steps=6, cost_lens=[16384, 32768], cost_steps=3, dist_len=512, passkey_lens=[32768, 65536],
                     matmul=8192),
         True: dict(big=TINY, smol=dict(SMOL, vocab_size=2000, num_hidden_layers=2), dist=TINY, exact_len=64, decode=8,
                    lc=64, micro=2, batch=4, steps=4, inproc_steps=2, cost_lens=[512, 1024], cost_steps=2, dist_len=64,
                    passkey_lens=[256, 512], matmul=512)}
BUDGET = {1: 70, 2: 170, 3: 90, 4: 70, 5: 50}  # seconds per part on the GPU; the whole run is capped by --time-limit
NAMES = {1: "exactness", 2: "throughput", 3: "cost", 4: "distributed", 5: "inference"}

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
add = parser.add_argument
add("--out-dir", default="out/gpu", help="one JSON per part plus env.json (default: %(default)s; copy to results/ to keep)")
add("--smoke", action="store_true", help="toy sizes, fp32, a few steps: the same code paths in a minute or two on a CPU "
    "(default: off, the real sizes)")
add("--parts", type=int, nargs="+", choices=sorted(NAMES), default=sorted(NAMES), help="parts to run (default: all)")
add("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if available, else cpu (default: %(default)s)")
add("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto", help="training autocast and inference dtype; "
    "auto: bf16 on CUDA (fp16 where unsupported), fp32 on a CPU; part 1 always checks fp32 and bf16 (default: %(default)s)")
add("--compile", action=argparse.BooleanOptionalAction, default=None, help="part 2 also runs train.py --compile "
    "(default: on for CUDA if a trial compile works, off on a CPU)")
add("--time-limit", type=float, default=480, help="seconds for the whole run; each part also has its own budget "
    f"({', '.join(f'{n}: {s} s' for n, s in BUDGET.items())}; default: %(default)s)")
add("--work-dir", help="data, checkpoints and train.py's outputs (default: a temporary folder, deleted at the end)")
args = parser.parse_args()

import numpy as np  # noqa: E402  (after the flags: a typo should not wait for torch)
import torch  # noqa: E402

from device import DTYPES, pick_compile, pick_device, pick_dtype  # noqa: E402

try:
    dev = pick_device(args.device)
    dtype_name = "fp32" if args.smoke and args.dtype == "auto" else pick_dtype(args.dtype, dev)
    if dev == "cpu" and dtype_name == "fp16":
        raise ValueError("--dtype fp16: train.py uses fp16 with loss scaling on CUDA only; on a CPU use fp32 or bf16")
    compile_note = None
    if args.compile is None and (args.smoke or dev == "cpu"):
        use_compile = False  # a CPU compile costs ~1 min of warm-up here for ~1.0x
    else:
        try:
            use_compile = pick_compile(args.compile, dev)
        except ValueError as e:
            if args.compile:  # asked for it: a flag error
                raise
            use_compile, compile_note = False, str(e)  # auto: run the rest, record why
except ValueError as e:
    parser.error(str(e))
cuda = dev.startswith("cuda")
S = SIZES[args.smoke]
AMP = DTYPES[dtype_name]
LOW = torch.bfloat16 if not cuda or torch.cuda.is_bf16_supported() else torch.float16  # part 1's 16-bit dtype
out_dir = Path(args.out_dir)
out_dir.mkdir(parents=True, exist_ok=True)
work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_check_"))
work.mkdir(parents=True, exist_ok=True)
NO_COMPILE = ["--no-compile"] if '"--compile"' in (ROOT / "train.py").read_text() else []  # train.py before issue 12 has no such flag


class PartTimeout(Exception):
    """The part's alarm: in-process work over its budget (a train.py run at the deadline raises TimeoutError)."""


def sync():
    if cuda:
        torch.cuda.synchronize()


def peak_gb(reset=False):
    """Peak memory: CUDA's max allocated (reset=True starts a new peak), or the process's peak RSS on a CPU."""
    if cuda:
        if reset:
            torch.cuda.reset_peak_memory_stats()
        return torch.cuda.max_memory_allocated() / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def err(a, b):
    """max |a - b|, and |a - b| / |b| over the whole tensor (Frobenius), in fp32."""
    a, b = a.float(), b.float()
    return dict(max_abs=(a - b).abs().max().item(), rel=((a - b).norm() / b.norm()).item())


def goal(name, value, op, target):
    met = None if value is None else bool(value >= target if op == ">=" else value <= target)
    return dict(name=name, value=value, goal=f"{op} {target:g}", ratio=None if value is None else value / target, met=met)


def n_matmul_params(c):
    H, Hkv, D = c["num_attention_heads"], c["num_key_value_heads"], c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    C, I = c["hidden_size"], c["intermediate_size"]
    return c["num_hidden_layers"] * (2 * C * H * D + 2 * C * Hkv * D + 3 * C * I) + c["vocab_size"] * C


def flops_per_token(c, T):
    D = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return 6 * n_matmul_params(c) + 6 * c["num_hidden_layers"] * T * c["num_attention_heads"] * D


def matmul_peak_tflops(n, iters=50):
    """TFLOP/s of an n x n x n matmul in the run's dtype, timed here: the MFU's denominator."""
    a, b = torch.randn(n, n, device=dev, dtype=AMP), torch.randn(n, n, device=dev, dtype=AMP)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync()
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def docs():
    from prepare_data import TokenDocs
    return TokenDocs(work / "plays")


def pose_batch(n, T, target, seed):
    """n PoSE windows of T tokens (positions over `target`) from the prepared plays: (ids, position_ids), (n, T)."""
    from pose_sampler import sample_pose
    d, rng = docs(), np.random.default_rng(seed)
    rows = [sample_pose(np.asarray(d[int(rng.integers(len(d)))], dtype=np.int64), T, target, 2, rng=rng) for _ in range(n)]
    return torch.stack([r[0] for r in rows]).to(dev), torch.stack([r[1] for r in rows]).to(dev)


# ----------------------------------------------------------------------------- train.py as a subprocess
def train_cmd(config, out, *flags, torchrun=False):
    cfg = work / f"{out}.config.json"
    cfg.write_text(json.dumps(config))
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"] if torchrun else []
    return [sys.executable, *launcher, "train.py", "--config", str(cfg), "--data", str(work / "plays"), "--out-dir",
            str(work / out), "--eval-every", "0", "--device", "cuda" if cuda else "cpu", "--dtype", dtype_name,
            *map(str, flags)]


def start(cmd):
    out = Path(cmd[cmd.index("--out-dir") + 1])
    if "--resume" not in cmd:  # a log.jsonl left by an earlier run would be read as this one's
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    f = open(out.with_name(out.name + (".resumed" if "--resume" in cmd else "") + ".stdout"), "w")
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    p.out, p.stdout_file = out, f
    return p


def steps_logged(out):
    log = out / "log.jsonl"
    if not log.exists():
        return []
    lines = log.read_text().split("\n")[:-1]  # only whole lines: train.py may be writing one
    return [r for r in map(json.loads, lines) if "loss" in r]


def kill(p, sig):
    """Signal the process group of p and of each child that leads its own (torchrun starts its workers so)."""
    kids = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) == p.pid:
                kids.append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    for pid in [*kids, p.pid]:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def finish(p, deadline, stop_at=None):
    """Wait for train.py; stop_at: terminate it once it has logged that many steps. Returns its step records."""
    try:
        while p.poll() is None:
            if stop_at and len(steps_logged(p.out)) >= stop_at:
                break
            if time.time() > deadline:
                raise TimeoutError(f"{p.out.name}: train.py still running at the part's deadline")
            time.sleep(0.3)
    finally:
        if p.poll() is None:
            kill(p, signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill(p, signal.SIGKILL)
                p.wait()
        p.stdout_file.close()
    records = steps_logged(p.out)[:stop_at]  # a stopped run may have logged a few more
    if (stop_at and len(records) < stop_at) or (not stop_at and p.returncode != 0):
        tail = " | ".join(Path(p.stdout_file.name).read_text().strip().splitlines()[-3:])
        raise RuntimeError(f"{p.out.name}: train.py exited {p.returncode} after {len(records)} steps: {tail[-600:]}")
    return records


def run_train(cmd, deadline, stop_at=None):
    return finish(start(cmd), deadline, stop_at)


def summarize(records, skip):
    """Medians over the steps after `skip` (warm-up, compilation)."""
    rest = records[skip:] or records
    return dict(tokens_per_s=statistics.median(r["tokens_per_s"] for r in rest),
                step_s=statistics.median(r["step_time"] for r in rest), first_step_s=records[0]["step_time"],
                peak_mem_gb=max(r["peak_mem_gb"] for r in records), losses=[round(r["loss"], 5) for r in records])


# ----------------------------------------------------------------------------- the parts
def part_exactness(res, deadline):
    import transformers

    from load_hf_weights import load_model
    from model import KVCache
    # weights of std 1.6 / sqrt(hidden): attention scores of std ~10, so that the logits depend on the positions
    # (moving PoSE's second chunk by one position moves them by 10-20%, bf16 rounding by 5-8%; at std 0.02: 0.2%)
    cfg = transformers.LlamaConfig(**S["big"], max_position_embeddings=S["lc"], initializer_range=1.6 / S["big"]["hidden_size"] ** 0.5,
                                   rope_parameters={"rope_type": "linear", "factor": 8.0, "rope_theta": 10000.0})
    torch.manual_seed(0)
    with torch.device(dev):
        hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norms, so that a swapped or ignored one shows
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    ckpt = work / "exact_ckpt"
    hf.to(LOW).save_pretrained(ckpt)  # 16-bit on disk, so that fp32 and 16-bit models hold the same numbers
    del hf  # (its RoPE buffer is now 16-bit too: both sides load afresh)
    hf = transformers.LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).to(dev).eval()
    ids, pos = pose_batch(2, S["exact_len"], 8 * S["lc"], seed=1)
    res.update(config=S["big"], n_params=sum(p.numel() for p in hf.parameters()), tokens=list(ids.shape),
               positions=f"PoSE, 2 chunks, up to {int(pos.max())}", attn_implementation=hf.config._attn_implementation,
               transformers_rope=getattr(hf.config, "rope_parameters", None))
    call_hf = lambda m: m(ids, position_ids=pos, attention_mask=torch.ones_like(ids)).logits  # mask: no packed-sequence guess
    with torch.no_grad():
        ref = call_hf(hf).float()
        ours = load_model(ckpt, dtype=torch.float32, device=dev).eval()
        res["ours_rope"] = ours.config.rope_scaling
        res["fp32"] = err(ours(ids, pos), ref)
        jump = int((pos[0, 1:] - pos[0, :-1]).argmax()) + 1  # the check sees positions: wrong ones move the logits by
        res["fp32"]["rel_if_positions_0_to_T"] = err(ours(ids), ref)["rel"]
        res["fp32"]["rel_if_second_chunk_plus_1"] = err(ours(ids, torch.cat([pos[:, :jump], pos[:, jump:] + 1], 1)), ref)["rel"]
        res["kv_cache"] = {"fp32": kv_check(ours, ids[:1], pos[:1], KVCache)}
        del ours, hf
        hf = transformers.LlamaForCausalLM.from_pretrained(ckpt, dtype=LOW).to(dev).eval()
        low = str(LOW).split(".")[1]
        res[f"transformers_{low}_vs_fp32"] = err(call_hf(hf), ref)
        ours = load_model(ckpt, dtype=LOW, device=dev).eval()
        res[f"ours_{low}_vs_fp32"] = err(ours(ids, pos), ref)
        res[f"ours_{low}_vs_transformers_{low}"] = err(ours(ids, pos), call_hf(hf))
        res["kv_cache"][low] = kv_check(ours, ids[:1], pos[:1], KVCache)
    shutil.rmtree(ckpt)
    ours_low, hf_low = res[f"ours_{low}_vs_fp32"]["rel"], res[f"transformers_{low}_vs_fp32"]["rel"]
    res["goals"] = [goal("fp32 logits, rel. error vs transformers", res["fp32"]["rel"], "<=", 1e-4),
                    goal(f"{low} logits: our error / transformers' error (vs fp32)", ours_low / hf_low, "<=", 1.25),
                    goal("KV-cache decoding vs full forward, fp32 rel. error", res["kv_cache"]["fp32"]["rel"], "<=", 1e-4)]
    return res


def kv_check(model, ids, pos, KVCache):
    """Logits of the last `decode`+1 positions: full forward vs a fresh prefill of half the prompt, a prefill of the
    rest but `decode` tokens after the cached half (inference.cached_prefill_attention on a CPU), then one token at a time."""
    T, n = ids.shape[1], S["decode"]
    full = model(ids, pos)[0, T - n - 1:]
    p = next(model.parameters())
    cache = KVCache(model.config, 1, T, p.device, p.dtype)
    model(ids[:, :T // 2], pos[:, :T // 2], kv_cache=cache, logits_to_keep=1)
    rows = [model(ids[:, T // 2:T - n], pos[:, T // 2:T - n], kv_cache=cache, logits_to_keep=1)[0]]
    for t in range(T - n, T):
        rows.append(model(ids[:, t:t + 1], pos[:, t:t + 1], kv_cache=cache)[0])
    step = torch.cat(rows)
    return dict(err(step, full), same_argmax=(step.argmax(-1) == full.argmax(-1)).float().mean().item(), positions=n + 1)


def part_throughput(res, deadline):
    c, lc = S["big"], S["lc"]
    res.update(config=c, n_params=sum_params(c), train_len=lc, target_len=8 * lc, global_batch=S["batch"], micro_batch=S["micro"],
               dtype=dtype_name, activation_checkpointing=True, peak_tflops=PEAK, flops_per_token=flops_per_token(c, lc))
    common = ["--method", "pose", "--train-len", lc, "--target-len", 8 * lc, "--global-batch", S["batch"],
              "--micro-batch", S["micro"], "--max-steps", 100 * S["steps"], "--ac"]
    mfu = lambda tps: tps * res["flops_per_token"] / (PEAK * 1e12)
    skip = S["steps"] // 2
    res["eager"] = attempt(lambda: summarize(run_train(train_cmd(c, "tp_eager", *common, *NO_COMPILE), deadline, S["steps"]), skip))
    res["in_process"] = attempt(lambda: inproc_ours_vs_hf(c, lc))
    gc.collect()  # both models and their AdamW states go before the next train.py starts
    if cuda:
        torch.cuda.empty_cache()
    if not use_compile:
        res["compiled"] = dict(skipped=compile_note or "--no-compile (default on a CPU)")
    elif not NO_COMPILE:
        res["compiled"] = dict(error="train.py has no --compile flag")
    else:
        res["compiled"] = attempt(lambda: summarize(run_train(train_cmd(c, "tp_compiled", *common, "--compile"), deadline,
                                                              S["steps"]), skip))
    for k in ("eager", "compiled"):
        if "tokens_per_s" in res[k]:
            res[k]["mfu"] = mfu(res[k]["tokens_per_s"])
    for k in ("ours", "transformers"):
        if f"{k}_tokens_per_s" in res["in_process"]:
            res["in_process"][f"{k}_mfu"] = mfu(res["in_process"][f"{k}_tokens_per_s"])
    e, cp, hf = res["eager"].get("tokens_per_s"), res["compiled"].get("tokens_per_s"), res["in_process"].get("transformers_tokens_per_s")
    ratio = lambda a, b: a / b if a and b else None
    res["ratios"] = dict(compiled_over_eager=ratio(cp, e), train_py_eager_over_transformers=ratio(e, hf),
                         train_py_compiled_over_transformers=ratio(cp, hf),
                         in_process_ours_over_transformers=res["in_process"].get("ours_over_transformers"))
    res["goals"] = [goal("MFU of the compiled PoSE step", res["compiled"].get("mfu"), ">=", 0.40),
                    goal("--compile / eager, tokens/s", res["ratios"]["compiled_over_eager"], ">=", 1.2),
                    goal("ours (train.py, compiled) / transformers, tokens/s", res["ratios"]["train_py_compiled_over_transformers"], ">=", 1.2),
                    goal("ours / transformers, same eager step in-process", res["ratios"]["in_process_ours_over_transformers"], ">=", 1.2)]
    return res


def inproc_ours_vs_hf(c, lc):
    """One optimizer step (fwd + bwd of each micro-batch, clip, AdamW) of ours and of transformers' LlamaForCausalLM on
    the same batches, both eager with activation checkpointing and autocast, alternated step by step; medians."""
    import transformers

    from model import Llama, LlamaConfig
    torch.manual_seed(0)
    with torch.device(dev):
        ours = Llama(LlamaConfig.from_hf({"model_type": "llama", **c, "max_position_embeddings": lc}))
        ours.init_weights()
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**c, max_position_embeddings=lc, use_cache=False))
    ours.activation_checkpointing = True
    if hasattr(hf, "activation_checkpointing_enable"):  # its name since transformers 5.2x
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ours.train(), hf.train()
    batches = [pose_batch(S["micro"], lc, 8 * lc, seed=10 + i) for i in range(S["batch"] // S["micro"])]
    autocast = torch.autocast(dev.split(":")[0], dtype=AMP) if dtype_name != "fp32" else nullcontext()
    losses = {"ours": lambda x, p: ours(x, position_ids=p, labels=x),
              "transformers": lambda x, p: hf(input_ids=x, position_ids=p, attention_mask=torch.ones_like(x), labels=x).loss}
    models = {"ours": ours, "transformers": hf}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-5, fused=cuda) for k, m in models.items()}
    scaler = torch.amp.GradScaler("cuda") if dtype_name == "fp16" else None
    times, act = {k: [] for k in models}, {}

    def step(k):
        base = torch.cuda.memory_allocated() / 1024**3 if cuda else 0
        peak_gb(reset=True)
        sync()
        t0 = time.perf_counter()
        for x, p in batches:
            with autocast:
                loss = losses[k](x, p) / len(batches)
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opts[k])
        torch.nn.utils.clip_grad_norm_(models[k].parameters(), 1.0)
        if scaler:
            scaler.step(opts[k])
            scaler.update()
        else:
            opts[k].step()
        opts[k].zero_grad(set_to_none=True)
        sync()
        act[k] = peak_gb() - base if cuda else None
        return time.perf_counter() - t0

    for i in range(1 + S["inproc_steps"]):  # the first step of each: warm-up
        for k in models:
            t = step(k)
            if i:
                times[k].append(t)
    tokens = S["batch"] * lc
    r = {f"{k}_tokens_per_s": tokens / statistics.median(v) for k, v in times.items()}
    r |= {f"{k}_step_transient_gb": v for k, v in act.items()}
    r["ours_over_transformers"] = r["ours_tokens_per_s"] / r["transformers_tokens_per_s"]
    r["transformers_attn_implementation"] = hf.config._attn_implementation
    return r


def part_cost(res, deadline):
    c, lc = S["big"], S["lc"]
    static_gb = 16 * sum_params(c) / 1024**3  # fp32 weights, grads and both AdamW moments
    res.update(config=c, train_len=lc, dtype=dtype_name, compile=False, activation_checkpointing=True, global_batch=1,
               static_gb_estimate=static_gb, memory="CUDA max allocated" if cuda else "peak RSS of train.py")
    common = ["--global-batch", 1, "--micro-batch", 1, "--max-steps", 100, "--ac", *NO_COMPILE]
    n = S["cost_steps"]
    res["pose"] = summarize(run_train(train_cmd(c, "cost_pose", "--method", "pose", "--train-len", lc, "--target-len",
                                                S["cost_lens"][-1], *common), deadline, n), 1)
    res["goals"] = []
    for lt in S["cost_lens"]:
        key = f"full_{lt}"
        res[key] = attempt(lambda: summarize(run_train(train_cmd(c, f"cost_full_{lt}", "--method", "full", "--train-len", lc,
                                                                 "--target-len", lt, *common), deadline, n), 1))
        if "step_s" not in res[key]:
            continue
        above = lambda r: r["peak_mem_gb"] - static_gb
        res[key]["ratios"] = dict(time=res["pose"]["step_s"] / res[key]["step_s"],
                                  memory=res["pose"]["peak_mem_gb"] / res[key]["peak_mem_gb"],
                                  memory_above_static=above(res["pose"]) / above(res[key]) if cuda else None)
        if lt == 8 * lc:
            res["goals"] += [goal(f"PoSE / full at 8x ({lt}), time per step", res[key]["ratios"]["time"], "<=", 0.15),
                             goal(f"PoSE / full at 8x ({lt}), peak memory", res[key]["ratios"]["memory"], "<=", 0.3),
                             goal(f"PoSE / full at 8x ({lt}), peak memory above 16 B/param", res[key]["ratios"]["memory_above_static"],
                                  "<=", 0.3)]
    return res


def sum_params(c):
    emb = c["vocab_size"] * c["hidden_size"]
    return n_matmul_params(c) + (0 if c.get("tie_word_embeddings") else emb) + (2 * c["num_hidden_layers"] + 1) * c["hidden_size"]


def part_distributed(res, deadline):
    L = S["dist_len"]
    common = ["--method", "pose", "--train-len", L, "--target-len", 4 * L, "--global-batch", 4, "--micro-batch", 2,
              "--max-steps", 4, "--ckpt-every", 2, *NO_COMPILE]
    res.update(config=S["dist"], backend="nccl" if cuda else "gloo", steps=4, stop_after=2)
    runs = {}
    for shard in ("ddp", "fsdp"):  # the uninterrupted runs and the first halves, all at once
        for name, extra in (("whole", []), ("half", ["--stop-after", 2])):
            runs[shard, name] = start(train_cmd(S["dist"], f"dist_{shard}_resume" if name == "half" else f"dist_{shard}",
                                                *common, "--shard", shard, *extra, torchrun=True))
    try:
        compare_resumed(res, runs, common, deadline)
    finally:  # a run whose partner failed is still going
        for p in runs.values():
            if p.poll() is None:
                kill(p, signal.SIGKILL)
                p.wait()
    res["goals"] = [goal(f"--shard {s}: max |loss uninterrupted - resumed|", res[s].get("max_abs_diff"), "<=", 1e-4)
                    for s in ("ddp", "fsdp")]
    return res


def compare_resumed(res, runs, common, deadline):
    for shard in ("ddp", "fsdp"):
        def one():
            whole = finish(runs[shard, "whole"], deadline)
            finish(runs[shard, "half"], deadline)
            out = runs[shard, "half"].out
            if not (out / "ckpt.pt").exists():
                raise RuntimeError(f"--stop-after 2 left no {out / 'ckpt.pt'}")
            resumed = run_train(train_cmd(S["dist"], out.name, *common, "--shard", shard, "--resume", torchrun=True), deadline)
            a, b = [r["loss"] for r in whole], [r["loss"] for r in resumed]
            if len(a) != len(b):
                raise RuntimeError(f"{len(a)} steps uninterrupted, {len(b)} stopped and resumed")
            return dict(losses=a, losses_resumed=b, max_abs_diff=max(abs(x - y) for x, y in zip(a, b)), bitwise_equal=a == b,
                        hf_export=(runs[shard, "whole"].out / "hf" / "config.json").exists())
        res[shard] = attempt(one)


def part_inference(res, deadline):
    from eval_passkey import build_prompt
    from model import KVCache, Llama, LlamaConfig
    from tokenizer import load_tokenizer
    tok = load_tokenizer(ROOT / "data" / "tokenizer.model")  # shipped with the project; token ids < 2000 fit any vocab
    c = S["smol"]
    torch.manual_seed(0)
    with torch.device(dev):
        model = Llama(LlamaConfig.from_hf({"model_type": "llama", **c, "max_position_embeddings": 8192}))
        model.init_weights()
    model.to(AMP).eval()
    res.update(config=c, dtype=dtype_name, tokenizer="data/tokenizer.model", memory="CUDA max allocated" if cuda else "peak RSS")
    warm = torch.tensor([build_prompt(tok, 256, 0.5, 12345)], device=dev)
    with torch.no_grad():
        for L in S["passkey_lens"]:
            if time.time() > deadline:
                raise TimeoutError(f"no time left for {L} tokens")
            a, b = build_prompt(tok, L, 0.9, 31415), build_prompt(tok, L, 0.5, 27182)  # deepest key first, as the eval
            shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            cache = KVCache(model.config, 1, max(len(a), len(b)) + 32, dev, AMP)
            model(warm, kv_cache=cache, logits_to_keep=1)  # kernels warm
            cache.length = 0
            base = peak_gb(reset=True)
            sync()
            t0 = time.perf_counter()
            nxt = model(torch.tensor([a], device=dev), kv_cache=cache, logits_to_keep=1)[0, -1].argmax()
            sync()
            prefill = time.perf_counter() - t0
            t0, n = time.perf_counter(), 16
            for _ in range(n):
                nxt = model(nxt.view(1, 1), kv_cache=cache, logits_to_keep=1)[0, -1].argmax()
                nxt.item()  # greedy decoding reads every token
            decode = (time.perf_counter() - t0) / n
            cache.length = shared
            sync()
            t0 = time.perf_counter()
            cached = model(torch.tensor([b[shared:]], device=dev), kv_cache=cache, logits_to_keep=1)[0, -1]
            sync()
            prefix = time.perf_counter() - t0
            cache.length = 0
            fresh = model(torch.tensor([b], device=dev), kv_cache=cache, logits_to_keep=1)[0, -1]
            res[str(L)] = dict(prompt_tokens=len(a), prefill_s=prefill, prefill_tokens_per_s=len(a) / prefill,
                               decode_ms_per_token=1000 * decode, peak_mem_gb=peak_gb(), run_start_mem_gb=base,
                               shared_prefix_tokens=shared, prefill_after_prefix_s=prefix,
                               prefill_after_prefix_vs_fresh=err(cached, fresh) | {"same_argmax": bool(cached.argmax() == fresh.argmax())})
    return res


def attempt(fn):
    """fn()'s dict, or {"error": one line}; the part's alarm is not caught: it ends the part."""
    try:
        return fn()
    except PartTimeout:
        raise
    except Exception as e:  # noqa: BLE001  (one failing measurement must not cost the others)
        return dict(error=f"{type(e).__name__}: {e}".splitlines()[0][:800], traceback=traceback.format_exc()[-2000:])


def run_part(n):
    fn = {1: part_exactness, 2: part_throughput, 3: part_cost, 4: part_distributed, 5: part_inference}[n]
    budget = min(BUDGET[n] if not args.smoke else 300, T_START + args.time_limit - time.time())
    t0 = time.time()
    res = dict(part=n, name=NAMES[n], device=dev, budget_s=round(budget))
    if budget < 5:
        res.update(status="skipped", error=f"no time left (--time-limit {args.time_limit:g} s)")
    else:
        def on_alarm(*_):
            raise PartTimeout(f"over its budget of {budget:.0f} s")
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(int(budget) + 10)  # in-process work; train.py runs stop at the deadline itself
        try:
            fn(res, t0 + budget)  # fills res as it goes: a part that fails keeps what it measured
            res["status"] = "ok"
        except Exception as e:  # noqa: BLE001  (PartTimeout too: the run goes on with the next part)
            res.update(status="error", error=f"{type(e).__name__}: {e}".splitlines()[0][:800],
                       traceback=traceback.format_exc()[-3000:])
        finally:
            signal.alarm(0)
    res["seconds"] = round(time.time() - t0, 1)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    (out_dir / f"{n}_{NAMES[n]}.json").write_text(json.dumps(res, indent=1, default=str))
    print(f"part {n} {NAMES[n]}: {res['status']} in {res['seconds']} s" + (f" ({res['error']})" if "error" in res else ""), flush=True)
    return res


def fmt(v):
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def table(results):
    """Key figures and the goals, one line each; a measurement that failed shows its error."""
    rows = []
    for r in results:
        n = r["part"]
        if r["status"] != "ok":
            rows.append((n, "status", f"{r['status']}: {r.get('error', '')[:100]}", "", "", ""))
        get = lambda *keys: fmt(dig(r, keys))

        def fig(k, label, *keys):  # one figure line of sub-result k, or why it is missing
            d = r.get(k) if isinstance(r.get(k), dict) else {}
            why = next((f"{w}: {d[w][:80]}" for w in ("error", "skipped") if w in d), None)
            rows.append((n, label, why or ", ".join(get(k, *key.split(".")) for key in keys), "", "", ""))
        if n == 1:
            fig("fp32", "fp32 logits vs transformers: max abs, rel", "max_abs", "rel")
            fig("kv_cache", "KV cache vs full forward, rel: fp32, 16-bit", "fp32.rel", f"{str(LOW)[6:]}.rel")
        elif n == 2:
            for k in ("eager", "compiled"):
                fig(k, f"train.py {k}: tok/s, peak GB, MFU, first step s", "tokens_per_s", "peak_mem_gb", "mfu", "first_step_s")
            fig("in_process", "in-process step tok/s: ours, transformers", "ours_tokens_per_s", "transformers_tokens_per_s")
            rows.append((n, "matmul peak TFLOP/s", get("peak_tflops"), "", "", ""))
        elif n == 3:
            for k in [k for k in r if k == "pose" or k.startswith("full_")]:
                fig(k, f"{k}: s/step, peak GB" + ("" if k == "pose" else "; PoSE / this: time, memory"), "step_s", "peak_mem_gb",
                    *([] if k == "pose" else ["ratios.time", "ratios.memory"]))
        elif n == 4:
            for k in ("ddp", "fsdp"):
                fig(k, f"--shard {k}: resumed losses bitwise equal, max diff", "bitwise_equal", "max_abs_diff")
        else:
            for k in [k for k in r if k.isdigit()]:
                fig(k, f"{k} tokens: prefill s, decode ms/token, peak GB, prefill after prefix s", "prefill_s",
                    "decode_ms_per_token", "peak_mem_gb", "prefill_after_prefix_s")
        rows += [(n, g["name"], fmt(g["value"]), g["goal"], fmt(g["ratio"]), {True: "yes", False: "NO", None: "n/a"}[g["met"]])
                 for g in r.get("goals", [])]
    head = ("part", "measure", "value", "goal", "value/goal", "met")
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(6)]
    for row in [head] + rows:
        print(" | ".join(str(x).ljust(w) for x, w in zip(row, widths)))


def dig(d, keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


if __name__ == "__main__":
    try:
        import transformers
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # parts 1 and 2 then record the error
        transformers = argparse.Namespace(__version__=None)
    env = dict(device=dev, gpu=torch.cuda.get_device_name(0) if cuda else None, dtype=dtype_name, compile=use_compile,
               compile_note=compile_note, smoke=args.smoke, torch=torch.__version__, cuda=torch.version.cuda,
               transformers=transformers.__version__, python=sys.version.split()[0], argv=sys.argv[1:],
               gpu_memory_gb=torch.cuda.get_device_properties(0).total_memory / 1024**3 if cuda else None,
               cpu_threads=torch.get_num_threads(), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    p = subprocess.run([sys.executable, "prepare_data.py", "--tokenizer", "data/tokenizer.model", "--out", str(work / "plays"),
                        "--min-tokens", "2048", "data/train"], cwd=ROOT, capture_output=True, text=True)  # 20 plays, 0.9M tokens
    if p.returncode:
        sys.exit(f"error: prepare_data.py failed: {p.stderr.strip()[-1000:]}")
    PEAK = env["matmul_peak_tflops"] = matmul_peak_tflops(S["matmul"])
    (out_dir / "env.json").write_text(json.dumps(env, indent=1))  # again at the end, with the total time
    print(f"{env['gpu'] or 'CPU'}: {dtype_name}, compile {'on' if use_compile else 'off'}, matmul peak {PEAK:.1f} TFLOP/s; "
          f"work dir {work}", flush=True)
    results = [run_part(n) for n in args.parts]
    env["seconds"] = round(time.time() - T_START, 1)
    (out_dir / "env.json").write_text(json.dumps(env, indent=1))
    print(f"\n{env['gpu'] or 'CPU'}, torch {env['torch']}, transformers {env['transformers']}, {env['seconds']} s; "
          f"JSON in {out_dir}")
    table(results)
    (out_dir / "logs").mkdir(exist_ok=True)
    for f in work.glob("*.stdout"):  # what each train.py run printed
        shutil.copy(f, out_dir / "logs" / f.name)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
