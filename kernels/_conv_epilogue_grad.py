"""The backward of the implicit-GEMM conv's epilogue, as ONE pass: `fusegan::conv_epilogue_grad`.

The forward epilogue of `fusegan::conv2d_fused` is

    pre = conv * scale[n, o] + noise + bias[o]        (scale: StyleGAN2's demodulation coefficients)
    y   = clamp(gain * act(pre))

Its backward needs, from the upstream gradient gy and the raw conv output the forward saved:

    gpre        = gy * gain * act'(pre) * [|y| < clamp]          (the GEMMs' input for dX and dW)
    gscale[n, o] = sum_p gpre * conv                             (the demodulation gradient)
    gbias[o]     = sum_{n, p} gpre                               (the bias gradient)
    gnoise[n, p] = sum_o gpre                                    (the gradient of StyleGAN2's [N, 1, H, W] noise)

Composed from torch ops this is pre (up to 3 elementwise passes), bias_act's gradient kernel, a multiply and two
reductions: about 8 passes over an activation-sized tensor. Here one kernel reads gy and conv once, rebuilds pre
in registers, stores gpre and writes per-tile partial sums of gscale, gbias and gnoise (added by small torch
sums: deterministic, no atomics). gnoise is the channel sum, the gradient of noise that broadcasts over channels
(StyleGAN2's); a per-channel noise's gradient is gpre itself, summed over its broadcast dims by the caller.

Layout: tiles are [BLOCK_P pixels, BLOCK_O channels] read through strides, so NCHW and channels_last both
coalesce (Triton orders each tile along whichever axis has unit stride); gpre is returned in gy's layout.

The op's own backward (used by double backward: R1, path length) is written with bias_act's differentiable
gradient ops and torch ops, so gradients of gradients stay on fused kernels where it matters.
"""
from typing import Optional

import torch
from torch import Tensor

from ._triton import compute_dtype, LAUNCH_OPTIONS, tl, torch_compute_dtype, triton
from ._implicit_gemm import _strides_nchw, act_code, memory_format_of
from .bias_act import (_act_grad, _through_clamp, _bias_act_grad2_op, _bias_act_grad_op, _scalars, _split,
                       activation_funcs, is_nonlinear)

BLOCK_P = 64  # pixels per tile
BLOCK_O_MAX = 64  # channels per tile


