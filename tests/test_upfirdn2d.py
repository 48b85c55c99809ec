"""Tests for fusegan.kernels.upfirdn2d: reference vs definitions, Triton (interpreter on CPU) vs reference,
gradients of first and second order on both paths, dispatch, bad input, torch.compile and opcheck."""
import importlib

import pytest
import torch
import torch.nn.functional as F

# The package exports the function `upfirdn2d`, which shadows the module of the same name as an attribute.
mod = importlib.import_module("fusegan.kernels.upfirdn2d")
from fusegan.kernels.bias_act import bias_act
from fusegan.kernels.upfirdn2d import (_upfirdn2d_bias_act_op, _upfirdn2d_op, _upfirdn2d_ref, downsample2d, filter2d, setup_filter,
                                       upfirdn2d, upfirdn2d_bias_act, upsample2d)

# Triton vs reference, per dtype. Both sum the same few products in fp32/fp64; only the order differs.
TOL = {torch.float64: dict(atol=1e-12, rtol=1e-12), torch.float32: dict(atol=1e-5, rtol=1e-5)}
# GPU only: fp16/bf16 outputs (computed in fp32, rounded once on store) vs the fp32 reference.
LOW_TOL = {torch.float16: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}

NONSYM_1D = [1.0, -2.0, 0.5, 3.0]  # not a palindrome: a missed or doubled flip changes the result
NONSYM_2D = [[1.0, 2.0, -1.0, 0.5], [0.25, -3.0, 1.5, 2.0], [0.0, 1.0, -0.5, 4.0]]  # 3 rows x 4 columns


