"""tasks.py (the demo's copy and passkey windows), train.py's --mix / --method plain, and demo.py --quick."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eval_passkey import FILLER, build_prompt, prompt_text
from model import IGNORE_INDEX
from tasks import PasskeyWindows, copy_window, filler
from train_args import parse_mix
from tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(REPO / "data" / "tokenizer.model")


def test_parse_mix():
    assert parse_mix("copy=1,passkey=1,text=2") == {"copy": 0.25, "passkey": 0.25, "text": 0.5}
    assert parse_mix("text=1,copy=0") == {"text": 1.0}
    for bad in ("tex=1", "copy", "copy=-1", "copy=0,text=0"):
        with pytest.raises(ValueError):
            parse_mix(bad)


def test_flags_parse_without_torch():
    # train_args promises a typo in the flags fails at once: --mix is parsed before torch is imported
    code = ("import sys, train_args; sys.argv = ['train.py', '--mix', 'copy=1,text=1', '--mix-from', '5:text=1']; "
            "args = train_args.parse_args('')[1]; print(args.mixes, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "False" and "5: {'text': 1.0}" in out


def test_copy_window():
    rng = np.random.default_rng(0)
    for length in (7, 128, 513):
        x, y = copy_window(rng, length, vocab_size=50)
        period = int((y == IGNORE_INDEX).sum())
        assert len(x) == len(y) == length and 10 <= period <= 30 or period == length
        assert x.min() >= 3 and x.max() < 50
        assert (x[period:] == x[:length - period]).all() and (y[period:] == x[period:]).all()


def test_filler_is_a_prefix_of_the_eval_filler():
    for n in range(12):
        assert (FILLER * 3).startswith(filler(n))
    assert filler(10) == FILLER * 2


@pytest.mark.parametrize("length", [128, 200, 512])
def test_passkey_window_fits_and_scores_the_answer(tok, length):
    make, rng, intros = PasskeyWindows(tok), np.random.default_rng(1), 0
    for _ in range(20):
        x, y = make(rng, length, max_gap=length)
        n = int((y != IGNORE_INDEX).sum())
        assert len(x) == len(y) == length and length - 2 * make.per_sentence - 8 < n <= length
        assert (x[n:] == tok.eos_id).all() and (y[:n] == x[:n]).all() and x[0] == tok.bos_id
        text = tok.decode(x[:n].tolist())
        key = text.split("The pass key is ")[1][:5]
        assert key.isdigit() and text.endswith(f"What is the pass key? The pass key is {key}.")
        intros += text.startswith("There is an important info")
    assert 5 <= intros <= 15  # half the windows leave the intro out


def test_passkey_prompt_shorter_than_the_window(tok):
    """prompt_len: the prompt and its answer fill at most that many tokens of the window, padding after."""
    make, rng = PasskeyWindows(tok), np.random.default_rng(3)
    for prompt_len in (128, 300):
        x, y = make(rng, 512, max_gap=512, prompt_len=prompt_len)
        n = int((y != IGNORE_INDEX).sum())
        assert len(x) == 512 and prompt_len - 2 * make.per_sentence - 8 < n <= prompt_len and (x[n:] == tok.eos_id).all()
        assert tok.decode(x[:n].tolist()).split("The pass key is")[-1].strip(" .").isdigit()


def test_passkey_window_is_the_eval_prompt_plus_answer(tok):
    """With whole fillers the training text is eval_passkey's prompt, so the model learns the eval format."""
    make = PasskeyWindows(tok)
    assert make.text(10, 5, 12345) == prompt_text(2, 1, 12345) + " 12345."
    prompt = build_prompt(tok, 512, 0.5, 12345)
    assert make.encode(0, 0, 12345)[:1] == prompt[:1]


def test_passkey_gap_is_bounded(tok):
    make, rng = PasskeyWindows(tok), np.random.default_rng(2)
    for max_gap in (20, 100):
        for _ in range(20):
            x, y = make(rng, 512, max_gap)
            text = tok.decode(x[y != IGNORE_INDEX].tolist())
            after = text.split("is the pass key.")[1].split("What is")[0]
            assert len(tok.encode(after, bos=False)) <= max_gap + 2
    gaps = set()
    for _ in range(30):
        x, y = make(rng, 512, 512)
        gaps.add(tok.decode(x[y != IGNORE_INDEX].tolist()).split("is the pass key.")[1].count("."))
    assert max(gaps) > 40 and min(gaps) < 20  # the whole window is used when allowed


def test_passkey_window_too_short(tok):
    with pytest.raises(ValueError, match="raise --train-len"):
        PasskeyWindows(tok)(np.random.default_rng(0), 40, 40)


