"""modulated_conv2d: reference and Triton paths against an independent NVIDIA-style oracle written here.

The oracle follows NVIDIA's FUSED formulation (per-sample weights w * s * d, one conv per sample), which is
algebraically independent from both implementations (they scale activations instead), with the FIR written as
zero-insertion + padding + a depthwise F.conv2d, and bias/activation written with torch functions.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from fusegan.kernels.modulated_conv2d import demodulation_coefficients, modulated_conv2d, no_weight_gradients
from fusegan.kernels.upfirdn2d import setup_filter

FP32_TOL = dict(atol=2e-5, rtol=2e-5)  # fp32 GEMM vs cuDNN/MKL: different summation orders only
FP64_TOL = dict(atol=1e-10, rtol=1e-10)
HALF_TOL = {torch.float16: dict(atol=2e-2, rtol=2e-2), torch.bfloat16: dict(atol=6e-2, rtol=6e-2)}  # vs fp32, O(1)

FILTER = setup_filter([1, 3, 3, 1])  # StyleGAN2's default, a 2-D 4x4 filter

# (up, down, kernel size): every layer type of StyleGAN2 and its discriminator
MODES = [(1, 1, 3), (1, 1, 1), (2, 1, 3), (2, 1, 1), (1, 2, 3), (1, 2, 1), (2, 2, 3)]
ACTS = {"linear": (lambda z: z, 1.0), "lrelu": (lambda z: F.leaky_relu(z, 0.2), math.sqrt(2)),
        "relu": (F.relu, math.sqrt(2)), "tanh": (torch.tanh, 1.0), "sigmoid": (torch.sigmoid, 1.0),
        "swish": (lambda z: z * torch.sigmoid(z), math.sqrt(2)), "gelu": (F.gelu, 1.0), "elu": (F.elu, 1.0),
        "selu": (F.selu, 1.0), "softplus": (F.softplus, 1.0)}


# ------------------------------------------------------------------------------------------------------------
# Independent oracle

def _fir(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
    """upfirdn2d by hand: zero-insert, pad (negative crops), convolve with the flipped 2-D filter, subsample."""
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    px0, px1, py0, py1 = pad
    x = F.pad(x, [px0, px1, py0, py1])
    k = (f * gain).to(x.dtype).flip([0, 1])
    x = F.conv2d(x, k[None, None].repeat(c, 1, 1, 1), groups=c)
    return x[:, :, ::down, ::down]


def _conv_resample_oracle(x, w, f, up, down, p, flip_weight):
    """NVIDIA conv2d_resample semantics with symmetric int padding p, from F.conv2d / F.conv_transpose2d."""
    kh, kw = w.shape[2:]
    fh, fw = f.shape
    if up == 1 and down == 1:
        return F.conv2d(x, w if flip_weight else w.flip([2, 3]), padding=p)
    if up == 1:  # FIR with NVIDIA's padding, then a stride-2 conv
        pad = (p + (fw - down + 1) // 2, p + (fw - down) // 2, p + (fh - down + 1) // 2, p + (fh - down) // 2)
        return F.conv2d(_fir(x, f, pad=pad), w if flip_weight else w.flip([2, 3]), stride=down)
    # up == 2: transposed stride-2 conv, then FIR with gain up**2 (and FIR + subsample when down == 2)
    px0, px1 = p + (fw + up - 1) // 2 - (kw - 1), p + (fw - up) // 2 - (kw - up)
    py0, py1 = p + (fh + up - 1) // 2 - (kh - 1), p + (fh - up) // 2 - (kh - up)
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    wt = w.transpose(0, 1)
    y = F.conv_transpose2d(x, wt.flip([2, 3]) if flip_weight else wt, stride=up)
    y = _fir(y, f, pad=(px0, px1, py0, py1), gain=up ** 2)
    return _fir(y, f, down=down) if down > 1 else y


def oracle(x, weight, styles, noise=None, up=1, down=1, padding=0, f=FILTER, demodulate=True, flip_weight=True,
           bias=None, act="linear", gain=None, clamp=None):
    outs = []
    for n in range(x.shape[0]):  # NVIDIA's fused formulation: one per-sample weight per sample
        w = weight * styles[n].reshape(1, -1, 1, 1)
        if demodulate:
            w = w * (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).rsqrt()
        outs.append(_conv_resample_oracle(x[n:n + 1], w, f.to(x.dtype), up, down, padding, flip_weight))
    y = torch.cat(outs)
    if noise is not None:
        y = y + noise
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    func, def_gain = ACTS[act]
    y = func(y) * (def_gain if gain is None else gain)
    return y if clamp is None else y.clamp(-clamp, clamp)


def _inputs(n=2, i=3, o=4, h=5, w=7, k=3, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(1)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)  # noqa: E731
    return mk(n, i, h, w), mk(o, i, k, k), mk(n, i) + 1.0


# ------------------------------------------------------------------------------------------------------------
# Forward values

@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("flip_weight", [True, False])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("up,down,k", MODES)
def test_matches_oracle(up, down, k, demodulate, flip_weight, impl, device):
    x, w, s = _inputs(k=k, device=device)
    f = FILTER.to(device)
    want = oracle(x, w, s, up=up, down=down, padding=k // 2, f=f, demodulate=demodulate, flip_weight=flip_weight)
    got = modulated_conv2d(x, w, s, up=up, down=down, padding=k // 2, resample_filter=f, demodulate=demodulate,
                           flip_weight=flip_weight, impl=impl)
    torch.testing.assert_close(got, want, **FP32_TOL)


EPILOGUES = {
    "noise_per_sample": dict(noise="n1hw"),
    "noise_full_bias": dict(noise="nchw", bias=True),
    "bias_lrelu": dict(bias=True, act="lrelu"),
    "stylegan_layer": dict(noise="n1hw", bias=True, act="lrelu", gain=math.sqrt(2) * 0.5, clamp=0.7),
    "const_noise_swish": dict(noise="hw", act="swish"),
    "clamp_only": dict(clamp=0.3),
}


def _epilogue_kwargs(spec, out_shape, dtype, device):
    g = torch.Generator().manual_seed(2)
    n, o, h, w = out_shape
    shapes = {"n1hw": (n, 1, h, w), "nchw": (n, o, h, w), "hw": (h, w)}
    kw = {k: v for k, v in spec.items() if k not in ("noise", "bias")}
    if "noise" in spec:
        kw["noise"] = torch.randn(*shapes[spec["noise"]], generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    if spec.get("bias"):
        kw["bias"] = torch.randn(o, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    return kw


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("name", sorted(EPILOGUES))
@pytest.mark.parametrize("up,down,k", [(1, 1, 3), (2, 1, 3), (1, 2, 3)])
def test_epilogue_matches_oracle(up, down, k, name, impl, device):
    x, w, s = _inputs(k=k, device=device)
    f = FILTER.to(device)
    shape = oracle(x, w, s, up=up, down=down, padding=1, f=f).shape
    kw = _epilogue_kwargs(EPILOGUES[name], shape, x.dtype, device)
    want = oracle(x, w, s, up=up, down=down, padding=1, f=f, **kw)
    got = modulated_conv2d(x, w, s, up=up, down=down, padding=1, resample_filter=f, impl=impl, **kw)
    torch.testing.assert_close(got, want, **FP32_TOL)


@pytest.mark.parametrize("act", sorted(ACTS))
def test_every_activation_in_the_epilogue(act, device):
    x, w, s = _inputs(device=device)
    b = torch.linspace(-1, 1, 4, device=device)
    want = oracle(x, w, s, padding=1, f=FILTER.to(device), bias=b, act=act)
    got = modulated_conv2d(x, w, s, padding=1, bias=b, act=act, impl="triton")
    torch.testing.assert_close(got, want, **FP32_TOL)


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_batch1_odd_sizes_and_channels_beyond_one_block(impl, device):
    # 20 out channels > BLOCK_N=16 (fp32), K = 9 * 7 = 63 > BLOCK_K=32: several N and K blocks, ragged edges
    x, w, s = _inputs(n=1, i=7, o=20, h=9, w=11, device=device)
    nz = torch.randn(1, 1, 9, 11, device=device)
    want = oracle(x, w, s, noise=nz, padding=1, act="lrelu")
    got = modulated_conv2d(x, w, s, noise=nz, padding=1, act="lrelu", impl=impl)
    torch.testing.assert_close(got, want, **FP32_TOL)


@pytest.mark.parametrize("up,down,k", [(1, 1, 3), (2, 1, 3), (1, 2, 3), (1, 1, 1)])
def test_channels_last_in_channels_last_out(up, down, k, device):
    x, w, s = _inputs(k=k, device=device)
    f = FILTER.to(device)
    xc = x.to(memory_format=torch.channels_last)
    got = modulated_conv2d(xc, w, s, up=up, down=down, padding=k // 2, resample_filter=f, bias=torch.ones(4),
                           act="lrelu", impl="triton")
    want = modulated_conv2d(x, w, s, up=up, down=down, padding=k // 2, resample_filter=f, bias=torch.ones(4),
                            act="lrelu", impl="triton")
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert want.is_contiguous()
    torch.testing.assert_close(got, want, **FP32_TOL)


@pytest.mark.parametrize("view", ["strided", "expanded"])
@pytest.mark.parametrize("up,down,k", [(1, 1, 3), (2, 1, 3), (1, 2, 3)])
def test_non_contiguous_bias(up, down, k, view, device):
    # A strided or stride-0 bias is what its contiguous copy is, forward and backward (the GEMM's epilogue and the
    # epilogue-gradient kernel used to read it at unit stride: wrong values, and past the end of a stride-0 one).
    x, w, s = _inputs(dtype=torch.float64, device=device)
    base = torch.randn(8, dtype=torch.float64, device=device, requires_grad=True)
    bias = base[::2] if view == "strided" else base[:1].expand(4)
    kw = dict(up=up, down=down, padding=k // 2, resample_filter=FILTER.to(device), act="lrelu", clamp=0.8)
    want = oracle(x, w, s, up=up, down=down, padding=k // 2, f=FILTER.to(device), bias=bias.detach(), act="lrelu",
                  clamp=0.8)
    gy = torch.randn_like(want)
    results = []
    for impl in ("triton", "ref"):
        y = modulated_conv2d(x, w, s, bias=bias, impl=impl, **kw)
        torch.testing.assert_close(y, want, **FP64_TOL)
        results.append(torch.autograd.grad(y, base, gy)[0])
    torch.testing.assert_close(results[0], results[1], **FP64_TOL)


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_styles_dtype_may_differ_from_weight(impl, device):
    # As NVIDIA's (weight * styles promotes): fp32 styles with an fp64 weight compute as fp64 styles, no crash.
    x, w, s = _inputs(dtype=torch.float64, device=device)
    s32 = s.float()
    want = modulated_conv2d(x, w, s32.double(), padding=1, impl=impl)
    torch.testing.assert_close(modulated_conv2d(x, w, s32, padding=1, impl=impl), want, **FP64_TOL)
    torch.testing.assert_close(modulated_conv2d(x, w.float(), s, padding=1, impl=impl),
                               modulated_conv2d(x, w.float().double(), s, padding=1, impl=impl), **FP64_TOL)


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2)])
def test_empty_batch(up, down, impl, device):
    x, w, s = _inputs(n=0, device=device)
    y = modulated_conv2d(x, w, s, up=up, down=down, padding=1, resample_filter=FILTER.to(device), impl=impl)
    one = modulated_conv2d(*_inputs(n=1, device=device), up=up, down=down, padding=1,
                           resample_filter=FILTER.to(device), impl=impl)
    assert y.shape == (0, *one.shape[1:])


def test_result_does_not_depend_on_fused_modconv(device):
    x, w, s = _inputs(device=device)
    for impl in ("ref", "triton"):
        a = modulated_conv2d(x, w, s, padding=1, fused_modconv=True, impl=impl)
        b = modulated_conv2d(x, w, s, padding=1, fused_modconv=False, impl=impl)
        assert torch.equal(a, b)


def test_demodulation_coefficients_without_per_sample_weights():
    w, s = torch.randn(5, 3, 3, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    ww = w.unsqueeze(0) * s.reshape(4, 1, 3, 1, 1)  # NVIDIA's [N, O, I, k, k]
    torch.testing.assert_close(demodulation_coefficients(w, s), (ww.square().sum([2, 3, 4]) + 1e-8).rsqrt())


def test_fp16_prenormalization_keeps_the_result():
    # NVIDIA rescales weight and styles in fp16 before demodulating; the demodulated result is scale-invariant.
    x, w, s = _inputs(dtype=torch.float64)
    got = modulated_conv2d(x.half(), w * 100, s * 50, padding=1, impl="ref").double()
    torch.testing.assert_close(got, oracle(x, w, s, padding=1), atol=1e-2, rtol=1e-2)


# ------------------------------------------------------------------------------------------------------------
# Gradients (float64, tiny shapes: the interpreter is slow)

GRAD_CASES = [  # (up, down, k, demodulate, noise, bias, act, clamp): every mode, each epilogue piece somewhere
    (1, 1, 3, True, True, True, "lrelu", None),
    (1, 1, 3, False, False, False, "linear", None),
    (1, 1, 1, False, False, True, "linear", None),  # ToRGB
    (1, 1, 3, True, False, True, "swish", None),  # smooth activation: needs bias_act's f'' term
    (2, 1, 3, True, True, True, "lrelu", 0.75),  # the StyleGAN2 up layer: GEMM, then FIR + noise + bias + act + clamp
    (2, 1, 1, False, False, False, "linear", None),
    (1, 2, 3, True, True, False, "linear", None),
    (1, 2, 1, False, False, True, "lrelu", None),
]


def _grad_inputs(up, down, k, noise, bias, device, n=1):
    x, w, s = _inputs(n=n, i=2, o=2, h=3, w=4, k=k, dtype=torch.float64, device=device)
    f = FILTER.to(device, torch.float64)
    oh, ow = oracle(x, w, s, up=up, down=down, padding=k // 2, f=f).shape[2:]
    args = [x, w, s]
    if noise:
        args.append(torch.randn(n, 1, oh, ow, dtype=torch.float64, device=device))
    if bias:
        args.append(torch.randn(2, dtype=torch.float64, device=device))
    return [a.requires_grad_() for a in args], f


def _fn(up, down, k, demod, noise, bias, act, f, impl, clamp=None):
    def fn(x, w, s, *rest):
        rest = list(rest)
        nz = rest.pop(0) if noise else None
        b = rest.pop(0) if bias else None
        return modulated_conv2d(x, w, s, noise=nz, up=up, down=down, padding=k // 2, resample_filter=f,
                                demodulate=demod, bias=b, act=act, clamp=clamp, impl=impl)
    return fn


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: "up{}_down{}_k{}_demod{}_noise{}_bias{}_{}_clamp{}".format(*c))
def test_gradcheck_and_gradgradcheck(case, impl, device):
    up, down, k, demod, noise, bias, act, clamp = case
    args, f = _grad_inputs(up, down, k, noise, bias, device)
    fn = _fn(up, down, k, demod, noise, bias, act, f, impl, clamp)
    if clamp is not None:  # the clamp must bite on some outputs, not all (else it tests nothing, or only zeros)
        y = fn(*args).detach()
        assert 0 < (y.abs() >= clamp).sum() < y.numel()
    # fast_mode checks random projections of the Jacobians: far fewer runs (the interpreter is slow)
    assert gradcheck(fn, args, fast_mode=True)
    assert gradgradcheck(fn, args, fast_mode=True)


def test_gradcheck_batch2_styles_and_clamp(device):
    # two samples: the per-sample style/demod gradients must not mix samples; clamp zeroes some gradients
    args, f = _grad_inputs(1, 1, 3, True, False, device, n=2)
    fn = lambda x, w, s, nz: modulated_conv2d(x, w, s, noise=nz, padding=1, act="lrelu", clamp=0.5,  # noqa: E731
                                              impl="triton")
    assert gradcheck(fn, args, fast_mode=True)
    assert gradgradcheck(fn, args, fast_mode=True)


@pytest.mark.parametrize("up,down,k", [(1, 1, 3), (2, 1, 3), (1, 2, 1)])
def test_triton_gradients_equal_reference_gradients(up, down, k, device):
    args, f = _grad_inputs(up, down, k, True, True, device, n=2)
    fn = _fn(up, down, k, True, True, True, "lrelu", f, "triton")
    ref = _fn(up, down, k, True, True, True, "lrelu", f, "ref")
    gy = torch.randn_like(fn(*args))
    got = torch.autograd.grad(fn(*args), args, gy)
    want = torch.autograd.grad(ref(*args), args, gy)
    for g, wnt in zip(got, want):
        torch.testing.assert_close(g, wnt, **FP64_TOL)


@pytest.mark.parametrize("noise_kind", ["n1hw", "hw", "nchw", "1c1w"])
@pytest.mark.parametrize("up,act", [(1, "lrelu"), (1, "linear"), (2, "lrelu"), (2, "linear")])
def test_noise_gradient_for_every_noise_shape(up, act, noise_kind, device):
    # Noise shared by the channels ([N, 1, H, W], [H, W]) gets its gradient from the epilogue-grad kernel's channel
    # sums; noise with its own channels from gpre summed over the broadcast dims. Both against the reference path.
    x, w, s = _inputs(n=2, i=2, o=3, h=3, w=4, dtype=torch.float64, device=device)
    f = FILTER.to(device, torch.float64)
    n, o, oh, ow = oracle(x, w, s, up=up, padding=1, f=f).shape
    shape = {"n1hw": (n, 1, oh, ow), "hw": (oh, ow), "nchw": (n, o, oh, ow), "1c1w": (1, o, 1, ow)}[noise_kind]
    nz = torch.randn(shape, dtype=torch.float64, device=device)
    args = [t.requires_grad_() for t in (x, s, nz)]
    gy = torch.randn(n, o, oh, ow, dtype=torch.float64, device=device)
    grads = {impl: torch.autograd.grad(modulated_conv2d(args[0], w, args[1], noise=args[2], up=up, padding=1,
                                                        resample_filter=f, act=act, impl=impl), args, gy)
             for impl in ("triton", "ref")}
    for got, want in zip(grads["triton"], grads["ref"]):
        torch.testing.assert_close(got, want, **FP64_TOL)
    assert grads["triton"][2].shape == shape


@pytest.mark.parametrize("save_conv", [False, True])
def test_fused_op_gradients_with_and_without_the_saved_conv(save_conv, device):
    # save_conv=True keeps the raw conv output for the backward (training); False recomputes it there.
    from fusegan.kernels._conv_ops import conv2d_fused

    x, w, s = _inputs(n=2, i=2, o=2, h=3, w=4, dtype=torch.float64, device=device)
    d = torch.rand(2, 2, dtype=torch.float64, device=device) + 0.5
    b = torch.randn(2, dtype=torch.float64, device=device)
    args = [t.requires_grad_() for t in (x, w, s, d, b)]
    fn = lambda x, w, s, d, b: conv2d_fused(x, w, s, d, None, b, pad_y=1, pad_x=1, out_h=3, out_w=4,  # noqa: E731
                                            act="swish", gain=1.3, save_conv=save_conv)
    assert gradcheck(fn, args, fast_mode=True)
    assert gradgradcheck(fn, args, fast_mode=True)


@pytest.mark.parametrize("transposed,stride", [(False, 1), (False, 2), (True, 2)])
def test_fused_dot_epilogue_matches_torch_and_is_differentiable(transposed, stride, device):
    # dot[n, o] = sum_p aux * conv(x * in_scale, w), from the GEMM's epilogue (the backward's style gradient).
    from fusegan.kernels._conv_ops import conv2d_fused_dot

    x, w, s = _inputs(n=2, i=3, o=2, h=5, w=4, dtype=torch.float64, device=device)
    d = torch.rand(2, 2, dtype=torch.float64, device=device) + 0.5
    if transposed:  # w is this conv's logical [O, C] weight, a conv_transpose2d weight is [C, O]
        out_h, out_w = (5 - 1) * stride - 2 + 3, (4 - 1) * stride - 2 + 3
        conv = lambda x, w, s: F.conv_transpose2d(x * s[:, :, None, None], w.transpose(0, 1), stride=stride,  # noqa: E731
                                                  padding=1)
    else:
        out_h, out_w = (5 + 2 - 3) // stride + 1, (4 + 2 - 3) // stride + 1
        conv = lambda x, w, s: F.conv2d(x * s[:, :, None, None], w, stride=stride, padding=1)  # noqa: E731
    aux = torch.randn(2, 2, out_h, out_w, dtype=torch.float64, device=device)
    args = [t.requires_grad_() for t in (x, w, s, d, aux)]

    def fused(x, w, s, d, aux):
        return conv2d_fused_dot(x, w, aux, s, d, stride=stride, pad_y=1, pad_x=1, out_h=out_h, out_w=out_w,
                                transposed=transposed)

    def ref(x, w, s, d, aux):
        c = conv(x, w, s)
        return c * d[:, :, None, None], (aux * c).sum(dim=(2, 3))

    for got, want in zip(fused(*args), ref(*args)):
        torch.testing.assert_close(got, want, **FP64_TOL)
    assert gradcheck(fused, args, fast_mode=True)
    assert gradgradcheck(fused, args, fast_mode=True)


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_no_weight_gradients(impl, device):
    x, w, s = [a.requires_grad_() for a in _inputs(n=2, i=2, o=3, h=4, w=4, dtype=torch.float64, device=device)]
    y = modulated_conv2d(x, w, s, padding=1, demodulate=False, impl=impl)  # forward outside, as NVIDIA's pl reg
    gy = torch.randn_like(y)
    gx_full, gw_full = torch.autograd.grad(y, [x, w], gy, retain_graph=True)
    with no_weight_gradients():
        gx, gw = torch.autograd.grad(y, [x, w], gy, retain_graph=True, allow_unused=True)
    assert gw is None  # demodulate=False: the conv is the only way to the weight
    torch.testing.assert_close(gx, gx_full, **FP64_TOL)
    gw_again = torch.autograd.grad(y, [w], gy)[0]  # the context restored the flag
    torch.testing.assert_close(gw_again, gw_full, **FP64_TOL)


# ------------------------------------------------------------------------------------------------------------
# Kernel launches per layer (the point of the fusion): counted at Triton's launch entry point, kernel[grid](...),
# which both the GPU JIT and the CPU interpreter go through.

@pytest.fixture
def launches(monkeypatch):
    from triton.runtime.jit import KernelInterface

    seen, getitem = [], KernelInterface.__getitem__

    def spy(kernel, grid):
        seen.append(getattr(kernel, "__name__", None) or kernel.fn.__name__)
        return getitem(kernel, grid)

    monkeypatch.setattr(KernelInterface, "__getitem__", spy)
    return seen


@pytest.mark.parametrize("up,down,forward,backward", [
    # backward: the epilogue's gradient with d(demod), d(bias) and d(noise) (one pass), dX with d(styles) (one
    # GEMM), dW. The noise gradient comes from that pass too: no torch reduction over an [N, O, H, W] gradient.
    (1, 1, ["_conv_fwd_kernel"], ["_conv_epilogue_grad_kernel", "_conv_fwd_kernel", "_conv_wgrad_kernel"]),
    (1, 2, ["_upfirdn2d_fwd_kernel", "_conv_fwd_kernel"],
     ["_conv_epilogue_grad_kernel", "_conv_fwd_kernel", "_conv_wgrad_kernel", "_upfirdn2d_fwd_kernel"]),
    # up=2: the transposed GEMM (style prologue, demodulation epilogue), then ONE FIR pass that also adds the noise
    # and the bias and applies the activation; backward: the activation's gradient (+ db, dnoise; the epilogue-grad
    # kernel on the saved FIR output), the FIR adjoint, the demodulation gradient (one reduction pass over the saved
    # conv output), dX with d(styles), dW.
    (2, 1, ["_conv_fwd_kernel", "_upfirdn2d_fwd_kernel"],
     ["_conv_epilogue_grad_kernel", "_upfirdn2d_fwd_kernel", "_conv_epilogue_grad_kernel", "_conv_fwd_kernel",
      "_conv_wgrad_kernel"]),
])
def test_triton_launches_per_layer(up, down, forward, backward, launches, device, monkeypatch):
    x, w, s = _inputs(n=2, i=3, o=4, h=4, w=4, device=device)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    w.requires_grad_()
    s.requires_grad_()
    nz = torch.randn(2, 1, 4 * up // down, 4 * up // down, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    y = modulated_conv2d(x, w, s, noise=nz, up=up, down=down, padding=1, resample_filter=FILTER.to(device), bias=b,
                         act="lrelu", clamp=256.0, impl="triton")
    assert sorted(launches) == sorted(forward)
    launches.clear()
    reduced = []  # the shapes torch's sum_to_size reduces during the backward
    original_sum_to_size = torch.Tensor.sum_to_size
    monkeypatch.setattr(torch.Tensor, "sum_to_size",
                        lambda t, *size: reduced.append(tuple(t.shape)) or original_sum_to_size(t, *size))
    y.backward(torch.randn_like(y))
    assert sorted(launches) == sorted(backward)
    assert all(t.grad is not None for t in (x, w, s, nz, b))
    assert all(shape[1] == 1 for shape in reduced), reduced  # only the kernel's [N, 1, H, W] channel sums


# ------------------------------------------------------------------------------------------------------------
# Weight gradient with split-K (small-channel layers such as ToRGB split the batch x pixel reduction)

@pytest.mark.parametrize("stride,pad,layout", [(1, 1, torch.contiguous_format), (2, 1, torch.channels_last),
                                               (1, 0, torch.channels_last)])
def test_wgrad_split_k_matches_torch(stride, pad, layout, monkeypatch, device):
    from fusegan.kernels import _implicit_gemm as ig

    monkeypatch.setattr(ig, "WGRAD_MIN_CHUNK", 16)  # force several chunks at this tiny size
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 9, 7, dtype=torch.float64, generator=gen).to(device, memory_format=layout)
    oh, ow = (9 + 2 * pad - 3) // stride + 1, (7 + 2 * pad - 3) // stride + 1
    gz = torch.randn(3, 2, oh, ow, dtype=torch.float64, generator=gen).to(device, memory_format=layout)
    sx, sz = torch.rand(3, 5, dtype=torch.float64, generator=gen), torch.rand(3, 2, dtype=torch.float64, generator=gen)
    splits, _ = ig._wgrad_splits(1, 3 * oh * ow, 16)
    assert splits > 1
    got = ig.conv_wgrad_triton(gz, x, sz, sx, stride=stride, pad_y=pad, pad_x=pad, kh=3, kw=3)
    want = torch.nn.grad.conv2d_weight(x * sx[:, :, None, None], (2, 5, 3, 3), gz * sz[:, :, None, None],
                                       stride=stride, padding=pad)
    torch.testing.assert_close(got, want, **FP64_TOL)


# ------------------------------------------------------------------------------------------------------------
# Bad input: every error names its argument, before any launch

def _bad(**over):
    x, w, s = _inputs()
    args = dict(x=x, weight=w, styles=s)
    args.update(over)
    return args


@pytest.mark.parametrize("args,err,match", [
    (_bad(styles=torch.randn(2, 5)), ValueError, "styles must have shape"),
    (_bad(styles=torch.randn(6)), ValueError, "styles must be 2-D"),
    (_bad(weight=torch.randn(4, 5, 3, 3)), ValueError, "weight has 5 input channels"),
    (_bad(weight=torch.randn(4, 3, 3, 3, 1)), ValueError, "weight must be a 4-D"),
    (_bad(weight=torch.randn(0, 3, 3, 3)), ValueError, "weight must have at least one out channel"),
    (_bad(x=torch.randn(2, 0, 5, 7), weight=torch.randn(4, 0, 3, 3), styles=torch.randn(2, 0)), ValueError,
     "weight must have at least one out channel, one input channel"),
    (_bad(x=torch.randn(2, 3, 5)), ValueError, "x must be 4-D"),
    (_bad(up=3), ValueError, "up must be 1 or 2"),
    (_bad(down=0), ValueError, "down must be >= 1"),
    (_bad(up=2.0), TypeError, "up must be a positive int"),
    (_bad(noise=torch.randn(2, 1, 4, 4)), ValueError, "noise of shape"),
    (_bad(noise=torch.randn(3, 4, 5, 7)), ValueError, "does not broadcast"),
    (_bad(x=torch.randint(0, 3, (2, 3, 5, 7))), TypeError, "x must have dtype"),
    (_bad(styles=torch.ones(2, 3, dtype=torch.int32)), TypeError, "styles must have dtype"),
    (_bad(bias=torch.randn(5)), ValueError, "bias has length 5"),
    (_bad(act="nope"), ValueError, "act must be one of"),
    (_bad(clamp=float("nan")), TypeError, "clamp must be a finite number"),
    (_bad(resample_filter=torch.ones(2, 2, 2)), ValueError, "resample_filter must be a non-empty 1-D or 2-D"),
    (_bad(padding=[1, 2, 3]), ValueError, "padding must be"),
    (_bad(demodulate="yes"), TypeError, "demodulate must be a bool"),
    (_bad(impl="fast"), ValueError, "impl must be one of"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_inputs_raise_named_errors(args, err, match):
    kwargs = dict(args)
    kwargs.setdefault("padding", 1)
    with pytest.raises(err, match=match):
        modulated_conv2d(**kwargs)


def test_device_mismatch_is_refused():
    x, w, s = _inputs()
    with pytest.raises(ValueError, match="styles is on meta"):
        modulated_conv2d(x, w, s.to("meta"), padding=1)


# ------------------------------------------------------------------------------------------------------------
# torch.library / torch.compile on the Triton path

def test_opcheck_custom_ops(device):
    from fusegan.kernels._conv_ops import _conv2d_fused_op, _conv2d_wgrad_op

    x, w, s = _inputs(n=2, i=2, o=3, h=4, w=5, dtype=torch.float64, device=device)
    d = torch.rand(2, 3, dtype=torch.float64, device=device) + 0.5
    nz, b = torch.randn(2, 1, 4, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    for t in (x, w, s, d, nz, b):
        t.requires_grad_()
    aux = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    for save_conv in (False, True):
        for with_aux in (None, aux):
            torch.library.opcheck(_conv2d_fused_op, (x, w, s, d, nz, b, with_aux, 1, 1, 1, 4, 5, False, "lrelu", 0.2,
                                                     1.4, 0.9, save_conv))
    wt = torch.randn(2, 3, 3, 3, dtype=torch.float64).transpose(0, 1).requires_grad_()  # a strided [3, 2] view
    torch.library.opcheck(_conv2d_fused_op, (x, wt, None, None, None, None, None, 2, 1, 1, 7, 9, True, "linear",
                                             0.0, 1.0, None, False))
    torch.library.opcheck(_conv2d_fused_op, (x, wt, s, d, None, None, torch.randn(2, 3, 7, 9, dtype=torch.float64),
                                             2, 1, 1, 7, 9, True, "linear", 0.0, 1.0, None, False))
    torch.library.opcheck(_conv2d_wgrad_op, (torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True),
                                             x, d, s, 1, 1, 1, 3, 3))


@pytest.mark.parametrize("up", [1, 2])
def test_torch_compile_fullgraph_aot_eager(up, device):
    # A fresh Dynamo cache: otherwise the second parametrization recompiles `layer` with `up` as a symbolic int.
    torch._dynamo.reset()
    x, w, s = _inputs(n=1, i=2, o=2, h=4, w=4, device=device)
    nz, b = torch.randn(1, 1, 4 * up, 4 * up), torch.randn(2)
    x.requires_grad_()

    def layer(x, w, s, nz, b):
        return modulated_conv2d(x, w, s, noise=nz, up=up, padding=1, resample_filter=FILTER.to(device), bias=b,
                                act="lrelu", clamp=1.0, impl="triton")

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = compiled(x, w, s, nz, b)
    torch.testing.assert_close(y, layer(x, w, s, nz, b), **FP32_TOL)
    (gx,) = torch.autograd.grad(y.square().sum(), [x])
    x2 = x.detach().requires_grad_()
    (gx_eager,) = torch.autograd.grad(layer(x2, w, s, nz, b).square().sum(), [x2])
    torch.testing.assert_close(gx, gx_eager, **FP32_TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("up,down,k", [(1, 1, 3), (2, 1, 3), (1, 2, 1)])
def test_half_precision_small(up, down, k, dtype, device):
    # fp16/bf16 activations with fp32 weight/styles (as under NVIDIA's mixed precision): fp32 accumulation
    x, w, s = _inputs(k=k, device=device)
    f = FILTER.to(device)
    want = oracle(x, w, s, up=up, down=down, padding=k // 2, f=f, bias=torch.ones(4, device=device), act="lrelu")
    got = modulated_conv2d(x.to(dtype), w, s, up=up, down=down, padding=k // 2, resample_filter=f,
                           bias=torch.ones(4, device=device, dtype=dtype), act="lrelu", impl="triton")
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, **HALF_TOL[dtype])


# ------------------------------------------------------------------------------------------------------------
# GPU only

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("up,down,k", MODES)
def test_half_precision_against_fp32_reference(up, down, k, dtype):
    x, w, s = _inputs(n=4, i=64, o=48, h=17, w=15, k=k, device="cuda")
    f = FILTER.cuda()
    b = torch.randn(48, device="cuda")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # an fp32 reference, not a TF32 one
        want = modulated_conv2d(x, w, s, up=up, down=down, padding=k // 2, resample_filter=f, bias=b, act="lrelu",
                                impl="ref")
    got = modulated_conv2d(x.to(dtype), w, s, up=up, down=down, padding=k // 2, resample_filter=f, bias=b.to(dtype),
                           act="lrelu", impl="triton")
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, **HALF_TOL[dtype])


@pytest.mark.gpu
def test_torch_compile_fullgraph_cuda():
    x, w, s = _inputs(n=4, i=32, o=32, h=16, w=16, device="cuda")
    nz, b = torch.randn(4, 1, 16, 16, device="cuda"), torch.randn(32, device="cuda")
    x.requires_grad_()

    def layer(x):
        return modulated_conv2d(x, w, s, noise=nz, padding=1, bias=b, act="lrelu", impl="triton")

    y = torch.compile(layer, fullgraph=True)(x)
    torch.testing.assert_close(y, layer(x), **FP32_TOL)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
