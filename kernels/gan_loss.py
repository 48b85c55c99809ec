"""Fused GAN losses on discriminator logits: logistic, hinge, Wasserstein and least squares.

| kind     | real         | fake         | gen (G's loss on fake logits) |
|----------|--------------|--------------|-------------------------------|
| logistic | softplus(-x) | softplus(x)  | softplus(-x)                  |
| hinge    | relu(1 - x)  | relu(1 + x)  | -x                            |
| wgan     | -x           | x            | -x                            |
| lsgan    | (x - 1)^2    | x^2          | (x - 1)^2                     |

One kernel reads the logits once, writes dloss/dlogits for the backward and either the
elementwise loss ('none') or a block partial sum added atomically into one accumulator
('mean'/'sum'; float32, float64 for float64 logits). The backward is one more pass that scales
the stored gradient. Softplus and sigmoid only exponentiate -|x|, so logits of +-1e4 in fp32
(and any finite fp16/bf16 logits) give finite losses and gradients.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._dispatch import resolve_impl
from ._loss_math import ELEMENTWISE_BLOCK, reference_double_backward, scale_saved_grad, softplus_and_sigmoid
from ._triton import compute_dtype, LAUNCH_OPTIONS, tl, triton
from ._validate import check_tensor, dense

KINDS = ("logistic", "hinge", "wgan", "lsgan")
TARGETS = ("real", "fake", "gen")
REDUCTIONS = ("mean", "sum", "none")

# Every (kind, target) is one of four formulas with a constant c (see _formula).
_SOFTPLUS, _HINGE, _LINEAR, _SQUARE = 0, 1, 2, 3


def _formula(kind: str, target: str):
    """(formula, c): softplus(c*x), relu(1 + c*x), c*x or (x - c)^2."""
    sign = 1 if target == "fake" else -1
    if kind == "logistic":
        return _SOFTPLUS, sign
    if kind == "hinge":
        return (_LINEAR, -1) if target == "gen" else (_HINGE, sign)
    if kind == "wgan":
        return _LINEAR, sign
    return _SQUARE, (0 if target == "fake" else 1)


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------
def _gan_loss_ref(logits: Tensor, kind: str, target: str, reduction: str) -> Tensor:
    formula, c = _formula(kind, target)
    if formula == _SOFTPLUS:
        loss = F.softplus(c * logits)
    elif formula == _HINGE:
        loss = F.relu(1 + c * logits)
    elif formula == _LINEAR:
        loss = c * logits
    else:
        loss = (logits - c).square()
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _loss_and_grad(x, FORMULA: tl.constexpr, C: tl.constexpr):
    """Elementwise loss and dloss/dx for one formula (see _formula)."""
    if FORMULA == 0:  # softplus(c*x); d/dx = c * sigmoid(c*x)
        loss, sig = softplus_and_sigmoid(C * x)
        grad = C * sig
    elif FORMULA == 1:  # relu(1 + c*x); d/dx = c where 1 + c*x > 0
        z = 1.0 + C * x
        loss = tl.maximum(z, 0.0)
        grad = tl.where(z > 0, tl.zeros_like(x) + C, tl.zeros_like(x))
    elif FORMULA == 2:  # c*x
        loss = C * x
        grad = tl.zeros_like(x) + C
    else:  # (x - c)^2
        d = x - C
        loss = d * d
        grad = 2.0 * d
    return loss, grad


@triton.jit
def _gan_loss_fwd_kernel(x_ptr, loss_ptr, grad_ptr, total_ptr, numel,
                         FORMULA: tl.constexpr, C: tl.constexpr, REDUCE: tl.constexpr, MEAN: tl.constexpr,
                         STORE_GRAD: tl.constexpr, BLOCK: tl.constexpr, CDTYPE: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0).to(CDTYPE)
    loss, grad = _loss_and_grad(x, FORMULA, C)
    if STORE_GRAD:
        tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=mask)
    if REDUCE:
        partial = tl.sum(tl.where(mask, loss, 0.0), axis=0)
        if MEAN:
            partial = partial / numel
        tl.atomic_add(total_ptr, partial)
    else:
        tl.store(loss_ptr + offs, loss.to(loss_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------
def _gan_loss_fwd_triton(logits, kind, target, reduction, need_grad):
    x = dense(logits)
    formula, c = _formula(kind, target)
    reduce = reduction != "none"
    cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    total = torch.zeros((), dtype=cdtype, device=x.device) if reduce else x.new_empty(0)
    loss = x.new_empty(0) if reduce else torch.empty_like(x)
    grad = torch.empty_like(x) if need_grad else x.new_empty(0)
    numel = x.numel()
    if numel > 0:
        grid = (triton.cdiv(numel, ELEMENTWISE_BLOCK),)
        _gan_loss_fwd_kernel[grid](x, loss, grad, total, numel, FORMULA=formula, C=c, REDUCE=reduce,
                                   MEAN=reduction == "mean", STORE_GRAD=need_grad,
                                   BLOCK=ELEMENTWISE_BLOCK, CDTYPE=compute_dtype(x.dtype), **LAUNCH_OPTIONS)
    if reduce:
        if reduction == "mean" and numel == 0:
            total = total / 0  # nan, as torch's mean of an empty tensor
        loss = total.to(x.dtype)
    return loss, grad


# ---------------------------------------------------------------------------------------------
# Custom ops
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("fusegan::gan_loss", mutates_args=())
def _gan_loss_op(logits: Tensor, kind: str, target: str, reduction: str, need_grad: bool) -> Tuple[Tensor, Tensor]:
    return _gan_loss_fwd_triton(logits, kind, target, reduction, need_grad)


@_gan_loss_op.register_fake
def _(logits, kind, target, reduction, need_grad):
    x = dense(logits)
    loss = x.new_empty(()) if reduction != "none" else torch.empty_like(x)
    grad = torch.empty_like(x) if need_grad else x.new_empty(0)
    return loss, grad


@torch.library.custom_op("fusegan::gan_loss_backward", mutates_args=())
def _gan_loss_backward_op(dloss: Tensor, saved_grad: Tensor, logits: Tensor, kind: str, target: str,
                          reduction: str) -> Tensor:
    divisor = logits.numel() if reduction == "mean" else 1
    return scale_saved_grad(saved_grad, dloss, divisor)


@_gan_loss_backward_op.register_fake
def _(dloss, saved_grad, logits, kind, target, reduction):
    return torch.empty_like(saved_grad)


def _setup_context(ctx, inputs, output):
    logits, kind, target, reduction, _ = inputs
    ctx.save_for_backward(logits, output[1])
    ctx.args = (kind, target, reduction)


def _backward(ctx, dloss, _dsaved_grad):
    logits, saved_grad = ctx.saved_tensors
    # The stored gradient is a constant to the backward op; its dependence on the logits is
    # accounted for by the backward op's own autograd (through the reference).
    return _gan_loss_backward_op(dloss, saved_grad.detach(), logits, *ctx.args), None, None, None, None


def _backward_setup_context(ctx, inputs, output):
    dloss, _, logits, kind, target, reduction = inputs
    ctx.save_for_backward(dloss, logits)
    ctx.args = (kind, target, reduction)


def _backward_backward(ctx, grad_dlogits):
    dloss, logits = ctx.saved_tensors
    kind, target, reduction = ctx.args
    ref = lambda x: _gan_loss_ref(x, kind, target, reduction)  # noqa: E731
    grad_dloss, grad_logits = reference_double_backward(ref, dloss, (logits,), (grad_dlogits,))
    return grad_dloss, None, grad_logits, None, None, None


_gan_loss_op.register_autograd(_backward, setup_context=_setup_context)
_gan_loss_backward_op.register_autograd(_backward_backward, setup_context=_backward_setup_context)


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------
def _check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def gan_loss(logits: Tensor, target: str, kind: str = "logistic", reduction: str = "mean", impl=None) -> Tensor:
    """GAN loss on discriminator logits of any shape ([N, 1] for StyleGAN, [N, 1, 30, 30] for PatchGAN).

    Args:
        logits: floating tensor (fp16/bf16/fp32/fp64).
        target: 'real' (D on reals), 'fake' (D on fakes) or 'gen' (G's loss on fake logits).
        kind: 'logistic' (non-saturating, StyleGAN2), 'hinge', 'wgan' or 'lsgan'; see the module table.
        reduction: 'mean' (over all elements), 'sum', or 'none' (elementwise, shaped like logits).
        impl: 'ref', 'triton' or None (see kernels/_dispatch.py).

    Returns a 0-d tensor ('mean'/'sum', accumulated in fp32 or fp64) or a tensor shaped like
    `logits`, in the logits' dtype.
    """
    check_tensor(logits, "logits")
    _check_choice(target, "target", TARGETS)
    _check_choice(kind, "kind", KINDS)
    _check_choice(reduction, "reduction", REDUCTIONS)
    impl = resolve_impl(impl, logits.device)
    if impl == "ref":
        return _gan_loss_ref(logits, kind, target, reduction)
    need_grad = logits.requires_grad and torch.is_grad_enabled()
    return _gan_loss_op(logits, kind, target, reduction, need_grad)[0]


__all__ = ["gan_loss"]
