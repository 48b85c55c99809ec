"""Building blocks shared by the StyleGAN2 generator and discriminator.

Equalized learning rate as in StyleGAN2-ADA: parameters are stored at unit scale and multiplied by
`weight_gain = lr_multiplier / sqrt(fan_in)` at run time. Every layer carries an `impl` attribute
(None, 'ref' or 'triton') handed to the fusegan ops; `set_impl` sets it for a whole network.

Precision: a layer computes in its input's dtype, casting its fp32 parameters at use (NVIDIA's way);
used on its own under torch.autocast it computes in the autocast dtype instead (the fused ops are
custom ops that autocast does not see). The networks' blocks, mapping network and D epilogue turn
autocast off (`own_precision`) and follow NVIDIA's plan: fp32, or `mp_dtype` in the top
`num_fp16_res` resolutions.
"""
import contextlib
import math

import torch
from torch import nn

from fusegan.kernels.bias_act import activation_funcs, bias_act
from fusegan.kernels.conv2d_resample import conv2d_resample
from fusegan.kernels.upfirdn2d import setup_filter


def set_impl(module: nn.Module, impl) -> nn.Module:
    """Makes every fusegan layer inside `module` use `impl` (None = automatic dispatch, 'ref', 'triton')."""
    for m in module.modules():
        if hasattr(m, "impl"):
            m.impl = impl
    return module


def layer_dtype(x):
    """The dtype a layer computes in: torch.autocast's dtype when autocast is on for x's device (and x is
    fp32/fp16/bf16, the dtypes autocast casts), else x's own dtype."""
    if x.is_floating_point() and x.dtype != torch.float64 and _autocast_on(x.device):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _autocast_on(device):
    # is_autocast_enabled raises for device types without autocast (meta): ask whether it exists first
    return torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type)


def own_precision(device):
    """Turns an enclosing torch.autocast off: StyleGAN2's blocks pick their dtypes themselves (fp32 or
    mp_dtype, as NVIDIA), so an fp32 block stays fp32 and the reference and Triton paths agree."""
    return torch.autocast(device.type, enabled=False) if _autocast_on(device) else contextlib.nullcontext()


class FullyConnectedLayer(nn.Module):
    """A dense layer with equalized learning rate, optional bias and activation (bias_act)."""

    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1.0, bias_init=0.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.impl = None

    def forward(self, x):
        x = x.to(layer_dtype(x))
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation, impl=self.impl)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """A conv with equalized learning rate, FIR resampling (up/down), bias, activation and clamp."""

    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", up=1, down=1,
                 resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False, trainable=True):
        super().__init__()
        self.activation = activation
        self.up, self.down = up, down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = activation_funcs[activation].def_gain
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=fmt)
        bias_value = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias_value) if bias_value is not None else None
        else:  # frozen layers (Freeze-D) keep their tensors as buffers, under the same names
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias_value)
        self.impl = None

    def forward(self, x, gain=1):
        x = x.to(layer_dtype(x))
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down, padding=self.padding,
                            flip_weight=(self.up == 1), impl=self.impl)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp, impl=self.impl)


def low_precision_blocks(block_resolutions, img_resolution, num_fp16_res):
    """The resolutions that run in reduced precision: NVIDIA's top `num_fp16_res` (never below 8),
    or every block when num_fp16_res == 'all' (fusegan's own bf16-everywhere option)."""
    if num_fp16_res == "all":
        return set(block_resolutions)
    fp16_resolution = max(2 ** (int(math.log2(img_resolution)) + 1 - int(num_fp16_res)), 8)
    return {res for res in block_resolutions if res >= fp16_resolution}
