"""The device's measured peaks, taken at the start of every run, against which each case is scored.

- copy: `dst.copy_(src)` of a large device tensor; bytes read + bytes written per second. This is the
  practical ceiling for a memory-bound op (an elementwise kernel reads and writes like a copy).
- matmul: a dense bf16 `a @ b` of square matrices; 2*n**3 FLOPs per call.
- matmul_tf32: the same in fp32 with TF32 tensor cores (half the bf16 rate on Hopper): the peak of the fp32 cases
  whose convs run in TF32 (cuDNN's default, which the fused convs follow), so that their fraction of peak is
  measured against what their tensor-core mode can reach, not against bf16's.
Each peak is the throughput at the median time over repetitions, timed like the cases (an L2 flush, if on,
stays outside the timed region and is irrelevant at these sizes).
"""
import contextlib

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


@contextlib.contextmanager
def tf32_matmuls():
    """fp32 matmuls on TF32 tensor cores inside the block; the switch is given back as it was."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the legacy getter may raise once switches were mixed
        saved = matmul.fp32_precision
        matmul.fp32_precision = "tf32"
        try:
            yield
        finally:
            matmul.fp32_precision = saved
    else:
        saved = matmul.allow_tf32
        matmul.allow_tf32 = True
        try:
            yield
        finally:
            matmul.allow_tf32 = saved


def measure_matmul_tf32_tflops(timer, device, n, budget_s=0.5):
    """Dense fp32 matmul throughput with TF32 allowed, in TFLOP/s, for n x n x n."""
    with tf32_matmuls():
        peak = measure_matmul_tflops(timer, device, n, dtype=torch.float32, budget_s=budget_s)
    return {**peak, "what": peak["what"] + " (TF32)"}


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
    """{'copy': ..., 'matmul': ..., 'matmul_tf32': ...}; shrunk for --quick and tiny for the CPU smoke run."""
    if smoke:
        return {
            "copy": measure_copy_bandwidth(timer, device, nbytes=2**20, budget_s=0.01),
            "matmul": measure_matmul_tflops(timer, device, n=64, dtype=torch.float32, budget_s=0.01),
            "matmul_tf32": measure_matmul_tf32_tflops(timer, device, n=64, budget_s=0.01),
        }
    return {
        "copy": measure_copy_bandwidth(timer, device, nbytes=(256 if quick else 1024) * 2**20, budget_s=0.2 if quick else 1.0),
        "matmul": measure_matmul_tflops(timer, device, n=8192, budget_s=0.3 if quick else 1.0),
        "matmul_tf32": measure_matmul_tf32_tflops(timer, device, n=8192, budget_s=0.3 if quick else 1.0),
    }
