"""minibatch_std against an explicit per-sample loop of NVIDIA's MinibatchStdLayer formula."""
import math

import pytest
import torch

from fusegan.kernels._validate import is_channels_last
from fusegan.kernels.minibatch_std import minibatch_std

IMPLS = ("ref", "triton")
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-6),
       torch.float16: (1e-2, 1e-3), torch.bfloat16: (2e-2, 1e-2)}


def explicit_minibatch_std(x, group_size, num_channels):
    """Sample i belongs to group i % n with members i % n, i % n + n, ... (NVIDIA's reshape(G, -1, ...))."""
    N, C, H, W = x.shape
    G = N if group_size is None else min(group_size, N)
    n, c = N // G, C // num_channels
    feats = torch.empty(N, num_channels, H, W, dtype=x.dtype, device=x.device)
    for i in range(N):
        members = x[[i % n + k * n for k in range(G)]]  # [G, C, H, W]
        for f in range(num_channels):
            block = members[:, f * c:(f + 1) * c]
            var = ((block - block.sum(0) / G) ** 2).sum(0) / G  # biased variance over the group
            feats[i, f] = torch.sqrt(var + 1e-8).sum() / block[0].numel()
    return torch.cat([x, feats], dim=1)


CASES = [  # (shape, group_size, num_channels)
    ((8, 4, 3, 5), 4, 2),
    ((4, 3, 2, 2), 4, 1),
    ((2, 5, 3, 3), 4, 1),  # group size clipped to N = 2
    ((1, 2, 3, 3), 4, 1),  # batch 1: G = 1, every stddev is sqrt(1e-8)
    ((6, 6, 2, 3), 3, 3),  # G = 3 is not a power of two
    ((4, 6, 1, 1), None, 2),  # None: the whole batch is one group
    ((4, 2, 33, 35), 2, 1),  # positions span several kernel tiles
]


@pytest.mark.parametrize("shape,group_size,num_channels", CASES)
def test_matches_explicit_formula_forward_and_backward(shape, group_size, num_channels, device):
    x = torch.randn(shape, device=device, dtype=torch.float64)
    want_x = x.clone().requires_grad_()
    want = explicit_minibatch_std(want_x, group_size, num_channels)
    dout = torch.randn_like(want)
    (want_grad,) = torch.autograd.grad(want, want_x, dout)
    for impl in IMPLS:
        for layout in (torch.contiguous_format, torch.channels_last):
            xi = x.to(memory_format=layout).requires_grad_()
            out = minibatch_std(xi, group_size, num_channels, impl=impl)
            torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
            # The output keeps x's layout on both paths (x may be NCHW- and NHWC-contiguous at once: C or H*W 1).
            assert out.is_contiguous(memory_format=layout if is_channels_last(xi) else torch.contiguous_format)
            (grad,) = torch.autograd.grad(out, xi, dout)
            torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


def test_batch_one_feature_is_sqrt_eps(device):
    out = minibatch_std(torch.randn(1, 3, 2, 2, device=device), impl="triton")
    torch.testing.assert_close(out[:, 3], torch.full((1, 2, 2), math.sqrt(1e-8), device=device))


@pytest.mark.parametrize("shape", [(4, 0, 2, 2), (4, 2, 0, 3)], ids=["no_channels", "no_rows"])
def test_empty_channels_or_pixels_agree(shape, device):
    # No channels: the stddev feature is a mean over nothing (NaN) on both paths; no pixels: an empty output. The
    # reference's reshape(G, -1, ...) used to fail on 0 elements (the Triton path's double backward uses it too).
    x = torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)
    outs = [minibatch_std(x, 2, 1, impl=impl) for impl in IMPLS]
    assert outs[0].shape == outs[1].shape == (4, shape[1] + 1, *shape[2:])
    torch.testing.assert_close(outs[0], outs[1], equal_nan=True)
    gx, = torch.autograd.grad(outs[1].sum(), x, create_graph=True)
    assert gx.shape == x.shape
    torch.autograd.grad(gx.sum(), x)  # the Triton double backward differentiates the reference


