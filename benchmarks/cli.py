"""Command line of the benchmarks, shared by `python -m benchmarks` and `fusegan bench`.

    python -m benchmarks [ops|train|all] [--only NAME] [--quick] [--out DIR] [--smoke] [--time-limit S]

Results are rewritten after every case (so a run cut short keeps what it measured); the plots are drawn at the end.
"""
import argparse
import re
import shlex
import sys
from pathlib import Path

from .records import VARIANTS

NO_GPU_LINE = "no CUDA GPU visible: nothing to benchmark (--smoke runs the CPU smoke version)"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_arguments(parser):
    parser.add_argument("suite", nargs="?", default="all", choices=("ops", "train", "all"),
                        help="which benchmarks: fused ops, whole training steps, or both (default: all)")
    parser.add_argument("--only", metavar="NAME",
                        help="only cases whose op is NAME or whose name contains NAME (comma-separated list)")
    parser.add_argument("--quick", action="store_true", help="fewer cases and repetitions (a few minutes in all)")
    parser.add_argument("--out", metavar="DIR",
                        help="where results go (default: benchmarks/results/<gpu>[-quick|-partial]; smoke: none)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU smoke run for CI: tiny shapes, reference path, wall clock; numbers mean nothing")
    parser.add_argument("--modes", default="fwd,bwd,fwdbwd",
                        help="op modes: comma-separated subset of fwd,bwd,fwdbwd (training steps have their own)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of fusegan,eager,compile (default: all three)")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="start no case after this many seconds (the cases not run are listed in the report)")
    parser.add_argument("--no-l2-flush", action="store_true", help="do not flush the L2 cache before each repetition")
    parser.add_argument("--list", action="store_true", help="list the selected cases and exit")
    return parser


def build_parser(prog="python -m benchmarks"):
    parser = argparse.ArgumentParser(prog=prog, description="Times fusegan's fused ops against eager PyTorch and torch.compile.")
    return add_arguments(parser)


def gpu_slug(name):
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (a results folder name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def main(argv=None, prog="python -m benchmarks"):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    command = " ".join([prog, shlex.join(argv)]).strip()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("fwd", "bwd", "fwdbwd")]
    if bad or not modes:
        print(f"{prog}: --modes must be a comma-separated subset of fwd,bwd,fwdbwd, got {args.modes!r}", file=sys.stderr)
        return 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        print(f"{prog}: --variants must be a comma-separated subset of {','.join(VARIANTS)}, got {args.variants!r}",
              file=sys.stderr)
        return 2

    import torch

    from .harness import RunContext, run_cases, select_cases
    from .registry import discover

    cases = select_cases(discover(args.suite), only=args.only, quick=args.quick)
    if args.list:
        for case in cases:
            print(f"{case.name:<44} {case.suite:<6} {case.op:<16} {list(case.shape)} {str(case.dtype).replace('torch.', '')}")
        return 0
    if not args.smoke and not torch.cuda.is_available():
        print(NO_GPU_LINE)
        return 0
    if not cases:
        what = f"matching --only {args.only!r}" if args.only else f"in suite {args.suite!r}"
        print(f"no benchmark cases {what} (python -m benchmarks --list shows them)")
        return 0 if not args.only else 2

    ctx = RunContext(smoke=args.smoke, quick=args.quick, modes=modes, flush_l2=not args.no_l2_flush, command=command,
                     variants=variants, time_limit_s=args.time_limit)
    out = args.out
    if out is None and not args.smoke:
        partial = args.only or args.time_limit is not None or len(variants) < len(VARIANTS)
        suffix = "-partial" if partial else "-quick" if args.quick else ""
        out = RESULTS_DIR / f"{gpu_slug(ctx.env['gpu'])}{suffix}"

    def write_so_far(meta, records):
        write_results_and_report(out, meta, records, plots=False)

    threads = torch.get_num_threads()
    if args.smoke:  # tiny CPU ops with several OpenMP threads spend most of their time in barriers
        torch.set_num_threads(1)
    try:
        meta, records = run_cases(ctx, cases, on_case=write_so_far if out is not None else None)
    finally:
        torch.set_num_threads(threads)
    if out is not None:
        paths = write_results_and_report(out, meta, records)
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    else:
        from .report import ratio_table, train_table

        for suite, table in (("ops", ratio_table), ("train", train_table)):
            suite_records = [r for r in records if r["suite"] == suite]
            if suite_records:
                print(table(suite_records))
    failed = sum(1 for r in records if r.get("error"))
    if failed:
        print(f"{failed} measurement(s) failed; see the errors above and in the report")
    return 1 if failed else 0


def write_results_and_report(out, meta, records, plots=True):
    from .report import write_results

    return write_results(out, meta, records, plots=plots)
