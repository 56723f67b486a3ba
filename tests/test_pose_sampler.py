"""Invariants and coverage of the PoSE sampler (REFERENCE §2). CPU, a few seconds.

Documents are `arange(Lx)` so each token id equals its offset in the document:
content offsets can then be read straight off the output.
"""
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pose_sampler import sample_full_length, sample_pose, sample_randpos  # noqa: E402


def steps(x):
    """Indices k >= 1 where the per-token offset x[k] - k changes (a chunk boundary)."""
    off = x - np.arange(len(x))
    return set(np.flatnonzero(np.diff(off)) + 1), off


# (Lc, Lt, N, Lx): N = 1, 2, 3, odd Lc, Lx == Lc (no room to skip content), N == Lc.
CONFIGS = [(16, 64, 1, 40), (16, 64, 2, 40), (17, 100, 3, 200), (32, 33, 2, 32), (8, 40, 8, 30), (1, 5, 1, 3)]


@pytest.mark.parametrize("lc,lt,n,lx", CONFIGS)
def test_invariants_over_many_draws(lc, lt, n, lx):
    rng = random.Random(1234)
    doc = torch.arange(lx)
    max_boundaries = max_u = max_v = 0
    for _ in range(1000):
        tokens, pos = sample_pose(doc, lc, lt, num_chunks=n, rng=rng)
        assert tokens.shape == pos.shape == (lc,) and tokens.dtype == pos.dtype == torch.long
        p, t = pos.numpy(), tokens.numpy()
        assert p[0] == 0 and p[-1] <= lt - 1 and (np.diff(p) >= 1).all()
        # p = start_i + j + u_i and t = start_i + j + v_i: the per-token offsets are the
        # step functions u and v, non-decreasing, in range, and changing only at the
        # (at most N - 1) chunk boundaries, which both must share.
        pb, u = steps(p)
        tb, v = steps(t)
        assert u[0] == 0 and (np.diff(u) >= 0).all() and u[-1] <= lt - lc
        assert v[0] == 0 and (np.diff(v) >= 0).all() and v[-1] <= lx - lc
        assert len(pb | tb) <= n - 1
        max_boundaries = max(max_boundaries, len(pb | tb))
        max_u, max_v = max(max_u, u[-1]), max(max_v, v[-1])
    # The ranges are used up to their ends: some draw reaches position Lt - 1 and token Lx - 1.
    assert (max_u, max_v) == ((lt - lc, lx - lc) if n > 1 else (0, 0))
    if lt - lc > 1 and lx - lc > 1:  # otherwise ties hide boundaries; elsewhere all N chunks show up
        assert max_boundaries == n - 1


def lengths_seen(lc, n, draws, seed):
    """Chunk lengths recovered from outputs; Lt and Lx are huge so equal biases are rare."""
    rng = np.random.default_rng(seed)
    doc = np.arange(100_000)
    out = []
    for _ in range(draws):
        tokens, pos = sample_pose(doc, lc, 100_000, num_chunks=n, rng=rng)
        bounds = sorted(steps(pos.numpy())[0] | steps(tokens.numpy())[0])
        if len(bounds) == n - 1:
            out.append(np.diff([0, *bounds, lc]))
    assert len(out) > 0.99 * draws
    return np.array(out)


@pytest.mark.parametrize("lc", [16, 15])
def test_n2_first_chunk_length_is_official_rule(lc):
    l0 = lengths_seen(lc, 2, 2000, seed=lc)[:, 0]
    top = (lc + 1) // 2
    counts = np.bincount(l0, minlength=top + 1)
    assert l0.min() == 1 and l0.max() == top, (l0.min(), l0.max())
    expected = len(l0) / top  # uniform: each value within 25% of its share
    assert (np.abs(counts[1:] - expected) < 0.25 * expected).all(), counts


