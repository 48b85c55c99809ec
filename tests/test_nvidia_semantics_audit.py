"""bias_act and upfirdn2d against NVIDIA StyleGAN2-ADA's semantics, written out here independently from the
published torch_utils/ops code (the reference formulas of `_bias_act_ref`/`_upfirdn2d_ref`, the CUDA kernel's
gradient formulas of bias_act.cu, and the helpers' padding conventions). Nothing here imports the project's code
to compute an expectation: only the functions under test."""
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from fusegan.kernels.bias_act import activation_funcs, bias_act
from fusegan.kernels.upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d
from nvidia_reference import nv_upfirdn2d

upfirdn2d_module = importlib.import_module("fusegan.kernels.upfirdn2d")

IMPLS = ["ref", "triton"]
# Same math in fp64, different evaluation order (and alpha/gain passed to Triton as two fp32 halves: ~2**-48).
TOL64 = dict(rtol=1e-11, atol=1e-12)
TOL32 = dict(rtol=2e-5, atol=2e-6)

# ----------------------------------------------------------------------------------------------
# bias_act: NVIDIA's table and formulas
# ----------------------------------------------------------------------------------------------
SQRT2 = math.sqrt(2.0)
SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717

# NVIDIA's activation_funcs: (func(x, alpha), def_alpha, def_gain, has_2nd_grad).
NV_ACTS = {
    "linear": (lambda x, a: x, 0.0, 1.0, False),
    "relu": (lambda x, a: torch.where(x > 0, x, torch.zeros_like(x)), 0.0, SQRT2, False),
    "lrelu": (lambda x, a: torch.where(x > 0, x, x * a), 0.2, SQRT2, False),
    "tanh": (lambda x, a: torch.tanh(x), 0.0, 1.0, True),
    "sigmoid": (lambda x, a: 1 / (1 + torch.exp(-x)), 0.0, 1.0, True),
    "elu": (lambda x, a: torch.where(x >= 0, x, torch.expm1(x)), 0.0, 1.0, True),
    "selu": (lambda x, a: SELU_SCALE * torch.where(x >= 0, x, SELU_ALPHA * torch.expm1(x)), 0.0, 1.0, True),
    "softplus": (lambda x, a: torch.where(x > 20, x, torch.log1p(torch.exp(x))), 0.0, 1.0, True),
    "swish": (lambda x, a: x / (1 + torch.exp(-x)), 0.0, SQRT2, True),
}


def nv_grad1(act, z, alpha):
    """f'(z) as bias_act.cu's grad == 1 branch computes it: from yy = f(z) (the saved output / gain), except
    swish, which reads z."""
    yy = NV_ACTS[act][0](z, alpha)
    one = torch.ones_like(z)
    if act == "linear":
        return one
    if act == "relu":
        return torch.where(yy > 0, one, 0 * one)
    if act == "lrelu":
        return torch.where(yy > 0, one, alpha * one)
    if act == "tanh":
        return 1 - yy * yy
    if act == "sigmoid":
        return yy * (1 - yy)
    if act == "elu":
        return torch.where(yy >= 0, one, yy + 1)
    if act == "selu":
        return torch.where(yy >= 0, SELU_SCALE * one, yy + SELU_SCALE * SELU_ALPHA)
    if act == "softplus":
        return 1 - torch.exp(-yy)
    c = torch.exp(z)
    d = c + 1
    return c * (z + d) / (d * d)


def nv_grad2(act, z, alpha):
    """f''(z) as bias_act.cu's grad == 2 branch computes it (zero for the piecewise-linear activations)."""
    yy = NV_ACTS[act][0](z, alpha)
    if act in ("linear", "relu", "lrelu"):
        return torch.zeros_like(z)
    if act == "tanh":
        return (1 - yy * yy) * (-2 * yy)
    if act == "sigmoid":
        return yy * (1 - yy) * (1 - 2 * yy)
    if act == "elu":
        return torch.where(yy >= 0, 0 * yy, yy + 1)
    if act == "selu":
        return torch.where(yy >= 0, 0 * yy, yy + SELU_SCALE * SELU_ALPHA)
    if act == "softplus":
        c = torch.exp(-yy)
        return c * (1 - c)
    c = torch.exp(z)
    d = c + 1
    return c * (z * (2 - d) + 2 * d) / (d * d * d)


