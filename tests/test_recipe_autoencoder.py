"""The 'ae', 'dae' and 'vae' recipes: steps run, one step equals the loss written in plain torch (BCE summed over
pixels per sample; + the closed-form Gaussian KL for the VAE), non-finite skipping, grids, sample/interpolate,
the MLP VAE, and one VAE step through the Triton vae_loss. Tiny widths at 32x32."""
import copy

import pytest
import torch
import torch.nn.functional as F

from fusegan.engine.recipes.base import DataInfo
from fusegan.engine.recipes.latent import latents_for_seeds
from recipe_helpers import assert_nonfinite_step_is_skipped, assert_steps_change_every_parameter, build_recipe

TINY = ["--base", "4", "--latent-dim", "6"]
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-4      # fp32 sums of ~1e3 over 2x1024 pixels, written differently
PARAM_ATOL = 1e-6                      # one SGD step of lr SGD_LR from gradients that agree to ~1e-6 relative
SGD_LR = 1e-4  # the maths test swaps Adam for SGD: Adam's first step is ~lr * sign(grad) and hides loss scales
NET = {"ae": "AE", "dae": "DAE", "vae": "VAE"}


def build(name, args=(), res=32, channels=1, impl="ref", tiny=True):
    return build_recipe(name, [*(TINY if tiny else []), *args], DataInfo(resolution=res, channels=channels), impl=impl)


def make_batch(n=2, res=32, channels=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, res, res, generator=g) * 2 - 1, torch.full((n,), -1, dtype=torch.int64)


def params(recipe):
    return {k: v.detach().clone() for k, v in recipe.model.named_parameters()}


def bce(logits, x01):
    """Per-sample BCE-with-logits summed over pixels, averaged over the batch (the PyTorch examples' VAE)."""
    return F.binary_cross_entropy_with_logits(logits, x01, reduction="sum") / x01.shape[0]


@pytest.mark.parametrize("name", ["ae", "dae", "vae"])
def test_steps_run_and_change_every_parameter(name):
    recipe = build(name)
    R = type(recipe)
    assert (R.data_kind, R.default_data, R.default_resolution, R.default_batch) == ("image", "digits", 32, 128)
    opt = recipe.optimizers[NET[name]]
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["lr"] == 1e-3
    assert_steps_change_every_parameter(recipe, make_batch(), params)


def _reference_loss(name, model, x01, beta):
    """The loss each recipe should take, in plain torch on a copy of its model (same RNG draws, same order)."""
    if name == "ae":
        return {"loss": bce(model.decode(model.encode(x01)), x01)}
    if name == "dae":  # masking noise (Vincent et al. 2008): each pixel zeroed with probability 0.25
        corrupted = x01.masked_fill(torch.rand(x01.shape) < 0.25, 0)
        return {"loss": bce(model.decode(model.encode(corrupted)), x01)}
    mu, logvar = model.encode(x01)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    recon = bce(model.decode(z), x01)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / x01.shape[0]  # Kingma & Welling, appendix B
    return {"loss": recon + beta * kl, "recon": recon, "kl": kl}


@pytest.mark.parametrize("name,beta", [("ae", None), ("dae", None), ("vae", 1.0), ("vae", 4.0)])
def test_one_step_matches_reference_maths(name, beta):
    recipe = build(name, ["--beta", str(beta)] if beta is not None else [])
    images, labels = make_batch()
    model = copy.deepcopy(recipe.model)
    recipe.optimizers = {NET[name]: torch.optim.SGD(recipe.model.parameters(), lr=SGD_LR)}
    torch.manual_seed(5)
    losses = recipe.train_step((images, labels), 0)
    torch.manual_seed(5)
    expected = _reference_loss(name, model, (images + 1) / 2, beta)
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value.detach(), rtol=LOSS_RTOL, atol=LOSS_ATOL, msg=key)
    expected["loss"].backward()
    torch.optim.SGD(model.parameters(), lr=SGD_LR).step()
    for (key, p), q in zip(recipe.model.named_parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=PARAM_ATOL, msg=key)


@pytest.mark.parametrize("noise", ["gaussian", "salt_pepper"])
def test_dae_noise_option(noise):
    recipe = build("dae", ["--noise", noise, "--noise-level", "0.3"])
    assert recipe.model.noise == noise and recipe.model.noise_level == 0.3
    assert torch.isfinite(recipe.train_step(make_batch(), 0)["loss"])


@pytest.mark.parametrize("name", ["ae", "dae", "vae"])
def test_nan_input_skips_the_step(name):
    recipe = build(name)
    images, labels = make_batch()
    images[1, 0, 4, 4] = float("nan")
    assert_nonfinite_step_is_skipped(recipe, (images, labels), 0, [NET[name]], params)


