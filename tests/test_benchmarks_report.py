"""Benchmark outputs on the CPU: PNG plots from fabricated records (and their absence without matplotlib), the
training-step tables of the report and of the README, peak memory in op records, --time-limit, and the train
suite through the command line."""
import sys

import pytest
import torch

from benchmarks import cli as bench_cli
from benchmarks import harness, plots, report
from benchmarks.readme_table import find_plot, readme_table
from benchmarks.records import FIELDS, VARIANTS, build_records, memory_fields
from bench_helpers import FakeMemory, one_cpu_thread  # noqa: F401 (one_cpu_thread: an autouse fixture)

ENV = {"gpu": "Fake GPU 80GB", "timer": "cuda_events", "torch": "t", "triton": "tr", "fusegan": "f", "git_commit": "abc",
       "cuda": "12.8", "date": "2026-11-21T00:00:00+00:00", "command": "python -m benchmarks all"}
PEAKS = {"copy": {"value": 3000.0, "what": "copy"}, "matmul": {"value": 700.0, "what": "bf16 mm"}}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fabricated_records():
    """Op records of a FLOP-modelled family at 4 sizes, a bytes-modelled family at 3 sizes and one at 2 sizes
    (too few for a throughput plot), and training-step records for two models, one with a failed variant."""
    records = []
    for i, n in enumerate((16, 32, 64, 128)):
        base = {"suite": "ops", "op": "convy", "case": f"convy.{n}", "mode": "fwdbwd", "shape": [n, 64, 32, 32],
                "dtype": "bfloat16", "layout": "channels_last"}
        timings = {"fusegan": [1.0 * n, 1.1 * n], "eager": [2.0 * n], "compile": [1.5 * n]}
        records += build_records(base, timings, ENV, PEAKS, flops=10**9 * n, bytes_moved=10**6 * n)
    for n in (1, 2, 4):
        base = {"suite": "ops", "op": "elementy", "case": f"elementy.{n}", "mode": "fwdbwd", "shape": [n, 8],
                "dtype": "float32", "layout": "contiguous"}
        records += build_records(base, {"fusegan": [0.1 * n], "eager": [0.3 * n], "compile": [0.2 * n]}, ENV, PEAKS,
                                 bytes_moved=10**7 * n)
    for n in (1, 2):
        base = {"suite": "ops", "op": "twosizes", "case": f"twosizes.{n}", "mode": "fwdbwd", "shape": [n],
                "dtype": "float32", "layout": "contiguous"}
        records += build_records(base, {"fusegan": [1.0], "eager": [1.0], "compile": [1.0]}, ENV, PEAKS, bytes_moved=n)
    for name, timings in (("train.modela.64px_b128", {"fusegan": {"p20": 9.0, "p50": 10.0, "p80": 11.0, "reps": 3},
                                                     "eager": [15.0], "compile": [12.0]}),
                          ("train.modelb.256px_b32", {"fusegan": [100.0], "eager": [160.0], "compile": "OutOfMemoryError: x"})):
        base = {"suite": "train", "op": name.split(".")[1], "case": name, "mode": "train", "shape": [128, 3, 64, 64],
                "dtype": "bfloat16", "layout": "channels_last"}
        extra = {v: memory_fields(2 * 2**30, 5 * 2**30) for v in timings}
        records += build_records(base, timings, ENV, PEAKS, flops=10**12, images=128, extra=extra, metric="time_per_step")
    return records


META = {**ENV, "smoke": False, "peaks": PEAKS, "cases": {
    "convy.64": {"suite": "ops", "targets": {"fwdbwd": {"vs_eager": 1.5, "vs_compile": 1.3}}},
    "train.modela.64px_b128": {"suite": "train", "amortization": "20 steps", "targets": {
        "train": {"vs_eager": 1.3, "vs_compile": 1.1, "frac_matmul_peak": 0.4}}}}}


