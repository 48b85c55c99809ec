"""StyleGAN2's modulated convolution as one implicit-GEMM layer (forward, backward and double backward).

    y = clamp(gain * act(d[n, o] * conv_resample(x * s[n, :], weight) + noise + bias))
    d[n, o] = rsqrt(sum_{i,k} (weight[o, i, k] * s[n, i])^2 + 1e-8)          (when demodulate)

With bias=None and act='linear' this is NVIDIA StyleGAN2-ADA's `modulated_conv2d` (training/networks.py),
fp16 pre-normalization of weight and styles included; `fused_modconv` is accepted and ignored (the result never
depends on it: there is no grouped conv with per-sample weights here, on either path).

Paths:
  * reference (`impl='ref'`, the CPU default): NVIDIA's non-fused composition in plain PyTorch: x * styles,
    conv2d_resample (F.conv2d / F.conv_transpose2d + upfirdn2d), * dcoefs + noise, bias_act's reference.
  * Triton: the implicit-GEMM kernel of kernels/_implicit_gemm.py over the SHARED weight. Its prologue scales the
    input channels by the per-sample style (in registers, on the weight tile), its epilogue applies demodulation,
    noise, bias, activation (bias_act's own jit helper), gain and clamp before the single store.
    Triton launches per layer (forward / backward with noise, bias and lrelu; tests/test_modulated_conv2d.py counts
    them):
      - up=1 (3x3 and 1x1/ToRGB): 1 / 3. Forward: ONE fused GEMM. Backward: the epilogue's gradient in one pass
        (`fusegan::conv_epilogue_grad`: activation/clamp gradient, d(demodulation), d(bias) and d(noise) from the
        same tiles), the dX GEMM (whose epilogue also reduces d(styles)), the split-K dW reduction.
      - down=2: 2 / 4. Forward: the upfirdn2d kernel (FIR + pad), then ONE fused strided GEMM with the whole
        epilogue. Backward: as up=1, plus the FIR's adjoint (upfirdn2d again).
      - up=2: 2 / 5. Forward: the transposed stride-2 GEMM (style prologue, demodulation epilogue), then ONE
        upfirdn2d pass (FIR, gain 4) whose epilogue adds the noise and the bias and applies the activation, gain
        and clamp before its single store (`upfirdn2d.upfirdn2d_bias_act`; in training it also stores the
        pre-activation for the backward). Backward: the epilogue-gradient kernel on that pre-activation (db and
        dnoise reduced from the same tiles), the FIR adjoint, the demodulation gradient (one reduction pass),
        then the transposed GEMM's dX (with d(styles)) and dW kernels.
    Why up=2 is not ONE GEMM: the 3x3 transposed conv and the 4x4 FIR compose into a single stride-2 transposed
    conv with a 6x6 kernel (w convolved with f), which would remove the FIR pass. But each output phase of a
    stride-2 transposed conv then reads ceil(6/2)^2 = 9 taps per input channel instead of 9/4 on average for the
    3x3 kernel (phases of 4, 2, 2 and 1 taps): 4x the tensor-core FLOPs. For the large-channel layers that
    dominate (512 channels), the GEMM is compute-bound and the FIR pass (4 taps per output, memory-bound) costs
    far less than 3 extra GEMMs' worth of FLOPs, so the layer stays a GEMM plus a FIR pass that carries the
    epilogue.
    Backward (kernels/_conv_ops.py): dX is the transposed implicit GEMM with the same prologue/epilogue trick,
    and its epilogue also reduces dstyles (sum_p x * dX-before-scaling, per-tile partials); dW a split-K
    reduction over the batch; ddemod and dbias come from the one-pass epilogue gradient
    (kernels/_conv_epilogue_grad.py), and so does dnoise for noise shared by the channels (StyleGAN2's; a
    per-channel noise's gradient is gpre summed over its broadcast dims). All of it is made of fusegan custom ops
    with their own autograd, so it is differentiable.
  Demodulation coefficients never build the [N, O, I, k, k] tensor: d = rsqrt(s^2 @ sum_k(w^2).T + eps),
  a tiny [N, I] x [I, O] matmul in torch (differentiable, so styles and weight get their gradient through it).

Layout: every kernel accepts NCHW and channels_last (through strides, no copies) and returns the layout it was
given; channels_last (NHWC) is the fast path of the layer:
  - implicit-GEMM forward/dX (`_conv_fwd_kernel`) prefers channels_last: the GEMM's K axis (input channels) and
    its stored N axis (output channels) are then contiguous, so the im2col loads and the store coalesce;
  - dW (`_conv_wgrad_kernel`) prefers channels_last: its tiles run along (tap, channel), channel fastest;
  - upfirdn2d (with or without the epilogue) is layout-neutral: its tile's fastest axis follows the output's
    contiguous one (C for channels_last, W for NCHW, where small planes pack several channels per tile); the
    [N, 1, H, W] noise is read through zero channel strides in either layout;
  - bias_act's gradient kernel is layout-neutral (a dense memory view), but copies a gradient whose layout
    differs from the saved pre-activation's, so keep the whole network in one layout.

Precision: fp16/bf16 on tensor cores (tl.dot) with fp32 accumulation; fp32 uses TF32 exactly when torch's own
convs would (cuDNN's conv precision, `torch.backends.cudnn.allow_tf32`, on by default), so the fused layer and
the reference composition round alike; fp64 (gradcheck) is exact.

`no_weight_gradients()` (NVIDIA's conv2d_gradfix API) skips the convolution's weight gradient while active.
"""
import math

import torch

