"""The `fusegan::cna_*` custom ops of conv2d_norm_act and their autograd.

Ops (each a Triton launcher; see _conv_norm_act_triton.py for the kernels):
  cna_conv(x, w, bias)          -> (y, mean, var)  implicit-GEMM conv (normal or transposed), with
                                   bias + statistics (for the norm) or bias + activation in its epilogue
  cna_wgrad(L, S)               -> dW              the weight gradient of either conv direction
  cna_norm_act(y, mean, rstd, gamma, beta) -> out  normalize, affine, activation (one elementwise pass)
  cna_norm_act_bwd(g, y, ...)   -> (dy, dgamma, dbeta)  activation grad + the norm's reductions
                                   (sum dz, sum dz*xhat) in one pass, then the normalization backward
  cna_act_grad(g, out)          -> g * act'(.)     the activation's gradient when there is no norm

Gradients of every order: cna_conv and cna_wgrad are partial derivatives of one trilinear form, so
each one's backward is made of the other two (on the Triton kernels, at any order). The backward of
the two elementwise backward ops (cna_norm_act_bwd, cna_act_grad), needed only for double backward
(WGAN-GP, R1), differentiates their plain-PyTorch reference with autograd.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _conv_norm_act_triton as K
from ._triton import torch_compute_dtype


# ----------------------------------------------------------------------------------------------
# Plain-PyTorch math used for second-order gradients
# ----------------------------------------------------------------------------------------------
def apply_act_ref(z, act_code, alpha):
    if act_code == 1:
        return F.relu(z)
    if act_code == 2:
        return F.leaky_relu(z, alpha)
    if act_code == 3:
        return torch.tanh(z)
    if act_code == 4:
        return torch.sigmoid(z)
    return z


def _act_grad_ref(g, out, act_code, alpha):
    """g * act'(z) written with the activation's output, as the Triton kernel computes it."""
    if act_code == 1:
        return g * (out > 0).to(g.dtype)
    if act_code == 2:
        return g * torch.where(out > 0, 1.0, alpha).to(g.dtype)
    if act_code == 3:
        return g * (1 - out * out)
    if act_code == 4:
        return g * out * (1 - out)
    return g


def _norm_act_train_ref(y, gamma, beta, eps, instance, act_code, alpha):
    """act(gamma * (y - mean(y)) / sqrt(var(y) + eps) + beta) with batch (or instance) statistics."""
    dims = (2, 3) if instance else (0, 2, 3)
    var, mean = torch.var_mean(y, dim=dims, unbiased=False, keepdim=True)
    z = (y - mean) * torch.rsqrt(var + eps)
    if gamma is not None:
        z = z * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
    return apply_act_ref(z, act_code, alpha)


def _norm_act_bwd_ref(g, y, gamma, beta, eps, instance, act_code, alpha):
    leaves = [t for t in (y, gamma, beta) if t is not None]
    out = _norm_act_train_ref(y, gamma, beta, eps, instance, act_code, alpha)
    grads = torch.autograd.grad(out, leaves, g, create_graph=True)
    dy = grads[0]
    dgamma, dbeta = (grads[1], grads[2]) if gamma is not None else (None, None)
    return dy, dgamma, dbeta


def _vjp_of_reference(fn, inputs, grad_outputs):
    """Vector-Jacobian product of fn(*inputs) (a plain-PyTorch function) that stays differentiable.

    Inputs already in the autograd graph enter through a view of each, so the result carries gradients of
    any order while the vjp still treats the inputs as independent (one may depend on another, e.g. an
    upstream gradient computed from the output it multiplies: differentiating through that dependency here
    would count it twice, and free its graph); the others become fresh leaves (their gradient is still
    returned)."""
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        prepared = [None if t is None else (t.view_as(t) if t.requires_grad else t.detach().requires_grad_())
                    for t in inputs]
        outs = fn(*prepared)
    if isinstance(outs, Tensor):
        outs = (outs,)
    pairs = [(o, g) for o, g in zip(outs, grad_outputs) if o is not None and g is not None]
    wrt = [p for p in prepared if p is not None]
    if not pairs:
        grads = [None] * len(wrt)
    else:
        grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                    create_graph=create, allow_unused=True)
    it = iter(grads)
    return [None if p is None else next(it) for p in prepared]


# ----------------------------------------------------------------------------------------------
# cna_conv
# ----------------------------------------------------------------------------------------------
def _geom(stride, padding, dilation):
    return (tuple(stride), tuple(padding), tuple(dilation))


def _stats_shape(x, c_out, stats):
    if stats == K.STATS_INSTANCE:
        return (x.shape[0], c_out)
    if stats == K.STATS_BATCH:
        return (c_out,)
    return (0,)


@torch.library.custom_op("fusegan::cna_conv", mutates_args=())
def _cna_conv_op(x: Tensor, w: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                 dilation: List[int], transposed: bool, reflect: bool, out_h: int, out_w: int,
                 act: int, alpha: float, stats: int, save_pre: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, mean, var, z): mean/var empty without stats; z, the pre-activation, empty without save_pre (which
    the backward of a LeakyReLU epilogue reads in place of y: see K.conv_fwd)."""
    y, psum, pm2, pcnt, group, z = K.conv_fwd(x, w, bias, _geom(stride, padding, dilation), transposed,
                                              reflect, (out_h, out_w), act, alpha, stats, save_pre)
    if stats == K.STATS_NONE:
        empty = torch.empty((0,), dtype=torch_compute_dtype(x.dtype), device=x.device)
        return y, empty, empty.clone(), z
    mean, var = K.merge_partial_stats(psum, pm2, pcnt, group, x.shape[0])
    return y, mean, var, z


