"""examples.py: example e of a run depends on (seed, e) only; the mix in force at its step; the text span and
the positions of each --method; synthetic windows kept whole; the passkey gap's warm-up; CLEX's factor per step."""
import numpy as np
import pytest
import torch

from examples import Examples
from model import IGNORE_INDEX
from prepare_data import TokenDocs, write_token_file

LC, LT, BATCH = 64, 256, 8  # CREAM needs Lc > 8 Lt / Lc
METHODS = ["pose", "cream", "full", "randpos", "clex", "plain"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One document of 1,000 tokens whose ids are their offsets: a window shows where in the document it lies."""
    prefix = tmp_path_factory.mktemp("examples") / "one"
    write_token_file([list(range(1000))], prefix, vocab_size=1000, min_tokens=LC)
    return TokenDocs(str(prefix))


def make(data, method="pose", mixes=None, seed=1337, **kw):
    return Examples(data, np.arange(len(data)), mixes or {0: {"text": 1.0}}, method=method,
                    seq_len=LT if method == "full" else LC, train_len=LC, target_len=LT, num_chunks=2, seed=seed,
                    global_batch=BATCH, clex_max_factor=LT // LC, **kw)


def is_copy(example):
    return bool((example[2] == IGNORE_INDEX).any())  # a text window scores every token


def same(a, b):
    return all(torch.equal(torch.as_tensor(p), torch.as_tensor(q)) for p, q in zip(a, b))


@pytest.mark.parametrize("method", METHODS)
def test_example_e_depends_on_seed_and_e_only(data, method):
    """What makes a resumed or a sharded run see the examples of an uninterrupted single-process one: any
    instance, asked in any order (a rank asks for every world_size-th group), gives the same example e."""
    mixes = {0: {"text": 0.5, "copy": 0.5}}
    first = [make(data, method, mixes).example(e) for e in range(40)]
    other = make(data, method, mixes)
    strided = {e: other.example(e) for r in (3, 1, 2, 0) for e in range(r, 40, 4)}
    assert all(same(first[e], strided[e]) for e in range(40))
    assert not all(same(a, b) for a, b in zip(first, (make(data, method, mixes, seed=1).example(e) for e in range(40))))
    assert {is_copy(x) for x in first} == {True, False}


def test_mix_switches_at_its_step(data):
    """--mix copy=1 --mix-from 3:text=1 with 8 sequences a step: examples 0..23 are copy windows, 24.. text."""
    ex = make(data, mixes={0: {"copy": 1.0}, 3: {"text": 1.0}})
    assert [is_copy(ex.example(e)) for e in range(40)] == [True] * 3 * BATCH + [False] * 2 * BATCH
    assert ex.mix_at(2) == {"copy": 1.0} and ex.mix_at(3) == ex.mix_at(1000) == {"text": 1.0}


def test_mix_weights(data):
    copies = sum(is_copy(make(data, mixes={0: {"copy": 0.25, "text": 0.75}}).example(e)) for e in range(400))
    assert 70 < copies < 130  # 100 expected; sd 8.7


@pytest.mark.parametrize("method", METHODS)
def test_text_windows_per_method(data, method):
    """The span each method samples from and the positions it gives: PoSE's content skips within a random span
    of 5 Lc (the official code: the document's first 5 Lc), CREAM's tokens at their position ids within a span
    of Lt, full and plain windows anywhere, RandPos and CLEX contiguous text with their own positions."""
    ex = make(data, method)
    windows = [ex.example(e) for e in range(300)]
    for e, (x, pos, labels) in enumerate(windows):
        assert labels is x and len(x) == len(pos) == (LT if method == "full" else LC)
        if method in ("full", "plain"):
            assert torch.equal(pos, torch.arange(len(x))) and torch.equal(x, x[0] + torch.arange(len(x)))
        elif method == "pose":
            assert int(x.max() - x.min()) < 5 * LC and pos[0] == 0 and (pos.diff() > 0).all() and pos[-1] < LT
        elif method == "cream":
            assert len(set((x - pos).tolist())) == 1 and (pos.diff() > 0).all() and pos[-1] == LT - 1
        elif method == "randpos":
            assert (x.diff() == 1).all() and (pos.diff() > 0).all() and pos[-1] < LT
        else:  # clex: positions 0 .. Lc t - 1 for the step's factor t (L0 = Lc: integer positions)
            assert (x.diff() == 1).all() and pos[0] == 0 and pos[-1] == LC * ex.clex_factor(e // BATCH) - 1
    lo, hi = min(int(x.min()) for x, _, _ in windows), max(int(x.max()) for x, _, _ in windows)
    assert lo < 100 and hi > 900  # the whole document is reached, not only its first 5 Lc tokens
    if method == "cream":  # a span of Lt (not 5 Lc), and its tail at position Lt - 1 reads the span's last token
        assert hi > 975
    if method == "pose":  # the content skips use the whole 5 Lc span
        assert max(int(x.max() - x.min()) for x, _, _ in windows) > 4 * LC


@pytest.mark.parametrize("method", ["full", "plain"])
def test_full_and_plain_windows_start_anywhere_alike(data, method):
    """Their span is the whole document, so a window's first token is uniform over the document's starts: a tenth
    of the windows in each outer tenth (a span of 5 Lc would make the ends rarer: 6% for full, 2.5% for plain)."""
    ex = make(data, method)
    starts = np.array([int(ex.example(e)[0][0]) for e in range(1000)]) / (1000 - len(ex.example(0)[0]))
    assert 160 < ((starts < 0.1) | (starts > 0.9)).sum() < 240  # 200 expected; sd 12.6


@pytest.mark.parametrize("method", METHODS)
def test_synthetic_windows_stay_whole(data, method):
    """A copy window is seq_len tokens of a repeated string: every method trains on all of it, in order (its
    labels are its tokens after the unscored first copy), and only the positions follow the method."""
    ex = make(data, method, mixes={0: {"copy": 1.0}})
    skipped = False
    for e in range(50):
        x, pos, labels = ex.example(e)
        period = int((labels == IGNORE_INDEX).sum())
        assert len(x) == (LT if method == "full" else LC) and 10 <= period <= 30
        assert torch.equal(labels[period:], x[period:]) and torch.equal(x[period:], x[:-period])
        assert (pos.diff() > 0).all() and pos[-1] < LT
        skipped |= bool(pos[-1] > len(x) - 1)
    assert skipped == (method not in ("full", "plain"))


class FakePasskey:
    """Records the max_gap train.py asks for; returns a window of the requested length with its last token scored."""

    def __init__(self):
        self.gaps, self.prompt_lens = [], []

    def __call__(self, rng, length, max_gap, prompt_len=None):
        self.gaps.append(max_gap)
        self.prompt_lens.append(prompt_len)
        labels = np.full(length, IGNORE_INDEX, dtype=np.int64)
        labels[-1] = 7
        return np.arange(3, 3 + length, dtype=np.int64), labels


@pytest.mark.parametrize("gap_warmup, gaps", [(4, [20, 32, 48, 64, 64, 64]), (0, [64] * 6)])
def test_passkey_gap_grows_over_gap_warmup(data, gap_warmup, gaps):
    """--gap-warmup 4 at Lc = 64: the key-to-question gap allowed is seq_len (step + 1) / 4 but at least 20
    tokens, the whole window from step 3 on; without a warm-up the whole window from the start."""
    fake = FakePasskey()
    ex = make(data, mixes={0: {"passkey": 1.0}}, gap_warmup=gap_warmup, passkey_window=fake)
    for step in range(6):
        x, pos, labels = ex.example(step * BATCH)
        assert torch.equal(x, torch.arange(3, 3 + LC)) and labels[-1] == 7
    assert fake.gaps == gaps


def test_passkey_min_len_varies_the_prompt(data):
    """--passkey-min-len on a full-length run: prompts of every length from it up to Lt (uniform), else each fills
    the window; the flag moves no other draw when unset."""
    fake, plain = FakePasskey(), FakePasskey()
    varied, fills = make(data, "full", {0: {"passkey": 1.0}}, passkey_window=fake, passkey_min_len=LC), \
        make(data, "full", {0: {"passkey": 1.0}}, passkey_window=plain)
    for e in range(400):
        varied.example(e), fills.example(e)
    lens = np.array(fake.prompt_lens)
    assert lens.min() >= LC and lens.max() <= LT and 0.4 < np.mean(lens < (LC + LT) / 2) < 0.6
    assert set(plain.prompt_lens) == {None}


def test_clex_factor_is_one_draw_per_step(data):
    """t ~ U{1..Lt/Lc}, the same for every example of a step (the forward's ODE solve uses it too), from its own
    generator: drawing examples does not move it."""
    ex = make(data, "clex")
    factors = [ex.clex_factor(s) for s in range(200)]
    assert set(factors) == {1, 2, 3, 4} and 35 < factors.count(4) < 65
    [ex.example(e) for e in range(50)]
    assert factors == [make(data, "clex").clex_factor(s) for s in range(200)] == [ex.clex_factor(s) for s in range(200)]
    assert factors != [make(data, "clex", seed=1).clex_factor(s) for s in range(200)]
