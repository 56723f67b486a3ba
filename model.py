"""
The LLaMA decoder (LLaMA-1/2/3, Mistral, SmolLM, ...) in one file, with Hugging Face module names
so that loading a checkpoint is a rename (see load_hf_weights.py).

    x = embed(input_ids)
    for each block:  x = x + Attention(RMSNorm(x)),  x = x + SwiGLU(RMSNorm(x))
    logits = lm_head(RMSNorm(x))

Shapes: B batch, T tokens, H query heads, Hkv key/value heads, D head_dim, C hidden size.
Positions enter only through RoPE on q and k, so `position_ids` may skip (PoSE) while the
attention mask stays plain causal: token order is what makes attention causal.
"""
import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from rope import ROPE_TYPES, apply_rope, check_clex, clex_factor, clex_inv_freq, cos_sin, rope_from_config

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
        """L0, the window the model was pretrained with: rope_scaling's original_max_position_embeddings
        (a scaled checkpoint's max_position_embeddings is already the extended window), else max_position_embeddings."""
        return (self.rope_scaling or {}).get("original_max_position_embeddings", self.max_position_embeddings)

    @classmethod
    def from_hf(cls, hf: dict, source="config.json"):
        """Build from a Hugging Face config.json dict. transformers names RoPE scaling
        `rope_scaling` (<= 4.x, rope_theta beside it) or `rope_parameters` (5.x, rope_theta inside);
        its "yarn" is the original YaRN formula, which this project calls "yarn_original"."""
        if hf.get("model_type") not in ("llama", "mistral"):
            raise ValueError(f"{source}: model_type {hf.get('model_type')!r} is not supported; expected 'llama' or 'mistral'")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported; expected 'silu'")
        hf = dict(hf)
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
            rope = None
        else:
            # transformers' fallbacks: dynamic measures from max_position_embeddings, others from the original length
            rope.setdefault("original_max_position_embeddings", hf.get("original_max_position_embeddings", hf.get("max_position_embeddings", 2048)))
        names = {f.name for f in fields(cls)} - {"extra", "rope_scaling", "rope_theta"}
        known = {k: v for k, v in hf.items() if k in names and v is not None}
        if "torch_dtype" not in known and isinstance(hf.get("dtype"), str):  # transformers >= 4.56 writes "dtype"
            known["torch_dtype"] = hf["dtype"]
        if isinstance(known.get("eos_token_id"), list):  # Llama-3 lists several stop tokens
            known["eos_token_id"] = known["eos_token_id"][0]
        extra = {k: v for k, v in hf.items() if k not in names}
        return cls(**known, rope_theta=float(theta), rope_scaling=rope, extra=extra)


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
        T, S = q.shape[2], k.shape[2]
        mask, is_causal = None, past == 0 and T > 1
        if (past > 0 and T > 1) or (self.sliding_window is not None and S > self.sliding_window):
            # query t sees keys 0 .. past + t (and, with a sliding window, only the last `sliding_window` of them)
            q_idx = torch.arange(past, past + T, device=q.device)[:, None]
            k_idx = torch.arange(S, device=q.device)[None, :]
            mask = k_idx <= q_idx
            if self.sliding_window is not None:
                mask &= k_idx > q_idx - self.sliding_window
            is_causal = False
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=self.scale(S),
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
        return self.attention(attn, q, k, v, past)

    def attention(self, attn, q, k, v, past):
        return attn.attend(q, k, v, past)