@_cna_conv_op.register_fake
def _(x, w, bias, stride, padding, dilation, transposed, reflect, out_h, out_w, act, alpha, stats, save_pre=False):
    c_out = w.shape[1] if transposed else w.shape[0]
    y = K.conv_out_empty((x.shape[0], c_out, out_h, out_w), x, w)
    shape = _stats_shape(x, c_out, stats)
    sdt = torch_compute_dtype(x.dtype)
    z = torch.empty_like(y) if save_pre else y.new_empty(0)
    return y, x.new_empty(shape, dtype=sdt), x.new_empty(shape, dtype=sdt), z


def conv_small_from_large(L, w, geom, reflect, out_hw):
    """S = conv(L, w) (a normal conv; w as [C_S, C_L, k, k])."""
    (s, p, d) = geom
    return _cna_conv_op(L, w, None, list(s), list(p), list(d), False, reflect, out_hw[0], out_hw[1], 0, 0.0,
                        K.STATS_NONE)[0]


def conv_large_from_small(S, w, geom, reflect, L_hw):
    """L = conv_transpose(S, w): the adjoint of conv_small_from_large, reflect padding included."""
    (s, p, d) = geom
    if not reflect:
        return _cna_conv_op(S, w, None, list(s), list(p), list(d), True, False, L_hw[0], L_hw[1], 0, 0.0,
                            K.STATS_NONE)[0]
    # The adjoint of reflect padding folds the padded border back in: compute on the padded grid,
    # then aten's reflection_pad2d_backward (whose own derivative is reflection_pad2d).
    H, W = L_hw
    padded = _cna_conv_op(S, w, None, list(s), [0, 0], list(d), True, False, H + 2 * p[0], W + 2 * p[1], 0, 0.0,
                          K.STATS_NONE)[0]
    shape_ref = padded.new_empty((S.shape[0], w.shape[1], H, W))
    return torch.ops.aten.reflection_pad2d_backward(padded, shape_ref, [p[1], p[1], p[0], p[0]])