def test_n3_chunk_length_rule():
    lc = 30
    ls = lengths_seen(lc, 3, 2000, seed=3)
    assert (ls.sum(1) == lc).all() and (ls >= 1).all()
    assert set(ls[:, 0]) == set(range(1, (lc + 1) // 3 + 1))
    assert (ls[:, 1] <= (lc - ls[:, 0] + 1) // 2).all()
    assert ls[:, 1].max() == (lc - 1 + 1) // 2  # reached when l_0 = 1


def test_coverage_of_positions_and_distances():
    lc, lt = 64, 512
    rng = random.Random(0)
    doc = torch.arange(4 * lc)
    pos = np.stack([sample_pose(doc, lc, lt, 2, rng)[1].numpy() for _ in range(6000)])
    absolute = np.bincount(pos.ravel(), minlength=lt)
    assert len(absolute) == lt and (absolute > 0).all(), np.flatnonzero(absolute == 0)
    seen = np.zeros(lt, dtype=bool)
    for batch in np.array_split(pos, 12):
        d = batch[:, None, :] - batch[:, :, None]  # (draws, Lc, Lc) all pairwise distances
        seen[d[d > 0]] = True
    assert seen[1:].all(), np.flatnonzero(~seen[1:]) + 1


@pytest.mark.parametrize("make_rng", [random.Random, np.random.default_rng])
def test_seeded_draws_repeat_and_differ(make_rng):
    doc = np.arange(300)

    def draws(seed):
        rng = make_rng(seed)
        return [torch.cat(sample_pose(doc, 32, 256, 3, rng)).tolist() for _ in range(20)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert len({tuple(x) for x in draws(7)}) > 15  # fresh draws on every call


def test_doc_types_agree_and_rng_none_works():
    as_list = list(range(100))
    outs = [torch.cat(sample_pose(d, 10, 50, 2, random.Random(5)))
            for d in (as_list, np.array(as_list), torch.tensor(as_list))]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    tokens, pos = sample_pose(as_list, 10, 50)
    assert len(tokens) == len(pos) == 10 and pos[0] == 0


def test_contiguous_content():
    rng = random.Random(3)
    doc = torch.arange(500)
    positions_skipped = content_moved = 0
    for _ in range(200):
        tokens, pos = sample_pose(doc, 20, 200, 3, rng, contiguous_content=True)
        assert torch.equal(tokens, doc[:20])
        positions_skipped += int(pos[-1] > 19)
        tokens, _ = sample_pose(doc, 20, 200, 3, rng)
        content_moved += int(not torch.equal(tokens, doc[:20]))
    assert positions_skipped > 150 and content_moved > 150


def test_full_length_baseline():
    rng = np.random.default_rng(0)
    doc = torch.arange(70)
    starts = set()
    for _ in range(1000):
        tokens, pos = sample_full_length(doc, 64, rng)
        assert tokens.dtype == pos.dtype == torch.long and torch.equal(pos, torch.arange(64))
        assert torch.equal(tokens, torch.arange(64) + tokens[0])
        starts.add(int(tokens[0]))
    assert starts == set(range(7))


@pytest.mark.parametrize("make_rng", [random.Random, np.random.default_rng])
def test_randpos_baseline(make_rng):
    rng = make_rng(0)
    doc = torch.arange(50)
    firsts, lasts, starts = set(), set(), set()
    for _ in range(1000):
        tokens, pos = sample_randpos(doc, 16, 64, rng)
        assert tokens.shape == pos.shape == (16,) and pos.dtype == torch.long
        assert (torch.diff(pos) >= 1).all() and pos[0] >= 0 and pos[-1] <= 63
        assert torch.equal(tokens, torch.arange(16) + tokens[0])
        firsts.add(int(pos[0]))
        lasts.add(int(pos[-1]))
        starts.add(int(tokens[0]))
    assert 0 in firsts and len(firsts) > 5  # position 0 occurs but is not forced
    assert 63 in lasts and starts == set(range(35))


DOC = list(range(20))
ERRORS = [
    (lambda: sample_pose(DOC, 0, 64), r"train_len must be >= 1, got 0"),
    (lambda: sample_pose(DOC, 16, 16), r"target_len must be greater than train_len \(16\), got 16"),
    (lambda: sample_pose(DOC, 16, 8), r"target_len must be greater than train_len \(16\), got 8"),
    (lambda: sample_pose(DOC[:10], 16, 64),
     r"doc_ids has 10 tokens, but train_len=16 requires at least 16"),
    (lambda: sample_pose(DOC, 16, 64, num_chunks=0), r"num_chunks must be in 1..train_len \(1..16\), got 0"),
    (lambda: sample_pose(DOC, 16, 64, num_chunks=17), r"num_chunks must be in 1..train_len \(1..16\), got 17"),
    (lambda: sample_pose(DOC, 16, 64, rng=random),
     r"rng must be a random\.Random or numpy\.random\.Generator, got module"),
    (lambda: sample_pose(DOC, 16, 64, rng=np.random.RandomState(0)),
     r"rng must be .*, got RandomState"),
    (lambda: sample_pose(DOC, 16, 64, rng=3), r"rng must be .*, got int"),
    (lambda: sample_pose([DOC, DOC], 16, 64),
     r"doc_ids must be a 1-D sequence of token ids, got shape \(2, 20\)"),
    (lambda: sample_full_length(DOC, 64),
     r"doc_ids has 20 tokens, but target_len=64 requires at least 64"),
    (lambda: sample_full_length(DOC, 0), r"target_len must be >= 1, got 0"),
    (lambda: sample_full_length(DOC, 8, rng="seed"), r"rng must be .*, got str"),
    (lambda: sample_randpos(DOC, 16, 16), r"target_len must be greater than train_len \(16\), got 16"),
    (lambda: sample_randpos(DOC, 0, 16), r"train_len must be >= 1, got 0"),
    (lambda: sample_randpos(DOC[:10], 16, 64),
     r"doc_ids has 10 tokens, but train_len=16 requires at least 16"),
    (lambda: sample_randpos(DOC, 16, 64, rng=1.5), r"rng must be .*, got float"),
]


@pytest.mark.parametrize("call,message", ERRORS)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
