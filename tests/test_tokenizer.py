"""tokenizer.py against independent oracles, one per format.

SentencePiece: the `sentencepiece` library on Mistral's tokenizer.model. Llama-3 tiktoken: Meta's
published ids and an HF `tokenizers` BPE built by transformers' TikTokenConverter. Byte-level
tokenizer.json: `tokenizers.Tokenizer.from_file` (test-only; tokenizer.py never imports it).
"""

import json
import shutil

import pytest

from assets import pypi_file, text
from tokenizer import LLAMA3_PATTERN, LLAMA3_SPECIAL, load_tokenizer

STRINGS = [
    "The",
    "Hello, world! The quick brown fox.",
    "12345 and 3.14159, 2024-01-31, x1y22z333",
    "  leading,   runs   of spaces  and a trailing one ",
    "line one\nline two\n\n\tindented\r\nwindows line\n",
    "café naïve façade — “quotes” ½ ² ٣٤ Ⅻ",
    "日本語のテキスト 🙂👍 한국어",
    "it's IT'S we'll I'M don't",
    "x" * 40 + " " * 9 + "y",
    "",
]


@pytest.fixture(scope="module")
def mistral_model():
    return pypi_file("mistral-common==1.13.1", "mistral_common/data/tokenizer.model.v1")


@pytest.fixture(scope="module")
def llama3_model():
    return pypi_file("llama-models==0.3.0", "llama_models/llama3/tokenizer.model")


def assert_matches(ours, oracle_encode, strings):
    for s in strings:
        assert ours.encode(s, bos=False) == oracle_encode(s), repr(s)
        assert ours.decode(ours.encode(s, bos=False)) == s, repr(s)


# --- SentencePiece (LLaMA-1/2, Mistral) ---

def test_sentencepiece_vs_library(mistral_model):
    import sentencepiece as spm

    tok = load_tokenizer(mistral_model)
    sp = spm.SentencePieceProcessor(model_file=str(mistral_model))
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 32000)
    assert tok.encode("The", bos=False) == [415]  # REFERENCE.md section 7
    assert_matches(tok, sp.encode, STRINGS + [text("alice29")[:20000], "<s> </s> are plain text"])


def test_sentencepiece_bos(mistral_model):
    tok = load_tokenizer(mistral_model)
    assert tok.encode("The") == [1, 415]
    assert tok.decode([1, 415, 2]) == "The"  # control tokens decode to nothing, as in sentencepiece


# --- tiktoken file (Llama-3) ---

def test_llama3_meta_ids(llama3_model):
    tok = load_tokenizer(llama3_model)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (128000, 128001, 128256)
    assert tok.encode("The") == [128000, 791]  # REFERENCE.md section 7
    # llama_models/llama3/tests/api/test_tokenizer.py
    assert tok.encode("This is a test sentence.") == [128000, 2028, 374, 264, 1296, 11914, 13]
    assert tok.decode([128000, 2028, 128001]) == "<|begin_of_text|>This<|end_of_text|>"
    assert LLAMA3_SPECIAL["<|eot_id|>"] == 128009 and max(LLAMA3_SPECIAL.values()) == 128255


def test_llama3_vs_tokenizers(llama3_model, tmp_path):
    from transformers.convert_slow_tokenizer import TikTokenConverter

    oracle = TikTokenConverter(vocab_file=str(llama3_model), pattern=LLAMA3_PATTERN,
                               extra_special_tokens=list(LLAMA3_SPECIAL)).converted()
    tok = load_tokenizer(llama3_model)
    strings = STRINGS + [text("alice29")[:20000]]
    assert_matches(tok, lambda s: oracle.encode(s, add_special_tokens=False).ids, strings)
    # the same vocabulary as a Llama-3 style tokenizer.json (Split regex + ByteLevel) loads too
    oracle.save(str(tmp_path / "tokenizer.json"))
    tok_json = load_tokenizer(tmp_path)
    assert (tok_json.bos_id, tok_json.eos_id, tok_json.vocab_size) == (128000, 128001, 128256)
    assert_matches(tok_json, lambda s: tok.encode(s, bos=False), strings)


