"""
Perplexity on long documents (the PoSE / YaRN protocol, REFERENCE.md section 4).

    python eval_ppl.py --data cache/texts/shakespeare          # the model train.py just saved, 2k ... 32k
    python eval_ppl.py --model cache/SmolLM2-135M-Instruct --data cache/texts/shakespeare --len 2k 4k 8k 16k \
        --min-tokens 16384 --max-docs 4 --rope yarn --factor 2 --out out/ppl_yarn.json
    python eval_ppl.py --data book.txt more/ --mode sliding --len 8k --stride 2k
    python eval_ppl.py --compare out/ppl_*.json --out out/ppl.png   # PPL against length, runs side by side

--data: text files, folders (their *.txt, *.jsonl) and .jsonl files ("text" per line); BOS starts each
document. A document shorter than L is left out at L. truncate: the first L tokens of each document.
sliding: windows of L tokens every --stride tokens, each scoring only what the previous one did not
(the rest is labelled -100: context only). ppl = exp(sum NLL / scored tokens) over all windows:
token-weighted, PoSE's definition; ppl_window_mean = exp(mean of per-window mean NLL), YaRN's.
Memory grows linearly with L (the loss never holds [L, V] logits). In truncate mode, all lengths of a
document come from one pass through the KV cache (causal: the first 2k tokens of the 16k window are
the 2k window), except for dynamic NTK, whose RoPE depends on the window length.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from eval_common import add_common_args, load, parse_lengths, Progress, pyplot, resolve_device_args, save_png, write_json
from inference import PrefixCache, length_dependent


def read_documents(paths):
    """[(name, text)] from text files, folders and .jsonl files."""
    docs = []
    for p in map(Path, paths):
        for f in sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".jsonl")) if p.is_dir() else [p]:
            if f.suffix == ".jsonl":
                lines = f.read_text(encoding="utf-8").splitlines()
                docs += [(f"{f.name}:{i + 1}", json.loads(line)["text"]) for i, line in enumerate(lines) if line.strip()]
            else:  # FileNotFoundError names the file
                docs.append((f.name, f.read_text(encoding="utf-8", errors="replace")))
    return docs


@torch.no_grad()
def window_nll(model, ids, labels):
    """(summed NLL, scored tokens) of one window ids [1, T]; labels -100 are context only."""
    return model(ids, labels=labels, reduction="sum").item(), int((labels[:, 1:] != -100).sum())


@torch.no_grad()
def truncate_nll(model, ids, lengths, piece=2048, progress=None):
    """{L: (NLL, scored)} of the window ids[:L] for each L, in one pass: the document goes through the
    KV cache in pieces of <= `piece` tokens; each piece starts again at the previous one's last token
    (overwriting its cache entry) so that the prediction of the piece's first new token is scored too.
    progress(tokens done, tokens in all) after each piece."""
    p, out, nll, done = next(model.parameters()), {}, 0.0, 0
    cache = PrefixCache(model.config, 1, max(lengths), p.device, p.dtype)
    for end in sorted(set(lengths) | set(range(piece, max(lengths), piece))):
        cache.length = start = max(done - 1, 0)
        nll, done = nll + model(ids[:, start:end], labels=ids[:, start:end], kv_cache=cache, reduction="sum").item(), end
        if end in lengths:
            out[end] = (nll, end - 1)
        if progress:
            progress(done, max(lengths))
    return out


@torch.no_grad()
def sliding_nll(model, ids, L, stride):
    """[(NLL, scored)] of windows of L tokens every `stride` (< L) tokens: each window scores the tokens
    after the previous window's end, whose predecessor it holds, so every token after the first is scored once."""
    n, out, prev_end = ids.shape[1], [], 0
    for begin in range(0, n - 1, stride):
        end = min(begin + L, n)
        labels = ids[:, begin:end].clone()
        labels[:, : prev_end - begin] = -100  # scored by the previous window: context only
        out.append(window_nll(model, ids[:, begin:end], labels))
        if end == n:
            break
        prev_end = end
    return out


def ppl(windows):
    return math.exp(sum(w[0] for w in windows) / sum(w[1] for w in windows)) if windows else None


def segment_ppl(results):
    """{L: {"ppl": ...}} of the tokens between the previous length and L only, from truncate-mode results
    ({L: {"ppl", "tokens"}}, cumulative: each L's sums include the shorter windows'), where extension shows."""
    out, prev = {}, None
    for L in sorted(results):
        nll, n = math.log(results[L]["ppl"]) * results[L]["tokens"], results[L]["tokens"]
        if prev:
            nll, n = nll - math.log(results[prev]["ppl"]) * results[prev]["tokens"], n - results[prev]["tokens"]
        out[L], prev = {"ppl": math.exp(nll / n)}, L
    return out


