"""Fused bias + activation + gain + clamp, with NVIDIA StyleGAN2-ADA's `bias_act` signature and semantics.

    y = clamp(act(x + b broadcast along dim, alpha) * gain, -clamp, clamp)

Where clamping is on (clamp >= 0), the gradient is zero wherever |y| >= clamp (NVIDIA's rule; note that
torch.clamp's own backward would pass the gradient on the boundary itself, so the reference masks explicitly).

Layout: the kernels treat x as the dense block of memory it is (contiguous, channels_last or any other dense
permutation). In memory, such a tensor is [outer, C, inner] with inner = x.stride(dim), whatever the logical
order, so each kernel tiles a 2-D matrix view of it where the channel of an element is either its column
(inner == 1, e.g. NHWC with dim=1, or [N, C] dense layers) or its row modulo C (inner > 1, e.g. NCHW).
The channel is then computed once per row or column of a tile, never per element with an int64 division.

Kernels (one pass over memory each):
  forward   y  = clamp(gain * f(x + b))
  backward  dx = dy * gain * f'(x + b) * [|y| < clamp], y recomputed in registers (not saved); the bias gradient
            db = sum of dx over every dim but `dim` is reduced in the same kernel (per-tile partial sums,
            tl.atomic_add into an fp32/fp64 buffer), so the backward reads dy and x once and writes dx once.
  grad2     dz = g * dy * gain * f''(x + b) * [|y| < clamp] (+ its channel sums): the term that only smooth
            activations have, used when the backward itself is differentiated (R1, path length).
Because of the atomics, db is not bitwise deterministic from run to run on a GPU (the summation order varies).
"""
import math
import numbers
import struct
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._dispatch import resolve_impl
from ._triton import compute_dtype, HAS_TRITON, LAUNCH_OPTIONS, tl, torch_compute_dtype, triton
from ._validate import check_dim, check_finite_number, check_same_device, check_tensor

__all__ = ["activation_funcs", "bias_act"]


@dataclass(frozen=True)
class ActivationSpec:
    """One activation: its PyTorch function (the reference), NVIDIA's defaults, and what the kernels need."""

    func: Callable[..., Tensor]  # func(x, alpha), or NVIDIA's keyword form func(x=x, alpha=alpha)
    def_alpha: float
    def_gain: float
    code: int  # selects the activation inside the Triton kernels (a constexpr)
    has_2nd_grad: bool  # f'' != 0 somewhere: the double backward needs the grad2 kernel

    def __getitem__(self, key):  # NVIDIA's specs are EasyDicts: spec.def_gain and spec['def_gain'] both work
        return getattr(self, key)


_SQRT2 = math.sqrt(2.0)

# NVIDIA ignores alpha for every activation but lrelu (elu is torch's elu with alpha=1); so do we.
activation_funcs = {
    # Called as func(x, alpha) here and as NVIDIA's reference calls it, func(x=x, alpha=alpha).
    "linear": ActivationSpec(lambda x, alpha=0.0, **_: x, 0.0, 1.0, 0, False),
    "relu": ActivationSpec(lambda x, alpha=0.0, **_: F.relu(x), 0.0, _SQRT2, 1, False),
    "lrelu": ActivationSpec(lambda x, alpha=0.2, **_: F.leaky_relu(x, alpha), 0.2, _SQRT2, 2, False),
    "tanh": ActivationSpec(lambda x, alpha=0.0, **_: torch.tanh(x), 0.0, 1.0, 3, True),
    "sigmoid": ActivationSpec(lambda x, alpha=0.0, **_: torch.sigmoid(x), 0.0, 1.0, 4, True),
    "elu": ActivationSpec(lambda x, alpha=0.0, **_: F.elu(x), 0.0, 1.0, 5, True),
    "selu": ActivationSpec(lambda x, alpha=0.0, **_: F.selu(x), 0.0, 1.0, 6, True),
    "softplus": ActivationSpec(lambda x, alpha=0.0, **_: F.softplus(x), 0.0, 1.0, 7, True),
    "swish": ActivationSpec(lambda x, alpha=0.0, **_: torch.sigmoid(x) * x, 0.0, _SQRT2, 8, True),
    "gelu": ActivationSpec(lambda x, alpha=0.0, **_: F.gelu(x), 0.0, 1.0, 9, True),
}

