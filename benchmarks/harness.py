"""The harness: what a run knows (`RunContext`), what an op benchmark is (`OpCase`), and how it is measured.

An op case is timed in three variants side by side, in one process, on the same input tensors:
- 'fusegan': the fused op (impl='triton' on a GPU; impl='ref' in the CPU smoke run);
- 'eager':   the idiomatic eager PyTorch code a user would write for the same thing;
- 'compile': `torch.compile` of exactly that eager function (static shapes; dynamo reset per case).
and in three modes:
- 'fwd':    the forward under torch.no_grad() (what inference runs);
- 'bwd':    the backward only: each repetition runs a fresh forward outside the timed region, then times
            `torch.autograd.grad(outputs, inputs, grad_outputs)` (no .grad accumulation kernels);
- 'fwdbwd': forward with autograd recording plus that backward, timed together (what training runs).
Peak memory (torch.cuda.max_memory_allocated, its counter reset before each variant's repetitions) goes into
every record. Training-step cases (benchmarks/training.py) share the RunContext and the records.
"""
import dataclasses
import datetime
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from .peaks import measure_peaks
from .records import MODES, VARIANTS, build_records, memory_fields
from .telemetry import Telemetry, case_throttle
from .timing import CudaEventTimer, WallClockTimer, measure

# Largest |fused - eager| / max(1, max|eager|) of the forward outputs before a case is flagged MISMATCH.
# The eager code rounds to the storage dtype after every op while fused kernels compute in fp32, so
# bf16 differs by a few units in the last place (2**-8 relative each).
CHECK_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-4, torch.float64: 1e-10}
# fp32 convs on a GPU run in TF32 (cuDNN's default, which the fused convs follow): inputs rounded to 10 mantissa
# bits, rounded differently by cuDNN and by Triton. Simulated on the conv_norm_act layers: 3e-4 to 1.2e-3 apart
# after normalization, so fp32's 1e-4 would flag every one of them.
TF32_CHECK_TOLERANCE = 1e-2
# bf16/fp16 cases are also judged against the eager code run in fp32: a variant up to this many times eager's own
# error (or within the tolerance) is right.
ACCURACY_SLACK = 2.0


@dataclasses.dataclass
class Budget:
    """How long each measurement runs: `warmup` calls, then reps filling `seconds` within [min_reps, max_reps]."""

    warmup: int
    seconds: float
    min_reps: int
    max_reps: int


BUDGETS = {
    "full": Budget(warmup=10, seconds=0.5, min_reps=20, max_reps=1000),
    "quick": Budget(warmup=5, seconds=0.1, min_reps=10, max_reps=200),
    "smoke": Budget(warmup=1, seconds=0.0, min_reps=3, max_reps=3),
}


@dataclasses.dataclass
class TrainBudget(Budget):
    """A Budget counted in whole regularization cycles instead of calls (see training.py): `warmup` cycles (the
    first compiles, and counts FLOPs for 'eager'), then timed cycles filling `seconds` within [min_reps, max_reps]."""


TRAIN_BUDGETS = {
    "full": TrainBudget(warmup=2, seconds=12.0, min_reps=3, max_reps=20),
    "quick": TrainBudget(warmup=1, seconds=3.0, min_reps=2, max_reps=5),
    "smoke": TrainBudget(warmup=1, seconds=0.0, min_reps=1, max_reps=1),
}


