"""The pix2pix recipe: steps run, one step equals the reference's maths written in plain torch, the lr schedule,
non-finite skipping, extra_state, grids. Tiny widths at 32x32 (64x64 where the U-Net's dropout level matters)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from fusegan.engine.recipes import get_recipe
from fusegan.engine.recipes.base import DataInfo
from recipe_helpers import (assert_nonfinite_step_is_skipped, assert_steps_change_every_parameter, build_recipe,
                            net_params, round_trip)

TINY = ["--ngf", "4", "--ndf", "4"]
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6      # fp32: the same nets on the same inputs, loss formulas written differently
PARAM_ATOL = 1e-6                      # one SGD step of lr SGD_LR from gradients that agree to ~1e-6 relative
SGD_LR = 1e-2  # the maths test swaps Adam for SGD: Adam's first step is ~lr * sign(grad) and hides loss scales


def build(args=(), res=32, channels=3, channels_b=None):
    return build_recipe("pix2pix", [*TINY, *args],
                        DataInfo(resolution=res, channels=channels, kind="paired", channels_b=channels_b))


def make_batch(n=2, res=32, channels=3, channels_b=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, channels, res, res, generator=g) * 2 - 1,
            torch.rand(n, channels_b, res, res, generator=g) * 2 - 1)


def test_class_attributes():
    R = get_recipe("pix2pix")
    assert (R.name, R.data_kind, R.default_batch, R.default_resolution, R.default_data) == \
        ("pix2pix", "paired", 1, 256, "")


def test_optimizers_are_the_papers():
    recipe = build()
    for name, net in recipe.nets.items():
        opt = recipe.optimizers[name]
        assert isinstance(opt, torch.optim.Adam)
        assert opt.defaults["lr"] == 2e-4 and opt.defaults["betas"] == (0.5, 0.999)
        assert [p for g in opt.param_groups for p in g["params"]] == list(net.parameters())
    # N(0, 0.02) init with zero biases, BatchNorm scales N(1, 0.02)
    first = recipe.D.model[0].conv
    assert abs(first.weight.std().item() - 0.02) < 0.005 and torch.all(first.bias == 0)
    norm = recipe.D.model[1].norm
    assert abs(norm.weight.mean().item() - 1) < 0.02 and torch.all(norm.bias == 0)


def test_steps_run_and_change_every_parameter():
    assert_steps_change_every_parameter(build(), make_batch(), net_params)


def _reference_step(G, D, A, B, gan_mode, lambda_l1=100.0):
    """pix2pix_model.optimize_parameters with the reference's GANLoss (BCEWithLogits / MSE against 1 or 0)."""
    def criterion(pred, is_real):
        target = torch.ones_like(pred) if is_real else torch.zeros_like(pred)
        if gan_mode == "vanilla":
            return F.binary_cross_entropy_with_logits(pred, target)
        return F.mse_loss(pred, target)

    opt_D = torch.optim.SGD(D.parameters(), lr=SGD_LR)
    opt_G = torch.optim.SGD(G.parameters(), lr=SGD_LR)
    fake_B = G(A)
    loss_D_fake = criterion(D(torch.cat((A, fake_B), 1).detach()), False)
    loss_D_real = criterion(D(torch.cat((A, B), 1)), True)
    ((loss_D_fake + loss_D_real) * 0.5).backward()
    opt_D.step()
    for p in D.parameters():
        p.requires_grad_(False)
    loss_G_GAN = criterion(D(torch.cat((A, fake_B), 1)), True)
    loss_G_L1 = (fake_B - B).abs().mean() * lambda_l1
    (loss_G_GAN + loss_G_L1).backward()
    opt_G.step()
    return {"G_GAN": loss_G_GAN, "G_L1": loss_G_L1, "D_real": loss_D_real, "D_fake": loss_D_fake}


