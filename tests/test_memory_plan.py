"""memory_plan.py: train.py's GB per device against bytes counted here, what each sharding divides, and the
first-that-fits rule of --shard auto with the lines it prints. No model is built: the plan needs numbers only."""
import pytest

from memory_plan import HEADROOM, WORKSPACE_GB, choose_shard, memory_plan
from model import LlamaConfig

LLAMA_7B = LlamaConfig.from_hf({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                                "num_attention_heads": 32, "vocab_size": 32000, "max_position_embeddings": 2048})
C, I, L, V = 4096, 11008, 32, 32000
P = 2 * V * C + L * (4 * C * C + 3 * C * I + 2 * C) + C  # embeddings + lm_head, 32 x (attention, MLP, 2 norms), final norm
GB = 1024**3
RUN = dict(micro_batch=1, seq_len=2048, ac=True)


def plan(shard, world_size=8, act_bytes=2, **over):
    return memory_plan(LLAMA_7B, P, shard, world_size, **{**RUN, **over}, act_bytes=act_bytes)


def test_parameter_count_is_llama_7b():
    assert P == 6_738_415_616  # the published count: the byte counts below rest on it


def test_ddp_bytes_per_parameter():
    """Replicated: fp32 master weights (4 B) + their bf16 autocast copy (2 B), fp32 grads (4 B), AdamW's two moments (8 B)."""
    p = plan("ddp")
    assert (p["weights"], p["grads"], p["optimizer"]) == pytest.approx((6 * P / GB, 4 * P / GB, 8 * P / GB), rel=1e-12)
    assert plan("ddp", act_bytes=4)["weights"] == pytest.approx(4 * P / GB, rel=1e-12)  # fp32: no 16-bit copy


@pytest.mark.parametrize("ranks", [2, 8])
def test_zero1_divides_the_optimizer_state_only(ranks):
    ddp, zero1 = plan("ddp", ranks), plan("zero1", ranks)
    assert zero1["optimizer"] == pytest.approx(ddp["optimizer"] / ranks, rel=1e-12) == pytest.approx(8 * P / ranks / GB)
    assert [zero1[k] for k in ("weights", "grads", "activations")] == [ddp[k] for k in ("weights", "grads", "activations")]


@pytest.mark.parametrize("ranks, act_bytes", [(2, 2), (8, 2), (8, 4)])
def test_fsdp_divides_weights_grads_and_optimizer(ranks, act_bytes):
    """A 1/ranks shard of everything, plus two blocks gathered in the compute dtype (computing, prefetched);
    activations are per rank's own micro-batch, the same as under DDP. The plan's block is P / L (4% above
    a transformer block counted alone: it spreads the embeddings over the layers)."""
    ddp, fsdp = plan("ddp", ranks, act_bytes), plan("fsdp", ranks, act_bytes)
    assert fsdp["weights"] == pytest.approx((4 * P / ranks + 2 * act_bytes * P / L) / GB, rel=1e-12)
    assert (fsdp["grads"], fsdp["optimizer"]) == pytest.approx((4 * P / ranks / GB, 8 * P / ranks / GB), rel=1e-12)
    assert fsdp["activations"] == ddp["activations"]


def test_one_rank_shards_nothing():
    ddp, zero1, fsdp = plan("ddp", 1), plan("zero1", 1), plan("fsdp", 1)
    assert ddp == zero1 and ddp["grads"] == fsdp["grads"] and ddp["optimizer"] == fsdp["optimizer"]


def test_activations_scale_with_tokens_and_ac_keeps_block_inputs():
    """Beyond one chunk of fp32 logits (3 x 1024 rows of V, what micro-batch 0 leaves): linear in micro-batch x
    seq_len and in bytes per value; without AC L blocks' insides, with AC each block's input (C values a token)
    plus one block's insides."""
    chunk = plan("ddp", micro_batch=0)["activations"]
    assert chunk == pytest.approx(3 * 1024 * V * 4 / GB, rel=1e-12)

    def acts(**over):
        return plan("ddp", **over)["activations"] - chunk
    assert acts(micro_batch=2) == pytest.approx(2 * acts(), rel=1e-12) == pytest.approx(acts(seq_len=4096), rel=1e-12)
    assert acts(act_bytes=4) == pytest.approx(2 * acts(), rel=1e-12)
    one_block = acts(ac=False) / L
    assert acts() == pytest.approx(L * 2048 * C * 2 / GB + one_block, rel=1e-12)
    assert acts() < acts(ac=False) / 3