# act name -> kernel code; other kernels (e.g. conv epilogues) reuse `_act_fwd` with these codes.
ACT_CODES = {name: spec.code for name, spec in activation_funcs.items()}

# Numbers the kernels read. A @jit function may only read globals that are tl.constexpr: a GPU compile refuses
# plain floats (the CPU interpreter does not, so only a GPU, or tests/test_nvidia_semantics_audit.py, sees it).
_jit_const = tl.constexpr if HAS_TRITON else float
_SELU_ALPHA = _jit_const(1.6732632423543772848170429916717)
_SELU_SCALE = _jit_const(1.0507009873554804934193349852946)
_SOFTPLUS_THRESHOLD = _jit_const(20.0)  # torch's F.softplus default: above it softplus(z) = z


# ----------------------------------------------------------------------------------------------
# 1. Reference
# ----------------------------------------------------------------------------------------------
def _bias_act_ref(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """Plain differentiable PyTorch (gradients of any order). Arguments are assumed valid."""
    spec = activation_funcs[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = -1.0 if clamp is None else float(clamp)
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    y = spec.func(x, alpha)
    if gain != 1:
        y = y * gain
    if clamp >= 0:
        # The clamped branch is detached, so the gradient is exactly zero where |y| >= clamp, boundary included.
        y = torch.where(y.abs() < clamp, y, y.detach().clamp(-clamp, clamp))
    return y


def _noise_bias_act_ref(x, noise, bias, act, alpha, gain, clamp):
    """`x + noise`, then bias_act in x's dtype (skipped where it is the identity): the reference of the epilogue
    that modulated_conv2d's conv kernel and upfirdn2d_bias_act's FIR kernel fuse. One definition, so the two
    references cannot drift apart. Arguments are valid, gain resolved (resolve_act_args); clamp None: none."""
    if noise is not None:
        x = x + noise.to(x.dtype)
    if bias is not None or act != "linear" or gain != 1 or clamp is not None:
        x = _bias_act_ref(x, None if bias is None else bias.to(x.dtype), 1, act, alpha, gain,
                          -1.0 if clamp is None else clamp)
    return x


# ----------------------------------------------------------------------------------------------
# 2. Triton kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _expm1_nonpos(z):
    """exp(z) - 1 for z <= 0 without the cancellation of the literal formula near 0 (which made fp32 tanh(1e-6)
    1.3% and elu(-1e-6) 4.6% wrong): a Taylor polynomial (Horner, degree 15: fp64-accurate) for z > -0.5, where
    exp(z) - 1 loses the most, and exp(z) - 1 below, where it loses at most a few ulps. Multiply-adds only:
    triton.language has no expm1, and Kahan's log-based trick would depend on how a backend lowers log."""
    t = tl.maximum(z, -0.5)  # the polynomial's branch only; keeps -inf out of it
    p = tl.full(z.shape, 1.0, z.dtype)
    for k in tl.static_range(15, 1, -1):
        p = 1.0 + t * p * (1.0 / k)
    return tl.where(z > -0.5, t * p, tl.exp(z) - 1.0)


@triton.jit
def _log1p_unit(u):
    """log(1 + u) for 0 <= u <= 1, accurate for small u (where 1 + u rounds the information away: softplus(-30)
    came out 0): 2 * atanh(s), s = u / (2 + u) <= 1/9 below u = 0.25, as an odd series in s (8 terms: fp64-
    accurate); log(1 + u) above."""
    s = u / (2.0 + u)
    s2 = s * s
    q = tl.full(u.shape, 1.0 / 15.0, u.dtype)
    for k in tl.static_range(6, -1, -1):
        q = 1.0 / (2 * k + 1) + s2 * q
    return tl.where(u < 0.25, 2.0 * s * q, tl.log(1.0 + u))


@triton.jit
def _tanh(z):
    """tanh(z) = -m / (2 + m), m = expm1(-2|z|), signed: never overflows, and accurate near 0."""
    m = _expm1_nonpos(-2.0 * tl.abs(z))
    t = -m / (2.0 + m)
    return tl.where(z < 0, -t, t)


@triton.jit
def _act_fwd(z, ACT: tl.constexpr, alpha):
    """f(z) for the activation whose code (ACT_CODES) is ACT."""
    if ACT == 0:  # linear
        y = z
    elif ACT == 1:  # relu
        y = tl.where(z > 0, z, 0.0)
    elif ACT == 2:  # lrelu (torch: z > 0 ? z : alpha * z)
        y = tl.where(z > 0, z, z * alpha)
    elif ACT == 3:  # tanh
        y = _tanh(z)
    elif ACT == 4:  # sigmoid
        y = 1.0 / (1.0 + tl.exp(-z))
    elif ACT == 5:  # elu (alpha 1)
        y = tl.where(z > 0, z, _expm1_nonpos(tl.minimum(z, 0.0)))
    elif ACT == 6:  # selu
        y = _SELU_SCALE * tl.where(z > 0, z, _SELU_ALPHA * _expm1_nonpos(tl.minimum(z, 0.0)))
    elif ACT == 7:  # softplus (beta 1, threshold 20, as F.softplus): max(z, 0) + log(1 + exp(-|z|))
        y = tl.where(z > _SOFTPLUS_THRESHOLD, z, tl.maximum(z, 0.0) + _log1p_unit(tl.exp(-tl.abs(z))))
    elif ACT == 8:  # swish
        y = z * 1.0 / (1.0 + tl.exp(-z))
    else:  # gelu, exact: z * Phi(z)
        y = 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
    return y


@triton.jit
def _act_grad(z, ACT: tl.constexpr, alpha):
    """f'(z), with torch's conventions at the kinks (relu'(0) = 0, lrelu'(0) = alpha, elu'(0) = 1)."""
    if ACT == 0:
        d = tl.full(z.shape, 1.0, z.dtype)
    elif ACT == 1:
        d = tl.where(z > 0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where(z > 0, 1.0, alpha)
    elif ACT == 3:
        t = _tanh(z)
        d = 1.0 - t * t
    elif ACT == 4:
        s = 1.0 / (1.0 + tl.exp(-z))
        d = s * (1.0 - s)
    elif ACT == 5:
        d = tl.where(z > 0, 1.0, tl.exp(z))
    elif ACT == 6:
        d = _SELU_SCALE * tl.where(z > 0, 1.0, _SELU_ALPHA * tl.exp(z))
    elif ACT == 7:
        d = tl.where(z > _SOFTPLUS_THRESHOLD, 1.0, 1.0 / (1.0 + tl.exp(-z)))
    elif ACT == 8:
        s = 1.0 / (1.0 + tl.exp(-z))
        d = s * (1.0 + z * (1.0 - s))
    else:
        pdf = 0.3989422804014327 * tl.exp(-0.5 * z * z)
        d = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476)) + z * pdf
    return d.to(z.dtype)


@triton.jit
def _act_grad2(z, ACT: tl.constexpr):
    """f''(z) for the smooth activations (codes 3..9); the piecewise-linear ones never call this."""
    if ACT == 3:
        t = _tanh(z)
        d = -2.0 * t * (1.0 - t * t)
    elif ACT == 4:
        s = 1.0 / (1.0 + tl.exp(-z))
        d = s * (1.0 - s) * (1.0 - 2.0 * s)
    elif ACT == 5:
        d = tl.where(z > 0, 0.0, tl.exp(z))
    elif ACT == 6:
        d = tl.where(z > 0, 0.0, (_SELU_SCALE * _SELU_ALPHA) * tl.exp(z))
    elif ACT == 7:
        s = 1.0 / (1.0 + tl.exp(-z))
        d = tl.where(z > _SOFTPLUS_THRESHOLD, 0.0, s * (1.0 - s))
    elif ACT == 8:
        s = 1.0 / (1.0 + tl.exp(-z))
        d = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    else:
        d = 0.3989422804014327 * tl.exp(-0.5 * z * z) * (2.0 - z * z)
    return d.to(z.dtype)


@triton.jit
def _scalars(alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo, COMPUTE: tl.constexpr):
    """Rebuilds alpha, gain, clamp, each passed as two fp32 halves (Triton passes float args as fp32, which is
    too coarse for fp64; see `_split`). One helper for all three keeps the interpreter's per-call cost down."""
    alpha = tl.cast(alpha_hi, COMPUTE) + tl.cast(alpha_lo, COMPUTE)
    gain = tl.cast(gain_hi, COMPUTE) + tl.cast(gain_lo, COMPUTE)
    clamp = tl.cast(clamp_hi, COMPUTE) + tl.cast(clamp_lo, COMPUTE)
    return alpha, gain, clamp


@triton.jit
def _tile(R, K, C, CHANNEL_IS_COL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's [BLOCK_R, BLOCK_K] tile of the [R, K] memory view: int64 offsets, mask, and channels."""
    pid = tl.program_id(0)
    n_k = tl.cdiv(K, BLOCK_K)
    rows = (pid // n_k).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (pid % n_k).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs = rows[:, None] * K + cols[None, :]
    mask = (rows < R)[:, None] & (cols < K)[None, :]
    if CHANNEL_IS_COL:
        ch = cols
        ch_mask = cols < K
    else:
        ch = rows % C
        ch_mask = rows < R
    return offs, mask, ch, ch_mask


@triton.jit
def _load_z(x_ptr, b_ptr, offs, mask, ch, ch_mask, HAS_BIAS: tl.constexpr, CHANNEL_IS_COL: tl.constexpr,
            COMPUTE: tl.constexpr):
    """z = x + b for the tile, in the compute dtype."""
    z = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    if HAS_BIAS:
        bias = tl.load(b_ptr + ch, mask=ch_mask, other=0.0).to(COMPUTE)
        if CHANNEL_IS_COL:
            z = z + bias[None, :]
        else:
            z = z + bias[:, None]
    return z


@triton.jit
def _add_channel_sums(db_ptr, v, mask, ch, ch_mask, CHANNEL_IS_COL: tl.constexpr):
    """db[ch] += the tile's sum of v per channel: one atomic per tile row (or column), not per element."""
    v = tl.where(mask, v, 0.0)
    if CHANNEL_IS_COL:
        part = tl.sum(v, axis=0)
    else:
        part = tl.sum(v, axis=1)
    tl.atomic_add(db_ptr + ch, part, mask=ch_mask, sem="relaxed")


@triton.jit
def _through_clamp(d, z, alpha, gain, clamp, ACT: tl.constexpr, USE_CLAMP: tl.constexpr):
    """d where the forward's clamp passed y = f(z) * gain through (|y| < clamp), else 0: the clamp's derivative,
    shared by the first and second backward. y is recomputed in registers: cheaper than saving it and reading
    it back."""
    if USE_CLAMP:
        y = _act_fwd(z, ACT, alpha) * gain
        d = tl.where(tl.abs(y) < clamp, d, 0.0)
    return d


@triton.jit
def _bias_act_fwd_kernel(
    x_ptr, b_ptr, y_ptr, R, K, C,
    alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, USE_CLAMP: tl.constexpr, CHANNEL_IS_COL: tl.constexpr,
    COMPUTE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs, mask, ch, ch_mask = _tile(R, K, C, CHANNEL_IS_COL, BLOCK_R, BLOCK_K)
    z = _load_z(x_ptr, b_ptr, offs, mask, ch, ch_mask, HAS_BIAS, CHANNEL_IS_COL, COMPUTE)
    alpha, gain, clamp = _scalars(alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo, COMPUTE)
    y = _act_fwd(z, ACT, alpha) * gain
    if USE_CLAMP:
        y = tl.where(y > clamp, clamp, tl.where(y < -clamp, -clamp, y))  # NaN stays NaN, as torch.clamp
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_act_bwd_kernel(
    dy_ptr, x_ptr, b_ptr, dx_ptr, db_ptr, R, K, C,
    alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, NEED_DB: tl.constexpr, USE_CLAMP: tl.constexpr,
    CHANNEL_IS_COL: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs, mask, ch, ch_mask = _tile(R, K, C, CHANNEL_IS_COL, BLOCK_R, BLOCK_K)
    z = _load_z(x_ptr, b_ptr, offs, mask, ch, ch_mask, HAS_BIAS, CHANNEL_IS_COL, COMPUTE)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    alpha, gain, clamp = _scalars(alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo, COMPUTE)
    dx = _through_clamp(dy * gain * _act_grad(z, ACT, alpha), z, alpha, gain, clamp, ACT, USE_CLAMP)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    if NEED_DB:
        _add_channel_sums(db_ptr, dx, mask, ch, ch_mask, CHANNEL_IS_COL)


@triton.jit
def _bias_act_grad2_kernel(
    g_ptr, dy_ptr, x_ptr, b_ptr, dz_ptr, db_ptr, R, K, C,
    alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, NEED_DB: tl.constexpr, USE_CLAMP: tl.constexpr,
    CHANNEL_IS_COL: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dz = g * dy * gain * f''(z) * mask: the derivative of dx = dy * gain * f'(z) * mask with respect to z."""
    offs, mask, ch, ch_mask = _tile(R, K, C, CHANNEL_IS_COL, BLOCK_R, BLOCK_K)
    z = _load_z(x_ptr, b_ptr, offs, mask, ch, ch_mask, HAS_BIAS, CHANNEL_IS_COL, COMPUTE)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    alpha, gain, clamp = _scalars(alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo, COMPUTE)
    dz = _through_clamp(g * dy * gain * _act_grad2(z, ACT), z, alpha, gain, clamp, ACT, USE_CLAMP)
    tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
    if NEED_DB:
        _add_channel_sums(db_ptr, dz, mask, ch, ch_mask, CHANNEL_IS_COL)


# ----------------------------------------------------------------------------------------------
# 3. Launchers
# ----------------------------------------------------------------------------------------------
_TILE = 4096  # elements per program; a multiple of every BLOCK_K below
_MAX_BLOCK_K_ROWS = 1024  # channel per row: long contiguous rows
_MAX_BLOCK_K_COLS = 64  # channel per column: 64 channels x 64 rows, so db takes one atomic per 64 elements
_NUM_WARPS = 8


def _is_dense(x: Tensor) -> bool:
    """True when x covers its memory exactly once with no gaps (any dim order): the kernels need only that."""
    expected = 1
    for d in sorted((d for d in range(x.ndim) if x.shape[d] != 1), key=x.stride):
        if x.stride(d) != expected:
            return False
        expected *= x.shape[d]
    return True


def _dense(x: Tensor) -> Tensor:
    return x if _is_dense(x) else x.contiguous()


def _like(t: Tensor, x: Tensor) -> Tensor:
    """`t` laid out exactly as dense x, so one offset indexes both: copied only when the layouts differ
    (e.g. the stride-0 gradient of y.sum(), or a contiguous dy for a channels_last x)."""
    if all(t.stride(d) == x.stride(d) for d in range(x.ndim) if x.shape[d] != 1):
        return t
    return torch.empty_like(x, dtype=t.dtype).copy_(t)


def _to_fp32(v: float) -> float:
    """v rounded to fp32 (beyond fp32's range it becomes +-inf, as good as infinite for the fp32 kernels)."""
    try:
        return struct.unpack("f", struct.pack("f", v))[0]
    except OverflowError:
        return math.copysign(math.inf, v)


def _split(v: float):
    """v as two fp32-representable halves, hi + lo == v to about 2**-48 relative (see `_scalars`)."""
    hi = _to_fp32(v)
    return hi, (_to_fp32(v - hi) if math.isfinite(hi) else 0.0)


def _geometry(x: Tensor, dim: int, has_bias: bool):
    """(R, K, C, CHANNEL_IS_COL, BLOCK_R, BLOCK_K, grid) of the [R, K] memory view of dense x."""
    n = x.numel()
    C = x.shape[dim] if has_bias else 1
    if C == 1:  # every element has channel 0
        R, K, chan_is_col = 1, n, False
    elif x.stride(dim) == 1:  # the channel is the fastest axis: [outer, C]
        R, K, chan_is_col = n // C, C, True
    else:  # [outer * C, inner]: one channel per row
        R, K, chan_is_col = n // x.stride(dim), x.stride(dim), False
    block_k = min(triton.next_power_of_2(K), _MAX_BLOCK_K_COLS if chan_is_col else _MAX_BLOCK_K_ROWS)
    block_r = min(triton.next_power_of_2(R), max(1, _TILE // block_k))
    grid = (triton.cdiv(R, block_r) * triton.cdiv(K, block_k),)
    return R, K, C, chan_is_col, block_r, block_k, grid


def _bias_act_fwd_triton(x, b, dim, act, alpha, gain, clamp):
    x = _dense(x)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    R, K, C, chan_is_col, block_r, block_k, grid = _geometry(x, dim, b is not None)
    _bias_act_fwd_kernel[grid](
        x, x if b is None else b.contiguous(), y, R, K, C, *_split(alpha), *_split(gain), *_split(max(clamp, 0.0)),
        ACT=ACT_CODES[act], HAS_BIAS=b is not None, USE_CLAMP=clamp >= 0, CHANNEL_IS_COL=chan_is_col,
        COMPUTE=compute_dtype(x.dtype), BLOCK_R=block_r, BLOCK_K=block_k, num_warps=_NUM_WARPS,
        **LAUNCH_OPTIONS,
    )
    return y


def _launch_grad(kernel, grads, x, b, dim, act, alpha, gain, clamp, need_db):
    """Runs the backward or grad2 kernel: grads (dy, or g and dy) and x in, (out like x, channel sums) out."""
    x = _dense(x)
    grads = [_like(t, x) for t in grads]
    need_db = need_db and b is not None
    out = torch.empty_like(x)
    db = torch.zeros(x.shape[dim] if need_db else 0, dtype=torch_compute_dtype(x.dtype), device=x.device)
    if x.numel() > 0:
        R, K, C, chan_is_col, block_r, block_k, grid = _geometry(x, dim, b is not None)
        kernel[grid](
            # unused pointers get a real tensor (x, out), never an empty tensor's possibly-null pointer
            *grads, x, x if b is None else b.contiguous(), out, db if need_db else out, R, K, C,
            *_split(alpha), *_split(gain), *_split(max(clamp, 0.0)),
            ACT=ACT_CODES[act], HAS_BIAS=b is not None, NEED_DB=need_db, USE_CLAMP=clamp >= 0,
            CHANNEL_IS_COL=chan_is_col, COMPUTE=compute_dtype(x.dtype), BLOCK_R=block_r, BLOCK_K=block_k,
            num_warps=_NUM_WARPS, **LAUNCH_OPTIONS,
        )
    return out, db.to(b.dtype if need_db else x.dtype)


def _bias_act_bwd_triton(dy, x, b, dim, act, alpha, gain, clamp, need_db):
    """(dx, db); db has b's length when need_db, else it is empty."""
    return _launch_grad(_bias_act_bwd_kernel, [dy], x, b, dim, act, alpha, gain, clamp, need_db)


def _bias_act_grad2_triton(g, dy, x, b, dim, act, alpha, gain, clamp, need_db):
    """(dz, dbz): the second-derivative term for x and its channel sums for b (empty unless need_db)."""
    return _launch_grad(_bias_act_grad2_kernel, [g, dy], x, b, dim, act, alpha, gain, clamp, need_db)


# ----------------------------------------------------------------------------------------------
# 4. Custom ops: forward -> grad (dx, db) -> grad2 (the f'' term), each differentiable by the next
# ----------------------------------------------------------------------------------------------
def _out_like(x: Tensor) -> Tensor:
    """What the launchers allocate: x's layout when x is dense, contiguous otherwise."""
    return torch.empty_like(_dense(x))


def _db_like(x: Tensor, b: Optional[Tensor], dim: int, need_db: bool) -> Tensor:
    dtype = b.dtype if (need_db and b is not None) else x.dtype
    return x.new_empty(x.shape[dim] if need_db else 0, dtype=dtype)


@torch.library.custom_op("fusegan::bias_act", mutates_args=())
def _bias_act_op(x: Tensor, b: Optional[Tensor], dim: int, act: str, alpha: float, gain: float,
                 clamp: float) -> Tensor:
    return _bias_act_fwd_triton(x, b, dim, act, alpha, gain, clamp)


@_bias_act_op.register_fake
def _(x, b, dim, act, alpha, gain, clamp):
    return _out_like(x)


@torch.library.custom_op("fusegan::bias_act_grad", mutates_args=())
def _bias_act_grad_op(dy: Tensor, x: Tensor, b: Optional[Tensor], dim: int, act: str, alpha: float, gain: float,
                      clamp: float, need_db: bool) -> tuple[Tensor, Tensor]:
    return _bias_act_bwd_triton(dy, x, b, dim, act, alpha, gain, clamp, need_db)


@_bias_act_grad_op.register_fake
def _(dy, x, b, dim, act, alpha, gain, clamp, need_db):
    return _out_like(x), _db_like(x, b, dim, need_db)


@torch.library.custom_op("fusegan::bias_act_grad2", mutates_args=())
def _bias_act_grad2_op(g: Tensor, dy: Tensor, x: Tensor, b: Optional[Tensor], dim: int, act: str, alpha: float,
                       gain: float, clamp: float, need_db: bool) -> tuple[Tensor, Tensor]:
    return _bias_act_grad2_triton(g, dy, x, b, dim, act, alpha, gain, clamp, need_db)


@_bias_act_grad2_op.register_fake
def _(g, dy, x, b, dim, act, alpha, gain, clamp, need_db):
    return _out_like(x), _db_like(x, b, dim, need_db)


def _fwd_setup_context(ctx, inputs, output):
    x, b, dim, act, alpha, gain, clamp = inputs
    ctx.save_for_backward(x, b)
    ctx.params = (dim, act, alpha, gain, clamp)


def _fwd_backward(ctx, dy):
    x, b = ctx.saved_tensors
    need_db = b is not None and ctx.needs_input_grad[1]
    dx, db = _bias_act_grad_op(dy, x, b, *ctx.params, need_db)
    return dx, (db if need_db else None), None, None, None, None, None


def _grad_setup_context(ctx, inputs, output):
    dy, x, b, dim, act, alpha, gain, clamp, need_db = inputs
    ctx.save_for_backward(dy, x, b)
    ctx.params = (dim, act, alpha, gain, clamp)
    ctx.need_db = need_db


def _grad_backward(ctx, g_dx, g_db):
    """Backward of (dx, db) = grad(dy, x, b). dx is linear in dy; it depends on z = x + b through f'(z)."""
    dy, x, b = ctx.saved_tensors
    dim, act, alpha, gain, clamp = ctx.params
    g = torch.zeros_like(x) if g_dx is None else g_dx
    if ctx.need_db and g_db is not None:  # db = sum of dx over its channel, so g_db reaches every dx of it
        g = g + g_db.to(g.dtype).reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    d_dy = _bias_act_grad_op(g, x, b, dim, act, alpha, gain, clamp, False)[0] if ctx.needs_input_grad[0] else None
    d_x = d_b = None
    need_db = b is not None and ctx.needs_input_grad[2]
    if activation_funcs[act].has_2nd_grad and (ctx.needs_input_grad[1] or need_db):
        d_x, d_b = _bias_act_grad2_op(g, dy, x, b, dim, act, alpha, gain, clamp, need_db)
    return d_dy, d_x, (d_b if need_db else None), None, None, None, None, None, None


_bias_act_op.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)
_bias_act_grad_op.register_autograd(_grad_backward, setup_context=_grad_setup_context)
# bias_act_grad2 has no autograd: third-order gradients would need f''' and nothing in a GAN asks for them.


# ----------------------------------------------------------------------------------------------
# 5. Public function
# ----------------------------------------------------------------------------------------------
def is_nonlinear(act, clamp):
    """Whether an epilogue's gradient depends on its pre-activation (otherwise it is dy * gain)."""
    return act != "linear" or clamp is not None


def resolve_act_args(act, alpha, gain, clamp):
    """Checks `act`, `alpha`, `gain`, `clamp` and fills in the activation's defaults (NVIDIA's).

    Returns (alpha, gain, clamp) as floats, with clamp None when clamping is off (None or < 0).
    Shared by every op whose epilogue applies an activation, so they agree on defaults and errors.
    """
    if not isinstance(act, str) or act not in activation_funcs:
        raise ValueError(f"act must be one of {sorted(activation_funcs)}, got {act!r}")
    spec = activation_funcs[act]
    alpha = check_finite_number(alpha, "alpha")
    gain = check_finite_number(gain, "gain")
    clamp = check_finite_number(clamp, "clamp")
    alpha = spec.def_alpha if alpha is None else alpha
    gain = spec.def_gain if gain is None else gain
    clamp = None if clamp is None or clamp < 0 else clamp
    return alpha, gain, clamp


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, impl=None):
    """Adds bias `b` along `dim` of `x`, applies activation `act`, scales by `gain` and clamps to +-`clamp`.

    Same signature and semantics as NVIDIA StyleGAN2-ADA's `torch_utils.ops.bias_act.bias_act`:
    alpha, gain default to the activation's (see `activation_funcs`); clamp None or < 0 disables clamping,
    and where clamping is on the gradient is zero wherever |y| >= clamp. `impl` is 'ref', 'triton' or None
    (see kernels/_dispatch.py). Returns a tensor of x's shape, dtype and (dense) layout.
    """
    check_tensor(x, "x")
    if b is not None:  # as NVIDIA, dim only means something when there is a bias
        check_tensor(b, "b", ndim=1, dtypes=None)
        dim = check_dim(dim, x.ndim)
        if b.shape[0] != x.shape[dim]:
            raise ValueError(f"b has length {b.shape[0]} but x.shape[{dim}] is {x.shape[dim]}")
        if b.dtype != x.dtype:
            raise TypeError(f"b has dtype {b.dtype} but x has dtype {x.dtype}; they must match")
        check_same_device(x, "x", b, "b")
    else:
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        dim = 0
    alpha, gain, clamp = resolve_act_args(act, alpha, gain, clamp)
    clamp = -1.0 if clamp is None else clamp  # the kernels' "no clamp"

    impl = resolve_impl(impl, x.device)
    if impl == "ref":
        return _bias_act_ref(x, b, dim, act, alpha, gain, clamp)
    return _bias_act_op(_dense(x), b, dim, act, alpha, gain, clamp)
