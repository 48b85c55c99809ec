"""Audit of the pix2pix, CycleGAN and DCGAN recipes against plain-PyTorch rewrites of their references.

The reference networks below are written from the published structure of junyanz/pytorch-CycleGAN-and-pix2pix
(`models/networks.py`) and the PyTorch examples' `dcgan/main.py`, as plain nn layers (in-place activations
included). Each recipe's networks are copied into them with `reference_state_dict`, then a few training steps of
the recipe (Adam, the real optimizers) are compared step by step with the reference's `optimize_parameters` /
training loop on the same inputs and the same global-RNG draws (dropout masks, latents, pool coin flips).
"""
import argparse
import copy
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from fusegan.engine.precision import Precision
from fusegan.engine.recipes import get_recipe
from fusegan.engine.recipes.base import DataInfo, TrainContext
from fusegan.models.pix2pix import reference_state_dict
from test_pix2pix import RefPatchGAN, RefResnetGenerator, RefUnet

LOSS_ATOL = 1e-5        # fp32, the same maths on the same inputs, written differently
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-7  # fp32 gradients of the same maths (Adam hides loss scales: compare gradients)
PARAM_ATOL = 1e-6       # a few Adam steps of lr 2e-4 from gradients that agree to fp32 rounding
BF16_LOSS_ATOL = 1e-5   # bf16 networks, but the losses themselves are fp32 on both sides
BF16_GRAD_RTOL, BF16_GRAD_ATOL = 2e-2, 1e-5  # bf16 convs in the backward (identical ops on both sides)


def build(name, args, data, precision="fp32", batch_size=2):
    R = get_recipe(name)
    parser = argparse.ArgumentParser()
    R.add_arguments(parser)
    ctx = TrainContext(device=torch.device("cpu"), precision=Precision(precision, "cpu"), batch_size=batch_size,
                       impl="ref")
    return R(ctx, parser.parse_args(list(args)), data)


def images(g, n, c, res):
    return torch.rand(n, c, res, res, generator=g) * 2 - 1


def record_gradients(recipe):
    """Wraps recipe.step_optimizer so that each call first stores the gradients of every network the optimizer
    covers, in parameter order: returns {net name: [gradient, ...]} (the latest step's)."""
    recorded, step_optimizer = {}, recipe.step_optimizer
    covers = {"G": ("G", "G_A", "G_B"), "D": ("D", "D_A", "D_B")}

    def wrapper(name, loss, **kwargs):
        for net_name in covers[name]:
            if net_name in recipe.nets:
                recorded[net_name] = [p.grad.clone() for p in recipe.nets[net_name].parameters()]
        return step_optimizer(name, loss, **kwargs)

    recipe.step_optimizer = wrapper
    return recorded


def assert_same_gradients(mine, ref, msg, fused=None):
    """`mine` (a recorded gradient list) against the .grad of the plain network `ref`. With `fused` (a network
    of fusegan.models.pix2pix) the gradients are matched by the reference's parameter names, else by order."""
    theirs = [(k, p.grad) for k, p in ref.named_parameters()]
    if fused is not None:
        names = fused.reference_module_names()
        keys = [f"{names[k.rpartition('.')[0]]}.{k.rpartition('.')[2]}" for k, _ in fused.named_parameters()]
        by_key = dict(theirs)
        assert sorted(keys) == sorted(by_key)
        theirs = [(k, by_key[k]) for k in keys]
    assert len(mine) == len(theirs)
    for grad, (key, ref_grad) in zip(mine, theirs):
        torch.testing.assert_close(grad, ref_grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=f"{msg}: {key}")


def assert_same_weights(fused, ref):
    ours, theirs = reference_state_dict(fused), ref.state_dict()
    assert ours.keys() == theirs.keys()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=PARAM_ATOL, msg=key)


# ---- reference networks: test_pix2pix's plain-nn rewrites of junyanz/pytorch-CycleGAN-and-pix2pix's -------------


def copy_of(fused, ref):
    """`ref` holding the weights (and buffers) of the recipe's network `fused`."""
    ref.load_state_dict(reference_state_dict(fused))
    return ref


class RefGANLoss:
    """networks.GANLoss: BCEWithLogitsLoss (vanilla) or MSELoss (lsgan) against a tensor of 1s or 0s."""

    def __init__(self, gan_mode):
        self.loss = nn.BCEWithLogitsLoss() if gan_mode == "vanilla" else nn.MSELoss()

    def __call__(self, prediction, target_is_real):
        return self.loss(prediction, torch.full_like(prediction, 1.0 if target_is_real else 0.0))


def set_requires_grad(nets, flag):
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


