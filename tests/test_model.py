"""Our Llama against transformers' LlamaForCausalLM / MistralForCausalLM on the same random weights."""
import copy

import pytest
import torch

from load_hf_weights import load_model
from model import Block, KVCache, Llama, LlamaConfig

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128)
CONFIGS = {
    "mha": {},
    "gqa": dict(num_key_value_heads=2),
    "mqa_tied": dict(num_key_value_heads=1, tie_word_embeddings=True),
    "head_dim_differs": dict(head_dim=24, num_key_value_heads=2),
    "bias_eps": dict(attention_bias=True, mlp_bias=True, rms_norm_eps=1e-5, rope_theta=5e5),
    "linear": dict(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "dynamic": dict(rope_scaling={"rope_type": "dynamic", "factor": 4.0}),
    "yarn": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
    "yarn_attn_factor": dict(rope_scaling={"rope_type": "yarn", "factor": 8.0, "attention_factor": 1.5,
                                           "original_max_position_embeddings": 32, "beta_fast": 8}),
    "llama3": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
    "longrope": dict(rope_scaling={"rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
                                   "long_factor": [1.0 + 0.5 * i for i in range(8)],
                                   "original_max_position_embeddings": 64}),
}
# PoSE-style position ids: two chunks, the second pushed far beyond the input length
POSE_POS = torch.cat([torch.arange(20), torch.arange(300, 340)])
# ... and further: at 4k a frequency rounded to 16 bits turns the angle by ~0.1 rad (bf16) / 0.01 rad (fp16)
FAR_POS = torch.cat([torch.arange(20), torch.arange(4000, 4040)])


def make_hf(tmp_path, cls="LlamaForCausalLM", save_dtype=None, shard=None, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg_cls = transformers.MistralConfig if cls.startswith("Mistral") else transformers.LlamaConfig
    cfg = cfg_cls(**{**BASE, **overrides})
    hf = getattr(transformers, cls)(cfg).eval()
    with torch.no_grad():  # random norms and biases, so a swapped or ignored one shows
        for name, p in hf.named_parameters():
            if "norm" in name or "bias" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    kw = {"max_shard_size": shard} if shard else {}
    if save_dtype is not None:
        hf.to(save_dtype)
    hf.save_pretrained(tmp_path, **kw)
    hf = getattr(transformers, cls).from_pretrained(tmp_path, dtype=torch.float32).eval()
    return hf


def hf_logits(hf, ids, pos=None):
    with torch.no_grad():  # an explicit mask: transformers 5 reads a position jump as a new packed sequence
        return hf(ids, position_ids=None if pos is None else pos.expand_as(ids), attention_mask=torch.ones_like(ids)).logits


def assert_logits_close(a, b, atol=1e-4):
    diff = (a - b).abs()
    assert diff.max().item() <= atol, f"max abs diff {diff.max().item():.3g}, mean {diff.mean().item():.3g}"


def rel_err(a, b):
    """|a - b| / |b| over the whole tensor (Frobenius norms), in fp32."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# Relative error of 16-bit logits against fp32 at FAR_POS on the random weights below (std 0.2, so that
# attention and hence the logits depend strongly on positions), seeds 0-3: 0.019-0.022 (bf16), 0.0024-0.0027
# (fp16); gradients (all parameters together) within 2 x the tolerance. Bugs move them further: the second
# chunk one position off 0.14-0.15 (fp32), inv_freq rounded to the weights' dtype 0.15 (bf16) / 0.04-0.05 (fp16).
LOW_PRECISION_TOL = {torch.bfloat16: 0.035, torch.float16: 0.005}


def assert_tol_sees_wrong_rope(model, ids, pos, ref, tol):
    """The fp32 logits with broken positions are further from `ref` than 2.5 x tol: the skip ignored
    (0..T-1), the second chunk one position off, the RoPE factor halved. A shift of *all* positions
    would be invisible to any test, rightly: RoPE sees only differences."""
    rs = model.config.rope_scaling
    jump = int((pos[1:] - pos[:-1]).argmax()) + 1  # where the second chunk starts
    broken = {"positions 0..T-1": dict(position_ids=torch.arange(len(pos))),
              "second chunk +1": dict(position_ids=torch.cat([pos[:jump], pos[jump:] + 1]))}
    with torch.no_grad():
        errors = {name: rel_err(model(ids, **kw), ref) for name, kw in broken.items()}
        if rs and "factor" in rs:
            model.config.rope_scaling = dict(rs, factor=rs["factor"] / 2)
            try:
                errors["factor / 2"] = rel_err(model(ids, pos), ref)
            finally:
                model.config.rope_scaling = rs
    assert min(errors.values()) > 2.5 * tol, f"a wrong RoPE moves the logits by only {errors}, tolerance {tol}"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(tmp_path, name):
    hf = make_hf(tmp_path, **CONFIGS[name])
    ours = load_model(tmp_path).eval()
    ids = torch.randint(0, 97, (2, 60))
    with torch.no_grad():
        assert_logits_close(ours(ids), hf_logits(hf, ids))  # positions 0..59
        assert_logits_close(ours(ids, POSE_POS), hf_logits(hf, ids, POSE_POS))  # skipping positions


def test_mistral_sliding_window_matches(tmp_path):
    hf = make_hf(tmp_path, cls="MistralForCausalLM", num_key_value_heads=2, sliding_window=16)
    ours = load_model(tmp_path).eval()
    assert ours.config.model_type == "mistral" and ours.config.sliding_window == 16
    ids = torch.randint(0, 97, (1, 50))
    with torch.no_grad():
        assert_logits_close(ours(ids), hf_logits(hf, ids))


def test_mistral_sliding_window_in_blocks_through_the_cache(tmp_path, monkeypatch):
    """Beyond its window Mistral attends in blocks of W queries over < 2 W keys each: no [T, S] mask (O(T S) memory,
    and on CUDA no flash kernel). Logits equal transformers' for a long prompt, and through the KV cache (a prefill
    beyond the window, a prefill after it, single steps) equal the full forward."""
    import model as model_module
    hf = make_hf(tmp_path, cls="MistralForCausalLM", num_key_value_heads=2, sliding_window=16)
    ours = load_model(tmp_path).eval()
    masks, sdpa = [], model_module.F.scaled_dot_product_attention
    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention",
                        lambda *a, attn_mask=None, **kw: masks.append(0 if attn_mask is None else attn_mask.numel()) or
                        sdpa(*a, attn_mask=attn_mask, **kw))
    ids = torch.randint(0, 97, (1, 120))
    with torch.no_grad():
        full = ours(ids)
        assert max(masks) <= 16 * 31 < 120 * 120  # (the patch is torch's: transformers' calls count too, so check now)
        assert_logits_close(full, hf_logits(hf, ids))
        cache = KVCache(ours.config, 1, 120)
        pieces = [ours(ids[:, :70], kv_cache=cache), ours(ids[:, 70:100], kv_cache=cache)]
        pieces += [ours(ids[:, t:t + 1], kv_cache=cache) for t in range(100, 120)]
    assert_logits_close(torch.cat(pieces, 1), full)


def test_bf16_on_disk_and_sharded(tmp_path):
    hf = make_hf(tmp_path, save_dtype=torch.bfloat16, shard="40KB", num_key_value_heads=2, initializer_range=0.2,
                 rope_scaling={"rope_type": "linear", "factor": 4.0})
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours = load_model(tmp_path)
    ids = torch.randint(0, 97, (1, 40))
    with torch.no_grad():
        assert_logits_close(ours(ids, POSE_POS[:40]), hf_logits(hf, ids, POSE_POS[:40]))
    bf16 = load_model(tmp_path, dtype=torch.bfloat16)
    assert bf16.embed_tokens.weight.dtype == torch.bfloat16
    ref, tol = hf_logits(hf, ids, FAR_POS[:40]), LOW_PRECISION_TOL[torch.bfloat16]
    with torch.no_grad():
        err = rel_err(bf16(ids, FAR_POS[:40]), ref)  # bf16 arithmetic
    assert err <= tol, f"bf16 logits off by {err:.3g} relative to transformers' fp32"
    assert_tol_sees_wrong_rope(load_model(tmp_path), ids, FAR_POS[:40], ref, tol)


def test_loss_matches_transformers_and_is_chunked(tmp_path):
    hf = make_hf(tmp_path, num_key_value_heads=2, tie_word_embeddings=True)
    ours = load_model(tmp_path)
    ids = torch.randint(0, 97, (2, 50))
    labels = ids.clone()
    labels[0, :10] = -100
    with torch.no_grad():
        hf_loss = hf(ids, labels=labels, position_ids=POSE_POS[:50].expand(2, -1), attention_mask=torch.ones_like(ids)).loss
        ours.loss_chunk_size = 7  # many chunks, the last one partial
        loss = ours(ids, POSE_POS[:50], labels=labels)
        torch.testing.assert_close(loss, hf_loss, atol=1e-5, rtol=0)
        total = ours(ids, POSE_POS[:50], labels=labels, reduction="sum")
        torch.testing.assert_close(total / (labels[:, 1:] != -100).sum(), hf_loss, atol=1e-5, rtol=0)
    # the gradient of every parameter, taken in the chunked loss's forward pass, equals transformers', at PoSE positions
    ours.zero_grad()
    ours(ids, POSE_POS[:50], labels=labels).backward()
    hf.zero_grad()
    hf(ids, labels=labels, position_ids=POSE_POS[:50].expand(2, -1), attention_mask=torch.ones_like(ids)).loss.backward()
    theirs = {name.removeprefix("model."): p.grad for name, p in hf.named_parameters()}
    assert theirs.keys() == dict(ours.named_parameters()).keys()  # tied: no lm_head.weight on either side
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name], atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_loss_projects_only_scored_rows(monkeypatch):
    """Unscored rows (labels -100: a passkey prompt, a sliding window's context) get no logits: only the scored
    rows reach the vocabulary projection, and the loss and every gradient equal those of the full logits."""
    import model as model_module
    torch.manual_seed(0)
    ours = Llama(LlamaConfig(**BASE, num_key_value_heads=2))
    ids = torch.randint(0, 97, (2, 40))
    labels = ids.clone()
    labels[0, :25] = -100
    labels[1, 5:30] = -100
    projected, apply = [], model_module.ChunkedCrossEntropy.apply
    monkeypatch.setattr(model_module.ChunkedCrossEntropy, "apply", lambda x, *a: projected.append(x.shape[0]) or apply(x, *a))
    loss = ours(ids, labels=labels)
    assert projected == [int((labels[:, 1:] != -100).sum())] == [15 + 14]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in ours.named_parameters()}
    ours.zero_grad()
    logits = ours(ids)
    full = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), labels[:, 1:].reshape(-1), ignore_index=-100)
    full.backward()
    torch.testing.assert_close(loss, full, atol=1e-6, rtol=0)
    for n, p in ours.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-6, rtol=1e-5, msg=lambda m: f"{n}: {m}")


def test_activation_checkpointing_same_gradients_by_recomputing(monkeypatch):
    """With activation_checkpointing each block runs again in backward (without: once), keeps only its
    input, and the gradients are bit-identical."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(**BASE, num_key_value_heads=2))
    model.init_weights()
    ids = torch.randint(0, 97, (2, 40))
    calls, forward = [], Block.forward

    def counted(self, *a, **k):
        calls.append((self.self_attn.layer_idx, torch._C._current_graph_task_id() >= 0))  # >= 0: inside backward
        return forward(self, *a, **k)
    monkeypatch.setattr(Block, "forward", counted)
    grads, saved = [], []
    for ac in (False, True):
        model.zero_grad()
        model.activation_checkpointing = ac
        calls.clear()
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            loss = model(ids, POSE_POS[:40], labels=ids)
        loss.backward()
        saved.append(sum(sizes))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        recomputed = [(0, True), (1, True)] if ac else []
        assert calls == [(0, False), (1, False)] + recomputed[::-1], calls  # backward goes from the last block down
    assert saved[1] < saved[0] / 3, saved  # with AC, the blocks' insides are not kept for backward
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=0, rtol=0, msg=n)


@pytest.mark.parametrize("name", ["gqa", "yarn", "mqa_tied"])
def test_kv_cache_decoding_equals_full_forward(tmp_path, name):
    make_hf(tmp_path, **CONFIGS[name])
    model = load_model(tmp_path).eval()
    ids = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.config, batch_size=2, max_len=30)
        pieces = [model(ids[:, :12], kv_cache=cache), model(ids[:, 12:20], kv_cache=cache)]  # prefill in two chunks
        pieces += [model(ids[:, t:t + 1], kv_cache=cache) for t in range(20, 30)]  # then one token at a time
    assert cache.length == 30
    assert_logits_close(torch.cat(pieces, dim=1), full, atol=1e-5)
    with pytest.raises(ValueError, match="KVCache holds 30 tokens; 31 requested"):
        model(ids[:, :1], kv_cache=cache)


