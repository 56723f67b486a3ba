"""
Context-window extension with PoSE (arXiv 2309.10400): fine-tune at the original window Lc
(--train-len) with position ids spread over the target window Lt (--target-len).

The defaults are the paper's main run: LLaMA-7B 2k -> 16k, linear interpolation, AdamW lr 2e-5,
weight decay 0, 10 warm-up steps then linear decay, global batch 64, 1,000 steps, activation
checkpointing. They expect the checkpoint in cache/llama-7b (a Hugging Face folder) and the data
in cache/data/pile (made by prepare_data.py --min-tokens 2048):
    torchrun --nproc_per_node 8 train.py
    torchrun --nproc_per_node 8 train.py --preset llama7b-16k-yarn       # or -ntk; mistral7b-32k
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --nproc_per_node 8 train.py   # each node
A small CPU run (data: python prepare_data.py --tokenizer TOK --out cache/data/tiny --min-tokens 512 TEXTS):
    python train.py --preset tiny
    torchrun --nproc_per_node 2 train.py --preset tiny --shard fsdp
--method cream trains CREAM (arXiv 2406.07138) instead: head, middle and tail chunks, the middle placed by a
truncated Gaussian around the centre of the target window. Baselines: --method full (Lt tokens at positions 0..Lt-1) or --method randpos. --method clex trains CLEX
(arXiv 2310.16450) instead: a scaling factor t ~ U{1..Lt/Lc} per step, RandPos-like positions over Lc t; --method plain trains at Lc
with positions 0..Lc-1 and plain RoPE (pretraining a base: demo.py does, with --mix copy=0.5,passkey=0.5). Memory plan only
(e.g. for 8 cards of 48 GB): WORLD_SIZE=8 python train.py --dry-run --device-memory 48
Resume after a crash or --stop-after: the same command plus --resume; the losses then equal those
of an uninterrupted run (example e of the run is drawn from a generator seeded with (seed, e)).
"""
import json
import math
import os
import resource
import sys
import time
from contextlib import nullcontext
from datetime import timedelta

from train_args import TINY, parse_args

parser, args = parse_args(__doc__)

# ----------------------------------------------------------------------------- checks before any work
world_size, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
master_process = rank == 0
seq_len = args.target_len if args.method == "full" else args.train_len
eval_len = args.train_len if args.method == "plain" else args.target_len
if args.target_len <= args.train_len and args.method != "plain":
    parser.error(f"--target-len {args.target_len} must be greater than --train-len {args.train_len}: PoSE extends the window")
if not 1 <= args.num_chunks <= args.train_len:
    parser.error(f"--num-chunks must be in 1..{args.train_len}, got {args.num_chunks}")
if args.global_batch % (world_size * args.micro_batch):
    parser.error(f"--global-batch {args.global_batch} is not divisible by {world_size} ranks x --micro-batch {args.micro_batch}")
grad_accum = args.global_batch // (world_size * args.micro_batch)
if args.init_from and not os.path.isfile(os.path.join(args.init_from, "config.json")):
    parser.error(f"checkpoint {args.init_from}/config.json not found: pass --init-from DIR (a Hugging Face LLaMA/Mistral "
                 f"folder with config.json and *.safetensors) or --config tiny|CONFIG.json for a fresh model")
if not all(os.path.isfile(args.data + ext) for ext in (".bin", ".idx.npy", ".json")):
    missing = next(ext for ext in (".bin", ".idx.npy", ".json") if not os.path.isfile(args.data + ext))
    parser.error(f"data {args.data}{missing} not found: make it with `python prepare_data.py --tokenizer TOKENIZER --out {args.data} "
                 f"--min-tokens {args.train_len} TEXTS...` or pass --data PREFIX")
ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
if args.resume and not os.path.isfile(ckpt_path):
    parser.error(f"--resume: {ckpt_path} not found (is --out-dir right?)")
if args.config and args.config != "tiny" and not os.path.isfile(args.config):
    parser.error(f"--config {args.config}: no such file (use 'tiny' or a config.json path)")

import numpy as np  # noqa: E402  (imported after the checks: a typo should not wait for torch)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from checkpoint import Checkpoints  # noqa: E402
from load_hf_weights import load_config, load_model, with_rope  # noqa: E402
from device import DTYPES, compile_blocks, pick_compile, pick_device, pick_dtype  # noqa: E402
from examples import Examples  # noqa: E402
from memory_plan import choose_shard  # noqa: E402
from model import Llama, LlamaConfig  # noqa: E402
from prepare_data import TokenDocs  # noqa: E402
from tasks import PasskeyWindows  # noqa: E402


