"""Gradient regularizers of GAN training: R1, WGAN-GP's gradient penalty and StyleGAN2's path length.

Each reads a gradient as large as the image batch once, as a per-sample (row) reduction, and sits
at the end of a `create_graph=True` chain, so its backward must be differentiable too.

All three are built from three Triton row primitives, each a `fusegan::` custom op whose
backward is made of the others (so every derivative order runs in Triton):

    row_sumsq(x)[n]     = sum_i x[n, i]^2         d/dx: row_scale(x, 2 * dout)
    row_dot(a, b)[n]    = sum_i a[n, i] * b[n, i]  d/da: row_scale(b, dout), d/db: row_scale(a, dout)
    row_scale(x, c)     = x[n, i] * c[n]           d/dx: row_scale(dout, c),  d/dc: row_dot(dout, x)

A row is everything but dim 0. The reductions split each row into blocks (grid: blocks x N) and add
block sums atomically into a float32 accumulator (float64 for float64 input), so a [32, 3, 256, 256]
gradient keeps the whole GPU busy; offsets are int64. (On a GPU the atomic summation order, and so the
last bits of a penalty, may vary between runs.) The per-sample epilogues (sqrt, - center,
square, the pl_mean update) act on [N] vectors in plain PyTorch.

Per-sample results are float32 for fp16/bf16/fp32 gradients (float64 for float64): a sum of squares
of an fp16 image gradient can overflow fp16.
"""
import numbers
from typing import Tuple, Union

import torch
from torch import Tensor

from ._dispatch import resolve_impl
from ._loss_math import dense_like
from ._triton import compute_dtype, LAUNCH_OPTIONS, tl, torch_compute_dtype, triton
from ._validate import check_finite_number, check_same_device, check_tensor, dense

ROW_BLOCK = 4096


def _safe_sqrt(s: Tensor) -> Tensor:
    """sqrt(s) whose gradient at s == 0 is 0 (like torch.linalg.vector_norm's), not inf * 0 = nan.

    A NaN stays NaN (`s * 0`, not zeros): a NaN gradient must reach the caller's finiteness check (the training
    recipes skip such a step), not come out as a length of 0."""
    positive = s > 0
    return torch.where(positive, torch.where(positive, s, torch.ones_like(s)).sqrt(), s * 0)


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------
def _sumsq_ref(grad: Tensor) -> Tensor:
    return grad.to(torch_compute_dtype(grad.dtype)).square().sum(dim=tuple(range(1, grad.ndim)))


def _r1_penalty_ref(grad: Tensor) -> Tensor:
    return _sumsq_ref(grad)


def _gradient_penalty_ref(grad: Tensor, center: float) -> Tensor:
    g = grad.to(torch_compute_dtype(grad.dtype)).flatten(1)
    return (torch.linalg.vector_norm(g, dim=1) - center).square()


