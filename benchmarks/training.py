"""Whole-training-step benchmarks: one recipe's `train_step` (G step, D step, lazy regularization) timed in three
variants side by side, in one process, on the same synthetic batch.

- 'fusegan': the recipe as a user trains it, impl=None (every op picks its Triton kernels on a CUDA device);
- 'eager':   the same recipe and models on the pure-PyTorch reference path (impl='ref'), cuDNN benchmark mode;
- 'compile': that reference path with the recipe's own --compile (ctx.compile=True): torch.compile of the main
             phases' forwards; the regularization phases (double backward) stay eager, as in training.
Every variant runs Precision('bf16') (bf16 mixed precision; StyleGAN2 casts its blocks itself) and the case's
memory layout (channels_last), builds its networks from the same seed, and trains on random tensors made once on
the device (no data loading, no disk I/O: the step alone is measured).

What one measurement is. Lazy regularization makes steps unequal: StyleGAN2 runs path length every 4th step and
R1 every 16th, so 16 consecutive steps starting at step 0 (4 Greg + 1 Dreg phases, 16 Gmain + 16 Dmain) are the
unit that repeats: the case's `cycle`. A timed repetition is `window` consecutive `train_step` calls:
- window == cycle (StyleGAN2 paper256: 16 steps): each repetition is steps 0..15, amortized exactly as in training;
- window < cycle (config-f: 4 steps): repetitions rotate through the windows starting at 0, 4, 8, 12, so every
  window holds one Greg and the first also the Dreg; the time per cycle is the sum over windows of each window's
  percentile (the p50 of a cycle is the sum of the windows' p50s), so p50 is still amortized as in training;
- no regularization (DCGAN, pix2pix, CycleGAN): `window` steps per repetition (cycle = window), to average
  over several short steps.
Times are reported per training step (cycle time / cycle); images/s = batch / that, sec/kimg = 1000 / images/s.

FLOPs: torch.utils.flop_counter.FlopCounterMode counts the matmul/conv FLOPs of one whole cycle on the 'eager'
variant (its first warm-up cycle), divided by the cycle length: the model's FLOPs per step, the same for every
variant (the fused Triton kernels are opaque to the counter, and model-FLOPs utilization should not depend on the
implementation anyway). MFU = FLOPs per step / time per step / the bf16 matmul peak measured at the run's start.

Peak memory: torch.cuda.max_memory_allocated over the timed repetitions (the networks, Adam state and batch are in
`base_mem_mib`, allocated before the counter is reset). Variants run one after the other, each freeing everything
before the next is built, so none sees another's memory.
"""
import dataclasses
import gc
import time
from typing import Optional

import torch

from .harness import _dtype_name, _error_text, mark_throttling
from .records import TRAIN_MODE, build_records, memory_fields
from .stats import percentile

PERCENTILES = (20, 50, 80)


@dataclasses.dataclass
class TrainSpec:
    """The sizes of one training-step measurement."""

    resolution: int
    batch: int
    options: dict        # recipe option overrides (names as in recipe_options: 'cfg', 'ngf', ...)
    window: int          # train_step calls per timed repetition
    cycle: Optional[int] = None  # steps after which the regularization pattern repeats (a multiple of window);
                                 # None: no regularization, one window is the unit
    warmup: Optional[int] = None  # warm-up cycles, at most (None: the budget's); the first compiles everything


