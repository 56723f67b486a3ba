"""PoSE: Positional Skip-wise training examples (arXiv 2309.10400, §3.2, Eq. 3-5).

PoSE fine-tunes on windows of only Lc = train_len tokens, but gives them position
ids spread over the target window Lt = target_len, so the model sees every
absolute position and relative distance of the long window at the cost of a
short one. A window is cut into N chunks; chunk i (length l_i, starting at
start_i = l_0 + ... + l_{i-1} inside the window) gets

    position ids  start_i + u_i .. start_i + u_i + l_i - 1         (Eq. 3-4)
    tokens        doc[start_i + v_i : start_i + v_i + l_i]          (Eq. 5)

with skip biases u_0 = 0, u_i ~ U{u_{i-1} .. Lt - Lc} and content offsets
v_0 = 0, v_i ~ U{v_{i-1} .. Lx - Lc}. Labels are the input ids.

    from pose_sampler import sample_pose
    input_ids, position_ids = sample_pose(doc, train_len=2048, target_len=16384, rng=rng)

`rng` is a `random.Random` or a `numpy.random.Generator` (seed it for reproducible
draws; None means a fresh, unseeded `random.Random()`). Every call draws anew:
the paper's intent is fresh chunking for every example.
Run `python pose_sampler.py` to print a few layouts.
"""
import random

import numpy as np
import torch


def _randint(rng, lo, hi):
    # Inclusive on both ends, like the paper's U{lo .. hi}; hides the two APIs.
    if isinstance(rng, random.Random):
        return rng.randint(lo, hi)
    return int(rng.integers(lo, hi + 1))


def _check_rng(rng):
    if rng is None:
        return random.Random()
    if not isinstance(rng, (random.Random, np.random.Generator)):
        raise ValueError(f"rng must be a random.Random or numpy.random.Generator, got {type(rng).__name__}")
    return rng


def _as_doc(doc_ids, need, name):
    doc = torch.as_tensor(doc_ids, dtype=torch.long)
    if doc.dim() != 1:
        raise ValueError(f"doc_ids must be a 1-D sequence of token ids, got shape {tuple(doc.shape)}")
    if len(doc) < need:
        raise ValueError(f"doc_ids has {len(doc)} tokens, but {name}={need} requires at least {need}")
    return doc


def _check_lengths(train_len, target_len):
    if train_len < 1:
        raise ValueError(f"train_len must be >= 1, got {train_len}")
    if target_len <= train_len:
        raise ValueError(f"target_len must be greater than train_len ({train_len}), got {target_len}")


