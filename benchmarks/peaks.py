"""The device's measured peaks, taken at the start of every run, against which each case is scored.

- copy: `dst.copy_(src)` of a large device tensor; bytes read + bytes written per second. This is the
  practical ceiling for a memory-bound op (an elementwise kernel reads and writes like a copy).
- matmul: a dense bf16 `a @ b` of square matrices; 2*n**3 FLOPs per call.
Each peak is the throughput at the median time over repetitions, timed like the cases (an L2 flush, if on,
stays outside the timed region and is irrelevant at these sizes).
"""
import torch

from .stats import summarize
from .timing import measure


def measure_copy_bandwidth(timer, device, nbytes, budget_s=0.5):
    """Device-to-device copy bandwidth in GB/s (1e9 bytes), counting both the read and the write."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 256)
    dst = torch.empty_like(src)
    times_ms = measure(timer, lambda _: dst.copy_(src), warmup=5, budget_s=budget_s, min_reps=10, max_reps=200)
    return _peak(times_ms, work=2 * nbytes, unit="GB/s", scale=1e9, what=f"copy_ of {nbytes / 2**20:.0f} MiB uint8")


def measure_matmul_tflops(timer, device, n, dtype=torch.bfloat16, budget_s=0.5):
    """Dense matmul throughput in TFLOP/s (1e12 FLOP/s) for n x n x n in `dtype`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    times_ms = measure(timer, lambda _: torch.mm(a, b, out=out), warmup=5, budget_s=budget_s, min_reps=10, max_reps=200)
    return _peak(times_ms, work=2 * n**3, unit="TFLOP/s", scale=1e12, what=f"{str(dtype).split('.')[-1]} mm {n}x{n}x{n}")


def _peak(times_ms, work, unit, scale, what):
    stats = summarize(times_ms)
    # Throughput at the median time is the peak; p20/p80 of time give the spread (p80 time = lower rate).
    return {
        "what": what,
        "unit": unit,
        "value": work / (stats["p50"] * 1e-3) / scale,
        "value_at_p20_time": work / (stats["p20"] * 1e-3) / scale,
        "value_at_p80_time": work / (stats["p80"] * 1e-3) / scale,
        "reps": len(times_ms),
    }


def measure_peaks(timer, device, quick=False, smoke=False):
    """{'copy': ..., 'matmul': ...}; shrunk for --quick and tiny for the CPU smoke run."""
    if smoke:
        return {
            "copy": measure_copy_bandwidth(timer, device, nbytes=2**20, budget_s=0.01),
            "matmul": measure_matmul_tflops(timer, device, n=64, dtype=torch.float32, budget_s=0.01),
        }
    return {
        "copy": measure_copy_bandwidth(timer, device, nbytes=(256 if quick else 1024) * 2**20, budget_s=0.2 if quick else 1.0),
        "matmul": measure_matmul_tflops(timer, device, n=8192, budget_s=0.3 if quick else 1.0),
    }
