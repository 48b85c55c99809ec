"""Implicit-GEMM 2-D convolution kernels shared by modulated_conv2d and conv2d_resample.

Two Triton kernels, both over a SHARED weight (never a per-sample weight copy):

* `_conv_fwd_kernel`: y[n, o, p] = epilogue(out_scale[n, o] * sum_{c, k} in_scale[n, c] * x[n, c, src(p, k)] * w[o, c, k])
  - `src` is a plain strided/padded convolution (y = conv2d) or, with TRANSPOSED, its adjoint
    (y = conv_transpose2d, written as a gather: output pixel p takes input pixel q when q*stride - pad + k == p).
  - prologue: the per-sample input-channel scale (the StyleGAN2 style) multiplies the weight tile in registers,
    which is the same as scaling the input channels and costs BLOCK_K*BLOCK_N instead of BLOCK_M*BLOCK_K multiplies.
  - epilogue, before the single store: out_scale (demodulation), + noise (any broadcastable strides), + bias,
    activation (bias_act's math), * gain, clamp. Optionally also a per-sample spatial dot product of the raw conv
    output with an `aux` tensor (the style gradient, when this GEMM is the backward's adjoint conv).
  GEMM view per sample: M = output pixels, N = output channels, K = taps x input channels.
* `_conv_wgrad_kernel`: g[a, b, k] = sum_n a_scale[n, a] b_scale[n, b] sum_p A[n, a, p] * B[n, b, p*stride - pad + k]
  (the weight gradient of the conv above: a reduction over the batch and the output pixels).
  GEMM view per tap: M = channels of A, N = channels of B, K = batch x pixels.

Layout: both kernels index through strides, so NCHW and channels_last run without copies. Channels_last (NHWC) is
the fast layout: the K dimension of the forward GEMM (input channels) and the N dimension of its store (output
channels) are then contiguous, so loads and stores are coalesced along the channel axis. The weight is read through
strides too (any layout, transposed views included) and is small.

Precision: tl.dot with fp32 accumulation for fp16/bf16/fp32 (TF32 exactly when torch's convs use it:
`conv_allows_tf32`); fp64 (gradcheck) uses an exact multiply-and-sum instead of tl.dot, because fp64 tl.dot is not supported
on every GPU backend.
"""
import torch

from ._triton import compute_dtype, conv_allows_tf32, LAUNCH_OPTIONS, tl, torch_compute_dtype, triton

# Activation math and the fp64-exact scalar passing are bias_act's own jit helpers, so both ops agree bit for bit.
from .bias_act import ACT_CODES, _act_fwd, _scalars, _split


