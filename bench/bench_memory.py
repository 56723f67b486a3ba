"""
Peak memory on the real SmolLM2-135M checkpoint, ours vs transformers, each case in a fresh process.

    python bench/bench_memory.py                   # load, then a loss forward at 8k and 16k: results/bench/memory.json
    python bench/bench_memory.py --lens 4096 --out /tmp/memory.json      # other lengths

- load: peak RSS of `load_model` vs `from_pretrained` (fp32), against the weights' size on disk,
  after every weight has been read once (both sides memory-map the safetensors file).
- loss: peak RSS of one no-grad forward that returns the next-token loss at T tokens. transformers
  builds the [T, V] logits in fp32; ours never does (chunked loss). RSS includes the ~0.3 GB of
  the Python/torch runtime, printed as "baseline".
Run it on an otherwise idle machine: it also prints the wall-clock of each case. Everything printed is
also written to --out (JSON, with the command and the machine's load average).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def run_case(case, model_dir, T):
    import torch
    torch.set_num_threads(os.cpu_count())
    t0 = time.perf_counter()
    if case == "baseline":
        import transformers  # noqa: F401  (so both sides count the same imports)
        from load_hf_weights import load_model  # noqa: F401
    elif case.startswith("ours"):
        from load_hf_weights import load_model
        model = load_model(model_dir)
    else:
        import transformers
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    # memory-mapped weights are read from disk only when touched: touch them all, so that the peak
    # counts every weight once (file-backed pages count in RSS) and any second copy on top
    if case != "baseline":
        sum(float(p.float().sum()) for p in model.parameters())
    if case.endswith("loss"):
        ids = torch.randint(100, 40000, (1, T), generator=torch.Generator().manual_seed(0))  # same tokens both sides
        t0 = time.perf_counter()
        with torch.no_grad():
            loss = model(ids, labels=ids) if case.startswith("ours") else model(ids, labels=ids).loss
        return {"peak_gb": peak_rss_gb(), "seconds": time.perf_counter() - t0, "loss": float(loss)}
    return {"peak_gb": peak_rss_gb(), "seconds": load_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF folder (default: cache/SmolLM2-135M-Instruct, built if missing)")
    parser.add_argument("--lens", type=int, nargs="+", default=[8192, 16384], help="loss-forward lengths (default: 8192 16384)")
    parser.add_argument("--out", default="results/bench/memory.json", help="JSON of the figures (default: %(default)s)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--T", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.model, args.T)))
        return
    if args.model is None:
        from scripts.get_smollm2 import get_smollm2
        args.model = str(get_smollm2())
    disk = sum(f.stat().st_size for f in Path(args.model).glob("*.safetensors")) / 1024**3

    def measure(case, T=0):
        out = subprocess.run([sys.executable, __file__, "--case", case, "--model", args.model, "--T", str(T)],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    base = measure("baseline")["peak_gb"]
    ours, hf = measure("ours_load"), measure("hf_load")
    print(f"SmolLM2-135M fp32, weights on disk {disk:.3f} GB; runtime baseline RSS {base:.3f} GB")
    print(f"{'case':<22} | {'ours GB':>8} | {'HF GB':>8} | {'ours/HF':>7} | {'ours s':>7} | {'HF s':>7}")
    print(f"{'load: peak RSS':<22} | {ours['peak_gb']:>8.3f} | {hf['peak_gb']:>8.3f} | {ours['peak_gb'] / hf['peak_gb']:>7.2f} | "
          f"{ours['seconds']:>7.1f} | {hf['seconds']:>7.1f}")
    print(f"{'load: above baseline':<22} | {ours['peak_gb'] - base:>8.3f} | {hf['peak_gb'] - base:>8.3f} | "
          f"{(ours['peak_gb'] - base) / (hf['peak_gb'] - base):>7.2f} |  (÷ disk: ours {(ours['peak_gb'] - base) / disk:.2f}×, "
          f"HF {(hf['peak_gb'] - base) / disk:.2f}×)")
    report = {"command": " ".join(["python", *sys.argv]), "model": args.model, "weights_on_disk_gb": disk,
              "baseline_gb": base, "load": {"ours": ours, "transformers": hf}, "loss_forward": [],
              "torch": version("torch"), "transformers": version("transformers"), "load_average": os.getloadavg()[0]}
    for T in args.lens:
        o, h = measure("ours_loss", T), measure("hf_loss", T)
        print(f"{f'loss forward {T}':<22} | {o['peak_gb']:>8.3f} | {h['peak_gb']:>8.3f} | {o['peak_gb'] / h['peak_gb']:>7.2f} | "
              f"{o['seconds']:>7.1f} | {h['seconds']:>7.1f}   (loss ours {o['loss']:.5f}, HF {h['loss']:.5f})")
        report["loss_forward"].append({"tokens": T, "ours": o, "transformers": h})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
