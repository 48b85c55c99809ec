"""Every fusegan model under torch.autocast: it runs, stays close to fp32, and trains its fp32 parameters.

The engine runs forwards inside `torch.autocast(device, dtype=bf16|fp16)`. The fused ops are custom
ops that autocast does not see, so the modules cast at use (Conv2dNormAct: x, conv weight and bias to
the autocast dtype; norm parameters and running statistics stay fp32). StyleGAN2's networks keep
NVIDIA's precision plan instead: an enclosing autocast changes nothing there.

Tolerances: the error of a bf16 network against the same network in fp32 is measured as max|bf16 - fp32|
/ max|fp32| over an output, and bounded per model in units of bf16's machine epsilon
(torch.finfo(torch.bfloat16).eps = 2**-7), at about twice the worst error seen over six seeds in train
and eval mode: every conv/linear rounds its inputs and weights to bf16 (relative error up to eps/2
each), and the errors grow with depth and through the normalizations. Gradients (taken outside autocast,
as the engine does) must reach every parameter in fp32 and point the way the fp32 gradient does (cosine
>= 0.9 over all parameters; the worst seen was 0.96: batch-norm backward at batch size 2 amplifies bf16
rounding).

The exact semantics (each model under autocast equals its plain-nn twin under autocast) are checked in
the models' own test files.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from fusegan.kernels.conv_norm_act import Conv2dNormAct
from fusegan.models import autoencoder, dcgan, pix2pix
from fusegan.models.stylegan2 import (Conv2dLayer, Discriminator, FullyConnectedLayer, Generator, SynthesisLayer,
                                      ToRGBLayer)
from norm_helpers import randomize_norms

BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2**-7: the spacing of bf16 numbers in [1, 2)
MIN_GRAD_COSINE = 0.9


def bf16_autocast(device="cpu"):
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def rel_err(actual, expected):
    """max |actual - expected| relative to expected's largest magnitude."""
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def set_impl(model, impl):
    for m in model.modules():
        if hasattr(m, "impl"):
            m.impl = impl
    return model


# (id, model factory, input factory, output tolerance in units of BF16_EPS). Tiny widths, impl='ref'.
MODELS = [
    ("dcgan-G", lambda: dcgan.Generator(nz=8, ngf=4, nc=3, resolution=32, impl="ref"),
     lambda: (torch.randn(4, 8),), 6),
    ("dcgan-D", lambda: dcgan.Discriminator(ndf=4, nc=3, resolution=32, impl="ref"),
     lambda: (torch.randn(4, 3, 32, 32),), 6),
    ("unet-batch", lambda: pix2pix.UnetGenerator(3, 3, 5, ngf=4, impl="ref"),
     lambda: (torch.randn(2, 3, 32, 32),), 6),
    ("unet-instance", lambda: pix2pix.UnetGenerator(3, 3, 5, ngf=4, norm="instance", impl="ref"),
     lambda: (torch.randn(2, 3, 32, 32),), 6),
    ("resnet-reflect", lambda: pix2pix.ResnetGenerator(3, 3, ngf=4, n_blocks=2, impl="ref"),
     lambda: (torch.randn(2, 3, 16, 16),), 10),
    ("patchgan", lambda: pix2pix.NLayerDiscriminator(6, ndf=4, impl="ref"),
     lambda: (torch.randn(2, 6, 32, 32),), 6),
    ("conv-ae", lambda: autoencoder.ConvAutoencoder(base=4, latent_dim=8, impl="ref"),
     lambda: (torch.rand(4, 1, 32, 32),), 6),
    ("conv-vae", lambda: autoencoder.ConvVAE(base=4, latent_dim=8, impl="ref"),
     lambda: (torch.rand(4, 1, 32, 32), False), 6),  # sample=False: z = mu, deterministic
    ("mlp-vae", lambda: autoencoder.MLPVAE(64, 32, 8, impl="ref"),
     lambda: (torch.rand(4, 64), False), 2),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("make,make_inputs,tol_eps", [m[1:] for m in MODELS], ids=[m[0] for m in MODELS])
def test_bf16_autocast_forward_and_backward_match_fp32(make, make_inputs, tol_eps, training):
    model = randomize_norms(make()).train(training)
    twin = copy.deepcopy(model)  # the same weights and running statistics
    inputs = make_inputs()
    before = {name: buf.clone() for name, buf in model.named_buffers()}
    expected = as_tuple(model(*inputs))
    with bf16_autocast():
        actual = as_tuple(twin(*inputs))
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype in (torch.bfloat16, torch.float32) and a.shape == e.shape
        assert torch.isfinite(a).all()
        assert rel_err(a, e) <= tol_eps * BF16_EPS, f"relative error {rel_err(a, e):.3g} > {tol_eps} bf16 eps"

    for (name, buf), twin_buf in zip(model.named_buffers(), twin.buffers()):  # running stats: fp32, in place
        assert twin_buf.dtype == buf.dtype, name
        if training and buf.is_floating_point():
            assert not torch.equal(twin_buf, before[name]), f"{name} was not updated"
            assert rel_err(twin_buf, buf) <= tol_eps * BF16_EPS, name

    weights = [torch.randn_like(e) for e in expected]  # a random projection: no cancelling gradients
    sum((e.float() * w).sum() for e, w in zip(expected, weights)).backward()
    sum((a.float() * w).sum() for a, w in zip(actual, weights)).backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert q.grad is not None and q.grad.dtype == torch.float32, name
        assert torch.isfinite(q.grad).all(), name
    g32 = torch.cat([p.grad.flatten() for p in model.parameters()])
    g16 = torch.cat([p.grad.flatten() for p in twin.parameters()])
    assert F.cosine_similarity(g16, g32, dim=0) >= MIN_GRAD_COSINE


@pytest.mark.parametrize("cls", [autoencoder.ConvVAE, autoencoder.MLPVAE])
def test_vae_loss_under_autocast_is_fp32_and_close(cls):
    model = cls(base=4, latent_dim=8, impl="ref") if cls is autoencoder.ConvVAE else cls(64, 32, 8, impl="ref")
    x = torch.rand(4, 1, 32, 32) if cls is autoencoder.ConvVAE else torch.rand(4, 64)
    model.eval()
    expected = model.loss(x, sample=False)
    with bf16_autocast():
        actual = model.loss(x, sample=False)
        sampled = model.train().loss(x)  # training: z is sampled by reparameterize, in bf16
    assert actual.dtype == torch.float32 and sampled.dtype == torch.float32
    assert torch.isfinite(sampled)
    torch.testing.assert_close(actual, expected, rtol=2 * BF16_EPS, atol=0)  # a sum over pixels: errors average
    sampled.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# StyleGAN2: the networks follow NVIDIA's plan (num_fp16_res, mp_dtype), not an enclosing autocast
# ----------------------------------------------------------------------------------------------
def tiny_generator(**synthesis_kwargs):
    return Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
                     synthesis_kwargs=dict(channel_base=64, channel_max=8, **synthesis_kwargs), impl="ref")


