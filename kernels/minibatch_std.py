"""StyleGAN2's minibatch standard-deviation layer, NVIDIA's semantics (stylegan2-ada-pytorch
training/networks.py, MinibatchStdLayer):

    G = min(group_size, N)  (N when group_size is None); n = N // G; F = num_channels; c = C // F
    y = x.reshape(G, n, F, c, H, W)           sample i is member i // n of group i % n
    y = sqrt(var over G (biased) + 1e-8)      [n, F, c, H, W]
    y = y.mean over (c, H, W)                 [n, F]
    out = cat([x, y repeated to [N, F, H, W]], dim=1)

One program per (group, channel group) reads its G x c x H x W values of x once: it copies them
into the output's first C channels and reduces the stddev from the same registers, then fills its
G x H x W stddev pixels. Indexing goes through strides, so contiguous and channels_last inputs
(and outputs in the same layout) need no copies. The backward reads x and dout once per group
the same way. Double backward differentiates the plain-PyTorch reference.
"""

import torch
from torch import Tensor

from ._dispatch import resolve_impl
from ._loss_math import register_one_input_autograd
from ._triton import compute_dtype, LAUNCH_OPTIONS, tl, triton
from ._validate import check_positive_int, check_tensor, in_layout_of, same_layout_empty

EPS = 1e-8
TILE = 2048  # elements per (group member x position) tile