def _chunk_lengths(train_len, num_chunks, rng):
    """Chunk lengths l_0..l_{N-1}, each >= 1, summing to train_len.

    Official PoSE (N = 2): l_0 ~ U{1 .. floor((Lc+1)/2)}, l_1 = Lc - l_0. We extend it
    chunk by chunk: with R tokens and k chunks still to place, the next chunk draws
    l ~ U{1 .. floor((R+1)/k)} and the last one takes the rest. N = 2 is exactly the
    official rule, N = 1 is one unskipped chunk, N = Lc gives Lc chunks of one token.
    Like the official rule it favours a long final chunk (e.g. N = 3: about 1/6, 5/24
    and 5/8 of Lc on average). The cap floor((R+1)/k) <= R - (k-1) for k >= 2 and
    R >= k, so every later chunk still gets at least one token.
    """
    lengths, left = [], train_len
    for k in range(num_chunks, 1, -1):
        lengths.append(_randint(rng, 1, (left + 1) // k))
        left -= lengths[-1]
    return lengths + [left]


def sample_pose(doc_ids, train_len, target_len, num_chunks=2, rng=None, contiguous_content=False):
    """One PoSE example: (input_ids, position_ids), 1-D long tensors of length train_len.

    doc_ids: list / numpy array / tensor of Lx >= train_len token ids.
    contiguous_content=True takes the window doc[:train_len] (all v_i = 0) and skips
    only positions; the paper's ablation finds this works but slightly worse than
    skipping content too, which keeps the text gap consistent with the position gap.
    """
    _check_lengths(train_len, target_len)
    if not 1 <= num_chunks <= train_len:
        raise ValueError(f"num_chunks must be in 1..train_len (1..{train_len}), got {num_chunks}")
    doc = _as_doc(doc_ids, train_len, "train_len")
    rng = _check_rng(rng)

    lengths = _chunk_lengths(train_len, num_chunks, rng)
    # Non-decreasing biases keep position ids strictly increasing across chunks, so
    # causal order and position order agree; u_0 = 0 puts position 0 in every example
    # (the official code switched to this "for more uniform coverage of large relative
    # positions"). Lt - Lc is the largest bias that keeps the last id <= Lt - 1.
    u, v = [0], [0]
    for _ in range(num_chunks - 1):
        u.append(_randint(rng, u[-1], target_len - train_len))
        v.append(v[-1] if contiguous_content else _randint(rng, v[-1], len(doc) - train_len))

    # Index arithmetic in numpy: tiny torch ops (repeat_interleave) can stall for
    # milliseconds when their thread pool competes with a training step for the cores.
    in_window = np.arange(train_len, dtype=np.int64)  # start_i + j for token j of chunk i
    position_ids = in_window + np.repeat(u, lengths)  # Eq. 4
    doc_index = in_window + np.repeat(v, lengths)  # Eq. 5
    input_ids = doc[torch.from_numpy(doc_index).to(doc.device)]
    return input_ids, torch.from_numpy(position_ids).to(doc.device)


def sample_full_length(doc_ids, target_len, rng=None):
    """Baseline "full-length" fine-tuning: target_len contiguous tokens at a random
    offset, positions 0..target_len-1. Costs attention over Lt tokens, which PoSE avoids."""
    if target_len < 1:
        raise ValueError(f"target_len must be >= 1, got {target_len}")
    doc = _as_doc(doc_ids, target_len, "target_len")
    rng = _check_rng(rng)
    start = _randint(rng, 0, len(doc) - target_len)
    return doc[start:start + target_len], torch.arange(target_len, device=doc.device)


def sample_randpos(doc_ids, train_len, target_len, rng=None):
    """Baseline RandPos (Ruoss et al. 2023, as run in the PoSE paper): train_len contiguous
    tokens at a random offset, with positions a sorted random subset of 0..target_len-1.
    Position 0 is not forced (the official PoSE code does not force it either). Without
    contiguous chunks, neighbouring tokens rarely sit at distance 1, unlike pre-training;
    the paper finds it much worse than PoSE."""
    _check_lengths(train_len, target_len)
    doc = _as_doc(doc_ids, train_len, "train_len")
    rng = _check_rng(rng)
    start = _randint(rng, 0, len(doc) - train_len)
    if isinstance(rng, random.Random):
        picked = rng.sample(range(target_len), train_len)
    else:
        picked = rng.choice(target_len, size=train_len, replace=False)
    position_ids = torch.as_tensor(np.sort(np.asarray(picked)), dtype=torch.long, device=doc.device)
    return doc[start:start + train_len], position_ids


def sample_clex(doc_ids, train_len, t, original_len, rng=None):
    """CLEX training example (Chen et al. 2023, as its code samples it) for the step's integer
    scaling factor t: train_len contiguous tokens at a random offset, and with scale = max(1,
    Lc // L0) the positions 0, then (s + 1) / scale for Lc - 2 distinct sorted s from [0, Lc*t - 2),
    then Lc*t // scale - 1. Float32, fractional when scale > 1: the original divides without
    rounding. With scale = 1 they strictly increase (t = 1: 0..Lc-1); with scale > 1 the original's
    last position can fall up to 1 - 2/scale below the one before it, kept as is."""
    if train_len < 2:
        raise ValueError(f"train_len must be >= 2 (first and last positions are fixed), got {train_len}")
    if int(t) != t or t < 1:
        raise ValueError(f"t must be an integer >= 1, got {t}")
    if original_len < 1:
        raise ValueError(f"original_len must be >= 1, got {original_len}")
    doc = _as_doc(doc_ids, train_len, "train_len")
    rng = _check_rng(rng)
    start = _randint(rng, 0, len(doc) - train_len)
    span, scale = train_len * int(t), max(1, train_len // original_len)
    if isinstance(rng, random.Random):
        picked = rng.sample(range(span - 2), train_len - 2)
    else:
        picked = rng.choice(span - 2, size=train_len - 2, replace=False)
    middle = (np.sort(np.asarray(picked, dtype=np.int64)) + 1) / scale
    position_ids = np.concatenate([[0.0], middle, [span // scale - 1]])
    return doc[start:start + train_len], torch.as_tensor(position_ids, dtype=torch.float32, device=doc.device)


def _normal(rng, mu, sigma):
    return rng.gauss(mu, sigma) if isinstance(rng, random.Random) else float(rng.normal(mu, sigma))


def cream_layout(train_len, target_len, mode):
    """(head, middle, tail) token counts of a CREAM window and k = Lt / Lc (see sample_cream)."""
    k = target_len // train_len
    head = tail = train_len // 3 if mode == "relativity" else 4 * k
    return head, train_len - head - tail, tail, k


def sample_cream(doc_ids, train_len, target_len, sigma=3.0, rng=None, mode=None):
    """CREAM training example (Wu et al. 2024, "Never Miss A Beat", arXiv 2406.07138; code bigai-nlco/CREAM
    src/train.py): PoSE's train-short idea with positions that favour the middle of the target window, where
    PoSE-trained models lose keys ("lost in the middle"). With k = Lt / Lc (an integer here), the Lc tokens are a
    head of h, a middle of m = Lc - h - t and a tail of t tokens:

        mode       relativity: h = t = floor(Lc / 3)  (long ends: many large relative distances)
                   continuity: h = t = 4 k            (short ends: most tokens in one contiguous middle)
                   each with probability 1/2, per example (mode=None), or as given
        positions  head 0 .. h-1,   middle e-m+1 .. e,   tail Lt-t .. Lt-1
        middle end r ~ N(1 + k, sigma^2) truncated to [2, 2k], then floored to an integer (r/2 ~ (1 + k)/2 puts
                   the middle around the centre of [Lc, Lt]);  e ~ U{h + floor((m-1) r / 2) .. floor(r Lc / 2) - t - 1}
        tokens     the token at index = position id of the document's first Lt tokens; a document shorter than
                   Lt gives its last t tokens to the tail, and the middle, if it would reach into them, the m
                   tokens just before (the code's fallback, in which the middle could overlap the tail's text)

    Differences from the code, all in the draws: (1) the code picks the mode once per preprocessing batch of
    3,000 examples (datasets.map, batch_size=3000), the paper's intent is per example: here per example;
    (2) the code inverts the Gaussian CDF over [2, 2k] without renormalising, so the mass outside piles onto
    r = 2 and r = 2k (np.interp clamps); here the Gaussian is truncated properly (drawn until inside);
    (3) the code's upper bound r Lc / 2 - t - 1 is a float for odd r, floored here; (4) k must divide: the
    code floors Lt / Lc and so ends its tail at k Lc - 1 < Lt - 1 otherwise.
    """
    _check_lengths(train_len, target_len)
    if target_len % train_len:
        raise ValueError(f"target_len ({target_len}) must be a multiple of train_len ({train_len}) for CREAM")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    rng = _check_rng(rng)
    if mode is None:
        mode = "relativity" if _randint(rng, 0, 1) == 0 else "continuity"
    elif mode not in ("relativity", "continuity"):
        raise ValueError(f"mode must be 'relativity', 'continuity' or None, got {mode!r}")
    head, middle, tail, k = cream_layout(train_len, target_len, mode)
    if middle < 1:
        raise ValueError(f"train_len {train_len} leaves no middle for CREAM's {mode} ends of {head} tokens at k = {k}")
    doc = _as_doc(doc_ids, train_len, "train_len")[:target_len]

    r = _normal(rng, 1 + k, sigma)
    while not 2 <= r <= 2 * k:  # truncated Gaussian: redraw outside [2, 2k]
        r = _normal(rng, 1 + k, sigma)
    r = min(int(r), 2 * k - 1)  # floored (r = 2k only at the edge itself)
    end = _randint(rng, head + (middle - 1) * r // 2, r * train_len // 2 - tail - 1)

    position_ids = np.concatenate([np.arange(head), np.arange(end - middle + 1, end + 1),
                                   np.arange(target_len - tail, target_len)])
    middle_text = min(end, len(doc) - tail - 1)  # where the middle's text ends (= end for a document of Lt tokens)
    doc_index = np.concatenate([np.arange(head), np.arange(middle_text - middle + 1, middle_text + 1),
                                np.arange(len(doc) - tail, len(doc))])
    input_ids = doc[torch.from_numpy(doc_index).to(doc.device)]
    return input_ids, torch.from_numpy(position_ids).to(doc.device)


if __name__ == "__main__":
    rng = random.Random(0)
    doc = list(range(1000, 1100))  # token id = 1000 + offset, so content skips are visible
    for n in (1, 2, 3):
        tokens, pos = sample_pose(doc, train_len=12, target_len=48, num_chunks=n, rng=rng)
        print(f"N={n}  positions {pos.tolist()}\n     tokens    {tokens.tolist()}")
    doc = list(range(1000, 1048))
    for mode in ("relativity", "continuity"):
        tokens, pos = sample_cream(doc, train_len=24, target_len=48, rng=rng, mode=mode)
        print(f"CREAM {mode}  positions {pos.tolist()}\n     tokens    {tokens.tolist()}")
