"""modulated_conv2d: StyleGAN2 config-f synthesis layers, batch 32, bf16, channels_last (issue 3 shapes).

Layers: 512->512 3x3 at 32^2, 64^2 and 128^2; 256->256 3x3 at 256^2; the up=2 layers (512->512 32->64,
512->512 64->128, 512->256 128->256); ToRGB (1x1, demodulate=False) at 64^2 and 256^2. Every synthesis layer
runs the way SynthesisLayer does: noise [N, 1, H, W], bias, lrelu with gain sqrt(2), conv_clamp 256; ToRGB
has a bias and no activation.

Eager baseline: NVIDIA StyleGAN2-ADA's training path (fused_modconv=False), as plain PyTorch: x * styles,
F.conv2d / F.conv_transpose2d (cuDNN) + the FIR as pad/zero-insert + depthwise conv (upfirdn2d's reference),
* dcoefs + noise, then bias + lrelu * gain + clamp (bias_act's reference). `compile` is torch.compile of it.

Work model (identical for every variant): one conv = 2 * N * I * O * k * k * (output pixels, or input pixels for
the stride-2 transposed conv of up=2, whose MACs follow its input grid); fwd 1 conv, bwd 2 (data and weight
gradients), fwdbwd 3. The FIR, demodulation and epilogue are not counted. Bytes model (elements x itemsize,
minimal useful traffic): fwd reads x and writes y; bwd reads dy, x and writes dx; weights, styles are small.
These layers are compute-bound: TFLOP/s and the fraction of the measured bf16 matmul peak are the numbers.
"""
import math

import torch

from .harness import OpCase, make_tensor

# name, batch, C_in, H_in, C_out, k, up, demodulate (synthesis layer) / False (ToRGB)
LAYERS = [
    ("b32.conv1", 32, 512, 32, 512, 3, 1, True),
    ("b64.conv1", 32, 512, 64, 512, 3, 1, True),
    ("b128.conv1", 32, 512, 128, 512, 3, 1, True),
    ("b256.conv1", 32, 256, 256, 256, 3, 1, True),
    ("b64.conv0_up", 32, 512, 32, 512, 3, 2, True),
    ("b128.conv0_up", 32, 512, 64, 512, 3, 2, True),
    ("b256.conv0_up", 32, 512, 128, 256, 3, 2, True),
    ("b64.torgb", 32, 512, 64, 3, 1, 1, False),
    ("b256.torgb", 32, 256, 256, 3, 1, 1, False),
]
QUICK = {"b64.conv1", "b128.conv0_up", "b256.torgb"}
CONV_CLAMP = 256.0


class _Layer:
    def __init__(self, name, batch, c_in, h, c_out, k, up, demodulate):
        self.name, self.c_in, self.c_out, self.k, self.up, self.demodulate = name, c_in, c_out, k, up, demodulate
        self.shape = (batch, c_in, h, h)
        self.synthesis = demodulate  # synthesis layers: noise + lrelu + clamp; ToRGB: bias only

    def _sizes(self, shape):
        n, c_in, h, _ = shape
        c_out = self.c_out if c_in == self.c_in else 4  # --smoke runs a tiny version of the layer
        return n, c_in, h, c_out, h * self.up

    def make_inputs(self, shape, dtype, device, layout):
        from fusegan.kernels.upfirdn2d import setup_filter

        n, c_in, h, c_out, oh = self._sizes(shape)
        inputs = {
            "x": make_tensor(shape, dtype, device, layout),
            "weight": torch.randn(c_out, c_in, self.k, self.k, device=device),  # fp32 parameters, as NVIDIA's
            "styles": torch.randn(n, c_in, device=device) + 1.0,
            "bias": torch.zeros(c_out, device=device).to(dtype),
            "resample_filter": setup_filter([1, 3, 3, 1], device=device),
        }
        if self.synthesis:
            inputs["noise"] = torch.randn(n, 1, oh, oh, device=device).to(dtype) * 0.1
        else:  # ToRGB scales the styles by 1/sqrt(fan_in) instead of demodulating
            inputs["styles"] = inputs["styles"] / math.sqrt(c_in * self.k * self.k)
        return inputs

    def _kw(self):
        if self.synthesis:
            return dict(up=self.up, padding=self.k // 2, demodulate=True, act="lrelu", clamp=CONV_CLAMP,
                        flip_weight=self.up == 1)
        return dict(up=1, padding=0, demodulate=False, act="linear", clamp=CONV_CLAMP)

    def fused(self, x, weight, styles, bias, resample_filter, noise=None, impl=None):
        from fusegan.kernels.modulated_conv2d import modulated_conv2d

        return modulated_conv2d(x, weight, styles, noise=noise, resample_filter=resample_filter, bias=bias,
                                impl=impl, **self._kw())

    def eager(self, x, weight, styles, bias, resample_filter, noise=None):
        # fusegan's reference path is NVIDIA's non-fused composition in plain PyTorch
        from fusegan.kernels.modulated_conv2d import modulated_conv2d

        return modulated_conv2d(x, weight, styles, noise=noise, resample_filter=resample_filter, bias=bias,
                                fused_modconv=False, impl="ref", **self._kw())

    def flops(self, shape, mode):
        n, c_in, h, c_out, oh = self._sizes(shape)
        pixels = h * h if self.up > 1 else oh * oh
        one = 2 * n * pixels * c_out * c_in * self.k * self.k
        return {"fwd": one, "bwd": 2 * one, "fwdbwd": 3 * one}[mode]

    def bytes_moved(self, shape, itemsize, mode):
        n, c_in, h, c_out, oh = self._sizes(shape)
        x, y = n * c_in * h * h, n * c_out * oh * oh
        fwd, bwd = (x + y) * itemsize, (y + 2 * x) * itemsize
        return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]


def _case(layer, dtype=torch.bfloat16):
    # Issue 3, H100-class, forward+backward: >= 1.5x eager, >= 1.3x torch.compile; and >= 50% of the measured
    # bf16 matmul peak for the 512-channel layers at 64^2 and above.
    targets = {"fwdbwd": {"vs_eager": 1.5, "vs_compile": 1.3}}
    if layer.name in ("b64.conv1", "b128.conv1", "b128.conv0_up"):
        targets["fwdbwd"]["frac_matmul_peak"] = 0.5
    return OpCase(
        op="modulated_conv2d",
        name=f"modulated_conv2d.{layer.name}.bf16",
        shape=layer.shape,
        dtype=dtype,
        layout="channels_last",  # the implicit-GEMM kernels' fast layout (and cuDNN's)
        make_inputs=layer.make_inputs,
        fused=layer.fused,
        eager=layer.eager,
        grad_inputs=("x", "weight", "styles", "bias") + (("noise",) if layer.synthesis else ()),
        smoke_shape=(2, 3, 8, 8),
        bytes_moved=layer.bytes_moved,
        flops=layer.flops,
        bytes_model="fwd x+y, bwd dy+x+dx, fwdbwd both (elements; weights and styles are small)",
        targets=targets,
        quick=layer.name in QUICK,
    )


CASES = [_case(_Layer(*spec)) for spec in LAYERS]