def test_plots_are_written_from_fabricated_records(tmp_path):
    pytest.importorskip("matplotlib")
    records = fabricated_records()
    series = plots.throughput_series(records)
    assert set(series) == {"convy", "elementy"}  # 'twosizes' has too few sizes
    assert series["convy"]["y"] == "TFLOP/s" and series["elementy"]["y"] == "GB/s"
    assert [x for x, _ in series["convy"]["series"][("fusegan", "bfloat16")]] == [10**9 * n for n in (16, 32, 64, 128)]
    assert plots.speedup_targets(META, "train") == {"train.modela.64px_b128": (1.3, 1.1)}
    lines = []
    paths = plots.write_plots(tmp_path, records, meta=META, log=lines.append)
    assert lines == []
    assert sorted(p.name for p in paths) == ["speedup_ops.png", "speedup_train.png", "throughput_convy.png",
                                             "throughput_elementy.png"]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 2000, path
    # The failed compile variant of modelb is drawn as 'n/a', not dropped or crashing the plot.
    assert ("train.modelb.256px_b32", pytest.approx(1.6), None) in plots.speedup_rows(
        [r for r in records if r["suite"] == "train"])


def test_without_matplotlib_plots_are_skipped_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    lines = []
    paths = report.write_results(tmp_path, META, fabricated_records(), log=lines.append)
    assert lines == [plots.MISSING_NOTICE]
    assert not list(tmp_path.glob("*.png")) and set(paths) == {"results.json", "results.csv", "report.md", "command.txt"}
    assert "## plots" not in paths["report.md"].read_text()


def test_report_and_readme_show_the_training_steps(tmp_path):
    pytest.importorskip("matplotlib")
    records = fabricated_records()
    paths = report.write_results(tmp_path / "gpu", META, records, log=lambda line: None)
    meta, read_back = report.read_json(paths["results.json"])
    assert read_back == records and "speedup_train.png" in meta["plots"]
    assert report.read_csv(paths["results.csv"]) == [{k: r[k] for k in FIELDS} for r in records]
    text = paths["report.md"].read_text()
    assert "![speedup_train](speedup_train.png)" in text and "- `train.modela.64px_b128`: 20 steps" in text
    tables = report.parse_markdown_tables(text)
    train = next(t for t in tables if t and "fusegan ms/step" in t[0])
    row = {r["case"]: r for r in train}["train.modela.64px_b128"]
    assert row["images"] == "128 × 64²" and row["fusegan ms/step"] == "10.000 (9.000–11.000)"
    assert row["× eager"] == "1.50×" and row["× compile"] == "1.20×"
    assert row["img/s f/e/c"] == "12800 / 8533 / 10667"  # 128 images / 10, 15, 12 ms
    assert row["fusegan sec/kimg"] == "0.08" and row["peak GiB f/e/c"] == "5.00 / 5.00 / 5.00"
    assert row["MFU f/e/c"] == "14% / 10% / 12%"  # 1e12 FLOP / 10 ms = 100 TFLOP/s of 700
    failed = {r["case"]: r for r in train}["train.modelb.256px_b32"]
    assert failed["compile ms/step"] == "error" and "compile failed" in failed["notes"]
    targets = next(t for t in tables if t and "met" in t[0])
    verdicts = {(t["case"], t["metric"]): t["met"] for t in targets}
    assert verdicts[("train.modela.64px_b128", "vs_eager")] == "yes"
    assert verdicts[("train.modela.64px_b128", "frac_matmul_peak")] == "NO (by 26 points)"  # 14% of a 40% target

    plot = find_plot(paths["results.json"], meta, relative_to=tmp_path)
    assert plot == "gpu/speedup_train.png"
    table = readme_table(meta, records, modes=["fwdbwd"], plot=plot)
    assert table.splitlines()[0].startswith("Measured on **Fake GPU 80GB**, 2026-11-21")
    assert table.splitlines()[-1] == "![fusegan speedups on Fake GPU 80GB](gpu/speedup_train.png)"
    readme_train, readme_ops = report.parse_markdown_tables(table)
    assert readme_train[0]["model (batch × resolution)"] == "train.modela.64px_b128 (128 × 64²)"
    assert readme_train[0]["fusegan sec/kimg"] == "0.08" and readme_train[0]["MFU"] == "14%"
    assert readme_train[0]["peak GiB"] == "5.00"
    assert [r["op"] for r in readme_ops] == [f"convy.{n}" for n in (16, 32, 64, 128)] + [
        f"elementy.{n}" for n in (1, 2, 4)] + ["twosizes.1", "twosizes.2"]


