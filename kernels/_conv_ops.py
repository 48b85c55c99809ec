"""The `fusegan::` custom ops around the implicit-GEMM kernels, and their autograd.

Two ops, closed under differentiation (so gradients of any order run on the same two fused kernels):

* `fusegan::conv2d_fused(x, w, in_scale, out_scale, noise, bias, ...)` =
      clamp(gain * act(out_scale * conv(x * in_scale, w) + noise + bias))
  with conv a strided/padded conv2d or (transposed=True) its adjoint. Forward is ONE kernel launch.
* `fusegan::conv2d_wgrad(a, b, a_scale, b_scale, ...)`[i, j, k] = sum_{n,p} a_scale a[n,i,p] * b_scale b[n,j,p*s-pad+k]
  (the weight gradient; one kernel, a reduction over the batch).

Backward of conv2d_fused (gy), three kernels in training:
  gpre, gout_scale = sum_p gpre * conv, gbias = sum gpre, gnoise = sum_o gpre: ONE pass,
      `fusegan::conv_epilogue_grad` (the activation/gain/clamp gradient with pre rebuilt from the conv output the
      forward saved, or recomputed once);
  gx = in_scale * conv^T(out_scale * gpre, w) and gin_scale = sum_p x * conv^T(...): ONE GEMM, the adjoint conv
      (conv2d_fused with the transposed flag flipped) whose epilogue also reduces the style gradient;
  gw: ONE conv2d_wgrad.
Backward of conv2d_wgrad: two conv2d_fused calls. Everything in both backwards is a fusegan op or a plain
differentiable torch op, so the backward is itself differentiable (gradgradcheck, path-length regularization).
"""
import contextlib
from typing import Optional

import torch
from torch import Tensor

from . import _implicit_gemm as _ig
from ._triton import torch_compute_dtype
from ._conv_epilogue_grad import conv_epilogue_grad, noise_is_channel_broadcast
from .bias_act import is_nonlinear

_weight_gradients_disabled = False


@contextlib.contextmanager
def no_weight_gradients(disable=True):
    """Like NVIDIA's conv2d_gradfix.no_weight_gradients: while active, backward passes computed by fusegan's conv
    ops skip the weight gradient (it is read when the backward runs, as in NVIDIA's). Used while regularizing."""
    global _weight_gradients_disabled
    old = _weight_gradients_disabled
    if disable:
        _weight_gradients_disabled = True
    try:
        yield
    finally:
        _weight_gradients_disabled = old


def weight_gradients_disabled() -> bool:
    return _weight_gradients_disabled


# ---------------------------------------------------------------------------------------------------------------
# fusegan::conv2d_fused

@torch.library.custom_op("fusegan::conv2d_fused", mutates_args=())
def _conv2d_fused_op(x: Tensor, w: Tensor, in_scale: Optional[Tensor], out_scale: Optional[Tensor],
                     noise: Optional[Tensor], bias: Optional[Tensor], aux: Optional[Tensor], stride: int,
                     pad_y: int, pad_x: int, out_h: int, out_w: int, transposed: bool, act: str, alpha: float,
                     gain: float, clamp: Optional[float], save_conv: bool) -> tuple[Tensor, Tensor, Tensor]:
    if noise is not None:
        noise = noise.expand(x.shape[0], w.shape[0], out_h, out_w)
    return _ig.conv_fwd_triton(x, w, in_scale, out_scale, noise, bias, aux, stride=stride, pad_y=pad_y,
                               pad_x=pad_x, out_h=out_h, out_w=out_w, transposed=transposed, act=act, alpha=alpha,
                               gain=gain, clamp=clamp, save_conv=save_conv)


@_conv2d_fused_op.register_fake
def _(x, w, in_scale, out_scale, noise, bias, aux, stride, pad_y, pad_x, out_h, out_w, transposed, act, alpha, gain,
      clamp, save_conv):
    y = torch.empty((x.shape[0], w.shape[0], out_h, out_w), dtype=x.dtype, device=x.device,
                    memory_format=_ig.memory_format_of(x))
    dot = x.new_empty((x.shape[0], w.shape[0]) if aux is not None else (0,), dtype=torch_compute_dtype(x.dtype))
    return y, (torch.empty_like(y) if save_conv else y.new_empty(0)), dot


