"""The training forward and loss never wait for the device: RoPE tables built once on the device, no host read of
the labels. A CPU stand-in for CUDA: tensors on the meta device hold no data, so any host read (bool(), .item(),
boolean indexing) raises there."""
import pytest
import torch

import model as model_module
from model import Llama, LlamaConfig

BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)
ROPES = {"default": None, "linear": {"rope_type": "linear", "factor": 4.0},
         "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
         "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 32}}
# Not here: dynamic, longrope and CLEX, whose frequencies depend on how far the input reaches (one host read each).


@pytest.mark.parametrize("rope", list(ROPES))
def test_training_step_reads_nothing_back_from_the_device(rope):
    with torch.device("meta"):
        model = Llama(LlamaConfig(**BASE, rope_scaling=ROPES[rope]))
        ids = torch.randint(0, 97, (2, 40))
        pos = torch.arange(40).expand(2, 40)
    labels = ids.clone()  # tasks.py's windows carry -100 labels; on meta nobody can look
    loss = model(ids, position_ids=pos, labels=labels)
    loss.backward()
    assert loss.device.type == "meta" and model.embed_tokens.weight.grad is not None


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weighting_unscored_rows_equals_dropping_them(reduction):
    """The accelerator's loss (every row projected, -100 rows weighted 0) equals the CPU's (those rows dropped)."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(**BASE))
    model.loss_chunk_size = 16  # several chunks, unscored rows inside and between them
    ids = torch.randint(0, 97, (2, 40))
    labels = ids.clone()
    labels[0, :25] = -100
    labels[1, 5:30] = -100
    results = []
    for drop in (True, False):
        model.drop_unscored = drop
        model.zero_grad()
        loss = model(ids, labels=labels, reduction=reduction)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-6, rtol=1e-5, msg=lambda m: f"{n}: {m}")


def test_all_unscored_is_zero_not_nan():
    model = Llama(LlamaConfig(**BASE))
    model.drop_unscored = False
    ids = torch.randint(0, 97, (1, 10))
    assert model(ids, labels=torch.full_like(ids, -100)).item() == 0.0


@pytest.mark.parametrize("rope, builds", [("linear", 1), ("yarn", 1), ("dynamic", 3)])
def test_rope_tables_built_once(monkeypatch, rope, builds):
    """Fixed schemes build inv_freq once and reuse it; dynamic NTK depends on the input's reach: every forward."""
    calls = []
    real = model_module.rope_from_config
    monkeypatch.setattr(model_module, "rope_from_config", lambda *a: calls.append(1) or real(*a))
    rs = {"rope_type": rope, "factor": 4.0, "original_max_position_embeddings": 64}
    model = Llama(LlamaConfig(**BASE, rope_scaling=rs))
    ids = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        first = model(ids)
        model(ids, position_ids=torch.arange(100, 110))
        again = model(ids)
    assert len(calls) == builds and torch.equal(first, again)