@triton.jit
def _mma(a, b, acc, USE_DOT: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr):
    """acc += a @ b. tl.dot (tensor cores) for fp16/bf16/fp32; an exact broadcast-multiply-sum for fp64.
    UPCAST (CPU interpreter + bf16 only: its bf16 tl.dot returns garbage in triton 3.9) multiplies in fp32,
    which is the same math, since bf16 x bf16 products are exact in fp32."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if USE_DOT:
        if ALLOW_TF32:
            acc = tl.dot(a, b, acc, input_precision="tf32")
        else:
            acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return acc


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, in_scale_ptr, out_scale_ptr, noise_ptr, bias_ptr, y_ptr, conv_ptr, aux_ptr, dot_ptr,
    C, H, W, O, OH, OW,
    sxn, sxc, sxh, sxw,
    swo, swc, swh, sww,
    sin, sic, son, soo,
    snn, sno, snh, snw,
    syn, syo, syh, syw,
    san, sao, sah, saw,
    sdm, sdn, sdo,
    stride, pad_y, pad_x,
    alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo,
    KH: tl.constexpr, KW: tl.constexpr, TRANSPOSED: tl.constexpr,
    HAS_IN_SCALE: tl.constexpr, HAS_OUT_SCALE: tl.constexpr, HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, SAVE_CONV: tl.constexpr, HAS_DOT: tl.constexpr,
    COMPUTE: tl.constexpr, USE_DOT: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IDX: tl.constexpr,
):
    # IDX is the integer type of the index math (see `index_dtype`); the sample offset is always int64.
    pid_m = tl.program_id(0).to(IDX)
    pid_n = tl.program_id(1).to(IDX)
    n = tl.program_id(2).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(IDX)  # output channels
    n_mask = offs_n < O
    if TRANSPOSED:
        # Sub-pixel (phase) decomposition of the transposed conv: the output pixels with (oy, ox) = (py, px)
        # mod stride are fed exactly by the taps ky = ry + stride*t, kx = rx + stride*u. Each program takes
        # pixels of one phase and loops over those taps only, so no MMA work is masked away (3/4 of it would
        # be for stride 2).
        PHH = (OH + stride - 1) // stride
        PHW = (OW + stride - 1) // stride
        m_blocks = (PHH * PHW + BLOCK_M - 1) // BLOCK_M
        phase = pid_m // m_blocks
        offs_m = (pid_m % m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M).to(IDX)  # pixels of this phase
        py = phase // stride
        px = phase % stride
        oy = py + stride * (offs_m // PHW)
        ox = px + stride * (offs_m % PHW)
        m_mask = (offs_m < PHH * PHW) & (oy < OH) & (ox < OW)
        ry = ((py + pad_y) % stride + stride) % stride
        rx = ((px + pad_x) % stride + stride) % stride
        NTX = (KW - rx + stride - 1) // stride
        K = ((KH - ry + stride - 1) // stride) * NTX * C
    else:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(IDX)  # output pixels of sample n
        m_mask = offs_m < OH * OW
        oy = offs_m // OW
        ox = offs_m % OW
        K = KH * KW * C
    x_base = x_ptr + n * sxn
    s_base = in_scale_ptr + n * sin

    # K runs over (tap, input channel) with the channel fastest: within a tap, consecutive k are consecutive
    # channels, contiguous in NHWC. One loop over K blocks (the im2col matrix is never built).
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=COMPUTE)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K).to(IDX)
        k_mask = offs_k < K
        c = offs_k % C
        tap = offs_k // C
        if TRANSPOSED:  # input pixel q feeds output pixel p when q*stride - pad + k == p (divisible by design)
            ky = ry + stride * (tap // NTX)
            kx = rx + stride * (tap % NTX)
            ty = oy[:, None] + pad_y - ky[None, :]
            tx = ox[:, None] + pad_x - kx[None, :]
            iy = ty // stride
            ix = tx // stride
            valid = (ty >= 0) & (tx >= 0) & (iy < H) & (ix < W)
        else:
            ky = tap // KW
            kx = tap % KW
            iy = oy[:, None] * stride - pad_y + ky[None, :]
            ix = ox[:, None] * stride - pad_x + kx[None, :]
            valid = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        valid = valid & m_mask[:, None] & k_mask[None, :]
        a = tl.load(x_base + iy.to(tl.int64) * sxh + ix.to(tl.int64) * sxw + c[None, :] * sxc,
                    mask=valid, other=0.0)
        b = tl.load(w_ptr + c[:, None] * swc + offs_n[None, :] * swo + ky[:, None] * swh + kx[:, None] * sww,
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if HAS_IN_SCALE:  # prologue: the per-sample style scales the input channels (applied to the weight tile)
            s = tl.load(s_base + c * sic, mask=k_mask, other=0.0)
            b = b.to(COMPUTE) * s.to(COMPUTE)[:, None]
        acc = _mma(a, b.to(a.dtype), acc, USE_DOT, ALLOW_TF32, UPCAST)

    # Epilogue: everything elementwise happens here, before the only store of y.
    alpha, gain, clamp = _scalars(alpha_hi, alpha_lo, gain_hi, gain_lo, clamp_hi, clamp_lo, COMPUTE)
    out_mask = m_mask[:, None] & n_mask[None, :]
    y_off = (n * syn + offs_n[None, :].to(tl.int64) * syo
             + oy[:, None].to(tl.int64) * syh + ox[:, None].to(tl.int64) * syw)
    if SAVE_CONV:  # training only: the raw conv output, which the backward needs (instead of recomputing it)
        tl.store(conv_ptr + y_off, acc.to(conv_ptr.dtype.element_ty), mask=out_mask)
    if HAS_DOT:
        # dot[n, o] = sum_p aux[n, o, p] * conv[n, o, p]: this tile's share of a per-sample spatial dot product,
        # stored per M tile (summed by the launcher: deterministic). In the backward, aux = x and this GEMM = the
        # adjoint conv give the style gradient without storing the adjoint conv or re-reading it.
        av = tl.load(aux_ptr + n * san + offs_n[None, :].to(tl.int64) * sao + oy[:, None].to(tl.int64) * sah
                     + ox[:, None].to(tl.int64) * saw, mask=out_mask, other=0.0)
        part = tl.sum(acc * av.to(COMPUTE), axis=0)
        tl.store(dot_ptr + pid_m.to(tl.int64) * sdm + n * sdn + offs_n * sdo, part.to(dot_ptr.dtype.element_ty),
                 mask=n_mask)
    if HAS_OUT_SCALE:  # demodulation
        d = tl.load(out_scale_ptr + n * son + offs_n * soo, mask=n_mask, other=0.0)
        acc = acc * d.to(COMPUTE)[None, :]
    if HAS_NOISE:
        nz = tl.load(noise_ptr + n * snn + offs_n[None, :].to(tl.int64) * sno
                     + oy[:, None].to(tl.int64) * snh + ox[:, None].to(tl.int64) * snw, mask=out_mask, other=0.0)
        acc = acc + nz.to(COMPUTE)
    if HAS_BIAS:
        bb = tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0)
        acc = acc + bb.to(COMPUTE)[None, :]
    if ACT != 0:
        acc = _act_fwd(acc, ACT, alpha)
    acc = acc * gain
    if HAS_CLAMP:
        acc = tl.minimum(tl.maximum(acc, -clamp), clamp)
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _conv_wgrad_kernel(
    a_ptr, b_ptr, a_scale_ptr, b_scale_ptr, g_ptr,
    N, CA, CB, PH, PW, H, W,
    san, sac, sah, saw,
    sbn, sbc, sbh, sbw,
    sasn, sasc, sbsn, sbsc,
    sgs, sga, sgb, sgh, sgw,
    stride, pad_y, pad_x, r_per_split,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_A_SCALE: tl.constexpr, HAS_B_SCALE: tl.constexpr,
    COMPUTE: tl.constexpr, USE_DOT: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, IDX: tl.constexpr,
):
    # Output columns j run over (tap, channel of B), channel fastest (contiguous in NHWC);
    # the reduction runs over (sample, pixel of A) in one flat loop, split into chunks of r_per_split (split-K:
    # program_id(2) is the chunk, and each chunk stores its own partial sum: deterministic, no atomics).
    pid_a = tl.program_id(0).to(IDX)
    pid_b = tl.program_id(1).to(IDX)
    split = tl.program_id(2).to(IDX)
    offs_a = pid_a * BLOCK_A + tl.arange(0, BLOCK_A).to(IDX)
    offs_j = pid_b * BLOCK_B + tl.arange(0, BLOCK_B).to(IDX)
    a_mask = offs_a < CA
    j_mask = offs_j < KH * KW * CB
    cb = offs_j % CB
    tap = offs_j // CB
    ky = tap // KW
    kx = tap % KW
    P = PH * PW

    r_begin = split * r_per_split
    r_end = tl.minimum(r_begin + r_per_split, N * P)
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=COMPUTE)
    for k0 in range(r_begin, r_end, BLOCK_P):
        offs_k = k0 + tl.arange(0, BLOCK_P).to(IDX)
        k_mask = offs_k < r_end
        n = (offs_k // P).to(tl.int64)
        p = offs_k % P
        py = p // PW
        px = p % PW
        at = tl.load(a_ptr + n[None, :] * san + offs_a[:, None] * sac + py[None, :] * sah + px[None, :] * saw,
                     mask=a_mask[:, None] & k_mask[None, :], other=0.0)
        iy = py[:, None] * stride - pad_y + ky[None, :]
        ix = px[:, None] * stride - pad_x + kx[None, :]
        valid = k_mask[:, None] & j_mask[None, :] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        bt = tl.load(b_ptr + n[:, None] * sbn + cb[None, :] * sbc + iy.to(tl.int64) * sbh + ix.to(tl.int64) * sbw,
                     mask=valid, other=0.0)
        if HAS_A_SCALE:  # per-sample channel scales, the prologue of this GEMM
            sa = tl.load(a_scale_ptr + n[None, :] * sasn + offs_a[:, None] * sasc,
                         mask=a_mask[:, None] & k_mask[None, :], other=0.0)
            at = (at.to(COMPUTE) * sa.to(COMPUTE)).to(a_ptr.dtype.element_ty)
        if HAS_B_SCALE:
            sb = tl.load(b_scale_ptr + n[:, None] * sbsn + cb[None, :] * sbsc, mask=valid, other=0.0)
            bt = bt.to(COMPUTE) * sb.to(COMPUTE)
        acc = _mma(at, bt.to(at.dtype), acc, USE_DOT, ALLOW_TF32, UPCAST)
    # g is [splits, CA, CB, KH, KW]; sgs is the stride between the chunks' partial sums.
    g_off = (split.to(tl.int64) * sgs + offs_a[:, None] * sga + cb[None, :] * sgb + ky[None, :] * sgh
             + kx[None, :] * sgw)
    tl.store(g_ptr + g_off, acc.to(g_ptr.dtype.element_ty), mask=a_mask[:, None] & j_mask[None, :])


# ----------------------------------------------------------------------------------------------------------------
# Launchers (no checks here: the public functions validated everything).

def _pow2_clip(v, lo, hi):
    return max(lo, min(hi, triton.next_power_of_2(max(int(v), 1))))


def _gemm_blocks(m, n, k, dtype):
    """Block sizes: large tiles for tensor cores, small for fp64 (its multiply-sum fallback holds a 3-D product)."""
    if dtype == torch.float64:
        return _pow2_clip(m, 16, 32), _pow2_clip(n, 16, 32), _pow2_clip(k, 16, 16)
    if dtype == torch.float32 and not conv_allows_tf32(dtype):
        # fp32 without TF32: tl.dot runs as FMAs on CUDA cores with both operand tiles held in registers. Compiled
        # for sm_90, 128x128x32 tiles spilled 3-7 KB of registers per thread block (benchmarks.hopper_compile);
        # 64x128x16 (8 warps) spills nothing.
        return _pow2_clip(m, 16, 64), _pow2_clip(n, 16, 128), _pow2_clip(k, 16, 16)
    bk = 64 if dtype in (torch.float16, torch.bfloat16) else 32
    return _pow2_clip(m, 16, 128), _pow2_clip(n, 16, 128), _pow2_clip(k, 16, bk)


def _strides_nchw(t):
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _upcast(t):
    return t.dtype == torch.bfloat16 and t.device.type == "cpu"  # only the interpreter runs CPU tensors


def memory_format_of(t):
    """channels_last for an NHWC-dense 4-D tensor that is not also NCHW-contiguous, else contiguous_format: the
    layout the conv kernels give their outputs."""
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def index_dtype(*tensors):
    """int64 index math where a tensor passes 2**31 elements, and under the CPU interpreter (whose integer-overflow
    sanitizer, always on there, skips 64-bit math and otherwise dominates the run time); int32 on the GPU otherwise,
    where it halves the integer work of the im2col index tiles. Sample offsets are int64 in the kernels regardless."""
    from ._dispatch import interpreter_active

    big = any(t is not None and t.numel() >= 2**31 for t in tensors)
    return tl.int64 if (big or interpreter_active() or tensors[0].device.type == "cpu") else tl.int32


def act_code(act):
    """The integer that selects `act` inside the kernels (0 = linear)."""
    if act == "linear":
        return 0
    return ACT_CODES[act]


def conv_fwd_triton(x, w, in_scale=None, out_scale=None, noise=None, bias=None, aux=None, *, stride=1, pad_y=0,
                    pad_x=0, out_h, out_w, transposed=False, act="linear", alpha=0.0, gain=1.0, clamp=None,
                    save_conv=False):
    """Launches `_conv_fwd_kernel`. `w` is the logical [O, C, KH, KW] weight of this op (any strides).

    Returns (y, conv, dot): y of shape [N, O, out_h, out_w] in x's dtype and layout (channels_last stays
    channels_last); conv, the raw conv output before the epilogue, laid out like y when `save_conv`, else empty;
    dot[n, o] = sum over pixels of aux * conv (fp32, fp64 for fp64 inputs) when `aux` (shaped like y) is given,
    else empty. `noise` must already be expanded to [N, O, out_h, out_w] (zero strides are fine).
    """
    N, C, H, W = x.shape
    O, _, KH, KW = w.shape
    y = torch.empty((N, O, out_h, out_w), dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))
    conv = torch.empty_like(y) if save_conv else y.new_empty(0)
    dot = y.new_empty(0, dtype=torch_compute_dtype(x.dtype))
    if y.numel() == 0:
        return y, conv, (y.new_zeros((N, O), dtype=dot.dtype) if aux is not None else dot)
    # The weight as the GEMM's [K, N] operand: [KH, KW, C, O] contiguous, so every weight-tile load is coalesced
    # along the output channels (a weight-sized copy per call; the weight is re-read by every program).
    wk = w.permute(2, 3, 1, 0).contiguous()
    if transposed:  # one group of programs per output phase (see the kernel)
        phase_pixels = triton.cdiv(out_h, stride) * triton.cdiv(out_w, stride)
        BM, BN, BK = _gemm_blocks(phase_pixels, O, triton.cdiv(KH, stride) * triton.cdiv(KW, stride) * C, x.dtype)
        if BM > 64 and BN >= 64:  # the phase index math leaves no room for 128x128 or 128x64 tiles (sm_90 spills)
            BM = 64
        grid_m = stride * stride * triton.cdiv(phase_pixels, BM)
    else:
        BM, BN, BK = _gemm_blocks(out_h * out_w, O, KH * KW * C, x.dtype)
        grid_m = triton.cdiv(out_h * out_w, BM)
    grid = (grid_m, triton.cdiv(O, BN), N)
    if aux is not None:  # per-M-tile partial sums: every (M tile, sample, channel) is written by one program
        dot = torch.empty((grid_m, N, O), dtype=torch_compute_dtype(x.dtype), device=x.device)
    dummy = x
    ins, outs = in_scale if in_scale is not None else dummy, out_scale if out_scale is not None else dummy
    # The kernel reads bias[o] at unit stride: a strided or expanded (stride-0) bias is made contiguous (O values).
    nz, bs = noise if noise is not None else dummy, bias.contiguous() if bias is not None else dummy
    ax = aux if aux is not None else dummy
    _conv_fwd_kernel[grid](
        x, wk, ins, outs, nz, bs, y, conv if save_conv else y, ax, dot if aux is not None else y,
        C, H, W, O, out_h, out_w,
        *_strides_nchw(x), wk.stride(3), wk.stride(2), wk.stride(0), wk.stride(1),
        ins.stride(0) if in_scale is not None else 0, ins.stride(1) if in_scale is not None else 0,
        outs.stride(0) if out_scale is not None else 0, outs.stride(1) if out_scale is not None else 0,
        *(_strides_nchw(noise) if noise is not None else (0, 0, 0, 0)),
        *_strides_nchw(y),
        *(_strides_nchw(aux) if aux is not None else (0, 0, 0, 0)),
        *(dot.stride() if aux is not None else (0, 0, 0)),
        stride, pad_y, pad_x,
        *_split(float(alpha)), *_split(float(gain)), *_split(float(clamp if clamp is not None else 0.0)),
        KH=KH, KW=KW, TRANSPOSED=bool(transposed),
        HAS_IN_SCALE=in_scale is not None, HAS_OUT_SCALE=out_scale is not None,
        HAS_NOISE=noise is not None, HAS_BIAS=bias is not None,
        ACT=act_code(act), HAS_CLAMP=clamp is not None, SAVE_CONV=bool(save_conv), HAS_DOT=aux is not None,
        COMPUTE=compute_dtype(x.dtype), USE_DOT=x.dtype != torch.float64, ALLOW_TF32=conv_allows_tf32(x.dtype), UPCAST=_upcast(x),
        BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, IDX=index_dtype(x, y, w),
        num_warps=4 if BM * BN <= 64 * 64 else 8,
        **LAUNCH_OPTIONS,
    )
    return y, conv, (dot.sum(0) if aux is not None else dot)


WGRAD_TARGET_PROGRAMS = 1024
WGRAD_MIN_CHUNK = 2048


def _wgrad_splits(tiles, reduction, block):
    """Split-K for the weight gradient: its output is only CA x CB*KH*KW (3 x 512 for ToRGB, 64 x 48 for a
    3-channel first layer), so without splitting the long reduction over batch x pixels a handful of programs
    would do all the work. Aim for ~1024 programs (several waves on a 132-SM GPU), each chunk at least
    WGRAD_MIN_CHUNK reduction rows so that the partial sums (one fp32 [CA, CB, KH, KW] each) stay cheap."""
    splits = max(1, min(triton.cdiv(reduction, WGRAD_MIN_CHUNK), triton.cdiv(WGRAD_TARGET_PROGRAMS, tiles)))
    per_split = triton.cdiv(triton.cdiv(reduction, splits), block) * block
    return triton.cdiv(reduction, per_split), per_split


def conv_wgrad_triton(a, b, a_scale=None, b_scale=None, *, stride=1, pad_y=0, pad_x=0, kh, kw, out_dtype=None):
    """Launches `_conv_wgrad_kernel`: returns g[CA, CB, kh, kw] (contiguous) in `out_dtype` (default a's dtype).
    With split-K the chunks' fp32 partial sums are added by one torch reduction (no atomics: deterministic)."""
    N, CA, PH, PW = a.shape
    _, CB, H, W = b.shape
    out_dtype = out_dtype or a.dtype
    if CA * CB * kh * kw == 0:
        return torch.empty((CA, CB, kh, kw), dtype=out_dtype, device=a.device)
    if N * PH * PW == 0:
        return torch.zeros((CA, CB, kh, kw), dtype=out_dtype, device=a.device)
    BA, BB, BP = _gemm_blocks(CA, kh * kw * CB, N * PH * PW, a.dtype)
    if a.dtype != torch.float64:
        BA, BB, BP = min(BA, 64), min(BB, 64), min(BP, 32)
    tiles = triton.cdiv(CA, BA) * triton.cdiv(kh * kw * CB, BB)
    splits, per_split = _wgrad_splits(tiles, N * PH * PW, BP)
    # One chunk writes the result directly; several write fp32 (compute dtype) partials that are summed after.
    g = torch.empty((splits, CA, CB, kh, kw), dtype=out_dtype if splits == 1 else torch_compute_dtype(a.dtype),
                    device=a.device)
    grid = (triton.cdiv(CA, BA), triton.cdiv(kh * kw * CB, BB), splits)
    dummy = a
    sa, sb = a_scale if a_scale is not None else dummy, b_scale if b_scale is not None else dummy
    _conv_wgrad_kernel[grid](
        a, b, sa, sb, g,
        N, CA, CB, PH, PW, H, W,
        *_strides_nchw(a), *_strides_nchw(b),
        sa.stride(0) if a_scale is not None else 0, sa.stride(1) if a_scale is not None else 0,
        sb.stride(0) if b_scale is not None else 0, sb.stride(1) if b_scale is not None else 0,
        g.stride(0), g.stride(1), g.stride(2), g.stride(3), g.stride(4),
        stride, pad_y, pad_x, per_split,
        KH=kh, KW=kw, HAS_A_SCALE=a_scale is not None, HAS_B_SCALE=b_scale is not None,
        COMPUTE=compute_dtype(a.dtype), USE_DOT=a.dtype != torch.float64, ALLOW_TF32=conv_allows_tf32(a.dtype), UPCAST=_upcast(a),
        BLOCK_A=BA, BLOCK_B=BB, BLOCK_P=BP, IDX=index_dtype(a, b),
        num_warps=8 if BA * BB >= 64 * 64 else 4,  # 4 warps spilled the fp32 64x64 tiles on sm_90
        **LAUNCH_OPTIONS,
    )
    return g[0] if splits == 1 else g.sum(0).to(out_dtype)
