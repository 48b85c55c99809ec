"""upfirdn2d: upsample (zero insertion), pad/crop, FIR filter, downsample, fused into one kernel.

Same signature and semantics as NVIDIA StyleGAN2-ADA's `torch_utils.ops.upfirdn2d`, helpers included
(`setup_filter`, `filter2d`, `upsample2d`, `downsample2d`, with their padding formulas and gain conventions),
so that its users can switch with one import. For each channel:

1. upsample by inserting `up - 1` zeros after every pixel;
2. pad with zeros (negative padding crops);
3. convolve with the FIR filter `f` (a true convolution; `flip_filter=True` gives correlation), keeping only
   outputs whose footprint lies inside the padded image;
4. downsample by keeping every `down`-th pixel.

A 1-D filter is separable: it filters rows and columns with the same taps, each pass scaled by gain**0.5.
The filter is a constant: it never gets a gradient (as in NVIDIA's op).

`upfirdn2d_bias_act` (fusegan's own) is upfirdn2d followed by `+ noise` and bias_act, in the same single kernel:
an optional epilogue before the store (a constexpr flag, so plain upfirdn2d calls compile none of it). It lets
modulated_conv2d's up=2 layer run as two kernels: the transposed GEMM, then FIR + noise + bias + activation.
"""
import numbers
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._dispatch import interpreter_active, resolve_impl
from ._triton import compute_dtype, LAUNCH_OPTIONS, tl, triton
from ._validate import (check_broadcasts_to, check_channel_vector, check_finite_number, check_positive_int,
                        check_same_device, check_tensor, is_channels_last, same_layout_empty)
# The epilogue's activation math and its fp64-exact scalar passing are bias_act's own (imported, not copied), so
# the fused FIR + bias_act computes exactly bias_act's math; its gradient is the conv epilogue's one-pass backward.
from ._conv_epilogue_grad import conv_epilogue_grad, noise_is_channel_broadcast
from .bias_act import ACT_CODES, _act_fwd, _noise_bias_act_ref, _scalars, _split, is_nonlinear, resolve_act_args

# ------------------------------------------------------------------------------------------------
# Argument parsing and checks (shared by every entry point, all run before any launch).


def _parse_scaling(value, name="scaling"):
    """`up`/`down`: a positive int or an [x, y] pair of them; returns (sx, sy). (NVIDIA's one-argument form works.)"""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or an [x, y] pair, got {len(value)} values: {value!r}")
        return check_positive_int(value[0], f"{name}[0]"), check_positive_int(value[1], f"{name}[1]")
    sx = check_positive_int(value, name)
    return sx, sx


