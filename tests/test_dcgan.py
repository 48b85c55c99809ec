"""DCGAN: the PyTorch example's parameter counts, shapes, and equality with a plain nn reference."""
import pytest
import torch
from torch import nn

from fusegan.models.dcgan import Discriminator, Generator, weights_init


def count(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_the_pytorch_example():
    assert count(Generator()) == 3_576_704
    assert count(Discriminator()) == 2_765_568


@pytest.mark.parametrize("resolution", [32, 64])
def test_shapes(resolution):
    G = Generator(nz=8, ngf=4, nc=1, resolution=resolution, impl="ref")
    D = Discriminator(ndf=4, nc=1, resolution=resolution, impl="ref")
    img = G(torch.randn(2, 8))
    assert img.shape == (2, 1, resolution, resolution)
    assert D(img).shape == (2,)


def reference_generator(nz, ngf, nc, resolution):
    """The PyTorch example's generator (64x64; one stage fewer at 32x32), written out with plain nn modules."""
    mult = [8, 4, 2, 1] if resolution == 64 else [4, 2, 1]
    layers = [nn.ConvTranspose2d(nz, ngf * mult[0], 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * mult[0]), nn.ReLU(True)]
    for a, b in zip(mult[:-1], mult[1:]):
        layers += [nn.ConvTranspose2d(ngf * a, ngf * b, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * b), nn.ReLU(True)]
    return nn.Sequential(*layers, nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())


def reference_discriminator(ndf, nc, resolution):
    """The PyTorch example's discriminator without the final Sigmoid (logits)."""
    mult = [1, 2, 4, 8] if resolution == 64 else [1, 2, 4]
    layers = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for a, b in zip(mult[:-1], mult[1:]):
        layers += [nn.Conv2d(ndf * a, ndf * b, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * b),
                   nn.LeakyReLU(0.2, inplace=True)]
    return nn.Sequential(*layers, nn.Conv2d(ndf * mult[-1], 1, 4, 1, 0, bias=False))


def _copy_into_reference(fused, ref):
    """Fused layers hold `conv` and `norm` submodules; the reference is the flat nn.Sequential."""
    convs = [m for m in ref if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    norms = [m for m in ref if isinstance(m, nn.BatchNorm2d)]
    fused_norms = [layer.norm for layer in fused.main if layer.norm is not None]
    for layer, conv in zip(fused.main, convs):
        conv.load_state_dict(layer.conv.state_dict())
    for norm, fnorm in zip(norms, fused_norms):
        norm.load_state_dict(fnorm.state_dict())


# The interpreter is slow: the Triton path is checked at 32x32, the reference path at the example's 64x64.
@pytest.mark.parametrize("impl,resolution", [("ref", 64), ("triton", 32)])
@pytest.mark.parametrize("training", [True, False])
def test_matches_plain_nn_reference(impl, resolution, training):
    G = Generator(nz=6, ngf=2, nc=3, resolution=resolution, impl=impl)
    D = Discriminator(ndf=2, nc=3, resolution=resolution, impl=impl)
    G.apply(weights_init), D.apply(weights_init)
    G_ref, D_ref = reference_generator(6, 2, 3, resolution), reference_discriminator(2, 3, resolution)
    _copy_into_reference(G, G_ref), _copy_into_reference(D, D_ref)
    for m in (G, D, G_ref, D_ref):
        m.train(training)
    z = torch.randn(2, 6, 1, 1)
    img, img_ref = G(z), G_ref(z)
    torch.testing.assert_close(img, img_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(D(img_ref.detach()), D_ref(img_ref.detach()).flatten(), rtol=1e-4, atol=1e-5)
    if training:  # running statistics were updated identically
        for layer, ref in zip([m.norm for m in G.main if m.norm is not None],
                              [m for m in G_ref if isinstance(m, nn.BatchNorm2d)]):
            torch.testing.assert_close(layer.running_mean, ref.running_mean, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(layer.running_var, ref.running_var, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_bf16_autocast_matches_plain_nn_under_autocast(training):
    """Under torch.autocast the fused layers cast x, conv weight and bias to bf16 exactly as autocast casts
    nn.ConvTranspose2d / nn.Conv2d, and keep BatchNorm's parameters and running statistics in fp32."""
    G = Generator(nz=6, ngf=2, nc=3, resolution=32, impl="ref")
    D = Discriminator(ndf=2, nc=3, resolution=32, impl="ref")
    G.apply(weights_init), D.apply(weights_init)
    G_ref, D_ref = reference_generator(6, 2, 3, 32), reference_discriminator(2, 3, 32)
    _copy_into_reference(G, G_ref), _copy_into_reference(D, D_ref)
    for m in (G, D, G_ref, D_ref):
        m.train(training)
    z = torch.randn(4, 6, 1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img, img_ref = G(z), G_ref(z)
        logits, logits_ref = D(img_ref.detach()), D_ref(img_ref.detach()).flatten()
    assert img.dtype == logits.dtype == torch.bfloat16
    torch.testing.assert_close(img, img_ref, rtol=0, atol=0)  # the same bf16 ops in the same order
    torch.testing.assert_close(logits, logits_ref, rtol=0, atol=0)
    (img.float().square().mean() + logits.float().sum()).backward()
    (img_ref.float().square().mean() + logits_ref.float().sum()).backward()
    for fused, ref in ((G, G_ref), (D, D_ref)):
        convs = [m for m in ref if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        norms = [m for m in ref if isinstance(m, nn.BatchNorm2d)]
        for layer, conv in zip(fused.main, convs, strict=True):
            assert layer.conv.weight.grad.dtype == torch.float32
            torch.testing.assert_close(layer.conv.weight.grad, conv.weight.grad, rtol=0, atol=0)
        for layer, norm in zip([m for m in fused.main if m.norm is not None], norms, strict=True):
            torch.testing.assert_close(layer.norm.weight.grad, norm.weight.grad, rtol=0, atol=0)
            assert layer.norm.running_mean.dtype == torch.float32
            torch.testing.assert_close(layer.norm.running_mean, norm.running_mean, rtol=0, atol=0)
            torch.testing.assert_close(layer.norm.running_var, norm.running_var, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("training", [True, False])
def test_torch_compile_matches_eager_on_gpu(training):
    G = Generator(nz=32, ngf=16, nc=3, resolution=64).cuda().train(training)
    D = Discriminator(ndf=16, nc=3, resolution=64).cuda().train(training)
    G.apply(weights_init), D.apply(weights_init)
    z = torch.randn(8, 32, device="cuda")
    eager_img = G(z)
    img = torch.compile(G, fullgraph=True, backend="inductor")(z)
    torch.testing.assert_close(img, eager_img, rtol=1e-3, atol=1e-4)
    logits = torch.compile(D, fullgraph=True, backend="inductor")(eager_img.detach())
    torch.testing.assert_close(logits, D(eager_img.detach()), rtol=1e-3, atol=1e-4)
