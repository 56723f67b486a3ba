"""
The LLaMA decoder (LLaMA-1/2/3, Mistral, SmolLM, ...) with Hugging Face module names, so that loading a
checkpoint is a rename (load_hf_weights.py). RoPE tables come from rope.py (CLEX's from clex.py), the loss
from chunked_loss.py, cached prefill and greedy decoding from inference.py.

    x = embed(input_ids)
    for each block:  x = x + Attention(RMSNorm(x)),  x = x + SwiGLU(RMSNorm(x))
    logits = lm_head(RMSNorm(x))

Shapes: B batch, T tokens, H query heads, Hkv key/value heads, D head_dim, C hidden size. Positions enter only
through RoPE on q and k, so `position_ids` may skip (PoSE) while attention stays plain causal.
"""
import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from chunked_loss import ChunkedCrossEntropy
from clex import CLEX, check_clex
from rope import ROPE_TYPES, apply_rope, cos_sin, original_len, rope_from_config, rope_from_hf

IGNORE_INDEX = -100  # label value that is not scored (transformers' convention)


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = None  # None: same as num_attention_heads (no GQA)
    head_dim: int = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict = None  # None or {"rope_type": one of rope.ROPE_TYPES, "factor": s, ...}
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int = None  # Mistral v0.1; None = full causal attention
    bos_token_id: int = 1
    eos_token_id: int = 2
    model_type: str = "llama"
    torch_dtype: str = "float32"
    extra: dict = field(default_factory=dict, repr=False)  # other config.json keys, kept for saving

    def __post_init__(self):
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        kind = (self.rope_scaling or {}).get("rope_type", "default")
        if kind not in ROPE_TYPES:
            raise ValueError(f"unknown rope_type {kind!r}; known: {', '.join(ROPE_TYPES)}")
        if kind == "clex":
            check_clex(self.rope_scaling)

    @property
    def original_len(self):
        """L0 (rope.original_len)."""
        return original_len(self)

    @classmethod
    def from_hf(cls, hf: dict, source="config.json"):
        """Build from a Hugging Face config.json dict (its RoPE keys: rope.rope_from_hf)."""
        if hf.get("model_type") not in ("llama", "mistral"):
            raise ValueError(f"{source}: model_type {hf.get('model_type')!r} is not supported; expected 'llama' or 'mistral'")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported; expected 'silu'")
        hf = dict(hf)
        rope, theta = rope_from_hf(hf, source)  # pops the RoPE keys
        names = {f.name for f in fields(cls)} - {"extra", "rope_scaling", "rope_theta"}
        known = {k: v for k, v in hf.items() if k in names and v is not None}
        if "torch_dtype" not in known and isinstance(hf.get("dtype"), str):  # transformers >= 4.56 writes "dtype"
            known["torch_dtype"] = hf["dtype"]
        if isinstance(known.get("eos_token_id"), list):  # Llama-3 lists several stop tokens
            known["eos_token_id"] = known["eos_token_id"][0]
        extra = {k: v for k, v in hf.items() if k not in names}
        return cls(**known, rope_theta=theta, rope_scaling=rope, extra=extra)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # the mean of squares in fp32: in bf16 it loses the small values that matter
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.type_as(x)


class Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.sliding_window = config.sliding_window
        rs = config.rope_scaling or {}
        # CLEX's optional log scaling of queries, q * ln(S) / ln(L0) for S keys (off in the paper's LLaMA runs)
        self.log_scale_len = config.original_len if rs.get("rope_type") == "clex" and rs.get("log_scale") else None
        C, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(C, self.n_head * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(C, self.n_kv_head * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(C, self.n_kv_head * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, C, bias=bias)

    def forward(self, x, cos, sin, kv_cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = self.attend(q, k, v) if kv_cache is None else kv_cache.attend(self, q, k, v)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))

    def scale(self, S):
        """Softmax scale for S keys: SDPA's default 1 / sqrt(D) (None), or CLEX's log scaling."""
        return math.log(S) / math.log(self.log_scale_len) / math.sqrt(self.head_dim) if self.log_scale_len else None

    def attend(self, q, k, v, past=0):
        """SDPA of queries q (B, H, T, D) that are the last T of the S = past + T keys k, v (B, Hkv, S, D)."""
        T, S, W = q.shape[2], k.shape[2], self.sliding_window
        if W is not None and S > W:  # Mistral beyond its window: W queries at a time, each block over < 2 W keys, so
            # memory stays O(T W) instead of a [T, S] mask (which on CUDA also rules out the flash kernel)
            return torch.cat([self.attend_keys(q[:, :, i:i + W], k, v, past + i, max(0, past + i - W + 1), S)
                              for i in range(0, T, W)], dim=2)
        if past > 0 and T > 1:  # query t sees keys 0 .. past + t
            return self.attend_keys(q, k, v, past, 0, S)
        return F.scaled_dot_product_attention(q, k, v, is_causal=past == 0 and T > 1, scale=self.scale(S),
                                              enable_gqa=self.n_kv_head != self.n_head)  # (B, H, T, D)

    def attend_keys(self, q, k, v, first, lo, S):
        """SDPA of queries at positions first.. over keys lo.. (of S in all), masked: causal, and a sliding window."""
        T, W = q.shape[2], self.sliding_window
        hi = min(first + T, S)
        q_idx = torch.arange(first, first + T, device=q.device)[:, None]
        k_idx = torch.arange(lo, hi, device=q.device)[None, :]
        mask = (k_idx <= q_idx) & (k_idx > q_idx - W) if W is not None else k_idx <= q_idx
        return F.scaled_dot_product_attention(q, k[:, :, lo:hi], v[:, :, lo:hi], attn_mask=mask, scale=self.scale(S),
                                              enable_gqa=self.n_kv_head != self.n_head)  # (B, H, T, D)


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, config):
        super().__init__()
        C, I, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(C, I, bias=bias)
        self.up_proj = nn.Linear(C, I, bias=bias)
        self.down_proj = nn.Linear(I, C, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, kv_cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class KVCache:
    """Keys and values of every layer for greedy decoding, preallocated to `max_len` tokens."""

    def __init__(self, config, batch_size, max_len, device=None, dtype=torch.float32):
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.length, self.max_len, self.last_layer = 0, max_len, config.num_hidden_layers - 1

    def update(self, layer_idx, k, v):
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache holds {self.max_len} tokens; {end} requested")
        self.k[layer_idx][:, :, self.length:end] = k
        self.v[layer_idx][:, :, self.length:end] = v
        if layer_idx == self.last_layer:
            self.length = end
        return self.k[layer_idx][:, :, :end], self.v[layer_idx][:, :, :end]

    def attend(self, attn, q, k, v):
        """Layer attn's new keys/values into the cache, then its queries over all keys so far."""
        past = self.length
        k, v = self.update(attn.layer_idx, k, v)  # (B, Hkv, past + T, D)
        return attn.attend(q, k, v, past)


class Llama(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        skip = torch.empty(0).is_meta  # on meta (load_model) N(0, 1) would import torch._dynamo: ~4 s of every start
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size) if skip else None)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if (config.rope_scaling or {}).get("rope_type") == "clex":
            self.clex_layer = CLEX(config)
        self.activation_checkpointing = False  # recompute each block in backward (train.py sets it)
        self.loss_chunk_size = 1024  # rows of logits materialised at once when computing a loss
        self.drop_unscored = None  # loss: drop -100 rows before the projection (None: on a CPU, where it costs no sync)
        self._rope_table = None  # (key, inv_freq on the device, mscale) of a scheme whose frequencies are fixed

    def init_weights(self, std=0.02):
        """transformers' Llama initialisation: N(0, 0.02) for every matrix, ones for norms; CLEX's own."""
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                nn.init.ones_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, mean=0.0, std=std)
        if hasattr(self, "clex_layer"):
            self.clex_layer.reset_parameters()

    @property
    def output_weight(self):
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def rope(self, position_ids, kv_cache=None):
        """cos, sin [B, T, D] fp32 for these positions, computed once and shared by every block."""
        if hasattr(self, "clex_layer"):  # learned frequencies (clex.py), which also depend on the input's reach
            return self.clex_layer.cos_sin(self.config, position_ids, kv_cache)
        if (self.config.rope_scaling or {}).get("rope_type") in ("dynamic", "longrope"):  # these depend on how far
            inv_freq, mscale = rope_from_config(self.config, int(position_ids.max()) + 1)  # the input reaches
            return cos_sin(inv_freq, position_ids, mscale)
        key = (position_ids.device, self.config.head_dim, self.config.rope_theta, repr(self.config.rope_scaling))
        if self._rope_table is None or self._rope_table[0] != key:  # fixed: built once on the device, not every forward
            inv_freq, mscale = rope_from_config(self.config)
            self._rope_table = (key, inv_freq.to(position_ids.device), mscale)
        return cos_sin(self._rope_table[1], position_ids, self._rope_table[2])

    def forward(self, input_ids, position_ids=None, labels=None, kv_cache=None, reduction="mean", logits_to_keep=0):
        """input_ids [B, T]; position_ids [B, T] or [T], any numbers (default: continue after the cache). Without
        labels: logits [B, T, V], or of the last `logits_to_keep` tokens (decoding a 32k prompt needs one row). With
        labels [B, T] (-100 = not scored): the next-token loss, "mean" or "sum" over scored tokens."""
        B, T = input_ids.shape
        if position_ids is None:
            past = kv_cache.length if kv_cache is not None else 0
            position_ids = torch.arange(past, past + T, device=input_ids.device)
        if position_ids.dim() == 1:
            position_ids = position_ids.expand(B, T)
        cos, sin = self.rope(position_ids, kv_cache)
        x = self.embed_tokens(input_ids)  # (B, T, C)
        for block in self.layers:
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, kv_cache, use_reentrant=False)
            else:
                x = block(x, cos, sin, kv_cache)
        x = self.norm(x)
        if labels is None:
            return F.linear(x[:, -logits_to_keep:] if logits_to_keep else x, self.output_weight)  # (B, T, V)
        return self.loss(x, labels, reduction)

    def loss(self, x, labels, reduction="mean"):
        """Cross-entropy of hidden states x [B, T, C] against labels shifted by one, without ever
        holding the [T, V] logits: at 32k tokens and a 128k vocabulary they would be 16 GB in fp32."""
        x = x[:, :-1].reshape(-1, x.shape[-1])
        targets = labels[:, 1:].reshape(-1)
        scored = targets != IGNORE_INDEX
        drop = self.drop_unscored if self.drop_unscored is not None else x.device.type == "cpu"
        mask, count = None, None
        if drop and not bool(scored.all()):  # unscored rows (a prompt, a sliding window's context) need no logits at
            x, targets = x[scored], targets[scored]  # all: drop them before the [rows, V] projection, the costliest step
        elif not drop:  # no host sync: every row goes through, the unscored ones weighted 0
            mask, count = scored.to(torch.float32), scored.sum().clamp(min=1)
            targets = targets.masked_fill(~scored, 0)
        weight = self.output_weight
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        total = ChunkedCrossEntropy.apply(x, weight, targets, self.loss_chunk_size, needs_grad, mask)
        if reduction == "sum":
            return total
        return total / (count if count is not None else max(targets.numel(), 1))
