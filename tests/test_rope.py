"""RoPE schemes: REFERENCE §1 check values, and transformers' own functions as the oracle."""
import math
from types import SimpleNamespace

import pytest
import torch

from rope import (ROPE_TYPES, apply_rope, cos_sin, default_inv_freq, dynamic_inv_freq, linear_inv_freq,
                  longrope_inv_freq, ntk_inv_freq, rope_from_config, yarn_inv_freq, yarn_mscale, yarn_ramp,
                  yarn_scale_per_dim)

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("s, base_scaled", [(2, 20221.26), (4, 40889.94), (8, 82684.62), (16, 167198.74)])
def test_ntk_base_check_values(s, base_scaled):
    torch.testing.assert_close(ntk_inv_freq(128, 1e4, s), default_inv_freq(128, base_scaled), rtol=1e-6, atol=0)
    # the lowest frequency is stretched by exactly s, the highest untouched
    assert ntk_inv_freq(128, 1e4, s)[-1].item() == pytest.approx(default_inv_freq(128, 1e4)[-1].item() / s, rel=1e-5)
    assert ntk_inv_freq(128, 1e4, s)[0].item() == 1.0


@pytest.mark.parametrize("L0, low, high", [(2048, 16, 41), (4096, 20, 46)])
def test_yarn_correction_range(L0, low, high):
    mask = yarn_ramp(128, 1e4, L0)
    assert (mask[: low + 1] == 1).all() and (mask[high:] == 0).all()
    assert 0 < mask[low + 1] < 1 and 0 < mask[high - 1] < 1


@pytest.mark.parametrize("j, original, revised", [(0, 1.0, 1.0), (16, 1.0, 1.0), (20, 0.86, 0.4717),
                                                   (28, 0.58, 0.2294), (35, 0.335, 0.1582), (41, 0.125, 0.125),
                                                   (63, 0.125, 0.125)])
def test_yarn_check_values(j, original, revised):
    theta = default_inv_freq(128, 1e4)
    orig = yarn_inv_freq(128, 1e4, 8, 2048, revised=False) / theta
    rev = yarn_inv_freq(128, 1e4, 8, 2048, revised=True) / theta
    assert orig[j].item() == pytest.approx(original, abs=5e-4)
    assert rev[j].item() == pytest.approx(revised, abs=5e-5)


@pytest.mark.parametrize("s, m", [(1, 1.0), (0.5, 1.0), (2, 1.069315), (4, 1.138629), (8, 1.207944),
                                  (16, 1.277259), (32, 1.346574), (64, 1.415888)])
def test_yarn_mscale(s, m):
    assert yarn_mscale(s) == pytest.approx(m, abs=1e-6)


def test_revised_yarn_is_longrope_with_per_dim_factors():
    factors = yarn_scale_per_dim(64, 1e5, 4, 8192)
    assert factors.min() == 1 and factors.max() == 4 and (factors.diff() >= 0).all()
    torch.testing.assert_close(yarn_inv_freq(64, 1e5, 4, 8192), longrope_inv_freq(64, 1e5, factors.tolist()))


def test_linear_and_dynamic():
    theta = default_inv_freq(64, 1e4)
    torch.testing.assert_close(linear_inv_freq(64, 1e4, 4), theta / 4)
    torch.testing.assert_close(dynamic_inv_freq(64, 1e4, 4, 2048, 2048), theta)  # inside the window: plain
    assert (dynamic_inv_freq(64, 1e4, 4, 2048, 4096)[1:] < theta[1:]).all()


def _hf_config(rope, head_dim=64, max_pos=4096):
    return transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=head_dim, max_position_embeddings=max_pos,
                                    rope_theta=5e5, rope_scaling=rope)


