"""The stylegan2 recipe: NVIDIA train.py's configs, the training loop's phases and lazy regularization, the R1 and
path-length maths against plain-torch rewrites of StyleGAN2-ADA's loss.py, G_ema, style mixing, conditioning,
non-finite batches and bf16. Tiny networks at 16x16 on the reference ops (impl='ref')."""
import argparse
import io
import math

import pytest
import torch
import torch.nn.functional as F

from fusegan.engine.precision import Precision
from fusegan.engine.recipes import get_recipe
from fusegan.engine.recipes.base import DataInfo, TrainContext, set_requires_grad
from fusegan.engine.recipes.stylegan2 import (StyleGAN2Recipe, default_batch_for, ema_beta, lazy_regularization,
                                              resolve_config)

RES, BATCH, ZDIM = 16, 4, 32
TINY = ["--channel-base", "128", "--channel-max", "16", "--z-dim", str(ZDIM), "--w-dim", "32", "--map", "2"]
FP32_TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(autouse=True, scope="module")
def _plain_cpu_convs():
    """oneDNN spends seconds building kernels for each new conv shape on first use; the native CPU convs give
    the same results without that start-up cost at these tiny sizes."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = enabled


def make_recipe(*args, precision="fp32", num_classes=0, batch=BATCH, channels_last=False, label_counts=None):
    parser = argparse.ArgumentParser()
    StyleGAN2Recipe.add_arguments(parser)
    options = parser.parse_args(TINY + list(args))
    ctx = TrainContext(device=torch.device("cpu"), precision=Precision(precision, "cpu"), batch_size=batch,
                       impl="ref", channels_last=channels_last)
    return StyleGAN2Recipe(ctx, options, DataInfo(resolution=RES, channels=1, num_classes=num_classes,
                                                  label_counts=label_counts))


def real_batch(labels=None):
    images = torch.rand(BATCH, 1, RES, RES) * 2 - 1
    return images, (torch.full((BATCH,), -1) if labels is None else torch.tensor(labels))


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def assert_grads_close(got, module):
    """Same gradients, and a gradient for the same parameters (for Adam a None gradient is not a zero one)."""
    for (name, p), g in zip(module.named_parameters(), got):
        assert (g is None) == (p.grad is None), name
        if g is not None:
            torch.testing.assert_close(g, p.grad, **FP32_TOL, msg=name)


# ---- configs ---------------------------------------------------------------------------------------------------
def auto_by_hand(res, gpus):
    """train.py's 'auto' formulas, evaluated step by step for the cases below."""
    per_gpu = {32: 32, 64: 32, 256: 16, 1024: 4}[res]           # min(4096 // res, 32)
    mb = max(min(gpus * per_gpu, 64), gpus)
    return dict(mb=mb, mbstd=min(mb // gpus, 4), fmaps=1 if res >= 512 else 0.5,
                lrate=0.002 if res >= 1024 else 0.0025, gamma=0.0002 * res * res / mb, ema=mb * 10 / 32)


@pytest.mark.parametrize("res,gpus,expected", [
    (32, 1, dict(mb=32, mbstd=4, fmaps=0.5, lrate=0.0025, gamma=0.0064, ema=10.0, channel_base=16384)),
    (32, 8, dict(mb=64, mbstd=4, fmaps=0.5, lrate=0.0025, gamma=0.0032, ema=20.0, channel_base=16384)),
    (64, 1, dict(mb=32, mbstd=4, fmaps=0.5, lrate=0.0025, gamma=0.0256, ema=10.0, channel_base=16384)),
    (64, 8, dict(mb=64, mbstd=4, fmaps=0.5, lrate=0.0025, gamma=0.0128, ema=20.0, channel_base=16384)),
    (256, 1, dict(mb=16, mbstd=4, fmaps=0.5, lrate=0.0025, gamma=0.8192, ema=5.0, channel_base=16384)),
    (256, 8, dict(mb=64, mbstd=4, fmaps=0.5, lrate=0.0025, gamma=0.2048, ema=20.0, channel_base=16384)),
    (1024, 1, dict(mb=4, mbstd=4, fmaps=1, lrate=0.002, gamma=52.4288, ema=1.25, channel_base=32768)),
    (1024, 8, dict(mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=6.5536, ema=10.0, channel_base=32768)),
])
def test_auto_config(res, gpus, expected):
    spec = resolve_config("auto", res, gpus)
    for key, value in expected.items():
        assert spec[key] == pytest.approx(value, rel=1e-12), key
    for key, value in auto_by_hand(res, gpus).items():
        assert spec[key] == pytest.approx(value, rel=1e-12), key
    assert (spec["ref_gpus"], spec["ramp"], spec["map"], spec["channel_max"]) == (gpus, 0.05, 2, 512)
    assert (spec["num_fp16_res"], spec["conv_clamp"], spec["pl_weight"], spec["style_mixing_prob"]) == (4, 256, 2, 0.9)
    assert default_batch_for("auto", res, gpus) == expected["mb"]


@pytest.mark.parametrize("cfg,expected", [
    ("stylegan2", dict(mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=10, ema=10, ramp=None, map=8)),
    ("paper256", dict(mb=64, mbstd=8, fmaps=0.5, lrate=0.0025, gamma=1, ema=20, ramp=None, map=8)),
    ("paper512", dict(mb=64, mbstd=8, fmaps=1, lrate=0.0025, gamma=0.5, ema=20, ramp=None, map=8)),
    ("paper1024", dict(mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=2, ema=10, ramp=None, map=8)),
    ("cifar", dict(mb=64, mbstd=32, fmaps=1, lrate=0.0025, gamma=0.01, ema=500, ramp=0.05, map=2)),
])
def test_fixed_configs(cfg, expected):
    spec = resolve_config(cfg, 256, 4)  # resolution and gpus only matter for 'auto'
    assert {k: spec[k] for k in expected} == expected
    assert spec["channel_base"] == int(expected["fmaps"] * 32768)
    cifar = cfg == "cifar"
    assert (spec["pl_weight"], spec["style_mixing_prob"]) == ((0, 0) if cifar else (2, 0.9))
    assert spec["d_architecture"] == ("orig" if cifar else "resnet")
    assert default_batch_for(cfg, 64, 1) == expected["mb"]


def test_bad_config_arguments():
    with pytest.raises(ValueError, match="cfg"):
        resolve_config("paper2048", 32, 1)
    with pytest.raises(ValueError, match="resolution"):
        resolve_config("auto", 48, 1)


def test_registry_and_command_line_overrides():
    assert get_recipe("stylegan2") is StyleGAN2Recipe
    assert StyleGAN2Recipe.default_batch == default_batch_for("auto", StyleGAN2Recipe.default_resolution, 1)
    r = make_recipe("--cfg", "paper256", "--r1-gamma", "3", "--pl-weight", "0.5", "--style-mixing", "0.25",
                    "--ema-kimg", "2", "--ema-rampup", "none", "--lr", "0.01", "--mbstd-group", "2",
                    "--d-architecture", "skip")
    hp = r.hp
    assert (hp["gamma"], hp["pl_weight"], hp["style_mixing_prob"], hp["ema"], hp["ramp"], hp["lrate"]) == \
        (3, 0.5, 0.25, 2, None, 0.01)
    assert (hp["channel_base"], hp["channel_max"], hp["map"], hp["mbstd"]) == (128, 16, 2, 2)
    assert (r.r1_gamma, r.pl_weight, r.style_mixing_prob) == (3, 0.5, 0.25)
    assert r.D.b4.mbstd.group_size == 2 and r.D.b16.architecture == "skip"
    assert r.G.mapping.num_layers == 2 and r.G.z_dim == ZDIM
    default = make_recipe("--cfg", "cifar", "--channel-base", "128")
    assert (default.hp["ramp"], default.pl_weight, default.style_mixing_prob) == (0.05, 0, 0)
    assert default.D.b16.architecture == "orig"


# ---- optimizers and schedule ------------------------------------------------------------------------------------
def test_lazy_regularization_optimizers():
    r = make_recipe("--lr", "0.003")
    for name, interval in (("G", 4), ("D", 16)):
        group = r.optimizers[name].param_groups[0]
        c = interval / (interval + 1)
        assert group["lr"] == pytest.approx(0.003 * c, rel=1e-12)
        assert group["betas"] == pytest.approx((0.0, 0.99**c), rel=1e-12)
        assert group["eps"] == 1e-8
    lr, betas = lazy_regularization(1.0, (0.5, 0.99), 1)
    assert lr == 0.5 and betas == pytest.approx((0.5**0.5, 0.99**0.5), rel=1e-12)
    assert not any(p.requires_grad for net in r.nets.values() for p in net.parameters())
    assert not r.G_ema.training and r.G.training


def test_steps_run_phases_and_gains():
    r = make_recipe()
    seen = []
    original = r.accumulate_gradients

    def recording(phase, *args, gain):
        seen[-1].append((phase, gain, {n for n, net in (("G", r.G), ("D", r.D))
                                       if all(p.requires_grad for p in net.parameters())}))
        return original(phase, *args, gain=gain)

    r.accumulate_gradients = recording
    batch = real_batch()
    for step in (0, 1, 4, 16):
        seen.append([])
        before = {name: params(net) for name, net in (("G", r.G), ("D", r.D))}
        losses = r.train_step(batch, step)
        assert list(losses)[:4] == list(r.loss_names)
        assert all(v.ndim == 0 and not v.requires_grad and torch.isfinite(v) for v in losses.values()), losses
        assert ("pl_penalty" in losses) == (step % 4 == 0) and ("r1_penalty" in losses) == (step % 16 == 0)
        for name, net in (("G", r.G), ("D", r.D)):
            assert any(not torch.equal(a, b) for a, b in zip(before[name], params(net))), (step, name)
    assert r.nonfinite == []
    main = [("Gmain", 1, {"G"}), ("Dmain", 1, {"D"})]
    assert seen[1] == main and seen[0] == [main[0], ("Greg", 4, {"G"}), main[1], ("Dreg", 16, {"D"})]
    assert seen[2] == [main[0], ("Greg", 4, {"G"}), main[1]] and seen[3] == seen[0]
    assert not any(p.requires_grad for net in (r.G, r.D) for p in net.parameters())


# ---- the regularizers' maths, against plain-torch rewrites of loss.py -------------------------------------------
def test_r1_matches_plain_autograd():
    r = make_recipe("--r1-gamma", "3.5")
    real = torch.randn(BATCH, 1, RES, RES)
    c = torch.zeros(BATCH, 0)
    set_requires_grad(r.D, True)
    loss, stats = r.accumulate_gradients("Dreg", real, c, torch.randn(BATCH, ZDIM), c, gain=16)
    got = [None if p.grad is None else p.grad.clone() for p in r.D.parameters()]
    r.D.zero_grad(set_to_none=True)

    x = real.detach().requires_grad_(True)
    logits = r.D(x, c)
    (grads,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    penalty = grads.square().sum([1, 2, 3])
    loss_ref = (penalty * (3.5 / 2)).mean()
    (logits * 0 + penalty * (3.5 / 2)).mean().mul(16).backward()  # loss.py's backward, `* 0` term included
    torch.testing.assert_close(loss, loss_ref, **FP32_TOL)
    torch.testing.assert_close(stats["r1_penalty"], penalty.mean(), **FP32_TOL)
    assert loss_ref > 0 and any(g is not None and g.abs().sum() > 0 for g in got)
    assert_grads_close(got, r.D)


def test_path_length_matches_plain_autograd_and_pl_mean_round_trips():
    r = make_recipe()  # style mixing 0.9 and random noise: both replayed from the same seed below
    c = torch.zeros(BATCH, 0)
    z = torch.randn(BATCH, ZDIM)
    r.pl_mean.fill_(0.25)
    set_requires_grad(r.G, True)
    torch.manual_seed(123)
    loss, stats = r.accumulate_gradients("Greg", None, c, z, c, gain=4)
    got = [None if p.grad is None else p.grad.clone() for p in r.G.parameters()]
    r.G.zero_grad(set_to_none=True)

    torch.manual_seed(123)
    zs = z[:BATCH // 2]  # pl_batch_shrink = 2
    ws = r.G.mapping(zs, c[:BATCH // 2])
    cutoff = torch.empty([], dtype=torch.int64).random_(1, ws.shape[1])  # loss.py run_G, verbatim
    cutoff = torch.where(torch.rand([]) < 0.9, cutoff, torch.full_like(cutoff, ws.shape[1]))
    ws[:, cutoff:] = r.G.mapping(torch.randn_like(zs), c[:BATCH // 2], skip_w_avg_update=True)[:, cutoff:]
    img = r.G.synthesis(ws)
    noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grads,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    lengths = grads.square().sum(2).mean(1).sqrt()
    pl_mean = torch.tensor(0.25).lerp(lengths.mean(), 0.01)
    penalty = (lengths - pl_mean).square()
    loss_ref = (penalty * 2).mean()
    (img[:, 0, 0, 0] * 0 + penalty * 2).mean().mul(4).backward()  # loss.py's backward, `* 0` term included

    torch.testing.assert_close(loss, loss_ref, **FP32_TOL)
    torch.testing.assert_close(stats["pl_penalty"], penalty.mean(), **FP32_TOL)
    expected_mean = 0.99 * 0.25 + 0.01 * lengths.detach().mean()
    torch.testing.assert_close(r.pl_mean, expected_mean, **FP32_TOL)
    assert_grads_close(got, r.G)

    buffer = io.BytesIO()
    torch.save(r.extra_state(), buffer)
    buffer.seek(0)
    other = make_recipe()
    assert other.pl_mean == 0
    other.load_extra_state(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(other.pl_mean, r.pl_mean, rtol=0, atol=0)


# ---- G_ema -------------------------------------------------------------------------------------------------------
def test_ema_beta_formula():
    assert ema_beta(32, 10, None, 0) == pytest.approx(0.5 ** (32 / 10_000))
    assert ema_beta(32, 10, 0.05, 1_000) == pytest.approx(0.5 ** (32 / 50))      # ramp-up: 0.05 * 1000 images
    assert ema_beta(32, 10, 0.05, 10**9) == pytest.approx(0.5 ** (32 / 10_000))  # ramp-up over
    assert ema_beta(32, 10, 0.05, 0) == 0.0                                       # first step: G_ema = G


@pytest.mark.parametrize("ramp,beta", [("none", 0.5 ** (4 / 4)), ("0.05", 0.5 ** (4 / (5 * 4 * 0.05)))])
def test_ema_weights_equal_the_closed_form(ramp, beta):
    r = make_recipe("--ema-kimg", "0.004", "--ema-rampup", ramp)  # half-life 4 images; batch 4
    with torch.no_grad():  # make G_ema differ from G first
        for p in r.G_ema.parameters():
            p.add_(torch.randn_like(p))
    ema_before = params(r.G_ema)
    r.train_step(real_batch(), 5)  # cur_nimg = 5 * 4; no regularization at step 5
    for e0, g, e in zip(ema_before, params(r.G), params(r.G_ema)):
        torch.testing.assert_close(e, beta * e0 + (1 - beta) * g, **FP32_TOL)
    for b_ema, b in zip(r.G_ema.buffers(), r.G.buffers()):
        assert torch.equal(b_ema, b)
    assert not any(p.requires_grad for p in r.G_ema.parameters())


# ---- style mixing ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_style_mixing(prob):
    r = make_recipe("--style-mixing", str(prob))
    calls = []
    r.G.mapping.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs.get("skip_w_avg_update", False)), with_kwargs=True)
    c = torch.zeros(BATCH, 0)
    num_ws = r.G.num_ws
    mixed_layers = set()
    for _ in range(6):
        calls.clear()
        z = torch.randn(BATCH, ZDIM)
        _, ws = r.run_G(z, c)
        with torch.no_grad():
            plain = r.G.mapping(z, c, skip_w_avg_update=True)
        assert calls == ([False, True] if prob else [False]) + [True]
        same = [torch.equal(ws[:, i], plain[:, i]) for i in range(num_ws)]
        if prob == 0:
            assert all(same)
        else:  # a cutoff in [1, num_ws - 1]: the first layers from z, the rest from the mixing latent
            cutoff = same.index(False)
            assert 1 <= cutoff < num_ws and not any(same[cutoff:]) and all(same[:cutoff])
            mixed_layers.add(cutoff)
    if prob:
        assert len(mixed_layers) > 1  # the cutoff is random


# ---- conditioning, non-finite batches, precision, outputs ---------------------------------------------------------
def test_conditional():
    r = make_recipe(num_classes=3)
    assert r.G.c_dim == 3 and r.D.c_dim == 3
    labels = [0, 2, 1, 2]
    torch.testing.assert_close(r.labels_to_c(torch.tensor(labels)), F.one_hot(torch.tensor(labels), 3).float())
    gen_cs = []
    original = r.accumulate_gradients

    def recording(phase, real_img, real_c, gen_z, gen_c, gain):
        gen_cs.append((real_c, gen_c))
        return original(phase, real_img, real_c, gen_z, gen_c, gain=gain)

    r.accumulate_gradients = recording
    losses = r.train_step(real_batch(labels), 0)
    assert all(torch.isfinite(v) for v in losses.values()) and "r1_penalty" in losses
    for real_c, gen_c in gen_cs:  # the real batch's labels, shuffled
        assert torch.equal(gen_c.sum(0), real_c.sum(0)) and torch.equal(gen_c.sum(1), torch.ones(BATCH))
    assert r.sample(5, torch.Generator().manual_seed(0)).shape == (5, 1, RES, RES)
    assert r.snapshot_grid()["fakes"][0].shape == (64, 1, RES, RES)


def test_conditional_phases_draw_labels_with_the_dataset_frequencies():
    # training_loop.py: gen_c = labels of random dataset items, independent of the real batch's labels.
    r = make_recipe(num_classes=3, label_counts=[0, 5, 15])
    gen_cs = []
    original = r.accumulate_gradients

    def recording(phase, real_img, real_c, gen_z, gen_c, gain):
        gen_cs.append(gen_c)
        return original(phase, real_img, real_c, gen_z, gen_c, gain=gain)

    r.accumulate_gradients = recording
    for step in range(4):
        r.train_step(real_batch([0] * BATCH), step)  # every real image is class 0, which the data never has
    classes = torch.cat([c.argmax(1) for c in gen_cs])
    assert torch.equal(torch.cat(gen_cs).sum(1), torch.ones(len(classes)))  # one-hot
    counts = torch.bincount(classes, minlength=3)
    assert counts[0] == 0 and counts[1] > 0 and counts[2] > counts[1]  # 1:3 expected


def test_nan_in_the_real_batch_skips_the_D_phases():
    r = make_recipe()
    images, labels = real_batch()
    images[1, 0, 3, 5] = float("nan")
    D_before, G_before = params(r.D), params(r.G)
    losses = r.train_step((images, labels), 0)
    assert r.nonfinite == ["Dmain", "Dreg"]
    assert all(torch.equal(a, b) for a, b in zip(D_before, params(r.D)))
    assert any(not torch.equal(a, b) for a, b in zip(G_before, params(r.G)))
    assert torch.isfinite(losses["loss_G"]) and not torch.isfinite(losses["loss_D"])


def test_bf16_runs_every_block_in_bf16():
    r = make_recipe(precision="bf16")
    blocks = [getattr(r.G.synthesis, f"b{res}") for res in r.G.synthesis.block_resolutions]
    blocks += [getattr(r.D, f"b{res}") for res in r.D.block_resolutions]
    assert all(b.use_fp16 and b.mp_dtype == torch.bfloat16 for b in blocks)
    assert r.G.synthesis.b16.conv1.conv_clamp == 256
    assert not r.ctx.precision.scaler.is_enabled()
    losses = r.train_step(real_batch(), 0)
    assert all(torch.isfinite(v) for v in losses.values()) and "pl_penalty" in losses and "r1_penalty" in losses
    assert r.nonfinite == []
    assert all(p.dtype == torch.float32 for p in r.G.parameters())


def test_fp32_is_plain_and_fp16_schemes():
    plain = make_recipe()
    assert not any(getattr(m, "use_fp16", False) for m in plain.G.modules())
    assert plain.G.synthesis.b16.conv1.conv_clamp is None
    nvidia = make_recipe(precision="fp16")
    # top num_fp16_res=4 resolutions, never below 8: at 16x16 the 8 and 16 blocks
    assert [nvidia.G.synthesis.b4.use_fp16, nvidia.G.synthesis.b8.use_fp16, nvidia.G.synthesis.b16.use_fp16] == \
        [False, True, True]
    assert nvidia.G.synthesis.b16.mp_dtype == torch.float16 and nvidia.D.b8.use_fp16
    assert not nvidia.ctx.precision.scaler.is_enabled()  # NVIDIA: no loss scaling
    everything = make_recipe("--sg2-mp", "all", precision="fp16")
    assert everything.G.synthesis.b4.use_fp16 and everything.ctx.precision.scaler.is_enabled()


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_reaches_the_low_precision_blocks_activations(channels_last):
    # --channels-last: NHWC activations in G's and D's bf16 blocks (NVIDIA's fp16_channels_last), not only NHWC
    # weights; the fp32 path keeps NCHW as NVIDIA's does.
    r = make_recipe(precision="bf16", channels_last=channels_last)
    seen = []
    for block in [r.G.synthesis.b16, r.D.b16]:
        block.register_forward_hook(lambda m, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
    z = torch.randn(BATCH, ZDIM)
    img = r.G(z, torch.zeros(BATCH, 0))
    r.D(img, torch.zeros(BATCH, 0))
    assert len(seen) == 2 and all(t.shape[1] > 1 for t in seen)  # (one pixel or one channel: both formats at once)
    assert all(t.is_contiguous(memory_format=torch.channels_last) == channels_last for t in seen)
    assert not make_recipe(channels_last=True).G.synthesis.b16.channels_last  # fp32 blocks


def test_grids_sample_interpolate():
    r = make_recipe()
    grids = r.snapshot_grid()
    fakes, per_row = grids["fakes"]
    assert fakes.shape == (64, 1, RES, RES) and per_row == 8 and torch.isfinite(fakes).all()
    mixing, per_row = grids["style_mixing"]
    assert mixing.shape == (25, 1, RES, RES) and per_row == 5
    again = r.snapshot_grid()["fakes"][0]
    assert torch.equal(fakes, again)  # fixed latents, constant noise
    gen = torch.Generator().manual_seed(1)
    a = r.sample(3, gen)
    b = r.sample(3, torch.Generator().manual_seed(1), truncation=0.5)
    assert a.shape == (3, 1, RES, RES) and not torch.equal(a, b)
    path = r.interpolate([0, 1, 2], steps=4)
    assert path.shape == (9, 1, RES, RES)
    ends = r.interpolate([0, 1], steps=1)
    torch.testing.assert_close(ends[0], path[0], **FP32_TOL)
    torch.testing.assert_close(ends[1], path[4], **FP32_TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("precision,mp", [("fp16", "nvidia"), ("fp16", "all"), ("bf16", "nvidia")])
def test_low_precision_steps_on_gpu(precision, mp):
    parser = argparse.ArgumentParser()
    StyleGAN2Recipe.add_arguments(parser)
    options = parser.parse_args(["--channel-base", "1024", "--channel-max", "64", "--z-dim", "64", "--w-dim", "64",
                                 "--sg2-mp", mp])
    device = torch.device("cuda")
    ctx = TrainContext(device=device, precision=Precision(precision, device), batch_size=8)
    r = StyleGAN2Recipe(ctx, options, DataInfo(resolution=32, channels=3))
    batch = (torch.rand(8, 3, 32, 32, device=device) * 2 - 1, torch.full((8,), -1, device=device))
    for step in range(17):
        losses = r.train_step(batch, step)
        assert all(torch.isfinite(v) for v in losses.values()), (step, losses)
    assert r.nonfinite == []
    assert torch.isfinite(r.snapshot_grid()["fakes"][0]).all()
