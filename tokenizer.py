"""Load a checkpoint's tokenizer with SentencePiece or tiktoken underneath, no `tokenizers` needed.

    from tokenizer import load_tokenizer
    tok = load_tokenizer("cache/SmolLM2-135M-Instruct")  # a checkpoint folder or a tokenizer file
    ids = tok.encode("Hello world")                      # [tok.bos_id, ...]; bos=False to leave it out
    text = tok.decode(ids)

Three formats (REFERENCE.md section 6):
- `tokenizer.model` that is a SentencePiece protobuf (LLaMA-1/2, Mistral),
- `tokenizer.model` / `*.tiktoken` that is tiktoken text: base64 token, space, rank (Llama-3),
- `tokenizer.json` with byte-level BPE (GPT-2, SmolLM, Llama-3), whose ranks we hand to tiktoken.
Text is always plain text: "<|im_start|>" in the input is encoded as characters, never as a control
token, so a document cannot inject special tokens.
"""

import base64
import json
import re
from pathlib import Path

# GPT-2's byte-level pre-tokenizer regex (HF ByteLevel with use_regex=true)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# HF Digits(individual_digits=true) then ByteLevel, as one regex: each digit is its own piece, and
# the GPT-2 regex runs on the text between digits, so "(?!\S)" must also stop before a digit.
GPT2_DIGITS_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
# Llama-3 (and cl100k): digits in groups of up to three, case-insensitive contractions
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
                  r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# The tiktoken file holds only the 128,000 ranks; Llama-3's 256 special tokens follow them.
LLAMA3_NAMED = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
LLAMA3_SPECIAL = {name: 128000 + i for i, name in enumerate(
    LLAMA3_NAMED + [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + 256 - len(LLAMA3_NAMED))])}


class Tokenizer:
    def __init__(self, encode, decode, vocab_size, special, path):
        self._encode, self._decode = encode, decode
        self.vocab_size, self.path = vocab_size, path
        self.special = special  # control token -> id; only ever produced by encode(bos=True) or by hand
        self.bos_id = self.eos_id = None  # set by load_tokenizer

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids = self._encode(text)
        if bos:
            if self.bos_id is None:
                raise ValueError(f"{self.path}: no BOS token known; use encode(text, bos=False)")
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids) -> str:
        return self._decode([int(i) for i in ids])

    def __repr__(self):
        return f"Tokenizer({self.path}, vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id})"


def load_tokenizer(path) -> Tokenizer:
    path = Path(path)
    if path.is_dir():  # tokenizer.model first: Llama-2 folders hold both, and .model is the original
        found = [path / n for n in ("tokenizer.model", "tokenizer.json") if (path / n).is_file()]
        found = found or sorted(path.glob("*.tiktoken"))
        if not found:
            raise FileNotFoundError(f"{path}: no tokenizer.model, tokenizer.json or *.tiktoken in this folder")
        file, folder = found[0], path
    elif path.is_file():
        file, folder = path, path.parent
    else:
        raise FileNotFoundError(f"{path}: no such tokenizer file or folder")

    if file.suffix == ".json":
        tok = _from_tokenizer_json(file)
    else:
        data = file.read_bytes()
        if re.match(rb"[A-Za-z0-9+/]+=* \d+\r?\n", data):  # tiktoken: "IQ== 0\n..."
            tok = _from_tiktoken_file(file, data)
        elif data[:1] == b"\n":  # SentencePiece ModelProto: field 1 (pieces), length-delimited
            tok = _from_sentencepiece(file, data)
        else:
            raise ValueError(f"{file}: neither a SentencePiece model nor a tiktoken BPE file")
    # The model's config knows which ids it was trained with; the tokenizer file's guess comes last.
    bos, eos = _ids_from_configs(folder, tok.special)
    tok.bos_id = tok.bos_id if bos is None else bos
    tok.eos_id = tok.eos_id if eos is None else eos
    return tok


def _from_sentencepiece(file: Path, data: bytes) -> Tokenizer:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=data)
    # SentencePiece never parses control symbols (<s>, </s>) out of the text: plain text stays plain.
    n = sp.get_piece_size()
    special = {sp.id_to_piece(i): i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)}
    tok = Tokenizer(sp.encode, sp.decode, n, special, file)
    tok.bos_id, tok.eos_id = [i if i >= 0 else None for i in (sp.bos_id(), sp.eos_id())]  # -1: none
    return tok


