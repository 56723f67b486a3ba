"""The cached-prefill fast path (inference.cached_prefill_attention): new queries after cached keys, no mask."""
import pytest
import torch
import torch.nn.functional as F

import inference as model_module
from inference import PrefixCache as KVCache, cached_prefill_attention
from model import Llama, LlamaConfig


def masked_reference(q, k, v, past):
    T, S = q.shape[2], k.shape[2]
    mask = torch.arange(S)[None, :] <= torch.arange(past, past + T)[:, None]  # query t sees keys 0 .. past + t
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask,
                                          enable_gqa=q.shape[1] != k.shape[1])


@pytest.mark.parametrize("heads, kv_heads, past, new", [(9, 3, 50, 37), (4, 4, 1, 64), (8, 1, 300, 2), (6, 2, 7, 100)])
def test_equals_masked_attention(heads, kv_heads, past, new):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, new, 16, generator=g)
    k, v = torch.randn(2, 2, kv_heads, past + new, 16, generator=g)
    expected = masked_reference(q, k, v, past)
    torch.testing.assert_close(cached_prefill_attention(q, k, v, past).double(), expected, atol=2e-6, rtol=0)
    # a scale other than 1/sqrt(D) (CLEX's log scaling) goes through both halves
    mask = torch.arange(past + new)[None, :] <= torch.arange(past, past + new)[:, None]
    scaled = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=heads != kv_heads)
    torch.testing.assert_close(cached_prefill_attention(q, k, v, past, scale=0.3), scaled, atol=2e-6, rtol=0)


def test_bf16_close_to_fp32():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 6, 40, 32, generator=g), torch.randn(1, 2, 140, 32, generator=g), torch.randn(1, 2, 140, 32, generator=g)
    expected = masked_reference(q, k, v, 100).float()
    got = cached_prefill_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 100).float()
    rel = (got - expected).norm() / expected.norm()
    assert got.dtype == torch.float32 and rel < 1e-2
    # a wrong mask (each query blind to its own key) is far outside that tolerance
    T, S = 40, 140
    blind = torch.arange(S)[None, :] < torch.arange(100, 100 + T)[:, None]
    wrong = F.scaled_dot_product_attention(q, k, v, attn_mask=blind, enable_gqa=True)
    assert (wrong - expected).norm() / expected.norm() > 10 * rel

def test_model_takes_the_fast_path_and_matches_a_fresh_prefill(monkeypatch):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
                         num_key_value_heads=2, max_position_embeddings=256)
    model = Llama(config).eval()
    calls = []
    monkeypatch.setattr(model_module, "cached_prefill_attention",
                        lambda *a, **kw: calls.append(a[3]) or cached_prefill_attention(*a, **kw))
    ids = torch.randint(0, 101, (1, 90))
    with torch.no_grad():
        fresh = model(ids)
        cache = KVCache(config, 1, 90)
        pieces = [model(ids[:, :30], kv_cache=cache), model(ids[:, 30:75], kv_cache=cache), model(ids[:, 75:], kv_cache=cache)]
    assert calls == [30] * 3 + [75] * 3  # every layer of both continued prefills, none for the fresh ones
    torch.testing.assert_close(torch.cat(pieces, 1), fresh, atol=2e-5, rtol=0)