@dataclasses.dataclass
class TrainCase:
    """One model's training step: a recipe, its options and sizes (full and smoke), and its targets."""

    op: str              # the model family, as --only matches it: 'stylegan2', 'dcgan', ...
    name: str
    recipe: str          # fusegan.engine.recipes name
    data_kind: str       # 'image' (images, labels), 'paired' or 'unpaired' (A, B)
    channels: int
    full: TrainSpec
    smoke: TrainSpec
    amortization: str    # one line: what a measurement covers, shown in the report
    targets: dict = dataclasses.field(default_factory=dict)  # {'train': {'vs_eager': x, 'vs_compile': y, ...}}
    quick: bool = False  # part of --quick
    layout: str = "channels_last"
    precision: str = "bf16"
    seed: int = 0
    suite: str = "train"
    modes: tuple = (TRAIN_MODE,)

    def __post_init__(self):
        for spec in (self.full, self.smoke):
            if spec.cycle is None:
                spec.cycle = spec.window
            if spec.window < 1 or spec.cycle < 1 or spec.cycle % spec.window:
                raise ValueError(f"{self.name}: cycle ({spec.cycle}) must be a positive multiple of window ({spec.window})")

    @property
    def shape(self):
        return (self.full.batch, self.channels, self.full.resolution, self.full.resolution)

    @property
    def smoke_shape(self):
        return (self.smoke.batch, self.channels, self.smoke.resolution, self.smoke.resolution)

    @property
    def dtype(self):
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)

    def spec(self, ctx):
        return self.smoke if ctx.smoke else self.full

    def describe(self, ctx):
        spec = self.spec(ctx)
        return {"op": self.op, "suite": self.suite, "recipe": self.recipe, "shape": list(self.smoke_shape if ctx.smoke else self.shape),
                "precision": self.precision_for(ctx), "layout": self.layout, "options": spec.options,
                "window": spec.window, "cycle": spec.cycle, "amortization": self.amortization,
                "data": "synthetic: random tensors made once on the device (no data loading, no disk I/O)",
                "targets": self.targets}

    def precision_for(self, ctx):
        # The smoke run is fp32 (CPU bf16 convolutions are slow and not what a GPU runs anyway).
        return "fp32" if ctx.smoke else self.precision

    # ---- building -----------------------------------------------------------------------------------------
    def variant_setup(self, ctx, variant):
        """(impl, compile) of a variant: see the module docstring."""
        return {"fusegan": (ctx.fused_train_impl, False), "eager": ("ref", False), "compile": ("ref", True)}[variant]

    def build(self, ctx, spec, variant):
        """A fresh recipe for `variant`, seeded so that every variant starts from the same weights."""
        from fusegan.engine.precision import Precision
        from fusegan.engine.recipes import get_recipe
        from fusegan.engine.recipes.base import DataInfo, TrainContext
        from fusegan.engine.trainer import recipe_options

        impl, compiled = self.variant_setup(ctx, variant)
        recipe_cls = get_recipe(self.recipe)
        options = recipe_options(recipe_cls, spec.options)
        train_ctx = TrainContext(device=ctx.device, precision=Precision(self.precision_for(ctx), ctx.device),
                                 batch_size=spec.batch, seed=self.seed, channels_last=self.layout == "channels_last",
                                 compile=compiled, compile_backend=ctx.compile_backend, impl=impl)
        paired = self.data_kind in ("paired", "unpaired")
        data = DataInfo(resolution=spec.resolution, channels=self.channels, kind=self.data_kind,
                        channels_b=self.channels if paired else None)
        torch.manual_seed(self.seed)
        return recipe_cls(train_ctx, options, data)

    def make_batch(self, spec, device):
        """What the trainer hands train_step, as random tensors: images in [-1, 1] in the case's layout, and
        labels -1 (unlabeled) or a second image tensor (paired / unpaired data)."""
        generator = torch.Generator(device="cpu").manual_seed(self.seed + 1)
        fmt = torch.channels_last if self.layout == "channels_last" else torch.contiguous_format

        def images():
            x = torch.rand(spec.batch, self.channels, spec.resolution, spec.resolution, generator=generator) * 2 - 1
            return x.to(device).contiguous(memory_format=fmt)

        if self.data_kind == "image":
            return images(), torch.full((spec.batch,), -1, dtype=torch.int64, device=device)
        return images(), images()

    # ---- measuring ----------------------------------------------------------------------------------------
    def run(self, ctx):
        """Measures every variant of ctx; returns one record per variant."""
        spec = self.spec(ctx)
        saved_flags = _backend_flags()  # Precision() sets the TF32 switches globally: restore them afterwards
        before = ctx.telemetry.read()
        timings, extra, flops_per_step = {}, {}, None
        try:
            for variant in ctx.variants:
                impl, compiled = self.variant_setup(ctx, variant)
                extra[variant] = {"impl": _impl_name(ctx, impl, compiled), "steps_per_rep": spec.window}
                try:
                    stats, info, flops = self.measure_variant(ctx, spec, variant, count_flops=variant == "eager")
                except Exception as exc:  # one broken variant (out of memory, a kernel error) keeps the others
                    timings[variant] = _error_text(exc)
                else:
                    timings[variant] = stats
                    extra[variant].update(info)
                    if flops:
                        flops_per_step = flops / spec.cycle
                finally:
                    _release(ctx)
        finally:
            _restore_backend_flags(saved_flags)
        after = ctx.telemetry.read()
        shape = list(self.smoke_shape if ctx.smoke else self.shape)
        base = {"suite": self.suite, "op": self.op, "case": self.name, "mode": TRAIN_MODE, "shape": shape,
                "dtype": _dtype_name(ctx.smoke_dtype if ctx.smoke else self.dtype), "layout": self.layout}
        records = build_records(base, timings, ctx.env, ctx.peaks, flops=flops_per_step, images=spec.batch,
                                extra=extra, metric="time_per_step")
        mark_throttling(records, before, after)
        ctx.case_info[self.name] = {**self.describe(ctx), "flops_per_step": flops_per_step,
                                    "flops_counted_on": "eager (impl='ref'), one cycle, FlopCounterMode",
                                    "telemetry": {"before": before, "after": after}}
        return records

    def measure_variant(self, ctx, spec, variant, count_flops=False):
        """(stats per training step, extra record fields, FLOPs of one cycle or None) for one variant."""
        torch._dynamo.reset()  # each compile variant compiles from scratch
        recipe = self.build(ctx, spec, variant)
        batch = self.make_batch(spec, ctx.device)
        windows = window_starts(spec)
        timer = ctx.step_timer
        budget = ctx.train_budget
        last_losses = {}

        def run_window(start):
            for step in range(start, start + spec.window):
                last_losses.update(recipe.train_step(batch, step))

        flops = None
        cycle_seconds = None
        warmup = budget.warmup if spec.warmup is None else min(budget.warmup, spec.warmup)
        for warm in range(max(warmup, 1)):
            timer.sync()
            begin = time.perf_counter()
            for start in windows:
                if warm == 0 and count_flops:
                    with flop_counter() as counter:
                        run_window(start)
                    flops = (flops or 0) + counter.get_total_flops()
                else:
                    run_window(start)
            timer.sync()
            cycle_seconds = time.perf_counter() - begin  # the last warm-up cycle estimates one cycle's time

        reps = budget.min_reps if budget.seconds <= 0 else int(budget.seconds / max(cycle_seconds, 1e-6))
        reps = max(budget.min_reps, min(budget.max_reps, reps))
        base_bytes = ctx.memory.reset()
        times = {start: [] for start in windows}
        for rep in range(reps):
            for start in windows:
                times[start] += timer.time_reps(lambda _, s=start: run_window(s), 1)
            if rep + 1 >= budget.min_reps and ctx.past_deadline():
                break
        info = memory_fields(base_bytes, ctx.memory.peak())
        info["check"] = finiteness_check(recipe, last_losses)
        del recipe, batch
        return amortized_stats(times, spec.cycle), info, flops


