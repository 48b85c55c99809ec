"""GAN loss tails (issue 5): the StyleGAN2 discriminator-step tail, R1 alone, pix2pix's lsgan, a VAE loss, the
path-length penalty and the minibatch-stddev layer.

Eager baselines, as the reference code bases write them:
- D tail (stylegan2-ada-pytorch loss.py, 256^2, batch 32): softplus(fake).mean() + softplus(-real).mean()
  + (r1_grads.square().sum([1, 2, 3]) * gamma / 2).mean(), where r1_grads [32, 3, 256, 256] is the
  gradient autograd.grad(create_graph=True) returns (here an input tensor, so only the tail is timed).
- r1: r1_grads.square().sum([1, 2, 3]).mean(), the same reduction alone.
- lsgan (pix2pix GANLoss('lsgan')): 0.5 * (mse(real, 1) + mse(fake, 0)) on [16, 1, 30, 30] PatchGAN logits.
- vae: F.binary_cross_entropy_with_logits(recon, target, reduction='sum') - 0.5 * sum(1 + logvar - mu^2 -
  exp(logvar)), divided by the batch size; recon [256, 3, 64, 64], latents [256, 128].
- path length (loss.py's Gpl phase at paper256: pl_batch 16, 14 ws of 512): lengths =
  grad_ws.square().sum(2).mean(1).sqrt(), pl_mean.lerp(lengths.mean(), 0.01), (lengths - pl_mean).square().
- minibatch stddev (networks.py's MinibatchStdLayer, D's 4x4 epilogue at batch 32, 512 channels): NVIDIA's
  reshape / mean / square / sqrt / repeat / cat chain, which is fusegan's reference path (impl='ref').

Bytes models (minimal useful traffic, identical for every variant; s = itemsize):
- D tail and r1 (G = numel(r1_grads); the [32, 1] logits are negligible):
  fwd: read G = G*s; bwd: read G (or its saved copy), write dG = 2*G*s; fwdbwd = 3*G*s.
- lsgan (P = numel of each of the two logit tensors): fwd: read both = 2*P*s; bwd: read both, write both
  grads = 4*P*s; fwdbwd = 6*P*s.
- vae (R = numel(recon), L = numel(mu)): fwd: read recon, target, mu, logvar = (2R + 2L)*s; bwd: read
  recon, target, mu, logvar (or saved gradients) and write drecon, dmu, dlogvar = (3R + 4L)*s;
  fwdbwd = (5R + 6L)*s.
- path length (G = numel(grad_ws)): fwd read G; bwd read G, write dG; fwdbwd = 3*G*s.
- minibatch stddev (X = numel(x), the appended maps negligible at C=512): fwd read X, write X; bwd read dY and
  x, write dX; fwdbwd = 5*X*s.
"""
import math

import torch
import torch.nn.functional as F

from .harness import OpCase, elementwise_bytes, make_tensor

R1_GAMMA = 10.0  # StyleGAN2 at 256^2 (paper config); only scales the penalty
LATENT_DIM = 128


# --- D tail and R1 -----------------------------------------------------------------------------
def make_d_tail_inputs(shape, dtype, device, layout):
    n = shape[0]
    return {"real_logits": make_tensor((n, 1), dtype, device), "fake_logits": make_tensor((n, 1), dtype, device),
            "r1_grads": make_tensor(shape, dtype, device, layout)}


def fused_d_tail(real_logits, fake_logits, r1_grads, impl):
    from fusegan.kernels.gan_loss import gan_loss
    from fusegan.kernels.regularizers import r1_penalty

    return (gan_loss(fake_logits, "fake", impl=impl) + gan_loss(real_logits, "real", impl=impl)
            + r1_penalty(r1_grads, impl=impl).mean() * (R1_GAMMA / 2))


def eager_d_tail(real_logits, fake_logits, r1_grads):
    r1 = r1_grads.square().sum([1, 2, 3])
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean() + (r1 * (R1_GAMMA / 2)).mean()


