"""The benchmark harness, exercised on the CPU: statistics, records and ratios, writers, CLI, and a smoke run.

Nothing here is about speed: the smoke run uses tiny shapes, the reference path and wall-clock timing, and
only checks that records come out complete and that results.json / results.csv / report.md round-trip.
"""
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from benchmarks import cli as bench_cli
from benchmarks import harness, registry, report, timing
from benchmarks.readme_table import readme_table
from benchmarks.records import FIELDS, MODES, VARIANTS, build_records
from benchmarks.stats import percentile, speedup, summarize
from benchmarks.telemetry import Telemetry, decode_reasons, is_throttled
from bench_helpers import one_cpu_thread  # noqa: F401 (an autouse fixture: single-threaded CPU ops here)

REPO_ROOT = Path(__file__).resolve().parent.parent

HAS_CUDA = torch.cuda.is_available()


ENV = {"gpu": "test gpu", "timer": "wall_clock", "torch": "t", "triton": "tr", "fusegan": "f", "git_commit": "abc",
       "cuda": None, "date": "2026-01-01T00:00:00+00:00", "command": "python -m benchmarks ops"}
PEAKS = {"copy": {"value": 2000.0, "what": "copy"}, "matmul": {"value": 500.0, "what": "mm"}}


# ---------------------------------------------------------------- statistics and records


def test_percentiles_of_known_numbers():
    assert summarize([5, 1, 4, 2, 3]) == pytest.approx({"p20": 1.8, "p50": 3.0, "p80": 4.2})
    assert summarize([7.0]) == {"p20": 7.0, "p50": 7.0, "p80": 7.0}
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile([10, 0], 0) == 0 and percentile([10, 0], 100) == 10
    with pytest.raises(ValueError):
        percentile([], 50)


