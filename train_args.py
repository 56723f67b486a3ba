"""train.py's command line: the presets and every flag with its default (the paper's main run), and the checks of
what flags say together. Imports nothing but argparse before the flags are parsed, so that a typo fails at once."""
import argparse
import re

PRESETS = {  # each sets defaults; flags given on the command line still win
    "llama7b-16k-linear": dict(init_from="cache/llama-7b", data="cache/data/pile", train_len=2048, target_len=16384, rope="linear"),
    "llama7b-16k-ntk": dict(init_from="cache/llama-7b", data="cache/data/pile", train_len=2048, target_len=16384, rope="ntk"),
    "llama7b-16k-yarn": dict(init_from="cache/llama-7b", data="cache/data/pile", train_len=2048, target_len=16384, rope="yarn"),
    "mistral7b-32k": dict(init_from="cache/mistral-7b", data="cache/data/pile-mistral", train_len=8192, target_len=32768, rope="linear"),
    "tiny": dict(config="tiny", init_from=None, data="cache/data/tiny", train_len=128, target_len=512, global_batch=16,
                 micro_batch=8, max_steps=200, lr=2e-3, warmup=20, ac=False, eval_every=50, eval_docs=4, ckpt_every=100),
}
TINY = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, tie_word_embeddings=True)

MIX_TASKS = ("text", "copy", "passkey")  # tasks.py's windows beside plain text


def parse_mix(spec):
    """'copy=0.1,passkey=0.45,text=0.45' -> {'copy': 0.1, ...}, weights normalised to sum 1."""
    mix = {}
    for part in spec.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in MIX_TASKS or not re.fullmatch(r"\s*[0-9.]+\s*", weight):
            raise ValueError(f"bad mix entry {part!r}: expected TASK=WEIGHT with TASK one of {', '.join(MIX_TASKS)}")
        mix[name.strip()] = float(weight)
    total = sum(mix.values())
    if total <= 0:
        raise ValueError(f"mix {spec!r}: the weights sum to 0")
    return {k: v / total for k, v in mix.items() if v > 0}


