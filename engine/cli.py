"""The `fusegan` command line. Each subcommand is a small function; `main` only parses and dispatches."""
import argparse
import importlib
import os
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
    from fusegan.models.stylegan2 import load_nvlabs, save_nvlabs_safetensors

    try:
        nets = load_nvlabs(args.source, mbstd_group_size=args.mbstd_group_size,
                           mapping_lr_multiplier=args.mapping_lr_multiplier, conv_clamp=args.conv_clamp,
                           num_fp16_res=args.num_fp16_res)
    except (OSError, ValueError, TypeError) as exc:
        print(f"fusegan convert: {exc}", file=sys.stderr)
        return 2
    # The constructor kwargs go into the file's metadata: no tensor records conv_clamp, num_fp16_res, ...
    count = save_nvlabs_safetensors(nets, args.out)
    print(f"wrote {', '.join(nets)} ({count} tensors) to {args.out}")
    return 0


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only where there is a default worth showing (not None, False or already said)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad option is one line on stderr (with a pointer to --help), not usage plus error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _train_parser(recipe_name=None):
    from .config import TrainConfig
    from .precision import PRECISIONS
    from .recipes import RECIPES, get_recipe

    d = TrainConfig()
    p = _OneLineParser(
        prog="fusegan train",
        description="Train a recipe. With no options: DCGAN on the built-in digits (a few minutes on 2 CPU cores), "
        "writing sample grids, stats.jsonl and checkpoints under runs/. `fusegan train --recipe NAME --help` "
        "lists that recipe's own options.",
        formatter_class=_DefaultsFormatter)
    g = p.add_argument_group("what to train")
    g.add_argument("--recipe", choices=RECIPES, default=d.recipe, help="training recipe")
    g.add_argument("--data", default=None, help="'digits', 'faces', an image folder or a dataset .zip "
                   "(paired A|B images for pix2pix, trainA/ trainB/ for cyclegan); default: the recipe's built-in")
    g.add_argument("--res", type=int, default=None, help="resolution (default: the recipe's)")
    g.add_argument("--cond", action="store_true", help="conditional training on dataset.json labels")
    g.add_argument("--direction", choices=("AtoB", "BtoA"), default=d.direction, help="pix2pix: which half is input")
    g.add_argument("--xflip", action="store_true", help="x-flip augmentation (pix2pix: one flip per A|B pair; CycleGAN: A and B independently)")
    g.add_argument("--max-bad-fraction", type=float, default=d.max_bad_fraction,
                   help="stop when more than this fraction of images cannot be read")
    g = p.add_argument_group("how long and how")
    g.add_argument("--batch", type=int, default=None, help="global batch over all processes (default: the recipe's)")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    length.add_argument("--kimg", type=float, default=None, help="length in thousands of real images")
    g.add_argument("--precision", choices=PRECISIONS, default=d.precision, help="fp16 uses a GradScaler")
    g.add_argument("--channels-last", action="store_true", help="NHWC activations (the fast layout on GPU)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the main losses' forwards (regularization passes stay eager: no double "
                   "backward through compiled graphs)")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (runs are deterministic on CPU)")
    g.add_argument("--impl", choices=("ref", "triton"), default=None, help="force an op implementation")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    g.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    g = p.add_argument_group("outputs")
    g.add_argument("--out", default=d.out, help="folder for numbered run folders")
    g.add_argument("--run-dir", default=None, help="exact run folder (instead of a numbered one in --out)")
    g.add_argument("--resume", default=None, metavar="DIR|auto",
                   help="continue a run exactly: its folder, or 'auto' for the newest matching run in --out")
    g.add_argument("--snap", type=int, default=d.snap, help="steps between snapshots (grids, metrics, checkpoint)")
    g.add_argument("--keep", type=int, default=d.keep, help="snapshots kept on disk")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between stats lines")
    g.add_argument("--max-nonfinite", type=int, default=d.max_nonfinite,
                   help="stop after this many steps in a row with a non-finite loss")
    g.add_argument("--metrics", default="", help="comma-separated metrics at every snapshot: fid,kid,pr")
    g.add_argument("--inception", default=None, metavar="PATH",
                   help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth); never downloaded")
    g.add_argument("--metrics-images", type=int, default=d.metrics_images, help="generated images per metric")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="no TensorBoard scalars")
    if recipe_name is not None:
        get_recipe(recipe_name).add_arguments(p)
    return p