def print0(*a, **k):
    if master_process:
        print(*a, **k, flush=True)


try:
    device = pick_device(args.device, local_rank)
    dtype_name = pick_dtype(args.dtype, device)
    if device == "cpu" and dtype_name == "fp16":
        raise ValueError("--dtype fp16 is for CUDA (loss scaling); on CPU use fp32 or bf16")
    use_compile = pick_compile(args.compile, device)
except ValueError as e:
    parser.error(str(e))
amp_dtype = DTYPES[dtype_name]
data = TokenDocs(args.data)
eval_ids = np.flatnonzero(data.lengths >= eval_len)[-args.eval_docs:] if args.eval_every and args.eval_docs else []
train_ids = np.setdiff1d(np.flatnonzero(data.lengths >= seq_len), eval_ids)  # held out: never trained on
if args.eval_every and len(eval_ids) < max(args.eval_docs, world_size):
    sys.exit(f"error: the eval loss needs {max(args.eval_docs, world_size)} documents of >= {eval_len} tokens, found "
             f"{len(eval_ids)}: prepare longer documents, lower --eval-docs, or pass --eval-every 0")
if len(train_ids) == 0:
    sys.exit(f"error: {args.data} has no training document of >= {seq_len} tokens (after holding out {len(eval_ids)} for eval)")
print0(f"data: {len(train_ids):,} training documents of >= {seq_len} tokens, {len(eval_ids)} held out for eval at {eval_len}")
passkey_window = None
if any("passkey" in mix for mix in args.mixes.values()):  # passkey windows are built with the data's own tokenizer
    from tokenizer import load_tokenizer
    try:
        passkey_window = PasskeyWindows(load_tokenizer(data.meta["tokenizer"]))
    except (OSError, ValueError) as e:  # the tokenizer moved since prepare_data.py, or the data has none
        sys.exit(f"error: passkey windows need the tokenizer named in {args.data}.json: {e}")
if args.init_from:
    config = load_config(args.init_from)
else:
    hf = dict(TINY) if args.config == "tiny" else json.load(open(args.config))
    hf.setdefault("vocab_size", data.vocab_size)
    hf.setdefault("max_position_embeddings", args.train_len)
    config = LlamaConfig.from_hf({"model_type": "llama", **hf}, source=args.config)
if data.vocab_size > config.vocab_size:
    parser.error(f"{args.data} was tokenized with a vocabulary of {data.vocab_size}, the model has {config.vocab_size}")
# The factor stretches the checkpoint's own window L0 to Lt; max_position_embeddings becomes Lt (as PoSE does).
# In the paper L0 = Lc (LLaMA 2k, trained at 2k); a model pretrained at 8k may be fine-tuned at 1k: still s = Lt / 8k.
orig_len = args.orig_len or (config.original_len if args.init_from else args.train_len)
if args.rope != "none" and args.method not in ("plain", "clex") and args.target_len <= orig_len:
    parser.error(f"--target-len {args.target_len} must be greater than the checkpoint's window {orig_len} (--orig-len) to scale RoPE")
rope = {"rope_type": "default" if args.rope == "none" or args.method == "plain" else args.rope,
        "factor": args.target_len / orig_len, "original_max_position_embeddings": orig_len}
if args.method == "clex":  # its frequencies come from a learned ODE (rope.py); fresh parameters when the checkpoint has none
    rope = {"rope_type": "clex", "max_factor": math.ceil(args.target_len / args.train_len), "original_max_position_embeddings": args.train_len}
config = with_rope(config, rope)
with torch.device("meta"):
    n_params = sum(p.numel() for p in Llama(config).parameters())

# memory plan (memory_plan.py): GB per device of each sharding, the first that fits is used
capacity = args.device_memory or (torch.cuda.get_device_properties(local_rank).total_memory / 1024**3 if device != "cpu"
                                  else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3 / local_world)
candidates = [args.shard] if args.shard != "auto" else ["ddp"] + (["zero1", "fsdp"] if world_size > 1 else [])
if args.shard in ("zero1", "fsdp") and "RANK" not in os.environ and not args.dry_run:  # torchrun, even one rank (shards nothing)
    parser.error(f"--shard {args.shard} needs a process group: launch with torchrun --nproc_per_node N")
shard, plan, lines = choose_shard(candidates, capacity, config=config, n_params=n_params, world_size=world_size,
                                  micro_batch=args.micro_batch, seq_len=seq_len, ac=args.ac, device=device, dtype_name=dtype_name)
