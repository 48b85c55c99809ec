"""The `fusegan` command line. Each subcommand is a small function; `main` only parses and dispatches."""
import argparse
import importlib
import platform
import sys
from pathlib import Path

from . import __version__


def cmd_info(_args) -> int:
    """Prints versions, devices, and which implementation each op would use on each device."""
    import torch

    from fusegan import kernels
    from fusegan.kernels._triton import TRITON_IMPORT_ERROR, triton

    print(f"fusegan  {__version__}")
    print(f"python   {platform.python_version()} ({platform.system()} {platform.machine()})")
    print(f"torch    {torch.__version__}")
    triton_line = triton.__version__ if kernels.HAS_TRITON else f"not available ({TRITON_IMPORT_ERROR})"
    print(f"triton   {triton_line}")
    print(f"TRITON_INTERPRET={'1' if kernels.interpreter_active() else '0'}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
        print(f"device   cuda: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    else:
        print("device   cpu only (no CUDA device visible)")
    print("ops (implementation used by default; FUSEGAN_IMPL or impl= override):")
    for op in kernels.OPS:
        row = ", ".join(f"{d.type}: {kernels.resolve_impl(None, d)}" for d in devices)
        print(f"  {op:<22} {row}")
    return 0


def find_benchmarks_root():
    """The folder holding `benchmarks/`, which is not installed: this engine's own source checkout (an editable
    install), else the current directory. None if neither has it."""
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (root / "benchmarks" / "cli.py").is_file():
            return root
    return None


def cmd_bench(args) -> int:
    """Runs `python -m benchmarks` from the source checkout, with the arguments given after `bench`."""
    root = find_benchmarks_root()
    if root is None:
        print("fusegan bench: benchmarks/ not found; it is not installed, run this from a fusegan source checkout")
        return 1
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    bench_cli = importlib.import_module("benchmarks.cli")
    return bench_cli.main(args.bench_args, prog="fusegan bench")


def cmd_convert(args) -> int:
    """Converts NVIDIA StyleGAN2-ADA weights (pickle or state dict) to one safetensors file of G/D/G_ema."""
    from safetensors.torch import save_file

    from fusegan.models.stylegan2 import load_nvlabs

    try:
        nets = load_nvlabs(args.source, mbstd_group_size=args.mbstd_group_size, conv_clamp=args.conv_clamp,
                           num_fp16_res=args.num_fp16_res)
    except (OSError, ValueError, TypeError) as exc:
        print(f"fusegan convert: {exc}", file=sys.stderr)
        return 2
    tensors = {f"{name}.{key}": value.contiguous() for name, net in nets.items()
               for key, value in net.state_dict().items()}
    save_file(tensors, args.out)
    print(f"wrote {', '.join(nets)} ({len(tensors)} tensors) to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusegan",
        description="Fused Triton kernels and a training engine for GANs, autoencoders and VAEs.",
    )
    parser.add_argument("--version", action="version", version=f"fusegan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="print versions, the device, and which implementation each op uses")
    info.set_defaults(func=cmd_info)
    convert = sub.add_parser("convert", help="NVIDIA StyleGAN2-ADA pickle or state dict -> safetensors (G, D, G_ema)")
    convert.add_argument("source", help="network-snapshot .pkl, or a .safetensors/.pt state dict with NVIDIA's names")
    convert.add_argument("--out", required=True, help="the .safetensors file to write")
    convert.add_argument("--mbstd-group-size", type=int, default=4, help="for state dicts (no tensor records it)")
    convert.add_argument("--conv-clamp", type=float, default=None, help="for state dicts (NVIDIA default: none)")
    convert.add_argument("--num-fp16-res", type=int, default=0, help="for state dicts (NVIDIA default: 0)")
    convert.set_defaults(func=cmd_convert)
    # The options of `bench` live in benchmarks/cli.py (shared with `python -m benchmarks`), so everything after
    # `bench`, options included, is passed through: with no '-' in its prefix_chars this subparser takes
    # `--quick` or `--help` as plain words.
    bench = sub.add_parser(
        "bench",
        help="time the fused ops against eager PyTorch and torch.compile: bench [ops|train|all] [--only NAME] "
        "[--quick] [--out DIR] [--smoke] (needs a source checkout)",
        add_help=False,
        prefix_chars="\0",
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