# ---- pix2pix -----------------------------------------------------------------------------------------------------
def test_pix2pix_adam_steps_match_the_reference_model():
    """pix2pix_model.optimize_parameters (vanilla GAN, lambda_L1 100, D loss halved, D on concat(A, B), Adam
    2e-4 (0.5, 0.999)) at 64x64: one U-Net level has dropout, so the masks are compared too."""
    recipe = build("pix2pix", ["--ngf", "2", "--ndf", "2"], DataInfo(64, 3, kind="paired", channels_b=3))
    netG = copy_of(recipe.G, RefUnet(3, 3, 6, 2, "batch", dropout=True))
    netD = copy_of(recipe.D, RefPatchGAN(6, 2, 3, "batch"))
    opt_G = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    criterionGAN = RefGANLoss("vanilla")
    grads = record_gradients(recipe)
    g = torch.Generator().manual_seed(3)
    for step in range(3):
        real_A, real_B = images(g, 2, 3, 64), images(g, 2, 3, 64)
        torch.manual_seed(100 + step)
        losses = recipe.train_step((real_A, real_B), step)
        torch.manual_seed(100 + step)
        fake_B = netG(real_A)
        set_requires_grad([netD], True)
        opt_D.zero_grad()
        loss_D_fake = criterionGAN(netD(torch.cat((real_A, fake_B), 1).detach()), False)
        loss_D_real = criterionGAN(netD(torch.cat((real_A, real_B), 1)), True)
        ((loss_D_fake + loss_D_real) * 0.5).backward()
        assert_same_gradients(grads["D"], netD, f"D @ {step}", recipe.D)
        opt_D.step()
        set_requires_grad([netD], False)
        opt_G.zero_grad()
        loss_G_GAN = criterionGAN(netD(torch.cat((real_A, fake_B), 1)), True)
        loss_G_L1 = F.l1_loss(fake_B, real_B) * 100.0
        (loss_G_GAN + loss_G_L1).backward()
        assert_same_gradients(grads["G"], netG, f"G @ {step}", recipe.G)
        opt_G.step()
        expected = {"G_GAN": loss_G_GAN, "G_L1": loss_G_L1, "D_real": loss_D_real, "D_fake": loss_D_fake}
        for key, value in expected.items():
            torch.testing.assert_close(losses[key], value.detach(), rtol=0, atol=LOSS_ATOL, msg=f"{key} @ {step}")
    assert_same_weights(recipe.G, netG)
    assert_same_weights(recipe.D, netD)


# ---- CycleGAN ----------------------------------------------------------------------------------------------------
class RefImagePool:
    """util/image_pool.ImagePool, its coin flips drawn from the global torch RNG in the order the recipe
    draws them (the reference's `random.uniform(0, 1) > 0.5`, then `random.randint(0, pool_size - 1)`)."""

    def __init__(self, pool_size):
        self.pool_size, self.images = pool_size, []

    def query(self, images):
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image)
                out.append(image)
            elif torch.rand(()).item() > 0.5:
                k = int(torch.randint(self.pool_size, ()).item())
                out.append(self.images[k].clone())
                self.images[k] = image
            else:
                out.append(image)
        return torch.cat(out, 0)


