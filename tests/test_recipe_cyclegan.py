"""The CycleGAN recipe: the image pool's query semantics and state, steps run, one step equals the reference's
maths written in plain torch, the linear lr decay, exact resume, non-finite skipping, grids. Tiny widths, 32x32."""
import copy

import pytest
import torch
import torch.nn.functional as F

from fusegan.engine.recipes import get_recipe
from fusegan.engine.recipes.base import DataInfo
from fusegan.engine.recipes.cyclegan import ImagePool
from fusegan.engine.recipes.pix2pix import linear_decay_factor
from recipe_helpers import (assert_nonfinite_step_is_skipped, assert_steps_change_every_parameter, build_recipe,
                            net_params, round_trip)

TINY = ["--ngf", "4", "--ndf", "4", "--n-blocks", "1"]
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6      # fp32: the same nets on the same inputs, loss formulas written differently
PARAM_ATOL = 1e-6                      # one SGD step of lr SGD_LR from gradients that agree to ~1e-6 relative
SGD_LR = 1e-2  # the maths test swaps Adam for SGD: Adam's first step is ~lr * sign(grad) and hides loss scales
NETS = ("G_A", "G_B", "D_A", "D_B")


def build(args=(), res=32, channels=3, channels_b=None, seed=0):
    torch.manual_seed(seed)
    return build_recipe("cyclegan", [*TINY, *args],
                        DataInfo(resolution=res, channels=channels, kind="unpaired", channels_b=channels_b))


def make_batch(n=2, res=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(n, 3, res, res, generator=g) * 2 - 1 for _ in range(2))


# ---- the image pool ---------------------------------------------------------------------------------------------
def images(values):
    """One [1, 2, 2] image per value, filled with it: easy to tell apart."""
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None].expand(-1, 1, 2, 2).clone()


def test_pool_returns_and_stores_its_input_until_full():
    pool = ImagePool(3)
    rng = torch.get_rng_state()
    out = pool.query(images([1.0, 2.0]))
    assert torch.equal(out, images([1.0, 2.0])) and pool.count == 2
    out = pool.query(images([3.0]))
    assert torch.equal(out, images([3.0])) and pool.count == 3
    assert torch.equal(pool.images, images([1.0, 2.0, 3.0]))
    assert torch.equal(torch.get_rng_state(), rng)  # no coin is flipped while the pool fills


def _reference_query(stored, batch):
    """util/image_pool.py's ImagePool.query once full, with the coin and index drawn from the torch RNG."""
    returned = []
    for image in batch:
        if torch.rand(()).item() > 0.5:
            k = int(torch.randint(len(stored), ()).item())
            returned.append(stored[k].clone())
            stored[k] = image.clone()
        else:
            returned.append(image)
    return torch.stack(returned)


def test_full_pool_mixes_stored_and_new_images_as_the_reference():
    pool = ImagePool(4)
    pool.query(images([1.0, 2.0, 3.0, 4.0]))
    stored = list(images([1.0, 2.0, 3.0, 4.0]))
    new = images([float(v) for v in range(10, 50)])
    torch.manual_seed(3)
    out = pool.query(new)
    torch.manual_seed(3)
    expected = _reference_query(stored, new)
    assert torch.equal(out, expected)
    assert torch.equal(pool.images, torch.stack(stored))
    swapped = (out != new).any(dim=(1, 2, 3))
    assert 0 < swapped.sum() < len(new)  # a mixture: some old images came back, some new ones passed through
    assert pool.count == 4


def test_pool_size_zero_passes_through():
    pool = ImagePool(0)
    x = images([1.0, 2.0])
    assert torch.equal(pool.query(x), x) and pool.count == 0
    with pytest.raises(ValueError, match="pool_size"):
        ImagePool(-1)


@pytest.mark.parametrize("filled", [0, 2, 5])
def test_pool_state_round_trip_restores_it_exactly(filled):
    pool = ImagePool(3)
    if filled:
        pool.query(images([float(v) for v in range(filled)]))
    restored = ImagePool(3)
    restored.load_state(round_trip(pool.state()), torch.device("cpu"))
    assert restored.count == pool.count
    if filled:
        assert torch.equal(restored.images[:restored.count], pool.images[:pool.count])
    new = images([float(v) for v in range(100, 110)])
    torch.manual_seed(11)
    a = pool.query(new)
    torch.manual_seed(11)
    b = restored.query(new)
    assert torch.equal(a, b) and torch.equal(pool.images, restored.images)


