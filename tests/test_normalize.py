"""normalize_2nd_moment against the explicit formula x / sqrt(mean(x^2, dim) + eps)."""
import pytest
import torch

from fusegan.kernels.normalize import normalize_2nd_moment

IMPLS = ("ref", "triton")
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-6),
       torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1e-2)}


def explicit_normalize(x, dim, eps):
    return x / torch.sqrt((x * x).sum(dim=dim, keepdim=True) / x.shape[dim] + eps)


CASES = [  # (shape, dim)
    ((5, 7), 1),  # the mapping network's z, odd sizes
    ((1, 512), 1),  # batch 1
    ((3, 4, 5, 6), 1),
    ((3, 4, 5, 6), -1),
    ((3, 4, 5, 6), 2),
    ((3, 4, 5, 6), 0),
    ((9,), 0),
    ((2, 5000), 1),  # D spans two 4096-element tiles
    ((2, 3, 130), 1),  # inner spans three 64-wide blocks
]


@pytest.mark.parametrize("shape,dim", CASES)
def test_matches_explicit_formula_forward_and_backward(shape, dim, device):
    x = torch.randn(shape, dtype=torch.float64, device=device)
    want_x = x.clone().requires_grad_()
    for eps in (1e-8, 0.5):
        want = explicit_normalize(want_x, dim, eps)
        dout = torch.randn_like(want)
        (want_grad,) = torch.autograd.grad(want, want_x, dout)
        for impl in IMPLS:
            xi = x.clone().requires_grad_()
            out = normalize_2nd_moment(xi, dim=dim, eps=eps, impl=impl)
            torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
            (grad,) = torch.autograd.grad(out, xi, dout)
            torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


def test_float32_layouts(device):
    x = torch.randn(2, 6, 3, 5, device=device)
    want = explicit_normalize(x, 1, 1e-8)
    rtol, atol = TOL[torch.float32]
    cl = x.to(memory_format=torch.channels_last).requires_grad_()
    out = normalize_2nd_moment(cl, impl="triton")
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, want, rtol=rtol, atol=atol)
    (g,) = torch.autograd.grad(out, cl, torch.ones_like(out))
    xr = x.clone().requires_grad_()
    (gw,) = torch.autograd.grad(explicit_normalize(xr, 1, 1e-8), xr, torch.ones_like(out))
    torch.testing.assert_close(g, gw, rtol=rtol, atol=1e-5)
    torch.testing.assert_close(normalize_2nd_moment(x.transpose(1, 3), dim=3, impl="triton"),
                               want.transpose(1, 3), rtol=rtol, atol=atol)


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")
def test_zero_input_with_zero_eps_is_not_silently_finite(device):
    # rsqrt(0) = inf and 0 * inf = nan in both implementations; eps exists to prevent this.
    x = torch.zeros(2, 3, device=device)
    assert torch.isnan(normalize_2nd_moment(x, eps=0.0, impl="triton")).all()
    assert torch.isnan(normalize_2nd_moment(x, eps=0.0, impl="ref")).all()
    torch.testing.assert_close(normalize_2nd_moment(x, impl="triton"), x)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_and_gradgradcheck_float64(impl, device):
    for shape, dim in (((3, 4), 1), ((2, 3, 2), 1)):
        x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
        fn = lambda t: normalize_2nd_moment(t, dim=dim, eps=0.1, impl=impl)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_bad_arguments_are_rejected_with_clear_messages():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="dim=2 is out of range"):
        normalize_2nd_moment(x, dim=2)
    with pytest.raises(TypeError, match="dim must be an int"):
        normalize_2nd_moment(x, dim=1.0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        normalize_2nd_moment(x, eps=-1e-8)
    with pytest.raises(TypeError, match="eps must be a finite number"):
        normalize_2nd_moment(x, eps="small")
    with pytest.raises(ValueError, match="x must have at least 1 dims"):
        normalize_2nd_moment(torch.tensor(3.0))
    with pytest.raises(TypeError, match="x must have dtype"):
        normalize_2nd_moment(torch.ones(2, 3, dtype=torch.int32))


def test_torch_compile_fullgraph_and_opcheck(device):
    from fusegan.kernels.normalize import _normalize_backward_op, _normalize_op

    x = torch.randn(4, 8, device=device, requires_grad=True)
    fn = lambda t: normalize_2nd_moment(t, impl="triton").sin().sum()  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out, want = compiled(x), fn(x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(torch.autograd.grad(out, x), torch.autograd.grad(want, x))
    torch.library.opcheck(_normalize_op, (x, 1, 1e-8))
    x4 = torch.randn(2, 3, 2, 2, device=device).to(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(_normalize_op, (x4, 1, 1e-8))
    torch.library.opcheck(_normalize_backward_op, (torch.randn(4, 8, device=device), x, 1, 1e-8))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_against_float32(dtype):
    x = torch.randn(64, 512, device="cuda").to(dtype)
    rtol, atol = TOL[dtype]
    xg = x.clone().requires_grad_()
    out = normalize_2nd_moment(xg)
    x32 = x.float().requires_grad_()
    want = explicit_normalize(x32, 1, 1e-8)
    torch.testing.assert_close(out.float(), want, rtol=rtol, atol=atol)
    dout = torch.randn_like(want)
    (got,) = torch.autograd.grad(out, xg, dout.to(dtype))
    (exp,) = torch.autograd.grad(want, x32, dout)
    torch.testing.assert_close(got.float(), exp, rtol=rtol, atol=atol)


@pytest.mark.gpu
def test_cuda_torch_compile_inductor():
    x = torch.randn(32, 512, device="cuda", requires_grad=True)
    out = torch.compile(lambda t: normalize_2nd_moment(t).square().sum(), fullgraph=True)(x)
    want = explicit_normalize(x, 1, 1e-8).square().sum()
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(torch.autograd.grad(out, x), torch.autograd.grad(want, x))
