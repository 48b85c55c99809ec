"""The StyleGAN2 discriminator: FromRGB, conv blocks with FIR downsampling, minibatch-stddev epilogue.

Matches NVIDIA's StyleGAN2-ADA `training/networks.py:Discriminator` ('resnet' by default, also
'skip' and 'orig'), with the same parameter names and counts, and label conditioning through a
mapped label (projection discriminator) when c_dim > 0.
"""
import math

import torch
from torch import nn

from fusegan.kernels.minibatch_std import minibatch_std
from fusegan.kernels.upfirdn2d import downsample2d, setup_filter

from .generator import MappingNetwork
from .layers import Conv2dLayer, FullyConnectedLayer, low_precision_blocks, own_precision, set_impl


class DiscriminatorBlock(nn.Module):
    """One resolution: [FromRGB], conv0 3x3, conv1 3x3 with 2x FIR downsampling, and a 1x1 resnet skip."""

    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx,
                 architecture="resnet", activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None,
                 use_fp16=False, fp16_channels_last=False, freeze_layers=0, mp_dtype=torch.float16):
        if in_channels not in (0, tmp_channels):
            raise ValueError(f"in_channels must be 0 or tmp_channels={tmp_channels}, got {in_channels}")
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels, self.resolution, self.img_channels = in_channels, resolution, img_channels
        self.architecture, self.use_fp16, self.mp_dtype = architecture, use_fp16, mp_dtype
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.num_layers = 0

        def next_trainable():  # Freeze-D: the first `freeze_layers` layers of D are frozen
            trainable = first_layer_idx + self.num_layers >= freeze_layers
            self.num_layers += 1
            return trainable

        common = dict(activation=activation, conv_clamp=conv_clamp, channels_last=self.channels_last)
        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, trainable=next_trainable(), **common)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, trainable=next_trainable(), **common)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, down=2, trainable=next_trainable(),
                                 resample_filter=resample_filter, **common)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=next_trainable(), resample_filter=resample_filter,
                                    channels_last=self.channels_last)
        self.impl = None

    def forward(self, x, img, force_fp32=False):
        with own_precision((x if x is not None else img).device):  # fp32, or mp_dtype in a low-precision block
            return self._forward(x, img, force_fp32)

    def _forward(self, x, img, force_fp32):
        dtype = self.mp_dtype if self.use_fp16 and not force_fp32 else torch.float32
        fmt = torch.channels_last if self.channels_last and not force_fp32 else torch.contiguous_format
        if x is not None:
            x = x.to(dtype=dtype, memory_format=fmt)
        if self.in_channels == 0 or self.architecture == "skip":
            img = img.to(dtype=dtype, memory_format=fmt)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = downsample2d(img, self.resample_filter, impl=self.impl) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv1(self.conv0(x))
        return x, img


class MinibatchStdLayer(nn.Module):
    """Appends the per-group standard deviation of the features as `num_channels` extra channels."""

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels
        self.impl = None

    def forward(self, x):
        group_size = self.group_size if self.group_size is not None else x.shape[0]
        return minibatch_std(x, group_size=group_size, num_channels=self.num_channels, impl=self.impl)


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head: [FromRGB], minibatch stddev, conv, fc, out, and the label projection."""

    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture="resnet", mbstd_group_size=4,
                 mbstd_num_channels=1, activation="lrelu", conv_clamp=None):
        super().__init__()
        self.in_channels, self.cmap_dim, self.resolution = in_channels, cmap_dim, resolution
        self.img_channels, self.architecture = img_channels, architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False):
        with own_precision(x.device):  # the head always runs in fp32
            return self._forward(x, img, cmap)

    def _forward(self, x, img, cmap):
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)  # the head always runs in fp32
        if self.architecture == "skip":
            x = x + self.fromrgb(img.to(dtype=torch.float32, memory_format=torch.contiguous_format))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class Discriminator(nn.Module):
    """StyleGAN2 discriminator (NVIDIA StyleGAN2-ADA `training/networks.py:Discriminator`) on fusegan ops.

    `mbstd_group_size` and `mbstd_num_channels` may be given directly (they go to the epilogue), as
    may NVIDIA's `block_kwargs`, `mapping_kwargs` and `epilogue_kwargs`. Precision follows `num_fp16_res` and
    `mp_dtype` only: under an enclosing torch.autocast the fp32 blocks and the epilogue stay fp32.
    """

    def __init__(self, c_dim, img_resolution, img_channels, architecture="resnet", channel_base=32768,
                 channel_max=512, num_fp16_res=0, conv_clamp=None, cmap_dim=None, mbstd_group_size=4,
                 mbstd_num_channels=1, block_kwargs=None, mapping_kwargs=None, epilogue_kwargs=None, mp_dtype=None,
                 impl=None):
        super().__init__()
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(int(math.log2(img_resolution)), 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        lowp = low_precision_blocks(self.block_resolutions, img_resolution, num_fp16_res)
        cmap_dim = 0 if c_dim == 0 else (channels[4] if cmap_dim is None else cmap_dim)
        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        block_kwargs = dict(block_kwargs or {})
        if mp_dtype is not None:
            block_kwargs["mp_dtype"] = mp_dtype
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res], channels[res // 2],
                                       resolution=res, first_layer_idx=layer_idx, use_fp16=(res in lowp),
                                       **block_kwargs, **common)
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **(mapping_kwargs or {}))
        epilogue = dict(mbstd_group_size=mbstd_group_size, mbstd_num_channels=mbstd_num_channels)
        epilogue.update(epilogue_kwargs or {})
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **epilogue, **common)
        set_impl(self, impl)

    def forward(self, img, c, **block_kwargs):
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if img.ndim != 4 or tuple(img.shape[1:]) != expected:
            raise ValueError(f"img must have shape [N, {', '.join(map(str, expected))}], got {tuple(img.shape)}")
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, **block_kwargs)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap)