# ---- the recipe -------------------------------------------------------------------------------------------------
def test_class_attributes_and_networks():
    R = get_recipe("cyclegan")
    assert (R.name, R.data_kind, R.default_batch, R.default_resolution, R.default_data) == \
        ("cyclegan", "unpaired", 1, 256, "")
    recipe = build()  # TINY has one block
    assert sum(type(m).__name__ == "ResnetBlock" for m in recipe.G_A.modules()) == 1
    for res, blocks in ((32, 6), (256, 9)):  # the default follows the resolution (building is cheap: no forward)
        r = build_recipe("cyclegan", ["--ngf", "2", "--ndf", "2"], DataInfo(res, 3, kind="unpaired"), batch_size=1)
        assert sum(type(m).__name__ == "ResnetBlock" for m in r.G_B.modules()) == blocks
    for name, group in (("G", ("G_A", "G_B")), ("D", ("D_A", "D_B"))):
        opt = recipe.optimizers[name]
        assert isinstance(opt, torch.optim.Adam)
        assert opt.defaults["lr"] == 2e-4 and opt.defaults["betas"] == (0.5, 0.999)
        assert [p for g in opt.param_groups for p in g["params"]] == \
            [p for n in group for p in recipe.nets[n].parameters()]
    assert recipe.D_A.model[1].norm.__class__.__name__ == "InstanceNorm2d"
    with pytest.raises(ValueError, match="identity"):
        build(channels=1, channels_b=3)
    build(["--lambda-identity", "0"], channels=1, channels_b=3)


def test_steps_run_and_change_every_parameter():
    recipe = build(["--pool-size", "3"])
    assert_steps_change_every_parameter(recipe, make_batch(), net_params)
    assert recipe.fake_A_pool.count == recipe.fake_B_pool.count == 3


def _reference_step(nets, A, B, lambda_A=10.0, lambda_B=10.0, lambda_idt=0.5):
    """cycle_gan_model.optimize_parameters with the reference's lsgan GANLoss (MSE against 1 or 0) and a pool
    that is not full yet (it returns its input)."""
    G_A, G_B, D_A, D_B = (nets[k] for k in NETS)
    mse = lambda pred, value: F.mse_loss(pred, torch.full_like(pred, value))  # noqa: E731
    opt_G = torch.optim.SGD([*G_A.parameters(), *G_B.parameters()], lr=SGD_LR)
    opt_D = torch.optim.SGD([*D_A.parameters(), *D_B.parameters()], lr=SGD_LR)
    fake_B, fake_A = G_A(A), G_B(B)
    rec_A, rec_B = G_B(fake_B), G_A(fake_A)
    for p in [*D_A.parameters(), *D_B.parameters()]:
        p.requires_grad_(False)
    out = {"idt_A": F.l1_loss(G_A(B), B) * lambda_B * lambda_idt,
           "idt_B": F.l1_loss(G_B(A), A) * lambda_A * lambda_idt,
           "G_A": mse(D_A(fake_B), 1.0), "G_B": mse(D_B(fake_A), 1.0),
           "cycle_A": F.l1_loss(rec_A, A) * lambda_A, "cycle_B": F.l1_loss(rec_B, B) * lambda_B}
    loss_G = sum(out.values())
    loss_G.backward()
    opt_G.step()
    for p in [*D_A.parameters(), *D_B.parameters()]:
        p.requires_grad_(True)
    out["D_A"] = 0.5 * (mse(D_A(B), 1.0) + mse(D_A(fake_B.detach()), 0.0))
    out["D_B"] = 0.5 * (mse(D_B(A), 1.0) + mse(D_B(fake_A.detach()), 0.0))
    (out["D_A"] + out["D_B"]).backward()
    opt_D.step()
    return out, loss_G


def test_one_step_matches_reference_maths():
    recipe = build()
    A, B = make_batch()
    nets = copy.deepcopy(recipe.nets)
    recipe.optimizers = {
        "G": torch.optim.SGD([*recipe.G_A.parameters(), *recipe.G_B.parameters()], lr=SGD_LR),
        "D": torch.optim.SGD([*recipe.D_A.parameters(), *recipe.D_B.parameters()], lr=SGD_LR)}
    losses = recipe.train_step((A, B), 0)
    expected, loss_G = _reference_step(nets, A, B)
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value.detach(), rtol=LOSS_RTOL, atol=LOSS_ATOL, msg=name)
    mine_G = sum(losses[k] for k in ("G_A", "G_B", "cycle_A", "cycle_B", "idt_A", "idt_B"))
    torch.testing.assert_close(mine_G, loss_G.detach(), rtol=LOSS_RTOL, atol=LOSS_ATOL)
    for name in NETS:
        for (key, p), q in zip(recipe.nets[name].named_parameters(), nets[name].parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=PARAM_ATOL, msg=f"{name}.{key}")


def test_no_identity_loss():
    recipe = build(["--lambda-identity", "0"])
    losses = recipe.train_step(make_batch(n=1), 0)
    assert losses["idt_A"] == 0 and losses["idt_B"] == 0 and losses["cycle_A"] > 0


