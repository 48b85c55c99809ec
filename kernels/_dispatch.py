"""Chooses between an op's Triton kernels and its plain-PyTorch reference.

Rules, in order:
1. An explicit `impl='ref'|'triton'` argument wins.
2. Otherwise the environment variable FUSEGAN_IMPL=ref|triton, if set.
3. Otherwise Triton for CUDA tensors and the reference for CPU tensors, except that under
   TRITON_INTERPRET=1 the Triton path also runs on CPU tensors (this is how CI tests kernels).
Asking for Triton where it cannot run raises a ValueError instead of failing inside a launch.
`impl='cuda'`, the default of NVIDIA's ops ("the custom kernel where it can run, else the reference"),
is taken as None, so that their callers switch with one import.
"""
import os

import torch

from ._triton import HAS_TRITON, TRITON_IMPORT_ERROR

IMPLS = ("ref", "triton")
NVIDIA_AUTO = "cuda"  # NVIDIA's impl='cuda': fused where it can run, else the reference (as None here)


def interpreter_active() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_can_run(device: torch.device) -> bool:
    """Whether a Triton kernel can be launched on tensors of `device`."""
    if not HAS_TRITON:
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreter_active())


def default_impl(device: torch.device) -> str:
    """The implementation an op uses on `device` when neither `impl=` nor FUSEGAN_IMPL says otherwise."""
    if device.type == "cuda" and HAS_TRITON:
        return "triton"
    if device.type == "cpu" and HAS_TRITON and interpreter_active():
        return "triton"
    return "ref"


def resolve_impl(impl, device: torch.device) -> str:
    """Returns 'ref' or 'triton' for an op whose tensors live on `device`."""
    source = "impl"
    if impl == NVIDIA_AUTO:
        impl = None
    if impl is None:
        env = os.environ.get("FUSEGAN_IMPL", "").strip()
        if env:
            impl, source = env, "FUSEGAN_IMPL"
        else:
            return default_impl(device)
    if impl not in IMPLS:
        raise ValueError(f"{source} must be one of {IMPLS}, None or {NVIDIA_AUTO!r} (as None), got {impl!r}")
    if impl == "triton" and not triton_can_run(device):
        if not HAS_TRITON:
            why = f"triton cannot be imported ({TRITON_IMPORT_ERROR})"
        else:
            why = f"tensors are on {device.type}; Triton needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors"
        raise ValueError(f"{source}='triton' cannot run: {why}")
    return impl
