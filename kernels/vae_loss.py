"""Fused VAE loss: reconstruction plus beta * KL(N(mu, sigma^2) || N(0, 1)) in one reduction.

    recon term, per element:  'bce_logits': softplus(r) - r * t  (= F.binary_cross_entropy_with_logits)
                              'mse':        (r - t)^2
    KL term, per latent:      -0.5 * (1 + logvar - mu^2 - exp(logvar))

    'sum':  sum of all recon terms + beta * sum of all KL terms
    'mean': the same divided by the batch size N, i.e. the per-sample loss (recon summed over the
            pixels, KL summed over the latent dims) averaged over the batch. This is the usual VAE
            convention (an ELBO per sample); it is NOT the mean over elements that F.mse_loss uses.

One kernel reads recon, target, mu and logvar once: its first programs handle blocks of the
reconstruction, the rest blocks of the latents. Each adds its block sum atomically into one
accumulator (float32; float64 for float64 inputs) and stores the gradients for recon, mu and logvar
(sigmoid(r) - t or 2(r - t); beta * mu; beta * (exp(logvar) - 1) / 2). The backward scales them
by dout / N.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._dispatch import resolve_impl
from ._loss_math import (ELEMENTWISE_BLOCK, dense_like, reference_double_backward, scale_saved_grad,
                         softplus_and_sigmoid, split_float)
from ._triton import compute_dtype, LAUNCH_OPTIONS, tl, triton
from ._validate import check_finite_number, check_same_device, check_tensor, dense

RECON_KINDS = ("bce_logits", "mse")
REDUCTIONS = ("mean", "sum")


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------
def _vae_loss_ref(recon: Tensor, target: Tensor, mu: Tensor, logvar: Tensor, recon_kind: str, beta: float,
                  reduction: str) -> Tensor:
    if recon_kind == "bce_logits":
        rec = F.binary_cross_entropy_with_logits(recon, target, reduction="sum")
    else:
        rec = F.mse_loss(recon, target, reduction="sum")
    kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum()
    total = rec + beta * kl
    return total / recon.shape[0] if reduction == "mean" else total


# ---------------------------------------------------------------------------------------------
# Triton kernel
# ---------------------------------------------------------------------------------------------
@triton.jit
def _vae_loss_fwd_kernel(recon_ptr, target_ptr, mu_ptr, logvar_ptr, g_recon_ptr, g_mu_ptr, g_logvar_ptr,
                         total_ptr, recon_numel, latent_numel, divisor, beta_hi, beta_lo,
                         BCE: tl.constexpr, STORE_GRAD: tl.constexpr, BLOCK: tl.constexpr, CDTYPE: tl.constexpr):
    pid = tl.program_id(0)
    recon_blocks = tl.cdiv(recon_numel, BLOCK)
    beta = (tl.zeros([], CDTYPE) + beta_hi) + beta_lo  # works for a Python float (interpreter) too
    if pid < recon_blocks:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < recon_numel
        r = tl.load(recon_ptr + offs, mask=mask, other=0).to(CDTYPE)
        t = tl.load(target_ptr + offs, mask=mask, other=0).to(CDTYPE)
        if BCE:
            softplus, sigmoid = softplus_and_sigmoid(r)
            loss = softplus - r * t
            grad = sigmoid - t
        else:
            d = r - t
            loss = d * d
            grad = 2.0 * d
        if STORE_GRAD:
            tl.store(g_recon_ptr + offs, grad.to(g_recon_ptr.dtype.element_ty), mask=mask)
        partial = tl.sum(tl.where(mask, loss, 0.0), axis=0)
    else:
        offs = (pid - recon_blocks).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < latent_numel
        mu = tl.load(mu_ptr + offs, mask=mask, other=0).to(CDTYPE)
        logvar = tl.load(logvar_ptr + offs, mask=mask, other=0).to(CDTYPE)
        var = tl.exp(logvar)
        kl = -0.5 * (1.0 + logvar - mu * mu - var)
        if STORE_GRAD:
            tl.store(g_mu_ptr + offs, (beta * mu).to(g_mu_ptr.dtype.element_ty), mask=mask)
            tl.store(g_logvar_ptr + offs, (0.5 * beta * (var - 1.0)).to(g_logvar_ptr.dtype.element_ty), mask=mask)
        partial = beta * tl.sum(tl.where(mask, kl, 0.0), axis=0)
    tl.atomic_add(total_ptr, partial / divisor)


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------
def _vae_loss_fwd_triton(recon, target, mu, logvar, recon_kind, beta, reduction, need_grad):
    recon = dense(recon)
    target = dense_like(target, recon)
    mu = mu.contiguous()
    logvar = logvar.contiguous()
    cdtype = torch.float64 if recon.dtype == torch.float64 else torch.float32
    total = torch.zeros((), dtype=cdtype, device=recon.device)
    if need_grad:
        g_recon, g_mu, g_logvar = torch.empty_like(recon), torch.empty_like(mu), torch.empty_like(logvar)
    else:  # three distinct placeholders: custom op outputs may not alias each other
        g_recon, g_mu, g_logvar = (recon.new_empty(0) for _ in range(3))
    blocks = triton.cdiv(recon.numel(), ELEMENTWISE_BLOCK) + triton.cdiv(mu.numel(), ELEMENTWISE_BLOCK)
    if blocks > 0:
        beta_hi, beta_lo = split_float(beta)
        divisor = recon.shape[0] if reduction == "mean" else 1
        _vae_loss_fwd_kernel[(blocks,)](
            recon, target, mu, logvar, g_recon, g_mu, g_logvar, total, recon.numel(), mu.numel(), divisor,
            beta_hi, beta_lo, BCE=recon_kind == "bce_logits", STORE_GRAD=need_grad, BLOCK=ELEMENTWISE_BLOCK,
            CDTYPE=compute_dtype(recon.dtype), **LAUNCH_OPTIONS)
    if reduction == "mean" and recon.shape[0] == 0:
        total = total / 0  # nan: the mean over no samples, as the reference (and torch's mean of nothing)
    return total.to(recon.dtype), g_recon, g_mu, g_logvar


# ---------------------------------------------------------------------------------------------
# Custom ops
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("fusegan::vae_loss", mutates_args=())
def _vae_loss_op(recon: Tensor, target: Tensor, mu: Tensor, logvar: Tensor, recon_kind: str, beta: float,
                 reduction: str, need_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _vae_loss_fwd_triton(recon, target, mu, logvar, recon_kind, beta, reduction, need_grad)


@_vae_loss_op.register_fake
def _(recon, target, mu, logvar, recon_kind, beta, reduction, need_grad):
    if not need_grad:
        return (recon.new_empty(()), *(recon.new_empty(0) for _ in range(3)))
    return (recon.new_empty(()), torch.empty_like(dense(recon)), torch.empty_like(mu.contiguous()),
            torch.empty_like(logvar.contiguous()))


@torch.library.custom_op("fusegan::vae_loss_backward", mutates_args=())
def _vae_loss_backward_op(dloss: Tensor, g_recon: Tensor, g_mu: Tensor, g_logvar: Tensor, recon: Tensor,
                          target: Tensor, mu: Tensor, logvar: Tensor, recon_kind: str, beta: float,
                          reduction: str) -> Tuple[Tensor, Tensor, Tensor]:
    divisor = recon.shape[0] if reduction == "mean" else 1
    return tuple(scale_saved_grad(g, dloss, divisor) for g in (g_recon, g_mu, g_logvar))


@_vae_loss_backward_op.register_fake
def _(dloss, g_recon, g_mu, g_logvar, recon, target, mu, logvar, recon_kind, beta, reduction):
    return torch.empty_like(g_recon), torch.empty_like(g_mu), torch.empty_like(g_logvar)


def _setup_context(ctx, inputs, output):
    recon, target, mu, logvar, recon_kind, beta, reduction, _ = inputs
    ctx.save_for_backward(recon, target, mu, logvar, *output[1:])
    ctx.args = (recon_kind, beta, reduction)


def _backward(ctx, dloss, *_grads_of_saved_grads):
    recon, target, mu, logvar, g_recon, g_mu, g_logvar = ctx.saved_tensors
    recon_kind, beta, reduction = ctx.args
    d_recon, d_mu, d_logvar = _vae_loss_backward_op(dloss, g_recon.detach(), g_mu.detach(), g_logvar.detach(),
                                                    recon, target, mu, logvar, *ctx.args)
    d_target = None
    if ctx.needs_input_grad[1]:  # rare (targets are data): d/dt is -r (bce) or -2(r - t) (mse)
        scale = dloss / (recon.shape[0] if reduction == "mean" else 1)
        d_target = scale * (-recon if recon_kind == "bce_logits" else -2 * (recon - target))
    return d_recon, d_target, d_mu, d_logvar, None, None, None, None


def _backward_setup_context(ctx, inputs, output):
    dloss, _, _, _, recon, target, mu, logvar, recon_kind, beta, reduction = inputs
    ctx.save_for_backward(dloss, recon, target, mu, logvar)
    ctx.args = (recon_kind, beta, reduction)


def _backward_backward(ctx, gg_recon, gg_mu, gg_logvar):
    dloss, recon, target, mu, logvar = ctx.saved_tensors
    ref = lambda r, m, lv: _vae_loss_ref(r, target, m, lv, *ctx.args)  # noqa: E731
    grad_dloss, grad_recon, grad_mu, grad_logvar = reference_double_backward(
        ref, dloss, (recon, mu, logvar), (gg_recon, gg_mu, gg_logvar))
    # Second derivatives through the target (d2/dr dt = -1 or -2) are not provided.
    return grad_dloss, None, None, None, grad_recon, None, grad_mu, grad_logvar, None, None, None


_vae_loss_op.register_autograd(_backward, setup_context=_setup_context)
_vae_loss_backward_op.register_autograd(_backward_backward, setup_context=_backward_setup_context)


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------
def vae_loss(recon: Tensor, target: Tensor, mu: Tensor, logvar: Tensor, recon_kind: str = "bce_logits",
             beta: float = 1.0, reduction: str = "mean", impl=None) -> Tensor:
    """Reconstruction loss plus beta * KL(N(mu, exp(logvar)) || N(0, 1)); see the module docstring.

    Args:
        recon: [N, ...] decoder output (logits for 'bce_logits').
        target: same shape and dtype as recon ('bce_logits' wants values in [0, 1]).
        mu, logvar: [N, latent_dim...], same shape as each other and dtype as recon.
        recon_kind: 'bce_logits' or 'mse'.
        beta: KL weight (beta-VAE); any finite number.
        reduction: 'mean' (summed per sample, averaged over the batch N) or 'sum' (over the batch).
    Returns a 0-d tensor in recon's dtype (accumulated in float32, float64 for float64).
    """
    check_tensor(recon, "recon", min_ndim=1)
    check_tensor(target, "target")
    check_tensor(mu, "mu", min_ndim=1)
    check_tensor(logvar, "logvar")
    if target.shape != recon.shape:
        raise ValueError(f"target must have recon's shape {tuple(recon.shape)}, got {tuple(target.shape)}")
    if logvar.shape != mu.shape:
        raise ValueError(f"logvar must have mu's shape {tuple(mu.shape)}, got {tuple(logvar.shape)}")
    if mu.shape[0] != recon.shape[0]:
        raise ValueError(f"mu's batch size {mu.shape[0]} does not match recon's {recon.shape[0]}")
    for name, t in (("target", target), ("mu", mu), ("logvar", logvar)):
        if t.dtype != recon.dtype:
            raise TypeError(f"{name} must have recon's dtype {recon.dtype}, got {t.dtype}")
        check_same_device(recon, "recon", t, name)
    if not isinstance(recon_kind, str) or recon_kind not in RECON_KINDS:
        raise ValueError(f"recon_kind must be one of {RECON_KINDS}, got {recon_kind!r}")
    beta = check_finite_number(beta, "beta", allow_none=False)
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    impl = resolve_impl(impl, recon.device)
    if impl == "ref":
        return _vae_loss_ref(recon, target, mu, logvar, recon_kind, beta, reduction)
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (recon, target, mu, logvar))
    return _vae_loss_op(recon, target, mu, logvar, recon_kind, beta, reduction, need_grad)[0]


__all__ = ["vae_loss"]
