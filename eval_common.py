"""Command-line pieces shared by eval_passkey.py and eval_ppl.py: lengths, model loading, JSON, PNG."""
import argparse
import json
import os
import time
from pathlib import Path

import torch

from device import DTYPES, pick_compile, pick_device, pick_dtype
from inference import compile_decoding
from load_hf_weights import load_model
from tokenizer import load_tokenizer

ROPES = ["default", "linear", "ntk", "dynamic", "yarn", "yarn_original"]  # --rope; yarn = PoSE's revised YaRN


def parse_lengths(specs):
    """'4096', '16k', and 'start:stop:step' ranges (stop included) -> sorted list of ints."""
    num = lambda s: int(float(s[:-1]) * 1024) if s.lower().endswith("k") else int(s)
    out = set()
    for spec in specs:
        a = [num(x) for x in spec.split(":")]
        out.update(range(a[0], a[1] + 1, a[2] if len(a) > 2 else a[0]) if len(a) > 1 else a)
    return sorted(out)


def load(parser, args):
    """Model (with --rope/--factor applied) and tokenizer of args.model, or a parser error saying what to do."""
    path = Path(args.model)
    if (path / "hf" / "config.json").is_file():  # train.py's --out-dir: its final HF folder is hf/
        path = path / "hf"
    if not (path / "config.json").is_file():
        parser.error(f"no model at {path}: train one (python train.py ...; it saves <out-dir>/hf), or pass --model DIR, "
                     f"a Hugging Face folder (python scripts/get_smollm2.py builds cache/SmolLM2-135M-Instruct)")
    if args.rope not in (None, "default") and args.factor is None:
        parser.error(f"--rope {args.rope} needs --factor (e.g. 2 for 8k -> 16k)")
    rope = None if args.rope is None else {"rope_type": args.rope, "factor": args.factor}
    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # a corrupt shard or tokenizer file: one line naming it, not a traceback
        model = load_model(path, dtype=DTYPES[args.dtype], device=args.device, rope=rope).eval()
        tok = load_tokenizer(path)
    except (OSError, ValueError) as e:
        parser.error(f"--model {path}: {e}")
    model = compile_decoding(model) if args.compile else model  # once for every prompt length (inference.py)
    return model, tok


class Progress:
    """'12288/32768 tokens, 41 tok/s, 4.2 min left' lines for a pass through the KV cache, piece by piece. Token n
    costs a + b n (its projections and MLP, then attention over the n before it), so a piece from n1 to n2 costs
    a (n2 - n1) + b (n2^2 - n1^2) / 2; a and b are solved from the last two pieces and extrapolated to the end."""

    def __init__(self, todo, start=0):
        self.todo, self.t0, self.marks = todo, time.perf_counter(), [(start, 0.0)]

    def line(self, done):
        now = time.perf_counter() - self.t0
        self.marks.append((done, now))
        rate = (done - self.marks[0][0]) / now
        left = (self.todo - done) / rate  # one piece so far: linear
        if len(self.marks) >= 3:
            (n0, t0), (n1, t1), (n2, t2) = self.marks[-3:]
            rows = [(n1 - n0, (n1 * n1 - n0 * n0) / 2, t1 - t0), (n2 - n1, (n2 * n2 - n1 * n1) / 2, t2 - t1)]
            (p, q, r), (u, v, w) = rows
            det = p * v - q * u
            a, b = ((r * v - q * w) / det, (p * w - r * u) / det) if det else (r / p, 0.0)
            if a < 0 or b < 0:  # noise: keep the sign-safe part
                a, b = max(a, 0.0), max(b, 0.0)
            left = a * (self.todo - done) + b * (self.todo ** 2 - done ** 2) / 2 or left
        return f"{done}/{self.todo} tokens, {rate:.0f} tok/s, {left / 60:.1f} min left"


def resolve_device_args(parser, args):
    """--device / --dtype / --compile 'auto' -> what this machine gives (train.py's rule, device.py), in place,
    so that the JSON's settings and --reuse see what ran."""
    try:
        args.device = pick_device(args.device)
        args.dtype = pick_dtype(args.dtype, args.device)
        args.compile = pick_compile(args.compile, args.device)
    except ValueError as e:
        parser.error(str(e))


def add_common_args(parser, lengths):
    add = parser.add_argument
    add("--model", default="out/pose/hf", help="HF folder, or train.py's --out-dir (default: %(default)s, train.py's output)")
    add("--len", nargs="+", default=lengths, help="lengths in tokens: 4096 16k 2k:16k:2k (default: %(default)s)")
    add("--rope", choices=ROPES, help="override the checkpoint's RoPE scaling, training-free (default: the checkpoint's own)")
    add("--factor", type=float, help="scaling factor for --rope (default: none)")
    add("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
        help="weights and activations; auto: bf16 on CUDA (fp16 where unsupported), fp32 on CPU (default: %(default)s)")
    add("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if available, else cpu (default: %(default)s)")
    add("--compile", action=argparse.BooleanOptionalAction, default=None,
        help="torch.compile each block (default: on for CUDA, off on CPU)")
    add("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default (default: %(default)s)")
    add("--out", help="write a JSON file here (default: none)")


def reused_runs(parser, args, same, more=lambda before: []):
    """The JSON of each --reuse file, or a parser error if it cannot be read or its settings differ from this
    run's: each key in `same` compared with args, plus what more(its settings) lists as differing."""
    runs = []
    for f in args.reuse:
        try:
            old = json.loads(Path(f).read_text())
        except (OSError, ValueError) as e:
            parser.error(f"--reuse {f}: {e}")
        before = old.get("settings", {})
        differ = [f"{k} {before.get(k)!r}" for k in same if before.get(k) != getattr(args, k)] + more(before)
        if differ:
            parser.error(f"--reuse {f}: its {', '.join(differ)} differ from this run's")
        runs.append(old)
    return runs


def write_json(args, settings, results, quiet=False, **extra):
    """args.out <- {"settings", "results", **extra}; written to a temporary file and renamed (never half a file)."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"} | settings
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"settings": settings, "results": results, **extra}, indent=1))
    os.replace(tmp, out)
    if not quiet:
        print(f"wrote {out}")


def pyplot():
    """matplotlib.pyplot if installed (the optional extra: pip install -e '.[plot]'), else None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("matplotlib not installed: no PNG")


def save_png(fig, out):
    fig.tight_layout()
    fig.savefig(Path(out).with_suffix(".png"), dpi=120)
    print(f"wrote {Path(out).with_suffix('.png')}")


def length_table(title, runs, names, cell):
    """Print a markdown table of results by length: one row per runs[key] = {length: result}, named names[key],
    cell(result) in each column, '-' where a row lacks that length (the campaigns' report.py)."""
    lengths = sorted({L for rs in runs.values() for L in rs})
    print(f"\n{title}\n\n| row | " + " | ".join(f"{L // 1024}k" for L in lengths) + " |")
    print("|---|" + "---:|" * len(lengths))
    for key, rs in runs.items():
        print(f"| {names[key]} | " + " | ".join(cell(rs[L]) if L in rs else "-" for L in lengths) + " |")
