"""One flat record per measurement (case x variant x mode), and the ratios and throughput derived from it.

A record carries everything needed to read it alone (GPU, versions, date, command), so the CSV is
self-contained. `FIELDS` fixes the column order and `FIELD_TYPES` lets the CSV reader restore types.

Op cases time one call ('time', ms per call, in modes fwd/bwd/fwdbwd); training-step cases time whole steps
('time_per_step', ms per training step with regularization amortized, in mode 'train') and add images/s,
sec/kimg and model-FLOPs utilization (flops per step over the measured bf16 matmul peak).
"""
from .stats import speedup, summarize

VARIANTS = ("fusegan", "eager", "compile")
MODES = ("fwd", "bwd", "fwdbwd")
TRAIN_MODE = "train"  # the mode of training-step records: one whole training step
MIB = 2**20

FIELDS = (
    # what was measured
    "suite", "op", "case", "variant", "impl", "mode", "shape", "dtype", "layout",
    # the measurement: percentiles over repetitions (p50 is the primary number)
    "metric", "unit", "p20", "p50", "p80", "reps",
    # ratios at p50: > 1 means this variant is faster than the baseline
    "speedup_vs_eager", "speedup_vs_compile",
    # throughput from the case's stated model of useful work, at p50, and as a fraction of the measured peak
    "bytes_moved", "gbps", "frac_copy_bw", "flops", "tflops", "frac_matmul_peak",
    # training steps: throughput at p50 (sec/kimg as in StyleGAN2-ADA's tables) and train steps per repetition
    "img_per_s", "sec_per_kimg", "steps_per_rep",
    # memory: torch.cuda.max_memory_allocated over the timed repetitions, and what was allocated when its
    # counter was reset (inputs, or the model and optimizer state, and the harness's buffers); MiB
    "peak_mem_mib", "base_mem_mib",
    # sanity and health
    # (rel_err_vs_fp32: bf16/fp16 cases, against the eager code run in fp32, the yardstick of `check`)
    "rel_err_vs_eager", "rel_err_vs_fp32", "check", "throttled", "throttle_reasons", "error",
    # where and how
    "gpu", "timer", "copy_peak_gbps", "matmul_peak_tflops",
    "torch", "triton", "fusegan", "git_commit", "cuda", "date", "command",
)
INT_FIELDS = {"reps", "bytes_moved", "flops", "steps_per_rep"}
FLOAT_FIELDS = {
    "p20", "p50", "p80", "speedup_vs_eager", "speedup_vs_compile", "gbps", "frac_copy_bw",
    "tflops", "frac_matmul_peak", "img_per_s", "sec_per_kimg", "peak_mem_mib", "base_mem_mib",
    "rel_err_vs_eager", "rel_err_vs_fp32", "copy_peak_gbps", "matmul_peak_tflops",
}
BOOL_FIELDS = {"throttled"}
SHAPE_FIELDS = {"shape"}
FIELD_TYPES = {
    name: "int" if name in INT_FIELDS else "float" if name in FLOAT_FIELDS else "bool" if name in BOOL_FIELDS
    else "shape" if name in SHAPE_FIELDS else "str"
    for name in FIELDS
}


def build_records(base, timings, env, peaks, bytes_moved=None, flops=None, extra=None, images=None,
                  metric="time", matmul_peak_key="matmul"):
    """Records for one (case, mode): one per variant in `timings`.

    base: fields shared by the variants (suite, op, case, mode, shape, dtype, layout).
    timings: {variant: list of ms, or {'p20', 'p50', 'p80', 'reps'} already summarized, or an error message}.
    env: run-wide fields (gpu, timer, versions, date, command). peaks: output of peaks.measure_peaks.
    bytes_moved / flops: the case's model of useful work per timed unit (None where not meaningful).
    images: images per timed unit (a training step's batch): adds img_per_s and sec_per_kimg.
    extra: {variant: {field: value}} merged last (impl, rel_err_vs_eager, check, throttled, memory, ...).
    matmul_peak_key: which of `peaks` the FLOP rate is a fraction of ('matmul': bf16; 'matmul_tf32': fp32 cases whose
    convs run in TF32); the record's matmul_peak_tflops is that peak.
    """
    stats = {v: _stats(t) for v, t in timings.items() if not isinstance(t, str) and t}
    copy_peak = (peaks or {}).get("copy", {}).get("value")
    matmul_peak = ((peaks or {}).get(matmul_peak_key) or (peaks or {}).get("matmul") or {}).get("value")
    eager_p50 = stats.get("eager", {}).get("p50")
    compile_p50 = stats.get("compile", {}).get("p50")
    records = []
    for variant, times in timings.items():
        record = dict.fromkeys(FIELDS)
        record.update(env)
        record.update(base)
        record.update(variant=variant, metric=metric, unit="ms", copy_peak_gbps=copy_peak, matmul_peak_tflops=matmul_peak)
        if isinstance(times, str) or not times:
            record["error"] = times if isinstance(times, str) else "no timings"
        else:
            p50 = stats[variant]["p50"]
            record.update(stats[variant])
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
            if images:
                record["img_per_s"] = images / (p50 * 1e-3)
                record["sec_per_kimg"] = 1000 / record["img_per_s"]
        record.update((extra or {}).get(variant, {}))
        records.append(record)
    return records


def _stats(times):
    """{'p20', 'p50', 'p80', 'reps'} from a list of times, or from an already summarized dict."""
    if isinstance(times, dict):
        return {k: times[k] for k in ("p20", "p50", "p80", "reps")}
    return {**summarize(times), "reps": len(times)}


def memory_fields(base_bytes, peak_bytes):
    """{'base_mem_mib', 'peak_mem_mib'} from byte counts (None where the device has no allocator statistics)."""
    return {"base_mem_mib": None if base_bytes is None else base_bytes / MIB,
            "peak_mem_mib": None if peak_bytes is None else peak_bytes / MIB}
