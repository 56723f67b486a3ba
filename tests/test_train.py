"""train.py and prepare_data.py on CPU: tiny models, synthetic token files, gloo for the distributed runs.

Single-process runs execute train.py in this process (runpy: no second torch import); the
distributed ones go through `torchrun --nproc_per_node 2` (about 15 s each, mostly start-up)."""
import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from load_hf_weights import load_model
from model import Llama, LlamaConfig
from prepare_data import TokenDocs, write_token_file

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "train.py")
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "tie_word_embeddings": True}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A token file of 60 learnable documents (arithmetic progressions mod 64, 100..700 tokens) and a config."""
    d = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    docs = [((rng.integers(64) + rng.integers(1, 8) * np.arange(n)) % 64).tolist() for n in rng.integers(100, 700, 60)]
    write_token_file(docs, d / "syn", vocab_size=64, min_tokens=32)
    (d / "cfg.json").write_text(json.dumps(TINY))
    return d


def common(files, **over):
    opts = {"config": files / "cfg.json", "data": files / "syn", "train-len": 32, "target-len": 128, "global-batch": 8,
            "micro-batch": 2, "max-steps": 12, "lr": 3e-3, "warmup": 3, "eval-every": 4, "eval-docs": 2, "ckpt-every": 4, **over}
    return [a for k, v in opts.items() if v is not None for a in (f"--{k}", str(v))]


def run(*argv):
    """train.py in this process; returns its SystemExit code (None when it simply ends)."""
    old = sys.argv
    sys.argv = ["train.py", *map(str, argv)]
    try:
        runpy.run_path(TRAIN, run_name="__main__")
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = old


def torchrun(*argv, nproc=2):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), TRAIN, *map(str, argv)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def losses(out_dir):
    """{(step, "train"|"eval"): loss} from log.jsonl."""
    recs = [json.loads(line) for line in open(Path(out_dir) / "log.jsonl")]
    return {(r["step"], "train" if "loss" in r else "eval"): r.get("loss", r.get("eval_loss")) for r in recs}


def assert_same(a, b, tol):
    assert a.keys() == b.keys()
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst <= tol, f"losses differ by up to {worst:.2e}: {a} vs {b}"


@pytest.fixture(scope="module")
def single(files):
    """The reference run: one process, 4 micro-steps of 2 sequences per step, 12 steps."""
    out = files / "single"
    assert run(*common(files), "--out-dir", out) is None
    return out


def test_loss_falls(files):
    out = files / "falls"
    opts = {"max-steps": 24, "global-batch": 16, "micro-batch": 8, "lr": 1e-2, "eval-every": 12}
    assert run(*common(files, **opts), "--out-dir", out) is None
    log = losses(out)
    train = [log[(s, "train")] for s in range(1, 25)]
    assert np.mean(train[-4:]) < np.mean(train[:4]) - 1.0, train
    assert log[(24, "eval")] < log[(0, "eval")] - 1.0  # held-out windows of Lt tokens, positions 0..Lt-1
    rec = [json.loads(line) for line in open(out / "log.jsonl")][1]  # [0] is the eval at step 0
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_gb", "step_time"} <= rec.keys()


def test_final_hf_folder_is_the_trained_model(single):
    ckpt = torch.load(single / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 12 and ckpt["examples_seen"] == 96
    trained = Llama(LlamaConfig(**{k: v for k, v in ckpt["config"].items()}))
    trained.load_state_dict(ckpt["model"])
    loaded = load_model(single / "hf")
    assert loaded.config.max_position_embeddings == 128 and loaded.config.rope_scaling["rope_type"] == "linear"
    x = torch.randint(0, 64, (2, 100))
    pos = torch.cat([torch.arange(50), torch.arange(70, 120)])  # PoSE-style skipped positions
    torch.testing.assert_close(loaded(x, position_ids=pos), trained(x, position_ids=pos), rtol=0, atol=0)


def test_stop_and_resume_equals_uninterrupted(files, single):
    out = files / "resumed"
    assert run(*common(files), "--out-dir", out, "--stop-after", 6) is None
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 6 and not (out / "hf").exists()
    assert run(*common(files), "--out-dir", out, "--resume") is None
    got = losses(out)
    del got[(6, "eval")]  # the stopped run also evaluated where it stopped
    assert_same(got, losses(single), tol=0)


def test_sigkill_and_resume_equals_uninterrupted(files):
    """Killed at an arbitrary moment (maybe mid-checkpoint), resumed from whatever ckpt.pt holds."""
    args = common(files, **{"max-steps": 24, "ckpt-every": 2, "eval-every": 12})
    ref, out = files / "ref24", files / "killed"
    assert run(*args, "--out-dir", ref) is None
    p = subprocess.Popen([sys.executable, TRAIN, *args, "--out-dir", str(out)], cwd=REPO, stdout=subprocess.DEVNULL,
                         env=dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads())))  # same sums as in here
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if (out / "log.jsonl").exists() and sum(1 for _ in open(out / "log.jsonl")) >= 6:  # eval 0, steps 1..5
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    step = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert 0 < step < 24
    assert run(*args, "--out-dir", out, "--resume") is None
    assert_same(losses(out), losses(ref), tol=0)


def test_activation_checkpointing_same_gradients():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=64, max_position_embeddings=128, **TINY))
    model.init_weights()
    x = torch.randint(0, 64, (2, 32))
    pos = torch.cat([torch.arange(10), torch.arange(60, 82)])
    grads = []
    for ac in (False, True):
        model.zero_grad()
        model.activation_checkpointing = ac
        model(x, position_ids=pos, labels=x).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=0, atol=0, msg=n)


def test_ac_flag_same_losses(files, single):
    out = files / "ac"
    assert run(*common(files, **{"max-steps": 12}), "--out-dir", out, "--ac") is None
    assert_same(losses(out), losses(single), tol=1e-6)


@pytest.mark.parametrize("method", ["full", "randpos", "clex", "plain"])
def test_baselines_run(files, method):
    out = files / method
    assert run(*common(files, **{"max-steps": 3, "eval-every": 0}), "--method", method, "--out-dir", out) is None
    assert len(losses(out)) == 3


def test_clex_trains_its_ode_and_saves_it(files):
    """--method clex: the ODE's W_down leaves zero (gradients flow through the solver), the saved
    folder says clex with max_factor Lt/Lc, loads back, and a resumed run equals an uninterrupted one."""
    out, cut = files / "clex-full", files / "clex-cut"
    argv = [*common(files, **{"max-steps": 6, "eval-every": 0, "ckpt-every": 3}), "--method", "clex"]
    assert run(*argv, "--out-dir", out) is None
    model = load_model(out / "hf")
    assert model.config.rope_scaling["rope_type"] == "clex" and model.config.rope_scaling["max_factor"] == 4
    assert model.clex_layer.proj_func.ode_down_proj.abs().sum() > 0
    assert run(*argv, "--out-dir", cut, "--stop-after", 3) is None
    assert run(*argv, "--out-dir", cut, "--resume") is None
    assert_same(losses(cut), losses(out), tol=1e-6)


@pytest.mark.parametrize("method", ["pose", "plain", "full"])
def test_text_windows_come_from_anywhere_in_a_document(tmp_path, method):
    """One 1,000-token document (token id = offset): windows reach its end, not only its first 5 Lc
    tokens (the official code's cut, which would leave a corpus of a few long texts mostly unseen)."""
    write_token_file([list(range(1000))], tmp_path / "one", vocab_size=1000, min_tokens=32)
    (tmp_path / "cfg.json").write_text(json.dumps(TINY))
    old, sys.argv = sys.argv, ["train.py", *map(str, common(tmp_path, **{"data": tmp_path / "one", "max-steps": 0,
                                                                         "eval-every": 0})), "--method", method,
                               "--out-dir", str(tmp_path / "out")]
    try:
        get_example = runpy.run_path(TRAIN, run_name="__main__")["get_example"]
    finally:
        sys.argv = old
    windows = [get_example(e) for e in range(200)]
    assert max(int(x.max()) for x, _, _ in windows) > 900 and min(int(x.min()) for x, _, _ in windows) < 100
    for x, pos, labels in windows:
        assert (labels == x).all() and len(x) == (128 if method == "full" else 32)
        if method == "pose":  # content skips stay inside a 5 Lc span, positions inside Lt
            assert int(x.max() - x.min()) < 5 * 32 and int(pos.max()) < 128


def test_clex_from_a_checkpoint_repeats_exactly(files, single):
    """Switching a plain checkpoint to CLEX creates the ODE's weights from --seed: two runs, equal losses."""
    argv = [*common(files, **{"max-steps": 4, "eval-every": 0, "config": None}), "--init-from", single / "hf", "--method", "clex"]
    for out in ("clex-a", "clex-b"):
        assert run(*argv, "--out-dir", files / out) is None
    assert losses(files / "clex-a") == losses(files / "clex-b")


@pytest.mark.parametrize("orig_len, factor", [(None, 4.0), (32, 8.0)])
def test_rope_factor_stretches_the_checkpoints_window(files, tmp_path, orig_len, factor):
    """A checkpoint pretrained at 64 tokens, fine-tuned at Lc = 32 to Lt = 256: s = Lt / 64 = 4 (SmolLM2 8k at 1k -> 16k
    is s = 2, not 16), unless --orig-len says otherwise; the saved folder carries L0 and max_position_embeddings = Lt."""
    from load_hf_weights import save_model
    base = Llama(LlamaConfig.from_hf({"model_type": "llama", "vocab_size": 64, "max_position_embeddings": 64, **TINY}))
    base.init_weights()
    save_model(base, tmp_path / "base")
    argv = [*common(files, **{"max-steps": 1, "eval-every": 0, "config": None, "target-len": 256, "orig-len": orig_len}),
            "--init-from", tmp_path / "base", "--rope", "yarn", "--out-dir", tmp_path / "out"]
    assert run(*argv) is None
    cfg = json.loads((tmp_path / "out/hf/config.json").read_text())
    assert cfg["max_position_embeddings"] == 256
    rope = cfg["pose_nano_rope_scaling"]
    assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"]) == ("yarn", factor, orig_len or 64)


def test_target_must_exceed_the_checkpoints_window(files, tmp_path, capsys):
    from load_hf_weights import save_model
    base = Llama(LlamaConfig.from_hf({"model_type": "llama", "vocab_size": 64, "max_position_embeddings": 128, **TINY}))
    save_model(base, tmp_path / "base")
    assert run(*common(files, **{"config": None}), "--init-from", tmp_path / "base", "--out-dir", tmp_path / "out") == 2
    assert "--target-len 128 must be greater than the checkpoint's window 128 (--orig-len)" in capsys.readouterr().err


def test_torchrun_ddp_equals_single_process(files, single):
    """2 ranks x 2 micro-steps x 2 sequences == 1 rank x 4 micro-steps x 2 sequences."""
    out = files / "ddp"
    stdout = torchrun(*common(files), "--out-dir", out, "--shard", "ddp")
    assert "2 ranks x 2 micro-steps x 2 = 8 sequences" in stdout
    assert_same(losses(out), losses(single), tol=1e-5)


@pytest.mark.parametrize("shard", ["zero1", "fsdp"])
def test_sharded_stop_resume_equals_single_process(files, single, shard):
    """ZeRO-1 (ZeroRedundancyOptimizer) and FSDP2 (fully_shard) on gloo: stopped at step 6, resumed,
    and still the single-process losses; the final HF folder holds the same model."""
    out = files / shard
    torchrun(*common(files), "--out-dir", out, "--shard", shard, "--stop-after", 6)
    torchrun(*common(files), "--out-dir", out, "--shard", shard, "--resume")
    got = losses(out)
    del got[(6, "eval")]
    assert_same(got, losses(single), tol=1e-5)
    x = torch.randint(0, 64, (1, 64))
    torch.testing.assert_close(load_model(out / "hf")(x), load_model(single / "hf")(x), rtol=1e-4, atol=1e-5)


LLAMA_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "vocab_size": 32000, "max_position_embeddings": 2048, "torch_dtype": "float16"}