def test_special_tokens_in_text_stay_plain(llama3_model):
    tok = load_tokenizer(llama3_model)
    ids = tok.encode("<|begin_of_text|>", bos=False)
    assert 128000 not in ids and tok.decode(ids) == "<|begin_of_text|>"


# --- byte-level BPE tokenizer.json (GPT-2, SmolLM) ---

def train_byte_level(tmp_path, digits: bool):
    """A small byte-level BPE trained by `tokenizers`, saved as tokenizer.json: no download needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) \
        if digits else byte_level
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator([text("alice29")[:60000]] + STRINGS, trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    return hf


@pytest.mark.parametrize("digits", [False, True], ids=["gpt2", "digits"])
def test_byte_level_json_vs_tokenizers(tmp_path, digits):
    hf = train_byte_level(tmp_path, digits)
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.bos_id == tok.eos_id == 0  # <|endoftext|>, GPT-2 style, when no config says otherwise
    assert tok.vocab_size == hf.get_vocab_size()
    strings = STRINGS + ["a   1", "x 12  345\t6\n7", text("alice29")[60000:80000]]
    assert_matches(tok, lambda s: hf.encode(s, add_special_tokens=False).ids, strings)
    if digits:
        assert len(tok.encode("12345", bos=False)) == 5


def test_smollm2_vs_tokenizers(smollm2_dir):
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    tok = load_tokenizer(smollm2_dir)
    # config.json (from the GGUF): bos <|im_start|> = 1, eos <|im_end|> = 2
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 49152)
    assert [tok.decode([i]) for i in (0, 1, 2)] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tok.encode("12345", bos=False) == [tok.encode(d, bos=False)[0] for d in "12345"]  # digit by digit
    strings = STRINGS + [text("alice29"), text("botchan")[:50000]]
    assert_matches(tok, lambda s: hf.encode(s, add_special_tokens=False).ids, strings)
    ids = tok.encode("<|im_start|>user")
    assert ids[0] == 1 and 1 not in ids[1:] and tok.decode(ids[1:]) == "<|im_start|>user"


# --- bos/eos from the checkpoint's config files ---

def test_config_overrides_bos_eos(mistral_model, tmp_path):
    shutil.copy(mistral_model, tmp_path / "tokenizer.model")
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 2, "eos_token_id": [1, 2]}))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id) == (2, 1)  # a list of stop ids: the first one
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "</s>"}}))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id) == (2, 2)


# --- errors name the path ---

def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_tokenizer(tmp_path)  # a folder without tokenizer files
    (tmp_path / "tokenizer.model").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="neither a SentencePiece model nor a tiktoken"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")
    with pytest.raises(ValueError, match="2 ranks"):
        load_tokenizer(tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer.model").unlink()
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram"}, "decoder": None}))
    with pytest.raises(ValueError, match="not a byte-level BPE tokenizer.json"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("name, content, says", [
    ("tokenizer.json", '{"model": {"type": "BPE", "vocab": {', "not valid JSON ("),  # a truncated download
    ("tokenizer.json", "[1, 2]", "expected a JSON object, got list"),
    ("config.json", "{bos_token_id: 1}", "not valid JSON ("),
    ("tokenizer_config.json", "", "not valid JSON ("),
])
def test_invalid_json_names_the_file(tmp_path, name, content, says):
    train_byte_level(tmp_path, digits=False)
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError) as e:
        load_tokenizer(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / name}: {says}") and "\n" not in str(e.value), str(e.value)


def test_byte_level_json_ids_out_of_merge_order(tmp_path):
    train_byte_level(tmp_path, digits=False)
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    first, last = ["".join(m if isinstance(m, list) else m.split(" ")) for m in (merges[0], merges[-1])]
    vocab[first], vocab[last] = vocab[last], vocab[first]  # still a valid vocabulary, ranks now wrong
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="merges order"):
        load_tokenizer(tmp_path)
