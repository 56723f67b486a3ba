"""train.py and prepare_data.py on CPU: tiny models, synthetic token files, gloo for the distributed runs.

Single-process runs execute train.py in this process (runpy: no second torch import); the
distributed ones go through `torchrun --nproc_per_node 2` (about 15 s each, mostly start-up)."""
import json
import math
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from load_hf_weights import load_model
from memory_plan import memory_plan
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


def log_records(out_dir):
    """log.jsonl's records, checked to hold one line per step and per eval, in the order they happen
    (train step s, then the eval at s): a resumed run must have dropped the lines of the steps it redid."""
    recs = [json.loads(line) for line in open(Path(out_dir) / "log.jsonl")]
    order = [(r["step"], "loss" not in r) for r in recs]  # train lines sort before the eval at the same step
    assert order == sorted(set(order)), f"log.jsonl lines repeated or out of order: {order}"
    return recs


def losses(out_dir):
    """{(step, "train"|"eval"): loss} from log.jsonl (see log_records)."""
    return {(r["step"], "train" if "loss" in r else "eval"): r.get("loss", r.get("eval_loss")) for r in log_records(out_dir)}


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
    with open(out / "log.jsonl", "a") as f:  # as a run killed after logging steps 7-8 but before their checkpoint leaves it
        f.writelines(json.dumps({"step": s, "loss": 9.9, "lr": 0.0}) + "\n" for s in (7, 8))
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


def test_no_ac_same_losses(files, single):
    """--no-ac gives the losses of the reference run, which checkpoints (--ac is the default)."""
    out = files / "no-ac"
    assert run(*common(files), "--out-dir", out, "--no-ac") is None
    assert_same(losses(out), losses(single), tol=0)


@pytest.mark.parametrize("flag", ["--ac", "--no-ac"])
def test_ac_flag_recomputes_blocks_in_backward(files, tmp_path, monkeypatch, flag):
    """Equal losses are also what no checkpointing gives: count the forward calls of each block of
    train.py's own model. With --ac every block runs again during backward, once per micro-step."""
    import model as model_module
    calls, forward = [], model_module.Block.forward

    def counted(self, *a, **k):
        calls.append((self.self_attn.layer_idx, torch._C._current_graph_task_id() >= 0))  # >= 0: inside backward
        return forward(self, *a, **k)
    monkeypatch.setattr(model_module.Block, "forward", counted)
    assert run(*common(files, **{"max-steps": 1, "eval-every": 0}), flag, "--out-dir", tmp_path) is None
    micro_steps = 4  # global batch 8 / micro-batch 2
    for layer in (0, 1):
        assert calls.count((layer, False)) == micro_steps, calls
        assert calls.count((layer, True)) == (micro_steps if flag == "--ac" else 0), calls


def test_resume_refuses_settings_that_change_the_run(files, tmp_path):
    argv = common(files, **{"max-steps": 2, "eval-every": 0})
    assert run(*argv, "--out-dir", tmp_path, "--stop-after", 1) is None
    before = (tmp_path / "ckpt.pt").read_bytes(), (tmp_path / "log.jsonl").read_text()
    changed = common(files, **{"max-steps": 2, "eval-every": 0, "lr": 1e-3, "seed": 7})
    assert run(*changed, "--out-dir", tmp_path, "--resume") == (
        "error: --resume with settings that change the run: --lr 0.003 -> 0.001, --seed 1337 -> 7; "
        "use the checkpoint's or a new --out-dir")
    assert ((tmp_path / "ckpt.pt").read_bytes(), (tmp_path / "log.jsonl").read_text()) == before
    # how the batch is split is not a setting of the run: 2 micro-steps of 4 instead of 4 of 2
    assert run(*common(files, **{"max-steps": 2, "eval-every": 0, "micro-batch": 4}), "--out-dir", tmp_path, "--resume") is None
    assert [k for k in losses(tmp_path)] == [(1, "train"), (2, "train")]


