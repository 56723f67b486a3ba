"""
Rotary position embeddings (RoPE) and the ways to stretch them past the training window.

RoPE rotates each pair of query/key dimensions (j, j + d/2) by the angle m * theta_j, where m is
the token's position index and theta_j = base^(-2j/d). Attention then only sees position
differences. Every scheme below changes one thing: the frequencies inv_freq[j] (and, for YaRN,
an attention temperature `mscale` that multiplies cos and sin). Everything is computed from
`position_ids`, never from the input length: PoSE feeds a 2k-token window whose position ids
reach 16k or more.

Scheme names (`rope_type`) as used in this project:
  default, linear, ntk, dynamic, yarn (PoSE's revised formula), yarn_original (transformers'
  "yarn"), llama3, longrope, clex (learned: its two matrices live in the model, see clex.py).
"""
import math

import torch

ROPE_TYPES = ("default", "linear", "ntk", "dynamic", "yarn", "yarn_original", "llama3", "longrope", "clex")


def original_len(config):
    """L0, the pretraining window: original_max_position_embeddings of a scaled checkpoint, else max_position_embeddings."""
    return (config.rope_scaling or {}).get("original_max_position_embeddings", config.max_position_embeddings)


def default_inv_freq(head_dim, base):
    """theta_j = base^(-2j/d), j = 0..d/2-1 (RoFormer Eq. 15). fp32, as transformers computes it."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def linear_inv_freq(head_dim, base, factor):
    """Position Interpolation (Chen et al. 2023): angle = (m / s) * theta_j, i.e. theta_j / s."""
    return default_inv_freq(head_dim, base) / factor


def ntk_inv_freq(head_dim, base, factor):
    """Static "NTK-aware" scaling: base' = base * s^(d / (d - 2)), then plain RoPE.
    Stretches the lowest frequency by exactly s while leaving the highest almost untouched."""
    return default_inv_freq(head_dim, base * factor ** (head_dim / (head_dim - 2)))


def dynamic_inv_freq(head_dim, base, factor, original_len, seq_len):
    """Dynamic NTK (inference only), transformers' semantics: with L = max(position_ids) + 1,
    base' = base * (s * L / L0 - (s - 1))^(d / (d - 2)) when L > L0, plain RoPE otherwise."""
    if seq_len <= original_len:
        return default_inv_freq(head_dim, base)
    return default_inv_freq(head_dim, base * (factor * seq_len / original_len - (factor - 1)) ** (head_dim / (head_dim - 2)))