@triton.jit
def _conv_epilogue_grad_kernel(
    gy_ptr, conv_ptr, scale_ptr, noise_ptr, bias_ptr, gpre_ptr, gscale_ptr, gbias_ptr, gnoise_ptr,
    O, P, OW,
    sgn, sgo, sgh, sgw,
    scn, sco, sch, scw,
    ssn, sso,
    snn, sno, snh, snw,
    son, soo, soh, sow,
    spm, spn, sqm, sqn,
    alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo,
    HAS_SCALE: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    HAS_CLAMP: tl.constexpr, NEED_SCALE: tl.constexpr, NEED_BIAS: tl.constexpr, NEED_NOISE: tl.constexpr,
    STORE_GPRE: tl.constexpr,
    COMPUTE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_o = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_mask = offs_o < O
    mask = (offs_p < P)[:, None] & o_mask[None, :]
    oy = (offs_p // OW).to(tl.int64)[:, None]
    ox = (offs_p % OW).to(tl.int64)[:, None]
    oc = offs_o.to(tl.int64)[None, :]

    alpha, gain, clamp = _scalars(alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo, COMPUTE)
    gpre = tl.load(gy_ptr + n * sgn + oc * sgo + oy * sgh + ox * sgw, mask=mask, other=0.0).to(COMPUTE) * gain
    NEED_PRE: tl.constexpr = ACT != 0 or HAS_CLAMP
    if NEED_PRE or NEED_SCALE:
        conv = tl.load(conv_ptr + n * scn + oc * sco + oy * sch + ox * scw, mask=mask, other=0.0).to(COMPUTE)
    if NEED_PRE:  # rebuild the pre-activation in registers, exactly as the forward epilogue did
        pre = conv
        if HAS_SCALE:
            pre = pre * tl.load(scale_ptr + n * ssn + offs_o * sso, mask=o_mask, other=0.0).to(COMPUTE)[None, :]
        if HAS_NOISE:
            pre += tl.load(noise_ptr + n * snn + oc * sno + oy * snh + ox * snw, mask=mask, other=0.0).to(COMPUTE)
        if HAS_BIAS:
            pre += tl.load(bias_ptr + offs_o, mask=o_mask, other=0.0).to(COMPUTE)[None, :]
        if ACT != 0:
            gpre = gpre * _act_grad(pre, ACT, alpha)
        gpre = _through_clamp(gpre, pre, alpha, gain, clamp, ACT, HAS_CLAMP)  # as bias_act: none where clamped
    if STORE_GPRE:  # (a linear epilogue's gpre is just gy * gain: the caller makes it, no store here)
        tl.store(gpre_ptr + n * son + oc * soo + oy * soh + ox * sow, gpre.to(gpre_ptr.dtype.element_ty),
                 mask=mask)

    # Per-tile partial sums over this tile's pixels, one row per (pixel tile, sample): [P tiles, N, O].
    part_offs = pid_p.to(tl.int64) * spm + n * spn + offs_o
    if NEED_SCALE:
        tl.store(gscale_ptr + part_offs, tl.sum(tl.where(mask, gpre * conv, 0.0), axis=0), mask=o_mask)
    if NEED_BIAS:
        tl.store(gbias_ptr + part_offs, tl.sum(tl.where(mask, gpre, 0.0), axis=0), mask=o_mask)
    # And over this tile's channels, one row per (channel tile, sample): [O tiles, N, P].
    if NEED_NOISE:
        noise_offs = pid_o.to(tl.int64) * sqm + n * sqn + offs_p
        tl.store(gnoise_ptr + noise_offs, tl.sum(tl.where(mask, gpre, 0.0), axis=1), mask=offs_p < P)


def _launch(gy, conv, scale, noise, bias, act, alpha, gain, clamp, need_scale, need_bias, need_noise):
    N, O, OH, OW = gy.shape
    store_gpre = is_nonlinear(act, clamp)
    gpre = torch.empty_like(gy, memory_format=memory_format_of(gy)) if store_gpre else gy.new_empty(0)
    sum_dtype = torch_compute_dtype(gy.dtype)
    block_o = max(16, min(BLOCK_O_MAX, triton.next_power_of_2(O)))
    grid = (triton.cdiv(OH * OW, BLOCK_P), triton.cdiv(O, block_o), N)
    gscale = torch.empty((grid[0], N, O) if need_scale else (0,), dtype=sum_dtype, device=gy.device)
    gbias = torch.empty((grid[0], N, O) if need_bias else (0,), dtype=sum_dtype, device=gy.device)
    gnoise = torch.empty((grid[1], N, OH * OW) if need_noise else (0,), dtype=sum_dtype, device=gy.device)
    if gy.numel() == 0:
        return (gpre, gscale.new_zeros((N, O) if need_scale else (0,)), gbias.new_zeros((O,) if need_bias else (0,)),
                gnoise.new_zeros((N, 1, OH, OW) if need_noise else (0,)))
    if noise is not None:
        noise = noise.expand(N, O, OH, OW)
    dummy = gy
    bias = bias.contiguous() if bias is not None else None  # read at unit stride (bias[o]), as in the forward
    cv, sc, nz, bs = (t if t is not None else dummy for t in (conv, scale, noise, bias))
    _conv_epilogue_grad_kernel[grid](
        gy, cv, sc, nz, bs, gpre, *(t if t.numel() else dummy for t in (gscale, gbias, gnoise)),
        O, OH * OW, OW,
        *_strides_nchw(gy), *(_strides_nchw(conv) if conv is not None else (0, 0, 0, 0)),
        *(scale.stride() if scale is not None else (0, 0)),
        *(_strides_nchw(noise) if noise is not None else (0, 0, 0, 0)),
        *(_strides_nchw(gpre) if store_gpre else (0, 0, 0, 0)),
        N * O, O, N * OH * OW, OH * OW,
        *_split(float(alpha)), *_split(float(gain)), *_split(float(clamp if clamp is not None else 0.0)),
        HAS_SCALE=scale is not None, HAS_NOISE=noise is not None, HAS_BIAS=bias is not None, ACT=act_code(act),
        HAS_CLAMP=clamp is not None, NEED_SCALE=need_scale, NEED_BIAS=need_bias, NEED_NOISE=need_noise,
        STORE_GPRE=store_gpre, COMPUTE=compute_dtype(gy.dtype),
        BLOCK_P=BLOCK_P, BLOCK_O=block_o, num_warps=4,
        **LAUNCH_OPTIONS,
    )
    return (gpre, gscale.sum(0) if need_scale else gscale, gbias.sum((0, 1)) if need_bias else gbias,
            gnoise.sum(0).view(N, 1, OH, OW) if need_noise else gnoise)


@torch.library.custom_op("fusegan::conv_epilogue_grad", mutates_args=())
def _conv_epilogue_grad_op(gy: Tensor, conv: Optional[Tensor], scale: Optional[Tensor], noise: Optional[Tensor],
                           bias: Optional[Tensor], act: str, alpha: float, gain: float, clamp: Optional[float],
                           need_scale: bool, need_bias: bool,
                           need_noise: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _launch(gy, conv, scale, noise, bias, act, alpha, gain, clamp, need_scale, need_bias, need_noise)


@_conv_epilogue_grad_op.register_fake
def _(gy, conv, scale, noise, bias, act, alpha, gain, clamp, need_scale, need_bias, need_noise):
    N, O, OH, OW = gy.shape
    sum_dtype = torch_compute_dtype(gy.dtype)
    return (torch.empty_like(gy, memory_format=memory_format_of(gy)) if is_nonlinear(act, clamp) else gy.new_empty(0),
            gy.new_empty((N, O) if need_scale else (0,), dtype=sum_dtype),
            gy.new_empty((O,) if need_bias else (0,), dtype=sum_dtype),
            gy.new_empty((N, 1, OH, OW) if need_noise else (0,), dtype=sum_dtype))


def _pre_activation(conv, scale, noise, bias):
    pre = conv if scale is None else conv * scale.to(conv.dtype)[:, :, None, None]
    if noise is not None:
        pre = pre + noise.to(pre.dtype)
    if bias is not None:
        pre = pre + bias.to(pre.dtype)[None, :, None, None]
    return pre


def _setup_context(ctx, inputs, output):
    gy, conv, scale, noise, bias, act, alpha, gain, clamp, need_scale, need_bias, need_noise = inputs
    ctx.epi = (act, alpha, gain, clamp)
    ctx.needs = (need_scale, need_bias, need_noise)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(gy, conv, scale, noise, bias, output[0] if need_scale and is_nonlinear(act, clamp) else None)


def _backward(ctx, g_gpre, g_gscale, g_gbias, g_gnoise):
    """gpre is linear in gy and depends on pre = conv * scale + noise + bias through act'(pre); gscale, gbias and
    gnoise are sums of gpre (gscale weighted by conv). Everything here is a differentiable op."""
    gy, conv, scale, noise, bias, gpre = ctx.saved_tensors
    act, alpha, gain, clamp = ctx.epi
    need_scale, need_bias, need_noise = ctx.needs
    nx = ctx.needs_input_grad
    nonlinear = is_nonlinear(act, clamp)
    if not nonlinear:  # gpre was not an output (the wrapper made gy * gain itself)
        g_gpre, gpre = None, gy * gain
    t = torch.zeros_like(gy) if g_gpre is None else g_gpre
    if need_scale and g_gscale is not None:
        t = t + (g_gscale[:, :, None, None] * conv).to(t.dtype)
    if need_bias and g_gbias is not None:
        t = t + g_gbias.to(t.dtype)[None, :, None, None]
    if need_noise and g_gnoise is not None:
        t = t + g_gnoise.to(t.dtype)  # [N, 1, H, W]: the same for every channel
    kernel_clamp = -1.0 if clamp is None else clamp
    pre = _pre_activation(conv, scale, noise, bias) if nonlinear else None
    d_gy = d_conv = d_scale = d_noise = d_bias = None
    if nx[0]:
        d_gy = _bias_act_grad_op(t, pre, None, 1, act, alpha, gain, kernel_clamp, False)[0] if nonlinear else t * gain
    d_pre = None
    if nonlinear and activation_funcs[act].has_2nd_grad and any(nx[1:5]):
        d_pre = _bias_act_grad2_op(t, gy, pre, None, 1, act, alpha, gain, kernel_clamp, False)[0]
    if nx[1]:
        if d_pre is not None:
            d_conv = d_pre if scale is None else d_pre * scale.to(d_pre.dtype)[:, :, None, None]
        if need_scale and g_gscale is not None:
            term = (g_gscale[:, :, None, None] * gpre).to(conv.dtype)
            d_conv = term if d_conv is None else d_conv + term
    if d_pre is not None:
        if nx[2]:
            d_scale = (d_pre * conv).sum(dim=(2, 3)).to(scale.dtype)
        if nx[3]:
            d_noise = d_pre.sum_to_size(noise.shape).to(noise.dtype)
        if nx[4]:
            d_bias = d_pre.sum(dim=(0, 2, 3)).to(bias.dtype)
    return d_gy, d_conv, d_scale, d_noise, d_bias, None, None, None, None, None, None, None


_conv_epilogue_grad_op.register_autograd(_backward, setup_context=_setup_context)


def conv_epilogue_grad(gy, conv, scale=None, noise=None, bias=None, *, act="linear", alpha=0.0, gain=1.0,
                       clamp=None, need_scale=False, need_bias=False, need_noise=False):
    """(gpre, gscale, gbias, gnoise) of the conv epilogue, see the module docstring. `conv` may be None when
    neither the activation/clamp nor the scale gradient needs it. gscale [N, O], gbias [O] and gnoise
    [N, 1, H, W] (the channel sum of gpre) are fp32 (fp64 for fp64 inputs), empty when not asked for. With a
    linear, unclamped epilogue gpre is gy * gain (gy itself when gain is 1), made here rather than stored by the
    kernel."""
    gpre, gscale, gbias, gnoise = _conv_epilogue_grad_op(gy, conv, scale, noise, bias, act, float(alpha),
                                                         float(gain), None if clamp is None else float(clamp),
                                                         bool(need_scale), bool(need_bias), bool(need_noise))
    if not is_nonlinear(act, clamp):
        gpre = gy if gain == 1 else gy * gain
    return gpre, gscale, gbias, gnoise


def noise_is_channel_broadcast(noise_shape) -> bool:
    """Whether a noise of this shape (broadcast against [N, C, H, W]) is shared by all channels, so that its
    gradient comes from the kernel's channel sum (StyleGAN2's [N, 1, H, W] and [H, W] noise)."""
    return len(noise_shape) < 3 or noise_shape[-3] == 1