@pytest.mark.parametrize("name,columns", [("ae", 2), ("dae", 3)])
def test_reconstruction_grid(name, columns):
    recipe = build(name)
    recipe.set_reference_batch(make_batch(n=5))
    rng = torch.get_rng_state()
    grids = recipe.snapshot_grid()
    assert set(grids) == {"reconstructions"}
    grid, per_row = grids["reconstructions"]
    assert grid.shape == (5 * columns, 1, 32, 32) and per_row == 4 * columns and grid.abs().max() <= 1
    torch.testing.assert_close(grid[::columns], recipe.reference_batch[0])  # the inputs lead each group
    assert torch.equal(torch.get_rng_state(), rng) and recipe.model.training
    assert torch.equal(recipe.snapshot_grid()["reconstructions"][0], grid)  # a fixed noise draw for the DAE
    with pytest.raises(NotImplementedError):
        recipe.sample(2, torch.Generator())


def test_vae_grids():
    recipe = build("vae")
    recipe.set_reference_batch(make_batch(n=5))
    rng = torch.get_rng_state()
    grids = recipe.snapshot_grid()
    assert set(grids) == {"reconstructions", "samples", "manifold"}
    assert grids["reconstructions"][0].shape == (10, 1, 32, 32) and grids["reconstructions"][1] == 8
    assert grids["samples"][0].shape == (64, 1, 32, 32) and grids["samples"][1] == 8
    strips, per_row = grids["manifold"]
    assert strips.shape == (2 * 10, 1, 32, 32) and per_row == 10  # pairs (0, 1) and (2, 3): real, 8 decoded, real
    reals = recipe.reference_batch[0]
    torch.testing.assert_close(strips[0], reals[0])
    torch.testing.assert_close(strips[9], reals[1])
    torch.testing.assert_close(strips[10], reals[2])
    with torch.no_grad():  # the strip's ends decode the posterior means of its two reals
        recipe.model.eval()
        mu = recipe.model.encode((reals[:2] + 1) / 2)[0]
        ends = torch.sigmoid(recipe.model.decode(mu)) * 2 - 1
        recipe.model.train()
    torch.testing.assert_close(strips[1], ends[0])
    torch.testing.assert_close(strips[8], ends[1])
    for grid, _ in grids.values():
        assert grid.abs().max() <= 1 and torch.isfinite(grid).all()
    assert torch.equal(torch.get_rng_state(), rng) and recipe.model.training


def test_vae_sample_and_interpolate():
    recipe = build("vae")
    a = recipe.sample(3, torch.Generator().manual_seed(4))
    b = recipe.sample(3, torch.Generator().manual_seed(4))
    assert a.shape == (3, 1, 32, 32) and torch.equal(a, b) and a.abs().max() <= 1
    strip = recipe.interpolate([0, 1, 2], steps=4)
    assert strip.shape == (2 * 4 + 1, 1, 32, 32)
    assert torch.equal(strip, recipe.interpolate([0, 1, 2], steps=4))
    # the endpoints are the seeds' prior latents, decoded
    torch.testing.assert_close(strip[[0, 4, 8]], recipe.decode(latents_for_seeds([0, 1, 2], 6, "cpu")))


def test_mlp_vae_needs_28x28_single_channel():
    recipe = build("vae", ["--arch", "mlp"], res=28, tiny=False)
    assert type(recipe.model).__name__ == "MLPVAE" and recipe.latent_dim == 20
    losses = recipe.train_step(make_batch(res=28), 0)
    assert all(torch.isfinite(v) for v in losses.values())
    recipe.set_reference_batch(make_batch(n=4, res=28))
    grids = recipe.snapshot_grid()
    assert grids["samples"][0].shape == (64, 1, 28, 28) and grids["manifold"][0].shape == (20, 1, 28, 28)
    with pytest.raises(ValueError, match="28x28"):
        build("vae", ["--arch", "mlp"], res=32)
    with pytest.raises(ValueError, match="resolution"):
        build("vae", res=28)


def test_vae_step_through_triton_matches_reference():
    """One MLP VAE step with the fused vae_loss run by Triton (the interpreter here) against impl='ref'."""
    results = {}
    for impl in ("ref", "triton"):
        torch.manual_seed(0)
        recipe = build("vae", ["--arch", "mlp", "--hidden", "16"], res=28, impl=impl, tiny=False)
        torch.manual_seed(1)
        losses = recipe.train_step(make_batch(res=28), 0)
        results[impl] = (losses, params(recipe))
    for key in results["ref"][0]:
        torch.testing.assert_close(results["triton"][0][key], results["ref"][0][key], rtol=LOSS_RTOL,
                                   atol=LOSS_ATOL)
    for key, value in results["ref"][1].items():
        torch.testing.assert_close(results["triton"][1][key], value, rtol=0, atol=PARAM_ATOL, msg=key)