def _channel_shape(x, dim):
    return [-1 if i == dim % x.ndim else 1 for i in range(x.ndim)]


def _x_away_from_kinks(shape, gen, dtype=torch.float64):
    """|x| in [0.1, 1.6] with random signs, so finite differences and f'' never straddle 0."""
    mag = torch.rand(shape, generator=gen, dtype=dtype) * 1.5 + 0.1
    return mag * (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(dtype)


def test_activation_funcs_table_and_nvidia_calling_convention():
    """networks.py reads spec.def_gain / def_alpha; NVIDIA's reference calls spec.func(x=x, alpha=alpha)."""
    z = torch.linspace(-3, 3, 13, dtype=torch.float64)
    for act, (func, def_alpha, def_gain, has_2nd) in NV_ACTS.items():
        spec = activation_funcs[act]
        assert spec.def_alpha == def_alpha and spec["def_gain"] == pytest.approx(def_gain, abs=1e-15)
        assert spec.has_2nd_grad == has_2nd
        torch.testing.assert_close(spec.func(x=z, alpha=0.3), func(z, 0.3), rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(spec.func(z, alpha=0.3), func(z, 0.3), rtol=1e-15, atol=1e-15)


# (shape, dim, alpha, gain, clamp): dims other than 1 (NVIDIA: any 0 <= dim < ndim; negative is fusegan's
# extension), alpha and gain given as 0, clamp after gain, clamp 0.
BIAS_ACT_CASES = [
    ((3, 4), 0, None, None, None),
    ((2, 3, 4), 2, 0.3, 0.5, 0.7),
    ((2, 3, 4), -1, 0.0, None, 1.1),
    ((2, 3, 2, 2), 1, None, 0.0, None),
    ((2, 3, 2, 2), 3, None, -1.5, 0.9),
    ((4, 3), 1, None, 2.0, 0.0),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(BIAS_ACT_CASES)))
@pytest.mark.parametrize("act", list(NV_ACTS))
def test_bias_act_forward_and_gradient_match_nvidia(act, case, impl, device):
    """y = clamp(f(x + b) * gain), dx = dy * gain * f'(x + b) where |y| < clamp (the CUDA kernel's rule: zero on
    the boundary), db = channel sums of dx."""
    shape, dim, alpha, gain, clamp = BIAS_ACT_CASES[case]
    func, def_alpha, def_gain, _ = NV_ACTS[act]
    gen = torch.Generator().manual_seed(case)
    x = _x_away_from_kinks(shape, gen)
    b = torch.randn(shape[dim], generator=gen, dtype=torch.float64) * 0.05
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    a = def_alpha if alpha is None else alpha
    g = def_gain if gain is None else gain
    z = x + b.reshape(_channel_shape(x, dim))
    y_want = func(z, a) * g
    keep = torch.ones_like(y_want, dtype=torch.bool) if clamp is None else y_want.abs() < clamp
    if clamp is not None:
        y_want = y_want.clamp(-clamp, clamp)
    dx_want = torch.where(keep, dy * g * nv_grad1(act, z, a), torch.zeros_like(dy))
    db_want = dx_want.movedim(dim, 0).reshape(shape[dim], -1).sum(1)

    xi = x.to(device).requires_grad_()
    bi = b.to(device).requires_grad_()
    y = bias_act(xi, bi, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp, impl=impl)
    y.backward(dy.to(device))
    torch.testing.assert_close(y.detach().cpu(), y_want, **TOL64)
    torch.testing.assert_close(xi.grad.cpu(), dx_want, **TOL64)
    torch.testing.assert_close(bi.grad.cpu(), db_want, **TOL64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("act", ["relu", "lrelu"])
def test_relu_lrelu_gradient_at_exactly_zero(act, impl, device):
    """x + b == 0 exactly: the CUDA kernel (and torch) give slope 0 for relu and alpha for lrelu there."""
    x = torch.tensor([[0.0, -0.5, 0.5], [0.25, 0.0, -0.25]], dtype=torch.float64, device=device)
    b = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64, device=device)
    x.requires_grad_()
    bias_act(x, b, act=act, alpha=0.3, gain=2.0, impl=impl).sum().backward()
    slope0 = 0.0 if act == "relu" else 0.3
    want = torch.tensor([[slope0, slope0, 1.0], [1.0, slope0, slope0]], dtype=torch.float64) * 2.0
    torch.testing.assert_close(x.grad.cpu(), want, **TOL64)  # alpha reaches fp64 kernels to ~2**-48, not exactly


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("act", list(NV_ACTS))
def test_bias_act_second_order_matches_nvidia_grad2(act, impl, device):
    """The gradient of <w, dx(x, b, dy)> (what R1 differentiates), against BiasActCudaGrad's backward:
    d/dx = w * dy * gain * f''(z) * keep, d/db = its channel sums, d/d(dy) = w * gain * f'(z) * keep."""
    gen = torch.Generator().manual_seed(7)
    shape, dim, gain, clamp = (2, 3, 4), 2, 1.3, 0.8
    x = _x_away_from_kinks(shape, gen)
    b = torch.randn(shape[dim], generator=gen, dtype=torch.float64) * 0.05
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    z = x + b.reshape(_channel_shape(x, dim))
    keep = (NV_ACTS[act][0](z, 0.2) * gain).abs() < clamp
    assert 0 < int(keep.sum()) < keep.numel()  # both sides of the clamp are exercised
    zero = torch.zeros_like(z)
    gx_want = torch.where(keep, w * dy * gain * nv_grad2(act, z, 0.2), zero)
    gdy_want = torch.where(keep, w * gain * nv_grad1(act, z, 0.2), zero)

    xi, bi, dyi = (t.to(device).requires_grad_() for t in (x, b, dy))
    y = bias_act(xi, bi, dim=dim, act=act, gain=gain, clamp=clamp, impl=impl)
    (dx,) = torch.autograd.grad(y, xi, dyi, create_graph=True)
    gx, gb, gdy = torch.autograd.grad((dx * w.to(device)).sum(), (xi, bi, dyi), allow_unused=True)
    gx = torch.zeros_like(x) if gx is None else gx.cpu()  # relu/lrelu/linear: no second-order term at all
    gb = torch.zeros_like(b) if gb is None else gb.cpu()
    torch.testing.assert_close(gx, gx_want, **TOL64)
    torch.testing.assert_close(gb, gx_want.sum((0, 1)), **TOL64)
    torch.testing.assert_close(gdy.cpu(), gdy_want, **TOL64)


# Within a few ulps of the exact result (torch's own functions are within 1 ulp), plus the smallest normal.
SMALL_MAGNITUDE_TOL = {torch.float32: dict(rtol=5e-7, atol=1.2e-38), torch.float64: dict(rtol=2e-15, atol=2.3e-308)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", ["tanh", "elu", "selu", "softplus"])
def test_triton_small_magnitude_accuracy(act, dtype, device):
    """The kernels must be as accurate as torch near the origin (and softplus far below it): exp(z) - 1 and
    log(1 + u) computed literally cancel catastrophically there (fp32 tanh(1e-6) was 1.3% off, elu(-1e-6) 4.6%,
    softplus(-30) was 0)."""
    z = torch.logspace(-9, 0.5, 39, dtype=torch.float64)
    z = torch.cat([-z.flip(0), z, torch.tensor([-15.0, -25.0, -30.0, -60.0, 19.5, 25.0], dtype=torch.float64)])
    want = NV_ACTS[act][0](z, 0.0)
    y = bias_act(z.to(dtype).to(device), act=act, impl="triton").cpu().double()
    torch.testing.assert_close(y, want, **SMALL_MAGNITUDE_TOL[dtype])
    if act == "tanh":  # near 0, f' = 1 - tanh^2 and f'' = -2 tanh f' inherit tanh's accuracy (far from 0, 1 - t^2
        z = z[z.abs() <= 1]  # cancels in torch's and NVIDIA's backward alike)
        zi = z.to(dtype).to(device).requires_grad_()
        (d1,) = torch.autograd.grad(bias_act(zi, act="tanh", impl="triton").sum(), zi, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), zi)
        torch.testing.assert_close(d1.detach().cpu().double(), nv_grad1("tanh", z, 0.0), **SMALL_MAGNITUDE_TOL[dtype])
        torch.testing.assert_close(d2.cpu().double(), nv_grad2("tanh", z, 0.0), **SMALL_MAGNITUDE_TOL[dtype])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bias_act_low_precision_keeps_dtype_and_values(dtype, impl, device):
    """fp16/bf16 in, same dtype out (NVIDIA's reference computes in the input dtype; the kernels in fp32 and round
    once): within 2 ulps of the fp32 result of the rounded inputs. No clamp, so no boundary can flip."""
    tol = {torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}[dtype]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 3, 3, generator=gen).to(dtype).to(device)
    b = torch.randn(4, generator=gen).to(dtype).to(device)
    for act in ("lrelu", "swish", "tanh"):
        y = bias_act(x, b, act=act, impl=impl)
        assert y.dtype == dtype
        want = NV_ACTS[act][0](x.double() + b.double().reshape(1, -1, 1, 1), 0.2) * NV_ACTS[act][2]
        torch.testing.assert_close(y.double(), want, **tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_bias_act_non_contiguous_x_and_bias(impl, device):
    gen = torch.Generator().manual_seed(4)
    big = torch.randn(3, 10, 5, generator=gen, dtype=torch.float64)
    x = big[:, ::2].transpose(1, 2)  # [3, 5, 5], neither dense nor contiguous; channels on dim 2
    b = torch.randn(10, generator=gen, dtype=torch.float64)[::2]
    y = bias_act(x.to(device), b.to(device), dim=2, act="lrelu", clamp=0.9, impl=impl)
    torch.testing.assert_close(y.cpu(), (F.leaky_relu(x + b, 0.2) * SQRT2).clamp(-0.9, 0.9), **TOL64)


def test_bias_act_bias_dtype_must_match_x():
    """NVIDIA's CUDA op requires b.dtype == x.dtype (its networks cast b to x's dtype first): refused, not
    silently promoted."""
    with pytest.raises(TypeError, match="b has dtype"):
        bias_act(torch.randn(2, 3, dtype=torch.float16), torch.randn(3), impl="ref")


# ----------------------------------------------------------------------------------------------
# upfirdn2d: NVIDIA's reference, written out
# ----------------------------------------------------------------------------------------------
def nv_filter_size(f):
    return (1, 1) if f is None else (f.shape[-1], f.shape[0])


NON_SYM_2D_EVEN = [[1.0, 2.0, -1.0, 0.5], [0.25, -3.0, 1.5, 2.0]]  # 2 rows x 4 columns
NON_SYM_2D_ODD = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.75], [-2.0, 1.0, 0.5]]
NON_SYM_1D_ODD = [1.0, -2.0, 0.5, 3.0, 0.75]
NON_SYM_1D_EVEN = [1.0, -2.0, 0.5, 3.0]

