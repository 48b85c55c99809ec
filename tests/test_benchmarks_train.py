"""Training-step benchmarks on the CPU: the measurement logic with a fake recipe and timer (amortization over
rotating windows, FLOPs per step, MFU, images/s, memory fields, a failing variant), and a pytest-benchmark smoke run
of every registered train case (tiny networks, reference path, a step or two). Nothing here is about speed."""
import math

import pytest
import torch

from benchmarks import harness, registry, training
from benchmarks.records import FIELDS, VARIANTS
from benchmarks.stats import percentile
from benchmarks.training import TrainCase, TrainSpec, amortized_stats, window_starts
from bench_helpers import FakeMemory, one_cpu_thread  # noqa: F401 (one_cpu_thread: an autouse fixture)


# ---------------------------------------------------------------- amortization maths


def test_window_starts_and_amortized_percentiles():
    assert window_starts(TrainSpec(256, 32, {}, window=16, cycle=16)) == [0]
    assert window_starts(TrainSpec(1024, 32, {}, window=4, cycle=16)) == [0, 4, 8, 12]
    # Config-f style: four 4-step windows; the first also runs R1, so it is slower.
    times = {0: [40.0, 44.0, 42.0], 4: [20.0, 21.0, 22.0], 8: [20.0, 20.0, 23.0], 12: [19.0, 21.0, 20.0]}
    stats = amortized_stats(times, cycle=16)
    for q in (20, 50, 80):
        assert stats[f"p{q}"] == pytest.approx(sum(percentile(t, q) for t in times.values()) / 16)
    assert stats["p50"] == pytest.approx((42 + 21 + 20 + 20) / 16)
    assert stats["reps"] == 3
    with pytest.raises(ValueError):
        amortized_stats({0: [1.0], 4: []}, cycle=8)


def test_a_cycle_must_be_a_multiple_of_the_window():
    spec = TrainSpec(16, 2, {}, window=1)
    with pytest.raises(ValueError, match="multiple of window"):
        TrainCase(op="x", name="x", recipe="dcgan", data_kind="image", channels=3,
                  full=TrainSpec(64, 8, {}, window=3, cycle=16), smoke=spec, amortization="")
    case = TrainCase(op="x", name="x", recipe="dcgan", data_kind="image", channels=3,
                     full=TrainSpec(64, 8, {}, window=5), smoke=spec, amortization="")
    assert case.full.cycle == 5 and case.smoke.cycle == 1  # no regularization: a window is the unit


# ---------------------------------------------------------------- the measurement, with a fake recipe and timer

M, N, K = 8, 6, 5  # each fake step multiplies [M, K] @ [K, N]: 2*M*N*K FLOPs


class FakeRecipe:
    def __init__(self, variant, events):
        self.variant, self.events, self.nonfinite = variant, events, []
        self.a, self.b = torch.randn(M, K), torch.randn(K, N)

    def train_step(self, batch, step):
        self.events.append((self.variant, step))
        return {"loss": (self.a @ self.b).sum().detach()}


class FakeCase(TrainCase):
    """A TrainCase whose recipe is FakeRecipe (one matmul per step), one of whose variants can be made to fail."""

    fail = None

    def build(self, ctx, spec, variant):
        if variant == self.fail:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return FakeRecipe(variant, self.events)


class FakeStepTimer:
    """Times a window by its first step: 10 ms for the window starting at step 0 (the one with R1), else 6 ms."""

    name = "fake"

    def __init__(self, events):
        self.events = events

    def sync(self):
        pass

    def time_reps(self, step, reps, prepare=None):
        out = []
        for _ in range(reps):
            before = len(self.events)
            step(None)
            out.append(10.0 if self.events[before][1] == 0 else 6.0)
        return out


