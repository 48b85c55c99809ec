"""Where the time goes in one benchmark case: torch.profiler over a few repetitions, kernels grouped by kind.

    python -m benchmarks.profile CASE [--variant fusegan|eager|compile] [--mode fwd|bwd|fwdbwd] [--reps N]
                                      [--rows N] [--out DIR] [--trace] [--smoke]

CASE is a case name or a part of one that selects exactly one case (`python -m benchmarks --list`). The case is
set up exactly as the benchmark runs it (same shapes, dtypes, layout, variant), warmed up (this compiles), and then
`--reps` repetitions run under `torch.profiler`: an op case's step in `--mode`, or one window of a training-step
case. It writes `profile.md` (and `profile.json`, and with `--trace` a Chrome trace) to `--out`:

- the device time per repetition split by **kind of kernel**: fusegan's own Triton kernels, Triton kernels that
  inductor generated (`triton_*`), vendor GEMM/convolution kernels (cuBLAS, cuDNN, CUTLASS), memory copies and
  fills, and the remaining (ATen elementwise, reductions, ...) kernels;
- the top kernels by self device time, with their share and launch count;
- torch.profiler's own table.

In `--mode bwd` the forward that prepares each repetition is profiled too (its kernels are the `--mode fwd`
ones). A training-step case profiles its first window of steps (paper256: a whole regularization cycle).

Divide a kernel's time into the bytes or FLOPs it must move (the case's bytes model in benchmarks/ops_*.py) to
tell a bandwidth-bound kernel from a compute-bound one; `ncu --clock-control none` on the GPU machine reads the
hardware counters of one kernel. On a machine without a GPU (`--smoke`: tiny shapes, reference path), only CPU
operators exist and the table is of CPU time: that checks the plumbing, and means nothing about a GPU.
"""
import argparse
import dataclasses
import importlib
import json
import pkgutil
import re
import sys
from pathlib import Path

import torch

KINDS = ("fusegan triton", "inductor triton", "gemm/conv (vendor)", "memcpy/memset", "other kernels")
_VENDOR_GEMM = re.compile(r"gemm|conv|cutlass|cudnn|xmma|wgmma|sm\d+_|implicit_convolve|winograd|cublas", re.I)
_MEMORY = re.compile(r"^Memcpy|^Memset|memcpy|memset|CatArrayBatchedCopy|copy_kernel", re.I)


def fusegan_kernel_names():
    """The names of every Triton kernel defined in fusegan.kernels (what a CUDA trace calls their launches)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction  # what triton.jit makes under TRITON_INTERPRET=1
        from triton.runtime.jit import JITFunction

        import fusegan.kernels as kernels
    except ImportError:
        return frozenset()
    names = set()
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"fusegan.kernels.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, (JITFunction, InterpretedFunction)):
                names.add(obj.__name__)
    return frozenset(names)


def kernel_kind(name, fusegan_names):
    """Which of KINDS a device kernel called `name` belongs to."""
    base = name.split("(")[0].strip()
    if base in fusegan_names:
        return KINDS[0]
    if base.startswith("triton_"):  # inductor names its kernels triton_poi_/triton_red_/triton_per_/triton_tem_
        return KINDS[1]
    if _MEMORY.search(base):
        return KINDS[3]
    if _VENDOR_GEMM.search(base):
        return KINDS[2]
    return KINDS[4]


@dataclasses.dataclass
class KernelTime:
    name: str
    kind: str
    calls: int
    self_us: float  # summed over every profiled repetition


def summarize_events(events, on_device, fusegan_names):
    """KernelTimes from `prof.key_averages()`, largest first: device kernels when `on_device`, else CPU operators.

    On a GPU only events that are kernels themselves count (an ATen operator's device time is its kernels', which
    would count twice); without one, the CPU operators' self time is all there is."""
    rows = []
    for event in events:
        if on_device:
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            self_us = event.self_device_time_total
            kind = kernel_kind(event.key, fusegan_names)
        else:
            self_us = event.self_cpu_time_total
            kind = "cpu operator"
        if self_us > 0:
            rows.append(KernelTime(event.key, kind, int(event.count), float(self_us)))
    rows.sort(key=lambda r: r.self_us, reverse=True)
    return rows


def by_kind(rows, reps):
    """{kind: (µs per repetition, share of the total)}, largest first."""
    total = sum(r.self_us for r in rows) or 1.0
    kinds = {}
    for r in rows:
        kinds[r.kind] = kinds.get(r.kind, 0.0) + r.self_us
    return {k: (v / reps, v / total) for k, v in sorted(kinds.items(), key=lambda kv: kv[1], reverse=True)}


