"""Audit: modulated_conv2d and conv2d_resample against NVIDIA StyleGAN2-ADA, branch for branch.

The expectation is an independent plain-torch rewrite of NVIDIA's code (torch_utils/ops/upfirdn2d.py's reference,
torch_utils/ops/conv2d_resample.py with its fast paths, training/networks.py's modulated_conv2d with BOTH its
fused (grouped conv, per-sample weights) and non-fused formulations). Nothing of fusegan is imported for it.
Covers what the per-op test files do not: 1-D (separable) and non-square filters, non-square kernels, padding as
[px, py] and as negative pads large enough that the transposed conv pads itself (NVIDIA's pxt/pyt), groups with
up=2 (and with down=2 too), noise of every shape NVIDIA's fma/add_ accepts, activations of another dtype than the
weight, fp16 pre-normalization, the path-length-regularization use of no_weight_gradients, and gradcheck /
gradgradcheck of the odd branches on both implementations.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from fusegan.kernels.conv2d_resample import conv2d_resample
from fusegan.kernels.modulated_conv2d import modulated_conv2d, no_weight_gradients
from nvidia_reference import nv_parse_padding, nv_upfirdn2d

FP64_TOL = dict(atol=1e-10, rtol=1e-10)
FP32_TOL = dict(atol=2e-5, rtol=2e-5)  # fp32 demodulation coefficients: different (exact-math) summation orders
FP16_VS_NVIDIA_FP16 = dict(atol=1e-2, rtol=1e-2)  # both round x*s (or w*s) and the conv output to fp16

# Filters as NVIDIA's setup_filter would leave them (normalized, float32), written out by hand.
F_2D = torch.outer(torch.tensor([1., 3., 3., 1.]), torch.tensor([1., 3., 3., 1.])) / 64  # StyleGAN2's default
F_2D_NONSQUARE = torch.tensor([[1., 2., 1., .5], [0., 1., 3., 1.], [1., 1., 2., 0.]]) / 18.5  # 3 rows, 4 cols
F_1D = torch.tensor([1., 3., 3., 1.]) / 8  # separable: applied along x, then y
F_1D_8 = torch.tensor([1., 2., 3., 1., 1., 2., 1., 1.]) / 12  # setup_filter keeps 8+ taps separable
FILTERS = {"none": None, "2d": F_2D, "2d_3x4": F_2D_NONSQUARE, "1d": F_1D, "1d_8": F_1D_8}


# ------------------------------------------------------------------------------------------------------------
# NVIDIA's code, in plain torch

def nv_conv(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    if not flip_weight:
        w = w.flip([2, 3])
    return (F.conv_transpose2d if transpose else F.conv2d)(x, w, stride=stride, padding=padding, groups=groups)


def nv_conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    out_channels, in_per_group, kh, kw = w.shape
    fw, fh = (1, 1) if f is None else (f.shape[-1], f.shape[0])
    px0, px1, py0, py1 = nv_parse_padding(padding)
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    if kw == 1 and kh == 1 and (down > 1 and up == 1):
        x = nv_upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return nv_conv(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and (up > 1 and down == 1):
        x = nv_conv(x, w, groups=groups, flip_weight=flip_weight)
        return nv_upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)
    if down > 1 and up == 1:
        x = nv_upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return nv_conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = nv_conv(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight)
        x = nv_upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                         flip_filter=flip_filter)
        return nv_upfirdn2d(x, f, down=down, flip_filter=flip_filter) if down > 1 else x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return nv_conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)
    x = nv_upfirdn2d(x, None, padding=[px0, px1, py0, py1])
    return nv_conv(x, w, groups=groups, flip_weight=flip_weight)


def nv_modulated_conv2d(x, weight, styles, noise=None, up=1, down=1, padding=0, resample_filter=None,
                        demodulate=True, flip_weight=True, fused_modconv=True):
    n = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / np.sqrt(in_channels * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    w = dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    if demodulate and fused_modconv:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = nv_conv2d_resample(x, weight.to(x.dtype), resample_filter, up, down, padding, flip_weight=flip_weight)
        if demodulate and noise is not None:
            return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(n, -1, 1, 1))  # fma.fma
        if demodulate:
            return x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        return x if noise is None else x.add_(noise.to(x.dtype))
    x = x.reshape(1, -1, *x.shape[2:])
    x = nv_conv2d_resample(x, w.reshape(-1, in_channels, kh, kw).to(x.dtype), resample_filter, up, down, padding,
                           groups=n, flip_weight=flip_weight)
    x = x.reshape(n, -1, *x.shape[2:])
    return x if noise is None else x.add_(noise)


def _rand(*shape, seed=0, dtype=torch.float64, device="cpu"):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


# ------------------------------------------------------------------------------------------------------------
# conv2d_resample

RESAMPLE_CASES = [  # up, down, (kh, kw), padding, groups, flip_weight, flip_filter, filter
    (1, 1, (3, 2), [1, 0, 2, -1], 1, False, False, "none"),  # generic fallback (asymmetric/negative pad)
    (1, 1, (3, 3), [2, 1], 2, True, False, "none"),  # plain conv, [px, py] padding, groups
    (1, 2, (1, 1), [1, 0, 2, 1], 1, True, True, "1d"),  # 1x1 down fast path, separable filter
    (1, 2, (3, 1), 1, 2, False, False, "2d_3x4"),  # FIR then strided conv, non-square kernel and filter
    (2, 1, (1, 1), [0, 1], 1, True, True, "2d_3x4"),  # 1x1 up fast path
    (2, 1, (1, 1), -3, 1, True, False, "2d"),  # 1x1 up with a crop
    (2, 1, (3, 3), 1, 2, False, False, "2d"),  # grouped transposed conv (NVIDIA's weight reshape)
    (2, 1, (2, 3), [-4, -3, -2, -5], 1, True, False, "1d_8"),  # pxt, pyt > 0: the transposed conv pads itself
    (2, 1, (3, 3), 0, 1, True, False, "none"),  # up with no filter: zero insertion, gain 4
    (2, 2, (3, 3), 1, 2, True, True, "2d"),  # up and down at once, grouped
    (2, 2, (1, 1), [1, 0], 1, False, False, "1d"),  # up and down with a 1x1 kernel (no fast path)
]


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("case", RESAMPLE_CASES, ids=lambda c: "up{}_down{}_k{}_pad{}_g{}_fw{}_ff{}_{}".format(*c))
def test_conv2d_resample_matches_nvidia(case, impl, device):
    up, down, (kh, kw), padding, groups, flip_weight, flip_filter, fname = case
    x = _rand(2, 4, 7, 6, seed=1, device=device)
    w = _rand(6, 4 // groups, kh, kw, seed=2, device=device)
    f = FILTERS[fname]
    want = nv_conv2d_resample(x, w, None if f is None else f.to(device), up, down, padding, groups, flip_weight,
                              flip_filter)
    got = conv2d_resample(x, w, None if f is None else f.to(device), up, down, padding, groups, flip_weight,
                          flip_filter, impl=impl)
    torch.testing.assert_close(got, want, **FP64_TOL)


GRAD_RESAMPLE_CASES = [RESAMPLE_CASES[i] for i in (0, 2, 4, 6, 10)]


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("case", GRAD_RESAMPLE_CASES,
                         ids=lambda c: "up{}_down{}_k{}_pad{}_g{}_fw{}_ff{}_{}".format(*c))
def test_conv2d_resample_gradcheck_odd_branches(case, impl, device):
    up, down, (kh, kw), padding, groups, flip_weight, flip_filter, fname = case
    x = _rand(1, 2, 3, 4, seed=3, device=device).requires_grad_()
    w = _rand(2, 2 // groups, kh, kw, seed=4, device=device).requires_grad_()
    f = None if FILTERS[fname] is None else FILTERS[fname].to(device, torch.float64)
    fn = lambda x, w: conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter,  # noqa: E731
                                      impl=impl)
    assert gradcheck(fn, (x, w), fast_mode=True)
    assert gradgradcheck(fn, (x, w), fast_mode=True)


# ------------------------------------------------------------------------------------------------------------
# modulated_conv2d

MODCONV_CASES = [  # up, down, (kh, kw), padding, demodulate, flip_weight, filter, noise shape, batch
    (1, 1, (3, 3), 1, True, True, "2d", "n1hw", 2),  # the StyleGAN2 layer
    (1, 1, (1, 1), 0, False, True, "2d", "none", 2),  # ToRGB
    (1, 1, (3, 1), [1, 0, 0, 1], True, False, "none", "hw", 1),  # non-square kernel, NVIDIA's noise_const [H, W]
    (2, 1, (3, 3), 1, True, False, "2d", "11hw", 2),  # the up layer (NVIDIA: flip_weight = up == 1)
    (2, 1, (3, 3), [0, 1], False, False, "1d", "n1hw", 1),  # separable filter, demodulate=False with noise
    (2, 1, (1, 1), 0, True, True, "2d_3x4", "nohw", 2),  # 1x1 up fast path, per-channel noise
    (1, 2, (3, 3), 1, True, True, "1d_8", "1o11", 2),  # down, 8-tap separable filter
    (1, 2, (1, 1), [1, 0], False, True, "2d", "n1hw", 1),  # 1x1 down fast path
    (2, 2, (3, 3), 1, True, False, "2d", "n1hw", 2),  # up and down
]
NOISE_SHAPES = {"none": None, "n1hw": lambda n, o, h, w: (n, 1, h, w), "11hw": lambda n, o, h, w: (1, 1, h, w),
                "hw": lambda n, o, h, w: (h, w), "nohw": lambda n, o, h, w: (n, o, h, w),
                "1o11": lambda n, o, h, w: (1, o, 1, 1)}


def _modconv_case(case, device, dtype=torch.float64):
    up, down, (kh, kw), padding, demod, flip_weight, fname, noise_kind, n = case
    x, w = _rand(n, 3, 6, 5, seed=5, device=device), _rand(4, 3, kh, kw, seed=6, device=device)
    s = _rand(n, 3, seed=7, device=device) + 1
    f = None if FILTERS[fname] is None else FILTERS[fname].to(device)
    kw_ = dict(up=up, down=down, padding=padding, resample_filter=f, demodulate=demod, flip_weight=flip_weight)
    noise = None
    if noise_kind != "none":
        shape = nv_modulated_conv2d(x, w, s, fused_modconv=False, **kw_).shape
        noise = _rand(*NOISE_SHAPES[noise_kind](*shape), seed=8, device=device)
    return x.to(dtype), w, s, noise, kw_


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("case", MODCONV_CASES, ids=lambda c: "up{}_down{}_k{}_pad{}_demod{}_fw{}_{}_{}_n{}".format(*c))
def test_modulated_conv2d_matches_nvidia_fused_and_non_fused(case, impl, device):
    x, w, s, noise, kw = _modconv_case(case, device)
    for fused in (False, True):  # NVIDIA's two formulations agree; ours must equal both, whatever the flag
        want = nv_modulated_conv2d(x, w, s, noise, fused_modconv=fused, **kw)
        got = modulated_conv2d(x, w, s, noise, fused_modconv=fused, impl=impl, **kw)
        torch.testing.assert_close(got, want, **FP64_TOL)


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("case", [MODCONV_CASES[i] for i in (0, 3, 6)], ids=["up1", "up2", "down2"])
def test_activations_of_another_dtype_than_weight_and_styles(case, impl, device):
    # NVIDIA casts styles and weight to x's dtype; the demodulation coefficients stay in the weight's dtype.
    x, w, s, noise, kw = _modconv_case(case, device)
    for xd, pd in ((torch.float64, torch.float32), (torch.float32, torch.float64)):
        args = (x.to(xd), w.to(pd), s.to(pd), None if noise is None else noise.to(pd))
        want = nv_modulated_conv2d(*args, fused_modconv=False, **kw)
        got = modulated_conv2d(*args, impl=impl, **kw)
        assert got.dtype == want.dtype == xd
        torch.testing.assert_close(got, want, **FP32_TOL)


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1)])
def test_fp16_prenormalization_as_nvidia(up, down, impl, device):
    # Weight and styles large enough that x * styles * weight overflows fp16 (~1e8) without NVIDIA's
    # pre-normalization; with it, the fp16 result is NVIDIA's fp16 result (and close to the exact one).
    x = _rand(2, 5, 6, 6, seed=9, dtype=torch.float32, device=device)
    w = _rand(4, 5, 3, 3, seed=10, dtype=torch.float32, device=device) * 300
    s = _rand(2, 5, seed=11, dtype=torch.float32, device=device) * 1000
    kw = dict(up=up, down=down, padding=1, resample_filter=F_2D.to(device), flip_weight=up == 1)
    exact = nv_modulated_conv2d(x.double(), w.double(), s.double(), fused_modconv=False, **kw)
    nv_half = nv_modulated_conv2d(x.half(), w, s, fused_modconv=False, **kw)
    got = modulated_conv2d(x.half(), w, s, impl=impl, **kw)
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), nv_half.double(), **FP16_VS_NVIDIA_FP16)
    torch.testing.assert_close(got.double(), exact, **FP16_VS_NVIDIA_FP16)


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("up", [1, 2])
def test_path_length_regularization_under_no_weight_gradients(up, impl, device):
    # NVIDIA's loss.py: forward outside, d(out . noise)/d(styles) with create_graph INSIDE no_weight_gradients, the
    # penalty's backward outside. The context only skips first-order weight gradients: the penalty's gradients
    # (the weight's included, through the double backward) are those of plain autograd through NVIDIA's layer.
    x, w = _rand(2, 2, 4, 4, seed=12, device=device), _rand(3, 2, 3, 3, seed=13, device=device)
    s = _rand(2, 2, seed=14, device=device) + 1
    kw = dict(up=up, padding=1, resample_filter=F_2D.to(device, torch.float64), flip_weight=up == 1)

    def penalty_grads(layer, gate):
        leaves = [t.detach().requires_grad_() for t in (x, w, s)]
        y = layer(*leaves)
        pl_noise = _rand(*y.shape, seed=15, device=device)
        with no_weight_gradients(disable=gate):
            g, = torch.autograd.grad((y * pl_noise).sum(), [leaves[2]], create_graph=True)
        return torch.autograd.grad(g.square().sum(), leaves)

    want = penalty_grads(lambda *a: nv_modulated_conv2d(*a, fused_modconv=False, **kw), gate=False)
    got = penalty_grads(lambda *a: modulated_conv2d(*a, impl=impl, **kw), gate=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **FP64_TOL)


GRAD_MODCONV_CASES = [MODCONV_CASES[i] for i in (2, 5, 8)]


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("case", GRAD_MODCONV_CASES, ids=["k3x1_hw_noise", "up2_k1_nchw_noise", "up2_down2"])
def test_modulated_conv2d_gradcheck_odd_branches(case, impl, device):
    up, down, (kh, kw), padding, demod, flip_weight, fname, noise_kind, n = case
    x, w = _rand(n, 2, 3, 4, seed=16, device=device), _rand(2, 2, kh, kw, seed=17, device=device)
    s = _rand(n, 2, seed=18, device=device) + 1
    f = None if FILTERS[fname] is None else FILTERS[fname].to(device, torch.float64)
    kw_ = dict(up=up, down=down, padding=padding, resample_filter=f, demodulate=demod, flip_weight=flip_weight)
    shape = nv_modulated_conv2d(x, w, s, fused_modconv=False, **kw_).shape
    noise = _rand(*NOISE_SHAPES[noise_kind](*shape), seed=19, device=device)
    args = [t.requires_grad_() for t in (x, w, s, noise)]
    fn = lambda x, w, s, nz: modulated_conv2d(x, w, s, nz, impl=impl, **kw_)  # noqa: E731
    assert gradcheck(fn, args, fast_mode=True)
    assert gradgradcheck(fn, args, fast_mode=True)