def test_greedy_decoding_equals_transformers_generate(tmp_path):
    hf = make_hf(tmp_path, num_key_value_heads=2)
    model = load_model(tmp_path).eval()
    prompt = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False,
                               pad_token_id=0)[0, 20:].tolist()
        cache = KVCache(model.config, 1, 30)
        logits, out = model(prompt, kv_cache=cache), []
        for _ in range(10):
            out.append(int(logits[0, -1].argmax()))
            logits = model(torch.tensor([[out[-1]]]), kv_cache=cache)
    assert out == expected


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_loss_and_gradients(dtype):
    """16-bit weights and activations: logits, loss and every gradient within LOW_PRECISION_TOL (relative)
    of fp32 at PoSE positions reaching 4k, where a wrong RoPE is further off than that."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(**BASE, rope_scaling={"rope_type": "linear", "factor": 4.0}))
    model.init_weights(std=0.2)
    ids, tol = torch.randint(0, 97, (2, 60)), LOW_PRECISION_TOL[dtype]
    loss = model(ids, FAR_POS, labels=ids)
    loss.backward()
    with torch.no_grad():
        ref = model(ids, FAR_POS)
    assert_tol_sees_wrong_rope(model, ids, FAR_POS, ref, tol)
    low = copy.deepcopy(model).to(dtype)
    low.zero_grad()
    with torch.no_grad():
        out = low(ids, FAR_POS)
    assert out.dtype == dtype and rel_err(out, ref) <= tol, rel_err(out, ref)
    low_loss = low(ids, FAR_POS, labels=ids)
    assert low_loss.dtype == torch.float32  # the loss is computed in fp32 whatever the weights
    assert abs(low_loss.item() - loss.item()) <= tol * loss.item()
    low_loss.backward()
    for name, p in low.named_parameters():
        assert p.grad.dtype == dtype and torch.isfinite(p.grad).all(), name
    flat = lambda m: torch.cat([p.grad.float().flatten() for p in m.parameters()])
    err = rel_err(flat(low), flat(model))
    assert err <= 2 * tol, f"{dtype} gradients off by {err:.3g} relative to fp32"


def test_config_errors():
    with pytest.raises(ValueError, match="config.json: model_type 'gpt2' is not supported; expected 'llama' or 'mistral'"):
        LlamaConfig.from_hf({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        LlamaConfig.from_hf({"model_type": "llama", "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="unknown rope_type 'magic'; known: default, linear"):
        LlamaConfig.from_hf({"model_type": "llama", "rope_scaling": {"type": "magic", "factor": 2}})
    with pytest.raises(ValueError, match="not a multiple of num_key_value_heads=3"):
        LlamaConfig(num_attention_heads=4, num_key_value_heads=3)
    cfg = LlamaConfig.from_hf({"model_type": "llama", "rope_theta": 5e5, "eos_token_id": [7, 8],
                               "rope_scaling": {"type": "yarn", "factor": 2.0}, "max_position_embeddings": 4096})
    assert cfg.rope_scaling == {"rope_type": "yarn_original", "factor": 2.0, "original_max_position_embeddings": 4096}
    assert cfg.rope_theta == 5e5 and cfg.eos_token_id == 7