def make_r1_inputs(shape, dtype, device, layout):
    return {"r1_grads": make_tensor(shape, dtype, device, layout)}


def fused_r1(r1_grads, impl):
    from fusegan.kernels.regularizers import r1_penalty

    return r1_penalty(r1_grads, impl=impl).mean()


def eager_r1(r1_grads):
    return r1_grads.square().sum([1, 2, 3]).mean()


# --- lsgan ---------------------------------------------------------------------------------------
def make_lsgan_inputs(shape, dtype, device, layout):
    return {"real": make_tensor(shape, dtype, device, layout), "fake": make_tensor(shape, dtype, device, layout)}


def fused_lsgan(real, fake, impl):
    from fusegan.kernels.gan_loss import gan_loss

    return 0.5 * (gan_loss(real, "real", kind="lsgan", impl=impl) + gan_loss(fake, "fake", kind="lsgan", impl=impl))


def eager_lsgan(real, fake):
    return 0.5 * (F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake, torch.zeros_like(fake)))


lsgan_bytes = elementwise_bytes(fwd=2, bwd=4)  # fwd reads both logit tensors; bwd reads both, writes both grads


# --- vae -----------------------------------------------------------------------------------------
def make_vae_inputs(shape, dtype, device, layout):
    n = shape[0]
    target = torch.rand(shape, dtype=dtype, device=device)
    if layout == "channels_last":
        target = target.to(memory_format=torch.channels_last)
    return {"recon": make_tensor(shape, dtype, device, layout), "target": target,
            "mu": make_tensor((n, LATENT_DIM), dtype, device),
            "logvar": 0.5 * make_tensor((n, LATENT_DIM), dtype, device)}


def fused_vae(recon, target, mu, logvar, impl):
    from fusegan.kernels.vae_loss import vae_loss

    return vae_loss(recon, target, mu, logvar, recon_kind="bce_logits", beta=1.0, reduction="mean", impl=impl)


def eager_vae(recon, target, mu, logvar):
    bce = F.binary_cross_entropy_with_logits(recon, target, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (bce + kld) / recon.shape[0]


def vae_bytes(shape, itemsize, mode):
    r = math.prod(shape)
    latent = shape[0] * LATENT_DIM
    fwd = (2 * r + 2 * latent) * itemsize
    bwd = (3 * r + 4 * latent) * itemsize
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]


# --- path length ---------------------------------------------------------------------------------
PL_DECAY = 0.01


def make_pl_inputs(shape, dtype, device, layout):
    return {"grad_ws": make_tensor(shape, dtype, device), "pl_mean": torch.ones((), device=device)}


def fused_pl(grad_ws, pl_mean, impl):
    from fusegan.kernels.regularizers import path_length_penalty

    return path_length_penalty(grad_ws, pl_mean, PL_DECAY, impl=impl)[0].mean()


def eager_pl(grad_ws, pl_mean):
    lengths = grad_ws.square().sum(2).mean(1).sqrt()
    return (lengths - pl_mean.lerp(lengths.mean(), PL_DECAY)).square().mean()


read_write_read = elementwise_bytes(fwd=1, bwd=2)  # fwd reads the tensor once; bwd reads it again, writes its grad


# --- minibatch stddev ----------------------------------------------------------------------------
MBSTD_GROUP = 4


def make_mbstd_inputs(shape, dtype, device, layout):
    return {"x": make_tensor(shape, dtype, device, layout)}


def fused_mbstd(x, impl):
    from fusegan.kernels.minibatch_std import minibatch_std

    return minibatch_std(x, MBSTD_GROUP, 1, impl=impl)


def eager_mbstd(x):
    from fusegan.kernels.minibatch_std import minibatch_std

    return minibatch_std(x, MBSTD_GROUP, 1, impl="ref")  # NVIDIA's torch code, as networks.py writes it


