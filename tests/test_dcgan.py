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
