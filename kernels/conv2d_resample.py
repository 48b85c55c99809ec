"""2-D convolution with optional up/downsampling: NVIDIA StyleGAN2-ADA's `conv2d_resample`, on fusegan's kernels.

`conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False, impl=None)`
has NVIDIA's semantics (padding with respect to the upsampled image, applied once; the same fast paths).

What runs where on the Triton path:
  * every convolution is the implicit-GEMM kernel of kernels/_implicit_gemm.py (`fusegan::conv2d_fused`):
    plain, strided (down=2) and transposed stride-2 (up=2), with any (asymmetric, negative) padding;
  * the FIR low-pass filtering is the upfirdn2d op (a separate fused pass, not fused into the GEMM):
    down=2: FIR, then the stride-2 implicit GEMM; up=2: the transposed implicit GEMM, then FIR with gain up**2.
  * Per-sample channel scales and the elementwise epilogue (used by modulated_conv2d) ride along in the conv
    kernel when the conv is the last step; after a trailing FIR (up=2) the scales stay in the GEMM (they commute
    with the per-channel FIR) and noise/bias/activation ride in the FIR kernel's epilogue
    (upfirdn2d.upfirdn2d_bias_act), so up=2 is two kernels: transposed GEMM, then FIR + noise + bias + act.
groups > 1 runs one implicit GEMM per group (channel slices are strided views, no copies).
"""
import torch
import torch.nn.functional as F

from . import _conv_ops
from ._conv_ops import no_weight_gradients  # noqa: F401  (re-exported: NVIDIA's conv2d_gradfix API)
from ._dispatch import resolve_impl
from ._validate import check_positive_int, check_same_device, check_tensor, in_layout_of, is_channels_last
from .upfirdn2d import _parse_padding, upfirdn2d, upfirdn2d_bias_act

__all__ = ["conv2d_resample", "no_weight_gradients"]


def _filter_size(f):
    return (1, 1) if f is None else (f.shape[-1], f.shape[0])


def _adjusted_padding(f, up, down, padding):
    """NVIDIA's padding bookkeeping: the user padding plus what the FIR needs for up/downsampling."""
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    return px0, px1, py0, py1


def _split_up_padding(px0, px1, py0, py1, kh, kw, up):
    """NVIDIA's padding split for up > 1 (transposed conv, then FIR): the transposed conv pads by the symmetric
    part (pxt, pyt) it can take; the FIR after it gets the rest. Returns (pxt, pyt, [fir px0, px1, py0, py1])."""
    px0 -= kw - 1
    px1 -= kw - up
    py0 -= kh - 1
    py1 -= kh - up
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    return pxt, pyt, [px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt]


def output_size(in_h, in_w, kh, kw, f, up, down, padding):
    """(OH, OW) of conv2d_resample: upsample+pad+FIR (up>1), conv, FIR+downsample (down>1)."""
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _adjusted_padding(f, up, down, padding)

    def axis(size, p0, p1, taps, k):
        s = size * up + p0 + p1 - (taps - 1 if up > 1 else 0)
        s = s - k + 1
        return (s - taps) // down + 1 if down > 1 else s

    return axis(in_h, py0, py1, fh, kh), axis(in_w, px0, px1, fw, kw)


# ----------------------------------------------------------------------------------------------------------------
# Reference: NVIDIA's composition in plain PyTorch (F.conv2d / F.conv_transpose2d + upfirdn2d's reference).

class _WeightGradGate(torch.autograd.Function):
    """Identity on the weight whose backward drops the gradient while no_weight_gradients() is active (read at
    backward time, as NVIDIA's conv2d_gradfix)."""

    @staticmethod
    def forward(ctx, w):
        return w.view_as(w)

    @staticmethod
    def backward(ctx, g):
        return None if _conv_ops.weight_gradients_disabled() else g


