"""Audit of the stylegan2 recipe against NVIDIA StyleGAN2-ADA (training/loss.py, training/training_loop.py):
the regularization passes' `* 0` terms that give every parameter a gradient, and pl_mean across a skipped
path-length phase. Tiny networks at 16x16 on the reference ops (impl='ref')."""
import math

import torch

from fusegan.engine.recipes.base import set_requires_grad
from test_recipe_stylegan2 import _plain_cpu_convs  # noqa: F401  (autouse fixture: plain CPU convs)
from test_recipe_stylegan2 import BATCH, FP32_TOL, ZDIM, make_recipe, real_batch


def grads(module):
    return {name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters()}


def assert_same_grads(got, module):
    """Same gradients, and the same parameters without one (None is not the same as zeros for Adam: a None
    gradient skips the parameter, a zero one still decays exp_avg_sq and counts a step)."""
    for name, p in module.named_parameters():
        assert (got[name] is None) == (p.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(got[name], p.grad, **FP32_TOL, msg=name)


def test_greg_backward_matches_nvidia_including_the_zero_term():
    r = make_recipe()
    c = torch.zeros(BATCH, 0)
    z = torch.randn(BATCH, ZDIM)
    set_requires_grad(r.G, True)
    torch.manual_seed(7)
    r.accumulate_gradients("Greg", None, c, z, c, gain=4)
    got = grads(r.G)
    r.G.zero_grad(set_to_none=True)

    # loss.py, do_Gpl, verbatim apart from names (pl_mean starts at 0)
    torch.manual_seed(7)
    zs, cs = z[:BATCH // 2], c[:BATCH // 2]
    ws = r.G.mapping(zs, cs)
    cutoff = torch.empty([], dtype=torch.int64).random_(1, ws.shape[1])
    cutoff = torch.where(torch.rand([]) < 0.9, cutoff, torch.full_like(cutoff, ws.shape[1]))
    ws[:, cutoff:] = r.G.mapping(torch.randn_like(zs), cs, skip_w_avg_update=True)[:, cutoff:]
    gen_img = r.G.synthesis(ws)
    pl_noise = torch.randn_like(gen_img) / math.sqrt(gen_img.shape[2] * gen_img.shape[3])
    (pl_grads,) = torch.autograd.grad([(gen_img * pl_noise).sum()], [ws], create_graph=True, only_inputs=True)
    pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()
    pl_mean = torch.zeros([]).lerp(pl_lengths.mean(), 0.01)
    loss_Gpl = (pl_lengths - pl_mean).square() * 2
    (gen_img[:, 0, 0, 0] * 0 + loss_Gpl).mean().mul(4).backward()
    assert_same_grads(got, r.G)
    assert all(g is not None for g in got.values())  # NVIDIA: every G parameter gets a gradient


def test_dreg_backward_matches_nvidia_including_the_zero_term():
    r = make_recipe("--r1-gamma", "2.5")
    real = torch.randn(BATCH, 1, 16, 16)
    c = torch.zeros(BATCH, 0)
    set_requires_grad(r.D, True)
    r.accumulate_gradients("Dreg", real, c, torch.randn(BATCH, ZDIM), c, gain=16)
    got = grads(r.D)
    r.D.zero_grad(set_to_none=True)

    # loss.py, do_Dr1 without do_Dmain
    real_img_tmp = real.detach().requires_grad_(True)
    real_logits = r.D(real_img_tmp, c)
    (r1_grads,) = torch.autograd.grad([real_logits.sum()], [real_img_tmp], create_graph=True, only_inputs=True)
    loss_Dr1 = r1_grads.square().sum([1, 2, 3]) * (2.5 / 2)
    (real_logits * 0 + 0 + loss_Dr1).mean().mul(16).backward()
    assert_same_grads(got, r.D)
    assert all(g is not None for g in got.values())


def test_every_parameter_counts_the_regularization_steps_in_adam():
    # training_loop.py steps one Adam per phase; thanks to the `* 0` terms every parameter of G (D) has a gradient
    # in Greg (Dreg), so each one's Adam state has counted two steps after a step-0 batch (main + reg).
    r = make_recipe()
    r.train_step(real_batch(), 0)
    for name, net in (("G", r.G), ("D", r.D)):
        state = r.optimizers[name].state
        counts = {n: int(state[p]["step"]) if p in state else 0 for n, p in net.named_parameters()}
        assert set(counts.values()) == {2}, {n: k for n, k in counts.items() if k != 2}


def test_a_skipped_path_length_phase_leaves_pl_mean_alone():
    r = make_recipe()
    r.pl_mean.fill_(0.5)
    images, labels = real_batch()

    def poison_greg(module, args, out):  # in the shrunk (path length) batch only, a Jacobian whose square
        if out.shape[0] == BATCH // 2:      # overflows fp32: path lengths of inf, a penalty of inf - inf = nan
            scale = torch.ones_like(out)
            scale[0, 0, 0, 0] = 1e30
            return out * scale
        return out

    hook = r.G.synthesis.register_forward_hook(poison_greg)
    G_before = {k: v.clone() for k, v in r.G.named_parameters()}
    r.train_step((images, labels), 0)
    hook.remove()
    assert r.nonfinite == ["Greg"]
    assert r.pl_mean.item() == 0.5  # what a skipped phase computed is not kept
    assert all(torch.isfinite(p).all() for p in G_before.values())

    r.nonfinite.clear()
    losses = r.train_step((images, labels), 4)  # the next path length phase runs normally
    assert r.nonfinite == [] and torch.isfinite(losses["pl_penalty"])
    assert torch.isfinite(r.pl_mean) and r.pl_mean != 0.5


def test_metrics_draw_random_noise_as_nvidia_metric_utils_while_sample_keeps_it_const():
    # NVIDIA's metric_utils measures G_ema(z, c) with its default noise_mode='random'; generate.py (our
    # `fusegan sample`) fixes the noise. Both take z from the given generator.
    r = make_recipe()
    with torch.no_grad():  # noise strengths start at 0 (as NVIDIA's): give the noise an effect
        for name, p in r.G_ema.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
    z = torch.randn(3, ZDIM, generator=torch.Generator().manual_seed(1))
    c = torch.zeros(3, 0)
    torch.manual_seed(5)
    got = r.metric_samples(3, torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    with torch.no_grad():
        want = r.G_ema(z, c, noise_mode="random").float()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.manual_seed(6)
    assert not torch.equal(r.metric_samples(3, torch.Generator().manual_seed(1)), got)
    const = [r.sample(3, torch.Generator().manual_seed(1)) for _ in range(2)]
    with torch.no_grad():
        torch.testing.assert_close(const[0], r.G_ema(z, c, noise_mode="const").float(), rtol=0, atol=0)
    assert torch.equal(const[0], const[1])


def _conditioning_seen(r, fn):
    """The class of every conditioning vector G_ema.mapping receives while `fn` runs."""
    seen = []
    handle = r.G_ema.mapping.register_forward_pre_hook(lambda module, args: seen.append(args[1].argmax(1)))
    try:
        fn()
    finally:
        handle.remove()
    return torch.cat(seen)


def test_conditional_metrics_draw_classes_as_often_as_the_dataset_has_them():
    # NVIDIA's metric_utils: c = dataset.get_label(np.random.randint(len(dataset))) for each generated image, so a
    # class holds the share of the generated images that it holds of the data. `sample` (generate.py, grids)
    # keeps classes uniform.
    r = make_recipe(num_classes=3, label_counts=[0, 30, 10])
    classes = _conditioning_seen(r, lambda: r.metric_samples(400, torch.Generator().manual_seed(0)))
    counts = torch.bincount(classes, minlength=3)
    assert counts[0] == 0 and counts.sum() == 400
    assert 0.65 < counts[1] / 400 < 0.85  # 0.75 expected; binomial sd 0.022
    uniform = _conditioning_seen(r, lambda: r.sample(400, torch.Generator().manual_seed(0)))
    assert torch.bincount(uniform, minlength=3)[0] > 80  # 133 expected

    unknown = make_recipe(num_classes=3)  # a checkpoint from before label_counts existed: uniform
    classes = _conditioning_seen(unknown, lambda: unknown.metric_samples(300, torch.Generator().manual_seed(0)))
    assert torch.bincount(classes, minlength=3).min() > 60


def test_label_counts_must_match_the_classes():
    import pytest
    for bad in ([1, 2], [1, -1, 2], [0, 0, 0]):
        with pytest.raises(ValueError, match="label_counts"):
            make_recipe(num_classes=3, label_counts=bad)
