"""Shared by the benchmark tests (imported as a plain module: pytest puts tests/ on sys.path)."""
import pytest
import torch

from benchmarks.records import MIB


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    """Tiny CPU ops with several OpenMP threads on a shared machine spend ~50 ms per op in barriers (measured:
    a [2, 4, 4, 4] batch_norm took 48 ms with 2 threads, 12 us with 1); the benchmarks' CPU numbers mean nothing,
    so their tests run single-threaded and in seconds. Importing this fixture into a test module applies it there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeMemory:
    """Stands in for harness.DeviceMemory with CUDA statistics: `reset()` reports `base_mib` allocated, `peak()`
    `peak_mib`, both in bytes."""

    available = True

    def __init__(self, base_mib, peak_mib):
        self.base_mib, self.peak_mib = base_mib, peak_mib

    def reset(self):
        return self.base_mib * MIB

    def peak(self):
        return self.peak_mib * MIB

    def release(self):
        pass