def _conv_ref(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    kh, kw = w.shape[2], w.shape[3]
    if not flip_weight and (kw > 1 or kh > 1):
        w = w.flip([2, 3])
    op = F.conv_transpose2d if transpose else F.conv2d
    # torch's conv also follows a channels_last weight; the result keeps x's layout, as the Triton path's does.
    return in_layout_of(x, op(x, w, stride=stride, padding=padding, groups=groups))


def _conv2d_resample_ref(x, w, f=None, up=1, down=1, padding=(0, 0, 0, 0), groups=1, flip_weight=True,
                         flip_filter=False):
    """NVIDIA's conv2d_resample, branch for branch. Arguments are assumed valid; padding is a 4-tuple."""
    if w.requires_grad:
        w = _WeightGradGate.apply(w)
    out_channels, in_per_group, kh, kw = w.shape
    px0, px1, py0, py1 = _adjusted_padding(f, up, down, padding)
    fir = lambda t, **kw_: upfirdn2d(t, f, flip_filter=flip_filter, impl="ref", **kw_)  # noqa: E731

    if kw == 1 and kh == 1 and (down > 1 and up == 1):
        return _conv_ref(fir(x, down=down, padding=[px0, px1, py0, py1]), w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and (up > 1 and down == 1):
        x = _conv_ref(x, w, groups=groups, flip_weight=flip_weight)
        return fir(x, up=up, padding=[px0, px1, py0, py1], gain=up ** 2)
    if down > 1 and up == 1:
        x = fir(x, padding=[px0, px1, py0, py1])
        return _conv_ref(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        pxt, pyt, pads_fir = _split_up_padding(px0, px1, py0, py1, kh, kw, up)
        x = _conv_ref(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True,
                      flip_weight=not flip_weight)
        x = fir(x, padding=pads_fir, gain=up ** 2)
        if down > 1:
            x = fir(x, down=down)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv_ref(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1], impl="ref")  # NVIDIA's fallback: f=None, a plain pad
    return _conv_ref(x, w, groups=groups, flip_weight=flip_weight)


# ----------------------------------------------------------------------------------------------------------------
# Triton path: the same plan, on the implicit-GEMM kernels (+ upfirdn2d for the FIR).

def _conv_triton(x, w, *, stride=1, pads=(0, 0, 0, 0), groups=1, transposed=False, flip=False, epi=None):
    """One implicit-GEMM conv. `w` is NVIDIA's [O, C/groups, kh, kw] weight in both modes (for transposed the
    GEMM reads it through a transposed view: out channel o gathers input channel c with w[o, c]).
    pads = (px0, px1, py0, py1) for the plain conv, (px, px, py, py) of conv_transpose2d for transposed.
    `epi`: dict(in_scale, out_scale, noise, bias, act, alpha, gain, clamp) fused into the kernel."""
    epi = epi or {}
    kh, kw = w.shape[2], w.shape[3]
    if flip and (kh > 1 or kw > 1):
        w = w.flip([2, 3])  # weight-sized copy; cheap next to the conv
    px0, px1, py0, py1 = pads
    H, W = x.shape[2], x.shape[3]
    if transposed:
        out_h, out_w = (H - 1) * stride - 2 * py0 + kh, (W - 1) * stride - 2 * px0 + kw
    else:
        out_h, out_w = (H + py0 + py1 - kh) // stride + 1, (W + px0 + px1 - kw) // stride + 1
    geo = dict(stride=stride, pad_y=py0, pad_x=px0, out_h=out_h, out_w=out_w, transposed=transposed)
    if groups == 1:
        return _conv_ops.conv2d_fused(x, w, **epi, **geo)
    cin, cout = x.shape[1] // groups, w.shape[0] // groups
    outs = []
    for g in range(groups):
        e = dict(epi)
        if e.get("in_scale") is not None:
            e["in_scale"] = e["in_scale"][:, g * cin:(g + 1) * cin]
        if e.get("out_scale") is not None:
            e["out_scale"] = e["out_scale"][:, g * cout:(g + 1) * cout]
        if e.get("bias") is not None:
            e["bias"] = e["bias"][g * cout:(g + 1) * cout]
        if e.get("noise") is not None and e["noise"].ndim >= 3 and e["noise"].shape[-3] != 1:
            e["noise"] = e["noise"][..., g * cout:(g + 1) * cout, :, :]
        outs.append(_conv_ops.conv2d_fused(x[:, g * cin:(g + 1) * cin], w[g * cout:(g + 1) * cout], **e, **geo))
    y = torch.cat(outs, dim=1)
    # x's layout (a group's channel slice of a channels_last x is not channels_last-dense, so outs[0] may not be).
    return y.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else y


def _conv2d_resample_triton(x, w, f=None, up=1, down=1, padding=(0, 0, 0, 0), groups=1, flip_weight=True,
                            flip_filter=False, in_scale=None, out_scale=None, noise=None, bias=None, act="linear",
                            alpha=0.0, gain=1.0, clamp=None):
    """Same plan as `_conv2d_resample_ref`. When the conv is the last step the whole modulated epilogue is fused
    into it; after a trailing FIR (up > 1), noise/bias/act/gain/clamp are fused into that last FIR pass."""
    px0, px1, py0, py1 = _adjusted_padding(f, up, down, padding)
    fir = lambda t, **kw_: upfirdn2d(t, f, flip_filter=flip_filter, impl="triton", **kw_)  # noqa: E731
    kh, kw = w.shape[2], w.shape[3]
    # In training, the kernel also stores the raw conv output when the backward needs it (nonlinear epilogue, or a
    # demodulation gradient), so the backward runs no recomputation GEMM: one extra write instead.
    training = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, w, in_scale, out_scale, noise, bias))
    nonlinear = act != "linear" or clamp is not None
    full = dict(in_scale=in_scale, out_scale=out_scale, noise=noise, bias=bias, act=act, alpha=alpha, gain=gain,
                clamp=clamp, save_conv=training and (nonlinear or out_scale is not None))
    scales = dict(in_scale=in_scale, out_scale=out_scale, save_conv=training and out_scale is not None)

    def fir_last(t, **kw_):  # the last FIR pass carries the epilogue that could not ride in the GEMM
        return upfirdn2d_bias_act(t, f, flip_filter=flip_filter, noise=noise, bias=bias, act=act, alpha=alpha,
                                  act_gain=gain, clamp=clamp, impl="triton", **kw_)

    if kw == 1 and kh == 1 and (down > 1 and up == 1):
        x = fir(x, down=down, padding=[px0, px1, py0, py1])
        return _conv_triton(x, w, groups=groups, flip=not flip_weight, epi=full)
    if kw == 1 and kh == 1 and (up > 1 and down == 1):
        x = _conv_triton(x, w, groups=groups, flip=not flip_weight, epi=scales)
        return fir_last(x, up=up, padding=[px0, px1, py0, py1], gain=up ** 2)
    if down > 1 and up == 1:
        x = fir(x, padding=[px0, px1, py0, py1])
        return _conv_triton(x, w, stride=down, groups=groups, flip=not flip_weight, epi=full)
    if up > 1:
        pxt, pyt, pads_fir = _split_up_padding(px0, px1, py0, py1, kh, kw, up)
        # NVIDIA: conv_transpose2d(x, w.transpose(0, 1), flipped unless flip_weight is False); the GEMM reads
        # w[o, c] directly, so only the flip remains.
        x = _conv_triton(x, w, stride=up, pads=(pxt, pxt, pyt, pyt), groups=groups, transposed=True,
                         flip=flip_weight, epi=scales)
        if down > 1:
            return fir_last(fir(x, padding=pads_fir, gain=up ** 2), down=down)
        return fir_last(x, padding=pads_fir, gain=up ** 2)
    # up == down == 1: the kernel pads (asymmetric or negative too) by itself, no separate pad pass.
    return _conv_triton(x, w, pads=(px0, px1, py0, py1), groups=groups, flip=not flip_weight, epi=full)


