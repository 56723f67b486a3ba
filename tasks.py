"""
Synthetic training windows for the demo (REFERENCE.md section 8): a tiny model trained on text alone
never learns to retrieve, so it would give PoSE nothing to extend. Two tasks switch retrieval on:

  copy     a random string of 10-30 tokens repeated to fill the window; its first copy is not
           scored (it cannot be predicted), every later token can be copied from `period` back.
  passkey  the evaluation's own prompt (eval_passkey.py: intro, filler, key, filler, question) with
           the answer " 12345." appended and scored; the filler comes in whole sentences so a prompt
           fits any window, and the key-to-question gap is at most `max_gap` tokens (train.py grows
           it over the first --gap-warmup steps: short gaps are learned first). Half the windows
           leave out the intro: its ~35 tokens would leave a 128-token window room for only three
           filler sentences, and a base that never saw a longer gap fails the 128-token eval prompt.

Each function returns (tokens, labels), int64 numpy arrays of exactly `length` entries; label -100 is
not scored (padding after a short passkey prompt, the first copy). train.py mixes them with text
windows by --mix, e.g. "copy=0.1,passkey=0.45,text=0.45".
"""
import re

import numpy as np

from eval_passkey import FILLER, INTRO, NEEDLE, QUESTION
from model import IGNORE_INDEX

SENTENCES = re.findall(r"[^.]*\.", FILLER * 2)[:5]  # "The grass is green.", " The sky is blue.", ...


def copy_window(rng, length, vocab_size, first_id=3):
    """A random string (ids >= first_id: no BOS/EOS/UNK) repeated to fill `length` tokens."""
    period = int(rng.integers(10, 31))
    tokens = np.resize(rng.integers(first_id, vocab_size, size=period), length).astype(np.int64)
    labels = tokens.copy()
    labels[:period] = IGNORE_INDEX  # the first copy is noise; labels[t] is predicted at t - 1
    return tokens, labels


def filler(n):
    """The first n sentences of the repeated filler: a prefix of FILLER * k, exactly as in the eval."""
    return "".join(SENTENCES[i % 5] for i in range(n))


class PasskeyWindows:
    def __init__(self, tok):
        self.tok = tok
        self.fit = {}  # length -> filler sentences that fit beside the fixed part and the answer
        self.per_sentence = len(tok.encode(filler(50), bos=False)) / 50

    def text(self, before, after, key, intro=True):
        parts = [INTRO] if intro else []
        return "\n".join(parts + [filler(before), NEEDLE.format(key=key), filler(after), QUESTION]) + f" {key}."

    def encode(self, before, after, key, intro=True):
        return self.tok.encode(self.text(before, after, key, intro), bos=self.tok.bos_id is not None)

    def __call__(self, rng, length, max_gap, prompt_len=None):
        """A passkey prompt plus its answer in `length` tokens, key-to-question gap <= max_gap tokens; the prompt
        fills at most prompt_len tokens (default: all `length`), the rest is padding."""
        intro, prompt_len = bool(rng.integers(2)), prompt_len or length
        if (prompt_len, intro) not in self.fit:
            n = 0
            while len(self.encode(n + 1, 0, 12345, intro)) <= prompt_len:
                n += 1
            if n == 0 and len(self.encode(0, 0, 12345)) > prompt_len:
                raise ValueError(f"a passkey prompt needs more than {prompt_len} tokens: raise --train-len (or "
                                 "--passkey-min-len) or drop passkey from --mix")
            self.fit[prompt_len, intro] = n
        n = self.fit[prompt_len, intro]
        after = int(rng.integers(0, min(n, int(max_gap / self.per_sentence)) + 1))
        before, key = n - after, int(rng.integers(10000, 100000))
        ids = self.encode(before, after, key, intro)
        while len(ids) > prompt_len:  # a key's digits or a sentence boundary can take a token more
            before, after = (before - 1, after) if before else (0, after - 1)
            ids = self.encode(before, after, key, intro)
        tokens = np.full(length, self.tok.eos_id or 0, dtype=np.int64)
        labels = np.full(length, IGNORE_INDEX, dtype=np.int64)
        tokens[:len(ids)] = labels[:len(ids)] = ids
        return tokens, labels
