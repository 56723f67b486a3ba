"""CLEX: the ODE solver, the NTK limit, gradients, the inference factor, the sampler, saving and loading."""
import json
import math
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from load_hf_weights import load_model, save_model, to_hf_config, with_rope
from model import Llama, LlamaConfig
from pose_sampler import sample_clex
from clex import clex_factor, clex_inv_freq, rk4
from rope import cos_sin, ntk_inv_freq

L0 = 16
TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=L0)
CLEX = {"rope_type": "clex", "max_factor": 4, "param_factor": 1, "time_dt": 0.05, "act": "tanh",
        "original_max_position_embeddings": L0}


def tiny_clex(seed=0, down_std=0.3, **rope):
    """Tiny CLEX model; a nonzero W_down so the learned part of the ODE shows."""
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(**TINY, rope_scaling={**CLEX, **rope}))
    model.init_weights()
    with torch.no_grad():
        model.clex_layer.proj_func.ode_down_proj.normal_(0, down_std)
    return model.eval()


def test_rk4_matches_analytic_odes():
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    err = [(rk4(lambda t, y: -y, y0, 0.0, 2.0, n) - y0 * math.exp(-2)).abs().max().item() for n in (50, 100)]
    assert err[1] < 1e-9 and 15 < err[0] / err[1] < 17  # fourth order: half the step, 1/16 the error
    y = rk4(lambda t, y: t ** 3 - t, torch.zeros(1, dtype=torch.float64), 1.0, 3.0, 7)  # a cubic: RK4 is exact
    torch.testing.assert_close(y.item(), (3 ** 4 - 1) / 4 - (3 ** 2 - 1) / 2, rtol=1e-12, atol=0)