def yarn_mscale(factor, mscale=1.0):
    """YaRN attention temperature sqrt(1/t) = 0.1 * ln(s) + 1 (YaRN Eq. 22), applied to cos and sin."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_ramp(head_dim, base, original_len, beta_fast=32.0, beta_slow=1.0, truncate=True):
    """mask_j in [0, 1]: 1 keeps dimension j's frequency, 0 interpolates it fully (YaRN Eq. 17-18).
    A dimension that turns r = L0 / wavelength_j times over the original window is kept when
    r > beta_fast and interpolated when r < beta_slow; dim(r) = d * ln(L0 / (2 pi r)) / (2 ln base)."""
    def dim(rotations):
        return head_dim * math.log(original_len / (2 * math.pi * rotations)) / (2 * math.log(base))
    low, high = dim(beta_fast), dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if high == low:
        high += 0.001  # a single-dimension ramp would divide by zero
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    return 1 - ramp


def yarn_inv_freq(head_dim, base, factor, original_len, beta_fast=32.0, beta_slow=1.0, revised=True, truncate=True):
    """YaRN "NTK-by-parts" (YaRN Eq. 19). Two ways to blend kept and interpolated dimensions:
    revised (PoSE, YaRN issue #24): blend wavelengths, inv_j = theta_j / ((1 - mask_j) * s + mask_j);
    original (YaRN code, transformers' "yarn"): blend frequencies,
                                    inv_j = (theta_j / s) * (1 - mask_j) + theta_j * mask_j."""
    theta = default_inv_freq(head_dim, base)
    mask = yarn_ramp(head_dim, base, original_len, beta_fast, beta_slow, truncate)
    if revised:
        return theta / yarn_scale_per_dim(head_dim, base, factor, original_len, beta_fast, beta_slow, truncate)
    # same operation order as transformers, so logits agree bit for bit where they can
    pos_freqs = base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    return (1.0 / (factor * pos_freqs)) * (1 - mask) + (1.0 / pos_freqs) * mask


def yarn_scale_per_dim(head_dim, base, factor, original_len, beta_fast=32.0, beta_slow=1.0, truncate=True):
    """Per-dimension wavelength stretch of revised YaRN, (1 - mask_j) * s + mask_j: in [1, s].
    Exactly longrope's `long_factor`, which is how a revised-YaRN model is exported to transformers."""
    mask = yarn_ramp(head_dim, base, original_len, beta_fast, beta_slow, truncate)
    return (1 - mask) * factor + mask


def llama3_inv_freq(head_dim, base, factor, low_freq_factor, high_freq_factor, original_len):
    """Llama 3.1: wavelengths longer than L0/lo are divided by f, shorter than L0/hi kept, and the
    band between blended by smooth = (L0 / wavelength - lo) / (hi - lo)."""
    theta = default_inv_freq(head_dim, base)
    wavelen = 2 * math.pi / theta
    smooth = ((original_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0, 1)
    return (1 - smooth) * theta / factor + smooth * theta


def longrope_inv_freq(head_dim, base, ext_factors):
    """LongRoPE / Phi-3: one stretch factor per dimension, inv_j = 1 / (ext_j * base^(2j/d))."""
    ext = torch.tensor(ext_factors, dtype=torch.float32)
    if ext.numel() != head_dim // 2:
        raise ValueError(f"longrope: expected {head_dim // 2} factors (head_dim / 2), got {ext.numel()}")
    return 1.0 / (ext * base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def rope_from_config(config, seq_len=None):
    """(inv_freq [D/2] fp32, mscale) for a config with head_dim, rope_theta, max_position_embeddings
    and rope_scaling (None or a dict with our `rope_type` names). seq_len = max(position_ids) + 1
    matters only for `dynamic` and `longrope`, whose frequencies depend on how far the input reaches."""
    d, base, rs = config.head_dim, config.rope_theta, config.rope_scaling or {}
    kind = rs.get("rope_type", "default")
    s = rs.get("factor", 1.0)
    L0 = original_len(config)
    if kind == "default":
        return default_inv_freq(d, base), 1.0
    if kind == "linear":
        return linear_inv_freq(d, base, s), 1.0
    if kind == "ntk":
        return ntk_inv_freq(d, base, s), 1.0
    if kind == "dynamic":
        return dynamic_inv_freq(d, base, s, L0, seq_len or 0), 1.0
    if kind in ("yarn", "yarn_original"):
        inv = yarn_inv_freq(d, base, s, L0, rs.get("beta_fast") or 32.0, rs.get("beta_slow") or 1.0,
                            revised=kind == "yarn", truncate=rs.get("truncate", True))
        mscale = rs.get("attention_factor")
        if mscale is None:  # DeepSeek-style ratio when both are given, as transformers does
            m, m_all = rs.get("mscale"), rs.get("mscale_all_dim")
            mscale = yarn_mscale(s, m) / yarn_mscale(s, m_all) if m and m_all else yarn_mscale(s)
        return inv, float(mscale)
    if kind == "llama3":
        return llama3_inv_freq(d, base, s, rs["low_freq_factor"], rs["high_freq_factor"], L0), 1.0
    if kind == "longrope":
        long = seq_len is not None and seq_len > L0
        inv = longrope_inv_freq(d, base, rs["long_factor"] if long else rs["short_factor"])
        mscale = rs.get("attention_factor")
        if mscale is None:  # Phi-3's default temperature
            f = rs.get("factor") or config.max_position_embeddings / L0
            mscale = 1.0 if f <= 1 else math.sqrt(1 + math.log(f) / math.log(L0))
        return inv, float(mscale)
    if kind == "clex":
        raise ValueError("clex: the frequencies depend on the model's learned ODE; use Llama.rope (clex.py)")
    raise ValueError(f"unknown rope_type {kind!r}; known: {', '.join(ROPE_TYPES)}")


def rope_from_hf(hf, source="config.json"):
    """(rope_scaling in our names or None, rope_theta) of a Hugging Face config.json dict, popping its RoPE keys.
    transformers names the scaling `rope_scaling` (<= 4.x, rope_theta beside it) or `rope_parameters` (5.x,
    rope_theta inside); its "yarn" is the original YaRN formula, which this project calls "yarn_original"."""
    rope = dict(hf.pop("rope_parameters", None) or hf.pop("rope_scaling", None) or {})
    hf.pop("rope_scaling", None)
    theta = rope.pop("rope_theta", None) or hf.pop("rope_theta", 10000.0)
    hf.pop("rope_theta", None)
    kind = rope.pop("type", None) or rope.get("rope_type") or "default"
    rope["rope_type"] = {"yarn": "yarn_original", "su": "longrope"}.get(kind, kind)
    if rope["rope_type"] == "clex" and "log_scale" in hf:  # the CLEX code keeps it beside rope_scaling
        rope.setdefault("log_scale", hf.pop("log_scale"))
    # ours: this project's own scheme, saved beside the transformers-readable one (see save_model)
    ours = hf.pop("pose_nano_rope_scaling", None)
    if ours is not None:
        rope, theta = dict(ours), ours.get("rope_theta", theta)
        rope.pop("rope_theta", None)
    if rope["rope_type"] not in ROPE_TYPES:
        raise ValueError(f"{source}: unknown rope_type {rope['rope_type']!r}; known: {', '.join(ROPE_TYPES)}")
    if rope["rope_type"] == "default":
        return None, float(theta)
    # transformers' fallbacks: dynamic measures from max_position_embeddings, others from the original length
    rope.setdefault("original_max_position_embeddings", hf.get("original_max_position_embeddings", hf.get("max_position_embeddings", 2048)))
    return rope, float(theta)


def cos_sin(inv_freq, position_ids, mscale=1.0):
    """cos, sin of shape [B, T, D] in fp32 from position_ids [B, T] (any integers, any gaps)."""
    angles = position_ids.float()[..., None] * inv_freq.to(position_ids.device)[None, None, :]  # (B, T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (B, T, D): dims j and j + D/2 share an angle
    return angles.cos() * mscale, angles.sin() * mscale


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: the 90-degree turn of each pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    """Rotate x [B, H, T, D] by cos/sin [B, T, D]; math in fp32, result in x's dtype."""
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D): broadcast over heads
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).type_as(x)