def test_linear_decay_factor_is_the_references_lambda_rule():
    n_epochs, n_epochs_decay, epoch_count = 5, 7, 1
    for epoch in range(15):  # LambdaLR's epoch = scheduler steps taken = the 0-based step index here
        reference = 1.0 - max(0, epoch + epoch_count - n_epochs) / float(n_epochs_decay + 1)
        assert linear_decay_factor(epoch, n_epochs, n_epochs_decay) == pytest.approx(max(0.0, reference))
    assert [linear_decay_factor(s, 3, 0) for s in (0, 10, 10**6)] == [1.0, 1.0, 1.0]  # no decay


def test_lr_schedule_is_stepped_by_train_step():
    recipe = build(["--n-steps-const", "2", "--n-steps-decay", "3", "--pool-size", "0"])
    batch = make_batch(n=1)
    seen = []
    for step in range(6):
        seen.append([opt.param_groups[0]["lr"] for opt in recipe.optimizers.values()])
        recipe.train_step(batch, step)
    expected = [1, 1, 3 / 4, 2 / 4, 1 / 4, 0]
    for lrs, factor in zip(seen, expected):
        assert lrs == pytest.approx([2e-4 * factor] * 2, abs=1e-12)
    assert all(s.last_epoch == 6 for s in recipe.schedulers.values())


def test_extra_state_resumes_exactly():
    """Train 2 steps, checkpoint as the trainer does, train 2 more; a fresh recipe restored from the checkpoint
    (and the RNG) trains the same 2 steps to the same weights, pools and learning rates."""
    args = ["--pool-size", "3", "--n-steps-const", "1", "--n-steps-decay", "4"]
    recipe = build(args)
    batches = [make_batch(seed=s) for s in range(4)]
    for step in range(2):
        recipe.train_step(batches[step], step)
    weights = {name: copy.deepcopy(net.state_dict()) for name, net in recipe.nets.items()}
    optimizers = round_trip({name: opt.state_dict() for name, opt in recipe.optimizers.items()})
    extra = round_trip(recipe.extra_state())
    rng = torch.get_rng_state()
    for step in (2, 3):  # the pools are full from step 2 on (3 images, batch 2): coins are flipped
        recipe.train_step(batches[step], step)

    fresh = build(args, seed=123)
    for name, net in fresh.nets.items():
        net.load_state_dict(weights[name])
    for name, opt in fresh.optimizers.items():
        opt.load_state_dict(optimizers[name])
    fresh.load_extra_state(extra)
    torch.set_rng_state(rng)
    for step in (2, 3):
        fresh.train_step(batches[step], step)
    for key, value in net_params(recipe).items():
        assert torch.equal(value, net_params(fresh)[key]), key
    for pool in ("fake_A_pool", "fake_B_pool"):
        a, b = getattr(recipe, pool), getattr(fresh, pool)
        assert a.count == b.count == 3 and torch.equal(a.images, b.images)
    for name, opt in recipe.optimizers.items():
        assert fresh.optimizers[name].param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(
            2e-4 * linear_decay_factor(4, 1, 4))


def test_nan_input_skips_both_steps_and_keeps_the_pools_clean():
    recipe = build(["--pool-size", "4"])
    recipe.train_step(make_batch(), 0)
    counts = (recipe.fake_A_pool.count, recipe.fake_B_pool.count)
    # Only the stored rows: the rest of a pool not yet full is uninitialised memory (new_empty), NaN at times.
    pools = (recipe.fake_A_pool.images[:counts[0]].clone(), recipe.fake_B_pool.images[:counts[1]].clone())
    A, B = make_batch(seed=2)
    A[1, 2, 5, 5] = float("nan")
    assert_nonfinite_step_is_skipped(recipe, (A, B), 1, ["G", "D"], net_params)
    assert (recipe.fake_A_pool.count, recipe.fake_B_pool.count) == counts
    assert torch.equal(recipe.fake_A_pool.images[:counts[0]], pools[0])
    assert torch.equal(recipe.fake_B_pool.images[:counts[1]], pools[1])


def test_translation_grid():
    recipe = build()
    recipe.set_reference_batch(make_batch(n=3))
    rng = torch.get_rng_state()
    grids = recipe.snapshot_grid()
    assert set(grids) == {"translation"}
    grid, per_row = grids["translation"]
    assert grid.shape == (18, 3, 32, 32) and per_row == 6 and grid.abs().max() <= 1
    real_A, real_B = recipe.reference_batch
    rows = grid.unflatten(0, (3, 6))
    torch.testing.assert_close(rows[:, 0], real_A)                    # real_A | fake_B | rec_A
    torch.testing.assert_close(rows[:, 3], real_B)                    # real_B | fake_A | rec_B
    with torch.no_grad():
        torch.testing.assert_close(rows[:, 1], recipe.G_A(real_A))
        torch.testing.assert_close(rows[:, 2], recipe.G_B(recipe.G_A(real_A)))
    assert torch.equal(torch.get_rng_state(), rng) and recipe.G_A.training and recipe.G_B.training