def parse_args(doc):
    """(parser, args) of train.py's command line; a --preset sets defaults that explicit flags still override."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--preset", choices=PRESETS, help="a paper run or the tiny CPU run (no preset: llama7b-16k-linear, the paper's main run)")
    add("--init-from", default="cache/llama-7b", help="Hugging Face checkpoint folder to fine-tune (default: %(default)s)")
    add("--config", help="train a fresh model instead (overrides --init-from): 'tiny' or a config.json path; vocab_size defaults to the data's")
    add("--data", default="cache/data/pile", help="token file prefix written by prepare_data.py (default: %(default)s)")
    add("--out-dir", default="out/pose", help="ckpt.pt, log.jsonl, final HF folder <out-dir>/hf (default: %(default)s; out/PRESET)")
    add("--method", choices=["pose", "cream", "full", "randpos", "clex", "plain"], default="pose",
        help="pose; cream: CREAM's head / Gaussian-placed middle / tail positions (--cream-sigma; Lt a multiple of Lc); "
        "baselines: full-length training at Lt, RandPos; clex: CLEX with max_factor Lt/Lc (--rope is ignored); plain: "
        "positions 0..Lc-1, no scaling (pretraining)")
    add("--cream-sigma", type=float, default=3.0, help="--method cream: the std of its middle's Gaussian (default: %(default)s, CREAM's)")
    add("--train-len", type=int, default=2048, help="Lc: tokens per training window (default: %(default)s)")
    add("--target-len", type=int, default=16384, help="Lt: context window to extend to (default: %(default)s)")
    add("--orig-len", type=int, help="L0, the window the checkpoint was pretrained with: the RoPE factor is Lt / L0 (default: the "
        "checkpoint's original_max_position_embeddings or max_position_embeddings; --train-len for a fresh model)")
    add("--num-chunks", type=int, default=2, help="PoSE chunks per window (default: %(default)s)")
    add("--rope", default="linear", choices=["none", "linear", "ntk", "yarn", "yarn_original", "dynamic"],
        help="RoPE scaling, factor Lt/L0 (see --orig-len; yarn = PoSE's revised YaRN; default: %(default)s)")
    add("--mix", default="text=1", help="window sources, TASK=WEIGHT,... of text, copy, passkey (see tasks.py; default: %(default)s)")
    add("--mix-from", help="STEP:MIX: switch to another --mix from that step on, e.g. 400:copy=0.1,passkey=0.45,text=0.45")
    add("--gap-warmup", type=int, default=0, help="passkey windows: the key-to-question gap grows from 20 tokens to the "
        "whole window over the first N steps (default: %(default)s)")
    add("--passkey-min-len", type=int, help="passkey windows: each prompt takes a random length from N tokens up to the "
        "window, padded after (default: every prompt fills the window, so full-length runs see only Lt-token prompts)")
    add("--global-batch", type=int, default=64, help="sequences per optimizer step, all ranks (default: %(default)s)")
    add("--micro-batch", type=int, default=1, help="sequences per forward pass per rank (default: %(default)s)")
    add("--max-steps", type=int, default=1000, help="optimizer steps (default: %(default)s)")
    add("--lr", type=float, default=2e-5, help="peak learning rate (default: %(default)s)")
    add("--min-lr", type=float, default=0.0, help="where the decay ends, at step --max-steps (the last step, max-steps - 1, "
        "is one decay step above it; default: %(default)s)")
    add("--warmup", type=int, default=10, help="linear warm-up steps (default: %(default)s)")
    add("--decay", choices=["linear", "cosine"], default="linear", help="decay after warm-up (default: %(default)s)")
    add("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: %(default)s)")
    add("--beta2", type=float, default=0.999, help="AdamW beta2 (0.95 for pretraining from scratch; default: %(default)s)")
    add("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this; 0 = off (default: %(default)s)")
    add("--ac", action=argparse.BooleanOptionalAction, default=True, help="activation checkpointing per block (default: on)")
    add("--shard", choices=["auto", "ddp", "zero1", "fsdp"], default="auto",
        help="ddp: replicate all; zero1: shard AdamW state; fsdp: shard everything; auto: the first that fits (default)")
    add("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
        help="autocast dtype; master weights stay fp32. auto: bf16 on CUDA if supported else fp16, fp32 on CPU")
    add("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if available, else cpu (default: %(default)s)")
    add("--compile", action=argparse.BooleanOptionalAction, default=None,
        help="torch.compile each block (after activation checkpointing, before FSDP; default: on for CUDA, off on CPU)")
    add("--device-memory", type=float, help="GB per device for the memory check (default: measured)")
    add("--eval-every", type=int, default=200, help="eval loss at Lt every N steps; 0 = never (default: %(default)s)")
    add("--eval-docs", type=int, default=8, help="the last N documents of >= Lt tokens, held out for the eval loss (default: %(default)s)")
    add("--ckpt-every", type=int, default=250, help="write <out-dir>/ckpt.pt every N steps and at the end; 0 = only at the "
        "end (default: %(default)s)")
    add("--stop-after", type=int, help="checkpoint and stop after this step (e.g. a job time limit); continue with --resume")
    add("--resume", action="store_true", help="continue from <out-dir>/ckpt.pt")
    add("--seed", type=int, default=1337, help="seeds the fresh model and the data order (default: %(default)s)")
    add("--dry-run", action="store_true", help="print the memory plan and exit")
    args = parser.parse_args()
    if args.preset:  # re-parse with the preset as defaults, so explicit flags still override it
        parser.set_defaults(out_dir=f"out/{args.preset}", **PRESETS[args.preset])
        args = parser.parse_args()
    if args.config:
        args.init_from = None
    try:  # {first step: {task: weight}}: --mix from step 0, --mix-from's from its step
        args.mixes = {0: parse_mix(args.mix)}
        if args.mix_from:
            switch, _, late = args.mix_from.partition(":")
            args.mixes[int(switch)] = parse_mix(late)
    except ValueError as e:
        parser.error(f"--mix / --mix-from {args.mix_from or ''}: {e}")
    window = args.target_len if args.method == "full" else args.train_len
    if args.passkey_min_len is not None and not (0 < args.passkey_min_len <= window
                                                 and any("passkey" in mix for mix in args.mixes.values())):
        parser.error(f"--passkey-min-len {args.passkey_min_len}: expected 1..{window} (the training window) and passkey "
                     "windows in --mix or --mix-from")
    if args.method == "cream" and args.target_len % args.train_len:
        parser.error(f"--method cream: --target-len {args.target_len} must be a multiple of --train-len {args.train_len}")
    if args.method == "cream" and args.train_len <= 8 * (args.target_len // args.train_len):
        parser.error(f"--method cream: --train-len {args.train_len} leaves no middle between its continuity head and tail "
                     f"of 4 x {args.target_len // args.train_len} tokens each")
    if args.method == "cream" and not args.cream_sigma > 0:
        parser.error(f"--cream-sigma must be > 0, got {args.cream_sigma}")
    return parser, args
