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

# Under pytest-xdist each worker would start one compute thread per core: with 2 workers on 2 cores that is 4
# spinning OpenMP threads on 2 cores, which slows CPU convolutions down several times. Share the cores instead.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _XDIST_WORKERS))

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
def _fp32_means_fp32(monkeypatch):
    """TF32 off in every test (restored after): on a GPU cuDNN's fp32 convs default to TF32 (about 2**-11
    relative), far outside the fp32 tolerances the references are held to, and `Precision()` sets both flags
    globally, which would make a test's result depend on the tests run before it. Tests of TF32 turn it on."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.fixture(autouse=True)
def _seed_and_clean_env(monkeypatch):
    """Every test starts from the same seed and with no FUSEGAN_IMPL override leaking in."""
    monkeypatch.delenv("FUSEGAN_IMPL", raising=False)
    torch.manual_seed(0)