def tiny_discriminator(**kwargs):
    return Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=64, channel_max=8,
                         mbstd_group_size=2, impl="ref", **kwargs)


def record_block_dtypes(net, prefix):
    """{block name: dtype of the features it returns}, filled by forward hooks."""
    seen = {}
    for name, block in net.named_children():
        if name.startswith(prefix):
            block.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(
                name, (out[0] if isinstance(out, tuple) else out).dtype))
    return seen


@pytest.mark.parametrize("num_fp16_res", [0, 1], ids=["fp32", "top-block-bf16"])
def test_stylegan2_networks_keep_their_own_precision_under_autocast(num_fp16_res):
    G = tiny_generator(num_fp16_res=num_fp16_res, mp_dtype=torch.bfloat16).train()
    D = tiny_discriminator(num_fp16_res=num_fp16_res, mp_dtype=torch.bfloat16).train()
    g_dtypes, d_dtypes = record_block_dtypes(G.synthesis, "b"), record_block_dtypes(D, "b")
    z, img = torch.randn(2, 8), torch.randn(2, 3, 16, 16)
    torch.manual_seed(1)
    expected_img = G(z, None)
    expected_logits = D(img, None)
    expected_w_avg = G.mapping.w_avg.clone()
    G.mapping.w_avg.zero_()
    torch.manual_seed(1)  # the same noise inputs
    with bf16_autocast():
        actual_img = G(z, None)
        actual_logits = D(img, None)
    lowp = {"b16"} if num_fp16_res else set()
    assert g_dtypes == {f"b{r}": torch.bfloat16 if f"b{r}" in lowp else torch.float32 for r in (4, 8, 16)}
    assert d_dtypes["b16"] == (torch.bfloat16 if num_fp16_res else torch.float32)
    assert d_dtypes["b8"] == torch.float32 and d_dtypes["b4"] == torch.float32  # the epilogue: always fp32
    # autocast is off inside: the very same computation, bit for bit, and fp32 outputs
    assert actual_img.dtype == torch.float32 and actual_logits.dtype == torch.float32
    torch.testing.assert_close(actual_img, expected_img, rtol=0, atol=0)
    torch.testing.assert_close(actual_logits, expected_logits, rtol=0, atol=0)
    torch.testing.assert_close(G.mapping.w_avg, expected_w_avg, rtol=0, atol=0)  # the fp32 mapping network
    (actual_img.square().mean() + actual_logits.sum()).backward()
    for net in (G, D):
        for name, p in net.named_parameters():
            assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name