def _from_tiktoken_file(file: Path, data: bytes) -> Tokenizer:
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in data.splitlines() if line)}
    if len(ranks) != 128000:  # the file holds neither the split regex nor the special tokens
        raise ValueError(f"{file}: tiktoken file with {len(ranks)} ranks; only Llama-3's 128,000 is known")
    tok = _tiktoken(file, LLAMA3_PATTERN, ranks, LLAMA3_SPECIAL)
    tok.bos_id, tok.eos_id = LLAMA3_SPECIAL["<|begin_of_text|>"], LLAMA3_SPECIAL["<|end_of_text|>"]
    return tok


def _read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None


def _from_tokenizer_json(file: Path) -> Tokenizer:
    spec = _read_json(file)
    if not isinstance(spec, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(spec).__name__}")
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel" or spec.get("normalizer"):
        raise ValueError(f"{file}: not a byte-level BPE tokenizer.json (needs BPE model, ByteLevel decoder, "
                         f"no normalizer); for SentencePiece checkpoints load tokenizer.model")
    pattern = _split_pattern(spec.get("pre_tokenizer"), file)
    special = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    to_byte = {c: b for b, c in _byte_alphabet().items()}
    try:  # "Ġthe" -> b" the": undo GPT-2's printable stand-ins for raw bytes
        ranks = {bytes(to_byte[c] for c in t): i for t, i in model["vocab"].items() if t not in special}
    except KeyError as e:
        raise ValueError(f"{file}: vocab has a character {e} outside the byte-level alphabet") from None
    # tiktoken merges whichever adjacent pair forms the lowest-id token; that equals applying the
    # merges list in order only if token ids follow that order, as byte-level BPE trainers number them.
    merged = [model["vocab"].get("".join(m if isinstance(m, list) else m.split(" "))) for m in model.get("merges", [])]
    if any(a is None or b is None or a > b for a, b in zip(merged, merged[1:])):
        raise ValueError(f"{file}: token ids do not follow the merges order; tiktoken would tokenize differently")
    tok = _tiktoken(file, pattern, ranks, special)
    # without config files, guess from the usual names (GPT-2 and SmolLM use <|endoftext|> for both)
    tok.bos_id = next((special[s] for s in ("<|begin_of_text|>", "<s>", "<|endoftext|>") if s in special), None)
    tok.eos_id = next((special[s] for s in ("<|end_of_text|>", "</s>", "<|endoftext|>") if s in special), None)
    return tok


def _split_pattern(pre, file: Path) -> str:
    """The one tiktoken regex equivalent to the pre-tokenizers we know; anything else is an error."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [s["type"] for s in steps]
    if any(s.get("add_prefix_space") for s in steps):  # a space before every text: not supported
        kinds = ["add_prefix_space"]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return GPT2_PATTERN
    elif kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return GPT2_DIGITS_PATTERN
    elif (kinds == ["Split", "ByteLevel"] and "Regex" in steps[0]["pattern"] and not steps[0].get("invert")
          and steps[0].get("behavior") == "Isolated" and not steps[1].get("use_regex", True)):
        return steps[0]["pattern"]["Regex"]  # Llama-3 style: the regex itself, then bytes only
    raise ValueError(f"{file}: unsupported pre_tokenizer {json.dumps(pre)[:200]}")


def _tiktoken(file: Path, pattern: str, ranks: dict, special: dict) -> Tokenizer:
    import tiktoken

    enc = tiktoken.Encoding(name=file.name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)
    return Tokenizer(enc.encode_ordinary, enc.decode, enc.n_vocab, special, file)  # ordinary: no specials


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes stand for themselves,
    the other 68 (controls, space, ...) are shifted to chr(256), chr(257), ... in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {b: chr(b) for b in keep} | {b: chr(256 + i) for i, b in enumerate(shifted)}


def _ids_from_configs(folder: Path, special: dict):
    """bos/eos ids from config.json, else from the special-token names in tokenizer_config.json."""
    def read(name):
        f = folder / name
        return _read_json(f) if f.is_file() else {}

    config, tok_config = read("config.json"), read("tokenizer_config.json")
    out = []
    for key in ("bos", "eos"):
        value = config.get(f"{key}_token_id")
        if isinstance(value, list):  # Llama-3.1-Instruct lists several stop ids; the first is end-of-text
            value = value[0] if value else None
        if value is None:
            name = tok_config.get(f"{key}_token")
            name = name.get("content") if isinstance(name, dict) else name
            value = special.get(name)
        out.append(value)
    return out
