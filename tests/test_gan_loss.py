"""gan_loss: every kind x target x reduction against plain torch.nn.functional formulas."""
import pytest
import torch
import torch.nn.functional as F

from fusegan.kernels.gan_loss import gan_loss

KINDS = ("logistic", "hinge", "wgan", "lsgan")
TARGETS = ("real", "fake", "gen")
REDUCTIONS = ("mean", "sum", "none")
IMPLS = ("ref", "triton")
# (rtol, atol) per dtype of the comparison against the expected values.
TOL = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}


def expected_loss(x, kind, target, reduction):
    """The table of the issue, written with torch.nn.functional (F.softplus is stable at +-1e4)."""
    ones = torch.ones_like(x)
    table = {
        ("logistic", "real"): lambda: F.softplus(-x),
        ("logistic", "fake"): lambda: F.softplus(x),
        ("logistic", "gen"): lambda: F.softplus(-x),
        ("hinge", "real"): lambda: F.relu(1 - x),
        ("hinge", "fake"): lambda: F.relu(1 + x),
        ("hinge", "gen"): lambda: -x,
        ("wgan", "real"): lambda: -x,
        ("wgan", "fake"): lambda: x,
        ("wgan", "gen"): lambda: -x,
        ("lsgan", "real"): lambda: F.mse_loss(x, ones, reduction="none"),
        ("lsgan", "fake"): lambda: F.mse_loss(x, 0 * ones, reduction="none"),
        ("lsgan", "gen"): lambda: F.mse_loss(x, ones, reduction="none"),
    }
    loss = table[(kind, target)]()
    return {"mean": loss.mean, "sum": loss.sum, "none": lambda: loss}[reduction]()


