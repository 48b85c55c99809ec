"""PNG plots of a run, written next to results.json (matplotlib, headless 'Agg' backend; CPU only):

- speedup_ops.png:    fusegan's speedup over eager and over torch.compile per op case (forward+backward), bars;
- speedup_train.png:  the same per model for whole training steps;
- throughput_<op>.png: achieved TFLOP/s (or GB/s, for ops without a FLOP model) against the problem size for each
                       op family measured at three or more sizes: one colour per variant, one marker per dtype
                       (markers, not lines: different layers of a family often do the same work, e.g. DCGAN's).
Without matplotlib, `write_plots` prints one line saying so and returns no paths: the rest of the run is unaffected.
"""
from pathlib import Path

from .records import TRAIN_MODE, VARIANTS

SPEEDUP_MODE = "fwdbwd"  # what training runs; falls back to the first mode present
MIN_SIZES = 3            # an op family needs this many distinct sizes for a throughput-against-size plot
COLORS = {"fusegan": "#d62728", "eager": "#1f77b4", "compile": "#2ca02c"}
MISSING_NOTICE = "plots skipped: matplotlib is not installed (pip install matplotlib, or pip install -e .[bench])"


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def write_plots(out_dir, records, meta=None, log=print):
    """Writes every plot the records support into `out_dir`; returns the paths written (empty without matplotlib).
    With `meta` (results.json's), the speedup bars also mark each case's targets."""
    plt = _pyplot()
    if plt is None:
        log(MISSING_NOTICE)
        return []
    out_dir = Path(out_dir)
    paths = []
    for suite, name in (("ops", "speedup_ops.png"), ("train", "speedup_train.png")):
        suite_records = [r for r in records if r.get("suite") == suite]
        rows = speedup_rows(suite_records)
        if rows:
            title = "fusegan speedup, whole training step" if suite == "train" else "fusegan speedup per op"
            targets = speedup_targets(meta, _mode_for(suite_records))
            paths.append(plot_speedups(plt, rows, out_dir / name, title, targets))
    for op, series in throughput_series(records).items():
        paths.append(plot_throughput(plt, op, series, out_dir / f"throughput_{op}.png"))
    return paths


# ---------------------------------------------------------------- data


def _mode_for(records):
    modes = [r["mode"] for r in records]
    for preferred in (SPEEDUP_MODE, TRAIN_MODE):
        if preferred in modes:
            return preferred
    return modes[0] if modes else None


def speedup_rows(records):
    """[(case, speedup vs eager, speedup vs compile)] of the fusegan records, in the mode plotted (None: failed)."""
    mode = _mode_for(records)
    return [(r["case"], r.get("speedup_vs_eager"), r.get("speedup_vs_compile"))
            for r in records if r["variant"] == "fusegan" and r["mode"] == mode]


def speedup_targets(meta, mode):
    """{case: (vs_eager target or None, vs_compile target or None)} for the plotted mode, from results.json's meta."""
    out = {}
    for case, info in ((meta or {}).get("cases") or {}).items():
        wanted = (info.get("targets") or {}).get(mode) or {}
        if "vs_eager" in wanted or "vs_compile" in wanted:
            out[case] = (wanted.get("vs_eager"), wanted.get("vs_compile"))
    return out


def throughput_series(records):
    """{op: {(variant, dtype): [(size, rate)] sorted by size}, plus the axis names} for op families measured at
    MIN_SIZES or more distinct sizes. Size and rate are FLOPs per call and TFLOP/s where the family has a FLOP
    model, else bytes per call and GB/s."""
    ops = {}
    for r in records:
        if r.get("suite") != "ops" or r.get("error"):
            continue
        ops.setdefault(r["op"], []).append(r)
    out = {}
    for op, rows in ops.items():
        mode = _mode_for(rows)
        rows = [r for r in rows if r["mode"] == mode]
        by_flops = all(r.get("flops") for r in rows)
        size_key, rate_key = ("flops", "tflops") if by_flops else ("bytes_moved", "gbps")
        rows = [r for r in rows if r.get(size_key) and r.get(rate_key)]
        if len({r[size_key] for r in rows}) < MIN_SIZES:
            continue
        series = {}
        for r in rows:
            series.setdefault((r["variant"], r.get("dtype")), []).append((r[size_key], r[rate_key]))
        out[op] = {"mode": mode, "x": "GFLOP per call" if by_flops else "MB moved per call",
                   "y": "TFLOP/s" if by_flops else "GB/s", "scale": 1e9 if by_flops else 1e6,
                   "series": {k: sorted(v) for k, v in sorted(series.items(), key=lambda kv: _variant_order(kv[0]))}}
    return out


def _variant_order(key):
    variant, dtype = key
    return (VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS), str(dtype))


# ---------------------------------------------------------------- figures


def plot_speedups(plt, rows, path, title, targets=None):
    """Horizontal bars: per case, fusegan's speedup over eager and over torch.compile, with the 1x line and, where
    `targets` ({case: (vs eager, vs compile)}) names them, a black tick at each target."""
    n = len(rows)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.42 * n))
    height = 0.38
    targets = targets or {}
    labelled = set()  # each legend entry once

    def label_once(text):
        if text in labelled:
            return None
        labelled.add(text)
        return text

    for i, (case, vs_eager, vs_compile) in enumerate(rows):
        y = n - 1 - i
        wanted = targets.get(case, (None, None))
        for offset, value, target, color, label in (
                (height / 2, vs_eager, wanted[0], COLORS["eager"], "vs eager"),
                (-height / 2, vs_compile, wanted[1], COLORS["compile"], "vs torch.compile")):
            if target is not None:
                ax.plot([target, target], [y + offset - height / 2, y + offset + height / 2], color="black",
                        linewidth=2, label=label_once("target"))
            if value is None:
                ax.text(0.02, y + offset, "n/a", va="center", fontsize=7, transform=ax.get_yaxis_transform())
                continue
            ax.barh(y + offset, value, height=height, color=color, label=label_once(label))
            ax.text(value, y + offset, f" {value:.2f}×", va="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_yticks(range(n))
    ax.set_yticklabels([case for case, _, _ in reversed(rows)], fontsize=7)
    ax.set_xlabel("speedup of fusegan (× at p50; > 1 is faster)")
    ax.set_title(title, loc="left", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    if handles:  # above the axes, beside the title, so it never hides a bar
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=8, frameon=False)
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_throughput(plt, op, info, path):
    """Achieved throughput against problem size for one op family, one line per (variant, dtype)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    dtypes = sorted({str(dtype) for _, dtype in info["series"]})
    markers = dict(zip(dtypes, "os^Dv"))
    for (variant, dtype), points in info["series"].items():
        xs = [size / info["scale"] for size, _ in points]
        ys = [rate for _, rate in points]
        label = variant if len(dtypes) == 1 else f"{variant} {dtype}"
        ax.scatter(xs, ys, marker=markers.get(str(dtype), "o"), color=COLORS.get(variant), label=label, alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(info["x"])
    ax.set_ylabel(f"achieved {info['y']}")
    ax.set_title(f"{op}: throughput against size ({info['mode']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
