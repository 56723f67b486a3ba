"""bench/gpu_check.py --smoke: the GPU acceptance run's code paths at toy sizes on the CPU, and its flag errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.py"
pytest.importorskip("transformers")


def run(*argv, env=None, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, argv)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_smoke_writes_every_part_with_sane_numbers(tmp_path):
    p = run("--smoke", "--device", "cpu", "--out-dir", tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    parts = {int(f.name.split("_")[0]): json.loads(f.read_text()) for f in tmp_path.glob("[0-9]_*.json")}
    assert sorted(parts) == [1, 2, 3, 4, 5]
    for n, r in parts.items():
        assert r["status"] == "ok", (n, r.get("error"), r.get("traceback"))
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["device"] == "cpu" and env["matmul_peak_tflops"] > 0 and env["seconds"] < 300
    assert not (tmp_path / "work").exists() and len(list((tmp_path / "logs").glob("*.log"))) == 10  # train.py's output kept

    ex = parts[1]
    assert ex["fp32"]["rel"] <= 1e-4 and ex["fp32"]["kv_cache"]["rel"] <= 1e-4 and ex["fp32"]["kv_cache"]["same_argmax"] == 1
    assert min(ex["fp32"]["rel_if_positions_0_to_T"], ex["fp32"]["rel_if_second_chunk_plus_1"]) > 0.01  # positions matter
    assert 1e-4 < ex["bf16"]["rel"] < 0.2 and 1e-4 < ex["transformers_bf16"]["rel"] < 0.2  # bf16 differs, not wildly
    assert 1e-4 < ex["bf16"]["kv_cache"]["rel"] < 0.2 and ex["bf16"]["kv_cache"]["same_argmax"] > 0.5
    goals = {g["name"]: g for g in ex["rows"] if g["goal"]}
    assert len(goals) == 4 and all(g["met"] for g in goals.values()), goals

    tp = parts[2]
    assert tp["eager"]["tokens_per_s"] > 0 and 0 < tp["eager"]["mfu"] < 2 and tp["eager"]["peak_mem_gb"] > 0
    assert len(tp["eager"]["losses"]) == 4 and all(6 < x < 9 for x in tp["eager"]["losses"])  # ln(2000) = 7.6
    assert "compiled" not in tp and [g["met"] for g in tp["rows"] if g["goal"]] == [None, None]  # no compile on a CPU unless asked

    cost = parts[3]
    for k in ("pose", "full_512", "full_1024"):
        assert cost[k]["step_s"] > 0 and cost[k]["peak_mem_gb"] > 0 and 0 < cost[k]["static_gb"] < cost[k]["planned_gb"], k
        assert all(6 < x < 9 for x in cost[k]["losses"]), k
    assert all(0 < cost[k]["ratios"]["time"] < 2 and 0 < cost[k]["ratios"]["memory"] < 2 for k in ("full_512", "full_1024"))
    assert [g["name"].split(": ")[1] for g in cost["rows"] if g["goal"]] == ["time", "memory", "memory above static"]

    dist = parts[4]
    for shard in ("ddp", "fsdp"):  # gloo on a CPU: a resumed run repeats the losses exactly
        d = dist[shard]
        assert d["bitwise_equal"] and d["max_abs_diff"] == 0 and d["hf_export"] and len(d["losses"]) == 4, d
        assert all(6 < x < 9 for x in d["losses"]), d
    assert all(g["met"] for g in dist["rows"])

    inf = parts[5]
    for L in ("256", "512"):
        r = inf[L]
        assert r["prefill_s"] > 0 and r["decode_ms_per_token"] > 0 and r["prefill_after_prefix_s"] > 0
        assert 0 < r["shared_prefix_tokens"] < r["prompt_tokens"] <= int(L) and r["same_tokens_as_a_fresh_prefill"]
    assert "part | measure" in p.stdout and p.stdout.count(" | yes") >= 6  # the table, goals met beside figures


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_names_the_flag(tmp_path):
    p = run("--device", "cuda", "--out-dir", tmp_path, timeout=120)
    assert p.returncode == 2 and "--device cuda" in p.stderr.strip().splitlines()[-1], p.stderr
    assert not list(tmp_path.iterdir())


def test_compile_without_a_working_compiler_names_the_flag(tmp_path):
    # a fresh inductor cache, so that nothing compiled earlier is reused, and a C++ compiler that does not exist
    env = {"CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    p = run("--smoke", "--device", "cpu", "--compile", "--out-dir", tmp_path / "out", env=env, timeout=300)
    assert p.returncode == 2 and "--compile" in p.stderr.strip().splitlines()[-1], p.stderr


def test_writes_under_out_by_default():
    """Without --out-dir the run writes to out/gpu (git-ignored), not into the tree."""
    p = run("--help", timeout=120)
    assert p.returncode == 0 and "(default: out/gpu;" in " ".join(p.stdout.split())
