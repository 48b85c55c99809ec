"""What every training recipe provides, and the optimizer step they all share.

A recipe owns its networks and optimizers and knows one training step; the trainer (engine/trainer.py) owns
everything around it: data, precision, checkpoints, logging, signals, non-finite bookkeeping and processes.

    recipe = Recipe(ctx, options, data_info)     # builds self.nets / self.optimizers
    losses = recipe.train_step(batch, step)      # dict of detached 0-d tensors (no host sync)
    images = recipe.snapshot_grid()              # what a person looks at after each snapshot

Checkpoints save `recipe.nets` (safetensors), `recipe.optimizers`, and `recipe.extra_state()`; anything else a
recipe keeps across steps (pl_mean, the CycleGAN image pool, ...) belongs in extra_state so resume is exact.
"""
import argparse
import contextlib
from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

import torch
from torch import nn

from ..distributed import DistInfo, average_gradients
from ..precision import Precision


@dataclass
class DataInfo:
    """What a recipe needs to know about its data to build its networks."""
    resolution: int
    channels: int
    num_classes: int = 0        # 0: unconditional
    kind: str = "image"         # 'image' (images, labels), 'paired' (A, B) or 'unpaired' (A, B)
    channels_b: Optional[int] = None  # second domain's channels for paired/unpaired data
    # Images per class of conditional data ([num_classes] ints, None when unknown): the label distribution that
    # StyleGAN2-ADA's metrics draw their conditioning from (a random dataset item's label).
    label_counts: Optional[List[int]] = None


@dataclass
class TrainContext:
    """How the step runs: device, precision, layout, processes and the batch split."""
    device: torch.device
    precision: Precision
    batch_size: int                 # global batch, over all processes
    seed: int = 0
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile's backend ('eager'/'aot_eager' for CPU smoke runs)
    impl: Optional[str] = None      # forwarded to the models (None: each op's default dispatch)
    dist: DistInfo = field(default_factory=DistInfo)

    @property
    def batch_gpu(self) -> int:
        """This process's share of the global batch (StyleGAN2-ADA's batch_gpu)."""
        return self.batch_size // self.dist.world_size

    @property
    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format


class Recipe:
    """Base class of the recipes. Subclasses set the class attributes, `add_arguments`, `__init__`,
    `train_step` and `snapshot_grid`; `sample` where the recipe is generative."""

    name: ClassVar[str] = ""
    data_kind: ClassVar[str] = "image"      # which dataset kind it trains on
    default_batch: ClassVar[int] = 64
    default_resolution: ClassVar[int] = 32
    default_data: ClassVar[str] = "digits"
    default_steps: ClassVar[int] = 1000     # length of a run when neither --steps nor --kimg is given
    loss_names: ClassVar[tuple] = ()        # the losses shown in the progress bar, in this order

    def __init__(self, ctx: TrainContext, options: argparse.Namespace, data: DataInfo):
        self.ctx, self.options, self.data = ctx, options, data
        self.nets: dict[str, nn.Module] = {}            # saved in checkpoints (G, D, G_ema, ...)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.nonfinite: list[str] = []                  # phases skipped in the current step (the trainer reads it)
        self.reference_batch = None                     # fixed real batch for snapshot grids (set by the trainer)

    def set_reference_batch(self, batch) -> None:
        """The trainer hands over a fixed batch of real data (same form as train_step's, first items of the
        dataset, never drawn from the training stream) for grids that show inputs beside outputs."""
        self.reference_batch = batch

    # ---- what subclasses provide -------------------------------------------------------------------------
    @classmethod
    def recommended_batch(cls, options: argparse.Namespace, resolution: int, world_size: int) -> int:
        """The global batch used when --batch is not given."""
        return cls.default_batch

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Adds this recipe's own command-line options (shown by `fusegan train --recipe NAME --help`)."""

    def train_step(self, batch, step: int) -> dict:
        raise NotImplementedError

    def snapshot_grid(self) -> dict:
        """Images for the snapshot PNGs: {'name': (images in [-1, 1] NCHW, images per row)}."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator, truncation: float = 1.0) -> torch.Tensor:
        """n generated images in [-1, 1] (for `fusegan sample` and the metrics)."""
        raise NotImplementedError(f"recipe {self.name!r} does not generate images from noise")

    def metric_samples(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n generated images in [-1, 1] for the metrics: `sample` unless a recipe's reference measures its
        generator otherwise (StyleGAN2-ADA's metrics draw random noise inputs where its generate.py fixes them)."""
        return self.sample(n, generator)

    def interpolate(self, seeds, steps: int, truncation: float = 1.0) -> torch.Tensor:
        """Images along a latent path through the latents of `seeds`, [len(seeds)-1)*steps+1, C, H, W]."""
        raise NotImplementedError(f"recipe {self.name!r} has no latent space to interpolate")

    def extra_state(self) -> dict:
        """Tensors and plain numbers (loadable with torch.load(weights_only=True)) needed to resume exactly."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # ---- shared helpers ----------------------------------------------------------------------------------
    def prepare(self, module: nn.Module) -> nn.Module:
        """Moves a freshly built network to the device and layout of the run."""
        return module.to(self.ctx.device, memory_format=self.ctx.memory_format)

    def maybe_compile(self, module: nn.Module):
        """torch.compile'd forward when --compile, else the module. Only the main losses go through it: the
        regularization passes differentiate twice, which torch.compile does not support, so they stay eager."""
        return torch.compile(module, backend=self.ctx.compile_backend) if self.ctx.compile else module

    def backward(self, loss: torch.Tensor) -> None:
        self.ctx.precision.scale(loss).backward()

    def step_optimizer(self, name: str, loss: torch.Tensor, *, nan_to_num: bool = False) -> bool:
        """Finishes one optimizer step after `backward`: averages gradients over processes, skips the step (and
        records it in `self.nonfinite`) when `loss` is not finite on any process, else optionally replaces
        non-finite gradient entries as StyleGAN2-ADA does, steps and clears the gradients. Returns whether it
        stepped. The finiteness test costs one host sync per optimizer step."""
        opt = self.optimizers[name]
        params = [p for group in opt.param_groups for p in group["params"]]
        finite = torch.isfinite(loss.detach()).all()
        if self.ctx.dist.world_size > 1:
            finite = average_gradients(params, finite, self.ctx.dist.world_size)
        if not bool(finite):
            opt.zero_grad(set_to_none=True)
            self.nonfinite.append(name)
            return False
        scaler = self.ctx.precision.scaler
        if nan_to_num:
            if scaler.is_enabled():
                scaler.unscale_(opt)
            grads = [p.grad for p in params if p.grad is not None]
            for g in grads:
                torch.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5, out=g)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return True


@contextlib.contextmanager
def eval_mode(*modules: nn.Module):
    """The modules in eval mode inside (BatchNorm running statistics, no dropout), each one's own training
    flag restored after, so that snapshots and samples neither draw from the RNG nor move running statistics."""
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freezes (False) or unfreezes a network, so that a phase computes only the gradients it needs."""
    for p in module.parameters():
        p.requires_grad_(flag)


def ema_update(ema: nn.Module, source: nn.Module, beta: float) -> None:
    """ema = beta * ema + (1 - beta) * source for parameters (one fused _foreach_lerp_), buffers copied."""
    ema_params = [p.detach() for p in ema.parameters()]
    src_params = [p.detach() for p in source.parameters()]
    torch._foreach_lerp_(ema_params, src_params, 1.0 - beta)
    for b_ema, b_src in zip(ema.buffers(), source.buffers()):
        b_ema.copy_(b_src)