def _parse_padding(padding):
    """`padding`: an int, [px, py] or [px0, px1, py0, py1] (negative crops); returns (px0, px1, py0, py1)."""
    values = list(padding) if isinstance(padding, (list, tuple)) else [padding]
    if len(values) not in (1, 2, 4):
        raise ValueError(f"padding must be an int, [px, py] or [px0, px1, py0, py1], got {len(values)} values: {padding!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"padding must hold ints, got {padding!r}")
    values = [int(v) for v in values]
    if len(values) == 1:
        values = values * 4
    elif len(values) == 2:
        values = [values[0], values[0], values[1], values[1]]
    return tuple(values)


def _check_filter(f, x):
    """`f` must be a non-empty 1-D or 2-D floating tensor on x's device (None means identity)."""
    if f is None:
        return torch.ones([1, 1], dtype=torch.float32, device=x.device)
    check_tensor(f, "f")
    if f.ndim not in (1, 2):
        raise ValueError(f"f must be 1-D (separable) or 2-D, got shape {tuple(f.shape)}")
    if f.numel() == 0:
        raise ValueError(f"f must not be empty, got shape {tuple(f.shape)}")
    check_same_device(x, "x", f, "f")
    if f.requires_grad and torch.is_grad_enabled():
        raise ValueError("f must not require grad: upfirdn2d's filter is a constant (use a buffer, or f.detach())")
    return f


def _filter_size(f):
    """(fw, fh) of a checked filter; a 1-D filter is used along both axes."""
    return f.shape[-1], f.shape[0]


def _get_filter_size(f):
    """NVIDIA's helper (its conv2d_resample calls it): (fw, fh) of f, (1, 1) for None."""
    return (1, 1) if f is None else _filter_size(f)


def _out_size(in_size, up, down, pad0, pad1, taps):
    """Output length along one axis: the valid convolution of the padded, upsampled signal, then ::down."""
    filtered = in_size * up + pad0 + pad1 - taps + 1
    return filtered, (filtered - 1) // down + 1


def _check_args(x, f, up, down, padding, gain):
    """Validates everything upfirdn2d takes; returns the parsed (f, (upx, upy), (downx, downy), padding, gain)."""
    check_tensor(x, "x", ndim=4)
    f = _check_filter(f, x)
    upx, upy = _parse_scaling(up, "up")
    downx, downy = _parse_scaling(down, "down")
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    gain = check_finite_number(gain, "gain", allow_none=False)
    if f.ndim == 1 and gain < 0:
        # A separable filter takes gain**0.5 in each pass, which has no real value for a negative gain.
        raise ValueError(f"gain must be >= 0 with a separable (1-D) filter, got {gain}")
    fw, fh = _filter_size(f)
    for axis, size, s_up, p0, p1, taps in (("width", x.shape[3], upx, padx0, padx1, fw), ("height", x.shape[2], upy, pady0, pady1, fh)):
        filtered, _ = _out_size(size, s_up, 1, p0, p1, taps)
        if filtered <= 0:
            names = "px0, px1" if axis == "width" else "py0, py1"
            raise ValueError(
                f"output {axis} would be <= 0: input {axis} {size} * up {s_up} + padding ({names}) {p0} + {p1} "
                f"- filter {axis} {taps} + 1 = {filtered}; use less cropping or a larger input"
            )
    return f, (upx, upy), (downx, downy), (padx0, padx1, pady0, pady1), gain


# ------------------------------------------------------------------------------------------------
# 1. Reference: plain differentiable PyTorch (the CPU path and the test oracle).


def _upfirdn2d_ref(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """upfirdn2d in ordinary PyTorch ops: zero-insert via reshape+pad, pad/crop, depthwise conv2d, stride slicing."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    upx, upy = _parse_scaling(up, "up")
    downx, downy = _parse_scaling(down, "down")
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    n, c, h, w = x.shape
    layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format

    # Zero insertion: each pixel becomes an up x up block whose other entries are 0.
    y = x.reshape(n, c, h, 1, w, 1)
    y = F.pad(y, [0, upx - 1, 0, 0, 0, upy - 1])
    y = y.reshape(n, c, h * upy, w * upx)

    # Pad the positive sides first, then crop the negative ones (so a crop may eat into the padding).
    y = F.pad(y, [max(padx0, 0), max(padx1, 0), max(pady0, 0), max(pady1, 0)])
    y = y[:, :, max(-pady0, 0) : y.shape[2] - max(-pady1, 0), max(-padx0, 0) : y.shape[3] - max(-padx1, 0)]

    # conv2d correlates, so a true convolution flips the taps. A separable filter runs twice, gain**0.5 each.
    # The scaled taps are computed in the wider of f's and x's dtypes (fp64 stays exact for gradcheck).
    f = (f.to(torch.promote_types(f.dtype, x.dtype)) * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if c == 0:  # conv2d refuses groups=0: the valid-convolution crop alone gives the (empty) output's shape
        y = y[:, :, f.shape[0] - 1:, f.shape[-1] - 1:]
    elif f.ndim == 2:
        y = F.conv2d(y, f.expand(c, 1, -1, -1), groups=c)
    else:
        y = F.conv2d(y, f.reshape(1, 1, 1, -1).expand(c, -1, -1, -1), groups=c)
        y = F.conv2d(y, f.reshape(1, 1, -1, 1).expand(c, -1, -1, -1), groups=c)

    y = y[:, :, ::downy, ::downx]
    return y.contiguous(memory_format=layout)


# ------------------------------------------------------------------------------------------------
# 2. Triton kernels.
#
# One program computes a [BLOCK_C, BLOCK_H, BLOCK_W] tile of output pixels straight from the input. Output
# pixel (oy, ox) reads the padded, upsampled image at rows oy*DOWNY + ky (ky < FH) and columns ox*DOWNX + kx.
# Of those taps only the ones landing on a real (not zero-inserted, not padded) pixel contribute; along x they
# are kx = phase_x + t*UPX for t = 0, 1, ..., where phase_x = (padx0 - ox*DOWNX) mod UPX, and they hit input
# columns ix0 + t. That polyphase walk visits ceil(FW / UPX) taps per axis instead of FW, and the zero-inserted
# or padded image never exists. A 1-D (separable) filter is applied in the same single pass as its outer
# product wy[ky] * wx[kx]: no intermediate tensor, one store. All indices are per-row or per-column vectors;
# only the final address is a full tile, computed in int64 from the strides so any layout works without a copy.


# The optional epilogue (only in `fusegan::upfirdn2d_bias_act`): before the single store, + noise (any
# broadcastable strides, e.g. StyleGAN2's [N, 1, H, W]), + bias[c], activation * gain, clamp (bias_act's math).
# In training it also stores pre = FIR + noise (before the bias): bias_act's gradient kernel needs the
# pre-activation, exactly as bias_act's own backward reads its saved input.


@triton.jit
def _bias_act_epilogue(acc, noise_ptr, bias_ptr, pre_ptr, n, c, oy, ox, c_ok, y_offs, y_mask,
                       snn, snc, snh, snw, alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo,
                       HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr,
                       SAVE_PRE: tl.constexpr, ACC: tl.constexpr):
    """clamp(gain * act(acc + noise + bias)) for a [BLOCK_C, BLOCK_H, BLOCK_W] tile (storing acc + noise if asked)."""
    if HAS_NOISE:
        nz_offs = (n * snn + c.to(tl.int64)[:, None, None] * snc + oy.to(tl.int64)[None, :, None] * snh
                   + ox.to(tl.int64)[None, None, :] * snw)
        acc += tl.load(noise_ptr + nz_offs, mask=y_mask, other=0.0).to(ACC)
    if SAVE_PRE:
        tl.store(pre_ptr + y_offs, acc.to(pre_ptr.dtype.element_ty), mask=y_mask)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=c_ok, other=0.0).to(ACC)[:, None, None]
    alpha, gain, clamp = _scalars(alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo, ACC)
    if ACT != 0:
        acc = _act_fwd(acc, ACT, alpha)
    acc = acc * gain
    if HAS_CLAMP:  # as bias_act: NaN stays NaN
        acc = tl.where(acc > clamp, clamp, tl.where(acc < -clamp, -clamp, acc))
    return acc


@triton.jit
def _upfirdn2d_fwd_kernel(
    x_ptr, f_ptr, y_ptr, noise_ptr, bias_ptr, pre_ptr,
    C, IH, IW, OH, OW,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    snn, snc, snh, snw,
    padx0, pady0,
    alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo,
    UPX: tl.constexpr, UPY: tl.constexpr, DOWNX: tl.constexpr, DOWNY: tl.constexpr,
    FW: tl.constexpr, FH: tl.constexpr, TAPS_X: tl.constexpr, TAPS_Y: tl.constexpr,
    SEPARABLE: tl.constexpr, FLIP: tl.constexpr, ACC: tl.constexpr,
    EPILOGUE: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    HAS_CLAMP: tl.constexpr, SAVE_PRE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    pid_nc = tl.program_id(0)
    c_blocks = tl.cdiv(C, BLOCK_C)
    n = (pid_nc // c_blocks).to(tl.int64)
    c = (pid_nc % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    oy = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ox = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    c_ok = c < C

    # First contributing tap and the input pixel it hits, per output column / row. `%` may return a negative
    # remainder (C semantics on the GPU), hence the fix-up; the division is exact, so its rounding is moot.
    phase_x = (padx0 - ox * DOWNX) % UPX
    phase_x = tl.where(phase_x < 0, phase_x + UPX, phase_x)
    ix0 = (ox * DOWNX - padx0 + phase_x) // UPX
    phase_y = (pady0 - oy * DOWNY) % UPY
    phase_y = tl.where(phase_y < 0, phase_y + UPY, phase_y)
    iy0 = (oy * DOWNY - pady0 + phase_y) // UPY

    x_nc = x_ptr + n * sxn + c.to(tl.int64)[:, None, None] * sxc
    acc = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], dtype=ACC)
    for ty in tl.static_range(TAPS_Y):
        ky = phase_y + ty * UPY
        iy = iy0 + ty
        row_ok = (ky < FH) & (iy >= 0) & (iy < IH)
        fky = ky if FLIP else FH - 1 - ky  # convolution reads the taps backwards
        if SEPARABLE:
            wy = tl.load(f_ptr + fky, mask=ky < FH, other=0.0)
        for tx in tl.static_range(TAPS_X):
            kx = phase_x + tx * UPX
            ix = ix0 + tx
            col_ok = (kx < FW) & (ix >= 0) & (ix < IW)
            fkx = kx if FLIP else FW - 1 - kx
            if SEPARABLE:
                wx = tl.load(f_ptr + fkx, mask=kx < FW, other=0.0)
                w = wy[:, None] * wx[None, :]
            else:
                w = tl.load(f_ptr + fky[:, None] * FW + fkx[None, :], mask=(ky < FH)[:, None] & (kx < FW)[None, :], other=0.0)
            offs = iy.to(tl.int64)[None, :, None] * sxh + ix.to(tl.int64)[None, None, :] * sxw
            mask = c_ok[:, None, None] & row_ok[None, :, None] & col_ok[None, None, :]
            v = tl.load(x_nc + offs, mask=mask, other=0.0)
            acc += v.to(ACC) * w[None, :, :]

    y_offs = (n * syn + c.to(tl.int64)[:, None, None] * syc + oy.to(tl.int64)[None, :, None] * syh
              + ox.to(tl.int64)[None, None, :] * syw)
    y_mask = c_ok[:, None, None] & (oy < OH)[None, :, None] & (ox < OW)[None, None, :]
    if EPILOGUE:  # constexpr: plain upfirdn2d calls compile none of this
        acc = _bias_act_epilogue(acc, noise_ptr, bias_ptr, pre_ptr, n, c, oy, ox, c_ok, y_offs, y_mask,
                                 snn, snc, snh, snw, alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo,
                                 HAS_NOISE, HAS_BIAS, ACT, HAS_CLAMP, SAVE_PRE, ACC)
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


# ------------------------------------------------------------------------------------------------
# 3. Launcher.

_TILE = 1024  # output pixels per program: 8 per thread with 4 warps
# Triton's CPU interpreter pays per operation, not per element: far fewer, larger tiles keep CI fast.
_INTERPRETER_TILE = 16384


def _pow2_at_most(n, cap):
    return max(1, min(triton.next_power_of_2(max(int(n), 1)), cap))


def _block_shape(y):
    """Tile shape (BLOCK_C, BLOCK_H, BLOCK_W) whose fastest axis is the output's contiguous one, for coalescing."""
    _, c, oh, ow = y.shape
    tile = _INTERPRETER_TILE if y.device.type == "cpu" and interpreter_active() else _TILE
    if is_channels_last(y):
        block_c = _pow2_at_most(c, 64)
        block_w = _pow2_at_most(ow, tile // block_c)
        block_h = _pow2_at_most(oh, tile // (block_c * block_w))
        return block_c, block_h, block_w
    block_w = _pow2_at_most(ow, 128)
    block_h = _pow2_at_most(oh, tile // block_w)
    # Small planes (the low-resolution layers) fill the rest of the tile with channels, so each program
    # still does a full tile of work instead of launching one tiny program per plane.
    block_c = _pow2_at_most(c, tile // (block_h * block_w))
    return block_c, block_h, block_w


def _upfirdn2d_triton(x, f, up, down, padding, flip_filter, gain, epilogue=None):
    """Allocates the output in x's layout and launches the fused kernel (arguments already checked).

    Returns y, or with `epilogue` = dict(noise, bias, act, alpha, act_gain, clamp, save_pre) the pair (y, pre),
    pre = FIR + noise laid out like y when save_pre, else empty."""
    upx, upy = up
    downx, downy = down
    padx0, padx1, pady0, pady1 = padding
    n, c, ih, iw = x.shape
    fw, fh = _filter_size(f)
    _, ow = _out_size(iw, upx, downx, padx0, padx1, fw)
    _, oh = _out_size(ih, upy, downy, pady0, pady1, fh)
    y = same_layout_empty((n, c, oh, ow), x)
    epi = epilogue or {}
    noise, bias, save_pre = epi.get("noise"), epi.get("bias"), bool(epi.get("save_pre"))
    pre = torch.empty_like(y) if save_pre else y.new_empty(0)
    if y.numel() == 0:
        return (y, pre) if epilogue is not None else y
    if noise is not None:
        noise = noise.expand(n, c, oh, ow)  # broadcast through zero strides, no copy
    clamp = epi.get("clamp")
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    # Gain folded into the taps, as NVIDIA's reference does: gain**0.5 per pass for a separable filter.
    taps = (f.to(acc_dtype) * (gain ** (f.ndim / 2))).contiguous()
    block_c, block_h, block_w = _block_shape(y)
    grid = (n * triton.cdiv(c, block_c), triton.cdiv(oh, block_h), triton.cdiv(ow, block_w))
    _upfirdn2d_fwd_kernel[grid](
        # unused pointers get a real tensor (y), never an empty tensor's possibly-null pointer
        x, taps, y, y if noise is None else noise, y if bias is None else bias.contiguous(), pre if save_pre else y,
        c, ih, iw, oh, ow,
        *x.stride(), *y.stride(), *(noise.stride() if noise is not None else (0, 0, 0, 0)),
        padx0, pady0,
        *_split(float(epi.get("alpha", 0.0))), *_split(float(epi.get("act_gain", 1.0))),
        *_split(float(clamp if clamp is not None else 0.0)),
        UPX=upx, UPY=upy, DOWNX=downx, DOWNY=downy,
        FW=fw, FH=fh, TAPS_X=triton.cdiv(fw, upx), TAPS_Y=triton.cdiv(fh, upy),
        SEPARABLE=f.ndim == 1, FLIP=bool(flip_filter), ACC=compute_dtype(x.dtype),
        EPILOGUE=epilogue is not None, HAS_NOISE=noise is not None, HAS_BIAS=bias is not None,
        ACT=ACT_CODES[epi.get("act", "linear")], HAS_CLAMP=clamp is not None, SAVE_PRE=save_pre,
        BLOCK_C=block_c, BLOCK_H=block_h, BLOCK_W=block_w,
        **LAUNCH_OPTIONS,
    )
    return (y, pre) if epilogue is not None else y


# ------------------------------------------------------------------------------------------------
# 4. Custom op. Its backward is the same op (up/down swapped, filter flipped, padding recomputed), so
# gradients of any order go through the Triton kernel.


@torch.library.custom_op("fusegan::upfirdn2d", mutates_args=())
def _upfirdn2d_op(
    x: Tensor, f: Tensor, up: List[int], down: List[int], padding: List[int], flip_filter: bool, gain: float
) -> Tensor:
    return _upfirdn2d_triton(x, f, up, down, padding, flip_filter, gain)


def _fake_fir_out(x, f, up, down, padding):
    """An empty output of the right shape and layout, as the launcher allocates it."""
    fw, fh = _filter_size(f)
    _, ow = _out_size(x.shape[3], up[0], down[0], padding[0], padding[1], fw)
    _, oh = _out_size(x.shape[2], up[1], down[1], padding[2], padding[3], fh)
    return same_layout_empty((x.shape[0], x.shape[1], oh, ow), x)


@_upfirdn2d_op.register_fake
def _(x, f, up, down, padding, flip_filter, gain):
    return _fake_fir_out(x, f, up, down, padding)


def _grad_padding(f, x_hw, dy_hw, up, down, padding):
    """Padding of the transposed op, NVIDIA's formulas: it maps dy (oh, ow) back onto x (ih, iw) exactly."""
    fw, fh = _filter_size(f)
    (ih, iw), (oh, ow) = x_hw, dy_hw
    (upx, upy), (downx, downy) = up, down
    padx0, _, pady0, _ = padding
    return [
        fw - padx0 - 1,
        iw * upx - ow * downx + padx0 - upx + 1,
        fh - pady0 - 1,
        ih * upy - oh * downy + pady0 - upy + 1,
    ]


def _setup_context(ctx, inputs, output):
    x, f, up, down, padding, flip_filter, gain = inputs
    ctx.save_for_backward(f)
    ctx.x_hw = (x.shape[2], x.shape[3])
    ctx.args = (list(up), list(down), list(padding), flip_filter, gain)


def _backward(ctx, dy):
    (f,) = ctx.saved_tensors
    up, down, padding, flip_filter, gain = ctx.args
    dx = None
    if ctx.needs_input_grad[0]:
        p = _grad_padding(f, ctx.x_hw, (dy.shape[2], dy.shape[3]), up, down, padding)
        dx = _upfirdn2d_op(dy, f, down, up, p, not flip_filter, gain)
    return dx, None, None, None, None, None, None


_upfirdn2d_op.register_autograd(_backward, setup_context=_setup_context)


# FIR + noise + bias + activation. Backward: ONE pass of fusegan::conv_epilogue_grad on the saved pre-activation
# (dz, with db and, for noise shared by the channels, dnoise reduced from the same tiles), then dx = upfirdn2d's
# adjoint of dz. Every piece is a fusegan op with its own autograd (or a plain torch reduction), so this backward
# is differentiable too.


@torch.library.custom_op("fusegan::upfirdn2d_bias_act", mutates_args=())
def _upfirdn2d_bias_act_op(
    x: Tensor, f: Tensor, noise: Optional[Tensor], bias: Optional[Tensor], up: List[int], down: List[int],
    padding: List[int], flip_filter: bool, gain: float, act: str, alpha: float, act_gain: float,
    clamp: Optional[float], save_pre: bool,
) -> tuple[Tensor, Tensor]:
    epilogue = dict(noise=noise, bias=bias, act=act, alpha=alpha, act_gain=act_gain, clamp=clamp, save_pre=save_pre)
    return _upfirdn2d_triton(x, f, up, down, padding, flip_filter, gain, epilogue)


@_upfirdn2d_bias_act_op.register_fake
def _(x, f, noise, bias, up, down, padding, flip_filter, gain, act, alpha, act_gain, clamp, save_pre):
    y = _fake_fir_out(x, f, up, down, padding)
    return y, (torch.empty_like(y) if save_pre else y.new_empty(0))


def _epilogue_setup_context(ctx, inputs, output):
    x, f, noise, bias, up, down, padding, flip_filter, gain, act, alpha, act_gain, clamp, save_pre = inputs
    ctx.set_materialize_grads(False)  # an unused output (pre) gets None, not a tensor of zeros
    # Without a saved pre the backward recomputes it (one FIR pass), which needs x and the noise.
    recompute = is_nonlinear(act, clamp) and not save_pre
    ctx.save_for_backward(f, x if recompute else None, noise if recompute else None, bias,
                          output[1] if save_pre else None)
    ctx.x_hw = (x.shape[2], x.shape[3])
    ctx.noise_meta = None if noise is None else (noise.shape, noise.dtype)
    ctx.fir = (list(up), list(down), list(padding), flip_filter, gain)
    ctx.act = (act, alpha, act_gain, clamp)


def _epilogue_backward(ctx, dy, dpre):
    f, x, noise, bias, pre = ctx.saved_tensors
    up, down, padding, flip_filter, gain = ctx.fir
    act, alpha, act_gain, clamp = ctx.act
    need_x, _, need_noise, need_bias = ctx.needs_input_grad[:4]
    noise_shape, noise_dtype = ctx.noise_meta if ctx.noise_meta is not None else (None, None)
    noise_in_kernel = need_noise and noise_is_channel_broadcast(noise_shape)
    need_bias = bias is not None and need_bias
    nonlinear = is_nonlinear(act, clamp)
    dz = db = dnoise = None
    if dy is not None:
        if nonlinear and pre is None:
            pre = _upfirdn2d_bias_act_op(x, f, noise, None, up, down, padding, flip_filter, gain, "linear", 0.0,
                                         1.0, None, False)[0]
        if nonlinear or need_bias or noise_in_kernel:
            # ONE pass over dy (and pre): the activation/clamp gradient dz with the bias and the noise gradients
            # (sums of dz over everything but channels, and over channels) from the same tiles. The saved pre is
            # FIR + noise, the "conv" of fusegan::conv_epilogue_grad with no scale and no noise of its own.
            dz, _, db, dnoise = conv_epilogue_grad(dy, pre if nonlinear else None, None, None,
                                                   bias if nonlinear else None, act=act, alpha=alpha, gain=act_gain,
                                                   clamp=clamp, need_bias=need_bias, need_noise=noise_in_kernel)
        else:
            dz = dy if act_gain == 1 else dy * act_gain
    if dpre is not None and dpre.numel() > 0:  # pre itself was used (double backward): it comes before the bias
        if noise_in_kernel and dnoise is not None:
            dnoise = dnoise + dpre.sum(dim=1, keepdim=True)
        dz = dpre if dz is None else dz + dpre
    dx = None
    if dz is not None:
        if need_noise:
            if noise_in_kernel and dnoise is not None:
                dnoise = dnoise.sum_to_size(noise_shape).to(noise_dtype)  # [N, 1, H, W] -> the noise's shape
            else:  # a per-channel noise (or only dpre reached it): its gradient is dz over the broadcast dims
                dnoise = dz.sum_to_size(noise_shape).to(noise_dtype)
        if need_x:
            p = _grad_padding(f, ctx.x_hw, (dz.shape[2], dz.shape[3]), up, down, padding)
            dx = _upfirdn2d_op(dz, f, down, up, p, not flip_filter, gain)
    db = db.to(bias.dtype) if need_bias and db is not None else None
    return dx, None, dnoise if need_noise else None, db, None, None, None, None, None, None, None, None, None, None


_upfirdn2d_bias_act_op.register_autograd(_epilogue_backward, setup_context=_epilogue_setup_context)


# ------------------------------------------------------------------------------------------------
# 5. Public functions.


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl=None):
    """Upsample (insert up-1 zeros per pixel), pad (negative crops), FIR filter, downsample a batch of images.

    x: [N, C, H, W] floating tensor. f: None (identity), a 1-D separable filter or a 2-D filter (constant;
    gets no gradient). up/down: positive int or [x, y]. padding: int, [px, py] or [px0, px1, py0, py1], with
    respect to the upsampled image. flip_filter: False = convolution, True = correlation. gain: overall scale.
    impl: None, 'ref' or 'triton' (see kernels/_dispatch.py). Returns [N, C, OH, OW] in x's layout.
    """
    f, up, down, padding, gain = _check_args(x, f, up, down, padding, gain)
    impl = resolve_impl(impl, x.device)
    if impl == "ref":
        return _upfirdn2d_ref(x, f, up=list(up), down=list(down), padding=list(padding), flip_filter=bool(flip_filter), gain=gain)
    return _upfirdn2d_op(x, f, list(up), list(down), list(padding), bool(flip_filter), gain)


def _check_epilogue_args(x, f, up, down, padding, noise, bias, act, alpha, act_gain, clamp):
    """Checks noise/bias/activation against upfirdn2d's output shape; returns (alpha, act_gain, clamp)."""
    fw, fh = _filter_size(f)
    out_shape = (x.shape[0], x.shape[1], _out_size(x.shape[2], up[1], down[1], padding[2], padding[3], fh)[1],
                 _out_size(x.shape[3], up[0], down[0], padding[0], padding[1], fw)[1])
    check_broadcasts_to(noise, "noise", out_shape, x)
    check_channel_vector(bias, "bias", x.shape[1], x)
    act_gain = check_finite_number(act_gain, "act_gain")
    return resolve_act_args(act, alpha, act_gain, clamp)


def upfirdn2d_bias_act(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, noise=None, bias=None,
                       act="linear", alpha=None, act_gain=None, clamp=None, impl=None):
    """upfirdn2d followed by `+ noise`, then bias_act, in ONE pass on the Triton path:

        y = clamp(act_gain * act(upfirdn2d(x, f, up, down, padding, flip_filter, gain) + noise + bias[c]))

    noise: None or a tensor broadcastable to the output [N, C, OH, OW] (StyleGAN2: [N, 1, OH, OW], already scaled
    by its strength). bias: None or [C]. act, alpha, act_gain, clamp: bias_act's act, alpha, gain, clamp (same
    defaults; clamp None or < 0 disables it). The rest is upfirdn2d's. Returns [N, C, OH, OW] in x's layout.
    Without noise, bias, activation, gain or clamp this is exactly `upfirdn2d` (the plain kernel runs).
    """
    f, up, down, padding, gain = _check_args(x, f, up, down, padding, gain)
    alpha, act_gain, clamp = _check_epilogue_args(x, f, up, down, padding, noise, bias, act, alpha, act_gain, clamp)
    impl = resolve_impl(impl, x.device)
    fir_args = (list(up), list(down), list(padding), bool(flip_filter), gain)
    if impl == "ref":
        return _noise_bias_act_ref(_upfirdn2d_ref(x, f, *fir_args), noise, bias, act, alpha, act_gain, clamp)
    if noise is None and bias is None and act == "linear" and act_gain == 1 and clamp is None:
        return _upfirdn2d_op(x, f, *fir_args)
    # In training, keep the pre-activation for the backward (one extra write) instead of recomputing it there.
    save_pre = is_nonlinear(act, clamp) and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, noise, bias))
    y, _ = _upfirdn2d_bias_act_op(x, f, noise, bias, *fir_args, act, alpha, act_gain, clamp, save_pre)
    return y


def setup_filter(f, device=torch.device("cpu"), normalize=True, flip_filter=False, gain=1, separable=None):
    """A float32 FIR filter for upfirdn2d from a tensor, array or list (None or [] = impulse).

    A 1-D input becomes 2-D (outer product) unless `separable`; by default it stays separable only from
    8 taps on. Optionally normalized to unit DC gain, flipped, scaled by gain (gain**0.5 if separable).
    """
    f = torch.as_tensor(1 if f is None else f, dtype=torch.float32)
    if f.ndim > 2:
        raise ValueError(f"f must be 0-D, 1-D or 2-D, got shape {tuple(f.shape)}")
    if f.numel() == 0:
        raise ValueError(f"f must not be empty, got shape {tuple(f.shape)}")
    if f.ndim == 0:
        f = f.reshape(1)
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise ValueError(f"separable=True needs a 1-D f, got shape {tuple(f.shape)}")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def _helper_filter_size(x, f):
    """Filter size for the helpers' padding formulas, after the same checks upfirdn2d makes."""
    check_tensor(x, "x", ndim=4)
    return _filter_size(_check_filter(f, x))


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl=None):
    """Filters x with f; by default the output has x's size. `padding` is added to that (negative crops)."""
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _helper_filter_size(x, f)
    p = [padx0 + fw // 2, padx1 + (fw - 1) // 2, pady0 + fh // 2, pady1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl=None):
    """Upsamples x by `up` with filter f; by default the output is up times x's size. Gain is scaled by up**2
    (upx * upy) so that the zero insertion does not dim the image."""
    upx, upy = _parse_scaling(up, "up")
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _helper_filter_size(x, f)
    p = [
        padx0 + (fw + upx - 1) // 2,
        padx1 + (fw - upx) // 2,
        pady0 + (fh + upy - 1) // 2,
        pady1 + (fh - upy) // 2,
    ]
    gain = check_finite_number(gain, "gain", allow_none=False)
    return upfirdn2d(x, f, up=[upx, upy], padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl=None):
    """Downsamples x by `down` with filter f; by default the output is x's size divided by down."""
    downx, downy = _parse_scaling(down, "down")
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _helper_filter_size(x, f)
    p = [
        padx0 + (fw - downx + 1) // 2,
        padx1 + (fw - downx) // 2,
        pady0 + (fh - downy + 1) // 2,
        pady1 + (fh - downy) // 2,
    ]
    return upfirdn2d(x, f, down=[downx, downy], padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
