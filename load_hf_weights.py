"""
Hugging Face checkpoint folder <-> our Llama, straight from safetensors (no transformers at run time).

    model = load_model("path/to/hf_folder", dtype=torch.bfloat16, rope={"rope_type": "yarn", "factor": 2})
    save_model(model, "out/hf_folder")   # AutoModelForCausalLM.from_pretrained reads it (clex: only we do)

Loading builds the model on the meta device (no memory), memory-maps each safetensors file and
assigns the tensors as the model's parameters, so the weights are never held twice.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model import CLEX, Llama, LlamaConfig, check_clex
from rope import ROPE_TYPES, yarn_mscale, yarn_scale_per_dim

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


def load_config(path, rope=None):
    """LlamaConfig from `path`/config.json; `rope` (HF rope_scaling form) replaces its scaling."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: checkpoint folder not found")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: missing; a Hugging Face checkpoint folder needs config.json")
    try:
        hf = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: not valid JSON ({e})") from None
    config = LlamaConfig.from_hf(hf, source=str(cfg_file))
    return with_rope(config, rope) if rope is not None else config


def with_rope(config, rope):
    """Replace config's RoPE scaling by `rope` ({"rope_type": ..., "factor": s, ...}; "yarn" is the
    revised formula). Its original length is the checkpoint's; max_position_embeddings becomes
    original * s as in PoSE (dynamic keeps the original: transformers measures from it; clex
    takes s = max_factor, and load_model gives a checkpoint without CLEX's matrices fresh ones)."""
    rope = dict(rope)
    kind = rope.pop("type", None) or rope.get("rope_type") or "default"
    if kind not in ROPE_TYPES:
        raise ValueError(f"unknown rope_type {kind!r}; known: {', '.join(ROPE_TYPES)}")
    original = config.original_len
    if kind == "default":
        config.rope_scaling, config.max_position_embeddings = None, original
        return config
    rope["rope_type"] = kind
    rope.setdefault("original_max_position_embeddings", original)
    if kind == "clex":
        check_clex(rope)
        config.max_position_embeddings = rope["original_max_position_embeddings"] * rope["max_factor"]
    elif "factor" in rope and kind != "dynamic":
        config.max_position_embeddings = int(round(rope["original_max_position_embeddings"] * rope["factor"]))
    config.rope_scaling = rope
    return config


def _weight_files(path):
    """{file: [keys]} from model.safetensors or the sharded index's weight_map."""
    index, single = path / "model.safetensors.index.json", path / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{index}: expected JSON with a 'weight_map' ({e})") from None
        files = {}
        for key, name in weight_map.items():
            files.setdefault(path / name, []).append(key)
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{f}: listed in {index.name} but missing")
        return files
    if single.is_file():
        return {single: None}
    hint = " (pytorch_model.bin is not supported: convert it to safetensors)" if (path / "pytorch_model.bin").exists() else ""
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json{hint}")


