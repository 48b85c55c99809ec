"""Audit of the benchmark suite before its first GPU run: each test here failed on the code as it was and names the
defect it guards against (CUDA, NVML and the device are faked; nothing here needs a GPU or measures speed).

- peak memory: the counter was reset before the warm-up, so one-off allocations of the first calls (cuDNN
  benchmark mode's trial workspaces, inductor's autotuning buffers) landed in a variant's peak;
- throttling: judged only from the reason bits of two idle readings, so a power cap that held the clocks down all
  through a case (and lets go the moment the GPU idles) was never flagged; idle was listed as a throttle reason;
- TF32: fp32 convs run in TF32 on a GPU (cuDNN's default, which the fused convs follow), yet were checked with
  fp32's 1e-4 tolerance (every fp32 conv_norm_act case would read MISMATCH) and scored against the bf16 peak.
"""
import sys
import types

import pytest
import torch

from benchmarks import harness, peaks, registry
from benchmarks.records import VARIANTS
from benchmarks.telemetry import Telemetry, case_throttle, decode_reasons, is_throttled
from benchmarks.training import TrainCase, TrainSpec
from bench_helpers import one_cpu_thread  # noqa: F401 (an autouse fixture: single-threaded CPU ops here)

# ---------------------------------------------------------------- peak memory


class RecordingMemory:
    """A DeviceMemory with allocator statistics that logs when it is reset and read."""

    available = True

    def __init__(self, events):
        self.events = events

    def reset(self):
        self.events.append("reset")
        return 0

    def peak(self):
        self.events.append("peak")
        return 0

    def release(self):
        pass


def test_peak_memory_counter_is_reset_after_the_warm_up_right_before_the_timed_reps():
    events = []
    ctx = harness.RunContext(smoke=True)
    ctx.budget = harness.Budget(warmup=2, seconds=0.0, min_reps=3, max_reps=3)
    ctx.memory = RecordingMemory(events)
    times, memory = ctx.measure_with_memory(lambda _: events.append("step"))
    # warm-up (2) and probe (3) first, then the reset, the 3 timed repetitions, and the peak
    assert events == ["step"] * 5 + ["reset"] + ["step"] * 3 + ["peak"]
    assert len(times) == 3 and memory == {"base_mem_mib": 0.0, "peak_mem_mib": 0.0}


# ---------------------------------------------------------------- throttling


def _fake_pynvml(violations):
    """A pynvml whose power-violation counter reads the next value of `violations` at each call; thermal is not
    supported (raises), as on some boards."""
    power = iter(violations)

    def violation_status(handle, policy):
        if policy == 0:
            return types.SimpleNamespace(referenceTime=0, violationTime=next(power))
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    return types.SimpleNamespace(
        NVML_CLOCK_SM=0, NVML_CLOCK_MEM=1, NVML_TEMPERATURE_GPU=0,
        NVML_PERF_POLICY_POWER=0, NVML_PERF_POLICY_THERMAL=1,
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByPciBusId=lambda bus: "handle",
        nvmlDeviceGetHandleByIndex=lambda i: "handle",
        nvmlDeviceGetName=lambda h: "Fake GPU",
        nvmlDeviceGetClockInfo=lambda h, kind: 1980,
        nvmlDeviceGetMaxClockInfo=lambda h, kind: 1980,
        nvmlDeviceGetPowerUsage=lambda h: 90_000,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700_000,
        nvmlDeviceGetTemperature=lambda h, kind: 40,
        nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0x1,  # idle, as after a synchronize
        nvmlDeviceGetViolationStatus=violation_status,
    )


def test_telemetry_reads_the_cumulative_violation_counters(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([100, 2_500_100]))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(pci_bus_id=0x1B, pci_domain_id=0, pci_device_id=0))
    telemetry = Telemetry(torch.device("cuda", 0))
    assert telemetry.available, telemetry.note
    before, after = telemetry.read(), telemetry.read()
    assert before["reasons"] == ["gpu_idle"] and not is_throttled(before) and not is_throttled(after)
    assert before["violation_ns"] == {"power": 100} and after["violation_ns"] == {"power": 2_500_100}
    # both readings idle, but the GPU spent 2.5 ms power-capped in between: that case throttled
    assert case_throttle(before, after) == (True, ["power_violation"])