UPFIRDN_CASES = [
    # up, down, padding, taps, flip, gain, (h, w)
    (1, 1, 1, NON_SYM_2D_ODD, False, 1.0, (3, 4)),  # int padding
    (2, 1, [2, 1], NON_SYM_1D_EVEN, False, 4.0, (2, 3)),  # [px, py]
    ([2, 1], 1, [2, 1, 0, 0], NON_SYM_1D_ODD, True, 1.0, (5, 2)),  # non-square up, separable odd
    ([1, 3], [2, 1], [0, 1, 2, 2], NON_SYM_2D_EVEN, False, 0.5, (2, 3)),  # non-square up and down
    (3, 2, [-2, 3, 1, -1], NON_SYM_2D_ODD, True, 1.0, (3, 3)),  # negative padding crops
    (1, 1, [-1, -1, 0, 0], None, False, 2.0, (3, 4)),  # f=None: identity, crop only
    (4, 4, [1, 2, 2, 1], NON_SYM_1D_ODD, False, 16.0, (1, 1)),  # image smaller than the filter
    (1, 2, [3, 3], NON_SYM_2D_ODD, False, 1.0, (1, 2)),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(UPFIRDN_CASES)))
def test_upfirdn2d_matches_nvidia_reference(case, impl, device):
    up, down, padding, taps, flip, gain, hw = UPFIRDN_CASES[case]
    gen = torch.Generator().manual_seed(case)
    x = torch.randn(2, 3, *hw, generator=gen, dtype=torch.float64)
    f = None if taps is None else torch.tensor(taps, dtype=torch.float64)
    want = nv_upfirdn2d(x, f, up, down, padding, flip, gain)
    y = upfirdn2d(x.to(device), None if f is None else f.to(device), up=up, down=down, padding=padding,
                  flip_filter=flip, gain=gain, impl=impl)
    assert y.shape == want.shape
    torch.testing.assert_close(y.cpu(), want, **TOL64)