@pytest.mark.parametrize("gan_mode,res", [("vanilla", 32), ("lsgan", 64)])  # 64: one U-Net level with dropout
def test_one_step_matches_reference_maths(gan_mode, res):
    recipe = build(["--gan-mode", gan_mode], res=res)
    A, B = make_batch(res=res)
    G, D = copy.deepcopy(recipe.G), copy.deepcopy(recipe.D)
    recipe.optimizers = {name: torch.optim.SGD(recipe.nets[name].parameters(), lr=SGD_LR) for name in ("D", "G")}
    torch.manual_seed(7)  # dropout masks: both sides draw them in the same order
    losses = recipe.train_step((A, B), 0)
    torch.manual_seed(7)
    expected = _reference_step(G, D, A, B, gan_mode)
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value.detach(), rtol=LOSS_RTOL, atol=LOSS_ATOL, msg=name)
    for mine, ref in ((recipe.G, G), (recipe.D, D)):
        for (name, p), q in zip(mine.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=PARAM_ATOL, msg=name)
        for (name, b), c in zip(mine.named_buffers(), ref.buffers()):  # BatchNorm running stats, same forwards
            torch.testing.assert_close(b, c, rtol=LOSS_RTOL, atol=LOSS_ATOL, msg=name)


def test_architecture_follows_resolution():
    recipe = build(res=64)
    depth, block = 0, recipe.G.model
    while block is not None:
        depth, block = depth + 1, block.submodule
    assert depth == 6  # num_downs = log2(64)
    assert recipe.D.model[0].conv.in_channels == 6  # concat(A, B)
    with pytest.raises(ValueError, match="power-of-two"):
        build(res=48)
    with pytest.raises(ValueError, match="num_downs"):
        build(res=16)


def test_linear_decay_schedule():
    recipe = build(["--n-steps-const", "2", "--decay-steps", "3"])
    A, B = make_batch(n=1)
    seen = []
    for step in range(7):
        seen.append([opt.param_groups[0]["lr"] for opt in recipe.optimizers.values()])
        recipe.train_step((A, B), step)
    # lr of step s: 1 - max(0, s + 1 - n_const) / (n_decay + 1), clamped at 0
    expected = [1, 1, 3 / 4, 2 / 4, 1 / 4, 0, 0]
    for lrs, factor in zip(seen, expected):
        assert lrs == pytest.approx([2e-4 * factor] * 2, abs=1e-12)


def test_constant_lr_by_default_and_extra_state_round_trip():
    recipe = build(["--n-steps-const", "1", "--n-steps-decay", "4"])
    batch = make_batch(n=1)
    for step in range(3):
        recipe.train_step(batch, step)
    state = round_trip(recipe.extra_state())
    fresh = build(["--n-steps-const", "1", "--n-steps-decay", "4"])
    for name, opt in recipe.optimizers.items():  # the trainer restores optimizers before extra_state
        fresh.optimizers[name].load_state_dict(opt.state_dict())
    fresh.load_extra_state(state)
    for name in recipe.schedulers:
        assert fresh.schedulers[name].last_epoch == recipe.schedulers[name].last_epoch == 3
    for r in (recipe, fresh):  # step 3 runs at 1 - 3/5, and leaves the rate of step 4, 1 - 4/5
        assert [o.param_groups[0]["lr"] for o in r.optimizers.values()] == pytest.approx([2e-4 * 2 / 5] * 2)
        r.train_step(batch, 3)
        assert [o.param_groups[0]["lr"] for o in r.optimizers.values()] == pytest.approx([2e-4 / 5] * 2)
    default = build()
    default.train_step(batch, 0)
    assert [o.param_groups[0]["lr"] for o in default.optimizers.values()] == [2e-4, 2e-4]


def test_nan_input_skips_both_steps():
    recipe = build()
    A, B = make_batch()
    A[0, 0, 3, 3] = float("nan")
    assert_nonfinite_step_is_skipped(recipe, (A, B), 0, ["D", "G"], net_params)


def test_translation_grid():
    recipe = build(channels=1, channels_b=3)  # a one-channel input is repeated to share the grid
    recipe.set_reference_batch(make_batch(n=3, channels=1, channels_b=3))
    buffers = {k: v.clone() for k, v in recipe.G.named_buffers()}
    rng = torch.get_rng_state()
    grids = recipe.snapshot_grid()
    assert set(grids) == {"translation"}
    images, per_row = grids["translation"]
    assert images.shape == (9, 3, 32, 32) and per_row == 3 and images.dtype == torch.float32
    A, _ = recipe.reference_batch
    torch.testing.assert_close(images[0], A[0].expand(3, -1, -1))         # row: input | output | target
    torch.testing.assert_close(images[2], recipe.reference_batch[1][0])
    assert images.abs().max() <= 1
    # eval mode: no RNG drawn, BatchNorm statistics untouched, training mode restored
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, buffers[k]) for k, v in recipe.G.named_buffers())
    assert recipe.G.training