def _filter(taps, dtype=torch.float32):
    return torch.tensor(taps, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Independent computations of the definition.


def _loop_upfirdn2d(x, f, up, down, padding, flip_filter, gain):
    """Straight from the definition, one output pixel at a time: y[oy, ox] = gain * sum_k w[k] * xp[oy*down + k],
    xp being x zero-inserted by `up` then padded, and w the filter reversed (true convolution) unless flipped."""
    upx, upy = (up, up) if isinstance(up, int) else up
    downx, downy = (down, down) if isinstance(down, int) else down
    if isinstance(padding, int):
        padding = [padding] * 4
    elif len(padding) == 2:
        padding = [padding[0], padding[0], padding[1], padding[1]]
    px0, px1, py0, py1 = padding
    f2 = torch.outer(f, f) if f.ndim == 1 else f
    w = f2.double() if flip_filter else f2.double().flip(0).flip(1)
    fh, fw = w.shape
    n, c, h, wd = x.shape

    def xp(b, ch, r, s):  # padded, upsampled image at row r, column s
        u, v = r - py0, s - px0
        if 0 <= u < h * upy and 0 <= v < wd * upx and u % upy == 0 and v % upx == 0:
            return x[b, ch, u // upy, v // upx].item()
        return 0.0

    oh = (h * upy + py0 + py1 - fh) // downy + 1
    ow = (wd * upx + px0 + px1 - fw) // downx + 1
    y = torch.zeros(n, c, oh, ow, dtype=torch.float64)
    for b in range(n):
        for ch in range(c):
            for oy in range(oh):
                for ox in range(ow):
                    y[b, ch, oy, ox] = gain * sum(
                        w[ky, kx].item() * xp(b, ch, oy * downy + ky, ox * downx + kx) for ky in range(fh) for kx in range(fw)
                    )
    return y


LOOP_CASES = [
    # up, down, padding, filter, flip, gain
    (1, 1, 0, NONSYM_2D, False, 1.0),
    (2, 1, [2, 1], NONSYM_1D, False, 1.5),
    (1, 2, [1, 2, 0, 1], NONSYM_2D, True, 1.0),
    (3, 2, [2, -1, -2, 3], NONSYM_2D, False, 0.5),
    ([2, 1], [1, 2], [1, 0, 2, 1], NONSYM_1D, True, 2.0),
    (4, 4, [-1, 0, 3, -2], [1.0, 3.0, 3.0, 1.0], False, 1.0),
]


@pytest.mark.parametrize("up, down, padding, taps, flip, gain", LOOP_CASES)
def test_reference_matches_explicit_loop(up, down, padding, taps, flip, gain):
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    f = _filter(taps, torch.float64)
    expected = _loop_upfirdn2d(x, f, up, down, padding, flip, gain)
    torch.testing.assert_close(_upfirdn2d_ref(x, f, up, down, padding, flip, gain), expected, **TOL[torch.float64])


@pytest.mark.parametrize("up, down, padding, taps, flip, gain", LOOP_CASES[:3])
def test_triton_matches_explicit_loop(device, up, down, padding, taps, flip, gain):
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    f = _filter(taps, torch.float64)
    expected = _loop_upfirdn2d(x, f, up, down, padding, flip, gain)
    y = upfirdn2d(x.to(device), f.to(device), up, down, padding, flip, gain, impl="triton")
    torch.testing.assert_close(y.cpu(), expected, **TOL[torch.float64])


@pytest.mark.parametrize("up", [2, 3])
def test_reference_upsampling_is_conv_transpose(up):
    # Transposed convolution with stride s is a true convolution of the zero-inserted input, with full support:
    # the zero-inserted image padded by K-1 before and K-up after (its trailing zeros are not part of it).
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    f = _filter(NONSYM_2D, torch.float64)
    fh, fw = f.shape
    expected = F.conv_transpose2d(x, f.expand(3, 1, fh, fw), stride=up, groups=3)
    y = _upfirdn2d_ref(x, f, up=up, padding=[fw - 1, fw - up, fh - 1, fh - up])
    torch.testing.assert_close(y, expected, **TOL[torch.float64])


def test_reference_downsampling_is_strided_correlation():
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    f = _filter(NONSYM_2D, torch.float64)
    expected = F.conv2d(F.pad(x, [1, 1, 2, 0]), f.expand(3, 1, *f.shape), stride=2, groups=3)
    y = _upfirdn2d_ref(x, f, down=2, padding=[1, 1, 2, 0], flip_filter=True)
    torch.testing.assert_close(y, expected, **TOL[torch.float64])


# ------------------------------------------------------------------------------------------------
# Triton (interpreter on CPU) vs reference.

TRITON_CASES = [
    # up, down, padding, filter, flip, gain, input size (h, w)
    (1, 1, 0, None, False, 1.0, (5, 6)),
    (1, 1, 1, NONSYM_2D, False, 1.0, (5, 6)),
    (2, 1, [2, 1], [1.0, 3.0, 3.0, 1.0], False, 4.0, (5, 7)),
    (2, 1, [2, 1, 2, 1], NONSYM_1D, True, 2.0, (4, 5)),
    (4, 1, [3, 2, 1, 0], NONSYM_2D, False, 16.0, (3, 3)),
    (1, 2, [1, 1], [1.0, 3.0, 3.0, 1.0], False, 1.0, (8, 9)),
    (1, 2, [0, 1, 1, 0], NONSYM_2D, True, 0.7, (9, 7)),
    (1, 4, [2, 1, 1, 2], NONSYM_1D, False, 1.0, (11, 13)),
    (2, 2, [-1, 2, 1, -2], NONSYM_2D, False, 1.3, (6, 5)),
    (4, 2, [-3, -1, 2, -4], NONSYM_1D, True, 1.0, (4, 6)),
    (2, 4, [1, -2, 0, 3], NONSYM_2D, True, 0.9, (7, 6)),
    ([2, 1], 1, [2, 1, 0, 0], NONSYM_1D, False, 1.0, (5, 6)),
    ([2, 1], [1, 2], [1, 2, 3, 0], NONSYM_2D, False, 1.0, (5, 6)),
    (3, 1, [1, 1, 2, 2], NONSYM_2D, False, 1.0, (4, 3)),
    (2, 1, [2, 1], [1.0, 3.0, 3.0, 1.0], False, 1.0, (1, 1)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("up, down, padding, taps, flip, gain, hw", TRITON_CASES)
def test_triton_matches_reference(device, dtype, up, down, padding, taps, flip, gain, hw):
    x = torch.randn(2, 3, *hw, dtype=dtype, device=device)
    f = None if taps is None else _filter(taps).to(device)
    y = upfirdn2d(x, f, up, down, padding, flip, gain, impl="triton")
    expected = upfirdn2d(x, f, up, down, padding, flip, gain, impl="ref")
    assert y.shape == expected.shape and y.dtype == dtype
    torch.testing.assert_close(y, expected, **TOL[dtype])


def test_triton_spans_several_tiles(device, monkeypatch):
    # 64x300 outputs: several programs along both spatial axes, with a ragged last tile in each
    # (at the GPU tile size; the interpreter's larger tiles would cover the rows in one program).
    monkeypatch.setattr(mod, "_INTERPRETER_TILE", mod._TILE)
    x = torch.randn(1, 2, 32, 150, device=device)
    f = _filter(NONSYM_2D).to(device)
    y = upfirdn2d(x, f, up=2, padding=[2, 1, 1, 1], impl="triton")
    assert y.shape == (1, 2, 64, 300)
    torch.testing.assert_close(y, upfirdn2d(x, f, up=2, padding=[2, 1, 1, 1], impl="ref"), **TOL[torch.float32])


@pytest.mark.parametrize("channels", [3, 70])  # 70 > the 64-channel tile: a ragged channel block
def test_triton_nchw_small_planes_pack_channels(device, channels):
    # 5x6 planes leave room in a tile: one program covers several channels, the last block ragged.
    x = torch.randn(2, channels, 5, 6, device=device)
    f = _filter(NONSYM_2D).to(device)
    torch.testing.assert_close(upfirdn2d(x, f, up=2, padding=[1, 2, 2, 1], impl="triton"),
                               upfirdn2d(x, f, up=2, padding=[1, 2, 2, 1], impl="ref"), **TOL[torch.float32])


@pytest.mark.parametrize("channels", [3, 70])  # 70 > the 64-channel tile: a ragged channel block
def test_triton_channels_last_keeps_layout(device, channels):
    x = torch.randn(2, channels, 5, 6, device=device).to(memory_format=torch.channels_last)
    f = _filter(NONSYM_1D).to(device)
    y = upfirdn2d(x, f, up=2, down=1, padding=[2, 1, 1, 2], impl="triton")
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    expected = upfirdn2d(x.contiguous(), f, up=2, padding=[2, 1, 1, 2], impl="ref")
    torch.testing.assert_close(y, expected, **TOL[torch.float32])
    assert upfirdn2d(x, f, up=2, padding=[2, 1, 1, 2], impl="ref").is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("view", ["strided_w", "permuted_hw", "expanded_c"])
def test_triton_non_contiguous_input(device, view):
    base = torch.randn(2, 3, 6, 10, device=device)
    x = {
        "strided_w": base[:, :, :, ::2],
        "permuted_hw": base.transpose(2, 3),
        "expanded_c": base[:, :1].expand(2, 3, 6, 10),
    }[view]
    assert not x.is_contiguous()
    f = _filter(NONSYM_2D).to(device)
    y = upfirdn2d(x, f, up=2, down=1, padding=[1, 2, 2, 1], flip_filter=True, impl="triton")
    assert y.is_contiguous()
    expected = upfirdn2d(x.contiguous(), f, up=2, padding=[1, 2, 2, 1], flip_filter=True, impl="ref")
    torch.testing.assert_close(y, expected, **TOL[torch.float32])


def test_empty_batch(device):
    x = torch.randn(0, 3, 4, 4, device=device)
    f = _filter(NONSYM_1D).to(device)
    y = upfirdn2d(x, f, up=2, padding=[2, 1], impl="triton")  # [px, py]: 2 on left and right, 1 on top and bottom
    assert y.shape == (0, 3, 7, 9) == upfirdn2d(x, f, up=2, padding=[2, 1], impl="ref").shape


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_zero_channels(device, impl):
    # An empty channel dim gives an empty output of the right shape on both paths (the reference's depthwise conv
    # used to crash with groups=0).
    for f in (_filter(NONSYM_1D).to(device), _filter(NONSYM_2D).to(device)):
        one = upfirdn2d(torch.randn(2, 1, 4, 5, device=device), f, up=2, padding=[2, 1, 1, 2], impl=impl)
        y = upfirdn2d(torch.randn(2, 0, 4, 5, device=device), f, up=2, padding=[2, 1, 1, 2], impl=impl)
        assert y.shape == (2, 0, *one.shape[2:])


# ------------------------------------------------------------------------------------------------
# Gain conventions and the helpers.


def test_separable_filter_equals_its_outer_product(device):
    # A 1-D filter takes gain**0.5 per pass, so in all it scales by gain, exactly as the 2-D outer product.
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, device=device)
    f = _filter(NONSYM_1D, torch.float64).to(device)
    for impl in ("ref", "triton"):
        y1 = upfirdn2d(x, f, up=2, padding=[2, 1], gain=3.0, impl=impl)
        y2 = upfirdn2d(x, torch.outer(f, f), up=2, padding=[2, 1], gain=3.0, impl=impl)
        torch.testing.assert_close(y1, y2, **TOL[torch.float64])


def test_setup_filter():
    f = setup_filter([1, 3, 3, 1])
    expected = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
    assert f.dtype == torch.float32 and f.shape == (4, 4)
    torch.testing.assert_close(f, expected)
    # Separable from 8 taps on by default, or on request; gain**0.5 for a separable filter.
    assert setup_filter(list(range(1, 9))).shape == (8,)
    sep = setup_filter([1, 2, 3], separable=True, gain=4.0)
    torch.testing.assert_close(sep, torch.tensor([1.0, 2, 3]) / 6 * 2)
    torch.testing.assert_close(setup_filter([[1, 2], [3, 4]], normalize=False, flip_filter=True, gain=2.0),
                               torch.tensor([[8.0, 6], [4, 2]]))
    torch.testing.assert_close(setup_filter(None), torch.ones(1, 1))
    # A 0-D filter is one tap; as a 1-D filter of 1 tap it becomes the 1x1 outer product (2 * 2), as NVIDIA's.
    torch.testing.assert_close(setup_filter(2.0, normalize=False), torch.full((1, 1), 4.0))


def _helper_cases():
    f2d = _filter(NONSYM_2D)  # even width, odd height: the floor divisions in the padding formulas differ
    f1d = setup_filter([1, 3, 3, 1], separable=True)
    return [(f2d, [1, 0, -1, 2]), (f1d, 0), (setup_filter([1, 2, 1]), [1, -1])]


@pytest.mark.parametrize("case", range(3))
def test_helpers_match_reference_compositions(device, case):
    f, padding = _helper_cases()[case]
    f = f.to(device)
    fw, fh = f.shape[-1], f.shape[0]
    px0, px1, py0, py1 = mod._parse_padding(padding)
    x = torch.randn(2, 3, 6, 7, device=device)

    expected = _upfirdn2d_ref(x, f, padding=[px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2],
                              flip_filter=True, gain=1.5)
    torch.testing.assert_close(filter2d(x, f, padding, flip_filter=True, gain=1.5, impl="triton"), expected, **TOL[torch.float32])

    # upsample2d multiplies the gain by up**2 (upx * upy) to make up for the inserted zeros.
    expected = _upfirdn2d_ref(x, f, up=[2, 4], padding=[px0 + (fw + 1) // 2, px1 + (fw - 2) // 2, py0 + (fh + 3) // 2, py1 + (fh - 4) // 2],
                              gain=1.5 * 8)
    torch.testing.assert_close(upsample2d(x, f, up=[2, 4], padding=padding, gain=1.5, impl="triton"), expected, **TOL[torch.float32])

    expected = _upfirdn2d_ref(x, f, down=2, padding=[px0 + (fw - 1) // 2, px1 + (fw - 2) // 2, py0 + (fh - 1) // 2, py1 + (fh - 2) // 2],
                              gain=1.5)
    torch.testing.assert_close(downsample2d(x, f, padding=padding, gain=1.5, impl="triton"), expected, **TOL[torch.float32])


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_helpers_keep_sizes_and_dc_gain(device, impl):
    # With a normalized filter and no extra padding: filter2d keeps the size, upsample2d multiplies it by up,
    # downsample2d divides it, and a constant image keeps its value away from the zero-padded borders.
    x = torch.full((1, 2, 8, 8), 3.0, device=device)
    f = setup_filter([1, 3, 3, 1], device=device)
    y = filter2d(x, f, impl=impl)
    assert y.shape == x.shape
    torch.testing.assert_close(y[:, :, 2:-2, 2:-2], torch.full((1, 2, 4, 4), 3.0, device=device))
    y = upsample2d(x, f, impl=impl)
    assert y.shape == (1, 2, 16, 16)
    torch.testing.assert_close(y[:, :, 2:-2, 2:-2], torch.full((1, 2, 12, 12), 3.0, device=device))
    y = downsample2d(x, f, impl=impl)
    assert y.shape == (1, 2, 4, 4)
    torch.testing.assert_close(y[:, :, 1:-1, 1:-1], torch.full((1, 2, 2, 2), 3.0, device=device))


# ------------------------------------------------------------------------------------------------
# Gradients, first and second order, on both paths.

GRAD_CASES = [
    # up, down, padding, filter, flip, gain
    (2, 1, [2, 1], [1.0, 3.0, 3.0, 1.0], False, 2.0),
    (1, 2, [1, -1, 2, 0], NONSYM_2D, True, 0.8),
    ([2, 1], [1, 2], [1, 2, 0, 1], NONSYM_1D, False, 1.0),
]


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("up, down, padding, taps, flip, gain", GRAD_CASES)
def test_gradcheck_and_gradgradcheck(device, impl, up, down, padding, taps, flip, gain):
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    f = _filter(taps, torch.float64).to(device)

    def fn(x):
        return upfirdn2d(x, f, up, down, padding, flip, gain, impl=impl)

    # The interpreter costs tens of ms a launch, and the full Jacobians need hundreds of launches: the Triton
    # path checks random projections of them (fast_mode), plus one full Jacobian below on a tiny input.
    fast = impl == "triton" and device.type == "cpu"
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=fast)


def test_gradcheck_full_jacobian_triton(device):
    x = torch.randn(1, 1, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    f = _filter(NONSYM_2D, torch.float64).to(device)
    assert torch.autograd.gradcheck(lambda x: upfirdn2d(x, f, [2, 1], [1, 2], [2, 1, 0, 2], True, 1.3, impl="triton"), (x,))


def test_triton_backward_is_the_transposed_op(device):
    # <upfirdn2d(x), g> == <x, dx(g)> for random x, g: checks the backward padding formulas on an awkward case.
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, device=device, requires_grad=True)
    f = _filter(NONSYM_2D, torch.float64).to(device)
    y = upfirdn2d(x, f, up=[2, 3], down=[3, 2], padding=[2, -1, 3, 1], impl="triton")
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    (dx_ref,) = torch.autograd.grad(upfirdn2d(x, f, up=[2, 3], down=[3, 2], padding=[2, -1, 3, 1], impl="ref"), x, g)
    torch.testing.assert_close(dx, dx_ref, **TOL[torch.float64])
    torch.testing.assert_close((y * g).sum(), (x * dx).sum(), **TOL[torch.float64])


# ------------------------------------------------------------------------------------------------
# Dispatch.


@pytest.fixture
def calls(monkeypatch):
    """Records which implementation ran."""
    seen = []
    ref, tri = mod._upfirdn2d_ref, mod._upfirdn2d_triton
    monkeypatch.setattr(mod, "_upfirdn2d_ref", lambda *a, **k: seen.append("ref") or ref(*a, **k))
    monkeypatch.setattr(mod, "_upfirdn2d_triton", lambda *a, **k: seen.append("triton") or tri(*a, **k))
    return seen


def test_dispatch(device, monkeypatch, calls):
    x = torch.randn(1, 1, 3, 3, device=device)
    f = _filter(NONSYM_1D).to(device)
    upfirdn2d(x, f, padding=2, impl="ref")
    upfirdn2d(x, f, padding=2, impl="triton")
    upfirdn2d(x, f, padding=2)  # CUDA, or CPU under TRITON_INTERPRET=1 (as in these tests): Triton
    monkeypatch.setenv("FUSEGAN_IMPL", "ref")
    upfirdn2d(x, f, padding=2)
    upsample2d(x, f)
    upfirdn2d(x, f, padding=2, impl="triton")  # an explicit impl beats the variable
    monkeypatch.setenv("FUSEGAN_IMPL", "triton")
    downsample2d(x, f)
    assert calls == ["ref", "triton", "triton", "ref", "ref", "triton", "triton"]


def test_dispatch_bad_env(monkeypatch):
    monkeypatch.setenv("FUSEGAN_IMPL", "cuda")
    with pytest.raises(ValueError, match="FUSEGAN_IMPL must be one of"):
        upfirdn2d(torch.randn(1, 1, 3, 3), None)


def test_dispatch_bad_impl():
    with pytest.raises(ValueError, match="impl must be one of"):
        upfirdn2d(torch.randn(1, 1, 3, 3), None, impl="fast")


# ------------------------------------------------------------------------------------------------
# Bad input: each raises before any launch, naming the argument.

X = torch.randn(1, 2, 4, 4)
F1 = torch.ones(4)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(x=X[0]), ValueError, r"x must be 4-D"),
        (dict(x=X.tolist()), TypeError, r"x must be a torch.Tensor"),
        (dict(x=X.to(torch.int32)), TypeError, r"x must have dtype"),
        (dict(f=[1.0, 3.0, 3.0, 1.0]), TypeError, r"f must be a torch.Tensor"),
        (dict(f=torch.tensor(1.0)), ValueError, r"f must be 1-D \(separable\) or 2-D"),
        (dict(f=torch.ones(2, 2, 2)), ValueError, r"f must be 1-D \(separable\) or 2-D"),
        (dict(f=torch.ones(0)), ValueError, r"f must not be empty"),
        (dict(f=torch.ones(4, dtype=torch.int64)), TypeError, r"f must have dtype"),
        (dict(f=torch.ones(4, device="meta")), ValueError, r"f is on meta but x is on cpu"),
        (dict(f=torch.ones(4, requires_grad=True)), ValueError, r"f must not require grad"),
        (dict(up=0), ValueError, r"up must be >= 1"),
        (dict(up=2.0), TypeError, r"up must be a positive int"),
        (dict(up=True), TypeError, r"up must be a positive int"),
        (dict(up=[2, 0]), ValueError, r"up\[1\] must be >= 1"),
        (dict(up=[1, 2, 3]), ValueError, r"up must be an int or an \[x, y\] pair"),
        (dict(down=-1), ValueError, r"down must be >= 1"),
        (dict(down=[1.5, 1]), TypeError, r"down\[0\] must be a positive int"),
        (dict(padding=[1, 2, 3]), ValueError, r"padding must be an int, \[px, py\] or"),
        (dict(padding=1.0), TypeError, r"padding must hold ints"),
        (dict(padding=[1, None]), TypeError, r"padding must hold ints"),
        (dict(padding=[0, -4, 0, 0]), ValueError, r"output width would be <= 0: .*\(px0, px1\) 0 \+ -4"),
        (dict(padding=[0, 0, -3, -2]), ValueError, r"output height would be <= 0: .*\(py0, py1\) -3 \+ -2"),
        (dict(gain=float("nan")), TypeError, r"gain must be a finite number"),
        (dict(gain=-1.0), ValueError, r"gain must be >= 0 with a separable"),
    ],
)
@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_bad_input(monkeypatch, calls, impl, kwargs, error, message):
    args = dict(x=X, f=F1, up=1, down=1, padding=0, gain=1.0)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        upfirdn2d(args["x"], args["f"], args["up"], args["down"], args["padding"], gain=args["gain"], impl=impl)
    assert calls == []  # nothing launched


def test_bad_input_helpers():
    with pytest.raises(ValueError, match=r"up must be >= 1"):
        upsample2d(X, F1, up=0)
    with pytest.raises(TypeError, match=r"down must be a positive int"):
        downsample2d(X, F1, down=2.5)
    with pytest.raises(ValueError, match=r"padding must be an int"):
        filter2d(X, F1, padding=[1, 2, 3])
    with pytest.raises(ValueError, match=r"f must be 1-D \(separable\) or 2-D"):
        filter2d(X, torch.ones(1, 1, 1))
    with pytest.raises(ValueError, match=r"x must be 4-D"):
        upsample2d(X[0], F1)
    with pytest.raises(ValueError, match=r"f must be 0-D, 1-D or 2-D"):
        setup_filter(torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match=r"f must not be empty"):
        setup_filter([])


# ------------------------------------------------------------------------------------------------
# torch.compile and the custom op's registrations.


def test_compile_aot_eager_fullgraph_triton(device):
    f = setup_filter([1, 3, 3, 1], device=device)

    def fn(x):
        y = upsample2d(x, f, impl="triton")
        return downsample2d(y * y, f, impl="triton").sum()

    x = torch.randn(1, 2, 5, 6, device=device, requires_grad=True)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    (grad,) = torch.autograd.grad(loss, x)
    loss_ref = fn(x)
    (grad_ref,) = torch.autograd.grad(loss_ref, x)
    torch.testing.assert_close(loss, loss_ref, **TOL[torch.float32])
    torch.testing.assert_close(grad, grad_ref, **TOL[torch.float32])


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_opcheck(device, layout):
    x = torch.randn(1, 3, 4, 5, dtype=torch.float64, device=device).to(memory_format=layout).requires_grad_()
    f = _filter(NONSYM_2D, torch.float64).to(device)
    torch.library.opcheck(_upfirdn2d_op, (x, f, [2, 1], [1, 2], [2, 1, 0, 1], False, 1.5))


# ------------------------------------------------------------------------------------------------
# Fused epilogue: upfirdn2d_bias_act = upfirdn2d, + noise, then bias_act, in one kernel.

# (up, down, padding, taps, flip, gain, input hw): StyleGAN2's up=2 FIR (gain 4) on odd sizes, and a separable
# non-symmetric downsampling FIR with correlation.
EPI_FIR_CASES = [
    (2, 1, [2, 1, 2, 1], [1.0, 3.0, 3.0, 1.0], False, 4.0, (5, 7)),
    (1, 2, [1, 2, 2, 1], NONSYM_1D, True, 1.5, (7, 6)),
]
# (noise, bias, act, alpha, act_gain, clamp): noise is None, "n1hw" (StyleGAN2's per-pixel noise) or "nchw"
EPI_SPECS = {
    "noise_only": ("n1hw", False, "linear", None, None, None),
    "bias_lrelu": (None, True, "lrelu", None, None, None),
    "stylegan_layer": ("n1hw", True, "lrelu", 0.2, 2 ** 0.5, 0.6),
    "full_noise_linear_clamp": ("nchw", False, "linear", None, 1.7, 0.5),
}


def _epi_inputs(case, spec, dtype, layout, device, requires_grad=False):
    up, down, padding, taps, flip, gain, hw = case
    noise_kind, has_bias, act, alpha, act_gain, clamp = spec
    x = torch.randn(2, 3, *hw, dtype=dtype, device=device).to(memory_format=layout)
    f = _filter(taps, dtype).to(device)
    oh, ow = upfirdn2d(x, f, up, down, padding, flip, gain, impl="ref").shape[2:]
    noise = None if noise_kind is None else torch.randn(2, 1 if noise_kind == "n1hw" else 3, oh, ow, dtype=dtype, device=device)
    bias = torch.randn(3, dtype=dtype, device=device) if has_bias else None
    fir = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    epi = dict(noise=noise, bias=bias, act=act, alpha=alpha, act_gain=act_gain, clamp=clamp)
    if requires_grad:
        for t in (x, noise, bias):
            if t is not None:
                t.requires_grad_()
    return x, f, fir, epi


def _fir_then_bias_act(x, f, fir, epi, impl):
    """The unfused composition: upfirdn2d, + noise, then bias_act (NVIDIA's order of operations)."""
    y = upfirdn2d(x, f, **fir, impl=impl)
    if epi["noise"] is not None:
        y = y + epi["noise"]
    return bias_act(y, epi["bias"], act=epi["act"], alpha=epi["alpha"], gain=epi["act_gain"], clamp=epi["clamp"], impl=impl)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spec", sorted(EPI_SPECS))
@pytest.mark.parametrize("case", EPI_FIR_CASES, ids=["up2", "down2_separable"])
def test_fused_epilogue_matches_upfirdn2d_then_bias_act(device, case, spec, dtype, layout):
    x, f, fir, epi = _epi_inputs(case, EPI_SPECS[spec], dtype, layout, device)
    want = _fir_then_bias_act(x, f, fir, epi, impl="ref")
    for impl in ("triton", "ref"):
        got = upfirdn2d_bias_act(x, f, **fir, **epi, impl=impl)
        assert got.dtype == dtype and got.is_contiguous(memory_format=layout)
        torch.testing.assert_close(got, want, **TOL[dtype])
    if epi["clamp"] is not None:  # the clamp must be doing something here, on some outputs only
        assert 0 < (want.abs() == epi["clamp"]).sum() < want.numel()


def test_fused_epilogue_matches_the_triton_composition(device):
    # Also against the unfused Triton kernels (upfirdn2d's, then bias_act's) on the same inputs.
    x, f, fir, epi = _epi_inputs(EPI_FIR_CASES[0], EPI_SPECS["stylegan_layer"], torch.float32, torch.channels_last, device)
    torch.testing.assert_close(upfirdn2d_bias_act(x, f, **fir, **epi, impl="triton"), _fir_then_bias_act(x, f, fir, epi, "triton"),
                               **TOL[torch.float32])


def test_fused_epilogue_noise_broadcast_shapes(device):
    # Any noise broadcastable to the output works (zero strides in the kernel): [OH, OW], [1, C, 1, OW], [N, 1, 1, 1].
    x, f, fir, _ = _epi_inputs(EPI_FIR_CASES[0], EPI_SPECS["noise_only"], torch.float64, torch.contiguous_format, device)
    oh, ow = upfirdn2d(x, f, **fir, impl="ref").shape[2:]
    for shape in [(oh, ow), (1, 3, 1, ow), (2, 1, 1, 1)]:
        nz = torch.randn(shape, dtype=torch.float64, device=device)
        got = upfirdn2d_bias_act(x, f, **fir, noise=nz, act="lrelu", impl="triton")
        want = bias_act(upfirdn2d(x, f, **fir, impl="ref") + nz, act="lrelu", impl="ref")
        torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("view", ["strided", "expanded"])
def test_fused_epilogue_non_contiguous_bias_forward_and_gradient(device, view):
    # The backward's epilogue-gradient kernel reads the bias too: a strided or stride-0 bias must give what its
    # contiguous copy gives (it used to be read as if contiguous there: wrong dz, db and dx).
    x, f, fir, epi = _epi_inputs(EPI_FIR_CASES[0], EPI_SPECS["stylegan_layer"], torch.float64, torch.contiguous_format, device)
    base = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
    bias = base[::2] if view == "strided" else base[:1].expand(3)
    assert not bias.is_contiguous()
    gy = torch.randn_like(upfirdn2d_bias_act(x, f, **fir, **{**epi, "bias": bias.detach()}, impl="ref"))
    results = []
    for b, impl in ((bias, "triton"), (bias.contiguous(), "triton"), (bias, "ref")):
        xg = x.detach().clone().requires_grad_()
        y = upfirdn2d_bias_act(xg, f, **fir, **{**epi, "bias": b}, impl=impl)
        results.append((y, *torch.autograd.grad(y, [xg, base], gy)))
    for got in results[:2]:
        for a, b in zip(got, results[2]):
            torch.testing.assert_close(a, b, **TOL[torch.float64])


def _launches(monkeypatch):
    """Records (kernel name, constexpr EPILOGUE) for every Triton launch."""
    from triton.runtime.jit import KernelInterface

    seen, getitem = [], KernelInterface.__getitem__

    def spy(kernel, grid):
        launch = getitem(kernel, grid)

        def run(*args, **kwargs):
            seen.append((getattr(kernel, "__name__", None) or kernel.fn.__name__, kwargs.get("EPILOGUE")))
            return launch(*args, **kwargs)
        return run

    monkeypatch.setattr(KernelInterface, "__getitem__", spy)
    return seen


def test_plain_calls_compile_the_epilogue_out(device, monkeypatch):
    x, f, fir, epi = _epi_inputs(EPI_FIR_CASES[0], EPI_SPECS["stylegan_layer"], torch.float32, torch.contiguous_format, device)
    seen = _launches(monkeypatch)
    plain = upfirdn2d(x, f, **fir, impl="triton")
    no_epilogue = upfirdn2d_bias_act(x, f, **fir, impl="triton")  # nothing to fuse: the plain kernel
    fused = upfirdn2d_bias_act(x, f, **fir, **epi, impl="triton")
    assert seen == [("_upfirdn2d_fwd_kernel", False), ("_upfirdn2d_fwd_kernel", False), ("_upfirdn2d_fwd_kernel", True)]
    assert torch.equal(plain, no_epilogue) and not torch.equal(plain, fused)


@pytest.mark.parametrize("impl, spec", [("triton", "stylegan_layer"), ("triton", "swish_noise_bias"), ("ref", "stylegan_layer")])
def test_fused_epilogue_gradcheck_and_gradgradcheck(device, impl, spec):
    specs = dict(EPI_SPECS, swish_noise_bias=("n1hw", True, "swish", None, 0.9, None))  # smooth: f'' is used
    x, f, fir, epi = _epi_inputs(EPI_FIR_CASES[0], specs[spec], torch.float64, torch.contiguous_format, device,
                                 requires_grad=True)
    x = x[:1, :2, :3, :4].detach().requires_grad_()  # tiny: the interpreter is slow
    oh, ow = upfirdn2d(x, f, **fir, impl="ref").shape[2:]
    nz = epi["noise"][:1, :, :oh, :ow].detach().requires_grad_()
    b = epi["bias"][:2].detach().requires_grad_()
    kw = dict(act=epi["act"], alpha=epi["alpha"], act_gain=epi["act_gain"], clamp=epi["clamp"], impl=impl)
    fn = lambda x, nz, b: upfirdn2d_bias_act(x, f, **fir, noise=nz, bias=b, **kw)  # noqa: E731
    # Random projections of the Jacobians (fast_mode): the full ones over x, noise and bias take too many runs.
    assert torch.autograd.gradcheck(fn, (x, nz, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, nz, b), fast_mode=True)


def test_fused_op_recomputes_the_pre_activation_when_not_saved(device):
    # save_pre=False (e.g. a forward run without grad, differentiated later through the op): the backward
    # recomputes FIR + noise itself; the gradients must be the same, to first and second order.
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    f = setup_filter([1, 3, 3, 1], device=device).double()
    nz = torch.randn(1, 1, 6, 8, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)

    def fn(save_pre):
        return lambda x, nz, b: _upfirdn2d_bias_act_op(x, f, nz, b, [2, 2], [1, 1], [2, 1, 2, 1], False, 4.0, "swish", 0.0,
                                                       1.3, 0.8, save_pre)[0]

    assert torch.autograd.gradgradcheck(fn(False), (x, nz, b), fast_mode=True)
    g = torch.randn(1, 2, 6, 8, dtype=torch.float64, device=device)
    for got, want in zip(torch.autograd.grad(fn(False)(x, nz, b), (x, nz, b), g), torch.autograd.grad(fn(True)(x, nz, b), (x, nz, b), g)):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(noise=torch.randn(1, 1, 4, 4)), ValueError, r"noise of shape \[1, 1, 4, 4\] does not broadcast to the output shape \[1, 2, 8, 8\]"),
        (dict(noise=torch.ones(1, 1, 8, 8, dtype=torch.int32)), TypeError, r"noise must have dtype"),
        (dict(bias=torch.randn(3)), ValueError, r"bias has length 3 but x has 2 channels"),
        (dict(bias=torch.randn(2, 1)), ValueError, r"bias must be 1-D"),
        (dict(act="nope"), ValueError, r"act must be one of"),
        (dict(act_gain=float("inf")), TypeError, r"act_gain must be a finite number"),
        (dict(clamp="1"), TypeError, r"clamp must be a finite number"),
    ],
)
def test_fused_epilogue_bad_input(calls, kwargs, error, message):
    with pytest.raises(error, match=message):
        upfirdn2d_bias_act(X, F1, up=2, padding=[2, 1, 2, 1], gain=4, impl="triton", **kwargs)
    assert calls == []  # nothing launched