def test_float32_matches(device):
    x = torch.randn(8, 5, 4, 4, device=device)
    torch.testing.assert_close(minibatch_std(x, impl="triton"), explicit_minibatch_std(x, 4, 1),
                               rtol=TOL[torch.float32][0], atol=TOL[torch.float32][1])


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_and_gradgradcheck_float64(impl, device):
    x = torch.randn(4, 2, 1, 2, dtype=torch.float64, device=device, requires_grad=True)
    for group_size, num_channels in ((2, 2), (4, 1)):
        fn = lambda t: minibatch_std(t, group_size, num_channels, impl=impl)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
    # Second order on a smaller input (each interpreted launch costs ~50 ms): 2 samples, G = 2, F = 2.
    fn = lambda t: minibatch_std(t, 2, 2, impl=impl)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x[:2].detach().requires_grad_(),))


def test_backward_op_gradcheck(device):
    from fusegan.kernels.minibatch_std import _minibatch_std_backward_op

    x = torch.randn(4, 2, 2, 1, dtype=torch.float64, device=device, requires_grad=True)
    dout = torch.randn(4, 3, 2, 1, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d, t: _minibatch_std_backward_op(d, t, 2, 1), (dout, x))


def test_bad_arguments_are_rejected_with_clear_messages():
    x = torch.randn(6, 4, 2, 2)
    with pytest.raises(ValueError, match=r"N=6 must be divisible by the group size .*=4"):
        minibatch_std(x, group_size=4)
    with pytest.raises(ValueError, match="C=4 must be divisible by num_channels=3"):
        minibatch_std(x, group_size=2, num_channels=3)
    with pytest.raises(ValueError, match="x must be 4-D"):
        minibatch_std(torch.randn(4, 4, 4))
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        minibatch_std(x, group_size=0)
    with pytest.raises(TypeError, match="group_size must be a positive int"):
        minibatch_std(x, group_size=2.0)
    with pytest.raises(TypeError, match="num_channels must be a positive int"):
        minibatch_std(x, num_channels=None)


def test_torch_compile_fullgraph_and_opcheck(device):
    from fusegan.kernels.minibatch_std import _minibatch_std_backward_op, _minibatch_std_op

    x = torch.randn(4, 3, 3, 2, device=device, requires_grad=True)
    fn = lambda t: minibatch_std(t, 2, 1, impl="triton").square().sum()  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out, want = compiled(x), fn(x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(torch.autograd.grad(out, x), torch.autograd.grad(want, x))
    torch.library.opcheck(_minibatch_std_op, (x, 2, 1))
    torch.library.opcheck(_minibatch_std_op, (x.detach().to(memory_format=torch.channels_last), 4, 3))
    torch.library.opcheck(_minibatch_std_backward_op, (torch.randn(4, 4, 3, 2, device=device), x, 2, 1))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_against_float32(dtype):
    x = torch.randn(32, 512, 4, 4, device="cuda").to(dtype)
    rtol, atol = TOL[dtype]
    xg = x.clone().requires_grad_()
    out = minibatch_std(xg)
    x32 = x.float().requires_grad_()
    want = explicit_minibatch_std(x32, 4, 1)
    torch.testing.assert_close(out.float(), want, rtol=rtol, atol=atol)
    dout = torch.randn_like(want)
    (got,) = torch.autograd.grad(out, xg, dout.to(dtype))
    (exp,) = torch.autograd.grad(want, x32, dout)
    torch.testing.assert_close(got.float(), exp, rtol=rtol, atol=atol)


@pytest.mark.gpu
def test_cuda_torch_compile_inductor_and_r1_style_double_backward():
    # aot_autograd (under every torch.compile backend but "eager") raises on a second backward through a compiled
    # graph, so, as in the engine (R1 passes stay eager), the compiled graph is checked to first order and the
    # R1-style double backward runs the same Triton ops eagerly.
    x = torch.randn(8, 16, 4, 4, device="cuda", requires_grad=True)
    fn = lambda t: minibatch_std(t).square().sum()  # noqa: E731
    out = torch.compile(fn, fullgraph=True)(x)
    (g_compiled,) = torch.autograd.grad(out, x)
    (g,) = torch.autograd.grad(fn(x), x, create_graph=True)
    g.square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    want = explicit_minibatch_std(x2, 4, 1).square().sum()
    (g2,) = torch.autograd.grad(want, x2, create_graph=True)
    g2.square().sum().backward()
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(g_compiled, g2.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