def _fused_args(x, w, in_scale, out_scale, noise, bias, aux, stride, pad_y, pad_x, out_h, out_w, transposed, act,
                alpha, gain, clamp, save_conv):
    return (x, w, in_scale, out_scale, noise, bias, aux, int(stride), int(pad_y), int(pad_x), int(out_h),
            int(out_w), bool(transposed), act, float(alpha), float(gain), None if clamp is None else float(clamp),
            bool(save_conv))


def conv2d_fused(x, w, in_scale=None, out_scale=None, noise=None, bias=None, *, stride=1, pad_y=0, pad_x=0,
                 out_h, out_w, transposed=False, act="linear", alpha=0.0, gain=1.0, clamp=None, save_conv=False):
    """`w` is the logical [O, C, KH, KW] weight of this conv (a transposed view is fine: no copy).

    Returns y. With save_conv=True the kernel also stores the raw conv output (one extra write) and keeps it for
    the backward, which then needs no recomputation GEMM (worth it in training when the epilogue is nonlinear
    or out_scale needs a gradient)."""
    return _conv2d_fused_op(*_fused_args(x, w, in_scale, out_scale, noise, bias, None, stride, pad_y, pad_x, out_h,
                                         out_w, transposed, act, alpha, gain, clamp, save_conv))[0]


def conv2d_fused_dot(x, w, aux, in_scale=None, out_scale=None, *, stride=1, pad_y=0, pad_x=0, out_h, out_w,
                     transposed=False):
    """(y, dot) with y = out_scale * conv(x * in_scale, w) as `conv2d_fused`, and, from the same kernel's epilogue,
    dot[n, o] = sum over pixels of aux[n, o] * conv(x * in_scale, w)[n, o] (fp32; fp64 for fp64 inputs).
    One GEMM gives a backward both the input gradient and the per-sample channel-scale (style) gradient."""
    y, _, dot = _conv2d_fused_op(*_fused_args(x, w, in_scale, out_scale, None, None, aux, stride, pad_y, pad_x,
                                              out_h, out_w, transposed, "linear", 0.0, 1.0, None, False))
    return y, dot


def _linear_part_backward(x, w, in_scale, out_scale, gz, geo, needs, g_conv=None):
    """Gradients for x, w and in_scale of z = out_scale * conv(x * in_scale, w), given dL/dz = gz (and
    dL/dconv = g_conv when the raw conv output is itself used, as in double backward).
    `geo` = (stride, pad_y, pad_x, transposed); `needs` = (x, w, in_scale). Built only from fusegan ops and
    differentiable torch ops. (out_scale's gradient comes from `conv_epilogue_grad`.)"""
    stride, pad_y, pad_x, transposed = geo
    need_x, need_w, need_is = needs
    H, W = x.shape[2], x.shape[3]
    gx = gw = gis = None
    if g_conv is not None:  # both gradients reach the raw conv: combine them, then no out_scale in the GEMMs
        gz = (gz if out_scale is None else gz * out_scale.to(gz.dtype)[:, :, None, None]) + g_conv.to(gz.dtype)
        out_scale = None
    adj = dict(stride=stride, pad_y=pad_y, pad_x=pad_x, out_h=H, out_w=W, transposed=not transposed)
    if need_is:  # ONE adjoint GEMM: gx = in_scale * u from its epilogue, and the style gradient sum_p x * u
        gx, gis = conv2d_fused_dot(gz, w.transpose(0, 1), x, out_scale, in_scale, **adj)
        gis = gis.to(in_scale.dtype)
        if not need_x:
            gx = None
    elif need_x:
        gx = conv2d_fused(gz, w.transpose(0, 1), out_scale, in_scale, **adj)
    if need_w and not _weight_gradients_disabled:
        kh, kw = w.shape[2], w.shape[3]
        if transposed:  # gw[o, c] = sum x[c, q] gz[o, q*s - pad + k]
            gw = conv2d_wgrad(x, gz, in_scale, out_scale, stride=stride, pad_y=pad_y, pad_x=pad_x, kh=kh, kw=kw)
            gw = gw.transpose(0, 1)
        else:  # gw[o, c] = sum gz[o, p] x[c, p*s - pad + k]
            gw = conv2d_wgrad(gz, x, out_scale, in_scale, stride=stride, pad_y=pad_y, pad_x=pad_x, kh=kh, kw=kw)
        gw = gw.to(w.dtype)
    return gx, gw, gis


