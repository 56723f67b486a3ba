"""
The training examples of a train.py run. Example e is the run's e-th sequence, counted over all ranks from
step 0 (step s holds examples s * global_batch .. (s + 1) * global_batch - 1), and it is drawn from a
generator seeded with (seed, e) alone. So 1 rank or 8, any micro-batch, and a run resumed at any step see
the same examples: a rank just asks for the e it needs, and there is no data-loader state to checkpoint.

Drawing example e: the task by the mix in force at its step (--mix, switched by --mix-from), a window of that
task, then its positions by --method (pose_sampler.py):
  text     a random training document, a span of it (below), the method's window of the span; labels = inputs
  copy     a synthetic window of seq_len tokens (tasks.py); its labels leave the unpredictable part unscored
  passkey  likewise; the key-to-question gap grows from 20 tokens to the whole window over --gap-warmup steps
A synthetic window is exactly seq_len tokens, so its positions come from the same samplers with the content
kept in one piece (PoSE: contiguous_content; the others read a window of seq_len tokens whole anyway).
"""
import numpy as np
import torch

from pose_sampler import sample_clex, sample_cream, sample_full_length, sample_pose, sample_randpos
from tasks import copy_window


class Examples:
    """examples.example(e) -> (input_ids, position_ids, labels) of seq_len entries each; clex_factor(step).

    data: a prepare_data.TokenDocs; train_ids: the indices of its training documents (train.py holds out the
    eval documents); mixes: {first step: {task: weight}} (train_args.parse_mix), the one with the largest first
    step <= s in force at step s; seq_len: the window (Lt for full, Lc otherwise); clex_max_factor: --method
    clex's largest t; passkey_window: a tasks.PasskeyWindows when a mix has passkey windows."""

    def __init__(self, data, train_ids, mixes, *, method, seq_len, train_len, target_len, num_chunks, seed, global_batch,
                 cream_sigma=3.0, clex_max_factor=None, gap_warmup=0, passkey_window=None, passkey_min_len=None):
        self.data, self.train_ids, self.mixes, self.passkey_window = data, train_ids, mixes, passkey_window
        self.passkey_min_len = passkey_min_len
        self.method, self.seq_len, self.train_len, self.target_len, self.num_chunks = method, seq_len, train_len, target_len, num_chunks
        self.seed, self.global_batch, self.cream_sigma, self.clex_max_factor, self.gap_warmup = \
            seed, global_batch, cream_sigma, clex_max_factor, gap_warmup

    def clex_factor(self, step):
        """CLEX: the scaling factor t ~ U{1..max_factor} of a whole step (one ODE solve per forward; the model reads
        it back from the positions), from its own generator (seed, step, 0), so that it shifts no other draw."""
        return int(np.random.default_rng([self.seed, step, 0]).integers(1, self.clex_max_factor + 1))

    def mix_at(self, step):
        return self.mixes[max(s for s in self.mixes if s <= step)]

    def span(self, doc_len):
        """How many tokens of a text document the method samples from. The official PoSE code cuts each
        document to its first 5 Lc tokens (its content skips stay within them); we take a random 5 Lc span
        instead: with a few long documents (the demo's plays) the first spans would be all the text a run ever
        sees. Plain and full-length windows may start anywhere; CREAM reads tokens at their position ids, so
        its span is Lt."""
        if self.method in ("full", "plain"):
            return doc_len
        return self.target_len if self.method == "cream" else 5 * self.train_len

    def sample(self, doc, step, rng, whole=False):
        """(input_ids, position_ids) of one training window of `doc` by the method. whole=True: a synthetic
        window of exactly seq_len tokens, whose content PoSE keeps in one piece (key and question inside; at
        exactly Lc tokens there is no content to skip anyway, so whole=True states the intent, it changes no draw)."""
        if self.method in ("full", "plain"):
            return sample_full_length(doc, self.seq_len, rng=rng)
        if self.method == "randpos":
            return sample_randpos(doc, self.train_len, self.target_len, rng=rng)
        if self.method == "clex":
            return sample_clex(doc, self.train_len, self.clex_factor(step), self.train_len, rng=rng)
        if self.method == "cream":  # a synthetic window (shorter than Lt) stays in one piece: the sampler's fallback
            return sample_cream(doc, self.train_len, self.target_len, self.cream_sigma, rng=rng)
        return sample_pose(doc, self.train_len, self.target_len, self.num_chunks, rng=rng, contiguous_content=whole)

    def example(self, e):
        """Example e of the whole run: (input_ids, position_ids, labels), each of seq_len entries. Every draw
        comes from one generator seeded with (seed, e), in a fixed order: task, then the window, then positions."""
        rng = np.random.default_rng([self.seed, e])
        step = e // self.global_batch
        mix = self.mix_at(step)
        task = next(iter(mix)) if len(mix) == 1 else rng.choice(list(mix), p=list(mix.values()))
        if task == "text":
            doc = self.data[self.train_ids[rng.integers(len(self.train_ids))]]
            span = self.span(len(doc))
            begin = int(rng.integers(len(doc) - min(span, len(doc)) + 1))
            x, pos = self.sample(np.asarray(doc[begin:begin + span], dtype=np.int64), step, rng)
            return x, pos, x
        if task == "copy":
            x, labels = copy_window(rng, self.seq_len, self.data.vocab_size)
        else:
            gap = self.seq_len * min(1, (step + 1) / self.gap_warmup) if self.gap_warmup else self.seq_len
            # --passkey-min-len: a prompt of a random length, padded after; else every prompt fills the window, so a
            # full-length run never sees a question closer than Lt - 1 to the prompt's start
            prompt_len = int(rng.integers(self.passkey_min_len, self.seq_len + 1)) if self.passkey_min_len else None
            x, labels = self.passkey_window(rng, self.seq_len, max(gap, 20), prompt_len)
        x, pos = self.sample(torch.from_numpy(x), step, rng, whole=True)
        return x, pos, torch.from_numpy(labels)