def cmd_train(argv) -> int:
    """Parses in two passes: --recipe first, then the options of that recipe too."""
    from .config import TrainConfig
    from .trainer import TrainingStopped, train

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default=TrainConfig.recipe)
    known, _ = pre.parse_known_args(argv)
    base_keys = set(vars(_train_parser().parse_args([])))
    parser = _train_parser(known.recipe if known.recipe in _recipe_names() else None)
    args = parser.parse_args(argv)
    values = vars(args)
    recipe_options = {k: v for k, v in values.items() if k not in base_keys}
    cfg_fields = {k: v for k, v in values.items() if k in base_keys}
    cfg_fields["metrics"] = _parse_metrics(cfg_fields["metrics"])
    cfg = TrainConfig(**cfg_fields, recipe_options=recipe_options)
    try:
        summary = train(cfg)
    except TrainingStopped as exc:
        print(f"fusegan train: {exc}", file=sys.stderr)
        return 3
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        print(f"fusegan train: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    print(f"done: {summary['steps']} steps, {summary['images_seen']} images in {summary['wall_time_s']:.1f} s "
          f"({summary['mean_img_per_s']:.1f} img/s), peak memory {summary['peak_memory_gb']:.2f} GB; "
          f"outputs in {summary['run_dir']}")
    return 0


def _recipe_names():
    from .recipes import RECIPES
    return RECIPES


def _parse_metrics(text):
    if not text:
        return ()
    from .metrics import parse_metrics
    return tuple(parse_metrics(text))


def cmd_sample(args) -> int:
    """Generates images from a checkpoint into one PNG grid."""
    import torch

    from .grids import save_grid
    from .inference import load_recipe

    try:
        recipe = load_recipe(args.ckpt, device=args.device)
        gen = torch.Generator(recipe.ctx.device).manual_seed(args.seed)
        images = recipe.sample(args.n, gen, truncation=args.truncation)
    except (OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        print(f"fusegan sample: {exc}", file=sys.stderr)
        return 2
    save_grid(images, args.out, nrow=args.nrow or max(1, round(args.n ** 0.5)))
    print(f"wrote {args.n} samples to {args.out}")
    return 0


def cmd_interpolate(args) -> int:
    """A latent interpolation strip between the latents of the given seeds."""
    from .grids import save_grid
    from .inference import load_recipe

    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        recipe = load_recipe(args.ckpt, device=args.device)
        images = recipe.interpolate(seeds, args.steps, truncation=args.truncation)
    except (OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        print(f"fusegan interpolate: {exc}", file=sys.stderr)
        return 2
    save_grid(images, args.out, nrow=args.steps)
    print(f"wrote {len(images)} images to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="fusegan",
        description="Fused Triton kernels and a training engine for GANs, autoencoders and VAEs.",
    )
    parser.add_argument("--version", action="version", version=f"fusegan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # `train` is parsed by its own parser (cmd_train) because its options depend on --recipe.
    train = sub.add_parser("train", help="train a recipe (no options: DCGAN on the built-in digits); "
                           "see `fusegan train --help`", add_help=False, prefix_chars="\0")
    train.add_argument("train_args", nargs=argparse.REMAINDER)
    train.set_defaults(func=lambda a: cmd_train(a.train_args))
    for name, func, what in (("sample", cmd_sample, "generate a grid of samples from a checkpoint"),
                             ("interpolate", cmd_interpolate, "a latent interpolation strip from a checkpoint")):
        cmd = sub.add_parser(name, help=what)
        cmd.add_argument("--ckpt", required=True, help="a run folder or a checkpoint file")
        cmd.add_argument("--out", required=True, help="the PNG to write")
        cmd.add_argument("--truncation", type=float, default=1.0, help="truncation psi (StyleGAN2)")
        cmd.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
        if name == "sample":
            cmd.add_argument("--n", type=int, default=64, help="number of images")
            cmd.add_argument("--seed", type=int, default=0)
            cmd.add_argument("--nrow", type=int, default=None, help="images per row (default: a square)")
        else:
            cmd.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds to pass through")
            cmd.add_argument("--steps", type=int, default=8, help="images between consecutive seeds")
        cmd.set_defaults(func=func)
    info = sub.add_parser("info", help="print versions, the device, and which implementation each op uses")
    info.set_defaults(func=cmd_info)
    convert = sub.add_parser("convert", help="NVIDIA StyleGAN2-ADA pickle or state dict -> safetensors (G, D, G_ema)")
    convert.add_argument("source", help="network-snapshot .pkl, or a .safetensors/.pt state dict with NVIDIA's names")
    convert.add_argument("--out", required=True, help="the .safetensors file to write")
    convert.add_argument("--mbstd-group-size", type=int, default=4, help="for state dicts (no tensor records it)")
    convert.add_argument("--conv-clamp", type=float, default=None, help="for state dicts (NVIDIA default: none)")
    convert.add_argument("--num-fp16-res", type=int, default=0, help="for state dicts (NVIDIA default: 0)")
    convert.add_argument("--mapping-lr-multiplier", type=float, default=0.01,
                         help="for state dicts (NVIDIA default: 0.01)")
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


def _has_cuda():
    import torch
    return torch.cuda.is_available()


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
