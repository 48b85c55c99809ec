"""fusegan::conv_epilogue_grad (the one-pass backward of the implicit-GEMM conv's epilogue) against torch autograd
of the epilogue written with torch functions, and its own gradients (gradcheck / gradgradcheck in float64)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from fusegan.kernels._conv_epilogue_grad import _conv_epilogue_grad_op, conv_epilogue_grad, noise_is_channel_broadcast

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5),
       torch.float16: dict(atol=1e-2, rtol=1e-2), torch.bfloat16: dict(atol=5e-2, rtol=5e-2)}
ACTS = {"linear": lambda z: z, "lrelu": lambda z: F.leaky_relu(z, 0.2), "relu": F.relu, "tanh": torch.tanh,
        "swish": lambda z: z * torch.sigmoid(z), "softplus": F.softplus}


def _epilogue(conv, scale, noise, bias, act, gain, clamp):
    """The forward epilogue of fusegan::conv2d_fused, in torch."""
    pre = conv * scale[:, :, None, None] + noise + bias[None, :, None, None]
    y = ACTS[act](pre) * gain
    return y if clamp is None else y.clamp(-clamp, clamp)


def _inputs(dtype=torch.float64, layout=torch.contiguous_format, n=2, o=5, h=3, w=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    conv = mk(n, o, h, w).to(dtype=dtype, memory_format=layout)
    gy = mk(n, o, h, w).to(dtype=dtype, memory_format=layout)
    scale = (torch.rand(n, o, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    noise = mk(n, 1, h, w).to(dtype)
    bias = mk(o).to(dtype)
    return gy, conv, scale, noise, bias


@pytest.mark.parametrize("act,clamp", [("linear", None), ("lrelu", None), ("lrelu", 0.7), ("tanh", None),
                                       ("swish", 0.9), ("linear", 0.5)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_matches_torch_autograd(act, clamp, layout, device):
    gy, conv, scale, noise, bias = (t.to(device) for t in _inputs(layout=layout))
    gain = 1.0 if act in ("linear", "tanh") else math.sqrt(2)
    leaves = [t.clone().requires_grad_() for t in (conv, scale, noise, bias)]
    y = _epilogue(*leaves, act, gain, clamp)
    g_conv, want_scale, want_noise, want_bias = torch.autograd.grad(y, leaves, gy)
    want_gpre = g_conv / scale[:, :, None, None]  # dL/dpre, since pre = conv * scale + ...
    gpre, gscale, gbias, gnoise = conv_epilogue_grad(gy, conv, scale, noise, bias, act=act, alpha=0.2, gain=gain,
                                                     clamp=clamp, need_scale=True, need_bias=True, need_noise=True)
    torch.testing.assert_close(gpre, want_gpre, **TOL[torch.float64])
    torch.testing.assert_close(gscale, want_scale, **TOL[torch.float64])
    torch.testing.assert_close(gbias, want_bias, **TOL[torch.float64])
    torch.testing.assert_close(gnoise, want_noise, **TOL[torch.float64])  # noise is [N, 1, H, W]
    if act != "linear" or clamp is not None:
        assert gpre.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_against_float64(dtype, device):
    gy, conv, scale, noise, bias = (t.to(device) for t in _inputs(dtype=dtype, layout=torch.channels_last, o=17))
    got = conv_epilogue_grad(gy, conv, scale, noise, bias, act="lrelu", alpha=0.2, gain=math.sqrt(2), clamp=256.0,
                             need_scale=True, need_bias=True, need_noise=True)
    want = conv_epilogue_grad(*(t.double() for t in (gy, conv, scale, noise, bias)), act="lrelu", alpha=0.2,
                              gain=math.sqrt(2), clamp=256.0, need_scale=True, need_bias=True, need_noise=True)
    assert got[0].dtype == dtype and all(g.dtype == torch.float32 for g in got[1:])  # sums accumulate in fp32
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, **TOL[dtype])


def test_linear_epilogue_without_conv_is_gy_times_gain(device):
    # o=70: more channels than one tile (64), so the noise gradient adds two channel tiles' partial sums.
    gy, _, _, noise, bias = (t.to(device) for t in _inputs(o=70))
    gpre, gscale, gbias, gnoise = conv_epilogue_grad(gy, None, None, noise, bias, gain=1.5, need_bias=True,
                                                     need_noise=True)
    torch.testing.assert_close(gpre, gy * 1.5, **TOL[torch.float64])
    torch.testing.assert_close(gbias, (gy * 1.5).sum(dim=(0, 2, 3)), **TOL[torch.float64])
    torch.testing.assert_close(gnoise, (gy * 1.5).sum(dim=1, keepdim=True), **TOL[torch.float64])
    assert gscale.numel() == 0


@pytest.mark.parametrize("shape,expected", [((2, 1, 3, 7), True), ((1, 1, 3, 7), True), ((3, 7), True),
                                            ((2, 5, 3, 7), False), ((5, 1, 1), False), ((1, 1, 1), True)])
def test_noise_is_channel_broadcast(shape, expected):
    assert noise_is_channel_broadcast(shape) is expected


def _check_fn(act, clamp, device):
    gy, conv, scale, noise, bias = (t.to(device) for t in _inputs(n=2, o=3, h=2, w=3))
    args = [t.requires_grad_() for t in (gy, conv, scale, noise, bias)]

    def fn(gy, conv, scale, noise, bias):
        return conv_epilogue_grad(gy, conv, scale, noise, bias, act=act, alpha=0.2, gain=1.3, clamp=clamp,
                                  need_scale=True, need_bias=True, need_noise=True)
    return fn, args


@pytest.mark.parametrize("act,clamp", [("lrelu", None), ("swish", 0.9), ("softplus", None), ("linear", 0.8)])
def test_gradcheck(act, clamp, device):
    fn, args = _check_fn(act, clamp, device)
    assert gradcheck(fn, args, fast_mode=True)


# Double backward of this op is the third derivative of the layer's epilogue: exact for piecewise-linear
# activations (what the GAN regularizers differentiate through); smooth ones would need f''' (not provided).
@pytest.mark.parametrize("act,clamp", [("lrelu", None), ("lrelu", 0.8), ("linear", None)])
def test_gradgradcheck(act, clamp, device):
    fn, args = _check_fn(act, clamp, device)
    assert gradgradcheck(fn, args, fast_mode=True)


def test_opcheck(device):
    gy, conv, scale, noise, bias = (t.to(device).requires_grad_() for t in _inputs(n=2, o=3, h=2, w=3))
    for act, clamp in (("lrelu", 0.8), ("linear", None)):
        torch.library.opcheck(_conv_epilogue_grad_op, (gy, conv, scale, noise, bias, act, 0.2, 1.3, clamp, True,
                                                       True, True))
    torch.library.opcheck(_conv_epilogue_grad_op, (gy, None, None, None, None, "linear", 0.0, 1.0, None, False,
                                                   True, False))