def _group_size(group_size, n: int) -> int:
    return n if group_size is None else min(group_size, n)


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------
def _minibatch_std_ref(x: Tensor, group_size, num_channels: int) -> Tensor:
    N, C, H, W = x.shape
    G = _group_size(group_size, N)
    F = num_channels
    y = x.reshape(G, N // G, F, C // F, H, W)  # (not -1: ambiguous when x has no elements)
    y = y - y.mean(dim=0)
    y = y.square().mean(dim=0)
    y = (y + EPS).sqrt()
    y = y.mean(dim=[2, 3, 4])
    y = y.reshape(-1, F, 1, 1)
    y = y.repeat(G, 1, H, W)
    return in_layout_of(x, torch.cat([x, y], dim=1))  # cat with the NCHW y dropped channels_last; keep x's layout


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _group_tile(x_ptr, sxn, sxc, sxh, sxw, samples, gmask, f, start, c_per, HW, W,
                G: tl.constexpr, BLOCK: tl.constexpr, CDTYPE: tl.constexpr):
    """Loads the [G_BLOCK, BLOCK] tile of positions start.. of channel group f; returns it with its
    centred values, stddev per position and the (channel, h, w) indices."""
    e = start + tl.arange(0, BLOCK)
    emask = e < c_per * HW
    ch = f * c_per + e // HW
    hw = e % HW
    h = hw // W
    w = hw % W
    mask = gmask[:, None] & emask[None, :]
    offs = samples[:, None] * sxn + (ch.to(tl.int64) * sxc + h * sxh + w * sxw)[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0)
    xf = x.to(CDTYPE)
    mean = tl.sum(xf, axis=0) / G
    centred = tl.where(mask, xf - mean[None, :], 0.0)
    std = tl.sqrt(tl.sum(centred * centred, axis=0) / G + 1e-8)
    return x, centred, std, emask, mask, ch, h, w


@triton.jit
def _minibatch_std_fwd_kernel(x_ptr, out_ptr, n_groups, C, c_per, HW, W,
                              sxn, sxc, sxh, sxw, son, soc, soh, sow,
                              G: tl.constexpr, G_BLOCK: tl.constexpr, BLOCK: tl.constexpr, CDTYPE: tl.constexpr):
    j = tl.program_id(0)  # group: samples j, j + n, j + 2n, ...
    f = tl.program_id(1)  # channel group
    g = tl.arange(0, G_BLOCK)
    gmask = g < G
    samples = (g * n_groups + j).to(tl.int64)
    acc = tl.zeros([BLOCK], CDTYPE)
    for start in range(0, c_per * HW, BLOCK):
        x, centred, std, emask, mask, ch, h, w = _group_tile(
            x_ptr, sxn, sxc, sxh, sxw, samples, gmask, f, start, c_per, HW, W, G, BLOCK, CDTYPE)
        o_offs = samples[:, None] * son + (ch.to(tl.int64) * soc + h * soh + w * sow)[None, :]
        tl.store(out_ptr + o_offs, x, mask=mask)  # the concat's copy of x, from the same load
        acc += tl.where(emask, std, 0.0)
    y = tl.sum(acc, axis=0) / (c_per * HW)
    for start in range(0, HW, BLOCK):
        hw = start + tl.arange(0, BLOCK)
        hmask = hw < HW
        o_offs = samples[:, None] * son + ((C + f).to(tl.int64) * soc + (hw // W) * soh + (hw % W) * sow)[None, :]
        tile = tl.zeros([G_BLOCK, BLOCK], CDTYPE) + y
        tl.store(out_ptr + o_offs, tile.to(out_ptr.dtype.element_ty), mask=gmask[:, None] & hmask[None, :])


@triton.jit
def _minibatch_std_bwd_kernel(dout_ptr, x_ptr, dx_ptr, n_groups, C, c_per, HW, W,
                              sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw,
                              G: tl.constexpr, G_BLOCK: tl.constexpr, BLOCK: tl.constexpr, CDTYPE: tl.constexpr):
    j = tl.program_id(0)
    f = tl.program_id(1)
    g = tl.arange(0, G_BLOCK)
    gmask = g < G
    samples = (g * n_groups + j).to(tl.int64)
    # dy: the gradient of the group's stddev value, summed over its G x H x W output pixels.
    dy_acc = tl.zeros([G_BLOCK, BLOCK], CDTYPE)
    for start in range(0, HW, BLOCK):
        hw = start + tl.arange(0, BLOCK)
        hmask = hw < HW
        d_offs = samples[:, None] * sdn + ((C + f).to(tl.int64) * sdc + (hw // W) * sdh + (hw % W) * sdw)[None, :]
        dy_acc += tl.load(dout_ptr + d_offs, mask=gmask[:, None] & hmask[None, :], other=0).to(CDTYPE)
    dy = tl.sum(tl.sum(dy_acc, axis=1), axis=0)
    # y = mean_e std_e, std_e = sqrt(mean_g (x_ge - m_e)^2 + eps): dstd_e/dx_ge = (x_ge - m_e) / (G std_e)
    coef = dy / (c_per * HW * G)
    for start in range(0, c_per * HW, BLOCK):
        x, centred, std, emask, mask, ch, h, w = _group_tile(
            x_ptr, sxn, sxc, sxh, sxw, samples, gmask, f, start, c_per, HW, W, G, BLOCK, CDTYPE)
        pos = ch.to(tl.int64)
        d_offs = samples[:, None] * sdn + (pos * sdc + h * sdh + w * sdw)[None, :]
        dx = tl.load(dout_ptr + d_offs, mask=mask, other=0).to(CDTYPE) + coef * centred / std[None, :]
        g_offs = samples[:, None] * sgn + (pos * sgc + h * sgh + w * sgw)[None, :]
        tl.store(dx_ptr + g_offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------
def _launch_config(N, C, H, W, group_size, num_channels):
    G = _group_size(group_size, N)
    g_block = triton.next_power_of_2(G)
    block = max(16, min(TILE // g_block, triton.next_power_of_2(C // num_channels * H * W)))
    return G, g_block, block, (N // G, num_channels)


def _minibatch_std_fwd_triton(x: Tensor, group_size, num_channels: int) -> Tensor:
    N, C, H, W = x.shape
    out = same_layout_empty((N, C + num_channels, H, W), x)
    G, g_block, block, grid = _launch_config(N, C, H, W, group_size, num_channels)
    if out.numel() > 0:
        _minibatch_std_fwd_kernel[grid](x, out, N // G, C, C // num_channels, H * W, W, *x.stride(), *out.stride(),
                                        G=G, G_BLOCK=g_block, BLOCK=block, CDTYPE=compute_dtype(x.dtype),
                                        **LAUNCH_OPTIONS)
    return out


def _minibatch_std_bwd_triton(dout: Tensor, x: Tensor, group_size, num_channels: int) -> Tensor:
    N, C, H, W = x.shape
    dx = same_layout_empty(x.shape, x)
    G, g_block, block, grid = _launch_config(N, C, H, W, group_size, num_channels)
    if dx.numel() > 0:
        _minibatch_std_bwd_kernel[grid](dout, x, dx, N // G, C, C // num_channels, H * W, W, *dout.stride(),
                                        *x.stride(), *dx.stride(), G=G, G_BLOCK=g_block, BLOCK=block,
                                        CDTYPE=compute_dtype(x.dtype), **LAUNCH_OPTIONS)
    return dx


# ---------------------------------------------------------------------------------------------
# Custom ops (group_size is an int here: the public function resolves None to N)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("fusegan::minibatch_std", mutates_args=())
def _minibatch_std_op(x: Tensor, group_size: int, num_channels: int) -> Tensor:
    return _minibatch_std_fwd_triton(x, group_size, num_channels)


@_minibatch_std_op.register_fake
def _(x, group_size, num_channels):
    N, C, H, W = x.shape
    return same_layout_empty((N, C + num_channels, H, W), x)


@torch.library.custom_op("fusegan::minibatch_std_backward", mutates_args=())
def _minibatch_std_backward_op(dout: Tensor, x: Tensor, group_size: int, num_channels: int) -> Tensor:
    return _minibatch_std_bwd_triton(dout, x, group_size, num_channels)


@_minibatch_std_backward_op.register_fake
def _(dout, x, group_size, num_channels):
    return same_layout_empty(x.shape, x)


register_one_input_autograd(_minibatch_std_op, _minibatch_std_backward_op, _minibatch_std_ref)


# ---------------------------------------------------------------------------------------------
# Public function
# ---------------------------------------------------------------------------------------------
def minibatch_std(x: Tensor, group_size=4, num_channels: int = 1, impl=None) -> Tensor:
    """Appends `num_channels` minibatch-stddev feature maps to x: [N, C, H, W] -> [N, C + F, H, W].

    Args:
        x: [N, C, H, W] (contiguous or channels_last; the output has the same layout).
        group_size: samples per group, clipped to N (None: the whole batch). After clipping it must
            divide N.
        num_channels: F, the number of stddev features; must divide C.
    """
    check_tensor(x, "x", ndim=4)
    N, C = x.shape[0], x.shape[1]
    if group_size is not None:
        check_positive_int(group_size, "group_size")
    num_channels = check_positive_int(num_channels, "num_channels")
    if N == 0:
        raise ValueError("x must have a non-empty batch dim, got shape " f"{tuple(x.shape)}")
    G = _group_size(group_size, N)
    if N % G != 0:
        raise ValueError(f"batch size N={N} must be divisible by the group size min(group_size={group_size}, N)={G}")
    if C % num_channels != 0:
        raise ValueError(f"channels C={C} must be divisible by num_channels={num_channels}")
    impl = resolve_impl(impl, x.device)
    if impl == "ref":
        return _minibatch_std_ref(x, G, num_channels)
    return _minibatch_std_op(x, int(G), num_channels)


__all__ = ["minibatch_std"]