from ._dispatch import resolve_impl
from ._validate import check_broadcasts_to, check_channel_vector, check_same_device, check_tensor
from .bias_act import _noise_bias_act_ref, activation_funcs, resolve_act_args
from .conv2d_resample import (_conv2d_resample_ref, _conv2d_resample_triton, check_resample_args,
                              no_weight_gradients, output_size)

__all__ = ["modulated_conv2d", "no_weight_gradients", "demodulation_coefficients"]

DEMOD_EPS = 1e-8


def demodulation_coefficients(weight, styles, eps=DEMOD_EPS):
    """d[n, o] = rsqrt(sum_{i, ky, kx} (weight[o, i, ky, kx] * styles[n, i])^2 + eps), as one small matmul."""
    dtype = torch.promote_types(weight.dtype, styles.dtype)  # as NVIDIA's weight * styles: mixed dtypes promote
    return (styles.to(dtype).square() @ weight.to(dtype).square().sum(dim=(2, 3)).transpose(0, 1) + eps).rsqrt()


def _prenormalize_fp16(weight, styles):
    """NVIDIA's guard against fp16 overflow (only with demodulation, which makes the result scale-invariant)."""
    in_channels, kh, kw = weight.shape[1:]
    weight = weight * (1 / math.sqrt(in_channels * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
    styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    return weight, styles


def _modulated_conv2d_ref(x, weight, styles, dcoefs, noise, up, down, pads, f, flip_weight, bias, act, alpha, gain,
                          clamp):
    """NVIDIA's non-fused path (fused_modconv=False) in plain PyTorch, then bias_act's reference."""
    x = x * styles.to(x.dtype)[:, :, None, None]  # (not reshape(n, -1, 1, 1): ambiguous for an empty batch)
    x = _conv2d_resample_ref(x, weight.to(x.dtype), f, up, down, pads, 1, flip_weight, False)
    if dcoefs is not None:
        x = x * dcoefs.to(x.dtype)[:, :, None, None]
    return _noise_bias_act_ref(x, noise, bias, act, alpha, gain, clamp)


def _check_args(x, weight, styles, noise, up, down, padding, resample_filter, bias, act, alpha, gain, clamp,
                flags):
    check_tensor(x, "x", ndim=4)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        raise ValueError(f"weight must be a 4-D [out_channels, in_channels, kh, kw] tensor, got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    up, down, pads, _ = check_resample_args(x, weight, resample_filter, up, down, padding, 1, w_name="weight",
                                            f_name="resample_filter")
    check_tensor(styles, "styles", ndim=2)
    check_same_device(x, "x", styles, "styles")
    if tuple(styles.shape) != (x.shape[0], x.shape[1]):
        raise ValueError(f"styles must have shape [batch, in_channels] = {[x.shape[0], x.shape[1]]}, got "
                         f"{list(styles.shape)}")
    out_shape = (x.shape[0], weight.shape[0],
                 *output_size(x.shape[2], x.shape[3], weight.shape[2], weight.shape[3], resample_filter, up, down,
                              pads))
    check_broadcasts_to(noise, "noise", out_shape, x)
    check_channel_vector(bias, "bias", weight.shape[0], x, whose="weight has {} out channels")
    if not isinstance(act, str) or act not in activation_funcs:
        raise ValueError(f"act must be one of {sorted(activation_funcs)}, got {act!r}")
    for name, value in flags.items():
        if not isinstance(value, (bool, int)):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    alpha, gain, clamp = resolve_act_args(act, alpha, gain, clamp)
    return up, down, pads, alpha, gain, clamp


def modulated_conv2d(x, weight, styles, noise=None, up=1, down=1, padding=0, resample_filter=None, demodulate=True,
                     flip_weight=True, fused_modconv=True, bias=None, act="linear", alpha=None, gain=None,
                     clamp=None, impl=None):
    """StyleGAN2 modulated convolution (+ optional fused bias_act), NVIDIA StyleGAN2-ADA semantics.

    x: [N, I, H, W]; weight: [O, I, kh, kw] (shared by the batch); styles: [N, I]; noise: broadcastable to the
    output [N, O, OH, OW], added after demodulation; up, down in {1, 2}; padding as NVIDIA's conv2d_resample
    (with respect to the upsampled image); resample_filter from upfirdn2d.setup_filter; demodulate, flip_weight
    as NVIDIA; fused_modconv: accepted, no effect. bias [O], act/alpha/gain/clamp: bias_act's semantics, applied
    after the noise (bias=None, act='linear' gives NVIDIA's modulated_conv2d exactly). impl: None/'ref'/'triton'.
    Returns [N, O, OH, OW] in x's dtype and layout.
    """
    up, down, pads, alpha, gain, clamp = _check_args(
        x, weight, styles, noise, up, down, padding, resample_filter, bias, act, alpha, gain, clamp,
        dict(demodulate=demodulate, flip_weight=flip_weight, fused_modconv=fused_modconv))
    impl = resolve_impl(impl, x.device)

    if x.dtype == torch.float16 and demodulate:
        weight, styles = _prenormalize_fp16(weight, styles)
    dcoefs = demodulation_coefficients(weight, styles) if demodulate else None

    if impl == "ref":
        return _modulated_conv2d_ref(x, weight, styles, dcoefs, noise, up, down, pads, resample_filter,
                                     bool(flip_weight), bias, act, alpha, gain, clamp)
    return _conv2d_resample_triton(x, weight, resample_filter, up, down, pads, 1, bool(flip_weight), False,
                                   in_scale=styles, out_scale=dcoefs, noise=noise, bias=bias, act=act, alpha=alpha,
                                   gain=gain, clamp=clamp)
