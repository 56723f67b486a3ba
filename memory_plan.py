"""
The memory plan train.py prints before it allocates anything: GB per device, from the config's numbers alone (no
model, no GPU: `--dry-run` plans 8 cards of 48 GB on a laptop); `--shard auto` takes the first of ddp, zero1, fsdp that fits.

Per device, in GB of 2^30 bytes:
  weights      fp32 master weights, 4 B a parameter, plus the 16-bit copies autocast makes (2 B a parameter; FSDP
               instead gathers two blocks at a time in the compute dtype: the one computing, the one prefetched)
  grads        fp32, 4 B a parameter
  optimizer    AdamW's two fp32 moments, 8 B a parameter
  activations  what autograd keeps for backward: with AC each block's input plus one block's insides (recomputed
               in backward, one at a time), without AC every block's insides; plus one chunk of fp32 logits in the loss
  loss_grad    the chunked loss's gradients, held until backward: fp32 [V, C] (2 GB: V = 128k, C = 4096), [tokens, C]
  workspace    WORKSPACE_GB kept free: the CUDA context, cuBLAS / NCCL workspaces, allocator fragmentation
ddp replicates all of it; zero1 divides the optimizer state by the ranks; fsdp divides weights, grads and
optimizer state. Rough by design (a block is taken as n_params / layers, embeddings included): it tells which
sharding fits, not the last GB (hence the margins); tests/test_train.py checks it against tensors and bytes.
"""

GB = 1024**3
HEADROOM, WORKSPACE_GB = 0.9, 2.0  # a plan fits when it needs at most 90% of the device, 2 GB of workspace included


def memory_plan(config, n_params, shard, world_size, micro_batch, seq_len, ac, act_bytes):
    """{"weights", "grads", "optimizer", "activations", "loss_grad", "workspace"}: GB per device of a run sharded by `shard` over
    `world_size` ranks, `micro_batch` sequences of `seq_len` tokens per forward. act_bytes: 2 under bf16/fp16
    autocast (which then keeps 16-bit weight copies), 4 in fp32. config: anything with hidden_size,
    intermediate_size, num_hidden_layers and vocab_size (a LlamaConfig)."""
    P, C, I, L, a = n_params, config.hidden_size, config.intermediate_size, config.num_hidden_layers, act_bytes
    w, g, o = {"ddp": (1, 1, 1), "zero1": (1, 1, world_size), "fsdp": (world_size,) * 3}[shard]  # divide weights, grads, optimizer
    block = P / L
    weights = 4 * P / w + (2 * P if a == 2 and shard != "fsdp" else 2 * a * block if shard == "fsdp" else 0)  # 16-bit copies
    tokens = micro_batch * seq_len
    per_block = tokens * a * (10 * C + 4 * I)  # saved by one block, ~10 C + 4 I values per token (SDPA: no T x T)
    acts = (L * tokens * C * a + per_block) if ac else L * per_block
    acts += 3 * 4 * 1024 * config.vocab_size  # one chunk of fp32 logits in the loss
    parts = dict(weights=weights, grads=4 * P / g, optimizer=8 * P / o, activations=acts,
                 loss_grad=4 * config.vocab_size * C + tokens * C * a, workspace=WORKSPACE_GB * GB)
    return {k: v / GB for k, v in parts.items()}


def choose_shard(candidates, capacity, *, config, n_params, world_size, micro_batch, seq_len, ac, device, dtype_name):
    """The first of `candidates` whose plan fits HEADROOM x `capacity` GB, and the lines train.py prints, one
    per sharding tried (the ones that do not fit say so: the reader sees why auto went on).
    -> (shard, or None when none fits; the plan of the last one tried; lines)."""
    lines = []
    for shard in candidates:
        plan = memory_plan(config, n_params, shard, world_size, micro_batch, seq_len, ac,
                           act_bytes=2 if dtype_name != "fp32" else 4)
        fits = sum(plan.values()) <= HEADROOM * capacity
        lines.append(f"memory plan, {n_params / 1e9:.2f}B params, {shard} on {world_size} x {capacity:.0f} GB ({device}, "
                     f"{dtype_name}, micro-batch {micro_batch} x {seq_len} tokens, AC {'on' if ac else 'off'}): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in plan.items()) + f" = {sum(plan.values()):.2f} GB per device"
                     + ("" if fits else "  -> does not fit"))
        if fits:
            return shard, plan, lines
    return None, plan, lines