@pytest.fixture(scope="module")
def stopped(files):
    """A run stopped after its first step (ckpt.pt and log.jsonl written), and a second copy of its data."""
    out = files / "stopped"
    assert run(*common(files, **{"max-steps": 2, "eval-every": 0}), "--out-dir", out, "--stop-after", 1) is None
    for ext in (".bin", ".idx.npy", ".json"):
        shutil.copy(str(files / "syn") + ext, str(files / "syn-copy") + ext)
    return out


# every setting the --resume guard keeps, with a value other than the stopped run's
CHANGED = {"method": "full", "train-len": 16, "target-len": 256, "orig-len": 64, "num-chunks": 3, "rope": "ntk",
           "global-batch": 4, "max-steps": 3, "lr": 1e-3, "min-lr": 1e-5, "warmup": 1, "decay": "cosine",
           "weight-decay": 0.1, "seed": 7, "data": "syn-copy", "mix": "text=0.5,copy=0.5", "mix-from": "1:text=1",
           "gap-warmup": 5, "cream-sigma": 2.0}


@pytest.mark.parametrize("flag", CHANGED)
def test_resume_refuses_each_setting_that_changes_the_run(files, stopped, flag):
    value = files / "syn-copy" if flag == "data" else CHANGED[flag]
    before = (stopped / "ckpt.pt").read_bytes(), (stopped / "log.jsonl").read_text()
    code = run(*common(files, **{"max-steps": 2, "eval-every": 0, flag: value}), "--out-dir", stopped, "--resume")
    assert isinstance(code, str) and code.startswith("error: --resume with settings that change the run: "), code
    named = code.split(": ")[2].split(";")[0]
    assert named.startswith(f"--{flag} ") and ", --" not in named, code  # that flag, and only it
    assert ((stopped / "ckpt.pt").read_bytes(), (stopped / "log.jsonl").read_text()) == before