HF_CASES = {  # HF rope_scaling dict -> ours (only "yarn" changes name)
    "default": ({"rope_type": "default"}, None),
    "linear": ({"rope_type": "linear", "factor": 4.0}, None),
    "dynamic": ({"rope_type": "dynamic", "factor": 4.0}, None),
    "yarn": ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 1024}, "yarn_original"),
    "yarn_mscale": ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 1024,
                     "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 16, "beta_slow": 2}, "yarn_original"),
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 512}, None),
    "longrope": ({"rope_type": "longrope", "short_factor": [1.0 + 0.05 * i for i in range(32)],
                  "long_factor": [1.0 + 0.3 * i for i in range(32)], "original_max_position_embeddings": 1024}, None),
}


@pytest.mark.parametrize("case", list(HF_CASES))
@pytest.mark.parametrize("seq_len", [100, 3000, 9000])
def test_inv_freq_matches_transformers(case, seq_len):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    hf_rope, our_type = HF_CASES[case]
    hf_cfg = _hf_config(dict(hf_rope))
    kind = hf_cfg.rope_parameters["rope_type"]
    if kind == "default":
        hf_inv, hf_scale = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding.compute_default_rope_parameters(hf_cfg)
    else:
        hf_inv, hf_scale = ROPE_INIT_FUNCTIONS[kind](hf_cfg, None, seq_len=seq_len)
    ours_rope = None if kind == "default" else dict(hf_rope, rope_type=our_type or kind)
    if ours_rope is not None:
        ours_rope.setdefault("original_max_position_embeddings", 4096)
    cfg = SimpleNamespace(head_dim=64, rope_theta=5e5, max_position_embeddings=4096, rope_scaling=ours_rope)
    inv, scale = rope_from_config(cfg, seq_len)
    torch.testing.assert_close(inv, hf_inv, rtol=1e-6, atol=0)
    assert scale == pytest.approx(hf_scale, rel=1e-6)


def test_cos_sin_and_rotation_match_transformers_with_skipping_positions():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    inv = yarn_inv_freq(32, 1e4, 4, 128)
    pos = torch.tensor([[0, 1, 2, 3, 250, 251, 252, 500], [0, 7, 8, 9, 10, 11, 300, 301]])
    cos, sin = cos_sin(inv, pos, mscale=1.3)
    angles = pos[..., None].double() * inv.double()
    torch.testing.assert_close(cos[..., :16].double(), angles.cos() * 1.3, atol=1e-4, rtol=0)
    torch.testing.assert_close(cos[..., 16:], cos[..., :16])
    q, k = torch.randn(2, 3, 8, 32), torch.randn(2, 3, 8, 32)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(apply_rope(q, cos, sin), hf_q)
    torch.testing.assert_close(apply_rope(k, cos, sin), hf_k)


def test_rope_depends_only_on_relative_position():
    inv = default_inv_freq(16, 1e4)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        cq, sq = cos_sin(inv, torch.tensor([[m]]))
        ck, sk = cos_sin(inv, torch.tensor([[n]]))
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()
    assert score(10, 3) == pytest.approx(score(1007, 1000), abs=1e-4)
    assert score(10, 3) != pytest.approx(score(10, 4), abs=1e-4)


def test_rope_math_in_fp32_for_bf16_inputs():
    inv = default_inv_freq(64, 1e4)
    cos, sin = cos_sin(inv, torch.arange(4000)[None])
    assert cos.dtype == torch.float32
    x = torch.randn(1, 2, 4000, 64)
    out = apply_rope(x.bfloat16(), cos, sin)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), apply_rope(x.bfloat16().float(), cos, sin), atol=0.02, rtol=0.01)


def test_unknown_rope_type_lists_known():
    cfg = SimpleNamespace(head_dim=64, rope_theta=1e4, max_position_embeddings=2048, rope_scaling={"rope_type": "magic"})
    with pytest.raises(ValueError, match="unknown rope_type 'magic'; known: default, linear, ntk"):
        rope_from_config(cfg)
    assert len(ROPE_TYPES) == 9


def test_longrope_factor_count_checked():
    with pytest.raises(ValueError, match="expected 32 factors"):
        longrope_inv_freq(64, 1e4, [1.0] * 31)
    assert math.isclose(longrope_inv_freq(64, 1e4, [2.0] * 32)[0].item(), 0.5)