def test_cyclegan_adam_steps_with_pool_swaps_and_lr_decay_match_the_reference_model():
    """cycle_gan_model.optimize_parameters: lsgan, lambda_A = lambda_B = 10, identity 0.5, pools of 3 (full after
    two steps of batch 2, so later steps swap), one Adam for both Gs and one for both Ds, and the reference's
    LambdaLR linear rule stepped once per step."""
    n_const, n_decay = 1, 2
    recipe = build("cyclegan", ["--ngf", "2", "--ndf", "2", "--n-blocks", "2", "--pool-size", "3",
                                "--n-steps-const", str(n_const), "--n-steps-decay", str(n_decay)],
                   DataInfo(32, 3, kind="unpaired", channels_b=3))
    netG_A, netG_B = (copy_of(recipe.nets[k], RefResnetGenerator(3, 3, 2, 2, "instance", dropout=False)) for k in ("G_A", "G_B"))
    netD_A, netD_B = (copy_of(recipe.nets[k], RefPatchGAN(3, 2, 3, "instance")) for k in ("D_A", "D_B"))
    opt_G = torch.optim.Adam(itertools.chain(netG_A.parameters(), netG_B.parameters()), lr=2e-4, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(itertools.chain(netD_A.parameters(), netD_B.parameters()), lr=2e-4, betas=(0.5, 0.999))
    lambda_rule = lambda epoch: 1.0 - max(0, epoch + 1 - n_const) / float(n_decay + 1)  # noqa: E731, epoch_count 1
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, lambda_rule) for opt in (opt_G, opt_D)]
    fake_A_pool, fake_B_pool = RefImagePool(3), RefImagePool(3)
    criterionGAN, lam_A, lam_B, lam_idt = RefGANLoss("lsgan"), 10.0, 10.0, 0.5
    grads = record_gradients(recipe)
    g = torch.Generator().manual_seed(3)
    for step in range(n_const + n_decay):  # the last step runs at lr 1/3 of the initial one
        real_A, real_B = images(g, 2, 3, 32), images(g, 2, 3, 32)
        torch.manual_seed(100 + step)
        losses = recipe.train_step((real_A, real_B), step)
        torch.manual_seed(100 + step)
        fake_B = netG_A(real_A)
        rec_A = netG_B(fake_B)
        fake_A = netG_B(real_B)
        rec_B = netG_A(fake_A)
        set_requires_grad([netD_A, netD_B], False)
        opt_G.zero_grad()
        loss_idt_A = F.l1_loss(netG_A(real_B), real_B) * lam_B * lam_idt
        loss_idt_B = F.l1_loss(netG_B(real_A), real_A) * lam_A * lam_idt
        loss_G_A = criterionGAN(netD_A(fake_B), True)
        loss_G_B = criterionGAN(netD_B(fake_A), True)
        loss_cycle_A = F.l1_loss(rec_A, real_A) * lam_A
        loss_cycle_B = F.l1_loss(rec_B, real_B) * lam_B
        (loss_G_A + loss_G_B + loss_cycle_A + loss_cycle_B + loss_idt_A + loss_idt_B).backward()
        assert_same_gradients(grads["G_A"], netG_A, f"G_A @ {step}", recipe.nets["G_A"])
        assert_same_gradients(grads["G_B"], netG_B, f"G_B @ {step}", recipe.nets["G_B"])
        opt_G.step()
        set_requires_grad([netD_A, netD_B], True)
        opt_D.zero_grad()
        loss_D = {}
        for key, netD, real, pool, fake in (("D_A", netD_A, real_B, fake_B_pool, fake_B),
                                            ("D_B", netD_B, real_A, fake_A_pool, fake_A)):
            fake = pool.query(fake)
            loss_D[key] = (criterionGAN(netD(real), True) + criterionGAN(netD(fake.detach()), False)) * 0.5
            loss_D[key].backward()
        assert_same_gradients(grads["D_A"], netD_A, f"D_A @ {step}", recipe.nets["D_A"])
        assert_same_gradients(grads["D_B"], netD_B, f"D_B @ {step}", recipe.nets["D_B"])
        opt_D.step()
        for scheduler in schedulers:
            scheduler.step()
        expected = {**loss_D, "G_A": loss_G_A, "G_B": loss_G_B, "cycle_A": loss_cycle_A, "cycle_B": loss_cycle_B,
                    "idt_A": loss_idt_A, "idt_B": loss_idt_B}
        for key, value in expected.items():
            torch.testing.assert_close(losses[key], value.detach(), rtol=0, atol=LOSS_ATOL, msg=f"{key} @ {step}")
        for name, opt in (("G", opt_G), ("D", opt_D)):
            assert recipe.optimizers[name].param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for key, net in (("G_A", netG_A), ("G_B", netG_B), ("D_A", netD_A), ("D_B", netD_B)):
        assert_same_weights(recipe.nets[key], net)
    assert recipe.fake_B_pool.count == 3
    torch.testing.assert_close(recipe.fake_B_pool.images, torch.cat(fake_B_pool.images), rtol=0, atol=0)
    torch.testing.assert_close(recipe.fake_A_pool.images, torch.cat(fake_A_pool.images), rtol=0, atol=0)


# ---- DCGAN (PyTorch examples, dcgan/main.py) -----------------------------------------------------------------------
def ref_dcgan(nz, ngf, ndf, nc):
    """The example's netG / netD at 32x32 (one stage fewer than its 64x64), Sigmoid left off netD: the example's
    Sigmoid + BCELoss is BCEWithLogitsLoss on the logits (the form autocast accepts)."""
    netG = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())
    netD = nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, True),
        nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False))
    return netG, netD


def load_dcgan(ref, fused):
    """Copies the fused network's conv / BatchNorm modules, in order, into the plain Sequential `ref`."""
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)
    ours = [m for m in fused.modules() if isinstance(m, kinds)]
    theirs = [m for m in ref if isinstance(m, kinds)]
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    for a, b in zip(theirs, ours):
        a.load_state_dict(b.state_dict())
    return ref