def test_preset_tiny(files, tmp_path, monkeypatch, capsys):
    """The docstring's CPU quick start, `python train.py --preset tiny`, cut to 2 steps by a flag (flags win):
    data from cache/data/tiny, a fresh 4-layer model, Lc 128 -> Lt 512, AC off, written to out/tiny."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache/data").mkdir(parents=True)
    for ext in (".bin", ".idx.npy", ".json"):
        shutil.copy(str(files / "syn") + ext, tmp_path / f"cache/data/tiny{ext}")
    assert run("--preset", "tiny", "--max-steps", 2) is None
    out = capsys.readouterr().out
    assert "AC off" in out and "1 ranks x 2 micro-steps x 8 = 16 sequences per step" in out
    assert "pose training, 128 -> 512 tokens, rope linear (factor 4.0, L0 128)" in out
    cfg = json.loads((tmp_path / "out/tiny/hf/config.json").read_text())
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
            cfg["tie_word_embeddings"], cfg["vocab_size"], cfg["max_position_embeddings"]) == (128, 512, 4, 4, True, 64, 512)
    log = log_records(tmp_path / "out/tiny")
    assert [(r["step"], r.get("lr")) for r in log] == [(0, None), (1, 2e-3 / 20), (2, 2e-3 * 2 / 20), (2, None)]  # warm-up 20
    assert torch.load(tmp_path / "out/tiny/ckpt.pt", weights_only=True)["step"] == 2


def test_too_few_eval_documents(files, tmp_path):
    n = int((TokenDocs(files / "syn").lengths >= 128).sum())
    assert run(*common(files, **{"eval-docs": 100}), "--out-dir", tmp_path / "out") == (
        f"error: the eval loss needs 100 documents of >= 128 tokens, found {n}: prepare longer documents, "
        f"lower --eval-docs, or pass --eval-every 0")
    assert not (tmp_path / "out").exists()


def test_no_training_document(files, tmp_path):
    """Two documents of >= Lt tokens, both held out for the eval loss: nothing left to train on."""
    write_token_file([list(range(200)), list(range(150))], tmp_path / "two", vocab_size=64)
    assert run(*common(files, **{"data": tmp_path / "two"}), "--out-dir", tmp_path / "out") == (
        f"error: {tmp_path / 'two'} has no training document of >= 32 tokens (after holding out 2 for eval)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_lr_schedule_logged(files, tmp_path, decay):
    """--warmup 3 steps up to --lr 3e-3, then --decay over the other 8 steps towards --min-lr 1e-4."""
    argv = common(files, **{"max-steps": 11, "global-batch": 2, "eval-every": 0, "min-lr": 1e-4, "decay": decay})
    stepped = []  # the lr AdamW steps with, not only the one logged
    handle = register_optimizer_step_pre_hook(lambda opt, a, kw: stepped.append(opt.param_groups[0]["lr"]))
    try:
        assert run(*argv, "--out-dir", tmp_path) is None
    finally:
        handle.remove()
    lr, low = 3e-3, 1e-4
    warm = [lr * s / 3 for s in (1, 2, 3)]
    down = {"linear": lambda r: 1 - r, "cosine": lambda r: (1 + math.cos(math.pi * r)) / 2}[decay]
    # steps 3..10 decay over ratios 0/8..7/8: the last step's lr is 1/8 of the way above --min-lr, not --min-lr
    expected = warm + [low + down(i / 8) * (lr - low) for i in range(8)]  # the line of step s + 1 has get_lr(s)
    assert [r["lr"] for r in log_records(tmp_path)] == pytest.approx(expected, rel=1e-12)
    assert stepped == pytest.approx(expected, rel=1e-12)
    assert expected[3 + 4] == pytest.approx((lr + low) / 2)  # half-way down, both schedules are at the mean
    assert expected[3 + 2] == pytest.approx(low + (0.75 if decay == "linear" else 0.8535534) * (lr - low))


@pytest.mark.parametrize("clip", [0.02, 0])
def test_grad_clip(files, tmp_path, clip):
    """The gradient AdamW steps with has norm min(logged norm, --grad-clip); --grad-clip 0 leaves it alone."""
    stepped = []

    def before_step(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        stepped.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
    handle = register_optimizer_step_pre_hook(before_step)
    try:
        assert run(*common(files, **{"max-steps": 3, "eval-every": 0}), "--grad-clip", clip, "--out-dir", tmp_path) is None
    finally:
        handle.remove()
    logged = [r["grad_norm"] for r in log_records(tmp_path)]
    assert min(logged) > 2 * 0.02, logged  # so that clipping at 0.02 always acts
    assert stepped == pytest.approx([min(n, clip) if clip else n for n in logged], rel=1e-5)


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
        get_example = runpy.run_path(TRAIN, run_name="__main__")["examples"].example
    finally:
        sys.argv = old
    windows = [get_example(e) for e in range(200)]
    assert max(int(x.max()) for x, _, _ in windows) > 900 and min(int(x.min()) for x, _, _ in windows) < 100
    for x, pos, labels in windows:
        assert (labels == x).all() and len(x) == (128 if method == "full" else 32)
        if method == "pose":  # content skips stay inside a 5 Lc span, positions inside Lt
            assert int(x.max() - x.min()) < 5 * 32 and int(pos.max()) < 128


def test_corrupt_init_from_is_one_line(files, single, tmp_path):
    """A truncated model.safetensors under --init-from: an error naming the file, nothing trained or written."""
    shutil.copytree(single / "hf", tmp_path / "base")
    weights = tmp_path / "base" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code = run(*common(files, **{"config": None}), "--init-from", tmp_path / "base", "--out-dir", tmp_path / "out")
    assert code.startswith(f"error: --init-from {tmp_path / 'base'}: {weights}: not a readable safetensors file, "
                           f"truncated or corrupt (") and "\n" not in code, code
    assert not (tmp_path / "out" / "ckpt.pt").exists()


def test_passkey_mix_without_the_data_tokenizer_is_one_line(files, tmp_path):
    """--mix with passkey windows on a token file whose .json names no tokenizer that exists: one line, no run."""
    code = run(*common(files, mix="passkey=1"), "--out-dir", tmp_path / "out")
    assert isinstance(code, str) and code.startswith(
        f"error: passkey windows need the tokenizer named in {files / 'syn'}.json: ") and "\n" not in code, code
    assert not (tmp_path / "out").exists()


def test_prepare_data_bad_tokenizer_is_one_line(tmp_path):
    """prepare_data.py --tokenizer with an invalid tokenizer.json: argparse's error naming the file, no traceback."""
    (tmp_path / "tokenizer.json").write_text("{oops")
    (tmp_path / "a.txt").write_text("some text")
    p = subprocess.run([sys.executable, str(REPO / "prepare_data.py"), "--tokenizer", str(tmp_path), "--out",
                        str(tmp_path / "out"), str(tmp_path / "a.txt")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith(
        f"prepare_data.py: error: --tokenizer: {tmp_path / 'tokenizer.json'}: not valid JSON ("), p.stderr


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


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
def test_bf16_checkpoint_stays_bf16(files, tmp_path, key):
    """transformers >= 4.56 writes "dtype", older ones "torch_dtype": either way a bf16 checkpoint is read as bf16
    and the fine-tuned model is saved in bf16, not fp32."""
    from safetensors.torch import load_file
    from load_hf_weights import save_model
    base = Llama(LlamaConfig.from_hf({"model_type": "llama", "vocab_size": 64, "max_position_embeddings": 32, **TINY}))
    base.init_weights()
    save_model(base, tmp_path / "base", dtype=torch.bfloat16)
    cfg = json.loads((tmp_path / "base/config.json").read_text())
    del cfg[{"dtype": "torch_dtype", "torch_dtype": "dtype"}[key]]  # only one of the two names, as each version writes
    (tmp_path / "base/config.json").write_text(json.dumps(cfg))
    assert LlamaConfig.from_hf(cfg).torch_dtype == "bfloat16"
    argv = [*common(files, **{"max-steps": 1, "eval-every": 0, "config": None}), "--init-from", tmp_path / "base",
            "--out-dir", tmp_path / "out"]
    assert run(*argv) is None
    assert {t.dtype for t in load_file(tmp_path / "out/hf/model.safetensors").values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "out/hf/config.json").read_text())["torch_dtype"] == "bfloat16"


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


def plan_figures(stdout):
    """{shard: {"weights": GB, "grads": GB, "optimizer": GB, "activations": GB, "total": GB}} from the printed plan."""
    plans = {}
    for line in stdout.splitlines():
        if m := re.match(r"memory plan, .* params, (\w+) on .*?: (.*) = ([\d.]+) GB per device", line):
            plans[m[1]] = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)", m[2])} | {"total": float(m[3])}
    return plans


