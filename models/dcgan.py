"""DCGAN (Radford et al., "Unsupervised Representation Learning with Deep Convolutional GANs", 2016).

Matches the PyTorch examples' `dcgan/main.py` networks at 64x64 (nz=100, ngf=ndf=64): the generator is
transposed convs with BatchNorm and ReLU and a Tanh output; the discriminator is strided convs with
BatchNorm and LeakyReLU(0.2). Every conv-norm-act triple is one fused `Conv2dNormAct`, whose
state_dict keys are `<layer>.conv.weight`, `<layer>.norm.running_mean`, ... A 32x32 variant (one
stage fewer) serves small datasets such as the built-in digits.
"""
from torch import nn

from fusegan.kernels.conv_norm_act import Conv2dNormAct

RESOLUTIONS = (32, 64)


def _stages(resolution):
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution}")
    return 4 if resolution == 64 else 3  # feature-map doublings between the 4x4 core and the image


class Generator(nn.Module):
    """z [N, nz, 1, 1] (or [N, nz]) -> image [N, nc, R, R] in [-1, 1]. 3,576,704 parameters at 64x64, nc=3.

    Paper: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep Convolutional GANs",
    ICLR 2016. Matches `Generator` of the PyTorch examples' `dcgan/main.py` (ngf=64, nz=100 at 64x64).
    """

    def __init__(self, nz=100, ngf=64, nc=3, resolution=64, impl=None):
        super().__init__()
        self.nz, self.resolution = nz, resolution
        n = _stages(resolution)
        channels = [ngf * 2 ** (n - 1 - i) for i in range(n)]  # 64x64: 512, 256, 128, 64
        layers = [Conv2dNormAct(nz, channels[0], 4, 1, 0, transposed=True, norm="batch", act="relu", impl=impl)]
        for cin, cout in zip(channels[:-1], channels[1:]):
            layers.append(Conv2dNormAct(cin, cout, 4, 2, 1, transposed=True, norm="batch", act="relu", impl=impl))
        layers.append(Conv2dNormAct(channels[-1], nc, 4, 2, 1, transposed=True, bias=False, act="tanh", impl=impl))
        self.main = nn.Sequential(*layers)

    def forward(self, z):
        if z.ndim == 2:
            z = z[:, :, None, None]
        return self.main(z)


class Discriminator(nn.Module):
    """image [N, nc, R, R] -> logits [N]. 2,765,568 parameters at 64x64, nc=3.

    Paper: Radford et al., ICLR 2016 (DCGAN). Matches `Discriminator` of the PyTorch examples'
    `dcgan/main.py` (ndf=64 at 64x64), whose last Sigmoid is left out here: it returns logits (for the fused logistic
    `gan_loss`); `sigmoid=True` gives the example's probabilities.
    """

    def __init__(self, ndf=64, nc=3, resolution=64, sigmoid=False, impl=None):
        super().__init__()
        self.resolution, self.sigmoid = resolution, sigmoid
        n = _stages(resolution)
        channels = [ndf * 2**i for i in range(n)]  # 64x64: 64, 128, 256, 512
        layers = [Conv2dNormAct(nc, channels[0], 4, 2, 1, bias=False, act="lrelu", alpha=0.2, impl=impl)]
        for cin, cout in zip(channels[:-1], channels[1:]):
            layers.append(Conv2dNormAct(cin, cout, 4, 2, 1, norm="batch", act="lrelu", alpha=0.2, impl=impl))
        layers.append(Conv2dNormAct(channels[-1], 1, 4, 1, 0, bias=False, act="sigmoid" if sigmoid else "linear",
                                    impl=impl))
        self.main = nn.Sequential(*layers)

    def forward(self, img):
        return self.main(img).flatten()


def weights_init(module):
    """The DCGAN paper's initialization, as in the PyTorch example: N(0, 0.02) convs, N(1, 0.02) BN scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