STYLEGAN2_LAYERS = [
    ("fc-linear", lambda: FullyConnectedLayer(8, 6), lambda: (torch.randn(3, 8),)),
    ("fc-lrelu", lambda: FullyConnectedLayer(8, 6, activation="lrelu", lr_multiplier=0.01),
     lambda: (torch.randn(3, 8),)),
    ("conv-down", lambda: Conv2dLayer(3, 4, 3, activation="lrelu", down=2), lambda: (torch.randn(2, 3, 8, 8),)),
    ("modconv-up", lambda: SynthesisLayer(3, 4, w_dim=8, resolution=8, up=2),
     lambda: (torch.randn(2, 3, 4, 4), torch.randn(2, 8))),
    ("torgb", lambda: ToRGBLayer(4, 3, w_dim=8), lambda: (torch.randn(2, 4, 4, 4), torch.randn(2, 8))),
]


@pytest.mark.parametrize("make,make_inputs", [m[1:] for m in STYLEGAN2_LAYERS], ids=[m[0] for m in STYLEGAN2_LAYERS])
def test_stylegan2_layers_on_their_own_compute_in_the_autocast_dtype(make, make_inputs):
    layer = set_impl(make(), "ref")
    inputs = make_inputs()
    kwargs = dict(noise_mode="const") if isinstance(layer, SynthesisLayer) else {}
    expected = layer(*inputs, **kwargs)
    with bf16_autocast():
        actual = layer(*inputs, **kwargs)
    assert actual.dtype == torch.bfloat16
    assert rel_err(actual, expected) <= 2 * BF16_EPS  # one layer: the input, weight and output roundings
    actual.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())


# ----------------------------------------------------------------------------------------------
# Conv2dNormAct: the Triton path under autocast matches the reference path under autocast
# ----------------------------------------------------------------------------------------------
CNA_CASES = [
    ("batch-train", dict(norm="batch", act="lrelu", alpha=0.2), True),
    ("batch-eval-folded", dict(norm="batch", act="relu"), False),
    ("instance-affine-reflect", dict(norm="instance", act="relu", affine=True, track_running_stats=True,
                                     padding_mode="reflect"), True),
    ("transposed-tanh", dict(act="tanh", transposed=True, stride=2), True),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kwargs,training", [c[1:] for c in CNA_CASES], ids=[c[0] for c in CNA_CASES])
def test_conv2d_norm_act_triton_under_autocast_matches_ref(device, kwargs, training, dtype):
    eps = torch.finfo(dtype).eps
    ref = randomize_norms(Conv2dNormAct(3, 4, 3, padding=1, impl="ref", **kwargs)).to(device).train(training)
    fused = copy.deepcopy(ref)
    fused.impl = "triton"
    x = torch.randn(2, 3, 6, 6, device=device)
    with torch.autocast(device.type, dtype=dtype):
        out_ref, out = ref(x), fused(x)
    assert out.dtype == out_ref.dtype == dtype
    # Both round the conv's inputs to `dtype`, accumulate in fp32 (in other orders) and round the conv
    # output; the Triton path takes the batch statistics from its fp32 accumulators, the reference
    # from the rounded output. Outputs are O(1) after the norm: up to 2 ulps apart.
    torch.testing.assert_close(out.float(), out_ref.float(), rtol=2 * eps, atol=eps)
    for (name, b_ref), b in zip(ref.named_buffers(), fused.buffers()):  # running stats: fp32, moved alike
        assert b.dtype == b_ref.dtype, name
        # the batch statistics differ by about one rounding of O(1) values, and enter with momentum 0.1
        torch.testing.assert_close(b, b_ref, rtol=eps, atol=0.1 * eps, msg=name)
    # ReLU's slope jumps at 0: an output within the two paths' roundings of 0 can take the other branch in one
    # of them, and one such flip moves a weight gradient by several percent. Gradients are compared where both
    # paths took the same branch (flips must be rare: outputs agree to 2 ulps).
    same_branch = (out_ref > 0) == (out > 0)
    assert (~same_branch).float().mean() <= 0.02
    w = torch.randn(out.shape, device=device) * same_branch
    (out_ref.float() * w).sum().backward()
    (out.float() * w).sum().backward()
    for (name, p_ref), p in zip(ref.named_parameters(), fused.parameters()):
        assert p.grad.dtype == torch.float32, name
        assert rel_err(p.grad, p_ref.grad) <= 4 * eps, name


# ----------------------------------------------------------------------------------------------
# GPU: the Triton path of every model under bf16 autocast, against the fp32 model
# ----------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("make,make_inputs,tol_eps", [m[1:] for m in MODELS], ids=[m[0] for m in MODELS])
def test_triton_path_under_bf16_autocast_on_gpu(make, make_inputs, tol_eps):
    model = set_impl(randomize_norms(make()), "triton").cuda().train()
    twin = copy.deepcopy(model)
    inputs = tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in make_inputs())
    expected = as_tuple(model(*inputs))
    with bf16_autocast("cuda"):
        actual = as_tuple(twin(*inputs))
    for a, e in zip(actual, expected, strict=True):
        assert torch.isfinite(a).all()
        assert rel_err(a, e) <= tol_eps * BF16_EPS
    sum(a.float().sum() for a in actual).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in twin.parameters())
