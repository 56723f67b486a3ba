"""load_model / save_model: round trips through stock transformers, and every bad input's message."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from load_hf_weights import load_config, load_model, save_model
from model import Llama, LlamaConfig
from test_model import BASE, POSE_POS, assert_logits_close, hf_logits, make_hf

transformers = pytest.importorskip("transformers")

OUR_SCHEMES = {  # our rope_scaling (as a --rope override would give it) -> how transformers must load it
    "default": ({"rope_type": "default"}, "default"),
    "linear": ({"rope_type": "linear", "factor": 4.0}, "linear"),
    "ntk": ({"rope_type": "ntk", "factor": 4.0}, "default"),
    "dynamic": ({"rope_type": "dynamic", "factor": 4.0}, "dynamic"),
    "yarn": ({"rope_type": "yarn", "factor": 4.0}, "longrope"),
    "yarn_original": ({"rope_type": "yarn_original", "factor": 4.0}, "yarn"),
    "llama3": ({"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}, "llama3"),
    "longrope": ({"rope_type": "longrope", "factor": 4.0, "short_factor": [1.0 + 0.1 * i for i in range(8)],
                  "long_factor": [1.0 + 0.5 * i for i in range(8)]}, "longrope"),  # short below 64 positions, long above
}


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(**{**BASE, "num_key_value_heads": 2, **overrides}))
    model.init_weights()
    return model.eval()


@pytest.mark.parametrize("scheme", list(OUR_SCHEMES))
def test_save_model_loads_in_transformers_with_same_logits(tmp_path, scheme):
    rope, hf_type = OUR_SCHEMES[scheme]
    make_hf(tmp_path / "src", num_key_value_heads=2, max_position_embeddings=64)
    ours = load_model(tmp_path / "src", rope=rope).eval()
    if scheme != "default":
        assert ours.config.rope_scaling["original_max_position_embeddings"] == 64
        assert ours.config.max_position_embeddings == (64 if scheme == "dynamic" else 256)
    save_model(ours, tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert hf.config.rope_parameters["rope_type"] == hf_type
    ids = torch.randint(0, 97, (2, 60))
    pos = torch.cat([torch.arange(30), torch.arange(200, 230)])  # beyond the 64-token original window
    with torch.no_grad():
        assert_logits_close(ours(ids, pos), hf_logits(hf, ids, pos))
        assert_logits_close(ours(ids), hf_logits(hf, ids))
        again = load_model(tmp_path / "out").eval()  # and back: the same scheme, not its HF stand-in
        assert again.config.rope_scaling == ours.config.rope_scaling
        assert again.config.rope_theta == ours.config.rope_theta
        assert_logits_close(again(ids, pos), ours(ids, pos), atol=0)


def test_round_trip_tied_sharded_bf16_and_tokenizer_copied(tmp_path):
    model = tiny_model(tie_word_embeddings=True)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    save_model(model, tmp_path / "out", max_shard_bytes=30_000, tokenizer_dir=tmp_path / "tok")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "model.safetensors.index.json" in files and "tokenizer.json" in files
    assert len([f for f in files if f.startswith("model-")]) > 2
    assert not any(f.startswith(".") for f in (p.name for p in tmp_path.iterdir()))  # no temp folder left
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" not in index["weight_map"]  # tied: one matrix on disk
    loaded = load_model(tmp_path / "out").eval()
    ids = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        assert_logits_close(loaded(ids), model(ids), atol=0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert_logits_close(model(ids).detach(), hf_logits(hf, ids))
    save_model(loaded, tmp_path / "out", dtype=torch.bfloat16)  # overwrite in place, in bf16, tokenizer kept
    assert (tmp_path / "out" / "tokenizer.json").exists()
    assert load_file(tmp_path / "out" / "model.safetensors")["model.norm.weight"].dtype == torch.bfloat16
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["torch_dtype"] == saved["dtype"] == "bfloat16"
    assert transformers.AutoConfig.from_pretrained(tmp_path / "out").dtype == torch.bfloat16


def test_legacy_inv_freq_and_rope_scaling_keys(tmp_path):
    model = tiny_model()
    save_model(model, tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(sd, tmp_path / "model.safetensors")
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["pose_nano_rope_scaling"]
    cfg["rope_scaling"] = {"type": "linear", "factor": 2.0}  # transformers <= 4.x spelling
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = load_model(tmp_path)
    assert loaded.config.rope_scaling["rope_type"] == "linear"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        assert_logits_close(loaded(ids, POSE_POS[:20]), hf_logits(hf, ids, POSE_POS[:20]))


def test_no_second_copy_when_dtypes_match(tmp_path):
    save_model(tiny_model(), tmp_path)
    model = load_model(tmp_path)
    assert not any(p.is_meta for p in model.parameters())
    ptrs = [p.data_ptr() for p in model.parameters()]
    assert len(set(ptrs)) == len(ptrs)


# ---- bad input: one clear line naming the file or key -----------------------------------------

@pytest.fixture
def saved(tmp_path):
    save_model(tiny_model(), tmp_path / "ck")
    return tmp_path / "ck"


def test_missing_folder_config_weights(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="nope: checkpoint folder not found"):
        load_model(tmp_path / "nope")
    (saved / "config.json").rename(saved / "config.bak")
    with pytest.raises(FileNotFoundError, match=r"config.json: missing"):
        load_model(saved)
    (saved / "config.bak").rename(saved / "config.json")
    (saved / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors or model.safetensors.index.json"):
        load_model(saved)


def test_bad_config_json(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_model(saved)


def test_missing_and_unexpected_keys(saved):
    sd = load_file(saved / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    sd["model.layers.7.mlp.up_proj.weight"] = torch.zeros(1)
    save_file(sd, saved / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['layers.1.mlp.up_proj.weight'\], unexpected \['layers.7.mlp.up_proj.weight'\]"):
        load_model(saved)


def test_shape_mismatch(saved):
    sd = load_file(saved / "model.safetensors")
    sd["model.norm.weight"] = torch.ones(65)
    save_file(sd, saved / "model.safetensors")
    with pytest.raises(ValueError, match=r"tensor model.norm.weight has shape \(65,\), expected \(64,\)"):
        load_model(saved)


def test_truncated_and_corrupt_files(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file, truncated or corrupt"):
        load_model(saved)
    (saved / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        load_model(saved)


def test_sharded_index_names_missing_shard(tmp_path):
    save_model(tiny_model(), tmp_path / "ck", max_shard_bytes=30_000)
    next((tmp_path / "ck").glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-.*: listed in model.safetensors.index.json but missing"):
        load_model(tmp_path / "ck")


@pytest.mark.parametrize("index", ["{not json", '{"metadata": {}}'])
def test_corrupt_shard_index(tmp_path, index):
    save_model(tiny_model(), tmp_path / "ck", max_shard_bytes=30_000)
    (tmp_path / "ck/model.safetensors.index.json").write_text(index)
    with pytest.raises(ValueError, match=r"model.safetensors.index.json: expected JSON with a 'weight_map' \("):
        load_model(tmp_path / "ck")


def test_pytorch_model_bin_only(saved):
    (saved / "model.safetensors").rename(saved / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors or model.safetensors.index.json "
                                                r"\(pytorch_model.bin is not supported: convert it to safetensors\)"):
        load_model(saved)


@pytest.mark.parametrize("existing", [False, True])
def test_failed_save_leaves_no_half_written_folder(tmp_path, monkeypatch, existing):
    """A save that fails at its second shard (disk full, Ctrl-C): no temporary folder left, and the
    folder is absent or still the old complete one."""
    import load_hf_weights
    if existing:
        save_model(tiny_model(seed=1), tmp_path / "ck")
    before = sorted((tmp_path / "ck").iterdir()) if existing else None
    real, written = load_hf_weights.save_file, []

    def fail_second(tensors, filename, metadata=None):
        if written:
            raise OSError(28, "No space left on device")
        written.append(filename)
        real(tensors, filename, metadata=metadata)
    monkeypatch.setattr(load_hf_weights, "save_file", fail_second)
    with pytest.raises(OSError, match="No space left on device"):
        save_model(tiny_model(), tmp_path / "ck", max_shard_bytes=30_000)
    assert written and [p.name for p in tmp_path.iterdir()] == (["ck"] if existing else [])
    if existing:
        assert sorted((tmp_path / "ck").iterdir()) == before
        ids = torch.arange(10)[None]
        with torch.no_grad():
            assert_logits_close(load_model(tmp_path / "ck")(ids), tiny_model(seed=1)(ids), atol=0)  # the old model


def test_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    """The new folder is complete but moving it into place fails: the old folder is back at its path, nothing else."""
    import load_hf_weights
    save_model(tiny_model(seed=1), tmp_path / "ck")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}
    real = os.replace

    def fail_into_place(src, dst):
        if Path(dst) == tmp_path / "ck" and Path(src).name.startswith(".ck."):  # the new folder, not the old one back
            raise OSError(5, "Input/output error")
        real(src, dst)
    monkeypatch.setattr(load_hf_weights.os, "replace", fail_into_place)
    with pytest.raises(OSError, match="Input/output error"):
        save_model(tiny_model(), tmp_path / "ck")
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()} == before


def test_unknown_rope_type(saved):
    with pytest.raises(ValueError, match="unknown rope_type 'magic'; known: default, linear, ntk, dynamic, yarn"):
        load_model(saved, rope={"rope_type": "magic", "factor": 2})
    cfg = json.loads((saved / "config.json").read_text())
    cfg["pose_nano_rope_scaling"] = {"rope_type": "warp", "factor": 2}
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json: unknown rope_type 'warp'"):
        load_config(saved)


def test_load_model_starts_fast_without_torch_dynamo(tmp_path):
    """Building the model on the meta device skips nn.Embedding's N(0, 1) draw, whose meta kernel imports
    torch._dynamo (~4 s of every evaluation and training process's start); the loaded weights are the file's."""
    save_model(tiny_model(), tmp_path)
    code = ("import sys, torch; from load_hf_weights import load_model; m = load_model(sys.argv[1]); "
            "print('torch._dynamo' in sys.modules, float(m.embed_tokens.weight.double().sum()))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1]).stdout.split()
    assert out[0] == "False"
    assert float(out[1]) == pytest.approx(float(tiny_model().embed_tokens.weight.detach().double().sum()), abs=1e-6)