def test_fused_epilogue_compile_aot_eager_fullgraph_triton(device):
    f = setup_filter([1, 3, 3, 1], device=device)
    nz, b = torch.randn(1, 1, 10, 12, device=device), torch.randn(2, device=device)

    def fn(x):
        return upfirdn2d_bias_act(x, f, up=2, padding=[2, 1, 2, 1], gain=4, noise=nz, bias=b, act="lrelu", clamp=1.0,
                                  impl="triton").square().sum()

    x = torch.randn(1, 2, 5, 6, device=device, requires_grad=True)
    loss = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
    (grad,) = torch.autograd.grad(loss, x)
    loss_ref = fn(x)
    (grad_ref,) = torch.autograd.grad(loss_ref, x)
    torch.testing.assert_close(loss, loss_ref, **TOL[torch.float32])
    torch.testing.assert_close(grad, grad_ref, **TOL[torch.float32])


@pytest.mark.parametrize("save_pre", [False, True])
def test_opcheck_fused_epilogue(device, save_pre):
    x = torch.randn(1, 3, 4, 5, dtype=torch.float64, device=device).to(memory_format=torch.channels_last).requires_grad_()
    f = _filter(NONSYM_2D, torch.float64).to(device)
    nz = torch.randn(1, 1, 2, 10, dtype=torch.float64, device=device, requires_grad=True)  # the output is 2x10
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    torch.library.opcheck(_upfirdn2d_bias_act_op, (x, f, nz, b, [2, 1], [1, 2], [2, 1, 0, 1], False, 1.5, "lrelu", 0.2,
                                                   1.4, 0.9, save_pre))