def evaluate(model, docs, lengths, mode="truncate", stride=None, log=lambda s: print(s, flush=True)):
    """docs: [1, n] id tensors (BOS first). One result dict per length."""
    windows = {L: [] for L in lengths}  # (NLL, scored) per window
    for i, ids in enumerate(docs):
        t0, fits = time.perf_counter(), [L for L in lengths if L <= ids.shape[1]]
        if mode == "sliding":
            new = {L: sliding_nll(model, ids, L, stride or L // 2) for L in fits}
        elif not length_dependent(model) and fits:
            # a 32k pass takes minutes on a CPU: a line per piece (tokens, tokens/s, time left) once it is long
            meter = Progress(max(fits))
            progress = (lambda done, todo: log(f"  {meter.line(done)}")) if max(fits) > 8192 else None
            new = {L: [w] for L, w in truncate_nll(model, ids, fits, progress=progress).items()}
        else:
            new = {L: [window_nll(model, ids[:, :L], ids[:, :L])] for L in fits}
        for L, ws in new.items():
            windows[L] += ws
        log(f"document {i + 1}/{len(docs)}, {ids.shape[1]} tokens, ppl " +
            ", ".join(f"{L}: {ppl(ws):.3f}" for L, ws in new.items()) + f" ({time.perf_counter() - t0:.0f} s)")
    return [{"length": L, "ppl": ppl(ws), "tokens": sum(w[1] for w in ws), "windows": len(ws),
             "ppl_window_mean": math.exp(sum(w[0] / w[1] for w in ws) / len(ws)) if ws else None,
             "documents": sum(d.shape[1] >= L for d in docs)} for L, ws in windows.items()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, lengths=["2048", "4096", "8192", "16384", "32768"])
    add = parser.add_argument
    add("--data", nargs="+", help="text files, folders, .jsonl files (required unless only --compare)")
    add("--mode", choices=["truncate", "sliding"], default="truncate", help="(default: %(default)s)")
    add("--stride", type=int, help="sliding: tokens between window starts, < L (default: L // 2)")
    add("--min-tokens", type=int, default=0, help="leave out shorter documents (default: %(default)s)")
    add("--max-docs", type=int, default=0, help="use the first N documents with >= --min-tokens; 0 = all (default: %(default)s)")
    add("--compare", nargs="+", default=[], help="JSON of earlier runs, drawn in the PNG too; alone: only draw them (default: none)")
    args = parser.parse_args(argv)
    resolve_device_args(parser, args)
    if not args.data:
        if not (args.compare and args.out):
            parser.error("--data is required (or --compare RUN.json ... --out PLOT.png to only draw earlier runs)")
        return plot(args.compare, [], args.out)
    lengths = parse_lengths(args.len)
    if args.mode == "sliding" and args.stride is not None and not 0 < args.stride < min(lengths):
        parser.error(f"--stride must be in 1..{min(lengths) - 1} (below the shortest --len), so that every token is scored")
    try:
        texts = read_documents(args.data)
    except (OSError, ValueError, KeyError) as e:
        parser.error(f"cannot read --data: {e}")
    model, tok = load(parser, args)
    docs, names = [], []
    for name, text in texts:
        if len(ids := tok.encode(text, bos=tok.bos_id is not None)) >= max(args.min_tokens, 2):  # BOS alone: nothing to score
            docs, names = docs + [torch.tensor([ids], device=args.device)], names + [name]
        if len(docs) == args.max_docs:
            break
    if not docs:
        parser.error(f"no documents with >= {args.min_tokens} tokens in {' '.join(args.data)}")
    print(f"{len(docs)} documents, {sum(d.shape[1] for d in docs)} tokens: {', '.join(names)}")
    results = evaluate(model, docs, lengths, args.mode, args.stride)
    print(f"\n{args.mode} perplexity, {args.model}, rope {args.rope or 'of the checkpoint'} (factor {args.factor})")
    print(f"{'length':>7} | {'ppl':>8} | {'window mean':>11} | {'tokens':>8} | {'windows':>7} | documents")
    f = lambda x: f"{x:.3f}" if x else "-"
    for r in results:
        print(f"{r['length']:>7} | {f(r['ppl']):>8} | {f(r['ppl_window_mean']):>11} | {r['tokens']:>8} | {r['windows']:>7} | {r['documents']}")
    if args.out:
        write_json(args, {"lengths": lengths, "documents": names, "document_tokens": [d.shape[1] for d in docs]}, results)
        plot(args.compare, [(args.out, results)], args.out)
    return results


def plot(json_files, runs, out):
    """PPL against length, one line per run: this run and the --compare JSON files."""
    runs = [(f, json.loads(Path(f).read_text())["results"]) for f in json_files] + runs
    if plt := pyplot():
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, results in runs:
            if pts := [(r["length"], r["ppl"]) for r in results if r["ppl"]]:
                ax.plot(*zip(*pts), marker="o", label=Path(name).stem)
        ax.set(xlabel="window length (tokens)", ylabel="perplexity (token-weighted)", yscale="log")
        ax.legend()
        save_png(fig, out)


if __name__ == "__main__":
    main(sys.argv[1:])
