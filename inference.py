"""
Inference through the KV cache, the one path of eval_passkey.py, eval_ruler.py and eval_ppl.py:

    cache = PrefixCache(model.config, 1, max_len, device, dtype)
    start = shared_prefix(model, ids, prev)              # tokens of ids already in the cache (prev prefilled before)
    out = greedy(model, ids, cache, start, max_new_tokens=10, eos_id=tok.eos_id)

A prompt that shares a prefix with the one before prefills only the rest: exact, since attention is causal.
Those new tokens attend to the cached ones without a mask (cached_prefill_attention, CPU); an explicit
[T, past + T] mask costs up to 2.95x a fresh prefill of the whole prompt on a CPU where the merge costs 1.17x
(results/bench/bench_prefill.json). On other devices PrefixCache leaves it to model.Attention's masked SDPA:
the merge needs the fused kernels' log-sum-exp, which only private aten ops return, and their CUDA signatures
have never been run here.
"""
import torch

from device import compile_blocks
from model import KVCache


def _attention_lse(q, k, v, is_causal, scale):
    """(output, logsumexp of the scores) of unmasked or causal attention with equal heads, on a CPU: the fused
    kernel computes the log-sum-exp anyway (its backward needs it); SDPA just does not return it."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, is_causal, scale=scale)[:2]


def cached_prefill_attention(q, k, v, past, scale=None):
    """Attention of T > 1 new queries (B, H, T, D) over `past` cached keys plus their own, (B, Hkv, past + T, D),
    without a mask. Query t sees all `past` cached keys and new keys 0..t: split there, each half runs a fast
    kernel (no mask, and square causal), and the halves merge exactly by their log-sum-exps (as FlashAttention
    merges its blocks):  y = (e^a1 y1 + e^a2 y2) / (e^a1 + e^a2)."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv  # query heads per key/value head (GQA): query head h reads key/value head h // G
    # the cached half is unmasked, so a group's query heads can share one key/value head as extra query rows
    y1, a1 = _attention_lse(q.reshape(B, Hkv, G * T, D), k[:, :, :past], v[:, :, :past], False, scale)
    y1, a1 = y1.reshape(B, H, T, D), a1.reshape(B, H, T)
    k2, v2 = k[:, :, past:], v[:, :, past:]
    if G > 1:
        k2, v2 = k2.repeat_interleave(G, dim=1), v2.repeat_interleave(G, dim=1)
    y2, a2 = _attention_lse(q, k2, v2, True, scale)
    a = torch.logaddexp(a1, a2)
    w1, w2 = torch.exp(a1 - a).unsqueeze(-1), torch.exp(a2 - a).unsqueeze(-1)
    return (w1 * y1.float() + w2 * y2.float()).to(q.dtype)


class PrefixCache(KVCache):
    """model.KVCache whose prefill after cached tokens merges two unmasked kernels (cached_prefill_attention) on a
    CPU, the one device it is tested on."""

    def attend(self, attn, q, k, v):
        past = self.length
        if not (past > 0 and q.shape[2] > 1 and attn.sliding_window is None and q.device.type == "cpu"
                and not torch.is_grad_enabled()):
            return super().attend(attn, q, k, v)
        k, v = self.update(attn.layer_idx, k, v)  # (B, Hkv, past + T, D)
        return cached_prefill_attention(q, k, v, past, attn.scale(k.shape[2]))


def compile_decoding(model, backend="inductor"):
    """torch.compile the blocks once for every prompt length, piece and decoding step: shapes dynamic from the start,
    and each step through the cache (KVCache.attend) eager between the compiled pieces, since its Python ints (cache
    length, layer) would recompile every block at every step. Set here, not in model.py: the decorator imports
    torch._dynamo (~4 s of every process's start)."""
    for cls in (KVCache, PrefixCache):
        if not getattr(cls.__dict__["attend"], "_torchdynamo_disable", False):
            cls.attend = torch.compiler.disable(cls.__dict__["attend"])
    return compile_blocks(model, dynamic=True, backend=backend)


def length_dependent(model):
    """Dynamic NTK and LongRoPE: RoPE depends on how far the input reaches, so keys cached for one prompt length
    are wrong for another, and a prompt must be prefilled in one pass."""
    return (model.config.rope_scaling or {}).get("rope_type") in ("dynamic", "longrope")


def shared_prefix(model, ids, prev):
    """How many leading tokens of `ids` are already in the cache, which holds those of `prev` (at least the last
    token of ids is left to prefill: its logits give the first answer token)."""
    if length_dependent(model) and len(ids) != len(prev):
        return 0
    n = 0
    while n < min(len(ids) - 1, len(prev)) and ids[n] == prev[n]:
        n += 1
    return n


@torch.no_grad()
def greedy(model, ids, cache, start, max_new_tokens, eos_id, piece=None, progress=None, stop=None):
    """Greedy continuation of `ids`, whose first `start` tokens are already in `cache`. piece: prefill over 2 pieces
    of tokens in pieces of that many (not under length-dependent RoPE), calling progress(tokens done, tokens to
    do) after each (a 32k prefill on a CPU takes minutes). stop(tokens so far) -> True ends decoding early
    (passkey: once the answer's first integer is complete)."""
    cache.length = start  # the cache's keys/values after the shared prefix get overwritten
    device = cache.k[0].device
    if piece and not length_dependent(model) and len(ids) - start > 2 * piece:
        for begin in range(start, len(ids) - piece, piece):  # the last piece (> 0 tokens) is the first step below
            model(torch.tensor([ids[begin:begin + piece]], device=device), kv_cache=cache, logits_to_keep=1)
            if progress:
                progress(begin + piece - start, len(ids) - start)
    out, x = [], torch.tensor([ids[cache.length:]], device=device)
    for _ in range(max_new_tokens):
        nxt = model(x, kv_cache=cache, logits_to_keep=1)[0, -1].argmax()
        if nxt.item() == eos_id:
            break
        out.append(nxt.item())
        if stop and stop(out):
            break
        x = nxt.view(1, 1)
    return out