def load_model(path, dtype=torch.float32, device="cpu", rope=None):
    """Our Llama with the weights of the HF checkpoint folder `path`, in `dtype` on `device`.
    rope={"rope_type": "clex", ...} on a checkpoint without CLEX's matrices (a plain base to
    fine-tune) creates them as the paper starts: W_up Kaiming-uniform, W_down = 0 (= NTK, alpha = 2t - 1)."""
    path = Path(path)
    config = load_config(path, rope)
    files = _weight_files(path)
    with torch.device("meta"):
        model = Llama(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = {}
    for file, keys in files.items():
        try:
            f = safe_open(str(file), framework="pt", device="cpu")  # memory-mapped
            keys = keys if keys is not None else list(f.keys())
            for key in keys:
                name = key.removeprefix("model.")
                if name.endswith(("rotary_emb.inv_freq", "clex_layer.inv_freq")):
                    continue  # RoPE buffers saved by transformers <= 4.31 and CLEX's code; we recompute RoPE
                if name == "lm_head.weight" and config.tie_word_embeddings:
                    continue  # tied: the embedding is the output projection
                t = f.get_tensor(key)
                if name in expected and t.shape != expected[name]:
                    raise ValueError(f"{file}: tensor {key} has shape {tuple(t.shape)}, expected {tuple(expected[name])}")
                state[name] = t.to(device=device, dtype=dtype)
        except SafetensorError as e:
            raise ValueError(f"{file}: not a readable safetensors file, truncated or corrupt ({e})") from None
    if (rope or {}).get("rope_type") == "clex" and not any(k.startswith("clex_layer.") for k in state):
        state.update({"clex_layer." + k: v.to(device, dtype) for k, v in CLEX(config).state_dict().items()})
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{path}: tensors do not match config.json: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    model.load_state_dict(state, strict=True, assign=True)
    model.source_dir = path  # save_model copies the tokenizer files from here
    return model


def to_hf_config(config, dtype, hf_compatible=False):
    """config.json content that stock transformers reads with the same RoPE. Schemes it lacks are
    written as equivalents: ntk is plain RoPE with base' = base * s^(d/(d-2)); revised YaRN is
    longrope with per-dimension factors (1 - mask_j) * s + mask_j and attention_factor = mscale.
    Our own scheme is kept under `pose_nano_rope_scaling`, which load_model prefers. clex has no
    equivalent: it is written as is, which transformers refuses; hf_compatible=True raises instead."""
    hf = dict(config.extra)
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
                 "attention_bias", "mlp_bias", "sliding_window", "bos_token_id", "eos_token_id", "model_type"):
        hf[name] = getattr(config, name)
    hf.pop("rope_parameters", None)
    hf.setdefault("architectures", ["MistralForCausalLM" if config.model_type == "mistral" else "LlamaForCausalLM"])
    hf.setdefault("hidden_act", "silu")
    hf["torch_dtype"] = hf["dtype"] = str(dtype).removeprefix("torch.")  # transformers 4.x / 5.x names
    rs, theta, d = dict(config.rope_scaling or {}), config.rope_theta, config.head_dim
    kind, s = rs.get("rope_type", "default"), rs.get("factor", 1.0)
    if kind == "clex" and hf_compatible:
        raise ValueError("clex: stock transformers cannot load a CLEX model (its RoPE is learned); "
                         "save without hf_compatible and load it with load_model")
    L0 = config.original_len
    if kind == "ntk":
        rope, theta = None, theta * s ** (d / (d - 2))
    elif kind == "yarn":
        factors = yarn_scale_per_dim(d, config.rope_theta, s, L0, rs.get("beta_fast") or 32.0,
                                     rs.get("beta_slow") or 1.0, rs.get("truncate", True)).tolist()
        mscale = rs.get("attention_factor") or yarn_mscale(s)
        rope = {"rope_type": "longrope", "factor": s, "short_factor": factors, "long_factor": factors,
                "attention_factor": mscale, "original_max_position_embeddings": L0}
    elif kind == "yarn_original":
        rope = dict(rs, rope_type="yarn")
    elif kind == "dynamic":
        rope = {"rope_type": "dynamic", "factor": s}
        hf["max_position_embeddings"] = L0  # transformers' dynamic measures from max_position_embeddings
    elif kind == "default":
        rope = None
    else:
        rope = rs
    hf["rope_theta"], hf["rope_scaling"] = theta, rope
    hf["pose_nano_rope_scaling"] = dict(rs or {"rope_type": "default"}, rope_theta=config.rope_theta)
    return hf


def save_model(model, path, dtype=None, max_shard_bytes=5 * 1024**3, tokenizer_dir=None, hf_compatible=False):
    """Write an HF folder: config.json, safetensors (sharded with an index above max_shard_bytes),
    tokenizer files from `tokenizer_dir` (default: the folder the model was loaded from).
    Written into a temporary folder and renamed, so `path` is either the old or the new folder.
    hf_compatible=True: raise rather than write what stock transformers cannot load (clex)."""
    path = Path(path)
    dtype = dtype or next(model.parameters()).dtype
    hf_config = to_hf_config(model.config, dtype, hf_compatible)  # raises before anything is written
    tensors = {("lm_head.weight" if k == "lm_head.weight" else "model." + k): v.detach().to("cpu", dtype).contiguous()
               for k, v in model.state_dict().items()}
    shards, size = [[]], 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o755)
    try:
        names = ["model.safetensors"] if len(shards) == 1 else \
            [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for name, keys in zip(names, shards):
            save_file({k: tensors[k] for k in keys}, str(tmp / name), metadata={"format": "pt"})
        if len(shards) > 1:
            weight_map = {k: name for name, keys in zip(names, shards) for k in keys}
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
        source = tokenizer_dir or getattr(model, "source_dir", None)
        for name in TOKENIZER_FILES if source else ():
            if (Path(source) / name).is_file():
                shutil.copy2(Path(source) / name, tmp / name)
        if path.exists():  # swap: the old folder is removed only once the new one is in its place
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old / path.name, path)  # the old folder back where it was
                old.rmdir()
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
