"""torch.compile(fullgraph=True, backend="inductor") over every fusegan model, on the Triton path (issue 6).

Each model is compiled whole; `fullgraph=True` turns any graph break into an error, so a passing case
means dynamo traced the model through its fusegan custom ops in one graph, their fake (meta)
functions gave the shapes, dtypes and strides the real kernels return, and AOTAutograd and inductor
lowered the torch ops around them. The parameters require grad, so even a forward-only case has
AOTAutograd trace the joint forward + backward graph (the backward custom ops' fake functions
included) and partition it. Without a GPU the models run on CPU tensors with the Triton kernels in
the interpreter (conftest sets TRITON_INTERPRET=1): inductor then writes C++ for the surrounding
torch ops and calls the custom ops opaquely, the same tracing, partitioning and lowering as on a GPU,
where the same file runs on CUDA tensors (the `device` fixture).

Cases (tiny widths and sizes: the interpreter runs every kernel twice per case, eager and compiled):
- StyleGAN2: G and D with fp16 blocks, conv_clamp and channels_last (forward); fp32 G (training mode,
  w_avg update) and D in one graph, loss + backward, every gradient compared.
- DCGAN: G and D in one training-mode graph (BatchNorm batch statistics and running-stat updates),
  loss + backward.
- pix2pix/CycleGAN, in eval mode (BatchNorm's running statistics folded into the conv): U-Net
  (BatchNorm), PatchGAN with BatchNorm and with InstanceNorm, and the ResNet generator (InstanceNorm,
  reflect padding) in channels_last.
- autoencoders: ConvAutoencoder in eval mode and channels_last (also DenoisingAutoencoder's eval
  forward, and the encoder/decoder trunk ConvVAE shares); MLPVAE's fused vae_loss, loss + backward.
The compiled model is a deep copy of the eager one (same weights and buffers), so training-mode
cases compare the running statistics and w_avg each side updates, not one side updating twice.

Tolerances (relative to the largest magnitude of each compared tensor):
- fp32: the custom ops run the same kernels on the same inputs compiled or not; only the torch ops
  around them (mapping-network addmm, style and weight scaling, residual adds, the loss) may be fused
  and reordered by inductor, which moves a value by a few fp32 ulps (2**-24 relative) that then
  propagate through the layers. The worst seen over four seeds was 1.5e-6 (a StyleGAN2 noise-strength
  gradient); the conv-norm-act models matched bit for bit. FP32_RTOL = 2e-5 is 13 times that, yet far
  below what a real bug (a wrong stride or layout in a fake function, a dropped bias, a stale buffer)
  gives, which is O(1e-2) or more. On CUDA, TF32 is turned off for these tests (conftest's `_fp32_means_fp32`): with it,
  a one-ulp difference in a conv input can move the conv's TF32 rounding of that element (2**-11).
- mixed precision (StyleGAN2 fp16 blocks): inductor does not round the intermediates of a fused
  chain to fp16 (`emulate_precision_casts` is off by default), e.g. the resnet `y + x` of a fp16 block
  followed by the epilogue's cast to fp32 is computed in fp32, so the compiled network is a few fp16
  roundings away from eager. With emulate_precision_casts=True the two were bit-identical; the worst
  default difference seen over four seeds was 6.1e-4 of the output's scale, about 0.6 fp16 eps
  (2**-10); FP16_RTOL is 2 eps.

After editing a register_fake function, run this file with TORCHINDUCTOR_FORCE_DISABLE_CACHES=1:
inductor's on-disk FX-graph cache is keyed by the graph and its inputs, not by the fake functions,
so a graph compiled under the old fake function (with its stride assertions) can be reused.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from fusegan.models import autoencoder, dcgan, pix2pix
from fusegan.models.stylegan2 import Discriminator, Generator
from norm_helpers import randomize_norms

FP32_RTOL = 2e-5
FP16_RTOL = 2 * torch.finfo(torch.float16).eps  # a few fp16 roundings (see the module docstring)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every case traces from scratch: no guards, recompile counts or cached graphs of an earlier case."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(model):
    """The model compiled the way issue 6 asks: one graph (any graph break raises), inductor."""
    return torch.compile(model, fullgraph=True, backend="inductor")


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def assert_close_rel(actual, expected, rtol, what="output"):
    """Same shape, dtype and layout, and max|actual - expected| <= rtol * max|expected|."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    # The layout too: a fake function with the wrong strides makes inductor return (or assume) another one.
    strides = lambda t: [s for s, n in zip(t.stride(), t.shape) if n > 1]  # noqa: E731 (size-1 dims: any stride)
    assert strides(actual) == strides(expected), f"{what}: strides {actual.stride()} != eager {expected.stride()}"
    scale = expected.double().abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= rtol * scale, f"{what}: max error {err:.3g} > {rtol:.3g} * {scale:.3g}"