def _cna_conv_setup(ctx, inputs, output):
    x, w, bias, stride, padding, dilation, transposed, reflect, out_h, out_w, act, alpha, stats, *save_pre = inputs
    y, mean, var, z = output
    ctx.mark_non_differentiable(mean, var)
    # z is a differentiable output (z = conv + bias). Output gradients nobody produced stay None instead of zero
    # tensors of the output's size (z's, in every backward); the backward puts the zeros back where all are None.
    ctx.set_materialize_grads(False)
    ctx.cfg = (_geom(stride, padding, dilation), transposed, reflect, act, alpha)
    ctx.has_bias = bias is not None
    ctx.pre_saved = z.numel() > 0
    # The activation's derivative from its output y, or from the pre-activation z where it was saved (the same
    # values for relu/lrelu, which need only the sign): then y stays free for in-place use, as after torch's
    # LeakyReLU, which saves its input.
    ctx.save_for_backward(x, w, None if act == 0 else z if z.numel() else y)


def _cna_conv_backward(ctx, gy, _gmean, _gvar, gz_saved):
    # mean/var are non-differentiable here: cna_norm_act's backward already accounts for them.
    x, w, y = ctx.saved_tensors
    geom, transposed, reflect, act, alpha = ctx.cfg
    gz = gy if act == 0 or gy is None else _cna_act_grad_op(gy, y, act, alpha)
    if gz_saved is not None and ctx.pre_saved:  # only a double backward through the saved pre-activation
        gz = gz_saved if gz is None else gz + gz_saved
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    if gz is None:
        # No gradient reached y or z (a double backward through piecewise-linear activations, whose derivative
        # does not depend on their input): zeros, as the materialized zero gradients gave, so the inputs stay
        # in the graph as they do for torch's activations.
        c_out = w.shape[1] if transposed else w.shape[0]
        return (torch.zeros_like(x) if need_x else None, torch.zeros_like(w) if need_w else None,
                w.new_zeros(c_out) if need_b and ctx.has_bias else None, *([None] * 11))
    gx = gw = gb = None
    if transposed:  # x is the small side S, the output the large side L
        if need_x:
            gx = conv_small_from_large(gz, w, geom, False, x.shape[2:])
        if need_w:
            gw = _cna_wgrad_op(gz, x, *map(list, geom), False, w.shape[2], w.shape[3])
    else:
        if need_x:
            gx = conv_large_from_small(gz, w, geom, reflect, x.shape[2:])
        if need_w:
            gw = _cna_wgrad_op(x, gz, *map(list, geom), reflect, w.shape[2], w.shape[3])
    if need_b and ctx.has_bias:
        gb = gz.sum((0, 2, 3))
    return gx, gw, gb, None, None, None, None, None, None, None, None, None, None, None


_cna_conv_op.register_autograd(_cna_conv_backward, setup_context=_cna_conv_setup)


# ----------------------------------------------------------------------------------------------
# cna_wgrad: W[a, b, kh, kw] = sum S[n, a, o] L[n, b, tap(o, k)]
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("fusegan::cna_wgrad", mutates_args=())
def _cna_wgrad_op(L: Tensor, S: Tensor, stride: List[int], padding: List[int], dilation: List[int],
                  reflect: bool, kh: int, kw: int) -> Tensor:
    return K.conv_wgrad(L, S, _geom(stride, padding, dilation), reflect, (kh, kw), L.dtype)


@_cna_wgrad_op.register_fake
def _(L, S, stride, padding, dilation, reflect, kh, kw):
    return L.new_empty((S.shape[1], L.shape[1], kh, kw))


def _cna_wgrad_setup(ctx, inputs, output):
    L, S, stride, padding, dilation, reflect, kh, kw = inputs
    ctx.cfg = (_geom(stride, padding, dilation), reflect)
    ctx.save_for_backward(L, S)


def _cna_wgrad_backward(ctx, gW):
    L, S = ctx.saved_tensors
    geom, reflect = ctx.cfg
    gW = gW.to(L.dtype)
    gL = conv_large_from_small(S, gW, geom, reflect, L.shape[2:]) if ctx.needs_input_grad[0] else None
    gS = conv_small_from_large(L, gW, geom, reflect, S.shape[2:]) if ctx.needs_input_grad[1] else None
    return gL, gS, None, None, None, None, None, None


_cna_wgrad_op.register_autograd(_cna_wgrad_backward, setup_context=_cna_wgrad_setup)