def test_dcgan_adam_steps_match_the_pytorch_example():
    nz, ngf, ndf = 8, 4, 4
    recipe = build("dcgan", ["--nz", str(nz), "--ngf", str(ngf), "--ndf", str(ndf)], DataInfo(32, 1), batch_size=4)
    netG, netD = ref_dcgan(nz, ngf, ndf, 1)
    load_dcgan(netG, recipe.G), load_dcgan(netD, recipe.D)
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    criterion = nn.BCEWithLogitsLoss()
    grads = record_gradients(recipe)
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        real = images(g, 4, 1, 32)
        torch.manual_seed(50 + step)
        losses = recipe.train_step((real, torch.full((4,), -1)), step)
        torch.manual_seed(50 + step)
        netD.zero_grad()
        output = netD(real).view(-1)
        errD_real = criterion(output, torch.full((4,), 1.0))
        errD_real.backward()
        D_x = torch.sigmoid(output).mean()
        noise = torch.randn(4, nz, 1, 1)
        fake = netG(noise)
        output = netD(fake.detach()).view(-1)
        errD_fake = criterion(output, torch.full((4,), 0.0))
        errD_fake.backward()
        D_G_z1 = torch.sigmoid(output).mean()
        assert_same_gradients(grads["D"], netD, f"D @ {step}")
        optimizerD.step()
        netG.zero_grad()
        errG = criterion(netD(fake).view(-1), torch.full((4,), 1.0))
        errG.backward()
        assert_same_gradients(grads["G"], netG, f"G @ {step}")
        optimizerG.step()
        expected = {"loss_D": errD_real + errD_fake, "loss_G": errG, "D_real": D_x, "D_fake": D_G_z1}
        for key, value in expected.items():
            torch.testing.assert_close(losses[key], value.detach(), rtol=0, atol=LOSS_ATOL, msg=f"{key} @ {step}")
    for ref, fused in ((netG, recipe.G), (netD, recipe.D)):
        for a, b in zip(load_dcgan(copy.deepcopy(ref), fused).state_dict().values(), ref.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=PARAM_ATOL)


def test_dcgan_losses_are_float32_under_bf16_autocast():
    """Defect: the DCGAN recipe fed bf16 logits straight to gan_loss, which returns the logits' dtype, so under
    --precision bf16 (or fp16) loss_D / loss_G were computed, summed, checked and logged in bf16 (e.g. 1.3125 for
    1.338), unlike pix2pix/CycleGAN here and unlike autocast, which runs BCEWithLogits in fp32. The reference
    below runs the same networks under the same autocast and BCEWithLogits on the fp32 logits; losses and the
    gradients of both optimizer steps are compared."""
    nz = 8
    recipe = build("dcgan", ["--nz", str(nz), "--ngf", "4", "--ndf", "4"], DataInfo(32, 1), precision="bf16",
                   batch_size=4)
    G, D = copy.deepcopy(recipe.G), copy.deepcopy(recipe.D)
    recipe.optimizers = {name: torch.optim.SGD(recipe.nets[name].parameters(), lr=1e-2) for name in ("D", "G")}
    grads = record_gradients(recipe)
    real = images(torch.Generator().manual_seed(1), 4, 1, 32)
    torch.manual_seed(5)
    losses = recipe.train_step((real, torch.full((4,), -1)), 0)

    torch.manual_seed(5)
    bce = lambda logits, label: F.binary_cross_entropy_with_logits(  # noqa: E731
        logits.float(), torch.full((logits.shape[0],), label))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = G(torch.randn(4, nz))
        logits_real, logits_fake = D(real), D(fake.detach())
    loss_D = bce(logits_real, 1.0) + bce(logits_fake, 0.0)
    ref_grads_D = torch.autograd.grad(loss_D, list(D.parameters()))
    with torch.no_grad():
        for p, grad in zip(D.parameters(), ref_grads_D):
            p -= 1e-2 * grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits_gen = D(fake)
    loss_G = bce(logits_gen, 1.0)
    ref_grads_G = torch.autograd.grad(loss_G, list(G.parameters()))

    for key, value in (("loss_D", loss_D), ("loss_G", loss_G)):
        assert losses[key].dtype == torch.float32, key
        torch.testing.assert_close(losses[key], value.detach(), rtol=0, atol=BF16_LOSS_ATOL, msg=key)
    for name, ref_grads in (("D", ref_grads_D), ("G", ref_grads_G)):
        for mine, ref in zip(grads[name], ref_grads):
            torch.testing.assert_close(mine, ref, rtol=BF16_GRAD_RTOL, atol=BF16_GRAD_ATOL, msg=name)