def assert_buffers_match(model, twin, rtol=FP32_RTOL):
    """Running statistics, num_batches_tracked, w_avg: the compiled twin updated them as eager did."""
    for (name, a), e in zip(twin.named_buffers(), model.buffers(), strict=True):
        if a.is_floating_point():
            assert_close_rel(a, e, rtol, what=name)
        else:
            assert torch.equal(a, e), name


def assert_grads_match(model, twin, rtol=FP32_RTOL):
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        assert_close_rel(q.grad, p.grad, rtol, what=f"{name}.grad")


# ----------------------------------------------------------------------------------------------
# StyleGAN2: fp16 blocks with conv_clamp and channels_last (forward); fp32 G + D loss (backward)
# ----------------------------------------------------------------------------------------------
def tiny_g(**synthesis_kwargs):
    # 8x8: a constant 4x4 block and one upsampling block (conv0 up=2, FIR-upsampled skip image)
    return Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs=dict(num_layers=2),
                     synthesis_kwargs=dict(channel_base=64, channel_max=16, **synthesis_kwargs), impl="triton")


def tiny_d(**kwargs):
    # one resnet block (FromRGB, conv down=2 and the skip) and the epilogue (minibatch stddev, fc, out)
    return Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=64, channel_max=16,
                         mbstd_group_size=2, impl="triton", **kwargs)


def test_stylegan2_mixed_precision_channels_last_forward(device):
    # NVIDIA's training setup: the top resolutions (here the 8x8 block) in fp16 and clamped at 256, with
    # those blocks' weights and features channels_last (fp16_channels_last, NVIDIA's option). fp32 and the
    # contiguous layout are compiled, with their gradients, in the loss test below (fused_modconv, which
    # eval mode turns on, is ignored by the Triton path: eval and training mode trace the same ops).
    mixed = dict(num_fp16_res=2, mp_dtype=torch.float16, conv_clamp=256)
    G = tiny_g(fp16_channels_last=True, **mixed).to(device).eval()
    D = tiny_d(block_kwargs=dict(fp16_channels_last=True), **mixed).to(device)
    assert G.synthesis.b8.use_fp16 and D.b8.use_fp16 and not G.synthesis.b4.use_fp16
    assert G.synthesis.b8.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for m in G.modules():  # noise_strength starts at 0: make the per-pixel noise input count
            if hasattr(m, "noise_strength"):
                m.noise_strength.fill_(0.2)
    z = torch.randn(4, 8, device=device)
    img = G(z, None, noise_mode="const")
    assert_close_rel(compiled(G)(z, None, noise_mode="const"), img, FP16_RTOL, "G image")
    assert_close_rel(compiled(D)(img, None), D(img, None), FP16_RTOL, "D logits")


def test_stylegan2_generator_and_discriminator_loss_backward(device):
    # One graph over both networks in fp32: G in training mode (w_avg update, fused_modconv=False), D
    # on its image, the non-saturating G loss, and the gradients of every G and D parameter.
    G, D = tiny_g().to(device).train(), tiny_d().to(device).train()
    G_twin, D_twin = copy.deepcopy(G), copy.deepcopy(D)
    z = torch.randn(4, 8, device=device)

    def loss_fn(G, D, z):
        return F.softplus(-D(G(z, None, noise_mode="const"), None)).mean()

    expected = loss_fn(G, D, z)
    actual = torch.compile(loss_fn, fullgraph=True, backend="inductor")(G_twin, D_twin, z)
    assert_close_rel(actual, expected, FP32_RTOL, "loss")
    assert_buffers_match(G, G_twin)  # w_avg
    expected.backward()
    actual.backward()
    assert_grads_match(G, G_twin)
    assert_grads_match(D, D_twin)