mbstd_bytes = elementwise_bytes(fwd=2, bwd=3)


def _loss_case(**fields):
    """The loss cases share their dtype and layout: fp32, contiguous."""
    return OpCase(dtype=torch.float32, layout="contiguous", **fields)


CASES = [
    _loss_case(
        op="gan_loss",
        name="losses.d_tail_logistic_r1.256px_b32",
        shape=(32, 3, 256, 256),
        make_inputs=make_d_tail_inputs,
        fused=fused_d_tail,
        eager=eager_d_tail,
        grad_inputs=("real_logits", "fake_logits", "r1_grads"),
        smoke_shape=(2, 3, 8, 8),
        bytes_moved=read_write_read,
        bytes_model="fwd G, bwd 2G, fwdbwd 3G elements (G = numel(r1_grads); logits negligible)",
        # Issue 5: the whole D tail >= 3x eager.
        targets={"fwdbwd": {"vs_eager": 3.0}},
    ),
    _loss_case(
        op="r1_penalty",
        name="losses.r1_penalty.256px_b32",
        shape=(32, 3, 256, 256),
        make_inputs=make_r1_inputs,
        fused=fused_r1,
        eager=eager_r1,
        grad_inputs=("r1_grads",),
        smoke_shape=(2, 3, 8, 8),
        bytes_moved=read_write_read,
        bytes_model="fwd G, bwd 2G, fwdbwd 3G elements (G = numel(r1_grads))",
        # Issue 5: r1_penalty forward+backward at >= 80% of copy bandwidth.
        targets={"fwdbwd": {"frac_copy_bw": 0.8}},
    ),
    _loss_case(
        op="gan_loss",
        name="losses.lsgan_patchgan.30x30_b16",
        shape=(16, 1, 30, 30),
        make_inputs=make_lsgan_inputs,
        fused=fused_lsgan,
        eager=eager_lsgan,
        grad_inputs=("real", "fake"),
        smoke_shape=(2, 1, 5, 5),
        bytes_moved=lsgan_bytes,
        bytes_model="fwd 2P, bwd 4P, fwdbwd 6P elements (P = numel of each logit tensor)",
    ),
    _loss_case(
        op="vae_loss",
        name="losses.vae_bce_kl.64px_b256",
        shape=(256, 3, 64, 64),
        make_inputs=make_vae_inputs,
        fused=fused_vae,
        eager=eager_vae,
        grad_inputs=("recon", "mu", "logvar"),
        smoke_shape=(2, 3, 8, 8),
        bytes_moved=vae_bytes,
        bytes_model="fwd 2R+2L, bwd 3R+4L, fwdbwd 5R+6L elements (R = numel(recon), L = numel(mu))",
        # Issue 5: vae_loss >= 2x eager and >= 1x torch.compile.
        targets={"fwdbwd": {"vs_eager": 2.0, "vs_compile": 1.0}},
    ),
    _loss_case(
        op="path_length_penalty",
        name="losses.path_length.paper256_b16",
        shape=(16, 14, 512),
        make_inputs=make_pl_inputs,
        fused=fused_pl,
        eager=eager_pl,
        grad_inputs=("grad_ws",),
        smoke_shape=(2, 3, 8),
        bytes_moved=read_write_read,
        bytes_model="fwd G, bwd 2G, fwdbwd 3G elements (G = numel(grad_ws))",
    ),
    _loss_case(
        op="minibatch_std",
        name="losses.minibatch_std.4x4_c512_b32",
        shape=(32, 512, 4, 4),
        make_inputs=make_mbstd_inputs,
        fused=fused_mbstd,
        eager=eager_mbstd,
        grad_inputs=("x",),
        smoke_shape=(4, 8, 4, 4),
        bytes_moved=mbstd_bytes,
        bytes_model="fwd 2X, bwd 3X, fwdbwd 5X elements (X = numel(x))",
    ),
]