# ------------------------------------------------------------------------------------------------
# GPU only.


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("up, down, padding, taps", [(2, 1, [2, 1], [1.0, 3.0, 3.0, 1.0]), (1, 2, [1, 1], NONSYM_2D), (4, 2, [2, 1, -1, 3], NONSYM_1D)])
def test_gpu_low_precision_matches_fp32_reference(dtype, layout, up, down, padding, taps):
    x = torch.randn(4, 64, 33, 40, device="cuda").to(memory_format=layout)
    f = _filter(taps).cuda()
    y = upfirdn2d(x.to(dtype), f, up, down, padding, gain=1.5, impl="triton")
    assert y.dtype == dtype and y.is_contiguous(memory_format=layout)
    # Inputs rounded to dtype first: compare against the reference of the rounded input, in fp32 (not TF32).
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = upfirdn2d(x.to(dtype).float(), f, up, down, padding, gain=1.5, impl="ref")
    torch.testing.assert_close(y.float(), expected, **LOW_TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gpu_fused_epilogue_low_precision_matches_fp32_reference(dtype, layout):
    # StyleGAN2's up layer shape class: up=2 FIR (gain 4) + [N, 1, H, W] noise + bias + lrelu + clamp 256.
    x = torch.randn(4, 96, 33, 40, device="cuda").to(memory_format=layout)
    f = setup_filter([1, 3, 3, 1], device="cuda")
    nz, b = torch.randn(4, 1, 66, 80, device="cuda"), torch.randn(96, device="cuda")
    epi = dict(up=2, padding=[2, 1, 2, 1], gain=4, act="lrelu", clamp=256.0)
    y = upfirdn2d_bias_act(x.to(dtype), f, noise=nz.to(dtype), bias=b.to(dtype), **epi, impl="triton")
    assert y.dtype == dtype and y.is_contiguous(memory_format=layout)
    # Inputs rounded to dtype first: compare against the reference of the rounded inputs, in fp32 (not TF32).
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = upfirdn2d_bias_act(x.to(dtype).float(), f, noise=nz.to(dtype).float(), bias=b.to(dtype).float(),
                                      **epi, impl="ref")
    torch.testing.assert_close(y.float(), expected, **LOW_TOL[dtype])


@pytest.mark.gpu
def test_gpu_compile_fullgraph_default_backend():
    f = setup_filter([1, 3, 3, 1], device="cuda")

    def fn(x):
        return downsample2d(upsample2d(x, f) * 2.0, f).sum()

    x = torch.randn(2, 8, 16, 16, device="cuda", requires_grad=True)
    loss = torch.compile(fn, fullgraph=True)(x)
    (grad,) = torch.autograd.grad(loss, x)
    loss_ref = fn(x)
    (grad_ref,) = torch.autograd.grad(loss_ref, x)
    torch.testing.assert_close(loss, loss_ref, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(grad, grad_ref, **TOL[torch.float32])