class CLEX(nn.Module):
    """CLEX's learned frequency ODE (rope.clex_inv_freq), one for all layers. Parameter names as in
    the original CLEX checkpoints (model.clex_layer.proj_func.ode_up_proj / ode_down_proj)."""

    def __init__(self, config):
        super().__init__()
        D, p = config.head_dim, config.rope_scaling.get("param_factor", 1)
        self.proj_func = nn.ParameterDict({"ode_up_proj": nn.Parameter(torch.empty(D // 2, p * D)),
                                           "ode_down_proj": nn.Parameter(torch.empty(p * D, D // 2))})
        self.reset_parameters()
        self.cache = None  # (key, inv_freq [max_factor, D/2]) for forwards without gradients

    def reset_parameters(self):
        """The paper's start: W_up Kaiming-uniform(a = sqrt 5), W_down = 0, i.e. NTK with alpha = 2t - 1."""
        nn.init.kaiming_uniform_(self.proj_func.ode_up_proj, a=math.sqrt(5))
        nn.init.zeros_(self.proj_func.ode_down_proj)

    def forward(self, config, t):
        """inv_freq [D/2] fp32 at the integer scaling factor t. With gradients: one solve over [1, t].
        Without: one solve over the grid 1..max_factor, reused until a parameter changes (an in-place
        update bumps its version, a reassignment or .to() its storage)."""
        up, down = self.proj_func.ode_up_proj, self.proj_func.ode_down_proj
        rs = config.rope_scaling
        if t != int(t) or not 1 <= t <= rs["max_factor"]:
            raise ValueError(f"clex: the scaling factor t must be an integer in 1..max_factor={rs['max_factor']}, got {t!r}")
        t = int(t)
        args = (config.head_dim, config.rope_theta, up, down)
        kw = dict(time_dt=rs.get("time_dt", 0.01), act=rs.get("act", "tanh"))
        if torch.is_grad_enabled():
            return clex_inv_freq(*args, max_t=t, **kw)[-1]
        key = (up.data_ptr(), up._version, down.data_ptr(), down._version, str(up.device), args[:2], rs["max_factor"], kw)
        if self.cache is None or self.cache[0] != key:
            self.cache = (key, clex_inv_freq(*args, max_t=rs["max_factor"], **kw))
        return self.cache[1][t - 1]


class Llama(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        # On the meta device (load_model: no weights in memory before the checkpoint's) nn.Embedding's N(0, 1) draw
        # would import torch._dynamo, ~4 s of every process's start; the weights are overwritten there anyway.
        skip = torch.empty(0).is_meta
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size) if skip else None)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # tied: the output projection *is* the embedding matrix, so there is no second parameter
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if (config.rope_scaling or {}).get("rope_type") == "clex":
            self.clex_layer = CLEX(config)
        self.activation_checkpointing = False  # recompute each block in backward (train.py sets it)
        self.loss_chunk_size = 1024  # rows of logits materialised at once when computing a loss
        # loss: drop unscored rows before the output projection (None: on a CPU only; elsewhere finding them would
        # wait for the device, so they are kept and weighted 0)
        self.drop_unscored = None
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

    def rope(self, position_ids, scale_t=None, kv_cache=None):
        """cos, sin [B, T, D] fp32 for these positions, computed once and shared by every block."""
        rs = self.config.rope_scaling or {}
        kind = rs.get("rope_type")
        if scale_t is not None and kind != "clex":
            raise ValueError(f"scale_t is CLEX's training factor; this model's rope_type is {kind or 'default'!r}")
        seq_len = None
        if kind in ("dynamic", "longrope") or (kind == "clex" and scale_t is None):
            seq_len = int(position_ids.max()) + 1  # these schemes depend on how far the input reaches
        if kind in ("dynamic", "longrope"):
            inv_freq, mscale = rope_from_config(self.config, seq_len)
            return cos_sin(inv_freq, position_ids, mscale)
        if kind != "clex":  # fixed frequencies: built once on the device, not on the host every forward
            key = (position_ids.device, self.config.head_dim, self.config.rope_theta, repr(self.config.rope_scaling))
            if self._rope_table is None or self._rope_table[0] != key:
                inv_freq, mscale = rope_from_config(self.config)
                self._rope_table = (key, inv_freq.to(position_ids.device), mscale)
            return cos_sin(self._rope_table[1], position_ids, self._rope_table[2])
        if scale_t is None:  # CLEX at inference: t = ceil(L / L0). Decoding keeps the prompt's t (kept on the
            # cache), so every cached key and every new query share one set of frequencies
            L0 = rs.get("original_max_position_embeddings", self.config.max_position_embeddings)
            if kv_cache is not None and kv_cache.length > 0 and getattr(kv_cache, "clex_t", None):
                scale_t = kv_cache.clex_t
            else:
                scale_t = clex_factor(seq_len, L0, rs["max_factor"])
                if kv_cache is not None:
                    kv_cache.clex_t = scale_t
        return cos_sin(self.clex_layer(self.config, scale_t), position_ids)

    def forward(self, input_ids, position_ids=None, labels=None, kv_cache=None, reduction="mean", logits_to_keep=0,
                scale_t=None):
        """input_ids [B, T]; position_ids [B, T] or [T] (default: continue after the cache); any
        numbers, fractions too (CLEX trains on fractional positions). Without labels: logits [B, T, V],
        or of the last `logits_to_keep` tokens only (decoding a 32k prompt needs one row, not 6 GB).
        With labels [B, T] (usually input_ids; -100 = not scored): the next-token loss, averaged
        ("mean") or summed ("sum") over scored tokens. scale_t (CLEX only): the training step's
        integer factor t; None picks t = ceil(L / L0) from L = max(position_ids) + 1."""
        B, T = input_ids.shape
        if position_ids is None:
            past = kv_cache.length if kv_cache is not None else 0
            position_ids = torch.arange(past, past + T, device=input_ids.device)
        if position_ids.dim() == 1:
            position_ids = position_ids.expand(B, T)
        cos, sin = self.rope(position_ids, scale_t, kv_cache)
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


class ChunkedCrossEntropy(torch.autograd.Function):
    """Summed NLL of x @ weight.T against targets, each row weighted by mask (None: all 1; Llama.loss either drops
    the -100 rows first or weights them 0), `chunk` rows at a time. The gradient is taken in the same pass: for each chunk, d loss / d logits =
    softmax - onehot, which is pushed straight into d x and d weight and then dropped. Backward only scales
    those by the incoming gradient, so nothing is recomputed and no chunk's logits outlive it."""

    @staticmethod
    def forward(ctx, x, weight, targets, chunk, needs_grad, mask=None):
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if needs_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if needs_grad else None
        for i in range(0, targets.numel(), chunk):
            xi, ti = x[i:i + chunk], targets[i:i + chunk]
            logp = F.log_softmax(F.linear(xi, weight).float(), dim=-1)  # (rows, V), fp32 for the softmax
            ti, mi = ti[:, None], None if mask is None else mask[i:i + chunk, None]
            total += (logp.gather(1, ti) if mi is None else logp.gather(1, ti) * mi)[:, 0].sum().neg()
            if needs_grad:
                g = logp.exp_()  # softmax, in the same buffer
                g.scatter_add_(1, ti, torch.full_like(ti, -1, dtype=g.dtype))  # minus the one-hot target
                if mi is not None:
                    g.mul_(mi)
                grad_x[i:i + chunk] = g.to(weight.dtype) @ weight  # (rows, C)
                grad_w += (g.t() @ xi.to(g.dtype)).float()  # (V, C)
        ctx.save_for_backward(grad_x, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_total.to(grad_x.dtype), (grad_w * grad_total).to(ctx.weight_dtype), None, None, None, None
