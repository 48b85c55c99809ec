"""Timers: CUDA events on a GPU, wall clock for the CPU smoke run. Both time `step` only, never `prepare`.

A measurement is: warm-up calls (the first call of a torch.compile variant compiles here), a short probe
that estimates one call's time, then as many timed repetitions as fit the time budget (within
[min_reps, max_reps]). Each repetition runs `prepare()` untimed (for example the forward pass whose graph
a backward-only measurement consumes), optionally flushes the L2 cache, and then times `step(state)`.
"""
import time

import torch

from .stats import percentile

# Larger than any current GPU's L2 (H100: 50 MB, B200: 126 MB), so zeroing it evicts everything.
L2_FLUSH_BYTES = 256 * 2**20


class CudaEventTimer:
    """Times each repetition between two CUDA events on the current stream.

    With `flush_l2`, a 256 MiB buffer is zeroed before every repetition (outside the timed region), so each
    repetition starts from a cold L2, as a layer in a real network does after the layers before it have
    streamed their own tensors through. The op benchmarks' tensors (134 MB and more) dwarf the L2 anyway, so
    this mainly keeps small shapes honest. Events measure GPU time including any gap where the GPU waits
    for the CPU to launch work, so launch overhead (many small eager kernels) is counted, as it should be.
    """

    name = "cuda_events"

    def __init__(self, device, flush_l2=True):
        self.device = torch.device(device)
        self.flush_l2 = flush_l2
        self._flush_buffer = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=self.device) if flush_l2 else None

    def sync(self):
        torch.cuda.synchronize(self.device)

    def time_reps(self, step, reps, prepare=None):
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        self.sync()
        for start, end in zip(starts, ends):
            state = prepare() if prepare is not None else None
            if self._flush_buffer is not None:
                self._flush_buffer.zero_()
            start.record()
            step(state)
            end.record()
            del state  # a backward-only step's graph is freed before the next forward
        self.sync()
        return [start.elapsed_time(end) for start, end in zip(starts, ends)]


class WallClockTimer:
    """Times each repetition with time.perf_counter; for the CPU smoke run, where every op is synchronous."""

    name = "wall_clock"

    def sync(self):
        pass

    def time_reps(self, step, reps, prepare=None):
        times_ms = []
        for _ in range(reps):
            state = prepare() if prepare is not None else None
            begin = time.perf_counter()
            step(state)
            times_ms.append((time.perf_counter() - begin) * 1e3)
            del state
        return times_ms


def measure(timer, step, prepare=None, *, warmup, budget_s, min_reps, max_reps, before_timed=None):
    """Warm up, estimate, then return the per-repetition times (ms) of `step`, as many as fit `budget_s`.

    `before_timed()`, if given, runs after the warm-up and the probe, right before the timed repetitions: where
    the peak-memory counter is reset, so that one-off allocations of the first calls (cuDNN benchmark mode's
    trial workspaces, inductor's and Triton's compilation and autotuning) stay out of the measured peak."""
    if warmup > 0:
        timer.time_reps(step, warmup, prepare)
    probe_ms = percentile(timer.time_reps(step, 3, prepare), 50)
    reps = int(budget_s * 1e3 / max(probe_ms, 1e-3))
    reps = max(min_reps, min(max_reps, reps))
    if before_timed is not None:
        before_timed()
    return timer.time_reps(step, reps, prepare)