class FakeTelemetry:
    """Readings before and after a case: idle bits at both, the power-violation counter as given."""

    available = True
    note = None

    def __init__(self, power_ns, bits=("gpu_idle",)):
        self.readings = iter([{"reasons": list(bits), "violation_ns": {"power": ns}} for ns in power_ns])

    def read(self):
        return next(self.readings)


def _toy_op_case(name="toy.op", tf32=False, dtype=torch.float32, skew=0.0):
    """An op case on CPU tensors whatever ctx.device says (so a context can pretend to be on a GPU); the fused
    variant is eager's result scaled by (1 + skew); one conv-sized FLOP model."""

    def make_inputs(shape, dtype, device, layout):
        return {"x": harness.make_tensor(shape, dtype, "cpu", layout)}

    def eager(x):
        return x * 2

    def fused(x, impl):
        return x * (2 * (1 + skew))

    fields = dict(tf32=True) if tf32 else {}
    return harness.OpCase(
        op="toy", name=name, shape=(2, 3, 4, 4), dtype=dtype, layout="contiguous", make_inputs=make_inputs,
        fused=fused, eager=eager, grad_inputs=("x",), smoke_shape=(2, 3, 4, 4),
        flops=lambda shape, mode: 10**9, **fields)


def test_an_op_case_that_was_power_capped_between_idle_readings_is_flagged():
    ctx = harness.RunContext(smoke=True, modes=("fwd",))
    ctx.measure_peaks()
    ctx.telemetry = FakeTelemetry([100, 5_000_100])
    records = _toy_op_case().run(ctx)
    assert [r["throttled"] for r in records] == [True] * len(VARIANTS)
    assert {r["throttle_reasons"] for r in records} == {"power_violation"}


def test_idle_and_application_clocks_are_not_throttle_reasons():
    ctx = harness.RunContext(smoke=True, modes=("fwd",))
    ctx.measure_peaks()
    ctx.telemetry = FakeTelemetry([7, 7], bits=("gpu_idle", "applications_clocks_setting"))
    records = _toy_op_case().run(ctx)
    assert {(r["throttled"], r["throttle_reasons"]) for r in records} == {(False, "")}


class _StepRecipe:
    nonfinite = []

    def train_step(self, batch, step):
        return {"loss": torch.zeros(())}


class _ToyTrainCase(TrainCase):
    def build(self, ctx, spec, variant):
        return _StepRecipe()


def test_a_training_step_that_was_power_capped_between_idle_readings_is_flagged():
    case = _ToyTrainCase(op="toy", name="train.toy", recipe="toy", data_kind="image", channels=3,
                         full=TrainSpec(8, 2, {}, window=1), smoke=TrainSpec(8, 2, {}, window=1), amortization="")
    ctx = harness.RunContext(smoke=True)
    ctx.measure_peaks()
    ctx.telemetry = FakeTelemetry([0, 40_000])
    records = case.run(ctx)
    assert [(r["throttled"], r["throttle_reasons"]) for r in records] == [(True, "power_violation")] * len(VARIANTS)


def test_board_limit_and_reliability_bits_are_slowdowns():
    assert decode_reasons(0x200 | 0x400 | 0x1) == ["board_limit", "reliability", "gpu_idle"]
    assert is_throttled({"reasons": decode_reasons(0x200)})
    assert case_throttle(None, None) == (None, None)


# ---------------------------------------------------------------- TF32


def test_measure_peaks_adds_a_tf32_matmul_peak_and_restores_the_switch(monkeypatch):
    seen = []
    real = peaks.measure_matmul_tflops

    def spy(timer, device, n, dtype=torch.bfloat16, budget_s=0.5):
        seen.append((dtype, torch.backends.cuda.matmul.fp32_precision))
        return real(timer, device, n, dtype=dtype, budget_s=budget_s)

    monkeypatch.setattr(peaks, "measure_matmul_tflops", spy)
    monkeypatch.setattr(torch.backends.cuda.matmul, "fp32_precision", "ieee")
    measured = peaks.measure_peaks(harness.WallClockTimer(), "cpu", smoke=True)
    assert measured["matmul_tf32"]["value"] > 0 and "TF32" in measured["matmul_tf32"]["what"]
    assert seen == [(torch.float32, "ieee"), (torch.float32, "tf32")]  # the plain peak, then the TF32 one
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"


