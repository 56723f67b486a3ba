"""CREAM's position sampler (pose_sampler.sample_cream) and train.py --method cream."""
import json
import math
import random

import numpy as np
import pytest
import torch

from pose_sampler import cream_layout, sample_cream
from tests.test_train import common, files, run  # noqa: F401  (fixture and helpers)

LC, LT = 128, 512  # k = 4: the demo's 4x


def test_layout_positions_and_tokens():
    doc = np.arange(1000, 1000 + LT)  # token = 1000 + index: content offsets are visible
    for seed in range(100):
        for rng in (random.Random(seed), np.random.default_rng(seed)):
            mode = ("relativity", "continuity", None)[seed % 3]
            x, pos = sample_cream(doc, LC, LT, rng=rng, mode=mode)
            assert x.shape == pos.shape == (LC,) and pos.dtype == torch.long
            assert bool((pos[1:] > pos[:-1]).all()) and 0 <= pos[0] and pos[-1] == LT - 1
            t = next(i for i in range(1, LC) if pos[-i - 1] != pos[-i] - 1)  # the middle never touches the tail
            head, middle, tail, _ = cream_layout(LC, LT, mode or ("relativity" if t == LC // 3 else "continuity"))
            assert t == tail and pos[:head].tolist() == list(range(head))
            assert pos[-tail:].tolist() == list(range(LT - tail, LT))
            mid = pos[head:head + middle]
            assert (mid[1:] - mid[:-1] == 1).all() and mid[0] >= head and mid[-1] < LT - tail
            assert (x - 1000).tolist() == pos.tolist()  # a document of Lt tokens: the token at each position's index


def test_short_document_keeps_tail_at_its_end_and_middle_before_it():
    doc = np.arange(1000, 1000 + 300)  # between Lc and Lt
    for seed in range(200):
        x, pos = sample_cream(doc, LC, LT, rng=random.Random(seed), mode="relativity")
        head, middle, tail, _ = cream_layout(LC, LT, "relativity")
        idx = (x - 1000).tolist()
        assert idx[:head] == list(range(head)) and idx[-tail:] == list(range(300 - tail, 300))
        assert all(b > a for a, b in zip(idx, idx[1:]))  # no text twice, in order
        assert pos[-1] == LT - 1


def test_both_modes_occur_per_example():
    tails = [next(i for i in range(1, LC) if pos[-i - 1] != pos[-i] - 1)
             for pos in (sample_cream(np.arange(LT), LC, LT, rng=random.Random(s))[1] for s in range(400))]
    counts = {t: tails.count(t) for t in set(tails)}
    assert set(counts) == {LC // 3, 4 * 4} and min(counts.values()) > 160  # 1/2 each: 200 +- 10


def end_pmf(k, sigma, head, middle, tail, clamped=False):
    """P(middle end = e) of the rule in sample_cream's docstring (clamped=True: the CREAM code's inverse CDF)."""
    Phi = lambda x: 0.5 * (1 + math.erf((x - 1 - k) / (sigma * math.sqrt(2))))
    if clamped:  # floor of np.interp(u, cdf, x): mass below 3 -> 2, above 2k -> 2k
        p_r = {r: Phi(min(r + 1, 2 * k)) - (0 if r == 2 else Phi(r)) for r in range(2, 2 * k)} | {2 * k: 1 - Phi(2 * k)}
    else:
        z = Phi(2 * k) - Phi(2)
        p_r = {r: (Phi(r + 1) - Phi(r)) / z for r in range(2, 2 * k)}
    pmf = {}
    for r, p in p_r.items():
        lo, hi = head + (middle - 1) * r // 2, r * LC // 2 - tail - 1
        for e in range(lo, hi + 1):
            pmf[e] = pmf.get(e, 0) + p / (hi - lo + 1)
    return pmf


def chi2(samples, pmf, bins=16):
    """Pearson's statistic over `bins` runs of consecutive e values of about equal probability."""
    edges, acc, cut = [], 0.0, 1 / bins
    for e in sorted(pmf):
        acc += pmf[e]
        if acc >= cut * (len(edges) + 1) - 1e-12:
            edges.append(e)
    edges[-1] = max(pmf)
    observed = np.histogram(samples, bins=[min(pmf) - 0.5] + [e + 0.5 for e in edges])[0]
    expected, lo = [], min(pmf)
    for e in edges:
        expected.append(sum(p for x, p in pmf.items() if lo <= x <= e) * len(samples))
        lo = e + 1
    assert sum(observed) == len(samples)  # no end outside the support
    return sum((o - x) ** 2 / x for o, x in zip(observed, expected))


def test_middle_end_follows_the_truncated_gaussian():
    head, middle, tail, k = cream_layout(LC, LT, "continuity")
    rng = np.random.default_rng(0)
    ends = [int(sample_cream(np.arange(LT), LC, LT, rng=rng, mode="continuity")[1][head + middle - 1]) for _ in range(20000)]
    critical = 37.7  # chi-square, 15 degrees of freedom, p = 0.001
    assert chi2(ends, end_pmf(k, 3.0, head, middle, tail)) < critical
    # the same test rejects the code's clamped draw and a wider Gaussian: it sees the difference
    assert chi2(ends, end_pmf(k, 3.0, head, middle, tail, clamped=True)) > 10 * critical
    assert chi2(ends, end_pmf(k, 6.0, head, middle, tail)) > critical


@pytest.mark.parametrize("kwargs, message", [
    (dict(train_len=128, target_len=500), "must be a multiple of train_len"),
    (dict(train_len=128, target_len=128), "target_len must be greater"),
    (dict(sigma=0), "sigma must be > 0"),
    (dict(mode="middle"), "mode must be"),
    (dict(train_len=32, target_len=512, mode="continuity"), "leaves no middle"),
    (dict(doc_ids=np.arange(100)), "doc_ids has 100 tokens"),
])
def test_bad_arguments(kwargs, message):
    args = dict(doc_ids=np.arange(LT), train_len=LC, target_len=LT) | kwargs
    with pytest.raises(ValueError, match=message):
        sample_cream(**args)


def test_train_method_cream(files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "cream"
    opts = common(files, **{"train-len": 64, "target-len": 256, "max-steps": 2, "eval-every": 0, "ckpt-every": 0, "out-dir": out})
    assert run(*opts, "--method", "cream") is None
    losses = [json.loads(line)["loss"] for line in open(out / "log.jsonl")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert "cream training, 64 -> 256 tokens" in capsys.readouterr().out
    for flags, message in [(["--target-len", "200"], "--target-len 200 must be a multiple of --train-len 64"),
                           (["--cream-sigma", "0"], "--cream-sigma must be > 0"),
                           (["--train-len", "32"], "--train-len 32 leaves no middle")]:
        assert run(*opts, "--method", "cream", *flags) == 2
        assert message in capsys.readouterr().err