HELPER_FILTERS = {
    "none": None,
    "1d_sep_even": torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8,
    "2d_odd": torch.tensor(NON_SYM_2D_ODD),
    "2d_even_non_square": torch.tensor(NON_SYM_2D_EVEN),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fname", list(HELPER_FILTERS))
def test_helpers_match_nvidia_padding_and_gain_conventions(fname, impl, device):
    """filter2d / upsample2d (gain * upx * upy) / downsample2d, with NVIDIA's padding formulas."""
    f = HELPER_FILTERS[fname]
    fw, fh = nv_filter_size(f)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 4, 5, generator=gen)
    fd = None if f is None else f.to(device)
    xd = x.to(device)
    px0, px1, py0, py1 = 1, -1, 0, 2

    want = nv_upfirdn2d(x, f, padding=[px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2],
                        flip_filter=True, gain=1.5)
    torch.testing.assert_close(filter2d(xd, fd, padding=[px0, px1, py0, py1], flip_filter=True, gain=1.5,
                                        impl=impl).cpu(), want, **TOL32)

    upx, upy = 2, 3
    want = nv_upfirdn2d(x, f, up=[upx, upy], padding=[px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2,
                                                       py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2],
                        gain=1.5 * upx * upy)
    torch.testing.assert_close(upsample2d(xd, fd, up=[upx, upy], padding=[px0, px1, py0, py1], gain=1.5,
                                          impl=impl).cpu(), want, **TOL32)
    want = nv_upfirdn2d(x, f, up=2, padding=[(fw + 1) // 2, (fw - 2) // 2, (fh + 1) // 2, (fh - 2) // 2], gain=4)
    torch.testing.assert_close(upsample2d(xd, fd, impl=impl).cpu(), want, **TOL32)  # NVIDIA's defaults

    want = nv_upfirdn2d(x, f, down=[2, 1], padding=[px0 + (fw - 2 + 1) // 2, px1 + (fw - 2) // 2,
                                                    py0 + (fh - 1 + 1) // 2, py1 + (fh - 1) // 2], gain=0.5)
    torch.testing.assert_close(downsample2d(xd, fd, down=[2, 1], padding=[px0, px1, py0, py1], gain=0.5,
                                            impl=impl).cpu(), want, **TOL32)


def test_setup_filter_matches_nvidia():
    taps = [1.0, 3.0, 3.0, 1.0]
    t = torch.tensor(taps)
    outer = torch.outer(t, t)
    torch.testing.assert_close(setup_filter(taps), outer / outer.sum())
    torch.testing.assert_close(setup_filter(taps, normalize=False, gain=2.0), outer * 2.0)
    torch.testing.assert_close(setup_filter(taps, separable=True, gain=4.0), t / t.sum() * 2.0)  # gain**0.5
    eight = list(range(1, 9))
    torch.testing.assert_close(setup_filter(eight), torch.tensor(eight, dtype=torch.float32) / 36)  # 1-D from 8
    f2 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(setup_filter(f2, flip_filter=True), f2.flip([0, 1]) / 10)
    assert setup_filter(None).shape == (1, 1) and setup_filter(3.0).shape == (1, 1)
    assert setup_filter(taps).dtype == torch.float32
    # NVIDIA normalizes its own float32 copy in place; the caller's tensor must never change.
    f_in = torch.tensor([1.0, 2.0, 1.0])
    setup_filter(f_in)
    assert f_in.tolist() == [1.0, 2.0, 1.0]


def test_nvidia_private_helpers_that_nvidia_code_calls():
    """NVIDIA's conv2d_resample (and user code built on it) calls upfirdn2d._get_filter_size, _parse_scaling and
    _parse_padding with one argument each."""
    m = upfirdn2d_module
    assert m._get_filter_size(None) == (1, 1)
    assert m._get_filter_size(torch.ones(5)) == (5, 5)
    assert m._get_filter_size(torch.ones(3, 4)) == (4, 3)
    assert m._parse_scaling(2) == (2, 2) and m._parse_scaling([2, 3]) == (2, 3)
    assert m._parse_padding(1) == (1, 1, 1, 1) and m._parse_padding([1, 2]) == (1, 1, 2, 2)
    assert m._parse_padding([1, 2, 3, 4]) == (1, 2, 3, 4)


GRAD_CASES = [
    # up, down, padding, taps, flip, gain, (h, w)
    ([2, 1], [1, 3], [1, -1, 2, 0], [0.5, -1.0, 2.0], True, 1.0, (2, 3)),
    (3, 2, [-1, 2, 0, -1], NON_SYM_2D_EVEN, False, 0.7, (3, 2)),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(GRAD_CASES)))
def test_upfirdn2d_gradcheck_gradgradcheck_odd_modes(case, impl, device):
    up, down, padding, taps, flip, gain, hw = GRAD_CASES[case]
    f = torch.tensor(taps, dtype=torch.float64, device=device)
    x = torch.randn(1, 2, *hw, dtype=torch.float64, device=device, requires_grad=True)

    def fn(x):
        return upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain, impl=impl)

    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


# ----------------------------------------------------------------------------------------------
# Kernels that compile on a GPU
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module_name", ["fusegan.kernels.bias_act", "fusegan.kernels.upfirdn2d"])
def test_jit_functions_read_only_constexpr_globals(module_name):
    """Triton's GPU compiler refuses a @jit function that reads a plain module-level number (NameError 'Cannot
    access global variable ...'), while the CPU interpreter accepts it: selu and softplus failed to compile on
    every GPU that way. Each global a jit function reads must be a tl.constexpr, a jit function or a module."""
    import types

    import triton
    import triton.language as tl

    module = importlib.import_module(module_name)
    jit_types = tuple(t for t in (getattr(triton.runtime, "JITFunction", None),
                                  getattr(triton.runtime.interpreter, "InterpretedFunction", None)) if t)
    checked = 0
    for name, obj in vars(module).items():
        if not isinstance(obj, jit_types) or obj.fn.__module__ != module.__name__:
            continue
        checked += 1
        code_objects = [obj.fn.__code__]
        while code_objects:
            code = code_objects.pop()
            code_objects += [c for c in code.co_consts if isinstance(c, types.CodeType)]
            for ref in code.co_names:
                if ref not in obj.fn.__globals__:
                    continue  # an attribute name (tl.where) or a builtin
                value = obj.fn.__globals__[ref]
                assert isinstance(value, (types.ModuleType, tl.constexpr, *jit_types)) or value is tl, (
                    f"{name} reads the global {ref} = {value!r}, which a GPU compile refuses; "
                    f"make it a tl.constexpr or a literal")
    assert checked >= 2
