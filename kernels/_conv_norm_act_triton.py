"""Triton kernels and launchers for conv2d_norm_act (see conv_norm_act.py for the op as a whole).

Every convolution here is one of the three partial derivatives of the trilinear form

    B(L, S, W) = sum S[n, a, oh, ow] * W[a, b, kh, kw] * L[n, b, ih(oh, kh), iw(ow, kw)],
    ih = oh * stride - pad + kh * dil   (reflected into [0, H) when padding_mode='reflect')

where L is the larger ("input side" of a normal conv) tensor and S the smaller one:
  * `conv`  with TRANSPOSED=False computes S from (L, W): a normal conv, nn.Conv2d.
  * `conv`  with TRANSPOSED=True  computes L from (S, W): a transposed conv, nn.ConvTranspose2d,
    and also the input gradient of a normal conv.
  * `wgrad` computes W from (L, S): the weight gradient of either.
So each one's backward is made of the other two, and gradients of any order stay on these kernels.
The conv kernel is an implicit GEMM (rows = output pixels, columns = output channels, reduction =
input channels x taps; tl.dot with fp32 accumulation, an exact multiply-sum for fp64; transposed
convs one output phase per program, so taps that cannot reach a phase are skipped) whose epilogue adds the bias,
writes per-tile partial statistics (sum and centred sum of squares, merged with Chan's formula in
`merge_partial_stats`, so no catastrophic cancellation and no atomics) and applies an activation.
"""
import torch

from ._dispatch import interpreter_active
from ._implicit_gemm import _mma  # acc += a @ b, shared with the modulated-conv kernels
from ._triton import compute_dtype, conv_allows_tf32, LAUNCH_OPTIONS, tl, torch_compute_dtype, triton
from ._validate import dense as _dense  # NCHW- or NHWC-dense as it is, else a contiguous copy
from ._validate import conv_out_empty
from ._validate import same_layout_empty as _out_like  # outputs in x's layout (contiguous or channels_last)

ACT_CODES = {"linear": 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4}
STATS_NONE, STATS_BATCH, STATS_INSTANCE = 0, 1, 2


# ----------------------------------------------------------------------------------------------
# Shared device helpers
# ----------------------------------------------------------------------------------------------
@triton.jit
def _load_alpha(alpha_ptr, ACT: tl.constexpr, CDTYPE: tl.constexpr):
    # alpha arrives as a 1-element tensor in the compute dtype: a Python float argument would be
    # passed as fp32, which is not exact enough for the fp64 (gradcheck) path.
    if ACT == 2:
        alpha = tl.load(alpha_ptr).to(CDTYPE)
    else:
        alpha = 0.0
    return alpha


@triton.jit
def _apply_act(z, alpha, ACT: tl.constexpr):
    if ACT == 1:
        z = tl.where(z > 0, z, 0.0)
    elif ACT == 2:
        z = tl.where(z > 0, z, z * alpha)
    elif ACT == 3:
        z = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)  # tanh, saturating cleanly at +-1
    elif ACT == 4:
        z = 1.0 / (1.0 + tl.exp(-z))
    return z


@triton.jit
def _act_grad_from_out(y, alpha, ACT: tl.constexpr):
    """d act(z) / dz from the activation's output y (valid because alpha >= 0 is enforced)."""
    if ACT == 0:
        d = tl.full(y.shape, 1.0, y.dtype)
    elif ACT == 1:
        d = tl.where(y > 0, 1.0, 0.0).to(y.dtype)
    elif ACT == 2:
        d = tl.where(y > 0, 1.0, alpha).to(y.dtype)
    elif ACT == 3:
        d = 1.0 - y * y
    else:
        d = y * (1.0 - y)
    return d


@triton.jit
def _act_grad_from_pre(z, alpha, ACT: tl.constexpr):
    """d act(z) / dz from the pre-activation z: the same as from y = act(z), since with alpha >= 0, y > 0
    exactly where z > 0, and tanh' and sigmoid' are functions of their outputs anyway (the same ops as before)."""
    return _act_grad_from_out(_apply_act(z, alpha, ACT), alpha, ACT)


@triton.jit
def _tap_index(o, k, size, stride, pad, dil, TRANSPOSED: tl.constexpr, REFLECT: tl.constexpr):
    """Source index along one axis for output index `o` and tap `k`, and whether it is in range."""
    if TRANSPOSED:
        # o = i * stride - pad + k * dil  ->  i = (o + pad - k * dil) / stride when it divides.
        t = o + pad - k * dil
        t_pos = tl.where(t >= 0, t, 0)
        i = t_pos // stride
        ok = (t >= 0) & (t_pos - i * stride == 0) & (i < size)
    else:
        i = o * stride - pad + k * dil
        if REFLECT:
            i = tl.where(i < 0, -i, i)
            i = tl.where(i >= size, 2 * (size - 1) - i, i)
            ok = (i >= 0) & (i < size)
        else:
            ok = (i >= 0) & (i < size)
    return i, ok