def window_starts(spec):
    """The first step of each timed window: 0, window, 2*window, ... below cycle."""
    return list(range(0, spec.cycle, spec.window))


def amortized_stats(times_by_window, cycle):
    """{'p20', 'p50', 'p80', 'reps'} in ms per training step: for each percentile, the sum over the windows of that
    window's percentile (one cycle's time), divided by the cycle's steps. `reps` is the number of whole cycles."""
    if not times_by_window or any(not t for t in times_by_window.values()):
        raise ValueError("every window needs at least one timing")
    stats = {f"p{q}": sum(percentile(t, q) for t in times_by_window.values()) / cycle for q in PERCENTILES}
    stats["reps"] = min(len(t) for t in times_by_window.values())
    return stats


def finiteness_check(recipe, losses):
    """'ok' when the last step's losses are finite and no optimizer step was skipped as non-finite; the
    timings of a diverged run are not those of training."""
    skipped = sorted(set(getattr(recipe, "nonfinite", [])))
    bad = sorted(k for k, v in losses.items() if isinstance(v, torch.Tensor) and not bool(torch.isfinite(v).all()))
    if not skipped and not bad:
        return "ok"
    return "NONFINITE " + ",".join(skipped + bad)


class _NoModuleTracking:
    """Stands in for FlopCounterMode's ModuleTracker, whose backward hooks make torch.autograd.grad on a leaf
    (R1's gradient with respect to the real images) raise; only the global total is needed here."""

    parents = frozenset({"Global"})

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def flop_counter():
    """A torch.utils.flop_counter.FlopCounterMode that counts without per-module attribution."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()
    return counter


def _impl_name(ctx, impl, compiled):
    if impl is None:
        from fusegan.kernels._dispatch import resolve_impl

        impl = f"default({resolve_impl(None, ctx.device)})"
    return f"{impl}+torch.compile[{ctx.compile_backend}]" if compiled else impl


def _release(ctx):
    """Frees a finished variant: compiled graphs, Python garbage (an exception's frames), cached device blocks."""
    torch._dynamo.reset()
    gc.collect()
    ctx.memory.release()


def _tf32_switches():
    # The new precision API (torch >= 2.9): the legacy `cudnn.allow_tf32` getter raises when conv and RNN
    # precisions differ. Older torch has the legacy switches only.
    if getattr(torch.backends.cudnn, "conv", None) is None:
        return None
    return (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)


def _backend_flags():
    switches = _tf32_switches()
    if switches is None:
        return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    return tuple(switch.fp32_precision for switch in switches)


def _restore_backend_flags(flags):
    switches = _tf32_switches()
    if switches is None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        return
    for switch, value in zip(switches, flags):
        switch.fp32_precision = value