def _gpu_context(monkeypatch, conv_precision="tf32"):
    """A smoke context that says it is on a GPU (the toy case keeps its tensors on the CPU), with known peaks."""
    monkeypatch.setattr(torch.backends.cudnn.conv, "fp32_precision", conv_precision)
    ctx = harness.RunContext(smoke=True, modes=("fwd",))
    ctx.device = torch.device("cuda", 0)
    ctx.peaks = {"copy": {"value": 3000.0}, "matmul": {"value": 800.0}, "matmul_tf32": {"value": 400.0}}
    return ctx


def test_fp32_conv_cases_on_a_gpu_are_checked_and_scored_as_tf32(monkeypatch):
    ctx = _gpu_context(monkeypatch)
    records = {r["variant"]: r for r in _toy_op_case(tf32=True, skew=5e-4).run(ctx)}
    fused = records["fusegan"]
    assert fused["check"] == "ok", fused["rel_err_vs_eager"]  # TF32 rounding apart, not a wrong result
    assert fused["matmul_peak_tflops"] == 400.0
    assert fused["frac_matmul_peak"] == pytest.approx(fused["tflops"] / 400.0)


def test_cases_without_tf32_keep_the_fp32_tolerance_and_the_bf16_peak(monkeypatch):
    ctx = _gpu_context(monkeypatch)
    fused = {r["variant"]: r for r in _toy_op_case(skew=5e-4).run(ctx)}["fusegan"]
    assert fused["check"] == "MISMATCH" and fused["matmul_peak_tflops"] == 800.0
    # TF32 switched off for convs: fp32 really is fp32, on both sides
    ctx = _gpu_context(monkeypatch, conv_precision="ieee")
    fused = {r["variant"]: r for r in _toy_op_case(tf32=True, skew=5e-4).run(ctx)}["fusegan"]
    assert fused["check"] == "MISMATCH" and fused["matmul_peak_tflops"] == 800.0
    # and in the CPU smoke run nothing is TF32
    ctx = harness.RunContext(smoke=True, modes=("fwd",))
    ctx.measure_peaks()
    fused = {r["variant"]: r for r in _toy_op_case(tf32=True, skew=5e-4).run(ctx)}["fusegan"]
    assert fused["check"] == "MISMATCH"


def test_the_registered_conv_cases_are_the_tf32_ones():
    tf32 = {c.name for c in registry.discover("ops") if c.tf32}
    assert tf32 == {c.name for c in registry.discover("ops") if c.op == "conv_norm_act"}
    assert any(name.endswith(".fp32") for name in tf32)


# ---------------------------------------------------------------- guards: checked and found correct


def _one_case_per_family():
    """The first registered op case of each eager function, and of modulated_conv2d's up=2 layers (their own
    code path through the same function)."""
    cases = {}
    for case in registry.discover("ops"):
        cases.setdefault((getattr(case.eager, "__func__", case.eager), "conv0_up" in case.name), case)
    return list(cases.values())


@pytest.mark.parametrize("case", _one_case_per_family(), ids=lambda c: c.name)
def test_the_compile_variant_is_one_graph_without_breaks(case):
    """'compile' must be torch.compile of the whole eager function: a graph break would time part of it eagerly.
    fullgraph=True raises on any break; traced with and without autograd, as the modes run it."""
    ctx = harness.RunContext(smoke=True)
    _, _, inputs, _ = case.setup(ctx)
    compiled = torch.compile(case.eager, fullgraph=True, backend="eager", dynamic=False)
    with torch.no_grad():
        compiled(**inputs)
    outs = harness._output_tensors(compiled(**inputs))
    assert outs and all(o.grad_fn is not None for o in outs)