def test_memory_plan_gb_against_parameter_count(tmp_path, monkeypatch, capsys):
    """LLaMA-7B on 8 ranks, bf16 autocast: the plan's GB against bytes per parameter counted here, from a
    parameter count made here (embeddings + lm_head, 32 x (attention 4 C^2 + MLP 3 C I + 2 norms), final norm)."""
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_7B))
    write_token_file([[1] * 16384] * 10, tmp_path / "long", vocab_size=32000)
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert run("--init-from", tmp_path, "--data", tmp_path / "long", "--dry-run", "--device-memory", 48, "--dtype", "bf16") == 0
    plans = plan_figures(capsys.readouterr().out)
    assert plans.keys() == {"ddp", "zero1", "fsdp"}  # auto: ddp and zero1 do not fit 48 GB, fsdp does
    C, I, L, V, ranks = 4096, 11008, 32, 32000, 8
    block = 4 * C * C + 3 * C * I + 2 * C
    P = 2 * V * C + L * block + C
    assert P == 6_738_415_616  # LLaMA-7B's published count
    GB = 1024**3
    expected = {  # fp32 master weights (4 B) + their bf16 copy (2 B), fp32 grads (4 B), AdamW's two fp32 moments (8 B)
        "ddp": dict(weights=6 * P / GB, grads=4 * P / GB, optimizer=8 * P / GB),
        "zero1": dict(weights=6 * P / GB, grads=4 * P / GB, optimizer=8 * P / ranks / GB),
        # FSDP: a shard of everything, plus two blocks gathered in bf16 (the one computing, the one prefetched)
        "fsdp": dict(weights=(4 * P / ranks + 2 * 2 * block) / GB, grads=4 * P / ranks / GB, optimizer=8 * P / ranks / GB)}
    for shard, parts in expected.items():
        for part, gb in parts.items():  # printed to 0.01 GB; the plan takes a block as P / L (4% more than counted here)
            tol = dict(rel=0.01) if (shard, part) == ("fsdp", "weights") else dict(abs=0.0051)
            assert plans[shard][part] == pytest.approx(gb, **tol), (shard, part, plans[shard][part], gb)
        shown = [plans[shard][k] for k in ("weights", "grads", "optimizer", "activations", "loss_grad", "workspace")]
        assert plans[shard]["total"] == pytest.approx(sum(shown), abs=0.021)
    assert plans["fsdp"]["total"] <= 0.9 * 48 < plans["zero1"]["total"]


