"""normalize_2nd_moment (the StyleGAN mapping network's pixel norm), NVIDIA's definition:

    y = x * rsqrt(mean(x^2, dim) + eps)

x is viewed as [outer, D, inner] (D = x.shape[dim]); one program owns one outer index and a
block of inner positions, sums x^2 over D, then writes x * r. The backward,
    dx = r * dy - x * r^3 * mean(x * dy, dim),
sums x^2 and x * dy in one sweep and writes dx in a second (the row is cache-resident by then).
Double backward differentiates the plain-PyTorch reference.
"""
import math

import torch
from torch import Tensor

from ._dispatch import resolve_impl
from ._loss_math import register_one_input_autograd, split_float
from ._triton import compute_dtype, LAUNCH_OPTIONS, tl, triton
from ._validate import check_dim, check_finite_number, check_tensor, is_channels_last

TILE = 4096  # elements per [BLOCK_D, BLOCK_I] tile


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------
def _normalize_2nd_moment_ref(x: Tensor, dim: int, eps: float) -> Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _tile_offsets(o, d0, i_block, D, inner, so, sd, si, BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr):
    d = d0 + tl.arange(0, BLOCK_D)
    i = i_block * BLOCK_I + tl.arange(0, BLOCK_I)
    mask = (d < D)[:, None] & (i < inner)[None, :]
    offs = o.to(tl.int64) * so + d.to(tl.int64)[:, None] * sd + i.to(tl.int64)[None, :] * si
    return offs, mask


@triton.jit
def _normalize_fwd_kernel(x_ptr, y_ptr, D, inner, so, sd, si, eps_hi, eps_lo,
                          BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr, CDTYPE: tl.constexpr):
    # A 1-D grid over (outer, inner blocks): a 2-D grid would cap the inner blocks at 65535.
    num_i_blocks = tl.cdiv(inner, BLOCK_I)
    o = tl.program_id(0) // num_i_blocks
    i_block = tl.program_id(0) % num_i_blocks
    sumsq = tl.zeros([BLOCK_I], CDTYPE)
    for d0 in range(0, D, BLOCK_D):
        offs, mask = _tile_offsets(o, d0, i_block, D, inner, so, sd, si, BLOCK_D, BLOCK_I)
        x = tl.load(x_ptr + offs, mask=mask, other=0).to(CDTYPE)
        sumsq += tl.sum(x * x, axis=0)
    eps = (tl.zeros([], CDTYPE) + eps_hi) + eps_lo
    r = 1.0 / tl.sqrt(sumsq / D + eps)
    for d0 in range(0, D, BLOCK_D):
        offs, mask = _tile_offsets(o, d0, i_block, D, inner, so, sd, si, BLOCK_D, BLOCK_I)
        x = tl.load(x_ptr + offs, mask=mask, other=0).to(CDTYPE)
        tl.store(y_ptr + offs, (x * r[None, :]).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _normalize_bwd_kernel(dy_ptr, x_ptr, dx_ptr, D, inner, so, sd, si, eps_hi, eps_lo,
                          BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr, CDTYPE: tl.constexpr):
    # A 1-D grid over (outer, inner blocks): a 2-D grid would cap the inner blocks at 65535.
    num_i_blocks = tl.cdiv(inner, BLOCK_I)
    o = tl.program_id(0) // num_i_blocks
    i_block = tl.program_id(0) % num_i_blocks
    sumsq = tl.zeros([BLOCK_I], CDTYPE)
    dot = tl.zeros([BLOCK_I], CDTYPE)
    for d0 in range(0, D, BLOCK_D):
        offs, mask = _tile_offsets(o, d0, i_block, D, inner, so, sd, si, BLOCK_D, BLOCK_I)
        x = tl.load(x_ptr + offs, mask=mask, other=0).to(CDTYPE)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0).to(CDTYPE)
        sumsq += tl.sum(x * x, axis=0)
        dot += tl.sum(x * dy, axis=0)
    eps = (tl.zeros([], CDTYPE) + eps_hi) + eps_lo
    r = 1.0 / tl.sqrt(sumsq / D + eps)
    k = r * r * r * dot / D
    for d0 in range(0, D, BLOCK_D):
        offs, mask = _tile_offsets(o, d0, i_block, D, inner, so, sd, si, BLOCK_D, BLOCK_I)
        x = tl.load(x_ptr + offs, mask=mask, other=0).to(CDTYPE)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0).to(CDTYPE)
        dx = r[None, :] * dy - x * k[None, :]
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------
def _as_outer_d_inner(x: Tensor, dim: int):
    """(x, outer, D, inner, strides) with x possibly made contiguous so that its element
    [o, d, i] sits at o*so + d*sd + i*si. Contiguous, and channels_last with dim=1, need no copy."""
    D = x.shape[dim]
    outer = math.prod(x.shape[:dim])
    inner = math.prod(x.shape[dim + 1:])
    if is_channels_last(x) and dim == 1:
        N, C, H, W = x.shape
        return x, outer, D, inner, (H * W * C, 1, C)
    x = x.contiguous()
    return x, outer, D, inner, (D * inner, inner, 1)