@pytest.mark.parametrize("shard, code, says", [("ddp", 1, "does not fit"), ("zero1", 1, "does not fit"),
                                               ("fsdp", 0, "using --shard fsdp"), ("auto", 0, "using --shard fsdp")])
def test_memory_plan_7b_on_8x48gb(tmp_path, monkeypatch, capsys, shard, code, says):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_7B))  # the plan needs the config only
    write_token_file([[1] * 16384] * 10, tmp_path / "long", vocab_size=32000)
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert run("--init-from", tmp_path, "--data", tmp_path / "long", "--dry-run", "--device-memory", 48, "--dtype", "bf16",
               "--shard", shard) == code
    out = capsys.readouterr()
    assert says in out.out + out.err
    assert "6.74B params" in out.out


@pytest.mark.parametrize("argv, says", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--data", "/nonexistent/data"], "/nonexistent/data.bin not found: make it with `python prepare_data.py"),
    (["--global-batch", 10, "--micro-batch", 4], "--global-batch 10 is not divisible by 1 ranks x --micro-batch 4"),
    (["--target-len", 32], "--target-len 32 must be greater than --train-len 32"),
    (["--num-chunks", 0], "--num-chunks must be in 1..32"),
    (["--resume", "--out-dir", "/nonexistent/out"], "/nonexistent/out/ckpt.pt not found"),
    (["--shard", "fsdp"], "launch with torchrun"),
    (["--dtype", "fp16", "--device", "cpu"], "--dtype fp16 is for CUDA"),
    (["--config", "/nonexistent.json"], "--config /nonexistent.json: no such file"),
])
def test_bad_input_stops_before_any_work(files, tmp_path, capsys, argv, says):
    assert run(*common(files, **{"out-dir": tmp_path / "out"}), *argv) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_defaults_say_what_to_prepare(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no cache/llama-7b here
    assert run() == 2
    assert "checkpoint cache/llama-7b/config.json not found: pass --init-from DIR" in capsys.readouterr().err
    (tmp_path / "cache/llama-7b").mkdir(parents=True)
    (tmp_path / "cache/llama-7b/config.json").write_text(json.dumps(LLAMA_7B))
    assert run() == 2
    assert "data cache/data/pile.bin not found" in capsys.readouterr().err


def test_batch_must_divide_across_ranks(files, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert run(*common(files)) == 2
    assert "--global-batch 8 is not divisible by 3 ranks x --micro-batch 2" in capsys.readouterr().err


# ----------------------------------------------------------------------------- prepare_data.py
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly numbers".split()
TEXTS = [" ".join(np.random.default_rng(i).choice(WORDS, size=n)) + "." for i, n in enumerate((400, 5, 300, 250, 2))]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A SentencePiece BPE model (vocab 60, BOS = 1) trained on the fly."""
    spm = pytest.importorskip("sentencepiece")
    d = tmp_path_factory.mktemp("sp")
    (d / "corpus.txt").write_text("\n".join(TEXTS))
    spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "sp"), vocab_size=60,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, minloglevel=2)
    return d / "sp.model"


def prepare(*argv, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "prepare_data.py"), *map(str, argv)], capture_output=True, text=True, cwd=cwd)


def test_prepare_data_with_sentencepiece(tmp_path, sp_model):
    import sentencepiece as spm
    texts = TEXTS
    (tmp_path / "in").mkdir()
    (tmp_path / "in/a.txt").write_text(texts[0])
    (tmp_path / "in/b.txt").write_text(texts[1])  # too short: dropped
    (tmp_path / "in/more.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts[2:])))
    p = prepare("--tokenizer", sp_model, "--out", tmp_path / "data/ds", "--min-tokens", 40, tmp_path / "in")
    assert p.returncode == 0, p.stderr
    assert "3 documents" in p.stdout and "dropped 2 documents shorter than 40 tokens" in p.stdout
    docs = TokenDocs(tmp_path / "data/ds")
    assert docs.tokens.dtype == np.uint16 and docs.meta["dropped_short"] == 2 and docs.vocab_size == 60
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    for doc, text in zip(docs, [texts[0], texts[2], texts[3]]):  # a.txt, then the long jsonl lines, in order
        assert doc.tolist() == [1] + sp.encode(text)
    assert sorted(os.listdir(tmp_path / "data")) == ["ds.bin", "ds.idx.npy", "ds.json"]  # no temporary files left


def test_prepare_data_bad_input(tmp_path, sp_model):
    (tmp_path / "bad.jsonl").write_text('{"body": "no text field"}\n')
    (tmp_path / "empty").mkdir()
    for argv, says in [([tmp_path / "missing.txt"], "missing.txt: no such file or folder"),
                       ([tmp_path / "empty"], "no .txt or .jsonl files in"),
                       ([tmp_path / "bad.jsonl"], "bad.jsonl:1: expected a JSON object with a 'text' field")]:
        p = prepare("--tokenizer", sp_model, "--out", tmp_path / "o", *argv)
        assert p.returncode != 0 and says in p.stderr, p.stderr
    assert not list(tmp_path.glob("o.*")), "a failed run must leave no output behind"


def test_token_file_round_trip_uint32(tmp_path):
    docs = [[70000, 1, 2, 3], [5] * 10, [9]]
    meta = write_token_file(iter(docs), tmp_path / "big", vocab_size=80000, min_tokens=2)
    assert meta["documents"] == 2 and meta["dropped_short"] == 1 and meta["dtype"] == "uint32"
    t = TokenDocs(tmp_path / "big")
    assert [d.tolist() for d in t] == docs[:2] and t.lengths.tolist() == [4, 10]