@pytest.mark.parametrize("head_dim,base,dt", [(16, 10000.0, 0.01), (64, 5e5, 0.05), (128, 10000.0, 0.1)])
def test_zero_w_down_is_ntk_with_alpha_2t_minus_1(head_dim, base, dt):
    w_up = torch.empty(head_dim // 2, head_dim)
    torch.nn.init.kaiming_uniform_(w_up, a=math.sqrt(5))
    inv = clex_inv_freq(head_dim, base, w_up, torch.zeros(head_dim, head_dim // 2), max_t=8, time_dt=dt)
    assert inv.shape == (8, head_dim // 2)
    for t in range(1, 9):
        torch.testing.assert_close(inv[t - 1], ntk_inv_freq(head_dim, base, 2 * t - 1), rtol=1e-5, atol=0)


def test_learned_part_moves_frequencies_and_training_solve_equals_inference_grid():
    model = tiny_clex()
    with torch.no_grad():
        grid = model.clex_layer(model.config, 4)  # cached grid 1..max_factor
        assert torch.equal(model.clex_layer.cache[1][0], ntk_inv_freq(16, 10000.0, 1))  # t = 1: plain RoPE
        assert not torch.allclose(grid, ntk_inv_freq(16, 10000.0, 7), rtol=1e-3)
    torch.testing.assert_close(model.clex_layer(model.config, 4).detach(), grid, rtol=0, atol=0)  # with grad: [1, 4]


def test_gradients_reach_w_up_and_w_down_through_the_solver():
    model = tiny_clex().train()
    ids = torch.randint(0, 97, (2, 12))
    _, pos = sample_clex(range(100), 12, 3, L0, rng=random.Random(0))
    model(ids, pos, labels=ids).backward()  # positions up to 3 x 12 - 1: t = 3
    for name in ("ode_up_proj", "ode_down_proj"):
        g = model.clex_layer.proj_func[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    model.zero_grad()
    model(ids, torch.arange(12), labels=ids).backward()  # t = 1 is plain RoPE: the ODE is not used
    assert model.clex_layer.proj_func.ode_up_proj.grad is None


def test_inference_cache_follows_parameter_updates():
    model = tiny_clex()
    ids = torch.randint(0, 97, (1, 3 * L0))
    with torch.no_grad():
        before = model(ids)
        assert torch.equal(model(ids), before)  # served from the cache
        model.clex_layer.proj_func.ode_down_proj.mul_(2)  # an optimizer step is in place, like this
        assert not torch.allclose(model(ids), before)
        model.clex_layer.proj_func.ode_down_proj.div_(2)
        torch.testing.assert_close(model(ids), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seq_len,t", [(1, 1), (L0, 1), (L0 + 1, 2), (2 * L0, 2), (2 * L0 + 1, 3), (4 * L0, 4),
                                       (4 * L0 + 1, 4), (100 * L0, 4)])
def test_inference_picks_t(seq_len, t):
    assert clex_factor(seq_len, L0, 4) == t
    model = tiny_clex()
    pos = torch.tensor([[0, seq_len - 1]])  # the farthest position decides, not the number of tokens
    with torch.no_grad():
        cos, sin = model.rope(pos)
        ref_cos, ref_sin = cos_sin(model.clex_layer.cache[1][t - 1], pos)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)


@pytest.mark.parametrize("t", [1, 2, 3, 4])
def test_training_positions_give_the_steps_t(t):
    """train.py passes no factor: a sample_clex window (Lc = L0) ends at position Lc * t - 1, which gives back t."""
    model = tiny_clex().train()
    _, pos = sample_clex(range(200), L0, t, L0, rng=random.Random(t))
    cos, sin = model.rope(pos[None])  # with grad: the ODE solved up to t
    with torch.no_grad():
        ref_cos, ref_sin = cos_sin(model.clex_layer(model.config, t), pos[None])  # from the cached grid 1..max_factor
    torch.testing.assert_close((cos.detach(), sin.detach()), (ref_cos, ref_sin), rtol=0, atol=0)
    if t < 4:
        other, _ = cos_sin(model.clex_layer(model.config, t + 1).detach(), pos[None])
        assert not torch.allclose(cos.detach(), other)


def test_t_out_of_range():
    with pytest.raises(ValueError, match=r"t must be an integer in 1..max_factor=4, got 5"):
        tiny_clex().clex_layer(tiny_clex().config, 5)


@pytest.mark.parametrize("train_len,t,original_len", [(32, 1, 32), (32, 3, 32), (32, 4, 64), (64, 2, 16), (48, 5, 16)])
def test_sample_clex_positions(train_len, t, original_len):
    doc = np.arange(1000, 1300)
    for rng in (random.Random(1), np.random.default_rng(1)):
        ids, pos = sample_clex(doc, train_len, t, original_len, rng=rng)
        scale = max(1, train_len // original_len)
        assert ids.shape == pos.shape == (train_len,) and pos.dtype == torch.float32
        assert torch.equal(ids, torch.arange(ids[0], ids[0] + train_len))  # contiguous text
        assert pos[0] == 0 and pos[-1] == train_len * t / scale - 1
        middle = pos[1:-1] * scale  # the draws s + 1, distinct integers in 1..Lc*t - 2
        assert (middle - middle.round()).abs().max() < 1e-3 and (middle.round().diff() > 0).all()
        assert middle.min() >= 1 and middle.max() <= train_len * t - 2
        if scale == 1:
            assert (pos.diff() > 0).all()
    _, pos = sample_clex(doc, 32, 1, 32, rng=random.Random(0))
    assert torch.equal(pos, torch.arange(32.0))  # t = 1, scale 1: plain positions


def test_sample_clex_errors():
    with pytest.raises(ValueError, match="train_len must be >= 2"):
        sample_clex(range(10), 1, 2, 4)
    with pytest.raises(ValueError, match="t must be an integer >= 1, got 1.5"):
        sample_clex(range(10), 4, 1.5, 4)
    with pytest.raises(ValueError, match="doc_ids has 10 tokens"):
        sample_clex(range(10), 12, 2, 4)


@pytest.mark.parametrize("rope,message", [
    ({"rope_type": "clex"}, "clex: rope_scaling needs max_factor"),
    ({**CLEX, "max_factor": 0}, r"max_factor=0 is invalid; expected an integer >= 1"),
    ({**CLEX, "max_factor": 2.5}, r"max_factor=2.5 is invalid"),
    ({**CLEX, "param_factor": 0}, r"param_factor=0 is invalid"),
    ({**CLEX, "time_dt": 0}, r"time_dt=0 is invalid; expected a number in \(0, 1\]"),
    ({**CLEX, "act": "relu"}, r"act='relu' is invalid; expected one of tanh, silu"),
    ({**CLEX, "log_scale": "yes"}, r"log_scale='yes' is invalid; expected true or false"),
])
def test_bad_clex_config(rope, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig(**TINY, rope_scaling=rope)
    with pytest.raises(ValueError, match=message):
        with_rope(LlamaConfig(**TINY), rope)


def test_save_load_round_trip_with_original_key_names(tmp_path):
    model = tiny_clex(act="silu")
    save_model(model, tmp_path / "out")
    tensors = load_file(tmp_path / "out" / "model.safetensors")
    assert tensors["model.clex_layer.proj_func.ode_up_proj"].shape == (8, 16)
    assert tensors["model.clex_layer.proj_func.ode_down_proj"].shape == (16, 8)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["pose_nano_rope_scaling"]["rope_type"] == saved["rope_scaling"]["rope_type"] == "clex"
    # the CLEX code also saves its RoPE buffer: dropped like transformers' old rotary_emb.inv_freq
    save_file({**tensors, "model.clex_layer.inv_freq": torch.ones(8)}, str(tmp_path / "out" / "model.safetensors"))
    loaded = load_model(tmp_path / "out").eval()
    assert loaded.config.rope_scaling == model.config.rope_scaling
    ids = torch.randint(0, 97, (2, 3 * L0 + 5))
    pos = torch.cat([torch.arange(10), torch.arange(40, 3 * L0 + 35)])
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
        assert torch.equal(loaded(ids, pos), model(ids, pos))


def test_plain_base_switched_to_clex_starts_as_ntk(tmp_path):
    torch.manual_seed(0)
    base = Llama(LlamaConfig(**TINY))
    base.init_weights()
    save_model(base, tmp_path / "base")
    model = load_model(tmp_path / "base", rope={"rope_type": "clex", "max_factor": 4}).eval()
    assert model.config.max_position_embeddings == 4 * L0
    assert model.config.rope_scaling["original_max_position_embeddings"] == L0
    up, down = model.clex_layer.proj_func.ode_up_proj, model.clex_layer.proj_func.ode_down_proj
    assert torch.equal(down, torch.zeros(16, 8)) and 0 < up.abs().max() <= 1 / math.sqrt(16)  # Kaiming, fan_in = size(1)
    ids = torch.randint(0, 97, (1, 3 * L0))  # t = 3: NTK with alpha = 5
    ntk = load_model(tmp_path / "base", rope={"rope_type": "ntk", "factor": 5.0}).eval()
    with torch.no_grad():
        assert torch.equal(model(ids[:, :L0]), base.eval()(ids[:, :L0]))  # t = 1: plain RoPE
        torch.testing.assert_close(model(ids), ntk(ids), rtol=0, atol=1e-4)


def test_log_scale_multiplies_queries_by_log_kv_len_over_log_original():
    model = tiny_clex(log_scale=True)
    plain = tiny_clex(log_scale=False)
    ids = torch.randint(0, 97, (1, 2 * L0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids[:, :L0]), plain(ids[:, :L0]), rtol=0, atol=1e-5)  # ln L0 / ln L0 = 1
        for block in plain.layers:  # q * c == q_proj scaled by c: RoPE is linear
            block.self_attn.q_proj.weight.mul_(math.log(2 * L0) / math.log(L0))
        torch.testing.assert_close(model(ids), plain(ids), rtol=0, atol=1e-5)


def test_hf_compatible_export_refused(tmp_path):
    model = tiny_clex()
    with pytest.raises(ValueError, match="clex: stock transformers cannot load a CLEX model"):
        to_hf_config(model.config, torch.float32, hf_compatible=True)
    with pytest.raises(ValueError, match="clex: stock transformers cannot load a CLEX model"):
        save_model(model, tmp_path / "out", hf_compatible=True)
    assert not (tmp_path / "out").exists()
    plain = Llama(LlamaConfig(**TINY))
    assert to_hf_config(plain.config, torch.float32, hf_compatible=True)["rope_scaling"] is None


@torch.no_grad()
def test_kv_cache_decoding_keeps_the_prompts_t():
    """A 30-token prompt (t = 2 for L0 = 16) decoded past 32 tokens: every step uses the prompt's t,
    so cached decoding equals one forward with t = 2 throughout (the keys are never re-rotated)."""
    from model import KVCache
    model = tiny_clex()
    ids = torch.randint(0, 97, (1, 36))
    full = tiny_clex(max_factor=2)(ids)  # the same weights, t = min(ceil(36 / 16), 2) = 2 throughout
    cache = KVCache(model.config, 1, 36)
    steps = [model(ids[:, :30], kv_cache=cache)] + [model(ids[:, i:i + 1], kv_cache=cache) for i in range(30, 36)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)
    assert cache.clex_t == 2 and not torch.allclose(model(ids), full, atol=1e-3)  # one forward of 36: t = 3