print0("\n".join(lines))
if shard is None:
    print0(f"error: the run needs about {sum(plan.values()):.1f} GB per device but {capacity:.0f} GB are available; "
           f"try --shard fsdp (shards weights, grads and optimizer over ranks), more ranks, --micro-batch 1 or --ac",
           file=sys.stderr)
    sys.exit(1)
print0(f"using --shard {shard}; {world_size} ranks x {grad_accum} micro-steps x {args.micro_batch} = {args.global_batch} sequences per step")
if args.dry_run:
    sys.exit(0)

# ----------------------------------------------------------------------------- distributed, data, model
ddp = "RANK" in os.environ
if ddp:
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")

# example e of the run: the same for any number of ranks and after a resume (examples.py)
examples = Examples(data, train_ids, args.mixes, method=args.method, seq_len=seq_len, train_len=args.train_len,
                    target_len=args.target_len, num_chunks=args.num_chunks, seed=args.seed, global_batch=args.global_batch,
                    cream_sigma=args.cream_sigma, clex_max_factor=rope.get("max_factor"), gap_warmup=args.gap_warmup,
                    passkey_window=passkey_window, passkey_min_len=args.passkey_min_len)


def get_batch(step, micro_step):
    first = step * args.global_batch + (rank * grad_accum + micro_step) * args.micro_batch
    x, pos, labels = zip(*(examples.example(e) for e in range(first, first + args.micro_batch)))
    # CUDA: page-locked host memory, so that the copies run beside the previous step's kernels instead of waiting
    move = (lambda t: t.pin_memory().to(device, non_blocking=True)) if device.startswith("cuda") else (lambda t: t.to(device))
    return move(torch.stack(x)), move(torch.stack(pos)), move(torch.stack(labels))  # (B, T) each


torch.manual_seed(args.seed)  # a fresh model, or CLEX's new ODE weights on a checkpoint without them
if args.init_from:
    # loaded in the checkpoint's own dtype (memory-mapped: free) and cast to fp32 below, block by block for FSDP
    try:
        model = load_model(args.init_from, dtype=getattr(torch, config.torch_dtype, torch.float32), rope=rope)
    except (OSError, ValueError) as e:  # a missing or corrupt shard: one line naming the file
        sys.exit(f"error: --init-from {args.init_from}: {e}")
else:
    model = Llama(config)
    model.init_weights()
model.activation_checkpointing = args.ac
if use_compile:
    compile_blocks(model)
raw_model = model  # unwrapped: its state_dict has plain names (FSDP shards it in place)
if shard == "fsdp":
    mp = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)
    for block in model.layers:  # one block at a time: only one block is ever held unsharded in fp32
        fully_shard(block.to(device, torch.float32), mp_policy=mp)
    fully_shard(model.to(device, torch.float32), mp_policy=mp)  # the root holds embeddings (tied: one unit), norm, head
else:
    model.to(device, torch.float32)
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device.startswith("cuda") else None, gradient_as_bucket_view=True,
                    find_unused_parameters=args.method == "clex")  # CLEX at t = 1 is plain RoPE: its ODE gets no gradient
# fused: one CUDA kernel for the whole update instead of a few per parameter
opt_kw = dict(lr=args.lr, betas=(0.9, args.beta2), eps=1e-8, weight_decay=args.weight_decay, fused=device.startswith("cuda"))
if shard == "zero1":  # each rank keeps the AdamW moments of its 1/world_size of the parameters
    from torch.distributed.optim import ZeroRedundancyOptimizer  # here: importing it warns about torch.jit
    optimizer = ZeroRedundancyOptimizer(raw_model.parameters(), optimizer_class=torch.optim.AdamW, **opt_kw)
else:
    optimizer = torch.optim.AdamW(raw_model.parameters(), **opt_kw)
scaler = None  # fp16 only: the sharded scaler all-reduces its inf check, since each rank sees only its shard
if dtype_name == "fp16":
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
    scaler = ShardedGradScaler() if shard == "fsdp" else torch.amp.GradScaler("cuda")
autocast = torch.autocast(device.split(":")[0], dtype=amp_dtype) if dtype_name != "fp32" else nullcontext()
ckpts = Checkpoints(ckpt_path, model=model, raw_model=raw_model, optimizer=optimizer, scaler=scaler, shard=shard, ddp=ddp,
                    master=master_process)  # checkpoint.py: ckpt.pt written atomically, exact resume, the final HF folder


def get_lr(step):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    ratio = (step - args.warmup) / max(args.max_steps - args.warmup, 1)
    coeff = 1 - ratio if args.decay == "linear" else 0.5 * (1 + math.cos(math.pi * ratio))
    return args.min_lr + coeff * (args.lr - args.min_lr)


