"""Prints the markdown README.md includes: the GPU and date, the op table, the training-step table, and the plot.

    python -m benchmarks.readme_table benchmarks/results/<gpu>/results.json [--mode fwdbwd] [--relative-to .]

The plot is linked relative to --relative-to (default: the current directory, i.e. the repo root where README.md
lives): the training-step speedup plot when the run has training steps, else the op speedup plot.
"""
import argparse
import os
import sys
from pathlib import Path

from .records import VARIANTS
from .report import fmt_gib, fmt_ms, fmt_num, fmt_pct, fmt_rate, fmt_ratio, group_by_case_mode, read_json

PLOT_PREFERENCE = ("speedup_train.png", "speedup_ops.png")


def readme_table(meta, records, modes=None, plot=None):
    """Markdown: one line naming GPU, date and versions, then the op table (p50 times and fusegan's speedups per
    case, `modes` only), the training-step table, and `plot` (a path or URL) as an image when given."""
    if meta.get("smoke"):
        raise ValueError("these are CPU smoke results; the README table needs a GPU run")
    lines = [
        f"Measured on **{meta.get('gpu')}**, {str(meta.get('date'))[:10]} (torch {meta.get('torch')}, "
        f"triton {meta.get('triton')}, fusegan {meta.get('fusegan')}; `{meta.get('command')}`). "
        f"Median of repeated timings ({meta.get('timer')}); × is fusegan's speedup.",
    ]
    ops = [r for r in records if r.get("suite", "ops") == "ops"]
    train = [r for r in records if r.get("suite") == "train"]
    if train:
        lines += ["", *train_lines(train)]
    if ops:
        lines += [
            "",
            "| op | mode | fusegan ms | eager ms | torch.compile ms | × eager | × compile | % of copy bandwidth |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for (case, mode), by_variant in group_by_case_mode(ops).items():
            if modes and mode not in modes:
                continue
            fused = by_variant.get("fusegan", {})
            times = [fmt_ms(by_variant.get(v, {}).get("p50")) for v in VARIANTS]
            lines.append(f"| {case} | {mode} | " + " | ".join(times) + f" | {fmt_ratio(fused.get('speedup_vs_eager'))} | "
                         f"{fmt_ratio(fused.get('speedup_vs_compile'))} | {fmt_pct(fused.get('frac_copy_bw'))} |")
    peaks = meta.get("peaks") or {}
    copy, matmul = peaks.get("copy", {}), peaks.get("matmul", {})
    lines += ["", f"Peaks measured on the same GPU in the same run: copy {fmt_num(copy.get('value'))} GB/s, "
                  f"bf16 matmul {fmt_num(matmul.get('value'), 1)} TFLOP/s."]
    if plot:
        lines += ["", f"![fusegan speedups on {meta.get('gpu')}]({plot})"]
    return "\n".join(lines)


def train_lines(records):
    """The training-step table: images/s of the three variants, fusegan's sec/kimg, speedups, MFU, peak memory."""
    lines = [
        "| model (batch × resolution) | fusegan img/s | eager img/s | torch.compile img/s | fusegan sec/kimg | "
        "× eager | × compile | MFU | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (case, _), by_variant in group_by_case_mode(records).items():
        fused = by_variant.get("fusegan", {})
        shape = next(iter(by_variant.values())).get("shape") or []
        size = f" ({shape[0]} × {shape[2]}²)" if len(shape) == 4 else ""
        rates = [fmt_rate(by_variant.get(v, {}).get("img_per_s")) for v in VARIANTS]
        lines.append(f"| {case}{size} | " + " | ".join(rates) + f" | {fmt_num(fused.get('sec_per_kimg'), 2)} | "
                     f"{fmt_ratio(fused.get('speedup_vs_eager'))} | {fmt_ratio(fused.get('speedup_vs_compile'))} | "
                     f"{fmt_pct(fused.get('frac_matmul_peak'))} | {fmt_gib(fused.get('peak_mem_mib'))} |")
    return lines


def find_plot(results_path, meta, relative_to="."):
    """The path of the run's headline plot relative to `relative_to`, or None when the run wrote no plot."""
    folder = Path(results_path).resolve().parent
    written = set(meta.get("plots") or [])
    for name in PLOT_PREFERENCE:
        if name in written or (folder / name).is_file():
            return Path(os.path.relpath(folder / name, Path(relative_to).resolve())).as_posix()
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme_table", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="path to a results.json written by `python -m benchmarks`")
    parser.add_argument("--mode", action="append", choices=("fwd", "bwd", "fwdbwd"), help="only these op modes (repeatable)")
    parser.add_argument("--relative-to", default=".", help="link the plot relative to this folder (default: .)")
    args = parser.parse_args(argv)
    meta, records = read_json(args.results)
    try:
        print(readme_table(meta, records, args.mode, plot=find_plot(args.results, meta, args.relative_to)))
    except ValueError as exc:
        print(f"readme_table: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
