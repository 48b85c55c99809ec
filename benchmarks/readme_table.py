"""Prints the markdown table README.md includes, with the GPU and date beside it.

    python -m benchmarks.readme_table benchmarks/results/<gpu>/results.json [--mode fwdbwd]
"""
import argparse
import sys

from .report import fmt_ms, fmt_num, fmt_pct, fmt_ratio, group_by_case_mode, read_json


def readme_table(meta, records, modes=None):
    """Markdown: one line naming GPU, date and versions, then p50 times and fusegan's speedups per case."""
    if meta.get("smoke"):
        raise ValueError("these are CPU smoke results; the README table needs a GPU run")
    lines = [
        f"Measured on **{meta.get('gpu')}**, {str(meta.get('date'))[:10]} (torch {meta.get('torch')}, "
        f"triton {meta.get('triton')}, fusegan {meta.get('fusegan')}; `{meta.get('command')}`). "
        f"Median of repeated timings ({meta.get('timer')}); × is fusegan's speedup.",
        "",
        "| op | mode | fusegan ms | eager ms | torch.compile ms | × eager | × compile | % of copy bandwidth |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (case, mode), by_variant in group_by_case_mode(records).items():
        if modes and mode not in modes:
            continue
        fused = by_variant.get("fusegan", {})
        times = [fmt_ms(by_variant.get(v, {}).get("p50")) for v in ("fusegan", "eager", "compile")]
        lines.append(f"| {case} | {mode} | " + " | ".join(times) + f" | {fmt_ratio(fused.get('speedup_vs_eager'))} | "
                     f"{fmt_ratio(fused.get('speedup_vs_compile'))} | {fmt_pct(fused.get('frac_copy_bw'))} |")
    copy = (meta.get("peaks") or {}).get("copy", {})
    lines += ["", f"Copy bandwidth measured on the same GPU in the same run: {fmt_num(copy.get('value'))} GB/s."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme_table", description=__doc__.splitlines()[0])
    parser.add_argument("results", help="path to a results.json written by `python -m benchmarks`")
    parser.add_argument("--mode", action="append", choices=("fwd", "bwd", "fwdbwd"), help="only these modes (repeatable)")
    args = parser.parse_args(argv)
    meta, records = read_json(args.results)
    try:
        print(readme_table(meta, records, args.mode))
    except ValueError as exc:
        print(f"readme_table: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
