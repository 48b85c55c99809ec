"""conv2d_norm_act: conv (or transposed conv) + BatchNorm/InstanceNorm + activation, training mode (issue 4 shapes).

Layers: the DCGAN discriminator and generator at batch 128 (64x64 images, ndf = ngf = 64), pix2pix
`unet_256` encoder and decoder layers at batch 16 (ngf = 64), and one CycleGAN ResNet-block conv
(reflect padding, 256 channels at 64x64, batch 8), each in fp32 (TF32 convs, torch's default for
cuDNN) and bf16. Norm parameters and running stats stay fp32, as under autocast.

Eager baseline, as the model code runs it: `F.conv2d`/`F.conv_transpose2d` (cuDNN; `F.pad(reflect)`
first for CycleGAN), `F.batch_norm`/`F.instance_norm` in training mode (running stats updated), then
the activation. `compile` is torch.compile of exactly that function.

Work model (identical for every variant; one conv = 2 * N * OH * OW * C_out * C_in * k * k FLOPs):
- fwd: 1 conv;  bwd: 2 convs (data and weight gradients);  fwdbwd: 3 convs.
Bytes model (minimal useful traffic; s = itemsize): fwd reads x and w and writes the output;
bwd reads dy, the saved conv output and x, w, and writes dx and dw; fwdbwd is the sum.
Conv layers are compute-bound at these sizes, so FLOPs are the number to read: bf16 cases as a fraction of the
measured bf16 matmul peak, fp32 (TF32) cases of the measured TF32 one (`tf32=True`, see harness.OpCase).
"""
import math

import torch
import torch.nn.functional as F

from .harness import OpCase, make_tensor

# name, batch, C_in, H_in, C_out, k, stride, pad, transposed, norm, act, padding_mode
LAYERS = [
    ("dcgan_d.conv1", 128, 3, 64, 64, 4, 2, 1, False, None, "lrelu", "zeros"),
    ("dcgan_d.conv2", 128, 64, 32, 128, 4, 2, 1, False, "batch", "lrelu", "zeros"),
    ("dcgan_d.conv3", 128, 128, 16, 256, 4, 2, 1, False, "batch", "lrelu", "zeros"),
    ("dcgan_d.conv4", 128, 256, 8, 512, 4, 2, 1, False, "batch", "lrelu", "zeros"),
    ("dcgan_g.convT1", 128, 100, 1, 512, 4, 1, 0, True, "batch", "relu", "zeros"),
    ("dcgan_g.convT2", 128, 512, 4, 256, 4, 2, 1, True, "batch", "relu", "zeros"),
    ("dcgan_g.convT3", 128, 256, 8, 128, 4, 2, 1, True, "batch", "relu", "zeros"),
    ("dcgan_g.convT4", 128, 128, 16, 64, 4, 2, 1, True, "batch", "relu", "zeros"),
    ("dcgan_g.convT5", 128, 64, 32, 3, 4, 2, 1, True, None, "tanh", "zeros"),
    ("unet256.enc2", 16, 64, 128, 128, 4, 2, 1, False, "batch", "lrelu", "zeros"),
    ("unet256.enc4", 16, 256, 32, 512, 4, 2, 1, False, "batch", "lrelu", "zeros"),
    ("unet256.enc6", 16, 512, 8, 512, 4, 2, 1, False, "batch", "lrelu", "zeros"),
    ("unet256.dec4", 16, 1024, 8, 512, 4, 2, 1, True, "batch", "relu", "zeros"),
    ("unet256.dec6", 16, 512, 32, 128, 4, 2, 1, True, "batch", "relu", "zeros"),
    ("unet256.dec7", 16, 256, 64, 64, 4, 2, 1, True, "batch", "relu", "zeros"),
    ("cyclegan.resblock_conv", 8, 256, 64, 256, 3, 1, 1, False, "instance", "relu", "reflect"),
]
QUICK = {"dcgan_d.conv3", "dcgan_g.convT3", "unet256.enc4", "unet256.dec6", "cyclegan.resblock_conv"}
ALPHA = 0.2  # DCGAN's and pix2pix's LeakyReLU slope


def _out_hw(h, k, s, p, transposed):
    return (h - 1) * s - 2 * p + k if transposed else (h + 2 * p - k) // s + 1