def _launch_config(D, inner):
    block_i = min(triton.next_power_of_2(max(inner, 1)), 64)
    block_d = max(1, min(triton.next_power_of_2(max(D, 1)), TILE // block_i))
    return block_d, block_i


def _normalize_fwd_triton(x: Tensor, dim: int, eps: float) -> Tensor:
    x, outer, D, inner, strides = _as_outer_d_inner(x, dim)
    y = torch.empty_like(x)
    if x.numel() > 0:
        block_d, block_i = _launch_config(D, inner)
        grid = (outer * triton.cdiv(inner, block_i),)
        _normalize_fwd_kernel[grid](x, y, D, inner, *strides, *split_float(eps), BLOCK_D=block_d, BLOCK_I=block_i,
                                    CDTYPE=compute_dtype(x.dtype), **LAUNCH_OPTIONS)
    return y


def _normalize_bwd_triton(dy: Tensor, x: Tensor, dim: int, eps: float) -> Tensor:
    x, outer, D, inner, strides = _as_outer_d_inner(x, dim)
    dy = dy.contiguous(memory_format=torch.channels_last if is_channels_last(x) else torch.contiguous_format)
    dx = torch.empty_like(x)
    if x.numel() > 0:
        block_d, block_i = _launch_config(D, inner)
        grid = (outer * triton.cdiv(inner, block_i),)
        _normalize_bwd_kernel[grid](dy, x, dx, D, inner, *strides, *split_float(eps), BLOCK_D=block_d,
                                    BLOCK_I=block_i, CDTYPE=compute_dtype(x.dtype), **LAUNCH_OPTIONS)
    return dx


# ---------------------------------------------------------------------------------------------
# Custom ops
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("fusegan::normalize_2nd_moment", mutates_args=())
def _normalize_op(x: Tensor, dim: int, eps: float) -> Tensor:
    return _normalize_fwd_triton(x, dim, eps)


@_normalize_op.register_fake
def _(x, dim, eps):
    return torch.empty_like(_as_outer_d_inner(x, dim)[0])


@torch.library.custom_op("fusegan::normalize_2nd_moment_backward", mutates_args=())
def _normalize_backward_op(dy: Tensor, x: Tensor, dim: int, eps: float) -> Tensor:
    return _normalize_bwd_triton(dy, x, dim, eps)


@_normalize_backward_op.register_fake
def _(dy, x, dim, eps):
    return torch.empty_like(_as_outer_d_inner(x, dim)[0])


register_one_input_autograd(_normalize_op, _normalize_backward_op, _normalize_2nd_moment_ref)


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------
def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8, impl=None) -> Tensor:
    """`x * rsqrt(mean(x^2, dim) + eps)`: NVIDIA's normalize_2nd_moment (StyleGAN's pixel norm of z).

    Args:
        x: at least 1-D floating tensor, e.g. the mapping network's z [N, z_dim].
        dim: the dimension to normalize over (negative counts from the end).
        eps: added to the mean square; must be a finite number >= 0.
    Returns a tensor shaped like x (channels_last stays channels_last for dim=1).
    """
    check_tensor(x, "x", min_ndim=1)
    dim = check_dim(dim, x.ndim)
    eps = check_finite_number(eps, "eps", allow_none=False)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    impl = resolve_impl(impl, x.device)
    if impl == "ref":
        return _normalize_2nd_moment_ref(x, dim, eps)
    return _normalize_op(x, dim, eps)


__all__ = ["normalize_2nd_moment"]
