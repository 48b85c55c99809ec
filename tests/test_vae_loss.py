"""vae_loss against F.binary_cross_entropy_with_logits / F.mse_loss plus an explicit Gaussian KL."""
import pytest
import torch
import torch.nn.functional as F

from fusegan.kernels.vae_loss import vae_loss

IMPLS = ("ref", "triton")
RECON_KINDS = ("bce_logits", "mse")
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-5),
       torch.float16: (1e-2, 1e-2), torch.bfloat16: (2e-2, 2e-2)}


def expected_vae_loss(recon, target, mu, logvar, recon_kind, beta, reduction):
    """Per-sample ELBO terms written out: recon summed over pixels, KL summed over latents."""
    if recon_kind == "bce_logits":
        rec = F.binary_cross_entropy_with_logits(recon, target, reduction="none")
    else:
        rec = F.mse_loss(recon, target, reduction="none")
    sigma2 = torch.exp(logvar)
    kl = 0.5 * (sigma2 + mu * mu - 1.0 - torch.log(sigma2))  # KL(N(mu, sigma2) || N(0, 1)) per latent
    per_sample = rec.flatten(1).sum(1) + beta * kl.flatten(1).sum(1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


def make_inputs(n, img_shape, latent, device, dtype=torch.float32, scale=2.0):
    recon = scale * torch.randn(n, *img_shape, device=device, dtype=dtype)
    target = torch.rand(n, *img_shape, device=device, dtype=dtype)
    mu = torch.randn(n, latent, device=device, dtype=dtype)
    logvar = 0.5 * torch.randn(n, latent, device=device, dtype=dtype)
    return recon, target, mu, logvar


def check_against_expected(inputs, recon_kind, beta, reduction, impl, grad_target=False):
    tol = TOL[inputs[0].dtype]
    got_in = [t.detach().clone().requires_grad_() for t in inputs]
    want_in = [t.detach().clone().requires_grad_() for t in inputs]
    if not grad_target:
        got_in[1].requires_grad_(False)
        want_in[1].requires_grad_(False)
    out = vae_loss(*got_in, recon_kind=recon_kind, beta=beta, reduction=reduction, impl=impl)
    want = expected_vae_loss(*want_in, recon_kind, beta, reduction)
    assert out.shape == () and out.dtype == inputs[0].dtype
    torch.testing.assert_close(out, want, rtol=tol[0], atol=tol[1])
    got_needs = [t for t in got_in if t.requires_grad]
    want_needs = [t for t in want_in if t.requires_grad]
    dout = torch.tensor(1.7, dtype=out.dtype, device=out.device)
    for g, w in zip(torch.autograd.grad(out, got_needs, dout), torch.autograd.grad(want, want_needs, dout)):
        torch.testing.assert_close(g, w, rtol=tol[0], atol=tol[1])


@pytest.mark.parametrize("reduction", ("mean", "sum"))
@pytest.mark.parametrize("recon_kind", RECON_KINDS)
def test_matches_explicit_formula(recon_kind, reduction, device):
    cases = [
        make_inputs(3, (1, 5, 7), 4, device),  # odd sizes
        make_inputs(1, (3, 4, 4), 8, device),  # batch 1
        make_inputs(2, (3, 20, 20), 600, device),  # recon and latents both span several kernel blocks
    ]
    for inputs in cases:
        for beta in (1.0, 0.1, 0.0):
            for impl in IMPLS:
                check_against_expected(inputs, recon_kind, beta, reduction, impl)


@pytest.mark.parametrize("recon_kind", RECON_KINDS)
def test_float64_beta_is_not_rounded_to_float32(recon_kind, device):
    inputs = make_inputs(2, (3, 5), 6, device, dtype=torch.float64)
    check_against_expected(inputs, recon_kind, 0.1, "mean", "triton")  # 0.1 is inexact in fp32: off by ~1e-9


def test_extreme_logits_are_stable(device):
    recon = torch.tensor([[-1e4, -100.0, 0.0, 100.0, 1e4]], device=device)
    target = torch.tensor([[0.0, 1.0, 0.5, 0.0, 1.0]], device=device)
    mu, logvar = torch.zeros(1, 2, device=device), torch.zeros(1, 2, device=device)
    for impl in IMPLS:
        out = vae_loss(recon, target, mu, logvar, impl=impl)
        assert torch.isfinite(out)
        check_against_expected((recon, target, mu, logvar), "bce_logits", 1.0, "sum", impl)


def test_target_gradient(device):
    inputs = make_inputs(2, (3, 4), 3, device, dtype=torch.float64)
    for recon_kind in RECON_KINDS:
        check_against_expected(inputs, recon_kind, 0.5, "mean", "triton", grad_target=True)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("recon_kind", RECON_KINDS)
def test_gradcheck_and_gradgradcheck_float64(recon_kind, impl, device):
    recon, target, mu, logvar = (t.requires_grad_() for t in make_inputs(2, (3,), 2, device, dtype=torch.float64))
    target.requires_grad_(False)
    for reduction, beta in (("mean", 0.7), ("sum", 1.0)):
        fn = lambda r, m, lv: vae_loss(r, target, m, lv, recon_kind, beta, reduction, impl=impl)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (recon, mu, logvar))
        assert torch.autograd.gradgradcheck(fn, (recon, mu, logvar))