def test_percentiles_match_numpy_linear_interpolation():
    np = pytest.importorskip("numpy")
    values = torch.rand(37, generator=torch.Generator().manual_seed(1)).tolist()
    for q in (0, 20, 50, 80, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_records_and_ratios_from_synthetic_timings():
    base = {"suite": "ops", "op": "toy", "case": "toy.a", "mode": "fwdbwd", "shape": [2, 3], "dtype": "bfloat16", "layout": "contiguous"}
    timings = {"fusegan": [1.0, 1.0, 2.0], "eager": [3.0, 3.0, 3.0], "compile": [2.0, 2.0, 2.0]}
    records = {r["variant"]: r for r in build_records(base, timings, ENV, PEAKS, bytes_moved=10**9, flops=10**12)}
    assert set(records) == set(VARIANTS)
    fused, eager, compiled = records["fusegan"], records["eager"], records["compile"]
    assert all(set(r) == set(FIELDS) for r in records.values())
    assert (fused["p20"], fused["p50"], fused["p80"]) == pytest.approx((1.0, 1.0, 1.6))
    assert fused["speedup_vs_eager"] == pytest.approx(3.0) and fused["speedup_vs_compile"] == pytest.approx(2.0)
    assert eager["speedup_vs_eager"] == pytest.approx(1.0) and eager["speedup_vs_compile"] == pytest.approx(2 / 3)
    assert compiled["speedup_vs_eager"] == pytest.approx(1.5) and compiled["speedup_vs_compile"] == pytest.approx(1.0)
    # 1e9 bytes in 1 ms = 1000 GB/s = half of the 2000 GB/s copy peak; 1e12 FLOP in 1 ms = 1000 TFLOP/s = 2x peak.
    assert fused["gbps"] == pytest.approx(1000.0) and fused["frac_copy_bw"] == pytest.approx(0.5)
    assert fused["tflops"] == pytest.approx(1000.0) and fused["frac_matmul_peak"] == pytest.approx(2.0)
    assert eager["gbps"] == pytest.approx(1000.0 / 3)
    assert fused["reps"] == 3 and fused["metric"] == "time" and fused["unit"] == "ms"
    assert fused["gpu"] == "test gpu" and fused["command"] == ENV["command"] and fused["mode"] == "fwdbwd"


def test_a_failed_variant_keeps_the_others_and_their_ratios():
    base = {"suite": "ops", "op": "toy", "case": "toy.a", "mode": "fwd"}
    records = build_records(base, {"fusegan": "RuntimeError: boom", "eager": [2.0], "compile": [4.0]}, ENV, PEAKS)
    by_variant = {r["variant"]: r for r in records}
    assert by_variant["fusegan"]["error"] == "RuntimeError: boom" and by_variant["fusegan"]["p50"] is None
    assert by_variant["fusegan"]["speedup_vs_eager"] is None
    assert by_variant["compile"]["speedup_vs_eager"] == pytest.approx(0.5)
    assert by_variant["eager"]["gbps"] is None  # no bytes model given
    assert speedup(None, 1.0) is None and speedup(2.0, None) is None


# ---------------------------------------------------------------- timers and telemetry (GPU code with fakes)


class _FakeEvent:
    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def test_cuda_event_timer_times_step_but_not_prepare(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    timer = timing.CudaEventTimer("cpu", flush_l2=False)
    calls = []

    def prepare():
        time.sleep(0.02)
        return "state"

    times = timer.time_reps(lambda state: calls.append(state), 4, prepare)
    assert calls == ["state"] * 4 and len(times) == 4
    assert max(times) < 10  # the 20 ms prepare is outside the timed region
    reps = timing.measure(timer, lambda _: None, warmup=2, budget_s=0.0, min_reps=5, max_reps=7)
    assert len(reps) == 5


def test_telemetry_reads_nvml_and_flags_throttling(monkeypatch):
    fake = types.SimpleNamespace(
        NVML_CLOCK_SM=0, NVML_CLOCK_MEM=1, NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByPciBusId=lambda bus: ("handle", bus),
        nvmlDeviceGetHandleByIndex=lambda i: ("handle", i),
        nvmlDeviceGetName=lambda h: b"Fake GPU",
        nvmlDeviceGetClockInfo=lambda h, kind: 1980 if kind == 0 else 2619,
        nvmlDeviceGetMaxClockInfo=lambda h, kind: 1980,
        nvmlDeviceGetPowerUsage=lambda h: 350_000,
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700_000,
        nvmlDeviceGetTemperature=lambda h, kind: 61,
        nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0x4 | 0x1,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    props = types.SimpleNamespace(pci_bus_id=0x1B, pci_domain_id=0, pci_device_id=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    telemetry = Telemetry(torch.device("cuda", 0))
    assert telemetry.available, telemetry.note
    reading = telemetry.read()
    assert reading["name"] == "Fake GPU" and reading["power_w"] == pytest.approx(350.0)
    assert reading["sm_clock_mhz"] == 1980 and reading["temperature_c"] == 61
    assert reading["reasons"] == ["sw_power_cap", "gpu_idle"] and is_throttled(reading)
    assert not is_throttled({"reasons": ["gpu_idle"]}) and is_throttled(None) is None
    assert decode_reasons(0x40) == ["hw_thermal_slowdown"]


def test_telemetry_without_pynvml_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    telemetry = Telemetry(torch.device("cuda", 0))
    assert not telemetry.available and "pynvml" in telemetry.note and telemetry.read() is None


# ---------------------------------------------------------------- smoke runs


def _toy_case(name, fused):
    def make_inputs(shape, dtype, device, layout):
        return {"x": harness.make_tensor(shape, dtype, device, layout), "b": harness.make_tensor(shape[1:2], dtype, device)}

    def eager(x, b):
        return torch.relu(x + b.view(1, -1, 1, 1))

    return harness.OpCase(
        op="toy", name=name, shape=(4, 4, 4, 4), dtype=torch.bfloat16, layout="channels_last", make_inputs=make_inputs,
        fused=fused, eager=eager, grad_inputs=("x", "b"), smoke_shape=(2, 3, 4, 5),
        bytes_moved=lambda shape, itemsize, mode: 2 * itemsize * shape[0] * shape[1] * shape[2] * shape[3],
        bytes_model="2N", targets={"fwdbwd": {"vs_eager": 1.0, "frac_copy_bw": 0.8}},
    )


def _toy_fused(x, b, impl):
    assert impl == "ref"  # the smoke run uses the reference path
    return torch.relu(x + b.view(1, -1, 1, 1))


def _broken_fused(x, b, impl):
    raise ModuleNotFoundError("no module named fusegan.kernels.toy")


def _check_records(records, case_names, modes=MODES):
    assert len(records) == len(case_names) * len(modes) * len(VARIANTS)
    assert {(r["case"], r["mode"], r["variant"]) for r in records} == {
        (c, m, v) for c in case_names for m in modes for v in VARIANTS
    }
    for r in records:
        assert set(r) == set(FIELDS)
        assert r["timer"] == "wall_clock" and r["metric"] == "time" and r["unit"] == "ms"
        assert r["impl"] in ("ref", "eager", "torch.compile[eager]") or (r["impl"] is None and r["error"])


def test_smoke_harness_with_pytest_benchmark(benchmark, tmp_path):
    ctx = harness.RunContext(smoke=True, command="pytest smoke")
    cases = [_toy_case("toy.ok", _toy_fused), _toy_case("toy.broken", _broken_fused)]
    meta, records = benchmark.pedantic(harness.run_cases, args=(ctx, cases), kwargs={"log": lambda line: None},
                                       rounds=1, iterations=1)
    _check_records(records, ["toy.ok", "toy.broken"])
    for r in records:
        broken = r["case"] == "toy.broken" and r["variant"] == "fusegan"
        assert (r["error"] is not None) == broken
        if not broken:
            assert 0 < r["p20"] <= r["p50"] <= r["p80"] and r["reps"] == 3
            assert r["gbps"] > 0 and r["frac_copy_bw"] > 0 and r["speedup_vs_eager"] > 0
        if r["variant"] != "eager" and not broken:
            assert r["check"] == "ok" and r["rel_err_vs_eager"] == 0
    assert meta["smoke"] and meta["peaks"]["copy"]["value"] > 0 and meta["cases"]["toy.ok"]["bytes_model"] == "2N"

    # The writers round-trip: JSON exactly, CSV with types restored, the markdown tables cell by cell.
    paths = report.write_results(tmp_path / "out", meta, records)
    json_meta, json_records = report.read_json(paths["results.json"])
    assert json_records == records and json_meta["cases"].keys() == meta["cases"].keys()
    assert report.read_csv(paths["results.csv"]) == [{k: r[k] for k in FIELDS} for r in records]
    assert paths["command.txt"].read_text().strip() == "pytest smoke"
    text = paths["report.md"].read_text()
    assert "CPU SMOKE RUN" in text and "toy.broken" in text
    ratio_rows = report.parse_markdown_tables(text)[0]
    assert len(ratio_rows) == 2 * len(MODES)
    by_key = {(r["case"], r["mode"], r["variant"]): r for r in records}
    for row in ratio_rows:
        fused = by_key[(row["case"], row["mode"], "fusegan")]
        eager = by_key[(row["case"], row["mode"], "eager")]
        assert row["eager ms"].split()[0] == report.fmt_ms(eager["p50"])
        if row["case"] == "toy.broken":
            assert row["fusegan ms"] == "error" and "fusegan failed" in row["notes"]
        else:
            assert row["fusegan ms"].split()[0] == report.fmt_ms(fused["p50"])
            assert row["× eager"] == report.fmt_ratio(fused["speedup_vs_eager"])
    targets = report.parse_markdown_tables(text)[1]
    assert {(t["case"], t["metric"]) for t in targets} == {(c, m) for c in ("toy.ok", "toy.broken") for m in ("vs_eager", "frac_copy_bw")}

    with pytest.raises(ValueError, match="smoke"):
        readme_table(json_meta, json_records)
    table = readme_table({**json_meta, "smoke": False}, json_records, modes=["fwdbwd"])
    assert json_meta["gpu"] in table.splitlines()[0] and "2026-01-01" not in table.splitlines()[0]
    assert json_meta["date"][:10] in table.splitlines()[0]
    readme_rows = report.parse_markdown_tables(table)[0]
    assert [(r["op"], r["mode"]) for r in readme_rows] == [("toy.ok", "fwdbwd"), ("toy.broken", "fwdbwd")]
    assert readme_rows[0]["fusegan ms"] == report.fmt_ms(by_key[("toy.ok", "fwdbwd", "fusegan")]["p50"])


def test_relative_error_sees_nan_and_a_case_that_cannot_start_still_yields_records():
    ref = torch.tensor([1.0, -4.0])
    assert harness.relative_error(torch.tensor([1.0, -3.0]), ref) == pytest.approx(0.25)
    assert math.isnan(harness.relative_error(torch.tensor([float("nan"), -4.0]), ref))
    assert harness.relative_error(ref, ref) == 0

    def no_inputs(shape, dtype, device, layout):
        raise RuntimeError("CUDA out of memory")

    case = _toy_case("toy.oom", _toy_fused)
    case.make_inputs = no_inputs
    ctx = harness.RunContext(smoke=True, modes=("fwd",))
    _, records = harness.run_cases(ctx, [case], log=lambda line: None)
    _check_records(records, ["toy.oom"], modes=("fwd",))
    assert all(r["error"] == "RuntimeError: CUDA out of memory" for r in records)


def _smoke_distinct(cases):
    """The cases whose smoke runs differ: the smoke run is fp32 at a tiny shape, so a '.bf16' case whose '.fp32'
    twin is registered runs exactly the same code and is left out."""
    names = {c.name for c in cases}
    return [c for c in cases if not (c.name.endswith(".bf16") and c.name[:-len(".bf16")] + ".fp32" in names)]


@pytest.mark.parametrize("case", _smoke_distinct(registry.discover("ops")), ids=lambda c: c.name)
def test_registered_op_cases_smoke(case):
    """Every registered op case (up to fp32/bf16 twins) runs end to end in smoke mode (fwdbwd only, to stay quick)."""
    ctx = harness.RunContext(smoke=True, modes=("fwdbwd",), command="pytest")
    ctx.measure_peaks()
    records = case.run(ctx)
    _check_records(records, [case.name], modes=("fwdbwd",))
    for r in records:
        assert r["error"] is None, r["error"]
        assert r["bytes_moved"] > 0 and r["shape"] == list(case.smoke_shape) and r["dtype"] == "float32"
    for r in records:
        if r["variant"] != "eager":
            assert r["check"] == "ok", (r["variant"], r["rel_err_vs_eager"])


def test_registry_finds_the_issue_2_cases():
    cases = [c for c in registry.discover("ops") if c.op in ("bias_act", "upfirdn2d")]
    names = [c.name for c in cases]
    assert "bias_act.lrelu_bias_clamp.channels_last" in names and "bias_act.lrelu_bias_clamp.contiguous" in names
    assert "upfirdn2d.up2_f1331.contiguous" in names
    assert all(c.shape == (32, 512, 64, 64) and c.dtype == torch.bfloat16 for c in cases)
    assert {"ops_bias_act", "ops_upfirdn2d"} <= set(registry.case_modules("ops"))
    assert [c.op for c in harness.select_cases(cases, only="upfirdn2d")] == ["upfirdn2d", "upfirdn2d"]
    assert [c.name for c in harness.select_cases(cases, only="contiguous", quick=True)] == [
        "bias_act.lrelu_bias_clamp.contiguous", "upfirdn2d.up2_f1331.contiguous"]


def test_op_cases_eager_code_matches_an_independent_formula():
    """The eager baselines compute what the fused ops are documented to compute."""
    from benchmarks import ops_bias_act, ops_upfirdn2d

    x = torch.randn(2, 3, 5, 4, dtype=torch.float64) * 200
    b = torch.randn(3, dtype=torch.float64)
    z = x + b.view(1, -1, 1, 1)
    expected = torch.where(z >= 0, z, 0.2 * z) * 2**0.5
    assert torch.allclose(ops_bias_act.eager(x, b), expected.clamp(-256, 256))

    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    y = ops_upfirdn2d.eager(x, None, ops_upfirdn2d.eager_weight(2, torch.float64, "cpu"))
    assert y.shape == (1, 2, 6, 8)
    taps = torch.tensor([1.0, 3, 3, 1], dtype=torch.float64) / 8
    # Explicit loop: y[i, j] = 4 * sum_{p, q} f[p] f[q] up(x)[i + p - 2, j + q - 2] (symmetric filter, no flip).
    up = torch.zeros(1, 2, 6, 8, dtype=torch.float64)
    up[..., ::2, ::2] = x
    loop = torch.zeros_like(y)
    for i in range(6):
        for j in range(8):
            for p in range(4):
                for q in range(4):
                    if 0 <= i + p - 2 < 6 and 0 <= j + q - 2 < 8:
                        loop[..., i, j] += 4 * taps[p] * taps[q] * up[..., i + p - 2, j + q - 2]
    assert torch.allclose(y, loop)


# ---------------------------------------------------------------- command lines


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU behaviour")
def test_python_m_benchmarks_without_gpu_prints_one_line_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "benchmarks", "ops"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [bench_cli.NO_GPU_LINE]


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU behaviour")
def test_fusegan_bench_without_gpu_prints_one_line_and_exits_0(capsys):
    from fusegan.engine import cli

    assert cli.main(["bench", "ops", "--quick"]) == 0
    assert capsys.readouterr().out.splitlines() == [bench_cli.NO_GPU_LINE]


def test_fusegan_bench_says_so_when_benchmarks_is_not_found(capsys, monkeypatch):
    from fusegan.engine import cli

    monkeypatch.setattr(cli, "find_benchmarks_root", lambda: None)
    assert cli.main(["bench", "--quick"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "benchmarks/ not found" in out[0]


def test_cli_rejects_bad_modes_and_lists_cases(capsys):
    assert bench_cli.main(["ops", "--modes", "fwd,sideways"]) == 2
    assert bench_cli.main(["ops", "--list", "--only", "bias_act"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed[-2:]] == ["bias_act.lrelu_bias_clamp.channels_last", "bias_act.lrelu_bias_clamp.contiguous"]
    assert bench_cli.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_cli_smoke_run_writes_results(tmp_path, capsys):
    out = tmp_path / "smoke"
    assert bench_cli.main(["ops", "--smoke", "--only", "bias_act.lrelu_bias_clamp.contiguous", "--modes", "fwd", "--out", str(out)]) == 0
    meta, records = report.read_json(out / "results.json")
    assert meta["command"] == f"python -m benchmarks ops --smoke --only bias_act.lrelu_bias_clamp.contiguous --modes fwd --out {out}"
    assert len(records) == len(VARIANTS) and {r["mode"] for r in records} == {"fwd"}
    assert all(r["command"] == meta["command"] for r in records)