start_step, log = 0, os.path.join(args.out_dir, "log.jsonl")
if master_process:
    os.makedirs(args.out_dir, exist_ok=True)
if args.resume:
    start_step = ckpts.resume(args, parser.get_default, log)
    print0(f"resumed from {ckpt_path} at step {start_step}")
elif master_process and os.path.exists(log):
    os.remove(log)


@torch.no_grad()
def evaluate():
    """Mean next-token loss on full windows of Lt tokens (plain: Lc; positions 0..) of the held-out documents."""
    model.eval()
    nll, count = torch.zeros((), device=device), torch.zeros((), device=device)
    for i in eval_ids[rank:len(eval_ids) // world_size * world_size:world_size]:  # same count on every rank (FSDP)
        x = torch.as_tensor(np.asarray(data[i][:eval_len], dtype=np.int64), device=device)[None]
        with autocast:
            nll += (model if shard == "fsdp" else raw_model)(x, labels=x, reduction="sum").float()
        count += x.numel() - 1
    if ddp:
        dist.all_reduce(nll)
        dist.all_reduce(count)
    model.train()
    return (nll / count).item()


def write_log(record):
    if master_process:
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- training loop
step, last_step, times = start_step, False, []
tokens_per_step = args.global_batch * seq_len
print0(f"{args.method} training, {args.train_len} -> {eval_len} tokens, rope {rope['rope_type']} "
       f"(factor {rope.get('factor', rope.get('max_factor'))}, L0 {rope['original_max_position_embeddings']}), mix {args.mix}, "
       f"{tokens_per_step:,} tokens per step, steps {start_step} -> {args.max_steps}")
while True:
    last_step = step == args.max_steps or step == args.stop_after
    if args.eval_every and (step % args.eval_every == 0 or last_step) and not (args.resume and step == start_step):
        eval_loss = evaluate()
        print0(f"step {step} | eval loss at {eval_len} tokens {eval_loss:.4f}")
        write_log(dict(step=step, eval_loss=eval_loss))
    if step > start_step and ((args.ckpt_every and step % args.ckpt_every == 0) or last_step):
        ckpts.save(step, args, config)
    if last_step:
        break

    t0 = time.time()
    lr = get_lr(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=device)
    for micro_step in range(grad_accum):
        if ddp and shard != "fsdp":  # all-reduce only on the last micro-step: what no_sync() toggles (as nanoGPT)
            model.require_backward_grad_sync = micro_step == grad_accum - 1
        # FSDP reduce-scatters every micro-step: skipping it would keep full unsharded fp32 grads on every rank
        x, pos, labels = get_batch(step, micro_step)
        with autocast:
            loss = model(x, position_ids=pos, labels=labels) / grad_accum  # labels: the inputs (-100: unscored), shifted inside
        loss_sum += loss.detach()
        (scaler.scale(loss) if scaler else loss).backward()
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.grad_clip or float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ddp:
        dist.all_reduce(loss_sum)
        loss_sum /= world_size
    step += 1
    loss_f = loss_sum.item()
    times.append(time.time() - t0)
    dt = sum(times[-10:]) / len(times[-10:])
    mem = torch.cuda.max_memory_allocated(device) / 1024**3 if device.startswith("cuda") else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # CPU: peak RSS of the process
    eta = timedelta(seconds=round(dt * ((args.stop_after or args.max_steps) - step)))
    print0(f"step {step}/{args.max_steps} | loss {loss_f:.4f} | lr {lr:.2e} | grad norm {grad_norm.item():.3f} | "
           f"{tokens_per_step / times[-1]:,.0f} tok/s | peak mem {mem:.2f} GB | {times[-1]:.2f} s | ETA {eta}")
    write_log(dict(step=step, loss=loss_f, lr=lr, grad_norm=grad_norm.item(), tokens_per_s=tokens_per_step / times[-1],
                   peak_mem_gb=mem, step_time=times[-1]))

if step == args.max_steps:  # the final model as a Hugging Face folder
    save_dtype = getattr(torch, config.torch_dtype, torch.float32) if args.init_from else torch.float32
    tok = data.meta.get("tokenizer") or ""
    tok_dir = args.init_from or (tok if os.path.isdir(tok) else os.path.dirname(tok)) or None
    if saved := ckpts.export(os.path.join(args.out_dir, "hf"), config, save_dtype, tok_dir):
        print0(f"saved {saved}")
if ddp:
    dist.destroy_process_group()
    if device == "cpu":  # gloo in torch 2.13 sometimes aborts (SIGABRT) in interpreter teardown, after all work is done
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
