"""
On this CPU, which train.py settings are faster for SmolLM2-135M: bf16 autocast or fp32, activation
checkpointing on or off? Cases alternate round by round in one process, so they share the machine's load.

    python bench/bench_cpu_dtype.py                     # 2 threads, cache/SmolLM2-135M-Instruct (make smollm2)
    python bench/bench_cpu_dtype.py --threads 1 --rounds 3

Prints: one matrix product (1024x576 @ 576x1536, the MLP's shape) in bf16 and fp32; a loss forward of
--bf16-tokens tokens under bf16 autocast and in fp32; forward + backward of --tokens tokens in fp32 with
and without activation checkpointing. Medians over --rounds, and ratios, also written to --out (JSON, with
the command). bf16 is only fast on CPUs with native bf16 (AVX512-BF16, AMX); on AVX2 machines torch falls back
to slow kernels.
"""
import argparse
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from load_hf_weights import load_model  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", default="cache/SmolLM2-135M-Instruct", help="HF folder (default: %(default)s)")
parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
parser.add_argument("--rounds", type=int, default=2, help="repeats of every case (default: %(default)s)")
parser.add_argument("--tokens", type=int, default=1024, help="sequence for the AC comparison (default: %(default)s)")
parser.add_argument("--bf16-tokens", type=int, default=256, help="sequence for the bf16 forward (default: %(default)s)")
parser.add_argument("--out", default="results/bench/cpu_dtype.json", help="JSON of the figures (default: %(default)s)")
args = parser.parse_args()
if not (Path(args.model) / "config.json").is_file():
    sys.exit(f"error: no model at {args.model}: run `make smollm2` or pass --model DIR")
torch.set_num_threads(args.threads)
torch.manual_seed(0)
model = load_model(args.model, dtype=torch.float32, rope={"rope_type": "yarn", "factor": 2.0})
V = model.config.vocab_size
a, w = torch.randn(1024, 576), torch.randn(1536, 576)


def matmul(dtype):
    x, y = a.to(dtype), w.to(dtype)
    t0 = time.perf_counter()
    for _ in range(10):
        x @ y.T
    return (time.perf_counter() - t0) / 10


def forward(bf16):
    x = torch.randint(0, V, (1, args.bf16_tokens))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
        t0 = time.perf_counter()
        model(x, labels=x)
    return time.perf_counter() - t0


def train_step(ac):
    model.activation_checkpointing = ac
    x = torch.randint(0, V, (1, args.tokens))
    pos = torch.arange(args.tokens)[None] + 3000  # PoSE-like: positions past the start
    t0 = time.perf_counter()
    model(x, position_ids=pos, labels=x).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


cases = {"matmul bf16": lambda: matmul(torch.bfloat16), "matmul fp32": lambda: matmul(torch.float32),
         f"forward {args.bf16_tokens} tok, bf16 autocast": lambda: forward(True), f"forward {args.bf16_tokens} tok, fp32": lambda: forward(False),
         f"fwd+bwd {args.tokens} tok, fp32, AC on": lambda: train_step(True), f"fwd+bwd {args.tokens} tok, fp32, AC off": lambda: train_step(False)}
times = {k: [] for k in cases}
train_step(False)  # warm-up
for r in range(args.rounds):
    for k, f in (cases.items() if r % 2 == 0 else reversed(cases.items())):
        times[k].append(f())
med = {k: statistics.median(v) for k, v in times.items()}
print(f"{args.threads} threads, torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
      f"median of {args.rounds} rounds")
for k, v in med.items():
    print(f"{k:>36}: {v:8.4f} s")
names = list(med)
ratios = {f"{names[slow]} / {names[fast]}": med[names[slow]] / med[names[fast]] for slow, fast in ((0, 1), (2, 3), (4, 5))}
for name, r in ratios.items():
    print(f"{name}: {r:.2f}")
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
Path(args.out).write_text(json.dumps({
    "command": " ".join(["python", *sys.argv]), "model": args.model, "threads": args.threads, "rounds": args.rounds,
    "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    "load_average": os.getloadavg()[0], "seconds": times, "median_s": med, "ratios": ratios}, indent=1) + "\n")
print(f"wrote {args.out}")
