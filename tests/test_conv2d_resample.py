"""conv2d_resample (NVIDIA semantics) on both paths, against an oracle built from F.conv2d / F.conv_transpose2d
and a hand-written FIR (zero-insertion + padding + depthwise F.conv2d)."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from fusegan.kernels.conv2d_resample import conv2d_resample, no_weight_gradients
from fusegan.kernels.upfirdn2d import setup_filter

FP32_TOL = dict(atol=2e-5, rtol=2e-5)
FILTER = setup_filter([1, 3, 3, 1])


def _fir(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0, flip_filter=False):
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, list(pad))
    k = (f * gain).to(x.dtype)
    k = k if flip_filter else k.flip([0, 1])
    x = F.conv2d(x, k[None, None].repeat(c, 1, 1, 1), groups=c)
    return x[:, :, ::down, ::down]


def oracle(x, w, f, up, down, pad, groups, flip_weight, flip_filter):
    """Always the generic route: upsample+pad+FIR, conv, FIR+downsample (none of NVIDIA's fast paths)."""
    px0, px1, py0, py1 = pad
    fh, fw = f.shape
    if up > 1:
        px0, px1, py0, py1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2, py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    if up > 1:
        x = _fir(x, f, up=up, pad=(px0, px1, py0, py1), gain=up ** 2, flip_filter=flip_filter)
    else:
        x = F.pad(x, [px0, px1, py0, py1])
    x = F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    return _fir(x, f, down=down, flip_filter=flip_filter) if down > 1 else x


CASES = list(itertools.product([1, 2], [1, 2], [1, 3], [1, [1, 0, 2, 1]], [1, 2], [True, False]))


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("up,down,k,padding,groups,flip_weight", CASES)
def test_matches_oracle(up, down, k, padding, groups, flip_weight, impl, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 7, generator=g).to(device)
    w = torch.randn(6, 4 // groups, k, k, generator=g).to(device)
    f = torch.tensor([[1.0, 2.0, 1.0, 0.5], [0.0, 1.0, 3.0, 1.0], [1.0, 1.0, 2.0, 0.0], [0.5, 1.0, 1.0, 1.0]])
    f = (f / f.sum()).to(device)  # asymmetric, so that flips are visible
    flip_filter = up == 2 and down == 1 and k == 3
    pads = [padding] * 4 if isinstance(padding, int) else padding
    want = oracle(x, w, f, up, down, pads, groups, flip_weight, flip_filter)
    got = conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter, impl=impl)
    torch.testing.assert_close(got, want, **FP32_TOL)


def test_channels_last_and_odd_channel_counts(device):
    x = torch.randn(1, 37, 9, 6, device=device).to(memory_format=torch.channels_last)  # K = 333: many K blocks
    w = torch.randn(19, 37, 3, 3, device=device)
    got = conv2d_resample(x, w, FILTER.to(device), down=2, padding=1, impl="triton")
    assert got.is_contiguous(memory_format=torch.channels_last)
    want = oracle(x.contiguous(), w, FILTER.to(device), 1, 2, [1] * 4, 1, True, False)
    torch.testing.assert_close(got, want, **FP32_TOL)


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("x_layout,w_layout,groups", [
    (torch.channels_last, torch.contiguous_format, 2),  # Triton's per-group slices are not channels_last-dense
    (torch.contiguous_format, torch.channels_last, 1),  # torch's conv follows a channels_last weight
    (torch.channels_last, torch.channels_last, 1),
])
def test_returns_the_layout_of_x(x_layout, w_layout, groups, up, down, impl, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 6, generator=g).to(device).contiguous(memory_format=x_layout)
    w = torch.randn(6, 4 // groups, 3, 3, generator=g).to(device).contiguous(memory_format=w_layout)
    f = FILTER.to(device)
    got = conv2d_resample(x, w, f, up, down, 1, groups, impl=impl)
    assert got.is_contiguous(memory_format=x_layout)
    want = oracle(x.contiguous(), w.contiguous(), f, up, down, [1] * 4, groups, True, False)
    torch.testing.assert_close(got, want, **FP32_TOL)


@pytest.mark.parametrize("shape", [(2, 1, 5, 6), (2, 4, 1, 1)], ids=["one_channel", "one_pixel"])
def test_reference_keeps_torchs_layout_where_x_is_both_layouts(shape):
    # One channel (an image fed to a channels_last StyleGAN2 D block) or 1x1 pixels (a latent): x is NCHW- and
    # NHWC-contiguous at once, and torch's conv picks the layout (from the weight's, for a latent). The
    # reference path keeps torch's choice, so a channels_last network stays channels_last from its first layer.
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, shape[1], 3, 3).contiguous(memory_format=torch.channels_last)
    y = conv2d_resample(x, w, padding=2, impl="ref")
    want = F.conv2d(x, w, padding=2)
    assert y.stride() == want.stride()
    if shape[1] > 1:  # the latent: torch follows the channels_last weight
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    torch.testing.assert_close(y, want, **FP32_TOL)


@pytest.mark.parametrize("up,down,k", [(1, 1, 3), (2, 1, 3), (1, 2, 3), (1, 2, 1)])
def test_gradcheck_and_gradgradcheck(up, down, k, device):
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(2, 2, k, k, dtype=torch.float64, device=device, requires_grad=True)
    f = FILTER.to(device, torch.float64)
    fn = lambda x, w: conv2d_resample(x, w, f, up, down, k // 2, impl="triton")  # noqa: E731
    assert gradcheck(fn, (x, w), fast_mode=True)
    assert gradgradcheck(fn, (x, w), fast_mode=True)


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_no_weight_gradients(impl, device):
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    y = conv2d_resample(x, w, padding=1, impl=impl)
    with no_weight_gradients():
        gx, gw = torch.autograd.grad(y.sum(), [x, w], retain_graph=True, allow_unused=True)
    assert gw is None
    torch.testing.assert_close(gx, torch.autograd.grad(F.conv2d(x, w, padding=1).sum(), [x])[0])
    with no_weight_gradients(disable=False):
        assert torch.autograd.grad(y.sum(), [w])[0] is not None


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(up=3), ValueError, "up must be 1 or 2"),
    (dict(w=torch.randn(4, 5, 3, 3)), ValueError, "w has 5 input channels"),
    (dict(w=torch.randn(4, 3, 3)), ValueError, "w must be 4-D"),
    (dict(w=torch.randn(4, 3, 3, 3, dtype=torch.float64)), TypeError, "w has dtype torch.float64"),
    (dict(groups=2), ValueError, "groups=2 must divide"),
    (dict(f=torch.ones(1, 1, 1)), ValueError, "f must be a non-empty 1-D or 2-D filter"),
    (dict(padding=-3), ValueError, "the output would be"),
    (dict(w=torch.randn(0, 3, 3, 3)), ValueError, "w must have at least one out channel"),
    (dict(x=torch.randn(2, 0, 5, 5), w=torch.randn(4, 0, 3, 3)), ValueError, "w must have at least one out channel"),
    (dict(w=torch.randn(4, 3, 0, 3)), ValueError, "w must have at least one out channel"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_inputs(kwargs, err, match):
    args = dict(x=torch.randn(2, 3, 5, 5), w=torch.randn(4, 3, 3, 3))
    args.update(kwargs)
    with pytest.raises(err, match=match):
        conv2d_resample(**args)
