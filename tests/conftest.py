"""Test set-up shared by every test file.

Without a GPU the Triton kernels run in Triton's CPU interpreter. TRITON_INTERPRET must be set
before any kernel module is imported (triton.jit reads it when decorating), so it is set here,
at the top of the first file pytest imports.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    """Where the Triton path is tested: the GPU when there is one, else the CPU under the interpreter."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _seed_and_clean_env(monkeypatch):
    """Every test starts from the same seed and with no FUSEGAN_IMPL override leaking in."""
    monkeypatch.delenv("FUSEGAN_IMPL", raising=False)
    torch.manual_seed(0)
