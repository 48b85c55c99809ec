"""Multi-process training as StyleGAN2-ADA does it: one process per device, launched by `torchrun`.

Gradients are averaged with one flat all-reduce per optimizer step (not through the DistributedDataParallel
wrapper) because the GAN recipes run several forward/backward passes per step and differentiate twice for R1 and
path-length regularization, which DDP's bucketed hooks do not support. The same all-reduce carries a
"my loss was finite" flag, so every rank takes the same skip-or-step decision. A stop request (SIGINT/SIGTERM)
is shared the same way, one tiny all-reduce per step, so every rank stops and snapshots at the same step.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> DistInfo:
    """Joins the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); a single
    process (no WORLD_SIZE, or 1) needs no group. NCCL on CUDA, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(module: torch.nn.Module, src: int = 0):
    """Makes every rank start from rank `src`'s parameters and buffers."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=src)


def average_gradients(params, finite: torch.Tensor, world_size: int) -> torch.Tensor:
    """All-reduces the gradients of `params` (averaged over ranks, missing ones as zeros) together with each
    rank's `finite` flag; returns True (as a 0-d bool tensor) only if every rank's loss was finite."""
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [finite.reshape(1).float()])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = (flat[offset:offset + n] / world_size).view_as(g).to(g.dtype)
        offset += n
    return flat[-1] == world_size


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is set on any rank (one tiny all-reduce; NCCL needs the tensor on the rank's device). Used
    for the stop request: a signal reaches the ranks at different steps, and ranks that stop at different steps
    would enter different collectives and hang."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