class DeviceMemory:
    """Peak-memory bookkeeping: `reset()` returns the bytes allocated now and restarts the peak counter;
    `peak()` is torch.cuda.max_memory_allocated since. Both are None off CUDA (no caching allocator stats)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.available = self.device.type == "cuda"

    def reset(self):
        if not self.available:
            return None
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak(self):
        if not self.available:
            return None
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)

    def release(self):
        """Returns cached blocks to the driver between variants, so one variant's cache never shrinks the next's."""
        if self.available:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()


class RunContext:
    """Everything a case needs to measure itself: device, timer, budget, peaks, telemetry, run metadata."""

    def __init__(self, *, smoke=False, quick=False, modes=MODES, flush_l2=True, command="", device=None,
                 variants=VARIANTS, time_limit_s=None):
        self.smoke = smoke
        self.quick = quick
        self.modes = tuple(modes)
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown or not variants:
            raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {tuple(variants)}")
        self.variants = tuple(v for v in VARIANTS if v in variants)
        # Cases stop starting (and training measurements stop repeating beyond their minimum) after this.
        self.deadline = None if time_limit_s is None else time.perf_counter() + time_limit_s
        self.device = torch.device(device or ("cpu" if smoke else "cuda"))
        if self.device.type == "cuda":
            if self.device.index is None:  # set_device and NVML need an explicit index
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
            # The eager baseline is the code a user would write, with cuDNN picking its fastest algorithms.
            torch.backends.cudnn.benchmark = True
            self.timer = CudaEventTimer(self.device, flush_l2=flush_l2)
            # A training step streams gigabytes: flushing a 50 MB L2 before it changes nothing, so steps are
            # timed without the flush (and its 256 MiB buffer is the same in every variant's peak memory).
            self.step_timer = CudaEventTimer(self.device, flush_l2=False)
        else:
            self.timer = WallClockTimer()
            self.step_timer = self.timer
        level = "smoke" if smoke else "quick" if quick else "full"
        self.budget = BUDGETS[level]
        self.train_budget = TRAIN_BUDGETS[level]
        self.memory = DeviceMemory(self.device)
        # The smoke run checks the plumbing, not the kernels: the reference path, fp32, and dynamo without
        # inductor (no C++ compiler needed, seconds not minutes).
        self.fused_impl = "ref" if smoke else "triton"
        # Training steps run fusegan as a user does, impl=None (each op picks Triton on a CUDA device).
        self.fused_train_impl = "ref" if smoke else None
        self.compile_backend = "eager" if smoke else "inductor"
        self.smoke_dtype = torch.float32
        self.telemetry = Telemetry(self.device)
        self.env = collect_environment(self.device, self.timer.name, command)
        self.peaks = None
        self.case_info = {}

    def measure_peaks(self):
        self.peaks = measure_peaks(self.timer, self.device, quick=self.quick, smoke=self.smoke)
        return self.peaks

    def measure(self, step, prepare=None, before_timed=None):
        b = self.budget
        return measure(self.timer, step, prepare, warmup=b.warmup, budget_s=b.seconds, min_reps=b.min_reps,
                       max_reps=b.max_reps, before_timed=before_timed)

    def measure_with_memory(self, step, prepare=None):
        """(times, {'base_mem_mib', 'peak_mem_mib'}): `measure`, with the peak-memory counter reset after the
        warm-up, right before the timed repetitions (the warm-up's compilation, autotuning and cuDNN benchmark
        workspaces are one-off allocations that are not the op's memory)."""
        base = []
        times = self.measure(step, prepare, before_timed=lambda: base.append(self.memory.reset()))
        return times, memory_fields(base[0], self.memory.peak())

    def past_deadline(self):
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def meta(self):
        """Run-wide metadata for results.json."""
        return {
            **self.env,
            "smoke": self.smoke,
            "quick": self.quick,
            "modes": list(self.modes),
            "l2_flush": getattr(self.timer, "flush_l2", False),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "fused_impl": self.fused_impl,
            "compile_backend": self.compile_backend,
            "variants": list(self.variants),
            "budget": dataclasses.asdict(self.budget),
            "train_budget": dataclasses.asdict(self.train_budget),
            "peaks": self.peaks,
            "telemetry_note": self.telemetry.note,
            "cases": self.case_info,
        }


def collect_environment(device, timer_name, command):
    """Fields every record repeats: GPU, timer, versions, date, command."""
    try:
        from fusegan.engine import __version__ as fusegan_version
    except Exception:
        fusegan_version = None
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    else:
        gpu = f"cpu ({platform.processor() or platform.machine()})"
    return {
        "gpu": gpu,
        "timer": timer_name,
        "torch": torch.__version__,
        "triton": triton_version,
        "fusegan": fusegan_version,
        "git_commit": _git_commit(),
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }


def _git_commit():
    """The checkout's commit, with '-dirty' if it has uncommitted changes; None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except Exception:
        return None


def make_tensor(shape, dtype, device, layout="contiguous", requires_grad=False):
    """A standard-normal tensor in the given layout ('contiguous' or 'channels_last')."""
    x = torch.randn(shape, dtype=dtype, device=device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout != "contiguous":
        raise ValueError(f"layout must be 'contiguous' or 'channels_last', got {layout!r}")
    return x.requires_grad_(requires_grad)


def _output_tensors(out):
    """The differentiable tensors among an op's outputs (a tensor, or a tuple/list of them)."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]


def mode_callables(fn, inputs, grad_inputs, mode):
    """(prepare, step) for `measure`: `fn(inputs)` timed in `mode` ('fwd', 'bwd' or 'fwdbwd')."""
    if mode == "fwd":

        def forward_no_grad(_):
            with torch.no_grad():
                fn(inputs)

        return None, forward_no_grad
    if mode not in ("bwd", "fwdbwd"):
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    leaves = [inputs[name] for name in grad_inputs]

    def forward():
        with torch.enable_grad():
            return _output_tensors(fn(inputs))

    grads = [torch.randn_like(o) for o in forward()]  # one fixed upstream gradient, in each output's layout

    def backward(outs):
        torch.autograd.grad(outs, leaves, grads)  # a fresh graph each call: no retain_graph

    if mode == "bwd":
        return forward, backward
    return None, lambda _: backward(forward())


@dataclasses.dataclass
class OpCase:
    """One op benchmark: a shape, a dtype, a layout, the fused call, the eager code, and a model of the work.

    make_inputs(shape, dtype, device, layout) -> {name: tensor}; the names are the keyword arguments of
    `fused` and `eager`. `fused(**inputs, impl=...)` calls the fusegan op (import it lazily inside, so the
    registry loads without the op); `eager(**inputs)` is the idiomatic eager code, and what 'compile' compiles.
    bytes_moved(shape, itemsize, mode) / flops(shape, mode): the minimal useful traffic / arithmetic of one
    call, the same for every variant (so a variant that moves more bytes shows a lower fraction of peak).
    """

    op: str
    name: str
    shape: tuple
    dtype: torch.dtype
    layout: str
    make_inputs: Callable
    fused: Callable
    eager: Callable
    grad_inputs: tuple
    smoke_shape: tuple
    bytes_moved: Optional[Callable] = None
    flops: Optional[Callable] = None
    bytes_model: str = ""  # one line stating the bytes model, shown in the report
    targets: dict = dataclasses.field(default_factory=dict)  # {mode: {'vs_eager': x, 'vs_compile': y, 'frac_copy_bw': z}}
    quick: bool = True  # part of --quick
    suite: str = "ops"
    # Its fp32 convs/matmuls run on TF32 tensor cores where torch's conv switch allows it (the fused convs follow
    # the same switch): fp32 runs are then checked with TF32's tolerance and scored against the TF32 matmul peak.
    tf32: bool = False

    def describe(self):
        return {"op": self.op, "suite": self.suite, "shape": list(self.shape), "dtype": _dtype_name(self.dtype),
                "layout": self.layout, "bytes_model": self.bytes_model, "targets": self.targets}

    def runs_tf32(self, ctx, dtype):
        """Whether this run of the case computes its fp32 convs in TF32 (on a GPU, with the conv switch on)."""
        from fusegan.kernels._triton import conv_allows_tf32

        return self.tf32 and ctx.device.type == "cuda" and conv_allows_tf32(dtype)

    def variants(self, ctx):
        compiled = torch.compile(self.eager, dynamic=False, backend=ctx.compile_backend)
        every = {
            "fusegan": lambda inputs: self.fused(**inputs, impl=ctx.fused_impl),
            "eager": lambda inputs: self.eager(**inputs),
            "compile": lambda inputs: compiled(**inputs),
        }
        return {v: every[v] for v in ctx.variants}

    def setup(self, ctx):
        """(shape, dtype, inputs, variants) as ctx runs this case: the inputs made, the gradient inputs marked."""
        shape = tuple(self.smoke_shape if ctx.smoke else self.shape)
        dtype = ctx.smoke_dtype if ctx.smoke else self.dtype
        torch._dynamo.reset()  # each case compiles from scratch, for its own static shape
        inputs = self.make_inputs(shape, dtype, ctx.device, self.layout)
        for name in self.grad_inputs:
            inputs[name].requires_grad_(True)
        return shape, dtype, inputs, self.variants(ctx)

    def run(self, ctx):
        """Measures every variant in every mode of ctx; returns the records."""
        shape, dtype, inputs, variants = self.setup(ctx)
        before = ctx.telemetry.read()
        extra, failed = self._check_forward(ctx, variants, inputs, dtype)
        records = []
        for mode in ctx.modes:
            timings = {}
            mode_extra = {variant: dict(extra.get(variant, {})) for variant in variants}
            for variant, fn in variants.items():
                if variant in failed:
                    timings[variant] = failed[variant]
                    continue
                try:
                    prepare, step = mode_callables(fn, inputs, self.grad_inputs, mode)
                    timings[variant], memory = ctx.measure_with_memory(step, prepare)
                    mode_extra[variant].update(memory)
                except Exception as exc:  # one broken variant must not lose the others' numbers
                    timings[variant] = _error_text(exc)
            base = {"suite": self.suite, "op": self.op, "case": self.name, "mode": mode, "shape": list(shape),
                    "dtype": _dtype_name(dtype), "layout": self.layout}
            itemsize = torch.empty((), dtype=dtype).element_size()
            records += build_records(
                base, timings, ctx.env, ctx.peaks,
                bytes_moved=self.bytes_moved(shape, itemsize, mode) if self.bytes_moved else None,
                flops=self.flops(shape, mode) if self.flops else None,
                extra=mode_extra,
                matmul_peak_key="matmul_tf32" if self.runs_tf32(ctx, dtype) else "matmul",
            )
        after = ctx.telemetry.read()
        mark_throttling(records, before, after)
        ctx.case_info[self.name] = {**self.describe(), "telemetry": {"before": before, "after": after}}
        return records

    def _check_forward(self, ctx, variants, inputs, dtype):
        """Runs each variant's forward once (this also compiles 'compile') and compares it with eager."""
        outputs, failed = {}, {}
        for variant, fn in variants.items():
            try:
                with torch.no_grad():
                    outputs[variant] = fn(inputs)
            except Exception as exc:
                failed[variant] = _error_text(exc)
        extra = {
            "fusegan": {"impl": ctx.fused_impl},
            "eager": {"impl": "eager"},
            "compile": {"impl": f"torch.compile[{ctx.compile_backend}]"},
        }
        extra = {v: extra[v] for v in variants}
        reference = outputs.get("eager")
        tolerance = TF32_CHECK_TOLERANCE if self.runs_tf32(ctx, dtype) else CHECK_TOLERANCE.get(dtype, 1e-4)
        exact = self._fp32_reference(variants, inputs, dtype) if reference is not None else None
        if exact is not None:
            for variant in outputs:
                extra[variant]["rel_err_vs_fp32"] = relative_error(outputs[variant], exact)
        for variant in ("fusegan", "compile"):
            if variant in outputs and reference is not None:
                err = relative_error(outputs[variant], reference)
                if exact is None:
                    ok = err <= tolerance
                else:
                    # bf16/fp16: the eager code rounds after every op, so being far from it can mean being closer
                    # to the exact result. A variant is wrong when it is both outside the tolerance and clearly
                    # less accurate than eager, both measured against the fp32 computation.
                    own, eager_own = extra[variant]["rel_err_vs_fp32"], extra["eager"]["rel_err_vs_fp32"]
                    ok = own <= max(tolerance, ACCURACY_SLACK * eager_own)
                extra[variant].update(rel_err_vs_eager=err, check="ok" if ok else "MISMATCH")
        return extra, failed

    def _fp32_reference(self, variants, inputs, dtype):
        """The eager code on fp32 copies of bf16/fp16 inputs, without TF32: the yardstick of the low-precision
        variants (None for fp32/fp64 cases, where eager itself is the reference, or when it cannot run)."""
        from fusegan.engine.precision import strict_fp32

        if dtype not in (torch.bfloat16, torch.float16) or "eager" not in variants:
            return None
        copies = {name: value.detach().to(torch.float32, copy=True)
                  if torch.is_tensor(value) and value.is_floating_point() else value for name, value in inputs.items()}
        try:
            with torch.no_grad(), strict_fp32():
                return variants["eager"](copies)
        except Exception:  # e.g. out of memory at fp32: the plain check against eager still stands
            return None


def mark_throttling(records, before, after):
    """Sets `throttled` and `throttle_reasons` of a case's records from the telemetry read before and after it
    (telemetry.case_throttle: reason bits at either reading, or a violation counter that grew in between)."""
    throttled, reasons = case_throttle(before, after)
    for record in records:
        record.update(throttled=throttled, throttle_reasons=None if reasons is None else ",".join(reasons))


def layout_cases(layouts, *, name, quick_layouts=None, **fields):
    """One OpCase per memory layout, named `<name>.<layout>`, the other fields shared; `quick_layouts`: the
    layouts that are part of --quick (default: all)."""
    return [OpCase(name=f"{name}.{layout}", layout=layout, quick=quick_layouts is None or layout in quick_layouts,
                   **fields) for layout in layouts]


def elementwise_bytes(fwd, bwd):
    """The bytes model of an op whose forward moves `fwd` and backward `bwd` elements per element of the input
    (fwdbwd: both), as a `bytes_moved(shape, itemsize, mode)`."""

    def bytes_moved(shape, itemsize, mode):
        n = math.prod(shape)
        return {"fwd": fwd * n * itemsize, "bwd": bwd * n * itemsize, "fwdbwd": (fwd + bwd) * n * itemsize}[mode]

    return bytes_moved


def relative_error(out, reference):
    """max |out - reference| / max(1, max |reference|) over all output tensors (NaN if any is non-finite)."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = reference if isinstance(reference, (tuple, list)) else (reference,)
    worst = 0.0
    for o, r in zip(outs, refs):
        o, r = o.detach().double(), r.detach().double()
        if o.shape != r.shape:
            return math.inf
        diff = (o - r).abs().max().item() if o.numel() else 0.0
        scale = max(1.0, r.abs().max().item() if r.numel() else 0.0)
        if math.isnan(diff) or math.isnan(scale):
            return math.nan  # max() would silently drop a NaN
        worst = max(worst, diff / scale)
    return worst


def _error_text(exc):
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def select_cases(cases, only=None, quick=False):
    """Cases whose op equals, or whose name contains, one of the comma-separated names in `only`."""
    selected = [c for c in cases if c.quick or not quick]
    if only:
        names = [n.strip() for n in only.split(",") if n.strip()]
        selected = [c for c in selected if any(n == c.op or n in c.name for n in names)]
    return selected


def run_cases(ctx, cases, log=print, on_case=None):
    """Measures the device peaks, then every case; returns (meta, records).

    on_case(meta, records) is called after every case with everything so far (the CLI writes the results
    files there, so that a run cut short still leaves its numbers). Cases not started before ctx's time
    limit are listed in meta['skipped'].
    """
    peaks = ctx.measure_peaks()
    tf32 = peaks.get("matmul_tf32")
    log(f"device: {ctx.env['gpu']}  copy {peaks['copy']['value']:.0f} GB/s  {peaks['matmul']['what']} "
        f"{peaks['matmul']['value']:.1f} TFLOP/s"
        + (f"  {tf32['what']} {tf32['value']:.1f} TFLOP/s" if tf32 else "") + f"  (timer: {ctx.timer.name})")
    if ctx.telemetry.note:
        log(ctx.telemetry.note)
    records, skipped = [], []
    started = time.perf_counter()
    for case in cases:
        if ctx.past_deadline():
            skipped.append(case.name)
            continue
        begin = time.perf_counter()
        try:
            case_records = case.run(ctx)
        except Exception as exc:  # e.g. out of memory making the inputs: keep the other cases' results
            case_records = case_failure_records(ctx, case, _error_text(exc))
        ctx.case_info.setdefault(case.name, {})["seconds"] = round(time.perf_counter() - begin, 2)
        records += case_records
        for r in case_records:
            log(format_record(r))
        sys.stdout.flush()
        if on_case is not None:
            on_case({**ctx.meta(), "skipped": skipped, "elapsed_s": round(time.perf_counter() - started, 1)}, records)
    if skipped:
        log(f"time limit reached: {len(skipped)} case(s) not run: {', '.join(skipped)}")
    return {**ctx.meta(), "skipped": skipped, "elapsed_s": round(time.perf_counter() - started, 1)}, records


def case_failure_records(ctx, case, error):
    """Error records for every mode and variant of a case that could not run at all."""
    shape = list(case.smoke_shape if ctx.smoke else case.shape)
    modes = getattr(case, "modes", None) or ctx.modes  # a training-step case has its own single mode
    records = []
    for mode in modes:
        base = {"suite": case.suite, "op": case.op, "case": case.name, "mode": mode, "shape": shape,
                "dtype": _dtype_name(ctx.smoke_dtype if ctx.smoke else case.dtype), "layout": getattr(case, "layout", None)}
        records += build_records(base, dict.fromkeys(ctx.variants, error), ctx.env, ctx.peaks)
    return records


def format_record(r):
    """One progress line for a record."""
    head = f"{r['case']:<40} {r['mode']:<6} {r['variant']:<8}"
    if r.get("error"):
        return f"{head} ERROR {r['error']}"
    per = "/step" if r.get("metric") == "time_per_step" else ""
    parts = [f"{r['p50']:.4g} ms{per} [{r['p20']:.4g}, {r['p80']:.4g}]"]
    if r.get("img_per_s") is not None:
        parts.append(f"{r['img_per_s']:.1f} img/s ({r['sec_per_kimg']:.2f} s/kimg)")
    if r.get("speedup_vs_eager") is not None:
        parts.append(f"{r['speedup_vs_eager']:.2f}x eager")
    if r.get("speedup_vs_compile") is not None:
        parts.append(f"{r['speedup_vs_compile']:.2f}x compile")
    if r.get("gbps") is not None:
        frac = f" ({100 * r['frac_copy_bw']:.0f}% copy)" if r.get("frac_copy_bw") is not None else ""
        parts.append(f"{r['gbps']:.0f} GB/s{frac}")
    if r.get("frac_matmul_peak") is not None and r.get("suite") == "train":
        parts.append(f"MFU {100 * r['frac_matmul_peak']:.0f}%")
    if r.get("peak_mem_mib") is not None:
        parts.append(f"peak {r['peak_mem_mib'] / 1024:.2f} GiB")
    if r.get("check") == "MISMATCH":
        vs_fp32 = f", {r['rel_err_vs_fp32']:.2e} vs fp32" if r.get("rel_err_vs_fp32") is not None else ""
        parts.append(f"MISMATCH (rel err {r['rel_err_vs_eager']:.2e} vs eager{vs_fp32})")
    elif r.get("check") not in (None, "ok"):
        parts.append(str(r["check"]))
    if r.get("throttled"):
        parts.append(f"THROTTLED ({r['throttle_reasons']})")
    return f"{head} " + "  ".join(parts)