def test_channels_last_and_strided_recon(device):
    recon, target, mu, logvar = make_inputs(2, (3, 4, 5), 3, device)
    cl = recon.to(memory_format=torch.channels_last)
    check_against_expected((cl, target, mu, logvar), "bce_logits", 1.0, "mean", "triton")
    check_against_expected((recon.transpose(2, 3), target.transpose(2, 3), mu, logvar.t().contiguous().t()),
                           "mse", 1.0, "sum", "triton")


@pytest.mark.parametrize("reduction", ("mean", "sum"))
def test_empty_batch_agrees(reduction, device):
    # 'sum' over nothing is 0; 'mean' divides by N = 0: NaN, as torch's mean of nothing (the Triton path gave 0).
    recon, mu = torch.randn(0, 2, 3, 3, device=device), torch.randn(0, 4, device=device)
    got = [vae_loss(recon, recon.sigmoid(), mu, mu, reduction=reduction, impl=impl) for impl in IMPLS]
    assert (got[0].isnan() if reduction == "mean" else got[0] == 0)
    torch.testing.assert_close(got[1], got[0], equal_nan=True)


def test_bad_arguments_are_rejected_with_clear_messages():
    recon, target, mu, logvar = make_inputs(2, (3, 4, 4), 5, "cpu")
    with pytest.raises(ValueError, match="logvar must have mu's shape"):
        vae_loss(recon, target, mu, logvar[:, :4])
    with pytest.raises(ValueError, match="target must have recon's shape"):
        vae_loss(recon, target[:1], mu, logvar)
    with pytest.raises(ValueError, match="batch size"):
        vae_loss(recon, target, mu[:1], logvar[:1])
    with pytest.raises(ValueError, match="recon_kind must be one of"):
        vae_loss(recon, target, mu, logvar, recon_kind="l1")
    with pytest.raises(ValueError, match="reduction must be one of"):
        vae_loss(recon, target, mu, logvar, reduction="none")
    with pytest.raises(TypeError, match="beta must be a finite number"):
        vae_loss(recon, target, mu, logvar, beta=float("inf"))
    with pytest.raises(TypeError, match="mu must have recon's dtype"):
        vae_loss(recon, target, mu.double(), logvar.double())
    with pytest.raises(TypeError, match="logvar must be a torch.Tensor"):
        vae_loss(recon, target, mu, None)


def test_torch_compile_fullgraph_and_opcheck(device):
    from fusegan.kernels.vae_loss import _vae_loss_backward_op, _vae_loss_op

    recon, target, mu, logvar = (t.requires_grad_() for t in make_inputs(2, (3, 4, 4), 5, device))
    target.requires_grad_(False)
    fn = lambda r, m, lv: vae_loss(r, target, m, lv, beta=0.5, impl="triton")  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out, want = compiled(recon, mu, logvar), fn(recon, mu, logvar)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(torch.autograd.grad(out, (recon, mu, logvar)),
                               torch.autograd.grad(want, (recon, mu, logvar)))
    torch.library.opcheck(_vae_loss_op, (recon, target, mu, logvar, "mse", 0.5, "sum", True))
    saved = [torch.randn_like(t) for t in (recon, mu, logvar)]
    torch.library.opcheck(_vae_loss_backward_op, (torch.tensor(2.0, device=device), *saved, recon, target, mu,
                                                  logvar, "bce_logits", 0.5, "mean"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("recon_kind", RECON_KINDS)
def test_half_precision_against_float32(recon_kind, dtype):
    inputs = make_inputs(256, (3, 64, 64), 128, "cuda", dtype=dtype)
    want_in = [t.float().requires_grad_() for t in inputs]
    got_in = [t.clone().requires_grad_() for t in inputs]
    got_in[1].requires_grad_(False)
    want_in[1].requires_grad_(False)
    out = vae_loss(*got_in, recon_kind=recon_kind)
    want = expected_vae_loss(*want_in, recon_kind, 1.0, "mean")
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(out.float(), want, rtol=rtol, atol=atol * want.abs().item())
    grads = torch.autograd.grad(out, [got_in[i] for i in (0, 2, 3)])
    wants = torch.autograd.grad(want, [want_in[i] for i in (0, 2, 3)])
    for g, w in zip(grads, wants):
        torch.testing.assert_close(g.float(), w, rtol=rtol, atol=atol / 256)


@pytest.mark.gpu
def test_cuda_torch_compile_inductor():
    recon, target, mu, logvar = (t.requires_grad_() for t in make_inputs(8, (3, 16, 16), 16, "cuda"))
    target.requires_grad_(False)
    fn = lambda r, m, lv: vae_loss(r, target, m, lv)  # noqa: E731
    out = torch.compile(fn, fullgraph=True)(recon, mu, logvar)
    want = expected_vae_loss(recon, target, mu, logvar, "bce_logits", 1.0, "mean")
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(torch.autograd.grad(out, (recon, mu, logvar)),
                               torch.autograd.grad(want, (recon, mu, logvar)))