# ----------------------------------------------------------------------------------------------
# cna_norm_act and its fused backward
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("fusegan::cna_norm_act", mutates_args=())
def _cna_norm_act_op(y: Tensor, mean: Tensor, rstd: Tensor, gamma: Optional[Tensor], beta: Optional[Tensor],
                     eps: float, instance: bool, act: int, alpha: float) -> Tensor:
    return K.norm_act_fwd(y, mean, rstd, gamma, beta, instance, act, alpha)


@_cna_norm_act_op.register_fake
def _(y, mean, rstd, gamma, beta, eps, instance, act, alpha):
    return K._out_like(y.shape, y)


def _cna_norm_act_setup(ctx, inputs, output):
    y, mean, rstd, gamma, beta, eps, instance, act, alpha = inputs
    ctx.cfg = (eps, instance, act, alpha)
    ctx.save_for_backward(y, mean, rstd, gamma, beta)


def _cna_norm_act_backward(ctx, g):
    # mean and rstd are y's own statistics (the op is only used that way), so the backward is the
    # full training-mode normalization backward and returns nothing for them.
    y, mean, rstd, gamma, beta = ctx.saved_tensors
    eps, instance, act, alpha = ctx.cfg
    dy, dgamma, dbeta = _cna_norm_act_bwd_op(g, y, mean, rstd, gamma, beta, eps, instance, act, alpha)
    if gamma is None:
        dgamma = dbeta = None
    return dy, None, None, dgamma, dbeta, None, None, None, None


_cna_norm_act_op.register_autograd(_cna_norm_act_backward, setup_context=_cna_norm_act_setup)


@torch.library.custom_op("fusegan::cna_norm_act_bwd", mutates_args=())
def _cna_norm_act_bwd_op(g: Tensor, y: Tensor, mean: Tensor, rstd: Tensor, gamma: Optional[Tensor],
                         beta: Optional[Tensor], eps: float, instance: bool, act: int,
                         alpha: float) -> Tuple[Tensor, Tensor, Tensor]:
    dy, sdz, sdzx = K.norm_act_bwd(g, y, mean, rstd, gamma, beta, instance, act, alpha)
    if instance:
        sdz, sdzx = sdz.sum(0), sdzx.sum(0)
    pdtype = gamma.dtype if gamma is not None else y.dtype
    return dy, sdzx.to(pdtype), sdz.to(pdtype)


@_cna_norm_act_bwd_op.register_fake
def _(g, y, mean, rstd, gamma, beta, eps, instance, act, alpha):
    pdtype = gamma.dtype if gamma is not None else y.dtype
    c = y.shape[1]
    return K._out_like(y.shape, y), y.new_empty((c,), dtype=pdtype), y.new_empty((c,), dtype=pdtype)


def _cna_norm_act_bwd_setup(ctx, inputs, output):
    g, y, mean, rstd, gamma, beta, eps, instance, act, alpha = inputs
    ctx.cfg = (eps, instance, act, alpha)
    ctx.save_for_backward(g, y, gamma, beta)


def _cna_norm_act_bwd_backward(ctx, gdy, gdgamma, gdbeta):
    g, y, gamma, beta = ctx.saved_tensors
    eps, instance, act, alpha = ctx.cfg
    if gamma is None:
        gdgamma = gdbeta = None

    def fn(g_, y_, gamma_, beta_):
        return _norm_act_bwd_ref(g_, y_, gamma_, beta_, eps, instance, act, alpha)

    gg, gy, ggamma, gbeta = _vjp_of_reference(fn, [g, y, gamma, beta], [gdy, gdgamma, gdbeta])
    return gg, gy, None, None, ggamma, gbeta, None, None, None, None


_cna_norm_act_bwd_op.register_autograd(_cna_norm_act_bwd_backward, setup_context=_cna_norm_act_bwd_setup)


# ----------------------------------------------------------------------------------------------
# cna_act_grad
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("fusegan::cna_act_grad", mutates_args=())
def _cna_act_grad_op(g: Tensor, out: Tensor, act: int, alpha: float) -> Tensor:
    return K.act_grad(g, out, act, alpha)


