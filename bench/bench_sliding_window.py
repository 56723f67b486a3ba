"""Peak memory of Mistral's sliding window beyond the window: model.Attention.attend (blocks of W queries, each over
< 2 W keys) against one [T, S] boolean mask over all keys (model.py before issue 24). Each way runs in a fresh
process, one attention forward (B = 1, fp32, CPU); peak RSS above the process's state after building q, k, v.

    python bench/bench_sliding_window.py --len 8192 --window 4096 --heads 4 --out results/bench/sliding_window.json
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one(way, T, W, H, D):
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, str(ROOT))
    from model import Attention, LlamaConfig
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, H, T, D).unbind(0)
    attn = Attention(LlamaConfig(hidden_size=H * D, num_attention_heads=H, sliding_window=W), 0)
    base, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    with torch.no_grad():
        if way == "mask":
            idx = torch.arange(T)
            mask = (idx[None, :] <= idx[:, None]) & (idx[None, :] > idx[:, None] - W)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = attn.attend(q, k, v)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_extra_mb": (peak - base) / 1024, "seconds": time.perf_counter() - t0, "checksum": float(y.double().sum())}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--len", type=int, default=8192)
    p.add_argument("--window", type=int, default=4096)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--way")
    p.add_argument("--out")
    a = p.parse_args()
    if a.way:
        print(json.dumps(one(a.way, a.len, a.window, a.heads, a.head_dim)))
        sys.exit()
    res = {"settings": vars(a)}
    for way in ("mask", "blocks"):
        cmd = [sys.executable, __file__, "--way", way, "--len", str(a.len), "--window", str(a.window), "--heads", str(a.heads),
               "--head-dim", str(a.head_dim)]
        res[way] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        print(way, res[way], flush=True)
    res["blocks_vs_mask_peak"] = res["blocks"]["peak_extra_mb"] / max(res["mask"]["peak_extra_mb"], 1e-9)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
        print(f"wrote {a.out}")