# ----------------------------------------------------------------------------------------------
# Implicit-GEMM convolution with bias / statistics / activation epilogue
# ----------------------------------------------------------------------------------------------
@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, z_ptr, psum_ptr, pm2_ptr, pcnt_ptr,
    N, C_IN, H, W, C_OUT, OH, OW, TILES_PER_SAMPLE, GRID_M,
    sxn, sxc, sxh, sxw,
    swo, swi, swh, sww,
    syn, syc, syh, syw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, alpha_ptr,
    KH: tl.constexpr, KW: tl.constexpr, TRANSPOSED: tl.constexpr, REFLECT: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STATS: tl.constexpr, CDTYPE: tl.constexpr,
    USE_DOT: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr, SAVE_PRE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ROW_IDX: tl.constexpr,
):
    alpha = _load_alpha(alpha_ptr, ACT, CDTYPE)
    # Row (output pixel) index math in int32 unless there are 2**31 output pixels (ROW_IDX): 64-bit row
    # vectors doubled the registers of the tile loop and made the big tiles spill on sm_90
    # (benchmarks/hopper_compile.py). Memory offsets are int64 regardless.
    pid_m = tl.program_id(0).to(ROW_IDX)
    pid_n = tl.program_id(1)
    pid_p = tl.program_id(2)
    # A transposed conv is computed one output phase (oh % stride, ow % stride) per program: all
    # rows of a tile then share the taps that reach them, so the other taps are skipped whole
    # (a gather over all taps would waste (stride**2 - 1) / stride**2 of the MMAs at stride 2).
    if TRANSPOSED:
        step_h = stride_h
        step_w = stride_w
        ph_h = pid_p // stride_w
        ph_w = pid_p % stride_w
    else:
        step_h = 1
        step_w = 1
        ph_h = 0
        ph_w = 0
    oh_n = (OH - ph_h + step_h - 1) // step_h  # this phase's output grid
    ow_n = (OW - ph_w + step_w - 1) // step_w
    ow_div = tl.maximum(ow_n, 1)
    phase_hw = oh_n * ow_n
    if STATS == 2:
        # InstanceNorm statistics are per sample: a tile never straddles two samples.
        n_idx = pid_m // TILES_PER_SAMPLE
        q = (pid_m % TILES_PER_SAMPLE) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = q < phase_hw
        n_row = tl.zeros([BLOCK_M], dtype=ROW_IDX) + n_idx
    else:
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < N * phase_hw
        n_row = rows // tl.maximum(phase_hw, 1)
        q = rows % tl.maximum(phase_hw, 1)
    oh = ph_h + step_h * (q // ow_div)
    ow = ph_w + step_w * (q % ow_div)
    co = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = co < C_OUT

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=CDTYPE)
    for kh in range(KH):
        # For a transposed conv, tap kh reaches this phase only if stride divides ph + pad - kh * dil.
        live_h = True
        if TRANSPOSED:
            live_h = (ph_h + pad_h - kh * dil_h) % stride_h == 0
        if live_h:
            ih, ok_h = _tap_index(oh, kh, H, stride_h, pad_h, dil_h, TRANSPOSED, REFLECT)
            for kw in range(KW):
                live_w = True
                if TRANSPOSED:
                    live_w = (ph_w + pad_w - kw * dil_w) % stride_w == 0
                if live_w:
                    iw, ok_w = _tap_index(ow, kw, W, stride_w, pad_w, dil_w, TRANSPOSED, REFLECT)
                    ok = row_ok & ok_h & ok_w
                    x_rows = x_ptr + (n_row.to(tl.int64) * sxn + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw)
                    w_tap = w_ptr + kh * swh + kw * sww
                    for c0 in range(0, C_IN, BLOCK_K):
                        ci = c0 + tl.arange(0, BLOCK_K)
                        ci_ok = ci < C_IN
                        a = tl.load(x_rows[:, None] + ci[None, :] * sxc, mask=ok[:, None] & ci_ok[None, :],
                                    other=0.0)
                        b = tl.load(w_tap + ci[:, None] * swi + co[None, :] * swo,
                                    mask=ci_ok[:, None] & col_ok[None, :], other=0.0)
                        acc = _mma(a, b.to(a.dtype), acc, USE_DOT, ALLOW_TF32, UPCAST)

    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=col_ok, other=0.0).to(CDTYPE)[None, :]
    if STATS != 0:
        # Per-tile count, sum and sum of squares about the tile mean (merged later in torch).
        valid = row_ok[:, None] & col_ok[None, :]
        cnt = tl.sum(row_ok.to(CDTYPE), axis=0)
        s = tl.sum(tl.where(valid, acc, 0.0), axis=0)
        d = tl.where(valid, acc - (s / tl.maximum(cnt, 1.0))[None, :], 0.0)
        m2 = tl.sum(d * d, axis=0)
        tile = pid_p * GRID_M + pid_m
        tl.store(psum_ptr + tile * C_OUT + co, s, mask=col_ok)
        tl.store(pm2_ptr + tile * C_OUT + co, m2, mask=col_ok)
        if pid_n == 0:
            tl.store(pcnt_ptr + tile, cnt)
    y_off = (n_row.to(tl.int64)[:, None] * syn + co[None, :].to(tl.int64) * syc
             + (oh.to(tl.int64) * syh + ow * syw)[:, None])
    if SAVE_PRE:  # z, laid out like y: the backward's own copy of what y's sign says (see conv_fwd)
        tl.store(z_ptr + y_off, acc.to(z_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
    acc = _apply_act(acc, alpha, ACT)
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Weight gradient: W[a, b, kh, kw] = sum_{n, oh, ow} S[n, a, oh, ow] * L[n, b, ih, iw]
# ----------------------------------------------------------------------------------------------
@triton.jit
def _conv_wgrad_kernel(
    l_ptr, s_ptr, out_ptr,
    N, C_L, H, W, C_S, OH, OW, R_PER_SPLIT,
    sln, slc, slh, slw,
    ssn, ssc, ssh, ssw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, REFLECT: tl.constexpr, CDTYPE: tl.constexpr,
    USE_DOT: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_a = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_z = tl.program_id(2)  # (split, tap) pairs: split-K keeps all SMs busy when C is small
    split = pid_z // (KH * KW)
    tap = pid_z % (KH * KW)
    kh = tap // KW
    kw = tap % KW
    a_idx = pid_a * BLOCK_M + tl.arange(0, BLOCK_M)
    b_idx = pid_b * BLOCK_N + tl.arange(0, BLOCK_N)
    a_ok = a_idx < C_S
    b_ok = b_idx < C_L
    ohw = OH * OW
    r_total = N * ohw
    r_begin = split.to(tl.int64) * R_PER_SPLIT
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=CDTYPE)
    for r0 in range(0, R_PER_SPLIT, BLOCK_K):
        r = r_begin + r0 + tl.arange(0, BLOCK_K)
        r_ok = (r < r_total) & (r0 + tl.arange(0, BLOCK_K) < R_PER_SPLIT)
        n = r // ohw
        pix = r % ohw
        oh = pix // OW
        ow = pix % OW
        ih, ok_h = _tap_index(oh, kh, H, stride_h, pad_h, dil_h, False, REFLECT)
        iw, ok_w = _tap_index(ow, kw, W, stride_w, pad_w, dil_w, False, REFLECT)
        s_tile = tl.load(s_ptr + n[None, :] * ssn + a_idx[:, None] * ssc + (oh * ssh + ow * ssw)[None, :],
                         mask=a_ok[:, None] & r_ok[None, :], other=0.0)
        l_ok = r_ok & ok_h & ok_w
        l_tile = tl.load(l_ptr + (n * sln + ih.to(tl.int64) * slh + iw.to(tl.int64) * slw)[:, None]
                         + b_idx[None, :] * slc, mask=l_ok[:, None] & b_ok[None, :], other=0.0)
        acc = _mma(s_tile, l_tile.to(s_tile.dtype), acc, USE_DOT, ALLOW_TF32, UPCAST)
    # out is a [SPLIT, C_S, C_L, KH, KW] fp32/fp64 buffer, summed over SPLIT by the launcher.
    off = ((split.to(tl.int64) * C_S + a_idx[:, None]) * C_L + b_idx[None, :]) * (KH * KW) + tap
    tl.store(out_ptr + off, acc, mask=a_ok[:, None] & b_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Normalize + affine + activation (forward) and its fused backward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _norm_tile(pid_r, N, C, HW, TILES_PER_SAMPLE, PER_SAMPLE: tl.constexpr, BLOCK_R: tl.constexpr,
               BLOCK_C: tl.constexpr):
    """The [BLOCK_R, BLOCK_C] tile of the three normalize kernels (one grid, so one definition): rows are
    flattened (n, pixel), per-sample tiles when statistics are per sample. Returns (n, pix, c, c_ok, mask)."""
    if PER_SAMPLE:
        n_idx = pid_r // TILES_PER_SAMPLE
        pix = (pid_r % TILES_PER_SAMPLE) * BLOCK_R + tl.arange(0, BLOCK_R)
        ok = pix < HW
        n = tl.zeros([BLOCK_R], dtype=tl.int64) + n_idx
    else:
        rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        ok = rows < N * HW
        n = rows // HW
        pix = rows % HW
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    return n, pix, c, c_ok, ok[:, None] & c_ok[None, :]


@triton.jit
def _load_norm_params(mean_ptr, rstd_ptr, nw_ptr, nb_ptr, n, c, c_ok, C,
                      INSTANCE: tl.constexpr, HAS_AFFINE: tl.constexpr, CDTYPE: tl.constexpr):
    if INSTANCE:
        s_off = n[:, None] * C + c[None, :]
        mean = tl.load(mean_ptr + s_off, mask=c_ok[None, :], other=0.0).to(CDTYPE)
        rstd = tl.load(rstd_ptr + s_off, mask=c_ok[None, :], other=0.0).to(CDTYPE)
    else:
        mean = tl.load(mean_ptr + c, mask=c_ok, other=0.0).to(CDTYPE)[None, :]
        rstd = tl.load(rstd_ptr + c, mask=c_ok, other=0.0).to(CDTYPE)[None, :]
    if HAS_AFFINE:
        gamma = tl.load(nw_ptr + c, mask=c_ok, other=0.0).to(CDTYPE)[None, :]
        beta = tl.load(nb_ptr + c, mask=c_ok, other=0.0).to(CDTYPE)[None, :]
    else:
        gamma = tl.full([1, 1], 1.0, CDTYPE)
        beta = tl.full([1, 1], 0.0, CDTYPE)
    return mean, rstd, gamma, beta


@triton.jit
def _norm_act_grad_tile(g_ptr, y_ptr, mean_ptr, rstd_ptr, nw_ptr, nb_ptr, n, pix, c, c_ok, m, C,
                        sgn, sgc, sgp, syn, syc, syp, alpha,
                        INSTANCE: tl.constexpr, HAS_AFFINE: tl.constexpr, ACT: tl.constexpr, CDTYPE: tl.constexpr):
    """xhat = (y - mean) * rstd and dz = g * act'(xhat * gamma + beta) of a tile: the backward's reduce pass sums
    dz and the apply pass recomputes it (cheaper than storing it), so both must compute it the same way.
    Returns (xhat, dz, rstd, gamma)."""
    g = tl.load(g_ptr + (n * sgn + pix * sgp)[:, None] + c[None, :] * sgc, mask=m, other=0.0).to(CDTYPE)
    y = tl.load(y_ptr + (n * syn + pix * syp)[:, None] + c[None, :] * syc, mask=m, other=0.0).to(CDTYPE)
    mean, rstd, gamma, beta = _load_norm_params(mean_ptr, rstd_ptr, nw_ptr, nb_ptr, n, c, c_ok, C,
                                                INSTANCE, HAS_AFFINE, CDTYPE)
    xhat = (y - mean) * rstd
    return xhat, g * _act_grad_from_pre(xhat * gamma + beta, alpha, ACT), rstd, gamma


@triton.jit
def _norm_act_fwd_kernel(
    y_ptr, out_ptr, mean_ptr, rstd_ptr, nw_ptr, nb_ptr,
    N, C, HW, TILES_PER_SAMPLE, syn, syc, syp, son, soc, sop, alpha_ptr,
    INSTANCE: tl.constexpr, HAS_AFFINE: tl.constexpr, ACT: tl.constexpr, CDTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    alpha = _load_alpha(alpha_ptr, ACT, CDTYPE)
    n, pix, c, c_ok, m = _norm_tile(tl.program_id(0).to(tl.int64), N, C, HW, TILES_PER_SAMPLE, INSTANCE, BLOCK_R,
                                    BLOCK_C)
    y = tl.load(y_ptr + (n * syn + pix * syp)[:, None] + c[None, :] * syc, mask=m, other=0.0).to(CDTYPE)
    mean, rstd, gamma, beta = _load_norm_params(mean_ptr, rstd_ptr, nw_ptr, nb_ptr, n, c, c_ok, C,
                                                INSTANCE, HAS_AFFINE, CDTYPE)
    z = _apply_act((y - mean) * rstd * gamma + beta, alpha, ACT)
    tl.store(out_ptr + (n * son + pix * sop)[:, None] + c[None, :] * soc, z.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _norm_act_bwd_reduce_kernel(
    g_ptr, y_ptr, mean_ptr, rstd_ptr, nw_ptr, nb_ptr, psum_ptr, psumx_ptr,
    N, C, HW, TILES_PER_SAMPLE, sgn, sgc, sgp, syn, syc, syp, alpha_ptr,
    INSTANCE: tl.constexpr, HAS_AFFINE: tl.constexpr, ACT: tl.constexpr, CDTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Activation gradient dz = g * act'(z) and, in the same pass, per-tile sums of dz and dz * xhat."""
    alpha = _load_alpha(alpha_ptr, ACT, CDTYPE)
    pid_r = tl.program_id(0).to(tl.int64)
    n, pix, c, c_ok, m = _norm_tile(pid_r, N, C, HW, TILES_PER_SAMPLE, INSTANCE, BLOCK_R, BLOCK_C)
    xhat, dz, _, _ = _norm_act_grad_tile(g_ptr, y_ptr, mean_ptr, rstd_ptr, nw_ptr, nb_ptr, n, pix, c, c_ok, m, C,
                                         sgn, sgc, sgp, syn, syc, syp, alpha, INSTANCE, HAS_AFFINE, ACT, CDTYPE)
    dz = tl.where(m, dz, 0.0)
    tl.store(psum_ptr + pid_r * C + c, tl.sum(dz, axis=0), mask=c_ok)
    tl.store(psumx_ptr + pid_r * C + c, tl.sum(dz * xhat, axis=0), mask=c_ok)


@triton.jit
def _norm_act_bwd_apply_kernel(
    g_ptr, y_ptr, dy_ptr, mean_ptr, rstd_ptr, nw_ptr, nb_ptr, sdz_ptr, sdzx_ptr,
    N, C, HW, TILES_PER_SAMPLE, count, sgn, sgc, sgp, syn, syc, syp, sdn, sdc, sdp, alpha_ptr,
    INSTANCE: tl.constexpr, HAS_AFFINE: tl.constexpr, ACT: tl.constexpr, CDTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dy = gamma * rstd * (dz - mean(dz) - xhat * mean(dz * xhat)): the normalization's backward."""
    alpha = _load_alpha(alpha_ptr, ACT, CDTYPE)
    n, pix, c, c_ok, m = _norm_tile(tl.program_id(0).to(tl.int64), N, C, HW, TILES_PER_SAMPLE, INSTANCE, BLOCK_R,
                                    BLOCK_C)
    xhat, dz, rstd, gamma = _norm_act_grad_tile(g_ptr, y_ptr, mean_ptr, rstd_ptr, nw_ptr, nb_ptr, n, pix, c, c_ok,
                                                m, C, sgn, sgc, sgp, syn, syc, syp, alpha,
                                                INSTANCE, HAS_AFFINE, ACT, CDTYPE)
    if INSTANCE:
        s_off = n[:, None] * C + c[None, :]
        sdz = tl.load(sdz_ptr + s_off, mask=m, other=0.0)
        sdzx = tl.load(sdzx_ptr + s_off, mask=m, other=0.0)
    else:
        sdz = tl.load(sdz_ptr + c, mask=c_ok, other=0.0)[None, :]
        sdzx = tl.load(sdzx_ptr + c, mask=c_ok, other=0.0)[None, :]
    dy = gamma * rstd * (dz - sdz / count - xhat * (sdzx / count))
    tl.store(dy_ptr + (n * sdn + pix * sdp)[:, None] + c[None, :] * sdc, dy.to(dy_ptr.dtype.element_ty), mask=m)


@triton.jit
def _act_grad_kernel(g_ptr, y_ptr, out_ptr, numel, alpha_ptr,
                     ACT: tl.constexpr, CDTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """dz = g * act'(z) from the activation output y; g, y, out share one dense layout."""
    alpha = _load_alpha(alpha_ptr, ACT, CDTYPE)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < numel
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(CDTYPE)
    y = tl.load(y_ptr + offs, mask=m, other=0.0).to(CDTYPE)
    tl.store(out_ptr + offs, (g * _act_grad_from_out(y, alpha, ACT)).to(out_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------
# Launchers (no argument checks: the public function did them)
# ----------------------------------------------------------------------------------------------
def _pow2_at_least(n, lo, hi):
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def _gemm_blocks(m, n, k, dtype):
    """(BLOCK_M, BLOCK_N, BLOCK_K): tensor-core tiles, or small ones for fp64 (its fallback holds an M*K*N product)."""
    if interpreter_active():
        # The CPU interpreter costs per instruction, not per element: fewer, larger K steps.
        return _pow2_at_least(m, 16, 64), _pow2_at_least(n, 16, 64), _pow2_at_least(k, 16, 64)
    if dtype == torch.float64:
        return _pow2_at_least(m, 16, 32), _pow2_at_least(n, 16, 32), 8
    # Tensor-core tiles, not timed on a GPU yet. Compiled for sm_90 (benchmarks/hopper_compile.py) over the
    # DCGAN and U-Net convs: BLOCK_K 64 spilled the im2col gather's address and mask tiles even at 8 warps, and
    # 128x128x32 tiles still spilled up to 376 B per thread (2.7 KB over 52 kernels, fp32/TF32 and bf16 alike);
    # 64x128x32 spills at most 32 B in one kernel (64-row bf16 tiles still lower to wgmma).
    # fp32 without TF32 (the engine's --precision fp32) runs tl.dot as FMAs with both operand tiles in registers:
    # BLOCK_K 32 spilled up to 824 B per thread (1.3 KB over 21 of 86 kernels); 16 spills at most 48 B (0.4 KB),
    # as the implicit GEMM found for the same case.
    bk = 16 if dtype == torch.float32 and not conv_allows_tf32(dtype) else 32
    return _pow2_at_least(m, 16, 64), _pow2_at_least(n, 16, 128), _pow2_at_least(k, 16, bk)


def _num_warps(block_m, block_n):
    # 8 warps from 64x64 tiles up: with 4, the 128x64 and 32x128 tiles spilled registers on sm_90.
    return 8 if block_m * block_n >= 64 * 64 else 4


def _dot_flags(dtype):
    # fp32 convs use TF32 exactly when cuDNN would (on by default).
    return dict(USE_DOT=dtype != torch.float64,
                ALLOW_TF32=conv_allows_tf32(dtype),
                UPCAST=dtype == torch.bfloat16 and interpreter_active())


_ALPHA_CACHE = {}


def _alpha_tensor(alpha, act_code, like):
    """lrelu's slope as a 1-element tensor (cached: one per value, dtype and device); any pointer otherwise."""
    if act_code != ACT_CODES["lrelu"]:
        return like
    key = (float(alpha), torch_compute_dtype(like.dtype), like.device)
    t = _ALPHA_CACHE.get(key)
    if t is None:
        t = _ALPHA_CACHE[key] = torch.full((1,), key[0], dtype=key[1], device=like.device)
    return t


def conv_fwd(x, w, bias, geom, transposed, reflect, out_hw, act_code, alpha, stats, save_pre=False):
    """Launches the implicit-GEMM conv. Returns (y, partial_sum, partial_m2, partial_count, tile_group, z).

    z: with `save_pre`, the pre-activation (laid out like y) stored by the same epilogue, else empty. A
    LeakyReLU backward needs only sign(z) = sign(y), but torch's LeakyReLU saves its input, so a user may
    change y in place (`y.add_(skip)`) before backward; reading y then would fail autograd's version check.

    `w` is indexed as [C_S, C_L, KH, KW]: [C_out, C_in] for a normal conv, [C_in, C_out] for a
    transposed one (exactly how nn.Conv2d / nn.ConvTranspose2d store their weights). The partial
    statistics are per tile; tile_group[t] is the sample of tile t for InstanceNorm (else 0).
    """
    x = _dense(x)
    (sh, sw), (ph, pw), (dh, dw) = geom
    N, C_in, H, W = x.shape
    C_out = w.shape[1] if transposed else w.shape[0]
    KH, KW = w.shape[2], w.shape[3]
    OH, OW = out_hw
    y = conv_out_empty((N, C_out, OH, OW), x, w)
    z = torch.empty_like(y) if save_pre else y.new_empty(0)
    phases = sh * sw if transposed else 1
    # Rows of the largest phase (phase 0); smaller phases mask their extra rows.
    phase_hw = triton.cdiv(OH, sh) * triton.cdiv(OW, sw) if transposed else OH * OW
    # Per-sample (InstanceNorm) tiles should not be much taller than one sample's pixels.
    rows = phase_hw if stats == STATS_INSTANCE else N * phase_hw
    BLOCK_M, BLOCK_N, BLOCK_K = _gemm_blocks(rows, C_out, C_in, x.dtype)
    if stats == STATS_INSTANCE:
        tiles_per_sample = triton.cdiv(phase_hw, BLOCK_M)
        grid_m = N * tiles_per_sample
    else:
        tiles_per_sample = 1
        grid_m = triton.cdiv(N * phase_hw, BLOCK_M)
    sdt = torch_compute_dtype(x.dtype)
    if stats:
        psum = torch.empty((phases * grid_m, C_out), dtype=sdt, device=x.device)
        pm2 = torch.empty((phases * grid_m, C_out), dtype=sdt, device=x.device)
        pcnt = torch.empty((phases * grid_m,), dtype=sdt, device=x.device)
    else:
        psum = pm2 = pcnt = y  # unused
    # w's strides as [C_S, C_L, KH, KW]; the kernel wants [out channel, in channel] strides.
    swo, swi = (w.stride(1), w.stride(0)) if transposed else (w.stride(0), w.stride(1))
    grid = (grid_m, triton.cdiv(C_out, BLOCK_N), phases)
    _conv_fwd_kernel[grid](
        x, w, bias if bias is not None else w, y, z if save_pre else y, psum, pm2, pcnt,
        N, C_in, H, W, C_out, OH, OW, tiles_per_sample, grid_m,
        *x.stride(), swo, swi, w.stride(2), w.stride(3), *y.stride(),
        sh, sw, ph, pw, dh, dw, _alpha_tensor(alpha, act_code, x),
        KH=KH, KW=KW, TRANSPOSED=transposed, REFLECT=reflect, HAS_BIAS=bias is not None,
        ACT=act_code, STATS=stats, CDTYPE=compute_dtype(x.dtype), **_dot_flags(x.dtype), SAVE_PRE=save_pre,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=_num_warps(BLOCK_M, BLOCK_N),
        ROW_IDX=tl.int64 if N * phase_hw + BLOCK_M >= 2**31 else tl.int32,
        **LAUNCH_OPTIONS,
    )
    if stats == STATS_INSTANCE:
        group = (torch.arange(grid_m, device=x.device) // tiles_per_sample).repeat(phases)
    else:
        group = None
    return y, psum, pm2, pcnt, group, z


def merge_partial_stats(psum, pm2, pcnt, group, n_groups):
    """Chan's parallel merge of per-tile (count, sum, centred M2) into mean and biased variance.

    Without `group` every tile belongs to one group (BatchNorm: result [C]); with it, tile t
    belongs to group[t] (InstanceNorm: the sample; result [n_groups, C])."""
    cnt = pcnt.unsqueeze(1)
    tile_mean = torch.where(cnt > 0, psum / cnt.clamp_min(1), 0.0)
    if group is None:
        total = cnt.sum(0)
        mean = psum.sum(0) / total
        m2 = pm2.sum(0) + (cnt * (tile_mean - mean) ** 2).sum(0)
        return mean, m2 / total
    C = psum.shape[1]
    zeros = psum.new_zeros((n_groups, C))
    total = psum.new_zeros((n_groups, 1)).index_add_(0, group, cnt)
    mean = zeros.index_add(0, group, psum) / total
    dev = cnt * (tile_mean - mean[group]) ** 2
    m2 = zeros.index_add(0, group, pm2) + zeros.index_add(0, group, dev)
    return mean, m2 / total


def conv_wgrad(L, S, geom, reflect, kernel_hw, out_dtype):
    """W[a, b, kh, kw] = sum S[n, a, oh, ow] * L[n, b, ih, iw]; shape [C_S, C_L, KH, KW]."""
    L, S = _dense(L), _dense(S)
    (sh, sw), (ph, pw), (dh, dw) = geom
    N, C_L, H, W = L.shape
    _, C_S, OH, OW = S.shape
    KH, KW = kernel_hw
    BLOCK_M, BLOCK_N, BLOCK_K = _gemm_blocks(C_S, C_L, 64 if interpreter_active() else 32, L.dtype)
    r_total = N * OH * OW
    tiles = triton.cdiv(C_S, BLOCK_M) * triton.cdiv(C_L, BLOCK_N) * KH * KW
    # Split the reduction over output pixels so that small-channel layers still fill the GPU.
    split = max(1, min(triton.cdiv(r_total, 1024), 256 // max(tiles, 1)))
    r_per_split = triton.cdiv(triton.cdiv(r_total, split), BLOCK_K) * BLOCK_K
    split = triton.cdiv(r_total, r_per_split)
    acc_dtype = torch_compute_dtype(L.dtype)
    out = torch.empty((split, C_S, C_L, KH, KW), dtype=acc_dtype, device=L.device)
    grid = (triton.cdiv(C_S, BLOCK_M), triton.cdiv(C_L, BLOCK_N), split * KH * KW)
    _conv_wgrad_kernel[grid](
        L, S, out, N, C_L, H, W, C_S, OH, OW, r_per_split,
        *L.stride(), *S.stride(), sh, sw, ph, pw, dh, dw,
        KH=KH, KW=KW, REFLECT=reflect, CDTYPE=compute_dtype(L.dtype), **_dot_flags(L.dtype),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=_num_warps(BLOCK_M, BLOCK_N),
        **LAUNCH_OPTIONS,
    )
    return out.sum(0).to(out_dtype)


def _norm_grid(y, instance):
    N, C, H, W = y.shape
    hw = H * W
    BLOCK_R, BLOCK_C = 64, _pow2_at_least(C, 16, 32)
    if instance:
        tps = triton.cdiv(hw, BLOCK_R)
        grid_r = N * tps
    else:
        tps = 1
        grid_r = triton.cdiv(N * hw, BLOCK_R)
    return (grid_r, triton.cdiv(C, BLOCK_C)), tps, BLOCK_R, BLOCK_C


def _nchw_strides(t):
    """(n, c, pixel) strides; valid for NCHW- and NHWC-dense tensors (h stride = w * w stride)."""
    return t.stride(0), t.stride(1), t.stride(3)


def norm_act_fwd(y, mean, rstd, nw, nb, instance, act_code, alpha):
    y = _dense(y)
    N, C, H, W = y.shape
    out = _out_like(y.shape, y)
    grid, tps, BR, BC = _norm_grid(y, instance)
    affine = nw is not None
    _norm_act_fwd_kernel[grid](
        y, out, mean, rstd, nw if affine else mean, nb if affine else mean,
        N, C, H * W, tps, *_nchw_strides(y), *_nchw_strides(out), _alpha_tensor(alpha, act_code, y),
        INSTANCE=instance, HAS_AFFINE=affine, ACT=act_code, CDTYPE=compute_dtype(y.dtype),
        BLOCK_R=BR, BLOCK_C=BC,
        **LAUNCH_OPTIONS,
    )
    return out


def norm_act_bwd(g, y, mean, rstd, nw, nb, instance, act_code, alpha):
    """Returns (dy, sum over rows of dz, sum of dz * xhat), the sums per channel or per (n, c)."""
    y = _dense(y)
    g = g.contiguous(memory_format=torch.channels_last) if (
        not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last)) else g.contiguous()
    N, C, H, W = y.shape
    grid, tps, BR, BC = _norm_grid(y, instance)
    affine = nw is not None
    sdt = torch_compute_dtype(y.dtype)
    psum = torch.empty((grid[0], C), dtype=sdt, device=y.device)
    psumx = torch.empty((grid[0], C), dtype=sdt, device=y.device)
    common = dict(INSTANCE=instance, HAS_AFFINE=affine, ACT=act_code, CDTYPE=compute_dtype(y.dtype),
                  BLOCK_R=BR, BLOCK_C=BC)
    nw_arg, nb_arg = (nw, nb) if affine else (mean, mean)
    alpha_t = _alpha_tensor(alpha, act_code, y)
    _norm_act_bwd_reduce_kernel[grid](
        g, y, mean, rstd, nw_arg, nb_arg, psum, psumx,
        N, C, H * W, tps, *_nchw_strides(g), *_nchw_strides(y), alpha_t, **common, **LAUNCH_OPTIONS)
    if instance:
        sdz, sdzx = psum.view(N, tps, C).sum(1), psumx.view(N, tps, C).sum(1)
        count = H * W
    else:
        sdz, sdzx = psum.sum(0), psumx.sum(0)
        count = N * H * W
    dy = _out_like(y.shape, y)
    _norm_act_bwd_apply_kernel[grid](
        g, y, dy, mean, rstd, nw_arg, nb_arg, sdz, sdzx,
        N, C, H * W, tps, float(count), *_nchw_strides(g), *_nchw_strides(y), *_nchw_strides(dy),
        alpha_t, **common, **LAUNCH_OPTIONS)
    return dy, sdz, sdzx


def act_grad(g, y, act_code, alpha):
    y = _dense(y)
    cl = not y.is_contiguous()
    g = g.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    out = torch.empty_like(y)
    BLOCK = 1024
    _act_grad_kernel[(triton.cdiv(y.numel(), BLOCK),)](
        g, y, out, y.numel(), _alpha_tensor(alpha, act_code, y),
        ACT=act_code, CDTYPE=compute_dtype(y.dtype), BLOCK=BLOCK, **LAUNCH_OPTIONS)
    return out