# ----------------------------------------------------------------------------------------------
# pix2pix/CycleGAN, autoencoders, DCGAN: the Conv2dNormAct variants (strided and transposed, batch,
# instance and no norm, zero and reflect padding, each activation) inside their models
# ----------------------------------------------------------------------------------------------
CL = torch.channels_last
MODELS = [  # (id, model factory, input factory, memory format of the model and its input); tiny, Triton path
    ("unet-batch", lambda: pix2pix.UnetGenerator(3, 3, 5, ngf=2, impl="triton"),
     lambda: (torch.randn(2, 3, 32, 32),), None),  # 5 levels: 32x32 is the smallest input
    ("patchgan-batch", lambda: pix2pix.NLayerDiscriminator(6, ndf=4, n_layers=2, impl="triton"),
     lambda: (torch.randn(2, 6, 16, 16),), None),
    ("patchgan-instance", lambda: pix2pix.NLayerDiscriminator(3, ndf=4, n_layers=2, norm="instance", impl="triton"),
     lambda: (torch.randn(2, 3, 16, 16),), None),
    # channels_last, as the engine's --channels-last runs these models (module and batch in NHWC): the
    # ResNet generator's strided, reflect-padded and transposed convs with InstanceNorm all in NHWC.
    ("resnet-instance-reflect-channels-last",
     lambda: pix2pix.ResnetGenerator(3, 3, ngf=4, n_blocks=1, impl="triton"),
     lambda: (torch.randn(2, 3, 8, 8),), CL),  # reflect pads of 3 (7x7 head and tail) and 1 (2x2 blocks) fit
    # The encoder in NHWC and features() flattening its NHWC map (in NCHW order: a fake function with the
    # wrong layout would scramble it); the decoder starts from a .view, so it runs NCHW.
    # DenoisingAutoencoder's eval forward is ConvAutoencoder's (it corrupts only in training): one case for both.
    ("conv-ae-channels-last", lambda: autoencoder.ConvAutoencoder(3, base=4, latent_dim=8, impl="triton"),
     lambda: (torch.rand(2, 3, 32, 32),), CL),  # 3 channels: a 1-channel NHWC tensor is also NCHW
]


@pytest.mark.parametrize("make,make_inputs,memory_format", [m[1:] for m in MODELS], ids=[m[0] for m in MODELS])
def test_model_forward_compiles_and_matches_eager(device, make, make_inputs, memory_format):
    fmt = dict(memory_format=memory_format) if memory_format is not None else {}
    model = randomize_norms(make()).to(device, **fmt).eval()  # eval BatchNorm: running stats folded into the conv
    inputs = [t.to(device, **fmt) for t in make_inputs()]
    expected = as_tuple(model(*inputs))
    actual = as_tuple(compiled(model)(*inputs))
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_close_rel(a, e, FP32_RTOL, f"output {i}")


def test_dcgan_training_step_backward(device):
    # BatchNorm in training mode: batch statistics, in-place running-stat and num_batches_tracked
    # updates (buffer mutation inside the graph), then the G and D gradients of the G loss.
    G = dcgan.Generator(nz=8, ngf=4, nc=3, resolution=32, impl="triton").to(device).train()
    D = dcgan.Discriminator(ndf=4, nc=3, resolution=32, impl="triton").to(device).train()
    G.apply(dcgan.weights_init), D.apply(dcgan.weights_init)
    G_twin, D_twin = copy.deepcopy(G), copy.deepcopy(D)
    z = torch.randn(2, 8, device=device)

    def loss_fn(G, D, z):
        return F.softplus(-D(G(z))).mean()

    expected = loss_fn(G, D, z)
    actual = torch.compile(loss_fn, fullgraph=True, backend="inductor")(G_twin, D_twin, z)
    assert_close_rel(actual, expected, FP32_RTOL, "loss")
    assert_buffers_match(G, G_twin)
    assert_buffers_match(D, D_twin)
    expected.backward()
    actual.backward()
    assert_grads_match(G, G_twin)
    assert_grads_match(D, D_twin)


def test_vae_loss_backward(device):
    # The fused vae_loss op and its backward inside a compiled model (the MLP VAE: no convs, so cheap).
    model = autoencoder.MLPVAE(64, 32, 8, impl="triton").to(device)
    twin = copy.deepcopy(model)
    x = torch.rand(4, 64, device=device)
    expected = model.loss(x, sample=False)
    actual = torch.compile(twin.loss, fullgraph=True, backend="inductor")(x, sample=False)
    assert_close_rel(actual, expected, FP32_RTOL, "loss")
    expected.backward()
    actual.backward()
    assert_grads_match(model, twin)