def _fake_run(min_reps, fail=None):
    """(records, ctx, steps per variant) of FakeCase measured with the fake timer and memory."""
    events = []
    case = FakeCase(op="fake", name="train.fake", recipe="fake", data_kind="image", channels=3,
                    full=TrainSpec(64, 8, {}, window=2, cycle=4), smoke=TrainSpec(8, 4, {}, window=2, cycle=4),
                    amortization="two 2-step windows", targets={"train": {"vs_eager": 1.3}})
    case.events, case.fail = events, fail
    ctx = harness.RunContext(smoke=True, command="pytest")
    ctx.measure_peaks()
    ctx.peaks["matmul"]["value"] = 1e-9  # TFLOP/s, so that MFU is a plain ratio below
    ctx.train_budget = harness.TrainBudget(warmup=1, seconds=0.0, min_reps=min_reps, max_reps=min_reps)
    ctx.memory = FakeMemory(base_mib=100, peak_mib=300)
    ctx.step_timer = FakeStepTimer(events)
    records = case.run(ctx)
    steps = {v: [s for variant, s in events if variant == v] for v in VARIANTS}
    return records, ctx, steps


def test_train_measurement_amortizes_counts_flops_and_records_memory():
    records, ctx, steps = _fake_run(min_reps=2)
    assert [r["variant"] for r in records] == list(VARIANTS)
    # Each variant: one warm-up cycle (steps 0..3, in windows starting at 0 and 2), then 2 timed cycles.
    for variant in VARIANTS:
        assert steps[variant] == [0, 1, 2, 3] * 3
    flops_per_step = 2 * M * N * K
    for r in records:
        assert set(r) == set(FIELDS) and r["error"] is None
        assert r["suite"] == "train" and r["mode"] == "train" and r["metric"] == "time_per_step" and r["unit"] == "ms"
        # per step = (10 ms + 6 ms) per 4-step cycle
        assert r["p20"] == r["p50"] == r["p80"] == pytest.approx(4.0) and r["reps"] == 2
        assert r["steps_per_rep"] == 2 and r["shape"] == [4, 3, 8, 8]
        assert r["img_per_s"] == pytest.approx(4 / 4e-3) and r["sec_per_kimg"] == pytest.approx(1000 / 1000)
        assert r["flops"] == flops_per_step  # counted once, on 'eager', over one whole cycle, divided by 4
        assert r["tflops"] == pytest.approx(flops_per_step / 4e-3 / 1e12)
        assert r["frac_matmul_peak"] == pytest.approx(r["tflops"] / 1e-9)
        assert r["base_mem_mib"] == pytest.approx(100.0) and r["peak_mem_mib"] == pytest.approx(300.0)
        assert r["speedup_vs_eager"] == pytest.approx(1.0) and r["check"] == "ok"
    info = ctx.case_info["train.fake"]
    assert info["flops_per_step"] == flops_per_step and info["window"] == 2 and info["cycle"] == 4
    assert info["amortization"] == "two 2-step windows" and "synthetic" in info["data"]


def test_tf32_switches_come_back_in_a_state_the_legacy_getter_refuses():
    """A train case saves the TF32 switches, lets Precision() set them (legacy API) and restores them. Conv TF32
    beside RNN IEEE (set through the new API) makes torch's legacy `cudnn.allow_tf32` getter raise: saving must not
    read it, and restoring must give back each switch."""
    from fusegan.engine.precision import Precision

    switches = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)
    before = [s.fp32_precision for s in switches]
    try:
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.cudnn.rnn.fp32_precision = "ieee"
        saved = training._backend_flags()
        Precision("tf32", torch.device("cpu"))
        assert [s.fp32_precision for s in switches] == ["tf32", "tf32", "tf32"]
        training._restore_backend_flags(saved)
        assert [s.fp32_precision for s in switches] == ["ieee", "tf32", "ieee"]
    finally:
        for s, value in zip(switches, before):
            s.fp32_precision = value