# ----------------------------------------------------------------------------------------------------------------
# Validation and the public function.

def check_resample_args(x, w, f, up, down, padding, groups, w_name="w", f_name="f"):
    """Validates conv2d_resample's arguments (shared with modulated_conv2d); returns (up, down, padding4)."""
    check_tensor(x, "x", ndim=4)
    check_tensor(w, w_name, ndim=4)
    check_same_device(x, "x", w, w_name)
    up = check_positive_int(up, "up")
    down = check_positive_int(down, "down")
    if up not in (1, 2):
        raise ValueError(f"up must be 1 or 2, got {up}")
    if down not in (1, 2):
        raise ValueError(f"down must be 1 or 2, got {down}")
    if min(w.shape) == 0:  # (F.conv2d refuses no out channels, and returns no channels for no input channels)
        raise ValueError(f"{w_name} must have at least one out channel, one input channel and a non-empty kernel, "
                         f"got shape {tuple(w.shape)}")
    groups = check_positive_int(groups, "groups")
    if x.shape[1] % groups or w.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide x's {x.shape[1]} channels and {w_name}'s {w.shape[0]} "
                         f"out channels")
    if w.shape[1] * groups != x.shape[1]:
        raise ValueError(f"{w_name} has {w.shape[1]} input channels per group (shape {tuple(w.shape)}) but x has "
                         f"{x.shape[1]} channels with groups={groups}")
    if f is not None:
        check_tensor(f, f_name)
        if f.ndim not in (1, 2) or f.numel() == 0:
            raise ValueError(f"{f_name} must be a non-empty 1-D or 2-D filter, got shape {tuple(f.shape)}")
        check_same_device(x, "x", f, f_name)
    pads = _parse_padding(padding)
    oh, ow = output_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], f, up, down, pads)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"the output would be {oh}x{ow} for x of shape {tuple(x.shape)}, {w_name} of shape "
                         f"{tuple(w.shape)}, padding {padding!r}: use more padding or a larger input")
    return up, down, pads, groups


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False,
                    impl=None):
    """2-D convolution with optional up/downsampling, NVIDIA StyleGAN2-ADA semantics.

    x: [N, C, H, W]; w: [O, C/groups, kh, kw] (same dtype as x); f: FIR filter from upfirdn2d.setup_filter
    (None = identity); up, down in {1, 2}; padding: int, [px, py] or [px0, px1, py0, py1] with respect to the
    upsampled image; flip_weight: True = correlation (as F.conv2d); flip_filter: True = correlation.
    impl: None, 'ref' or 'triton'. Returns [N, O, OH, OW] in x's layout.
    """
    up, down, pads, groups = check_resample_args(x, w, f, up, down, padding, groups)
    if w.dtype != x.dtype:
        raise TypeError(f"w has dtype {w.dtype} but x has dtype {x.dtype}; they must match (NVIDIA's rule)")
    impl = resolve_impl(impl, x.device)
    if impl == "ref":
        return _conv2d_resample_ref(x, w, f, up, down, pads, groups, bool(flip_weight), bool(flip_filter))
    return _conv2d_resample_triton(x, w, f, up, down, pads, groups, bool(flip_weight), bool(flip_filter))