@_cna_act_grad_op.register_fake
def _(g, out, act, alpha):
    return torch.empty_like(out)


def _cna_act_grad_setup(ctx, inputs, output):
    g, out, act, alpha = inputs
    ctx.cfg = (act, alpha)
    ctx.save_for_backward(g, out)


def _cna_act_grad_backward(ctx, gdz):
    g, out = ctx.saved_tensors
    act, alpha = ctx.cfg
    gg, gout = _vjp_of_reference(lambda g_, o_: _act_grad_ref(g_, o_, act, alpha), [g, out], [gdz])
    return gg, gout, None, None


_cna_act_grad_op.register_autograd(_cna_act_grad_backward, setup_context=_cna_act_grad_setup)


# ----------------------------------------------------------------------------------------------
# The whole layer on the Triton path
# ----------------------------------------------------------------------------------------------
def conv_norm_act_triton(x, weight, bias, geom, transposed, reflect, out_hw, norm, norm_weight, norm_bias,
                         running_mean, running_var, use_batch_stats, momentum, eps, act_code, alpha):
    s, p, d = geom
    # The kernels read bias, gamma and beta at unit stride: strided or expanded (stride-0) vectors are copied.
    bias, norm_weight, norm_bias = (None if t is None else t.contiguous() for t in (bias, norm_weight, norm_bias))
    if norm is not None and not use_batch_stats:
        # Inference with running statistics: fold them into the conv, then conv + bias + act is one kernel.
        weight, bias = fold_norm_into_conv(weight, bias, norm_weight, norm_bias, running_mean, running_var, eps,
                                           transposed)
        norm = None
    if norm is None:
        # LeakyReLU: torch's saves its input, so its output may be changed in place before backward; the
        # backward then reads the pre-activation, stored by the same epilogue (only when a gradient will flow).
        save_pre = act_code == K.ACT_CODES["lrelu"] and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, weight, bias))
        return _cna_conv_op(x, weight, bias, list(s), list(p), list(d), transposed, reflect, out_hw[0], out_hw[1],
                            act_code, alpha, K.STATS_NONE, save_pre)[0]
    instance = norm == "instance"
    stats = K.STATS_INSTANCE if instance else K.STATS_BATCH
    y, mean, var, _ = _cna_conv_op(x, weight, bias, list(s), list(p), list(d), transposed, reflect, out_hw[0],
                                out_hw[1], 0, 0.0, stats)
    if running_mean is not None:
        update_running_stats(running_mean, running_var, mean, var, momentum, instance,
                             y.shape[0] * out_hw[0] * out_hw[1] if not instance else out_hw[0] * out_hw[1])
    rstd = torch.rsqrt(var + eps)
    return _cna_norm_act_op(y, mean, rstd, norm_weight, norm_bias, float(eps), instance, act_code, alpha)


def fold_norm_into_conv(weight, bias, gamma, beta, running_mean, running_var, eps, transposed):
    """Weights and bias of the conv that equals conv followed by an inference-mode normalization."""
    cdt = torch_compute_dtype(weight.dtype)
    scale = torch.rsqrt(running_var.to(cdt) + eps)
    if gamma is not None:
        scale = scale * gamma.to(cdt)
    shift = -running_mean.to(cdt) * scale
    if bias is not None:
        shift = shift + bias.to(cdt) * scale
    if beta is not None:
        shift = shift + beta.to(cdt)
    view = (1, -1, 1, 1) if transposed else (-1, 1, 1, 1)
    return (weight.to(cdt) * scale.view(view)).to(weight.dtype), shift.to(weight.dtype)


@torch.no_grad()
def update_running_stats(running_mean, running_var, mean, var, momentum, instance, count):
    """What BatchNorm / InstanceNorm do in training: unbiased variance, exponential moving average."""
    if instance:  # F.instance_norm averages the per-instance updates over the batch
        mean, var = mean.mean(0), var.mean(0)
    unbiased = var * (count / max(count - 1, 1))
    running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