@pytest.mark.parametrize("name", ["train.dcgan.64px_b128", "train.stylegan2.paper256.256px_b32"])
def test_the_compile_training_variant_compiles_nothing_after_its_first_cycle(name):
    """A compile variant that recompiled in the timed cycles (a guard on the step number, say) would time
    compilation, and past the recompile limit silently run eager. Everything compiles in the first warm-up cycle:
    later cycles add no frame, and nothing breaks the graph."""
    from torch._dynamo.utils import counters

    case = {c.name: c for c in registry.discover("train")}[name]
    ctx = harness.RunContext(smoke=True, variants=("compile",))
    spec = case.smoke
    torch._dynamo.reset()
    counters.clear()
    recipe = case.build(ctx, spec, "compile")
    batch = case.make_batch(spec, ctx.device)
    compiled_frames = []
    for _ in range(3):
        for step in range(spec.cycle):
            recipe.train_step(batch, step)
        compiled_frames.append(counters["frames"]["total"])
    torch._dynamo.reset()
    assert compiled_frames[0] > 0 and compiled_frames == [compiled_frames[0]] * 3
    assert not counters["graph_break"]


class _OpNamespaces(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the namespaces of the operators dispatched below autograd ('aten', 'fusegan', ...)."""

    def __init__(self):
        super().__init__()
        self.namespaces = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.namespaces.add(func.namespace)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", _one_case_per_family(), ids=lambda c: c.name)
def test_the_fusegan_variant_runs_fusegan_kernels_forward_and_backward(case):
    """impl='triton' must reach the fused custom ops (here through Triton's interpreter, which conftest switches
    on), in the forward and in the backward, and the eager baseline none of them: no variant silently runs the
    other's path."""
    ctx = harness.RunContext(smoke=True)
    ctx.fused_impl = "triton"  # what a GPU run passes; the interpreter runs it on the CPU
    _, _, inputs, variants = case.setup(ctx)
    leaves = [inputs[name] for name in case.grad_inputs]
    for variant, expect_fused in (("fusegan", True), ("eager", False)):
        with _OpNamespaces() as forward:
            outs = harness._output_tensors(variants[variant](inputs))
        with _OpNamespaces() as backward:
            torch.autograd.grad(outs, leaves, [torch.ones_like(o) for o in outs])
        assert ("fusegan" in forward.namespaces) == expect_fused, (variant, forward.namespaces)
        assert ("fusegan" in backward.namespaces) == expect_fused, (variant, backward.namespaces)


# ---------------------------------------------------------------- low-precision checks against an fp32 yardstick


def _rounding_case(skew=0.0):
    """bf16: eager adds x/100 fifty times, rounding to bf16 after each add (as eager code rounds after every op);
    the fused variant computes 1.5 x in fp32 and rounds once (times 1 + skew)."""

    def make_inputs(shape, dtype, device, layout):
        return {"x": harness.make_tensor(shape, dtype, "cpu", layout) * 4}

    def eager(x):
        y = x
        for _ in range(50):
            y = y + x * 0.01
        return y

    def fused(x, impl):
        return (x.float() * 1.5 * (1 + skew)).to(x.dtype)

    return harness.OpCase(op="toy", name="toy.bf16", shape=(4, 8, 16, 16), dtype=torch.bfloat16, layout="contiguous",
                          make_inputs=make_inputs, fused=fused, eager=eager, grad_inputs=("x",),
                          smoke_shape=(4, 8, 16, 16))


def _bf16_context():
    ctx = harness.RunContext(smoke=True, modes=("fwd",))
    ctx.smoke_dtype = torch.bfloat16
    ctx.measure_peaks()
    return ctx


def test_a_bf16_variant_more_accurate_than_eager_is_not_a_mismatch():
    torch.manual_seed(0)
    records = {r["variant"]: r for r in _rounding_case().run(_bf16_context())}
    fused, eager = records["fusegan"], records["eager"]
    assert fused["rel_err_vs_eager"] > harness.CHECK_TOLERANCE[torch.bfloat16]  # far from eager's rounding...
    assert fused["rel_err_vs_fp32"] < eager["rel_err_vs_fp32"] / 4  # ...because closer to the exact result
    assert fused["check"] == "ok"


def test_a_bf16_variant_less_accurate_than_eager_is_a_mismatch():
    torch.manual_seed(0)
    fused = {r["variant"]: r for r in _rounding_case(skew=0.3).run(_bf16_context())}["fusegan"]  # eager: 7% off
    assert fused["check"] == "MISMATCH" and fused["rel_err_vs_fp32"] > harness.CHECK_TOLERANCE[torch.bfloat16]