def render_markdown(title, meta, rows, reps, rows_shown, table):
    total = sum(r.self_us for r in rows)
    unit, what = ("device", "kernel") if meta["on_device"] else ("CPU (self)", "operator")
    lines = [f"# Profile: {title}", "",
             f"{meta['gpu']}, torch {meta['torch']}, {meta['date']}. Command: `{meta['command']}`", "",
             f"{reps} profiled repetitions after warm-up; {unit} time per repetition: **{total / reps / 1000:.3f} ms** "
             f"in {sum(r.calls for r in rows) / reps:.0f} {what} calls.", "",
             "| kind | ms per repetition | share |", "|---|---:|---:|"]
    lines += [f"| {kind} | {us / 1000:.3f} | {100 * share:.1f}% |" for kind, (us, share) in by_kind(rows, reps).items()]
    lines += ["", f"Top {min(rows_shown, len(rows))} by self {unit} time:", "",
              f"| {what} | kind | calls per rep | ms per rep | share |", "|---|---|---:|---:|---:|"]
    for r in rows[:rows_shown]:
        name = r.name if len(r.name) <= 90 else r.name[:87] + "..."
        lines.append(f"| `{name}` | {r.kind} | {r.calls / reps:g} | {r.self_us / reps / 1000:.3f} | "
                     f"{100 * r.self_us / (total or 1):.1f}% |")
    lines += ["", "torch.profiler's table:", "", "```", table, "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- running one case


def op_case_step(case, ctx, variant, mode):
    """(prepare, step) of an op case's variant, set up as the benchmark sets it up."""
    from .harness import mode_callables

    _, _, inputs, variants = case.setup(ctx)
    return mode_callables(variants[variant], inputs, case.grad_inputs, mode)


def train_case_step(case, ctx, variant):
    """(None, step) running one window of a training-step case's variant (its first window: steps 0..window-1;
    for StyleGAN2 paper256 that is a whole regularization cycle)."""
    from .training import window_starts

    torch._dynamo.reset()  # the compile variant compiles from scratch, as TrainCase.measure_variant does
    spec = case.spec(ctx)
    recipe = case.build(ctx, spec, variant)
    batch = case.make_batch(spec, ctx.device)
    start = window_starts(spec)[0]

    def step(_):
        for i in range(start, start + spec.window):
            recipe.train_step(batch, i)

    return None, step


def profile_case(case, ctx, variant, mode, reps, warmup):
    """Runs the case's step `warmup` times, then `reps` times under torch.profiler; returns the profiler."""
    from torch.profiler import ProfilerActivity, profile, record_function

    if case.suite == "train":
        prepare, step = train_case_step(case, ctx, variant)
    else:
        prepare, step = op_case_step(case, ctx, variant, mode)

    def once():
        state = prepare() if prepare is not None else None
        with record_function("fusegan.profiled_step"):  # the step, apart from its untimed preparation
            step(state)

    for _ in range(warmup):
        once()
    ctx.timer.sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(reps):
            once()
        ctx.timer.sync()
    return prof


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("case", help="a case name, or a part of one that matches exactly one case")
    parser.add_argument("--variant", default="fusegan", choices=("fusegan", "eager", "compile"))
    parser.add_argument("--mode", default="fwdbwd", choices=("fwd", "bwd", "fwdbwd"), help="op cases only")
    parser.add_argument("--reps", type=int, default=10, help="profiled repetitions (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="repetitions before profiling (default 3)")
    parser.add_argument("--rows", type=int, default=25, help="kernels listed (default 25)")
    parser.add_argument("--out", metavar="DIR", help="write profile.md and profile.json here (default: print)")
    parser.add_argument("--trace", action="store_true", help="also write a Chrome trace (trace.json) to --out")
    parser.add_argument("--smoke", action="store_true", help="CPU plumbing check: tiny shapes, reference path")
    return parser


def find_case(text):
    """The one case whose name is `text`, or else the one whose name contains it."""
    from .registry import discover

    cases = discover()
    exact = [c for c in cases if c.name == text]
    matches = exact or [c for c in cases if text in c.name]
    if len(matches) != 1:
        names = ", ".join(c.name for c in matches[:8]) or "none"
        raise SystemExit(f"python -m benchmarks.profile: {text!r} matches {len(matches)} cases ({names}); "
                         "give one case (python -m benchmarks --list)")
    return matches[0]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.reps < 1 or args.warmup < 0:
        print("python -m benchmarks.profile: --reps must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    from .cli import NO_GPU_LINE
    from .harness import RunContext

    if not args.smoke and not torch.cuda.is_available():
        print(NO_GPU_LINE)
        return 0
    case = find_case(args.case)
    command = "python -m benchmarks.profile " + " ".join(argv)
    ctx = RunContext(smoke=args.smoke, command=command, variants=(args.variant,))
    mode = "train" if case.suite == "train" else args.mode
    prof = profile_case(case, ctx, args.variant, mode, args.reps, args.warmup)

    on_device = ctx.device.type == "cuda"
    rows = summarize_events(prof.key_averages(), on_device, fusegan_kernel_names())
    sort_key = "self_device_time_total" if on_device else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_key, row_limit=args.rows)
    title = f"{case.name}, {args.variant}, {mode}"
    meta = {"case": case.name, "variant": args.variant, "mode": mode, "reps": args.reps, "on_device": on_device,
            "gpu": ctx.env["gpu"], "torch": ctx.env["torch"], "triton": ctx.env["triton"], "date": ctx.env["date"],
            "git_commit": ctx.env["git_commit"], "command": command}
    markdown = render_markdown(title, meta, rows, args.reps, args.rows, table)
    if args.out is None:
        print(markdown)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.md").write_text(markdown)
    kinds = {k: {"us_per_rep": us, "share": share} for k, (us, share) in by_kind(rows, args.reps).items()}
    data = {"meta": meta, "by_kind": kinds, "kernels": [dataclasses.asdict(r) for r in rows]}
    (out / "profile.json").write_text(json.dumps(data, indent=1))
    written = [out / "profile.md", out / "profile.json"]
    if args.trace:
        prof.export_chrome_trace(str(out / "trace.json"))
        written.append(out / "trace.json")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