def test_memory_plan_activations_against_saved_tensors(files, tmp_path):
    """The plan's activation bytes (fp32, 2 x 256 tokens) against what autograd really keeps for backward
    on train.py's own model and batch: without AC everything saved by the forward; with AC what it saves
    plus one block's insides (recomputed in backward, one block at a time)."""
    (tmp_path / "cfg.json").write_text(json.dumps({**TINY, "hidden_size": 128, "intermediate_size": 352,
                                                   "num_key_value_heads": 4}))
    old, sys.argv = sys.argv, ["train.py", *map(str, common(files, **{"config": tmp_path / "cfg.json", "train-len": 256,
                               "target-len": 512, "max-steps": 0, "eval-every": 0})), "--out-dir", str(tmp_path / "out")]
    try:
        g = runpy.run_path(TRAIN, run_name="__main__")
    finally:
        sys.argv = old
    model, (x, pos, labels) = g["raw_model"], g["get_batch"](0, 0)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_bytes(f):
        storages = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            f()
        return sum(storages.values())
    cos, sin = model.rope(pos)
    h = model.embed_tokens(x).detach().requires_grad_()
    one_block = saved_bytes(lambda: model.layers[0](h, cos, sin))
    for ac in (False, True):
        model.activation_checkpointing = ac
        measured = saved_bytes(lambda: model(x, position_ids=pos, labels=labels)) + (one_block if ac else 0)
        planned = memory_plan(g["config"], g["n_params"], "ddp", 1, *x.shape, ac, act_bytes=4)["activations"] * 1024**3  # x: (B, T)
        assert 0.8 < planned / measured < 1.25, (ac, planned, measured)


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


@pytest.mark.parametrize("missing", [".idx.npy", ".json", ".bin"])
def test_token_docs_missing_file(tmp_path, missing):
    write_token_file([[1, 2, 3]], tmp_path / "d", vocab_size=10)
    (tmp_path / f"d{missing}").unlink()
    with pytest.raises(FileNotFoundError) as e:
        TokenDocs(tmp_path / "d")
    assert str(e.value) == f"{tmp_path}/d{missing} not found: prepare the data with prepare_data.py --out {tmp_path}/d"


def test_token_docs_corrupt_json(tmp_path):
    write_token_file([[1, 2, 3]], tmp_path / "d", vocab_size=10)
    (tmp_path / "d.json").write_text('{"dtype": "uint16", ')  # cut short
    with pytest.raises(ValueError, match=rf"^{tmp_path}/d.json: not valid JSON \(.*\); re-run prepare_data.py$"):
        TokenDocs(tmp_path / "d")