def test_a_failing_variant_keeps_the_others():
    records, _, steps = _fake_run(min_reps=1, fail="compile")
    by_variant = {r["variant"]: r for r in records}
    assert steps["compile"] == []
    assert by_variant["compile"]["error"].startswith("RuntimeError: CUDA out of memory")
    assert by_variant["compile"]["p50"] is None and by_variant["compile"]["impl"] == "ref+torch.compile[eager]"
    assert by_variant["fusegan"]["speedup_vs_compile"] is None
    assert by_variant["fusegan"]["speedup_vs_eager"] == pytest.approx(1.0)


def test_flop_counter_works_through_a_gradient_with_respect_to_a_leaf():
    """R1 differentiates D's output with respect to the real images (a leaf): torch's ModuleTracker raises there,
    the counter used here does not, and counts conv forward, input gradient and its backward exactly."""
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    conv = 2 * 2 * 4 * 3 * 9 * 8 * 8  # 2 * N * C_out * C_in * k * k * H * W
    with training.flop_counter() as counter:
        y = torch.nn.functional.conv2d(x, w, padding=1)
        (g,) = torch.autograd.grad(y.sum(), [x], create_graph=True)
    assert counter.get_total_flops() == 2 * conv  # forward + the input gradient (a transposed conv)
    with training.flop_counter() as counter:
        g.square().sum().backward()
    assert counter.get_total_flops() >= conv and w.grad is not None


def test_compile_variant_uses_the_context_backend():
    """The compile variant builds its recipe with TrainContext.compile_backend (eager in smoke runs)."""
    import argparse

    from fusegan.engine.precision import Precision
    from fusegan.engine.recipes import get_recipe
    from fusegan.engine.recipes.base import DataInfo, TrainContext

    recipe_cls = get_recipe("dcgan")
    parser = argparse.ArgumentParser()
    recipe_cls.add_arguments(parser)
    ctx = TrainContext(device=torch.device("cpu"), precision=Precision("fp32", "cpu"), batch_size=2, compile=True,
                       compile_backend="eager", impl="ref")
    recipe = recipe_cls(ctx, parser.parse_args(["--nz", "4", "--ngf", "2", "--ndf", "2"]), DataInfo(32, 1))
    assert isinstance(recipe.G_fwd, torch._dynamo.eval_frame.OptimizedModule)
    assert recipe.G_fwd._orig_mod is recipe.G


# ---------------------------------------------------------------- the registered cases


def test_registry_finds_the_issue_8_training_steps():
    cases = {c.name: c for c in registry.discover("train")}
    assert set(cases) == {"train.stylegan2.paper256.256px_b32", "train.stylegan2.config_f.1024px_b32",
                          "train.dcgan.64px_b128", "train.pix2pix.unet_256.256px_b16",
                          "train.cyclegan.resnet_9blocks.256px_b4"}
    paper = cases["train.stylegan2.paper256.256px_b32"]
    assert paper.shape == (32, 3, 256, 256) and paper.full.options == {"cfg": "paper256"}
    assert (paper.full.window, paper.full.cycle) == (16, 16)  # 4 Greg + 1 Dreg in every repetition
    assert paper.targets == {"train": {"vs_eager": 1.5, "vs_compile": 1.25, "frac_matmul_peak": 0.4}}
    config_f = cases["train.stylegan2.config_f.1024px_b32"]
    assert config_f.shape == (32, 3, 1024, 1024) and config_f.full.options == {"cfg": "stylegan2"}
    assert (config_f.full.window, config_f.full.cycle) == (4, 16)
    assert cases["train.dcgan.64px_b128"].shape == (128, 3, 64, 64)
    assert cases["train.pix2pix.unet_256.256px_b16"].shape == (16, 3, 256, 256)
    assert cases["train.cyclegan.resnet_9blocks.256px_b4"].shape == (4, 3, 256, 256)
    for name in ("train.dcgan.64px_b128", "train.pix2pix.unet_256.256px_b16", "train.cyclegan.resnet_9blocks.256px_b4"):
        assert cases[name].targets == {"train": {"vs_eager": 1.3, "vs_compile": 1.1}}
    assert all(c.precision == "bf16" and c.layout == "channels_last" and c.dtype == torch.bfloat16 for c in cases.values())
    assert [c.name for c in harness.select_cases(list(cases.values()), only="stylegan2")] == [
        "train.stylegan2.paper256.256px_b32", "train.stylegan2.config_f.1024px_b32"]