def _toy_case(name="toy.a"):
    def make_inputs(shape, dtype, device, layout):
        return {"x": harness.make_tensor(shape, dtype, device, layout)}

    return harness.OpCase(op="toy", name=name, shape=(4, 4), dtype=torch.float32, layout="contiguous",
                          make_inputs=make_inputs, fused=lambda x, impl: torch.relu(x), eager=torch.relu,
                          grad_inputs=("x",), smoke_shape=(2, 3))


def test_op_records_carry_peak_memory():
    ctx = harness.RunContext(smoke=True, modes=("fwd", "fwdbwd"))
    ctx.memory = FakeMemory(base_mib=3, peak_mib=7)
    _, records = harness.run_cases(ctx, [_toy_case()], log=lambda line: None)
    assert len(records) == 2 * len(VARIANTS)
    assert all(r["peak_mem_mib"] == pytest.approx(7.0) and r["base_mem_mib"] == pytest.approx(3.0) for r in records)
    # On the CPU there are no allocator statistics: the fields are present and None.
    _, records = harness.run_cases(harness.RunContext(smoke=True, modes=("fwd",)), [_toy_case()], log=lambda line: None)
    assert all(r["peak_mem_mib"] is None and "peak_mem_mib" in r for r in records)
    assert harness.DeviceMemory("cpu").reset() is None


def test_time_limit_skips_the_cases_not_started():
    ctx = harness.RunContext(smoke=True, modes=("fwd",), time_limit_s=0)
    lines = []
    meta, records = harness.run_cases(ctx, [_toy_case("toy.a"), _toy_case("toy.b")], log=lines.append)
    assert records == [] and meta["skipped"] == ["toy.a", "toy.b"]
    assert lines[-1] == "time limit reached: 2 case(s) not run: toy.a, toy.b"
    assert "## not run (time limit)" in report.markdown_report(meta, records)


def test_only_some_variants():
    ctx = harness.RunContext(smoke=True, modes=("fwd",), variants=("eager", "fusegan"))
    assert ctx.variants == ("fusegan", "eager")
    _, records = harness.run_cases(ctx, [_toy_case()], log=lambda line: None)
    assert [r["variant"] for r in records] == ["fusegan", "eager"]
    with pytest.raises(ValueError, match="variants"):
        harness.RunContext(smoke=True, variants=("fast",))
    assert bench_cli.main(["ops", "--smoke", "--variants", "fused"]) == 2


def test_cli_train_smoke_run_writes_results_report_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "smoke"
    assert bench_cli.main(["train", "--smoke", "--only", "train.dcgan", "--out", str(out)]) == 0
    meta, records = report.read_json(out / "results.json")
    assert meta["command"] == f"python -m benchmarks train --smoke --only train.dcgan --out {out}"
    assert [(r["case"], r["variant"]) for r in records] == [("train.dcgan.64px_b128", v) for v in VARIANTS]
    assert all(r["error"] is None and r["img_per_s"] > 0 for r in records)
    assert meta["cases"]["train.dcgan.64px_b128"]["seconds"] > 0 and meta["skipped"] == []
    assert (out / "speedup_train.png").read_bytes().startswith(PNG_SIGNATURE)
    assert report.read_csv(out / "results.csv") == [{k: r[k] for k in FIELDS} for r in records]
    assert "| train.dcgan.64px_b128 | 4 × 32² |" in (out / "report.md").read_text()
    assert "wrote" in capsys.readouterr().out


def test_report_main_rerenders_a_results_folder_from_its_json(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    report.write_json(tmp_path / "results.json", META, fabricated_records())  # what a GPU run brought back
    assert report.main([str(tmp_path)]) == 0
    assert report.read_csv(tmp_path / "results.csv") == [{k: r[k] for k in FIELDS} for r in fabricated_records()]
    assert "## train" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "speedup_train.png").read_bytes().startswith(PNG_SIGNATURE)
    assert report.read_json(tmp_path / "results.json")[0]["plots"] == [
        "speedup_ops.png", "speedup_train.png", "throughput_convy.png", "throughput_elementy.png"]