# what train.py prints for LLaMA-7B on 8 x 48 GB in bf16 (--dry-run --device-memory 48); before issue 24 the lines
# had no loss_grad and workspace, and the totals were 114.15, 70.22 and 14.53 GB
LINES_7B_8X48 = [
    "memory plan, 6.74B params, ddp on 8 x 48 GB (cpu, bf16, micro-batch 1 x 2048 tokens, AC on): weights 37.65, grads 25.10, "
    "optimizer 50.21, activations 1.19, loss_grad 0.50, workspace 2.00 = 116.66 GB per device  -> does not fit",
    "memory plan, 6.74B params, zero1 on 8 x 48 GB (cpu, bf16, micro-batch 1 x 2048 tokens, AC on): weights 37.65, grads 25.10, "
    "optimizer 6.28, activations 1.19, loss_grad 0.50, workspace 2.00 = 72.73 GB per device  -> does not fit",
    "memory plan, 6.74B params, fsdp on 8 x 48 GB (cpu, bf16, micro-batch 1 x 2048 tokens, AC on): weights 3.92, grads 3.14, "
    "optimizer 6.28, activations 1.19, loss_grad 0.50, workspace 2.00 = 17.03 GB per device"]


def choose(candidates=("ddp", "zero1", "fsdp"), capacity=48, world_size=8, dtype_name="bf16"):
    return choose_shard(list(candidates), capacity, config=LLAMA_7B, n_params=P, world_size=world_size, **RUN,
                        device="cpu", dtype_name=dtype_name)


def test_auto_takes_the_first_that_fits_and_prints_each_tried():
    shard, chosen, lines = choose()
    assert shard == "fsdp" and chosen == plan("fsdp") and lines == LINES_7B_8X48
    shard, _, lines = choose(capacity=1000)
    assert shard == "ddp" and lines == [LINES_7B_8X48[0].replace("48 GB", "1000 GB").removesuffix("  -> does not fit")]
    assert choose(["zero1"], capacity=90)[0] == "zero1"  # only the candidates given are tried (80 GB: too close, see below)


def test_fits_within_headroom_of_the_device():
    total = sum(plan("ddp").values())
    assert HEADROOM == 0.9
    assert choose(capacity=total / 0.9 * (1 + 1e-9))[0] == "ddp"
    assert choose(capacity=total / 0.9 * (1 - 1e-6))[0] == "zero1"


def test_none_fits():
    shard, last, lines = choose(capacity=12)
    assert shard is None and last == plan("fsdp") and len(lines) == 3 and all(line.endswith("-> does not fit") for line in lines)


def test_fp32_plans_four_byte_activations_and_no_copies():
    shard, chosen, lines = choose(["ddp"], capacity=1000, world_size=1, dtype_name="fp32")
    assert chosen == plan("ddp", 1, act_bytes=4) and "(cpu, fp32," in lines[0]


def test_loss_gradient_and_workspace_are_counted():
    """The chunked loss holds an fp32 [V, C] gradient (plus [tokens, C]) until backward: 2 GB for a 128k vocabulary at
    C = 4096; and WORKSPACE_GB stays free for what no formula counts (CUDA context, cuBLAS / NCCL, fragmentation)."""
    assert plan("ddp")["loss_grad"] == pytest.approx((4 * V * C + 2048 * C * 2) / GB, rel=1e-12)
    big = LlamaConfig.from_hf({"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                               "num_attention_heads": 32, "vocab_size": 128256, "max_position_embeddings": 8192})
    assert memory_plan(big, 8e9, "fsdp", 8, **RUN, act_bytes=2)["loss_grad"] == pytest.approx(1.97, abs=0.01)
    assert WORKSPACE_GB == 2.0 and plan("fsdp")["workspace"] == WORKSPACE_GB


def test_auto_keeps_clear_of_the_limit_on_80gb_cards():
    """LLaMA-7B on 8 x 80 GB (79.6 GB as CUDA reports it): ZeRO-1's weights, grads, optimizer and activations alone
    (70.2 GB) fit under the 71.7 GB allowed, but not with the loss gradient and the workspace: auto goes on to FSDP."""
    zero1 = plan("zero1")
    old = sum(v for k, v in zero1.items() if k not in ("loss_grad", "workspace"))
    assert old <= HEADROOM * 79.6 < sum(zero1.values()) and HEADROOM * 79.6 - old < WORKSPACE_GB
    assert choose(capacity=79.6)[0] == "fsdp"