# Config-f's smoke run is paper256's code at the same tiny size: its compile variant adds 7 s and nothing else.
SMOKE_VARIANTS = {"train.stylegan2.config_f.1024px_b32": ("fusegan", "eager")}


@pytest.mark.parametrize("case", registry.discover("train"), ids=lambda c: c.name)
def test_registered_train_cases_smoke(case, benchmark):
    """Every registered training step runs end to end in smoke mode (tiny networks, reference path, fp32, a step or
    two per window) in every variant, under pytest-benchmark; the records are complete and consistent."""
    variants = SMOKE_VARIANTS.get(case.name, VARIANTS)
    ctx = harness.RunContext(smoke=True, command="pytest", variants=variants)
    ctx.measure_peaks()
    records = benchmark.pedantic(case.run, args=(ctx,), rounds=1, iterations=1)
    assert [r["variant"] for r in records] == list(variants)
    flops = records[0]["flops"]
    assert flops and flops > 0
    for r in records:
        assert set(r) == set(FIELDS)
        assert r["error"] is None, r["error"]
        assert r["case"] == case.name and r["suite"] == "train" and r["mode"] == "train" and r["op"] == case.op
        assert r["shape"] == list(case.smoke_shape) and r["dtype"] == "float32" and r["layout"] == "channels_last"
        assert r["metric"] == "time_per_step" and r["unit"] == "ms" and r["timer"] == "wall_clock"
        assert 0 < r["p20"] <= r["p50"] <= r["p80"] and r["reps"] == 1 and r["steps_per_rep"] == case.smoke.window
        assert r["img_per_s"] == pytest.approx(case.smoke.batch / (r["p50"] * 1e-3))
        assert r["sec_per_kimg"] == pytest.approx(1000 / r["img_per_s"])
        assert r["flops"] == flops and r["frac_matmul_peak"] > 0
        assert r["peak_mem_mib"] is None and r["base_mem_mib"] is None  # no allocator statistics on the CPU
        assert r["check"] == "ok" and r["speedup_vs_eager"] > 0
        assert r["impl"] == {"fusegan": "ref", "eager": "ref", "compile": "ref+torch.compile[eager]"}[r["variant"]]
    info = ctx.case_info[case.name]
    assert info["flops_per_step"] == flops and info["precision"] == "fp32" and info["recipe"] == case.recipe
    assert not math.isnan(info["flops_per_step"])


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["train.dcgan.64px_b128", "train.stylegan2.paper256.256px_b32"])
def test_registered_train_case_at_smoke_size_on_the_gpu(name):
    """The real variants on a CUDA device (Triton kernels, the eager reference, inductor), at the smoke sizes: the
    records are complete, memory is measured, the timer is CUDA events, and the TF32 switches come back as they were."""
    import dataclasses

    case = {c.name: c for c in registry.discover("train")}[name]
    small = dataclasses.replace(case, full=dataclasses.replace(case.smoke))  # the GPU path at the tiny size
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    ctx = harness.RunContext(quick=True, command="pytest")
    ctx.measure_peaks()
    records = small.run(ctx)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
    assert [r["variant"] for r in records] == list(VARIANTS)
    for r in records:
        assert r["error"] is None, r["error"]
        assert r["timer"] == "cuda_events" and r["dtype"] == "bfloat16" and r["check"] == "ok"
        assert r["peak_mem_mib"] >= r["base_mem_mib"] > 0 and r["img_per_s"] > 0 and r["frac_matmul_peak"] > 0
    impls = {r["variant"]: r["impl"] for r in records}
    assert impls == {"fusegan": "default(triton)", "eager": "ref", "compile": "ref+torch.compile[inductor]"}
