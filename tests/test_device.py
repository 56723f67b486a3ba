"""--device / --dtype / --compile (device.py, one rule for train.py and both evaluations), the eval progress
lines, and the one-rank distributed paths. CPU only here: the CUDA branches run in bench/gpu_check.py."""
import json

import pytest
import torch

import device
import eval_passkey
import eval_ppl
from eval_passkey import build_prompt, greedy
from model import KVCache
from tests.test_eval import tiny, tiny_dir  # noqa: F401  (fixtures)
from tests.test_train import common, files, run, torchrun  # noqa: F401  (fixtures and helpers)


def test_auto_is_cpu_fp32_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.pick_device("auto") == "cpu" and device.pick_dtype("auto", "cpu") == "fp32"
    assert device.pick_compile(None, "cpu") is False and device.pick_compile(False, "cuda:0") is False
    with pytest.raises(ValueError, match="--device cuda: no CUDA device"):
        device.pick_device("cuda")


def test_auto_on_cuda_is_bf16_or_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert device.pick_device("auto", local_rank=3) == "cuda:3" and device.pick_dtype("auto", "cuda:3") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "Tesla V100")
    assert device.pick_dtype("auto", "cuda:0") == "fp16"
    with pytest.raises(ValueError, match="--dtype bf16: Tesla V100 does not support bf16"):
        device.pick_dtype("bf16", "cuda:0")


def test_compile_without_a_working_compiler_is_one_line(monkeypatch):
    def broken(fn):
        def call(*a):
            raise RuntimeError("Cannot find a working triton installation.\nmore lines")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(ValueError, match=r"--compile: torch.compile does not work on cpu here \(RuntimeError: Cannot find a "
                                         r"working triton installation.\); use --no-compile$"):
        device.pick_compile(True, "cpu")


def test_eval_settings_record_what_ran(tiny_dir, tmp_path, capsys):  # noqa: F811
    (tmp_path / "a.txt").write_text("Once upon a time. " * 30)
    out = tmp_path / "ppl.json"
    eval_ppl.main(["--model", str(tiny_dir), "--data", str(tmp_path / "a.txt"), "--len", "128", "--out", str(out)])
    s = json.loads(out.read_text())["settings"]
    assert (s["device"], s["dtype"], s["compile"]) == ("cpu", "fp32", False)
    for script, argv in [(eval_ppl, ["--data", str(tmp_path / "a.txt")]), (eval_passkey, [])]:
        with pytest.raises(SystemExit) as e:
            script.main(["--model", str(tiny_dir), "--len", "128", "--device", "cuda", *argv])
        assert e.value.code == 2 and "--device cuda: no CUDA device" in capsys.readouterr().err


def test_piecewise_prefill_equals_one_pass_and_reports_progress(tiny):  # noqa: F811
    model, tok = tiny
    ids = build_prompt(tok, 700, 0.4, 54321)
    p = next(model.parameters())
    one = greedy(model, ids, KVCache(model.config, 1, 720, p.device, p.dtype), 0, 8, tok.eos_id)
    seen = []
    pieces = greedy(model, ids, KVCache(model.config, 1, 720, p.device, p.dtype), 0, 8, tok.eos_id, piece=128,
                    progress=lambda done, todo: seen.append((done, todo)))
    assert pieces == one and len(one) > 0
    assert seen == [(128 * i, len(ids)) for i in range(1, (len(ids) - 1) // 128 + 1)]


def test_long_ppl_pass_prints_progress(tiny, capsys):  # noqa: F811
    model, _ = tiny
    ids = torch.randint(0, 256, (1, 256))
    lines = []
    out = eval_ppl.truncate_nll(model, ids, [128, 256], piece=64, progress=lambda d, t: lines.append((d, t)))
    assert lines == [(64, 256), (128, 256), (192, 256), (256, 256)] and set(out) == {128, 256}


def test_compiled_training_equals_eager(files, tmp_path):  # noqa: F811
    """--compile (each block, under activation checkpointing) gives the eager run's losses."""
    logs = {}
    for flag in ("--compile", "--no-compile"):
        out = tmp_path / flag
        assert run(*common(files, **{"max-steps": 3, "eval-every": 0, "ckpt-every": 3, "out-dir": out}), "--ac", flag) is None
        logs[flag] = [json.loads(line)["loss"] for line in open(out / "log.jsonl")]
    assert len(logs["--compile"]) == 3
    assert logs["--compile"] == pytest.approx(logs["--no-compile"], abs=1e-4)


def test_one_rank_fsdp_under_torchrun_and_not_without(files, tmp_path, capsys):  # noqa: F811
    opts = common(files, **{"max-steps": 4, "eval-every": 0, "ckpt-every": 2, "out-dir": tmp_path / "fsdp"})
    torchrun(*opts, "--shard", "fsdp", nproc=1)
    ref = tmp_path / "ref"
    assert run(*common(files, **{"max-steps": 4, "eval-every": 0, "ckpt-every": 2, "out-dir": ref})) is None
    loss = lambda d: [json.loads(line)["loss"] for line in open(d / "log.jsonl")]
    assert loss(tmp_path / "fsdp") == pytest.approx(loss(ref), abs=1e-5)
    assert run(*opts, "--shard", "fsdp") == 2
    assert "--shard fsdp needs a process group: launch with torchrun" in capsys.readouterr().err


def test_progress_extrapolates_the_growing_cost_per_token(monkeypatch):
    """Pieces whose cost grows with the cached tokens (a + b n per token): from the third piece on, the time left
    is exact; a linear extrapolation would say far less."""
    import eval_common
    clock = [0.0]
    monkeypatch.setattr(eval_common.time, "perf_counter", lambda: clock[0])
    meter, a, b, n = eval_common.Progress(32768), 1e-2, 1e-6, 0
    for end in range(2048, 32769, 2048):
        clock[0] += a * (end - n) + b * (end * end - n * n) / 2
        n, line = end, meter.line(end)
        if end == 8192:
            left = (a * (32768 - end) + b * (32768 ** 2 - end ** 2) / 2) / 60
            assert line == f"8192/32768 tokens, {8192 / clock[0]:.0f} tok/s, {left:.1f} min left"
            assert 8192 / clock[0] * 60 * left > 1.3 * (32768 - 8192)  # the linear guess: 30% short


def test_long_passkey_prompt_prints_prefill_progress(tiny_dir, capsys):  # noqa: F811
    eval_passkey.main(["--model", str(tiny_dir), "--len", "9000", "--trials", "1", "--max-new-tokens", "1"])
    out = capsys.readouterr().out
    assert "  prefill 4096/" in out and "  prefill 8192/" in out and "min left" in out
