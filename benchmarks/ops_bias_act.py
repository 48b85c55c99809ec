"""bias_act: bias + leaky ReLU + gain + clamp, the epilogue of every StyleGAN2 layer (issue 2 shapes).

Eager baseline, as a user writes it: `(F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2) * gain).clamp(-c, c)`.

Bytes model (minimal useful traffic, identical for every variant; N = numel(x), C = channels, s = itemsize):
- fwd:    read x, read b, write y                          = 2*N*s + C*s
- bwd:    read dy, read the saved y (the sign of x + b and whether |y| hit the clamp both follow from y),
          write dx, write db (its reduction fused)           = 3*N*s + C*s
- fwdbwd: the two together                                  = 5*N*s + 2*C*s
A variant that keeps extra intermediates (eager keeps x + b and the leaky_relu output) moves more than this,
which is exactly what its lower fraction of copy bandwidth shows.
"""
import math

import torch
import torch.nn.functional as F

from .harness import layout_cases, make_tensor

ALPHA = 0.2
GAIN = math.sqrt(2)  # bias_act's default gain for 'lrelu'
CLAMP = 256.0


def make_inputs(shape, dtype, device, layout):
    return {"x": make_tensor(shape, dtype, device, layout), "b": make_tensor(shape[1:2], dtype, device)}


def fused(x, b, impl):
    from fusegan.kernels.bias_act import bias_act

    return bias_act(x, b, dim=1, act="lrelu", clamp=CLAMP, impl=impl)  # alpha=0.2, gain=sqrt(2) by default


def eager(x, b):
    return (F.leaky_relu(x + b.view(1, -1, 1, 1), ALPHA) * GAIN).clamp(-CLAMP, CLAMP)


def bytes_moved(shape, itemsize, mode):
    n, c = math.prod(shape), shape[1]
    fwd = 2 * n * itemsize + c * itemsize
    bwd = 3 * n * itemsize + c * itemsize
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]


CASES = layout_cases(
    ("channels_last", "contiguous"),
    op="bias_act",
    name="bias_act.lrelu_bias_clamp",
    shape=(32, 512, 64, 64),
    dtype=torch.bfloat16,
    make_inputs=make_inputs,
    fused=fused,
    eager=eager,
    grad_inputs=("x", "b"),
    smoke_shape=(2, 8, 8, 8),
    bytes_moved=bytes_moved,
    bytes_model="fwd 2N+C, bwd 3N+C, fwdbwd 5N+2C elements (N=numel(x), C=channels)",
    # Issue 2: forward+backward >= 2.5x eager, >= 1.0x torch.compile, >= 80% of copy bandwidth.
    targets={"fwdbwd": {"vs_eager": 2.5, "vs_compile": 1.0, "frac_copy_bw": 0.8}},
)