def test_train_with_a_mix_and_plain_method(tmp_path):
    """--method plain on copy + passkey windows, switching to text: runs, logs, saves a base that
    a PoSE run can extend; the loss of the copy/passkey windows falls."""
    data = tmp_path / "d"
    subprocess.run([sys.executable, "prepare_data.py", "--tokenizer", "data/tokenizer.model", "--out", data,
                    "--min-tokens", "128", "data/heldout"], cwd=REPO, check=True, capture_output=True)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 2, "tie_word_embeddings": True}))
    base = tmp_path / "base"
    common = ["--data", data, "--train-len", "128", "--global-batch", "8", "--micro-batch", "4", "--no-ac",
              "--eval-every", "0", "--warmup", "2"]
    cmd = [sys.executable, "train.py", *common, "--config", cfg, "--out-dir", base, "--method", "plain", "--max-steps", "30",
           "--lr", "1e-2", "--mix", "copy=0.5,passkey=0.5", "--mix-from", "20:text=1", "--gap-warmup", "10"]
    out = subprocess.run(list(map(str, cmd)), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    log = [json.loads(line) for line in open(base / "log.jsonl")]
    assert len(log) == 30 and np.mean([r["loss"] for r in log[15:20]]) < np.mean([r["loss"] for r in log[:5]]) - 1
    hf = json.loads((base / "hf" / "config.json").read_text())
    assert hf["max_position_embeddings"] == 128 and not hf.get("rope_scaling")
    assert (base / "hf" / "tokenizer.model").is_file()
    cmd = [sys.executable, "train.py", *common, "--init-from", base / "hf", "--out-dir", tmp_path / "pose",
           "--target-len", "512", "--rope", "yarn", "--max-steps", "2", "--mix", "copy=1,passkey=1,text=1"]
    out = subprocess.run(list(map(str, cmd)), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    hf = json.loads((tmp_path / "pose" / "hf" / "config.json").read_text())
    assert hf["max_position_embeddings"] == 512
    bad = subprocess.run(list(map(str, cmd[:-1])) + ["copy=1,typo=2"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "typo" in bad.stderr and "TASK=WEIGHT" in bad.stderr
    bad = subprocess.run(list(map(str, cmd)) + ["--passkey-min-len", "129"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "--passkey-min-len 129: expected 1..128" in bad.stderr


def test_demo_quick(tmp_path):
    """The whole demo pipeline on a few steps and trials: every variant x length in the JSON, costs, plots."""
    out = tmp_path / "demo.json"
    p = subprocess.run([sys.executable, "demo.py", "--quick", "--work-dir", str(tmp_path / "w"), "--out", str(out),
                        "--workers", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    variants = {r["variant"] for r in res["results"]}
    assert len(variants) == 9 and {"PoSE yarn", "no-skip control yarn", "CREAM yarn", "full-length yarn",
                                   "base (plain RoPE)"} <= variants
    # the control is PoSE's run with the skips removed and nothing else: one chunk, the same method, rope and seed
    run_args = {m: torch.load(tmp_path / "w" / m / "ckpt.pt", weights_only=True)["args"] for m in ("pose-yarn", "noskip-yarn")}
    assert run_args["pose-yarn"]["num_chunks"] == 2 and run_args["noskip-yarn"]["num_chunks"] == 1
    assert {k: v for k, v in run_args["pose-yarn"].items() if k not in ("num_chunks", "out_dir")} == \
        {k: v for k, v in run_args["noskip-yarn"].items() if k not in ("num_chunks", "out_dir")}
    assert {(r["variant"], r["length"]) for r in res["results"]} == {(v, L) for v in variants for L in (128, 256)}
    for r in res["results"]:
        assert 0 <= r["passkey"] <= 1 and r["ppl"] > 1
        trials = r["passkey_trials_by_depth"]  # per-depth accuracy kept for every model and length
        assert sum(trials.values()) == 3 and r["passkey"] == pytest.approx(
            sum(r["passkey_by_depth"][d] * n for d, n in trials.items()) / 3)
    assert set(res["passkey_by_depth_all_lengths"]) == variants
    assert res["step_costs"]["cream-yarn"]["step_time_s"] > 0
    assert res["step_costs"]["pose-yarn"]["step_time_s"] > 0 and res["settings"]["quick"]
    assert "passkey accuracy" in p.stdout
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "demo_passkey.png").stat().st_size > 1000 and (tmp_path / "demo_depth.png").stat().st_size > 1000
    except ImportError:
        pass