class _Layer:
    def __init__(self, name, batch, c_in, h, c_out, k, s, p, transposed, norm, act, padding_mode):
        self.name, self.c_in, self.c_out, self.k, self.s, self.p = name, c_in, c_out, k, s, p
        self.shape = (batch, c_in, h, h)
        self.transposed, self.norm, self.act, self.padding_mode = transposed, norm, act, padding_mode

    def make_inputs(self, shape, dtype, device, layout):
        c_in = shape[1]
        c_out = self.c_out if c_in == self.c_in else 4  # --smoke runs a tiny version of the layer
        wshape = (c_in, c_out, self.k, self.k) if self.transposed else (c_out, c_in, self.k, self.k)
        fan_in = c_in * self.k * self.k
        inputs = {"x": make_tensor(shape, dtype, device, layout),
                  "weight": (torch.randn(wshape, device=device) / math.sqrt(fan_in)).to(dtype)}
        if self.norm is not None:
            inputs["norm_weight"] = torch.ones(c_out, device=device)
            inputs["norm_bias"] = torch.zeros(c_out, device=device)
            if self.norm == "batch":
                inputs["running_mean"] = torch.zeros(c_out, device=device)
                inputs["running_var"] = torch.ones(c_out, device=device)
        return inputs

    def _common(self):
        return dict(stride=self.s, padding=self.p, transposed=self.transposed, norm=self.norm, act=self.act,
                    alpha=ALPHA if self.act == "lrelu" else None, padding_mode=self.padding_mode)

    def fused(self, x, weight, norm_weight=None, norm_bias=None, running_mean=None, running_var=None, impl=None):
        from fusegan.kernels.conv_norm_act import conv2d_norm_act

        return conv2d_norm_act(x, weight, None, norm_weight=norm_weight, norm_bias=norm_bias,
                               running_mean=running_mean, running_var=running_var, training=True,
                               impl=impl, **self._common())

    def eager(self, x, weight, norm_weight=None, norm_bias=None, running_mean=None, running_var=None):
        if self.padding_mode == "reflect":
            x = F.pad(x, (self.p,) * 4, mode="reflect")
            y = F.conv2d(x, weight, None, self.s)
        elif self.transposed:
            y = F.conv_transpose2d(x, weight, None, self.s, self.p)
        else:
            y = F.conv2d(x, weight, None, self.s, self.p)
        if self.norm == "batch":
            y = F.batch_norm(y, running_mean, running_var, norm_weight, norm_bias, True, 0.1, 1e-5)
        elif self.norm == "instance":
            y = F.instance_norm(y, None, None, norm_weight, norm_bias, True, 0.1, 1e-5)
        if self.act == "relu":
            return F.relu(y)
        if self.act == "lrelu":
            return F.leaky_relu(y, ALPHA)
        return torch.tanh(y)

    def _sizes(self, shape):
        n, c_in, h, _ = shape
        c_out = self.c_out if c_in == self.c_in else 4
        oh = _out_hw(h, self.k, self.s, self.p, self.transposed)
        return n, c_in, h, c_out, oh

    def flops(self, shape, mode):
        n, c_in, h, c_out, oh = self._sizes(shape)
        small = h if self.transposed else oh  # a transposed conv's MACs follow its input grid
        one = 2 * n * small * small * c_out * c_in * self.k * self.k
        return {"fwd": one, "bwd": 2 * one, "fwdbwd": 3 * one}[mode]

    def bytes_moved(self, shape, itemsize, mode):
        n, c_in, h, c_out, oh = self._sizes(shape)
        x, y, w = n * c_in * h * h, n * c_out * oh * oh, c_out * c_in * self.k * self.k
        fwd = (x + w + y) * itemsize
        bwd = (2 * y + x + w + x + w) * itemsize
        return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]


def _case(layer, dtype):
    grad_inputs = ("x", "weight") + (("norm_weight", "norm_bias") if layer.norm else ())
    dname = "bf16" if dtype == torch.bfloat16 else "fp32"
    return OpCase(
        op="conv_norm_act",
        name=f"conv_norm_act.{layer.name}.{dname}",
        shape=layer.shape,
        dtype=dtype,
        layout="channels_last",  # the layout cuDNN and the implicit-GEMM kernels are fastest in
        make_inputs=layer.make_inputs,
        fused=layer.fused,
        eager=layer.eager,
        grad_inputs=grad_inputs,
        smoke_shape=(2, 3, 8, 8) if layer.padding_mode != "reflect" else (2, 3, 6, 6),
        bytes_moved=layer.bytes_moved,
        flops=layer.flops,
        bytes_model="fwd x+w+y, bwd dy+y+x+w+dx+dw, fwdbwd both (elements; y = layer output)",
        # Issue 4, on an H100-class GPU, training forward+backward: >= 1.5x eager, >= 1.2x torch.compile.
        targets={"fwdbwd": {"vs_eager": 1.5, "vs_compile": 1.2}},
        quick=layer.name in QUICK and dtype == torch.bfloat16,
        tf32=True,  # fp32 convs: TF32 in cuDNN and in the fused kernels alike (torch's default conv switch)
    )


CASES = [_case(_Layer(*spec), dtype) for spec in LAYERS for dtype in (torch.float32, torch.bfloat16)]
