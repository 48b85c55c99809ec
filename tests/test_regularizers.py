"""r1_penalty, gradient_penalty, path_length_penalty: explicit per-sample formulas, gradients of all
orders, and end-to-end R1 / path-length steps through tiny networks against pure PyTorch."""
import math

import pytest
import torch
import torch.nn.functional as F

from fusegan.kernels.minibatch_std import minibatch_std
from fusegan.kernels.normalize import normalize_2nd_moment
from fusegan.kernels.regularizers import gradient_penalty, path_length_penalty, r1_penalty

IMPLS = ("ref", "triton")
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-5),
       torch.float16: (2e-3, 1e-3), torch.bfloat16: (1e-2, 1e-2)}
# [3, 2, 5, 7]: odd sizes; [2, 3, 41, 41]: rows of 5043 span two 4096-element kernel blocks.
SHAPES = [(3, 2, 5, 7), (1, 3, 4, 4), (2, 3, 41, 41), (4, 9)]


def explicit_sumsq(g):
    return torch.stack([(gi.double() * gi.double()).sum() for gi in g])


def explicit_gp(g, center):
    return (explicit_sumsq(g).sqrt() - center) ** 2


def explicit_path_length(g, pl_mean, decay):
    lengths = torch.stack([((gi.double() ** 2).sum(dim=1)).mean().sqrt() for gi in g])
    updated = pl_mean + decay * (lengths.mean() - pl_mean)
    return (lengths - updated) ** 2, updated