def _fused_setup_context(ctx, inputs, output):
    (x, w, in_scale, out_scale, noise, bias, aux, stride, pad_y, pad_x, out_h, out_w, transposed, act, alpha, gain,
     clamp, save_conv) = inputs
    ctx.set_materialize_grads(False)  # an unused output (the saved conv) gets None, not a tensor of zeros
    ctx.geo = (stride, pad_y, pad_x, transposed)
    ctx.epi = (act, alpha, gain, clamp)
    ctx.noise_shape = None if noise is None else noise.shape
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.noise_dtype = None if noise is None else noise.dtype
    ctx.out_hw = (out_h, out_w)
    ctx.save_for_backward(x, w, in_scale, out_scale, noise, bias, aux, output[1] if save_conv else None)


def _fused_backward(ctx, gy, g_conv, g_dot):
    x, w, in_scale, out_scale, noise, bias, aux, conv = ctx.saved_tensors
    if conv is None or g_conv is None or g_conv.numel() == 0:  # (traced backwards may pass zeros / empties)
        g_conv = None
    if aux is None or g_dot is None or g_dot.numel() == 0:
        g_dot = None
    if gy is None:  # only the saved conv output / the dot product was used
        gy = torch.zeros((x.shape[0], w.shape[0], *ctx.out_hw), dtype=x.dtype, device=x.device)
    act, alpha, gain, clamp = ctx.epi
    stride, pad_y, pad_x, transposed = ctx.geo
    nx = ctx.needs_input_grad
    nonlinear = is_nonlinear(act, clamp)
    need_aux = g_dot is not None and nx[6]
    if conv is None and (nonlinear or nx[3] or need_aux):
        # The forward did not keep the conv output (save_conv=False), so it is recomputed once here for the
        # activation's and the demodulation's gradients: one GEMM, differentiable like the rest.
        conv = conv2d_fused(x, w, in_scale, None, stride=stride, pad_y=pad_y, pad_x=pad_x, out_h=ctx.out_hw[0],
                            out_w=ctx.out_hw[1], transposed=transposed)
    gnoise = gbias = gos = None
    noise_in_kernel = nx[4] and noise_is_channel_broadcast(ctx.noise_shape)
    if nonlinear or nx[3] or nx[5] or noise_in_kernel:
        # ONE pass (fusegan::conv_epilogue_grad): the activation/clamp gradient with pre rebuilt in registers,
        # and, from the same tiles, the demodulation, bias and noise gradients. Differentiable, for double
        # backward.
        gpre, gos, gbias, gnoise = conv_epilogue_grad(gy, conv if (nonlinear or nx[3]) else None, out_scale, noise,
                                                      bias, act=act, alpha=alpha, gain=gain, clamp=clamp,
                                                      need_scale=nx[3], need_bias=nx[5], need_noise=noise_in_kernel)
        gos = gos.to(out_scale.dtype) if nx[3] else None
        gbias = gbias.to(ctx.bias_dtype) if nx[5] else None
    else:
        gpre = gy if gain == 1 else gy * gain
    if noise_in_kernel:
        gnoise = gnoise.sum_to_size(ctx.noise_shape).to(ctx.noise_dtype)  # [N, 1, H, W] -> the noise's own shape
    elif not nx[4]:
        gnoise = None
    else:  # noise with its own channels: its gradient is gpre, summed over the broadcast dims only
        gnoise = gpre.sum_to_size(ctx.noise_shape).to(ctx.noise_dtype)
    gaux = None
    if g_dot is not None:  # dot = sum_p aux * conv: its gradient reaches the raw conv output and aux
        g_dot = g_dot[:, :, None, None]
        term = (g_dot * aux).to(gpre.dtype)
        g_conv = term if g_conv is None else g_conv + term
        if need_aux:
            gaux = (g_dot * conv).to(aux.dtype)
    gx, gw, gis = _linear_part_backward(x, w, in_scale, out_scale, gpre, ctx.geo, nx[:3], g_conv)
    return gx, gw, gis, gos, gnoise, gbias, gaux, None, None, None, None, None, None, None, None, None, None, None


