"""inference.py: compiled greedy decoding compiles once; the cached-prefill merge only where it is tested (CPU)."""
import torch

import inference
from inference import PrefixCache, compile_decoding, greedy, shared_prefix
from model import KVCache, Llama, LlamaConfig

CONFIG = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=10, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)


def test_compiled_decoding_compiles_once_for_every_length(monkeypatch):
    """Two rounds of two prompts (the second of each sharing a prefix with the first: a prefill after cached tokens),
    6 greedy steps each, at other lengths in the second round: it compiles nothing new, and no block falls back to
    eager at dynamo's recompile limit (10 layers, more than the limit of 8: one graph per layer would hit it)."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    for cls in (KVCache, PrefixCache):  # compile_decoding wraps their cache step: put back afterwards
        monkeypatch.setattr(cls, "attend", cls.__dict__["attend"])
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = Llama(LlamaConfig(**CONFIG)).eval()
    rounds = []
    for first, shared, rest in ((30, 20, 25), (41, 12, 17)):
        a = torch.randint(0, 97, (first,)).tolist()
        rounds.append([a, a[:shared] + torch.randint(0, 97, (rest,)).tolist()])
    eager = [[greedy(model, ids, PrefixCache(model.config, 1, 64), 0, 6, None) for ids in r] for r in rounds]
    compile_decoding(model, backend="eager")  # dynamo's tracing and guards, without inductor's C++ build
    cache, prev, outs, graphs, starts = PrefixCache(model.config, 1, 64), [], [], [], []
    for i, prompts in enumerate(rounds):
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            for ids in prompts:
                starts.append(shared_prefix(model, ids, prev))
                outs.append(greedy(model, ids, cache, starts[-1], 6, None))
                prev = ids
        graphs.append(counters["stats"]["unique_graphs"])
    assert starts[1::2] == [20, 12] and outs == eager[0] + eager[1]
    assert graphs[1] == graphs[0] > 0 and not counters["unimplemented"], (graphs, dict(counters["unimplemented"]))


def test_merge_only_on_the_cpu(monkeypatch):
    """PrefixCache merges by log-sum-exp on a CPU; on any other device (meta here) it leaves the prefill after cached
    tokens to the model's masked SDPA, the public path."""
    calls = []
    real = inference.cached_prefill_attention
    monkeypatch.setattr(inference, "cached_prefill_attention", lambda *a: calls.append(a[0].device.type) or real(*a))
    for device in ("cpu", "meta"):
        with torch.device(device):
            model = Llama(LlamaConfig(**CONFIG)).eval()
            cache = PrefixCache(model.config, 1, 64, device)
            with torch.no_grad():
                model(torch.randint(0, 97, (1, 20)), kv_cache=cache)
                out = model(torch.randint(0, 97, (1, 10)), kv_cache=cache)
        assert out.shape == (1, 10, 97)
    assert calls == ["cpu"] * 10