@pytest.mark.parametrize("shape", SHAPES)
def test_r1_and_gp_match_explicit_formulas(shape, device):
    g = torch.randn(shape, device=device)
    for impl in IMPLS:
        r1 = r1_penalty(g, impl=impl)
        assert r1.shape == (shape[0],) and r1.dtype == torch.float32
        torch.testing.assert_close(r1.double(), explicit_sumsq(g), rtol=1e-5, atol=1e-5)
        for center in (1.0, 0.0, 2.5):
            gp = gradient_penalty(g, center=center, impl=impl)
            torch.testing.assert_close(gp.double(), explicit_gp(g, center), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gradients_accumulate_in_float32(dtype, device):
    g = (30 * torch.randn(2, 3, 8, 8, device=device)).to(dtype)  # sum of squares ~1e5: overflows fp16
    r1 = r1_penalty(g, impl="triton")
    assert r1.dtype == torch.float32
    torch.testing.assert_close(r1.double(), explicit_sumsq(g), rtol=1e-5, atol=0)
    gg = g.clone().requires_grad_()
    (dg,) = torch.autograd.grad(r1_penalty(gg, impl="triton").sum(), gg)
    assert dg.dtype == dtype
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(dg.float(), 2 * g.float(), rtol=rtol, atol=atol)


def test_layouts_give_the_same_penalty(device):
    g = torch.randn(3, 4, 5, 6, device=device)
    want = explicit_sumsq(g)
    for variant in (g.to(memory_format=torch.channels_last), g.transpose(2, 3), g[:, :, 1:, ::2]):
        want_v = explicit_sumsq(variant)
        torch.testing.assert_close(r1_penalty(variant, impl="triton").double(), want_v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r1_penalty(g.to(memory_format=torch.channels_last), impl="triton").double(), want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_path_length_matches_nvidia_formula(impl, device):
    g = torch.randn(5, 3, 7, device=device, dtype=torch.float64)
    for pl_mean in (torch.tensor(0.0, dtype=torch.float64), torch.tensor([1.3], dtype=torch.float64), 0.7):
        penalty, new_mean = path_length_penalty(g, pl_mean, decay=0.01, impl=impl)
        want_pen, want_mean = explicit_path_length(g, float(pl_mean), 0.01)
        torch.testing.assert_close(penalty, want_pen, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(new_mean.reshape(()).double(), want_mean, rtol=1e-12, atol=1e-12)
        assert not new_mean.requires_grad
        if isinstance(pl_mean, torch.Tensor):
            assert new_mean.shape == pl_mean.shape and new_mean.dtype == pl_mean.dtype
    pl_mean = torch.tensor(2.0)
    path_length_penalty(g, pl_mean, impl=impl)
    assert pl_mean.item() == 2.0  # not modified in place: the caller stores the returned mean


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_and_gradgradcheck_float64(impl, device):
    g = torch.randn(2, 3, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    gw = torch.randn(2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    pl_mean = torch.tensor(0.4, dtype=torch.float64)
    fns = [
        (lambda t: r1_penalty(t, impl=impl), g),
        (lambda t: gradient_penalty(t, center=0.8, impl=impl), g),
        (lambda t: path_length_penalty(t, pl_mean, decay=0.3, impl=impl)[0], gw),
    ]
    for fn, x in fns:
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_row_primitives_gradcheck_and_gradgradcheck(device):
    from fusegan.kernels.regularizers import _row_dot_op, _row_scale_op

    a = torch.randn(2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(2, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    c = torch.randn(2, dtype=torch.float64, device=device, requires_grad=True)
    for op, args in ((_row_dot_op, (a, b)), (_row_scale_op, (a, c))):
        assert torch.autograd.gradcheck(op, args)
        assert torch.autograd.gradgradcheck(op, args)


def test_gradient_penalty_at_a_zero_gradient_has_zero_gradient(device):
    g = torch.zeros(2, 3, 4, device=device, requires_grad=True)
    for impl in IMPLS:
        pen = gradient_penalty(g, impl=impl)
        torch.testing.assert_close(pen, torch.ones(2, device=device))
        (dg,) = torch.autograd.grad(pen.sum(), g)
        assert torch.equal(dg, torch.zeros_like(g))


def test_path_length_at_a_zero_gradient_has_zero_gradient(device):
    # As gradient_penalty: a zero path length gets a zero gradient on both paths (the reference's plain sqrt gave
    # NaN there while the Triton path gave 0).
    g = torch.zeros(2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    for impl in IMPLS:
        pen, _ = path_length_penalty(g, 0.5, impl=impl)
        torch.testing.assert_close(pen, torch.full((2,), 0.495 ** 2, dtype=torch.float64, device=device))
        (dg,) = torch.autograd.grad(pen.sum(), g)
        assert torch.equal(dg, torch.zeros_like(g))


def test_a_nan_gradient_gives_a_nan_penalty_not_a_zero_length(device):
    # The zero-length guard once mapped NaN to 0 (NaN > 0 is False): a NaN in the generator's gradient came out
    # as a finite penalty and pl_mean, so the recipe's non-finite skip never fired.
    g = torch.randn(3, 4, 5, dtype=torch.float64, device=device)
    g[1, 2, 3] = float("nan")
    for impl in IMPLS:
        pen, pl_mean = path_length_penalty(g, 0.5, impl=impl)
        # NaN everywhere, as in NVIDIA's: each penalty is taken against the updated (NaN) mean
        assert torch.isnan(pen).all() and torch.isnan(pl_mean), impl
        gp = gradient_penalty(g, impl=impl)
        assert torch.isnan(gp[1]) and torch.isfinite(gp[[0, 2]]).all(), impl


# ---------------------------------------------------------------------------------------------
# End to end: the regularizers at the end of create_graph chains
# ---------------------------------------------------------------------------------------------
def _tiny_discriminator(params, x, fused):
    w1, b1, w2, w3 = params
    h = F.leaky_relu(F.conv2d(x, w1, b1, padding=1), 0.2)
    h = minibatch_std(h, group_size=2, num_channels=1, impl="triton") if fused else _mbstd_explicit(h, 2)
    h = F.leaky_relu(F.conv2d(h, w2, stride=2), 0.2)
    return h.flatten(1) @ w3


def _mbstd_explicit(x, G):
    n = x.shape[0] // G
    y = x.reshape(G, n, *x.shape[1:])
    std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=[1, 2, 3])  # [n]
    return torch.cat([x, std.repeat(G)[:, None, None, None].expand(-1, 1, *x.shape[2:])], dim=1)


def test_end_to_end_r1_step_matches_pure_pytorch(device):
    torch.manual_seed(1)
    dt = torch.float64
    params = [torch.randn(4, 3, 3, 3, dtype=dt) * 0.3, torch.randn(4, dtype=dt) * 0.1,
              torch.randn(5, 5, 3, 3, dtype=dt) * 0.2, torch.randn(5 * 3 * 3, 1, dtype=dt) * 0.2]
    reals = torch.randn(4, 3, 7, 7, dtype=dt)
    gamma = 10.0
    grads = []
    for fused in (True, False):
        ps = [p.clone().to(device).requires_grad_() for p in params]
        x = reals.clone().to(device).requires_grad_()
        logits = _tiny_discriminator(ps, x, fused)
        (r1_grads,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        if fused:
            penalty = r1_penalty(r1_grads, impl="triton")
        else:
            penalty = r1_grads.square().sum(dim=[1, 2, 3])
        (penalty.mean() * (gamma / 2)).backward()
        grads.append([p.grad for p in ps])
    for got, want in zip(*grads):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _tiny_generator(params, ws, fused):
    const, affine, w1, w_rgb = params  # ws: [N, 2, w_dim]
    styles = ws @ affine  # [N, 2, C]: one style per layer, like StyleGAN's affine
    x = const[None] * styles[:, 0, :, None, None]  # modulate
    x = F.conv2d(x, w1, padding=1) * styles[:, 1, :, None, None]
    if fused:
        x = normalize_2nd_moment(x, dim=1, impl="triton")  # demodulation-like channel normalization
    else:
        x = x / (x.pow(2).mean(dim=1, keepdim=True) + 1e-8).sqrt()
    return F.conv2d(F.leaky_relu(x, 0.2), w_rgb)


def test_end_to_end_path_length_step_matches_pure_pytorch(device):
    torch.manual_seed(2)
    dt = torch.float64
    C, w_dim = 4, 6
    params = [torch.randn(C, 5, 5, dtype=dt), torch.randn(w_dim, C, dtype=dt) * 0.4,
              torch.randn(C, C, 3, 3, dtype=dt) * 0.3, torch.randn(3, C, 1, 1, dtype=dt) * 0.5]
    ws0 = torch.randn(3, 2, w_dim, dtype=dt)
    noise = torch.randn(3, 3, 5, 5, dtype=dt) / math.sqrt(5 * 5)
    pl_mean = torch.tensor(0.5, dtype=dt)
    results = []
    for fused in (True, False):
        ps = [p.clone().to(device).requires_grad_() for p in params]
        ws = ws0.clone().to(device).requires_grad_()
        img = _tiny_generator(ps, ws, fused)
        (pl_grads,) = torch.autograd.grad((img * noise.to(device)).sum(), ws, create_graph=True)
        if fused:
            penalty, new_mean = path_length_penalty(pl_grads, pl_mean, decay=0.01, impl="triton")
        else:  # NVIDIA stylegan2-ada-pytorch, loss.py
            pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()
            updated = pl_mean.lerp(pl_lengths.mean(), 0.01)
            penalty, new_mean = (pl_lengths - updated).square(), updated.detach()
        (penalty.mean() * 2.0).backward()
        results.append(([p.grad for p in ps], new_mean))
    (got_grads, got_mean), (want_grads, want_mean) = results
    torch.testing.assert_close(got_mean, want_mean, rtol=1e-12, atol=1e-12)
    for got, want in zip(got_grads, want_grads):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Bad input, compile, opcheck
# ---------------------------------------------------------------------------------------------
def test_bad_arguments_are_rejected_with_clear_messages():
    with pytest.raises(ValueError, match="grad must have at least 2 dims"):
        r1_penalty(torch.randn(5))
    with pytest.raises(TypeError, match="grad must be a torch.Tensor"):
        gradient_penalty([1.0, 2.0])
    with pytest.raises(TypeError, match="center must be a finite number"):
        gradient_penalty(torch.randn(2, 3), center=float("nan"))
    with pytest.raises(ValueError, match="grad_ws must be 3-D"):
        path_length_penalty(torch.randn(2, 3), torch.tensor(0.0))
    with pytest.raises(ValueError, match="pl_mean must hold one value"):
        path_length_penalty(torch.randn(2, 3, 4), torch.zeros(2))
    with pytest.raises(TypeError, match="decay must be a finite number"):
        path_length_penalty(torch.randn(2, 3, 4), 0.0, decay="fast")
    with pytest.raises(ValueError, match="non-empty batch"):
        r1_penalty(torch.randn(0, 3))
    for impl in IMPLS:  # a mean over no ws: NaN on one path, 0 on the other, before it was refused
        with pytest.raises(ValueError, match="grad_ws must have at least one ws"):
            path_length_penalty(torch.randn(2, 0, 4), 0.0, impl=impl)


def test_torch_compile_fullgraph_and_opcheck(device):
    from fusegan.kernels.regularizers import _row_dot_op, _row_scale_op, _row_sumsq_op

    g = torch.randn(3, 2, 4, 4, device=device, requires_grad=True)
    gw = torch.randn(3, 2, 5, device=device, requires_grad=True)
    pl_mean = torch.tensor(0.3, device=device)

    def tail(g, gw):
        pen, new_mean = path_length_penalty(gw, pl_mean, impl="triton")
        return r1_penalty(g, impl="triton").mean() + gradient_penalty(g, impl="triton").sum() + pen.mean(), new_mean

    compiled = torch.compile(tail, fullgraph=True, backend="aot_eager")
    (out, mean), (want, want_mean) = compiled(g, gw), tail(g, gw)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(mean, want_mean)
    torch.testing.assert_close(torch.autograd.grad(out, (g, gw)), torch.autograd.grad(want, (g, gw)))
    coef = torch.randn(3, device=device, requires_grad=True)
    torch.library.opcheck(_row_sumsq_op, (g,))
    torch.library.opcheck(_row_dot_op, (g, torch.randn_like(g)))
    torch.library.opcheck(_row_scale_op, (g, coef))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_dtypes_and_large_rows_against_float64(dtype):
    g = torch.randn(32, 3, 256, 256, device="cuda").to(dtype)
    rtol, atol = TOL[dtype]
    want = g.double().square().sum(dim=[1, 2, 3])
    torch.testing.assert_close(r1_penalty(g).double(), want, rtol=max(rtol, 1e-5), atol=0)
    torch.testing.assert_close(gradient_penalty(g).double(), (want.sqrt() - 1) ** 2, rtol=max(rtol, 1e-5), atol=0)
    gg = g.clone().requires_grad_()
    (dg,) = torch.autograd.grad(r1_penalty(gg).sum(), gg)
    torch.testing.assert_close(dg.float(), 2 * g.float(), rtol=rtol, atol=atol)


@pytest.mark.gpu
def test_cuda_torch_compile_inductor():
    g = torch.randn(8, 3, 32, 32, device="cuda", requires_grad=True)
    compiled = torch.compile(lambda t: r1_penalty(t).mean(), fullgraph=True)
    out = compiled(g)
    (dg,) = torch.autograd.grad(out, g)
    torch.testing.assert_close(out, g.square().sum(dim=[1, 2, 3]).mean())
    torch.testing.assert_close(dg, 2 * g / 8)