def _path_lengths_ref(grad_ws: Tensor) -> Tensor:
    # NVIDIA's formula, with the sqrt's gradient at 0 taken as 0 (as the Triton path and gradient_penalty do).
    return _safe_sqrt(grad_ws.to(torch_compute_dtype(grad_ws.dtype)).square().sum(2).mean(1))


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _row_dot_kernel(a_ptr, b_ptr, out_ptr, row_len, SQUARE: tl.constexpr, BLOCK: tl.constexpr,
                    CDTYPE: tl.constexpr):
    """out[row] += sum over one BLOCK of the row of a*b (a*a when SQUARE)."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    row = tl.program_id(1)
    mask = cols < row_len
    offs = row.to(tl.int64) * row_len + cols
    a = tl.load(a_ptr + offs, mask=mask, other=0).to(CDTYPE)
    if SQUARE:
        prod = a * a
    else:
        prod = a * tl.load(b_ptr + offs, mask=mask, other=0).to(CDTYPE)
    tl.atomic_add(out_ptr + row, tl.sum(prod, axis=0))


@triton.jit
def _row_scale_kernel(x_ptr, coef_ptr, out_ptr, row_len, BLOCK: tl.constexpr, CDTYPE: tl.constexpr):
    """out[row, :] = x[row, :] * coef[row], one BLOCK of one row per program."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    row = tl.program_id(1)
    mask = cols < row_len
    offs = row.to(tl.int64) * row_len + cols
    coef = tl.load(coef_ptr + row).to(CDTYPE)
    x = tl.load(x_ptr + offs, mask=mask, other=0).to(CDTYPE)
    tl.store(out_ptr + offs, (x * coef).to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers (rows are walked in storage order: contiguous and channels_last keep each sample dense)
# ---------------------------------------------------------------------------------------------
def _row_grid(x: Tensor):
    """(blocks per row, rows): the long axis first, where CUDA allows 2**31 - 1 programs (rows: 65535)."""
    n = x.shape[0]
    row_len = x.numel() // n if n else 0
    return (max(1, triton.cdiv(row_len, ROW_BLOCK)), n), row_len


def _row_dot_triton(a: Tensor, b: Tensor = None) -> Tensor:
    a = dense(a)
    square = b is None
    b = a if square else dense_like(b, a)
    out = torch.zeros(a.shape[0], dtype=torch_compute_dtype(a.dtype), device=a.device)
    grid, row_len = _row_grid(a)
    if a.numel() > 0:
        _row_dot_kernel[grid](a, b, out, row_len, SQUARE=square, BLOCK=ROW_BLOCK, CDTYPE=compute_dtype(a.dtype),
                              **LAUNCH_OPTIONS)
    return out


def _row_scale_triton(x: Tensor, coef: Tensor) -> Tensor:
    x = dense(x)
    out = torch.empty_like(x)
    grid, row_len = _row_grid(x)
    if x.numel() > 0:
        _row_scale_kernel[grid](x, coef.contiguous(), out, row_len, BLOCK=ROW_BLOCK,
                                CDTYPE=compute_dtype(x.dtype), **LAUNCH_OPTIONS)
    return out


# ---------------------------------------------------------------------------------------------
# Custom ops
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("fusegan::row_sumsq", mutates_args=())
def _row_sumsq_op(x: Tensor) -> Tensor:
    return _row_dot_triton(x)


@torch.library.custom_op("fusegan::row_dot", mutates_args=())
def _row_dot_op(a: Tensor, b: Tensor) -> Tensor:
    return _row_dot_triton(a, b)


@torch.library.custom_op("fusegan::row_scale", mutates_args=())
def _row_scale_op(x: Tensor, coef: Tensor) -> Tensor:
    return _row_scale_triton(x, coef)


@_row_sumsq_op.register_fake
def _(x):
    return x.new_empty(x.shape[0], dtype=torch_compute_dtype(x.dtype))


@_row_dot_op.register_fake
def _(a, b):
    return a.new_empty(a.shape[0], dtype=torch_compute_dtype(a.dtype))


@_row_scale_op.register_fake
def _(x, coef):
    return torch.empty_like(dense(x))


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _row_sumsq_backward(ctx, dout):
    (x,) = ctx.saved_tensors
    return _row_scale_op(x, 2 * dout)


def _row_dot_backward(ctx, dout):
    a, b = ctx.saved_tensors
    da = _row_scale_op(b, dout) if ctx.needs_input_grad[0] else None
    db = _row_scale_op(a, dout) if ctx.needs_input_grad[1] else None
    return da, db


def _row_scale_backward(ctx, dout):
    x, coef = ctx.saved_tensors
    dx = _row_scale_op(dout, coef) if ctx.needs_input_grad[0] else None
    dcoef = _row_dot_op(dout, x).to(coef.dtype) if ctx.needs_input_grad[1] else None
    return dx, dcoef


_row_sumsq_op.register_autograd(_row_sumsq_backward, setup_context=_save_inputs)
_row_dot_op.register_autograd(_row_dot_backward, setup_context=_save_inputs)
_row_scale_op.register_autograd(_row_scale_backward, setup_context=_save_inputs)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------
def _check_grad(grad, name: str, ndim=None):
    check_tensor(grad, name, ndim=ndim, min_ndim=None if ndim else 2)
    if grad.shape[0] == 0:
        raise ValueError(f"{name} must have a non-empty batch dim, got shape {tuple(grad.shape)}")


def r1_penalty(grad: Tensor, impl=None) -> Tensor:
    """StyleGAN2's R1: per-sample sum of squares of `grad` (= dD(x)/dx) over all non-batch dims.

    Args:
        grad: [N, ...] (at least 2-D), e.g. the [N, C, H, W] gradient of D's logits wrt the reals,
            computed with `create_graph=True` so that the penalty's backward reaches D's weights.
    Returns [N] in float32 (float64 for float64 input). Multiply by gamma / 2 outside.
    """
    _check_grad(grad, "grad")
    impl = resolve_impl(impl, grad.device)
    if impl == "ref":
        return _r1_penalty_ref(grad)
    return _row_sumsq_op(grad)


def gradient_penalty(grad: Tensor, center: float = 1.0, impl=None) -> Tensor:
    """WGAN-GP: per-sample `(||grad[n]||_2 - center)^2`, the norm over all non-batch dims.

    Returns [N] in float32 (float64 for float64 input). At a zero gradient the norm's gradient is
    taken as 0, as torch.linalg.vector_norm does.
    """
    _check_grad(grad, "grad")
    center = check_finite_number(center, "center", allow_none=False)
    impl = resolve_impl(impl, grad.device)
    if impl == "ref":
        return _gradient_penalty_ref(grad, center)
    return (_safe_sqrt(_row_sumsq_op(grad)) - center).square()


def _check_pl_mean(pl_mean, grad_ws: Tensor) -> Tensor:
    if isinstance(pl_mean, numbers.Real) and not isinstance(pl_mean, bool):
        check_finite_number(pl_mean, "pl_mean", allow_none=False)
        return torch.tensor(float(pl_mean), dtype=torch_compute_dtype(grad_ws.dtype), device=grad_ws.device)
    check_tensor(pl_mean, "pl_mean")
    if pl_mean.numel() != 1:
        raise ValueError(f"pl_mean must hold one value, got shape {tuple(pl_mean.shape)}")
    check_same_device(grad_ws, "grad_ws", pl_mean, "pl_mean")
    return pl_mean


def path_length_penalty(grad_ws: Tensor, pl_mean: Union[Tensor, float], decay: float = 0.01,
                        impl=None) -> Tuple[Tensor, Tensor]:
    """StyleGAN2's path-length regularizer, NVIDIA's semantics (stylegan2-ada-pytorch loss.py).

    Args:
        grad_ws: [N, num_ws, w_dim], the gradient of (img * noise).sum() wrt ws (create_graph=True).
        pl_mean: running mean of the path lengths (a one-element tensor, or a number).
        decay: the running mean's update rate.
    Returns `(penalty, new_pl_mean)`:
        lengths     = sqrt(mean over ws of sum over w_dim of grad_ws^2)          [N]
        updated     = pl_mean.lerp(lengths.mean(), decay)
        penalty     = (lengths - updated)^2                                        [N]
        new_pl_mean = updated.detach(), shaped and typed like pl_mean.
    As in NVIDIA's code the penalty uses the *updated* mean and is differentiated through it.
    `pl_mean` is not modified: store `new_pl_mean` yourself (e.g. `self.pl_mean.copy_(new_pl_mean)`).
    penalty is float32 (float64 for float64 grad_ws).
    """
    _check_grad(grad_ws, "grad_ws", ndim=3)
    if grad_ws.shape[1] == 0:
        raise ValueError(f"grad_ws must have at least one ws (the mean is over them), got {tuple(grad_ws.shape)}")
    pl_mean = _check_pl_mean(pl_mean, grad_ws)
    decay = check_finite_number(decay, "decay", allow_none=False)
    impl = resolve_impl(impl, grad_ws.device)
    if impl == "ref":
        lengths = _path_lengths_ref(grad_ws)
    else:
        lengths = _safe_sqrt(_row_sumsq_op(grad_ws) / grad_ws.shape[1])
    updated = pl_mean.detach().to(lengths.dtype).reshape(()).lerp(lengths.mean(), decay)
    penalty = (lengths - updated).square()
    return penalty, updated.detach().to(pl_mean.dtype).reshape(pl_mean.shape)


__all__ = ["r1_penalty", "gradient_penalty", "path_length_penalty"]
