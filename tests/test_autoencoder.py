"""Autoencoders: shapes, parameter counts, plain-nn references, the VAE objective, noise models, and PCA vs SVD."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fusegan.models.autoencoder import (ConvAutoencoder, ConvVAE, DenoisingAutoencoder, MLPVAE, PCAAutoencoder,
                                        reparameterize)
from norm_helpers import randomize_norms

FP32 = dict(rtol=1e-4, atol=1e-5)  # fp32 conv stacks, summation order differs between paths
FP64 = dict(rtol=1e-10, atol=1e-10)


def count(m):
    return sum(p.numel() for p in m.parameters())


def _n(resolution):
    """Stride-2 stages between a resolution x resolution image and the 4x4 core."""
    return int(math.log2(resolution)) - 2


def images(n, in_ch, resolution):
    return torch.rand(n, in_ch, resolution, resolution)


# ---------------------------------------------------------------------------------------------
# The published layout, written out with plain nn modules
# ---------------------------------------------------------------------------------------------
def reference_autoencoder(in_ch, resolution, latent_dim, base):
    """Encoder: strided 4x4 convs (LeakyReLU 0.2; BatchNorm after the first), to a 4x4 map; linear code;
    decoder: Linear + ReLU, 4x4 transposed convs with BatchNorm + ReLU, a last transposed conv to logits."""
    n = _n(resolution)
    enc = [nn.Conv2d(in_ch, base, 4, 2, 1), nn.LeakyReLU(0.2)]
    for i in range(1, n):
        enc += [nn.Conv2d(base * 2 ** (i - 1), base * 2**i, 4, 2, 1, bias=False), nn.BatchNorm2d(base * 2**i),
                nn.LeakyReLU(0.2)]
    top = base * 2 ** (n - 1)
    dec = []
    for i in range(n - 1, 0, -1):
        dec += [nn.ConvTranspose2d(base * 2**i, base * 2 ** (i - 1), 4, 2, 1, bias=False),
                nn.BatchNorm2d(base * 2 ** (i - 1)), nn.ReLU()]
    dec.append(nn.ConvTranspose2d(base, in_ch, 4, 2, 1))
    return nn.ModuleDict(dict(encoder=nn.Sequential(*enc, nn.Flatten()), fc_enc=nn.Linear(top * 16, latent_dim),
                              fc_dec=nn.Linear(latent_dim, top * 16), decoder=nn.Sequential(*dec))), top


def run_reference(ref, top, x):
    z = ref["fc_enc"](ref["encoder"](x))
    return ref["decoder"](F.relu(ref["fc_dec"](z)).view(x.shape[0], top, 4, 4)), z


def copy_into_reference(model, ref):
    ref["fc_enc"].load_state_dict(model.fc_enc.state_dict())
    ref["fc_dec"].load_state_dict(model.fc_dec.state_dict())
    for fused, plain in ((model.encoder, ref["encoder"]), (model.decoder, ref["decoder"])):
        convs = [m for m in plain if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        norms = [m for m in plain if isinstance(m, nn.BatchNorm2d)]
        for layer, conv in zip(fused, convs, strict=True):
            conv.load_state_dict(layer.conv.state_dict())
        for fnorm, norm in zip([m.norm for m in fused if m.norm is not None], norms, strict=True):
            norm.load_state_dict(fnorm.state_dict())


def expected_conv_ae_params(in_ch, resolution, latent_dim, base):
    n = _n(resolution)
    ch = [base * 2**i for i in range(n)]
    enc = in_ch * base * 16 + base + sum(a * b * 16 + 2 * b for a, b in zip(ch[:-1], ch[1:]))  # conv(+bias) / BN
    dec = sum(b * a * 16 + 2 * a for a, b in zip(ch[:-1], ch[1:])) + base * in_ch * 16 + in_ch
    flat = ch[-1] * 16
    return enc + dec + (flat * latent_dim + latent_dim) + (latent_dim * flat + flat)


# ---------------------------------------------------------------------------------------------
# Shapes, parameter counts, construction errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", [32, 64])
def test_shapes(resolution):
    x = images(2, 3, resolution)
    for cls in (ConvAutoencoder, DenoisingAutoencoder):
        m = cls(in_ch=3, resolution=resolution, latent_dim=5, base=4, impl="ref")
        z = m.encode(x)
        assert z.shape == (2, 5)
        assert m.decode(z).shape == m(x).shape == x.shape
    vae = ConvVAE(in_ch=3, resolution=resolution, latent_dim=5, base=4, impl="ref")
    logits, mu, logvar = vae(x)
    assert logits.shape == x.shape and mu.shape == logvar.shape == (2, 5)
    assert vae.sample(3).shape == (3, 3, resolution, resolution)
    assert vae.loss(x).shape == ()


@pytest.mark.parametrize("resolution", [32, 64])
def test_parameter_counts(resolution):
    m = ConvAutoencoder(in_ch=3, resolution=resolution, latent_dim=16, base=8, impl="ref")
    assert count(m) == expected_conv_ae_params(3, resolution, 16, 8)
    assert count(m) == count(reference_autoencoder(3, resolution, 16, 8)[0])
    vae = ConvVAE(in_ch=3, resolution=resolution, latent_dim=16, base=8, impl="ref")
    flat = 8 * 2 ** (_n(resolution) - 1) * 16
    assert count(vae) == count(m) + flat * 16 + 16  # one more linear head (logvar)


def test_mlp_vae_parameter_count_and_names():
    sizes = [(784, 400), (400, 20), (400, 20), (20, 400), (400, 784)]  # fc1, fc21, fc22, fc3, fc4
    expected = sum(i * o + o for i, o in sizes)
    vae = MLPVAE()
    assert expected == 652_824 == count(vae)
    assert [name for name, _ in vae.named_children()] == ["fc1", "fc21", "fc22", "fc3", "fc4"]
    logits, mu, logvar = vae(torch.rand(3, 1, 28, 28))
    assert logits.shape == (3, 784) and mu.shape == logvar.shape == (3, 20)


def test_construction_errors():
    with pytest.raises(ValueError, match="resolution"):
        ConvAutoencoder(resolution=48)
    with pytest.raises(ValueError, match="noise"):
        DenoisingAutoencoder(noise="dropout")
    with pytest.raises(ValueError, match="noise_level"):
        DenoisingAutoencoder(noise="masking", noise_level=1.5)
    with pytest.raises(ValueError, match="x must have shape"):
        ConvAutoencoder(resolution=32, base=2, impl="ref").encode(torch.rand(1, 1, 64, 64))
    with pytest.raises(RuntimeError, match="not fitted"):
        PCAAutoencoder(2).encode(torch.rand(3, 4))
    with pytest.raises(ValueError, match="latent_dim"):
        PCAAutoencoder(5).fit(torch.rand(4, 10))


# ---------------------------------------------------------------------------------------------
# Equality with the plain-nn reference; Triton vs reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("training", [True, False])
def test_conv_autoencoder_matches_plain_nn_reference(resolution, training):
    m = ConvAutoencoder(in_ch=2, resolution=resolution, latent_dim=6, base=4, impl="ref")
    randomize_norms(m)
    ref, top = reference_autoencoder(2, resolution, 6, 4)
    copy_into_reference(m, ref)
    m.train(training), ref.train(training)
    x = images(3, 2, resolution)
    want, z_want = run_reference(ref, top, x)
    torch.testing.assert_close(m.encode(x), z_want, **FP32)
    torch.testing.assert_close(m(x), want, **FP32)


@pytest.mark.parametrize("training", [True, False])
def test_conv_autoencoder_triton_matches_ref(training):
    ref = ConvAutoencoder(in_ch=1, resolution=32, latent_dim=4, base=2, impl="ref")
    randomize_norms(ref)
    tri = ConvAutoencoder(in_ch=1, resolution=32, latent_dim=4, base=2, impl="triton")
    tri.load_state_dict(ref.state_dict())
    ref.train(training), tri.train(training)
    x = images(2, 1, 32).requires_grad_()
    x_tri = x.detach().clone().requires_grad_()
    out_ref, out_tri = ref(x), tri(x_tri)
    torch.testing.assert_close(out_tri, out_ref, **FP32)
    out_ref.square().sum().backward()
    out_tri.square().sum().backward()
    torch.testing.assert_close(x_tri.grad, x.grad, **FP32)
    for (name, p_tri), p_ref in zip(tri.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p_tri.grad, p_ref.grad, **FP32, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("training", [True, False])
def test_conv_autoencoder_under_autocast_matches_plain_nn_under_autocast(training):
    """The fused layers cast at use exactly as autocast casts nn.Conv2d / nn.Linear (norms stay fp32)."""
    m = ConvAutoencoder(in_ch=1, resolution=32, latent_dim=6, base=4, impl="ref")
    randomize_norms(m)
    ref, top = reference_autoencoder(1, 32, 6, 4)
    copy_into_reference(m, ref)
    m.train(training), ref.train(training)
    x = images(3, 1, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, _ = run_reference(ref, top, x)
        got = m(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same bf16 ops in the same order
    weights = torch.randn(got.shape)
    (want.float() * weights).sum().backward()
    (got.float() * weights).sum().backward()
    grads = dict(m.named_parameters())
    for fused, plain in (("fc_enc", ref["fc_enc"]), ("fc_dec", ref["fc_dec"]), ("encoder.0.conv", ref["encoder"][0]),
                         ("decoder.0.conv", ref["decoder"][0]), ("decoder.0.norm", ref["decoder"][1])):
        for leaf, p in plain.named_parameters():
            assert grads[f"{fused}.{leaf}"].grad.dtype == torch.float32
            torch.testing.assert_close(grads[f"{fused}.{leaf}"].grad, p.grad, rtol=0, atol=0)
    for norm, plain in zip([layer.norm for layer in m.decoder if layer.norm is not None],
                           [mod for mod in ref["decoder"] if isinstance(mod, nn.BatchNorm2d)], strict=True):
        assert norm.running_mean.dtype == torch.float32  # updated in place, in fp32, as nn.BatchNorm2d
        torch.testing.assert_close(norm.running_mean, plain.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(norm.running_var, plain.running_var, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Round trips and layouts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [ConvAutoencoder, DenoisingAutoencoder])
def test_encode_decode_round_trip_is_forward(cls):
    m = cls(in_ch=1, resolution=32, latent_dim=3, base=4, impl="ref").eval()
    x = images(4, 1, 32)
    torch.testing.assert_close(m.decode(m.encode(x)), m(x), rtol=0, atol=0)
    vae = ConvVAE(in_ch=1, resolution=32, latent_dim=3, base=4, impl="ref").eval()
    mu, _ = vae.encode(x)
    torch.testing.assert_close(vae.decode(mu), vae(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cls", [ConvAutoencoder, ConvVAE])
def test_channels_last_input_gives_the_same_output(cls, training):
    m = cls(in_ch=3, resolution=32, latent_dim=4, base=4, impl="ref")
    randomize_norms(m)
    m_cl = copy.deepcopy(m)
    m.train(training), m_cl.train(training)
    x = images(2, 3, 32)
    x_cl = x.to(memory_format=torch.channels_last)
    assert x_cl.is_contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    out = m(x)
    torch.manual_seed(1)  # the same eps for the VAE in training
    out_cl = m_cl(x_cl)
    for a, b in zip(out if isinstance(out, tuple) else (out,), out_cl if isinstance(out_cl, tuple) else (out_cl,)):
        torch.testing.assert_close(b, a, **FP32)


# ---------------------------------------------------------------------------------------------
# VAE: objective and reparameterization
# ---------------------------------------------------------------------------------------------
def expected_negative_elbo(logits, x, mu, logvar, beta, reduction):
    """BCE-with-logits summed over pixels, written as max(r, 0) - r t + log(1 + exp(-|r|)), plus beta * KL
    of N(mu, sigma^2) from N(0, 1): 0.5 * (sigma^2 + mu^2 - 1 - log sigma^2) per latent."""
    r, t = logits.double(), x.double()
    bce = (r.clamp(min=0) - r * t + torch.log1p(torch.exp(-r.abs()))).sum()
    sigma2 = torch.exp(logvar.double())
    kl = 0.5 * (sigma2 + mu.double() ** 2 - 1 - logvar.double()).sum()
    total = bce + beta * kl
    return total / x.shape[0] if reduction == "mean" else total


@pytest.mark.parametrize("beta", [1.0, 0.25])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_conv_vae_loss_is_the_negative_elbo(beta, reduction):
    vae = ConvVAE(in_ch=1, resolution=32, latent_dim=6, base=4, impl="ref").eval()
    x = images(3, 1, 32)
    logits, mu, logvar = vae(x)
    want = expected_negative_elbo(logits, x, mu, logvar, beta, reduction)
    torch.testing.assert_close(vae.loss(x, beta=beta, reduction=reduction).double(), want, rtol=1e-5, atol=1e-4)


def test_conv_vae_loss_in_training_uses_the_sampled_z():
    vae = ConvVAE(in_ch=1, resolution=32, latent_dim=6, base=4, impl="ref").train()
    x = images(3, 1, 32)
    twin = copy.deepcopy(vae)  # BatchNorm running stats move on every training forward
    torch.manual_seed(7)
    got = vae.loss(x)
    torch.manual_seed(7)
    mu, logvar = twin.encode(x)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    want = expected_negative_elbo(twin.decode(z), x, mu, logvar, 1.0, "mean")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def test_mlp_vae_loss_is_the_negative_elbo():
    vae = MLPVAE(impl="ref").eval()
    x = torch.rand(4, 1, 28, 28)
    logits, mu, logvar = vae(x)
    want = expected_negative_elbo(logits, x.reshape(4, 784), mu, logvar, 0.5, "mean")
    torch.testing.assert_close(vae.loss(x, beta=0.5).double(), want, rtol=1e-5, atol=1e-4)


def test_vae_loss_triton_matches_ref():
    vae = ConvVAE(in_ch=1, resolution=32, latent_dim=3, base=2, impl="ref").eval()
    x = images(2, 1, 32)
    want = vae.loss(x, beta=0.5)
    vae.impl = "triton"  # only the loss runs on Triton here; the convs stay on the reference path
    torch.testing.assert_close(vae.loss(x, beta=0.5), want, **FP32)


def test_reparameterization_statistics():
    n = 200_000
    mu = torch.tensor([[0.5, -2.0, 0.0]], dtype=torch.float64).expand(n, 3)
    logvar = torch.tensor([[0.0, math.log(0.25), math.log(4.0)]], dtype=torch.float64).expand(n, 3)
    z = reparameterize(mu, logvar)
    std = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    # standard errors: std / sqrt(n) for the mean, about std / sqrt(2n) for the std; 5 sigma
    torch.testing.assert_close(z.mean(0), mu[0], rtol=0, atol=(5 * std / math.sqrt(n)).max().item())
    torch.testing.assert_close(z.std(0), std, rtol=5 / math.sqrt(2 * n), atol=0)
    assert reparameterize(mu, logvar, sample=False) is mu


def test_vae_is_deterministic_in_eval_unless_asked_to_sample():
    vae = ConvVAE(in_ch=1, resolution=32, latent_dim=4, base=4, impl="ref").eval()
    x = images(2, 1, 32)
    a, mu, _ = vae(x)
    b, _, _ = vae(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, vae.decode(mu), rtol=0, atol=0)
    c, _, _ = vae(x, sample=True)
    assert not torch.allclose(a, c)
    mlp = MLPVAE().eval()
    y = torch.rand(2, 784)
    torch.testing.assert_close(mlp(y)[0], mlp.decode(mlp.encode(y)[0]), rtol=0, atol=0)
    assert not torch.allclose(mlp(y)[0], mlp(y, sample=True)[0])


def test_vae_samples_are_probabilities():
    vae = ConvVAE(in_ch=1, resolution=32, latent_dim=4, base=4, impl="ref").eval()
    s = vae.sample(5)
    assert s.min() >= 0 and s.max() <= 1 and not s.requires_grad
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(vae.sample(2, generator=g1), vae.sample(2, generator=g2), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Denoising: the noise models
# ---------------------------------------------------------------------------------------------
def test_masking_noise_zeroes_the_expected_fraction():
    p = 0.3
    dae = DenoisingAutoencoder(resolution=32, base=2, noise="masking", noise_level=p, impl="ref")
    x = 0.5 + 0.5 * torch.rand(16, 1, 32, 32)  # strictly positive, so every zero is a masked pixel
    x_before = x.clone()
    y = dae.corrupt(x)
    masked = y == 0
    n = x.numel()
    assert abs(masked.float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    torch.testing.assert_close(y[~masked], x[~masked], rtol=0, atol=0)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)  # not in place


def test_salt_and_pepper_and_gaussian_noise():
    p, n_img = 0.2, 16
    x = 0.25 + 0.5 * torch.rand(n_img, 1, 32, 32)  # never exactly 0 or 1
    sp = DenoisingAutoencoder(resolution=32, base=2, noise="salt_pepper", noise_level=p, impl="ref")
    y = sp.corrupt(x)
    hit = y != x
    n = x.numel()
    assert abs(hit.float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert set(y[hit].unique().tolist()) == {0.0, 1.0}
    salt = (y[hit] == 1).float().mean().item()
    assert abs(salt - 0.5) < 5 * math.sqrt(0.25 / hit.sum().item())
    sigma = 0.1
    gauss = DenoisingAutoencoder(resolution=32, base=2, noise="gaussian", noise_level=sigma, impl="ref")
    d = (gauss.corrupt(x) - x).flatten()
    assert abs(d.mean().item()) < 5 * sigma / math.sqrt(n)
    assert abs(d.std().item() / sigma - 1) < 5 / math.sqrt(2 * n)


@pytest.mark.parametrize("noise", ["gaussian", "masking", "salt_pepper"])
def test_denoising_corrupts_only_in_training(noise):
    dae = DenoisingAutoencoder(in_ch=1, resolution=32, latent_dim=4, base=4, noise=noise, noise_level=0.3,
                               impl="ref")
    plain = ConvAutoencoder(in_ch=1, resolution=32, latent_dim=4, base=4, impl="ref")
    plain.load_state_dict(dae.state_dict())
    x = images(4, 1, 32)
    dae.eval(), plain.eval()
    torch.testing.assert_close(dae(x), plain(x), rtol=0, atol=0)
    torch.testing.assert_close(dae(x), dae(x), rtol=0, atol=0)
    dae.train(), plain.train()
    torch.manual_seed(5)
    noisy = dae.corrupt(x)
    torch.manual_seed(5)
    torch.testing.assert_close(dae(x), plain(noisy), rtol=0, atol=0)
    assert not torch.allclose(dae(x), plain(x))


def test_denoising_loss_targets_the_clean_input():
    dae = DenoisingAutoencoder(in_ch=1, resolution=32, latent_dim=4, base=4, noise="masking", noise_level=0.5,
                               impl="ref").eval()  # eval: corruption must still happen inside loss()
    x = images(3, 1, 32)
    torch.manual_seed(2)
    got = dae.loss(x)
    torch.manual_seed(2)
    logits = dae.decode(dae.encode(dae.corrupt(x)))
    want = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / 3
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# PCA baseline against an independent SVD
# ---------------------------------------------------------------------------------------------
def low_rank_data(n, shape, spectrum):
    """n samples whose centered data has (about) the given singular values, plus an offset."""
    d = math.prod(shape)
    u, _ = torch.linalg.qr(torch.randn(n, len(spectrum), dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, len(spectrum), dtype=torch.float64))
    u = u - u.mean(0)  # centered columns: the spectrum survives centering up to a small rotation
    data = u @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ v.T + 3.0
    return data.reshape(n, *shape)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_pca_reconstruction_error_is_the_discarded_spectrum(k):
    x = low_rank_data(40, (1, 8, 8), [10.0 * 0.6**i for i in range(12)])
    flat = x.reshape(40, -1)
    s = torch.linalg.svdvals(flat - flat.mean(0))
    pca = PCAAutoencoder(k).fit(x)
    recon = pca(x)
    assert recon.shape == x.shape and pca.encode(x).shape == (40, k)
    err = (recon - x).square().sum()
    torch.testing.assert_close(err, s[k:].square().sum(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(pca.singular_values, s[:k], **FP64)
    torch.testing.assert_close(pca.explained_variance(), s[:k].square() / 39, **FP64)
    eye = torch.eye(k, dtype=torch.float64)
    torch.testing.assert_close(pca.components.T @ pca.components, eye, **FP64)  # orthonormal code


def test_pca_is_exact_at_full_rank_and_round_trips():
    rank = 7
    x = low_rank_data(30, (2, 5, 5), [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25])
    flat = x.reshape(30, -1)
    assert torch.linalg.matrix_rank(flat - flat.mean(0)).item() == rank
    pca = PCAAutoencoder(rank).fit(x)
    torch.testing.assert_close(pca(x), x, rtol=0, atol=1e-10)
    z = torch.randn(4, rank, dtype=torch.float64)
    torch.testing.assert_close(pca.encode(pca.decode(z)), z, **FP64)  # decode is a right inverse of encode
    # float32 data, as images are: still exact to float32 precision
    pca32 = PCAAutoencoder(rank).fit(x.float())
    torch.testing.assert_close(pca32(x.float()), x.float(), rtol=1e-5, atol=1e-5)


def test_pca_state_dict_restores_into_a_fresh_module(tmp_path):
    from safetensors.torch import load_file, save_file

    x = low_rank_data(30, (2, 5, 5), [5.0, 4.0, 3.0, 2.0, 1.0]).float()
    pca = PCAAutoencoder(3).fit(x)
    state = pca.state_dict()
    assert set(state) == {"mean", "components", "singular_values", "num_fitted", "fitted_sample_shape"}
    save_file(state, str(tmp_path / "pca.safetensors"))  # every entry is a tensor: safetensors can hold it
    for saved in (state, load_file(str(tmp_path / "pca.safetensors"))):
        fresh = PCAAutoencoder(3)
        fresh.load_state_dict(saved)  # strict: no missing or unexpected keys
        assert fresh.sample_shape == (2, 5, 5)
        z = pca.encode(x)
        assert torch.equal(fresh.encode(x), z)
        assert torch.equal(fresh.decode(z), pca.decode(z))
        assert torch.equal(fresh.explained_variance(), pca.explained_variance())
    # a module fitted on data of another shape takes the saved fit over
    other = PCAAutoencoder(3).fit(torch.rand(20, 1, 4, 4))
    other.load_state_dict(state)
    assert other.sample_shape == (2, 5, 5) and torch.equal(other(x), pca(x))
    # an unfitted module's state is empty and restores as unfitted
    empty = PCAAutoencoder(2)
    assert empty.state_dict() == {}
    PCAAutoencoder(2).load_state_dict(empty.state_dict())
    with pytest.raises(RuntimeError, match="not fitted"):
        PCAAutoencoder(2).encode(x)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def _train(model, loss_fn, steps=8, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()


@pytest.mark.parametrize("cls", [ConvAutoencoder, ConvVAE])
def test_a_few_adam_steps_reduce_the_loss_on_a_fixed_batch(cls):
    model = cls(in_ch=1, resolution=32, latent_dim=8, base=4, impl="ref").train()
    # binary blobs (upsampled 4x4 noise): learnable structure, and a Bernoulli likelihood whose optimum is 0
    x = (F.interpolate(torch.randn(8, 1, 4, 4), size=32, mode="bilinear") > 0).float()
    measure = (lambda: model.loss(x, sample=False)) if cls is ConvVAE else (lambda: model.loss(x))
    with torch.no_grad():
        before = measure().item()
    _train(model, lambda: model.loss(x), steps=15)
    with torch.no_grad():
        after = measure().item()
    assert after < 0.95 * before, (before, after)
    # and better than the trivial model that predicts 0.5 everywhere (BCE = log 2 per pixel)
    assert after < 32 * 32 * math.log(2), after


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("cls", [ConvAutoencoder, ConvVAE])
def test_torch_compile_forward_on_gpu(cls):
    model = cls(in_ch=1, resolution=64, latent_dim=16, base=16, impl="triton").cuda().eval()
    x = torch.rand(4, 1, 64, 64, device="cuda")
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)(x)
    for a, b in zip(eager if isinstance(eager, tuple) else (eager,),
                    compiled if isinstance(compiled, tuple) else (compiled,)):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)


def test_norm_none_has_no_batchnorm_and_is_batch_independent():
    from fusegan.models.autoencoder import ConvAutoencoder
    model = ConvAutoencoder(1, 32, latent_dim=4, base=4, impl="ref", norm="none")
    assert not [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    x = torch.rand(4, 1, 32, 32)
    torch.testing.assert_close(model(x)[:1], model(x[:1]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="norm must be one of"):
        ConvAutoencoder(1, 32, norm="layer")