def check_against_expected(x, kind, target, reduction, impl):
    x = x.detach().requires_grad_()
    x_expected = x.detach().clone().requires_grad_()
    out = gan_loss(x, target, kind=kind, reduction=reduction, impl=impl)
    want = expected_loss(x_expected, kind, target, reduction)
    rtol, atol = TOL[x.dtype]
    assert out.shape == want.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, want, rtol=rtol, atol=atol)
    dout = torch.randn_like(want)
    (got_grad,) = torch.autograd.grad(out, x, dout)
    (want_grad,) = torch.autograd.grad(want, x_expected, dout)
    torch.testing.assert_close(got_grad, want_grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_target_reduction(kind, target, reduction, device):
    x = 3 * torch.randn(3, 1, 5, 7, device=device)  # odd size; spans the hinge kinks and both softplus sides
    for impl in IMPLS:
        check_against_expected(x, kind, target, reduction, impl)


@pytest.mark.parametrize("shape", [(1, 1), (32, 1), (16, 1, 30, 30), (5,), ()])
def test_shapes_batch_one_patchgan_multiblock(shape, device):
    x = torch.randn(shape, device=device)  # [16, 1, 30, 30] spans 15 kernel blocks
    for kind, target in (("logistic", "real"), ("lsgan", "fake"), ("hinge", "real")):
        for reduction in REDUCTIONS:
            check_against_expected(x, kind, target, reduction, "triton")


@pytest.mark.parametrize("kind", KINDS)
def test_extreme_logits_are_stable(kind, device):
    x = torch.tensor([-1e4, -1e3, -88.0, -20.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 20.0, 88.0, 1e3, 1e4], device=device)
    for target in TARGETS:
        for impl in IMPLS:
            out = gan_loss(x, target, kind=kind, reduction="none", impl=impl)
            assert torch.isfinite(out).all()
            check_against_expected(x, kind, target, "none", impl)
            check_against_expected(x, kind, target, "mean", impl)


def test_softplus_tails_are_accurate_not_just_finite(device):
    # softplus(z) ~ exp(z) for very negative z: a naive log(1 + exp(z)) returns 0 below z ~ -17 in fp32.
    x = torch.tensor([30.0, 60.0, 80.0], device=device)
    out = gan_loss(x, "real", reduction="none", impl="triton")  # softplus(-x)
    torch.testing.assert_close(out, torch.exp(-x), rtol=1e-5, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_and_gradgradcheck_float64(kind, impl, device):
    x = torch.randn(2, 3, dtype=torch.float64, device=device)
    x = (x + 0.2 * x.sign()).requires_grad_()  # keep finite differences away from the hinge kinks at +-1
    x.data[x.data.abs().sub(1).abs() < 0.05] += 0.3
    for target, reduction in zip(TARGETS, REDUCTIONS):
        fn = lambda t: gan_loss(t, target, kind=kind, reduction=reduction, impl=impl)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_compute_in_float32(dtype, device):
    # Runs here too (the interpreter handles fp16/bf16); the GPU test below covers large shapes.
    x = (5 * torch.randn(3, 1, 4, 5, device=device)).to(dtype)
    rtol, atol = TOL[dtype]
    for kind in KINDS:
        for reduction in ("mean", "none"):
            xg = x.clone().requires_grad_()
            out = gan_loss(xg, "real", kind=kind, reduction=reduction, impl="triton")
            assert out.dtype == dtype
            x32 = x.float().requires_grad_()
            want = expected_loss(x32, kind, "real", reduction)
            torch.testing.assert_close(out.float(), want, rtol=rtol, atol=atol * max(1.0, want.abs().max().item()))
            (got,) = torch.autograd.grad(out, xg, torch.ones_like(out))
            (exp,) = torch.autograd.grad(want, x32, torch.ones_like(want))
            torch.testing.assert_close(got.float(), exp, rtol=rtol, atol=atol)


def test_no_grad_and_channels_last(device):
    x = torch.randn(2, 3, 4, 5, device=device).to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = gan_loss(x, "fake", kind="hinge", reduction="none", impl="triton")
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.relu(1 + x))
    check_against_expected(x, "hinge", "fake", "sum", "triton")
    check_against_expected(x.transpose(2, 3), "logistic", "real", "none", "triton")  # odd strides


def test_bad_arguments_are_rejected_with_clear_messages():
    x = torch.randn(4, 1)
    with pytest.raises(ValueError, match="kind must be one of"):
        gan_loss(x, "real", kind="bce")
    with pytest.raises(ValueError, match="target must be one of"):
        gan_loss(x, "generator")
    with pytest.raises(ValueError, match="reduction must be one of"):
        gan_loss(x, "real", reduction="avg")
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        gan_loss([0.5], "real")
    with pytest.raises(TypeError, match="logits must have dtype"):
        gan_loss(torch.ones(4, 1, dtype=torch.int64), "real")
    with pytest.raises(ValueError, match="impl must be one of"):
        gan_loss(x, "real", impl="fast")


def test_torch_compile_fullgraph_and_opcheck(device):
    from fusegan.kernels.gan_loss import _gan_loss_backward_op, _gan_loss_op

    x = torch.randn(4, 1, 3, 3, device=device, requires_grad=True)

    def step(t):
        elementwise = gan_loss(t, "fake", kind="lsgan", reduction="none", impl="triton")
        return gan_loss(t, "real", impl="triton") + elementwise.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (grad,) = torch.autograd.grad(out, x)
    (want_grad,) = torch.autograd.grad(step(x), x)
    torch.testing.assert_close(out, step(x))
    torch.testing.assert_close(grad, want_grad)
    for reduction in ("mean", "none"):
        torch.library.opcheck(_gan_loss_op, (x, "logistic", "real", reduction, True))
    saved = torch.randn(4, 1, 3, 3, device=device)
    dloss = torch.tensor(1.5, device=device)
    torch.library.opcheck(_gan_loss_backward_op, (dloss, saved, x, "logistic", "real", "mean"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_half_precision_against_float32(kind, dtype):
    x = (4 * torch.randn(4, 1, 30, 30, device="cuda")).to(dtype)
    if kind == "logistic":  # extreme logits whose losses (and their sum) still fit in fp16
        x[0, 0, 0, :4] = torch.tensor([-3e4, 3e4, -1e4, 1e4], device="cuda").to(dtype)
    rtol, atol = TOL[dtype]
    for target in TARGETS:
        for reduction in REDUCTIONS:
            xg = x.clone().requires_grad_()
            out = gan_loss(xg, target, kind=kind, reduction=reduction, impl="triton")
            assert out.dtype == dtype and torch.isfinite(out).all()
            x32 = x.float().requires_grad_()
            want = expected_loss(x32, kind, target, reduction)
            scale = 1.0 if reduction == "none" else want.abs().item() + 1
            torch.testing.assert_close(out.float() / scale, want / scale, rtol=rtol, atol=atol)
            dout = torch.ones_like(want)
            (got,) = torch.autograd.grad(out, xg, dout.to(dtype))
            (exp,) = torch.autograd.grad(want, x32, dout)
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got.float(), exp, rtol=rtol, atol=atol)


@pytest.mark.gpu
def test_cuda_torch_compile_inductor():
    x = torch.randn(32, 1, device="cuda", requires_grad=True)
    fn = lambda t: gan_loss(t, "real") + gan_loss(t.detach() * 2, "fake")  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    out = compiled(x)
    out.backward()
    x2 = x.detach().clone().requires_grad_()
    want = expected_loss(x2, "logistic", "real", "mean") + expected_loss(x2.detach() * 2, "logistic", "fake", "mean")
    want.backward()
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(x.grad, x2.grad)
