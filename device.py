"""Device, dtype and torch.compile choices: one rule for train.py, eval_passkey.py and eval_ppl.py.

    device = pick_device(args.device)             # auto: CUDA when there is one, else the CPU
    dtype_name = pick_dtype(args.dtype, device)   # auto: bf16 on CUDA (fp16 where it has none), fp32 on a CPU
    if pick_compile(args.compile, device): compile_blocks(model)

Each raises ValueError naming the flag when the request cannot be met, for the caller's parser.error.
"""
import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(flag, local_rank=0):
    """'auto' | 'cpu' | 'cuda' -> 'cpu' or 'cuda:<local_rank>'."""
    if flag == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return f"cuda:{local_rank}" if flag != "cpu" and torch.cuda.is_available() else "cpu"


def pick_dtype(flag, device):
    """'auto' | 'fp32' | 'bf16' | 'fp16' -> one of the last three. auto is fp32 on a CPU: bf16 there is emulated
    on CPUs without AVX512-BF16 / AMX, slower than fp32 (bench/bench_cpu_dtype.py measures by how much)."""
    on_cuda = device != "cpu"
    if flag == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if on_cuda else "fp32"
    if flag == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--dtype bf16: {torch.cuda.get_device_name(device)} does not support bf16 (use fp16 or auto)")
    return flag


def pick_compile(flag, device):
    """flag None (auto) -> on for CUDA, off on a CPU (where the matrix products already run near the CPU's peak
    and the compile warm-up is long). When on, a trial compile proves the compiler works (Triton on CUDA, a C++
    compiler on a CPU)."""
    on = device != "cpu" if flag is None else flag
    if on:
        try:
            torch.compile(lambda x: x * 2 + 1)(torch.ones(4, device=device))
        except Exception as e:  # noqa: BLE001  (any backend failure means: no compiler here)
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"--compile: torch.compile does not work on {device} here ({type(e).__name__}: {first}); "
                             f"use --no-compile") from None
    return on


def compile_blocks(model, dynamic=None, backend="inductor"):
    """Compile each transformer block in place (as torchtitan does): the blocks are where the time goes, one
    graph serves every block of the same shape, and the embedding / loss stay eager (the chunked loss is a
    custom autograd Function). Activation checkpointing (model.forward) then recomputes the compiled block."""
    for block in model.layers:
        block.compile(dynamic=dynamic, backend=backend)
    return model
