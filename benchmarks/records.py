"""One flat record per measurement (case x variant x mode), and the ratios and throughput derived from it.

A record carries everything needed to read it alone (GPU, versions, date, command), so the CSV is
self-contained. `FIELDS` fixes the column order and `FIELD_TYPES` lets the CSV reader restore types.
"""
from .stats import speedup, summarize

VARIANTS = ("fusegan", "eager", "compile")
MODES = ("fwd", "bwd", "fwdbwd")

FIELDS = (
    # what was measured
    "suite", "op", "case", "variant", "impl", "mode", "shape", "dtype", "layout",
    # the measurement: percentiles over repetitions (p50 is the primary number)
    "metric", "unit", "p20", "p50", "p80", "reps",
    # ratios at p50: > 1 means this variant is faster than the baseline
    "speedup_vs_eager", "speedup_vs_compile",
    # throughput from the case's stated model of useful work, at p50, and as a fraction of the measured peak
    "bytes_moved", "gbps", "frac_copy_bw", "flops", "tflops", "frac_matmul_peak",
    # sanity and health
    "rel_err_vs_eager", "check", "throttled", "throttle_reasons", "error",
    # where and how
    "gpu", "timer", "copy_peak_gbps", "matmul_peak_tflops",
    "torch", "triton", "fusegan", "git_commit", "cuda", "date", "command",
)
INT_FIELDS = {"reps", "bytes_moved", "flops"}
FLOAT_FIELDS = {
    "p20", "p50", "p80", "speedup_vs_eager", "speedup_vs_compile", "gbps", "frac_copy_bw",
    "tflops", "frac_matmul_peak", "rel_err_vs_eager", "copy_peak_gbps", "matmul_peak_tflops",
}
BOOL_FIELDS = {"throttled"}
SHAPE_FIELDS = {"shape"}
FIELD_TYPES = {
    name: "int" if name in INT_FIELDS else "float" if name in FLOAT_FIELDS else "bool" if name in BOOL_FIELDS
    else "shape" if name in SHAPE_FIELDS else "str"
    for name in FIELDS
}


def build_records(base, timings, env, peaks, bytes_moved=None, flops=None, extra=None):
    """Records for one (case, mode): one per variant in `timings`.

    base: fields shared by the variants (suite, op, case, mode, shape, dtype, layout).
    timings: {variant: list of ms, or an error message string}.
    env: run-wide fields (gpu, timer, versions, date, command). peaks: output of peaks.measure_peaks.
    bytes_moved / flops: the case's model of useful work for this mode (None where not meaningful).
    extra: {variant: {field: value}} merged last (impl, rel_err_vs_eager, check, throttled, ...).
    """
    stats = {v: summarize(t) for v, t in timings.items() if not isinstance(t, str) and t}
    copy_peak = (peaks or {}).get("copy", {}).get("value")
    matmul_peak = (peaks or {}).get("matmul", {}).get("value")
    eager_p50 = stats.get("eager", {}).get("p50")
    compile_p50 = stats.get("compile", {}).get("p50")
    records = []
    for variant, times in timings.items():
        record = dict.fromkeys(FIELDS)
        record.update(env)
        record.update(base)
        record.update(variant=variant, metric="time", unit="ms", copy_peak_gbps=copy_peak, matmul_peak_tflops=matmul_peak)
        if isinstance(times, str) or not times:
            record["error"] = times if isinstance(times, str) else "no timings"
        else:
            p50 = stats[variant]["p50"]
            record.update(stats[variant], reps=len(times))
            record["speedup_vs_eager"] = speedup(eager_p50, p50)
            record["speedup_vs_compile"] = speedup(compile_p50, p50)
            if bytes_moved:
                record["bytes_moved"] = int(bytes_moved)
                record["gbps"] = bytes_moved / (p50 * 1e-3) / 1e9
                record["frac_copy_bw"] = record["gbps"] / copy_peak if copy_peak else None
            if flops:
                record["flops"] = int(flops)
                record["tflops"] = flops / (p50 * 1e-3) / 1e12
                record["frac_matmul_peak"] = record["tflops"] / matmul_peak if matmul_peak else None
        record.update((extra or {}).get(variant, {}))
        records.append(record)
    return records