_conv2d_fused_op.register_autograd(_fused_backward, setup_context=_fused_setup_context)


# ---------------------------------------------------------------------------------------------------------------
# fusegan::conv2d_wgrad

@torch.library.custom_op("fusegan::conv2d_wgrad", mutates_args=())
def _conv2d_wgrad_op(a: Tensor, b: Tensor, a_scale: Optional[Tensor], b_scale: Optional[Tensor], stride: int,
                     pad_y: int, pad_x: int, kh: int, kw: int) -> Tensor:
    return _ig.conv_wgrad_triton(a, b, a_scale, b_scale, stride=stride, pad_y=pad_y, pad_x=pad_x, kh=kh, kw=kw)


@_conv2d_wgrad_op.register_fake
def _(a, b, a_scale, b_scale, stride, pad_y, pad_x, kh, kw):
    return a.new_empty((a.shape[1], b.shape[1], kh, kw))


def conv2d_wgrad(a, b, a_scale=None, b_scale=None, *, stride=1, pad_y=0, pad_x=0, kh, kw):
    return _conv2d_wgrad_op(a, b, a_scale, b_scale, int(stride), int(pad_y), int(pad_x), int(kh), int(kw))


def _wgrad_setup_context(ctx, inputs, output):
    a, b, a_scale, b_scale, stride, pad_y, pad_x, kh, kw = inputs
    ctx.geo = (stride, pad_y, pad_x)
    ctx.save_for_backward(a, b, a_scale, b_scale)


def _wgrad_backward(ctx, gg):
    a, b, a_scale, b_scale = ctx.saved_tensors
    stride, pad_y, pad_x = ctx.geo
    need_a, need_b, need_as, need_bs = ctx.needs_input_grad[:4]
    gg = gg.to(a.dtype)
    geo = dict(stride=stride, pad_y=pad_y, pad_x=pad_x)
    ga = gb = gas = gbs = None
    # g = sum a_scale a * conv-window(b_scale b): wrt a it is a conv of b with gg, wrt b a transposed conv of a.
    # The scale gradients come from the same GEMMs' epilogues (conv2d_fused_dot), as in the forward's backward.
    if need_as:
        ga, gas = conv2d_fused_dot(b, gg, a, b_scale, a_scale, out_h=a.shape[2], out_w=a.shape[3], **geo)
        gas = gas.to(a_scale.dtype)
    elif need_a:
        ga = conv2d_fused(b, gg, b_scale, a_scale, out_h=a.shape[2], out_w=a.shape[3], **geo)
    if need_bs:
        gb, gbs = conv2d_fused_dot(a, gg.transpose(0, 1), b, a_scale, b_scale, out_h=b.shape[2], out_w=b.shape[3],
                                   transposed=True, **geo)
        gbs = gbs.to(b_scale.dtype)
    elif need_b:
        gb = conv2d_fused(a, gg.transpose(0, 1), a_scale, b_scale, out_h=b.shape[2], out_w=b.shape[3],
                          transposed=True, **geo)
    if not need_a:
        ga = None
    if not need_b:
        gb = None
    return ga, gb, gas, gbs, None, None, None, None, None


_conv2d_wgrad_op.register_autograd(_wgrad_backward, setup_context=_wgrad_setup_context)
