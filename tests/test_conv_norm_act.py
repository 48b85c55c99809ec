"""conv2d_norm_act / Conv2dNormAct against nn.Conv2d|ConvTranspose2d + nn.BatchNorm2d|InstanceNorm2d + activation.

The Triton path runs in Triton's CPU interpreter here (tiny shapes); the reference path is checked
against the same nn modules, so both are compared with an independent implementation.
"""
import copy

import pytest
import torch
import torch.nn as nn
from torch.autograd import gradcheck, gradgradcheck

from fusegan.kernels import _conv_norm_act_ops as ops
from fusegan.kernels.conv_norm_act import Conv2dNormAct, conv2d_norm_act

# Tolerances per dtype (outputs are normalized, so O(1); stats are sums over few elements).
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}
GPU_TOL = {torch.float16: dict(atol=2e-2, rtol=2e-2), torch.bfloat16: dict(atol=8e-2, rtol=8e-2)}

ACT_MODULES = {"linear": None, "relu": nn.ReLU(), "lrelu": nn.LeakyReLU(0.2), "tanh": nn.Tanh(),
               "sigmoid": nn.Sigmoid()}

# (name, conv kwargs, transposed, norm kwargs or None, act): every kernel size / stride / mode the GANs use.
CASES = [
    ("k1s1_batch_relu", dict(kernel_size=1), False, ("batch", {}), "relu"),
    ("k3s1_batch_lrelu", dict(kernel_size=3, padding=1, bias=True), False, ("batch", {}), "lrelu"),
    ("k3s2_instance_affine_relu", dict(kernel_size=3, stride=2, padding=1), False,
     ("instance", dict(affine=True)), "relu"),
    ("k4s2_dcgan_d", dict(kernel_size=4, stride=2, padding=1, bias=False), False, ("batch", {}), "lrelu"),
    ("k4s2_dcgan_g_transposed", dict(kernel_size=4, stride=2, padding=1, bias=False), True, ("batch", {}), "relu"),
    ("k4s1_transposed_tanh", dict(kernel_size=4, stride=1, padding=0), True, None, "tanh"),
    ("k7s1_reflect_cyclegan", dict(kernel_size=7, padding=3, padding_mode="reflect"), False,
     ("instance", dict(affine=True)), "relu"),
    ("k3_reflect_instance_tracked", dict(kernel_size=3, padding=1, padding_mode="reflect"), False,
     ("instance", dict(affine=True, track_running_stats=True)), "linear"),
    ("k3s2_transposed_output_padding", dict(kernel_size=3, stride=2, padding=1, output_padding=1), True,
     ("instance", {}), "relu"),
    ("k3_dilated_sigmoid", dict(kernel_size=3, padding=2, dilation=2), False, None, "sigmoid"),
    ("k3_batch_no_affine_tanh", dict(kernel_size=3, padding=1), False, ("batch", dict(affine=False)), "tanh"),
]


def _build(case, in_ch=3, out_ch=4, dtype=torch.float32):
    _, conv_kw, transposed, norm_spec, act = case
    conv_cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    conv = conv_cls(in_ch, out_ch, dtype=dtype, **conv_kw)
    norm = None
    if norm_spec is not None:
        kind, kw = norm_spec
        norm = (nn.BatchNorm2d if kind == "batch" else nn.InstanceNorm2d)(out_ch, dtype=dtype, **kw)
        with torch.no_grad():  # non-trivial affine and running stats
            if norm.weight is not None:
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)
            if norm.running_mean is not None:
                norm.running_mean.uniform_(-0.2, 0.2)
                norm.running_var.uniform_(0.5, 1.5)
    act_module = copy.deepcopy(ACT_MODULES[act])
    reference = nn.Sequential(*[m for m in (conv, norm, act_module) if m is not None])
    fused = Conv2dNormAct.from_modules(copy.deepcopy(conv), copy.deepcopy(norm), act_module)
    return reference, fused


def _buffers(module):
    return {k: v.clone() for k, v in module.named_buffers()}


def _assert_buffers_equal(a, b, tol):
    ba, bb = list(a.named_buffers()), list(b.named_buffers())
    assert len(ba) == len(bb)
    for (ka, va), (kb, vb) in zip(ba, bb):
        torch.testing.assert_close(va, vb, **tol, msg=f"buffer {ka} differs")


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_nn_modules_train_and_eval(case, impl, device):
    reference, fused = _build(case)
    reference, fused = reference.to(device), fused.to(device)
    fused.impl = impl
    tol = TOL[torch.float32]
    x = torch.randn(2, 3, 6, 6, device=device)
    # Training: outputs, gradients of every parameter and the input, running-stat updates.
    steps = 2 if any(True for _ in reference.buffers()) else 1
    for _ in range(steps):  # twice with running stats, so the second step starts from updated ones
        xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_r, out_f = reference(xr), fused(xf)
        torch.testing.assert_close(out_f, out_r, **tol)
        g = torch.randn_like(out_r)
        out_r.backward(g)
        out_f.backward(g)
        torch.testing.assert_close(xf.grad, xr.grad, **tol)
        ref_params = [p for m in reference for p in m.parameters()]
        for pf, pr in zip(fused.parameters(), ref_params):
            torch.testing.assert_close(pf.grad, pr.grad, **tol)
        _assert_buffers_equal(fused, reference, tol)
    # Eval: BatchNorm (and tracked InstanceNorm) use the running stats, folded into the conv.
    reference.eval()
    fused.eval()
    buffers_before = _buffers(fused)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), reference(x), **tol)
    for k, v in fused.named_buffers():
        assert torch.equal(v, buffers_before[k]), f"eval mode changed buffer {k}"


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_batch_of_one_and_momentum_none(impl, device):
    conv = nn.Conv2d(3, 4, 3, padding=1)
    norm = nn.BatchNorm2d(4, momentum=None)  # cumulative moving average through num_batches_tracked
    reference = nn.Sequential(conv, norm, nn.ReLU()).to(device)
    fused = Conv2dNormAct.from_modules(copy.deepcopy(conv), copy.deepcopy(norm), nn.ReLU(), impl=impl).to(device)
    for _ in range(3):
        x = torch.randn(1, 3, 5, 5, device=device)
        torch.testing.assert_close(fused(x), reference(x), **TOL[torch.float32])
    _assert_buffers_equal(fused, reference, TOL[torch.float32])
    assert int(fused.norm.num_batches_tracked) == 3


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_unbatched_image_as_torch_takes_it(impl, device):
    # nn.Conv2d and nn.InstanceNorm2d take one [C, H, W] image; a fused chain of them must too (it raised).
    conv, act = nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.2)
    for norm in (None, nn.InstanceNorm2d(4, affine=True, track_running_stats=True)):
        reference = nn.Sequential(*[m for m in (conv, norm, act) if m is not None]).to(device)
        fused = Conv2dNormAct.from_modules(copy.deepcopy(conv), copy.deepcopy(norm), act, impl=impl).to(device)
        x = torch.randn(3, 6, 5, device=device)
        out = fused(x)
        assert out.shape == (4, 6, 5)
        torch.testing.assert_close(out, reference(x), **TOL[torch.float32])
        if norm is not None:
            _assert_buffers_equal(fused, reference, TOL[torch.float32])
    # nn.BatchNorm2d refuses 3-D input; so does the fused layer, with an error naming x.
    fused = Conv2dNormAct.from_modules(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), impl=impl).to(device)
    with pytest.raises(ValueError, match="x"):
        fused(torch.randn(3, 6, 5, device=device))


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_same_errors_as_torch_for_single_values(impl, device):
    # InstanceNorm with a 1x1 output in training, and BatchNorm with one value per channel.
    x = torch.randn(2, 3, 1, 1, device=device)
    w = torch.randn(4, 3, 1, 1, device=device)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        nn.InstanceNorm2d(4).to(device)(nn.functional.conv2d(x, w))
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        conv2d_norm_act(x, w, norm="instance", impl=impl)
    x1 = x[:1]
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm2d(4).to(device)(nn.functional.conv2d(x1, w))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        conv2d_norm_act(x1, w, norm="batch", impl=impl)
    # In eval mode a single value is fine, as in torch.
    rm, rv = torch.zeros(4, device=device), torch.ones(4, device=device)
    out = conv2d_norm_act(x1, w, norm="batch", running_mean=rm, running_var=rv, training=False, impl=impl)
    torch.testing.assert_close(out, nn.functional.conv2d(x1, w) / (1 + 1e-5) ** 0.5)


@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[6]], ids=lambda c: c[0])
def test_channels_last(case, device):
    reference, fused = _build(case)
    reference, fused = reference.to(device), fused.to(device)
    x = torch.randn(2, 3, 6, 6, device=device).to(memory_format=torch.channels_last).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    out = fused(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    out_r = reference(xr)
    torch.testing.assert_close(out, out_r, **TOL[torch.float32])
    g = torch.randn_like(out_r)
    out.backward(g)
    out_r.backward(g)
    torch.testing.assert_close(x.grad, xr.grad, **TOL[torch.float32])


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("x_layout,w_layout,transposed,norm", [
    (torch.contiguous_format, torch.channels_last, False, "batch"),  # torch's conv2d follows a channels_last weight
    (torch.channels_last, torch.contiguous_format, True, "instance"),  # F.instance_norm's reshape drops NHWC
])
def test_returns_the_layout_of_x(x_layout, w_layout, transposed, norm, impl, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 5, generator=g).to(device).contiguous(memory_format=x_layout)
    w = torch.randn(*((3, 4) if transposed else (4, 3)), 3, 3, generator=g).to(device)
    w = w.contiguous(memory_format=w_layout)
    y = conv2d_norm_act(x, w, padding=1, transposed=transposed, norm=norm, act="relu", impl=impl)
    assert y.is_contiguous(memory_format=x_layout)
    want = conv2d_norm_act(x.contiguous(), w.contiguous(), padding=1, transposed=transposed, norm=norm, act="relu",
                           impl="ref")
    torch.testing.assert_close(y, want, **TOL[torch.float32])


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_a_latent_follows_a_channels_last_weight(impl, device):
    # A [N, C, 1, 1] latent is NCHW- and NHWC-contiguous at once; torch's transposed conv follows the
    # channels_last weight (DCGAN's first G layer) and both paths keep that layout, so that a channels_last
    # DCGAN G stays channels_last from its latent on. Values and gradients as with NCHW tensors.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 6, 1, 1, generator=g).to(device).requires_grad_()
    w = torch.randn(6, 5, 4, 4, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    w.requires_grad_()
    y = conv2d_norm_act(z, w, transposed=True, norm="batch", act="relu", impl=impl)
    assert y.shape == (4, 5, 4, 4) and y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    z_ref, w_ref = z.detach().clone().requires_grad_(), w.detach().contiguous().requires_grad_()
    want = conv2d_norm_act(z_ref, w_ref, transposed=True, norm="batch", act="relu", impl="ref")
    assert want.is_contiguous()
    torch.testing.assert_close(y, want, **TOL[torch.float32])
    dy = torch.randn(want.shape, generator=g).to(device)
    y.backward(dy)
    want.backward(dy)
    torch.testing.assert_close(z.grad, z_ref.grad, **TOL[torch.float32])
    torch.testing.assert_close(w.grad, w_ref.grad, **TOL[torch.float32])


def test_triton_matches_reference_in_float64(device):
    # Tighter than fp32: the kernels compute in fp64 for fp64 inputs, including the statistics.
    for case in (CASES[2], CASES[4], CASES[6], CASES[9]):
        _, fused = _build(case, dtype=torch.float64)
        fused = fused.to(device)
        x = torch.randn(2, 3, 6, 6, device=device, dtype=torch.float64)
        fused_ref = copy.deepcopy(fused)
        fused.impl, fused_ref.impl = "triton", "ref"
        torch.testing.assert_close(fused(x), fused_ref(x), **TOL[torch.float64])
        _assert_buffers_equal(fused, fused_ref, TOL[torch.float64])


# ----------------------------------------------------------------------------------------------
# Gradients of first and second order in float64
# ----------------------------------------------------------------------------------------------
GRAD_CASES = [  # (conv kwargs, transposed, norm, act)
    (dict(padding=1), False, "batch", "relu"),
    (dict(stride=2, padding=1, output_padding=1), True, "instance", "tanh"),
    (dict(padding=1, padding_mode="reflect"), False, None, "lrelu"),
    (dict(stride=2, padding=1), False, "instance", "sigmoid"),
]


def _grad_inputs(conv_kw, transposed, norm, device):
    f64 = dict(dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(2, 2, 3, 3, **f64)
    w = torch.randn(*((2, 2) if transposed else (2, 2)), 3, 3, **f64)
    b = torch.randn(2, **f64)
    inputs = [x, w, b]
    if norm is not None:
        inputs += [torch.rand(2, **f64) + 0.5, torch.randn(2, **f64)]
    return inputs


def _grad_fn(conv_kw, transposed, norm, act, impl):
    kw = dict(conv_kw, transposed=transposed, act=act, impl=impl)
    if norm is None:
        return lambda x, w, b: conv2d_norm_act(x, w, b, **kw)
    return lambda x, w, b, nw, nb: conv2d_norm_act(x, w, b, norm=norm, norm_weight=nw, norm_bias=nb, **kw)


@pytest.mark.parametrize("spec", GRAD_CASES, ids=lambda s: f"{s[2]}-{s[3]}-{'T' if s[1] else 'N'}")
def test_gradcheck_reference(spec):
    conv_kw, transposed, norm, act = spec
    inputs = _grad_inputs(conv_kw, transposed, norm, "cpu")
    fn = _grad_fn(conv_kw, transposed, norm, act, "ref")
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


@pytest.mark.parametrize("spec", GRAD_CASES, ids=lambda s: f"{s[2]}-{s[3]}-{'T' if s[1] else 'N'}")
def test_gradcheck_triton(spec, device):
    # fast_mode checks random projections of the Jacobians (the interpreter is too slow for full
    # Jacobians of the double backward); it fails on any wrong entry with probability ~1.
    # The undefined-gradient checks (backward given None for some outputs) run on the first case and the one
    # without norm only.
    conv_kw, transposed, norm, act = spec
    inputs = _grad_inputs(conv_kw, transposed, norm, device)
    fn = _grad_fn(conv_kw, transposed, norm, act, "triton")
    check_undefined = spec is GRAD_CASES[0] or norm is None  # None: the lrelu epilogue's saved pre-activation
    assert gradcheck(fn, inputs, fast_mode=True, check_undefined_grad=check_undefined)
    assert gradgradcheck(fn, inputs, fast_mode=True, check_undefined_grad=check_undefined)


@pytest.mark.parametrize("norm,act", [(None, "lrelu"), ("batch", "tanh"), ("instance", "linear")])
def test_penalty_through_two_layers_matches_reference(norm, act, device):
    # R1 / WGAN-GP through a stack: the first layer's output gradient depends on its own output (through the second
    # layer), unlike gradgradcheck's independent grad_outputs. The reference-vjp double backward used to treat that
    # gradient and the output as one graph: "backward through the graph a second time" (and a doubled term).
    g = torch.Generator().manual_seed(0)
    f64 = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device)  # noqa: E731
    x0, w1, w2 = f64(2, 2, 4, 4), f64(3, 2, 3, 3), f64(1, 3, 3, 3)
    results = []
    for impl in ("triton", "ref"):
        x, w1_ = x0.clone().requires_grad_(), w1.clone().requires_grad_()
        h = conv2d_norm_act(x, w1_, padding=1, norm=norm, act=act, impl=impl)
        out = conv2d_norm_act(h, w2, padding=1, act="lrelu", alpha=0.2, impl=impl)
        gx, = torch.autograd.grad(out.sum(), x, create_graph=True)
        results.append(torch.autograd.grad(gx.square().sum(), [w1_, x]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("view", ["strided", "expanded"])
@pytest.mark.parametrize("norm", [None, "batch"])
def test_non_contiguous_parameter_vectors(norm, view, device):
    # bias / norm_weight / norm_bias given as strided or stride-0 views: the same result and gradients as their
    # contiguous copies (the kernels used to read them at unit stride).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64).to(device)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64).to(device)
    base = torch.randn(8, generator=g, dtype=torch.float64).to(device).requires_grad_()
    results = []
    for impl in ("triton", "ref"):
        vec = base[::2] if view == "strided" else base[1:2].expand(4)
        vecs = dict(bias=vec) if norm is None else dict(norm_weight=vec, norm_bias=base[1::2])
        y = conv2d_norm_act(x, w, padding=1, norm=norm, act="lrelu", alpha=0.2, impl=impl, **vecs)
        results.append((y, *torch.autograd.grad(y.square().sum(), [base])))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_triton_first_order_gradient_full_jacobian(device):
    # One full (not fast-mode) gradcheck, of the fused BatchNorm backward kernels.
    f64 = dict(dtype=torch.float64, device=device, requires_grad=True)
    x, w = torch.randn(2, 1, 2, 3, **f64), torch.randn(2, 1, 1, 2, **f64)
    nw, nb = torch.rand(2, **f64) + 0.5, torch.randn(2, **f64)
    fn = lambda x, w, nw, nb: conv2d_norm_act(x, w, norm="batch", norm_weight=nw, norm_bias=nb,  # noqa
                                              act="lrelu", impl="triton")
    assert gradcheck(fn, [x, w, nw, nb])


# ----------------------------------------------------------------------------------------------
# Module / checkpoints
# ----------------------------------------------------------------------------------------------
def test_module_state_dict_keys_match_nn_modules():
    m = Conv2dNormAct(3, 8, 4, stride=2, padding=1, norm="batch", act="lrelu", alpha=0.2)
    conv, norm = nn.Conv2d(3, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8)
    expected = {f"conv.{k}" for k in conv.state_dict()} | {f"norm.{k}" for k in norm.state_dict()}
    assert set(m.state_dict()) == expected
    plain = nn.Module()
    plain.conv, plain.norm = conv, norm
    torch.nn.init.normal_(conv.weight)
    m.load_state_dict(plain.state_dict())  # nn -> fused
    assert torch.equal(m.conv.weight, conv.weight)
    plain.load_state_dict(m.state_dict())  # fused -> nn
    t = Conv2dNormAct(4, 2, 4, stride=2, padding=1, transposed=True, norm="instance", act="tanh")
    assert set(t.state_dict()) == {"conv.weight"}  # no bias before a norm by default
    assert isinstance(t.conv, nn.ConvTranspose2d) and isinstance(t.norm, nn.InstanceNorm2d)
    assert t(torch.randn(2, 4, 3, 3)).shape == (2, 2, 6, 6)


def test_module_rejects_unsupported_layers():
    with pytest.raises(ValueError, match="groups"):
        Conv2dNormAct.from_modules(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="num_features"):
        Conv2dNormAct.from_modules(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="norm must be one of"):
        Conv2dNormAct(3, 4, 3, norm="layer")


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
def _bad(**overrides):
    args = dict(x=torch.randn(2, 3, 6, 6), weight=torch.randn(4, 3, 3, 3))
    args.update(overrides)
    return args


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("overrides, error, match", [
    (dict(weight=torch.randn(4, 5, 3, 3)), ValueError, "x has 3 channels .* expects 5 input channels"),
    (dict(weight=torch.randn(5, 4, 3, 3), transposed=True), ValueError, "transposed conv weight .* expects 5"),
    (dict(norm="batch", norm_weight=torch.ones(5)), ValueError, "norm_weight must have 4 elements"),
    (dict(norm="batch", running_mean=torch.ones(3), running_var=torch.ones(3)), ValueError,
     "running_mean must have 4"),
    (dict(norm="layer"), ValueError, "norm must be one of"),
    (dict(act="gelu"), ValueError, "act must be one of"),
    (dict(padding_mode="circular"), ValueError, "padding_mode must be one of"),
    (dict(x=torch.randn(3, 6, 6)), ValueError, "x must be 4-D"),
    (dict(weight=torch.randn(4, 3, 3)), ValueError, "weight must be 4-D"),
    (dict(x=torch.randn(2, 3, 6, 6, dtype=torch.float64)), TypeError, "weight must have x's dtype"),
    (dict(x=torch.randint(0, 3, (2, 3, 6, 6))), TypeError, "x must have dtype"),
    (dict(bias=torch.randn(5)), ValueError, "bias must have 4 elements"),
    (dict(norm_weight=torch.ones(4)), ValueError, "norm_weight was given but norm is None"),
    (dict(act="relu", alpha=0.2), ValueError, "alpha is only used by act='lrelu'"),
    (dict(act="lrelu", alpha=-0.1), ValueError, "alpha must be >= 0"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(padding=1.5), TypeError, "padding must be an int"),
    (dict(padding=6, padding_mode="reflect"), ValueError, "padding .* must be smaller"),
    (dict(weight=torch.randn(3, 4, 3, 3), transposed=True, padding_mode="reflect"), ValueError,
     "padding_mode must be 'zeros' for a transposed conv"),
    (dict(norm="batch", training=False), ValueError, "needed when training=False"),
    (dict(weight=torch.randn(4, 3, 9, 9)), ValueError, "conv output would be empty"),
    (dict(norm="batch", eps=0.0), ValueError, "eps must be > 0"),
    (dict(norm="batch", norm_weight=torch.ones(4, dtype=torch.float64)), TypeError, "norm_weight must have x's dtype"),
    (dict(x=torch.randn(2, 3, 6, 6, dtype=torch.float64), weight=torch.randn(4, 3, 3, 3, dtype=torch.float64),
          norm="batch", running_mean=torch.zeros(4), running_var=torch.ones(4)), TypeError,
     "running_mean must have x's dtype"),
    (dict(x=torch.randn(2, 3, 6, 6).bfloat16(), weight=torch.randn(4, 3, 3, 3).bfloat16(), norm="instance",
          norm_bias=torch.ones(4, dtype=torch.float16)), TypeError, "norm_bias must have x's dtype"),
])
def test_bad_input(overrides, error, match, impl):
    with pytest.raises(error, match=match):
        conv2d_norm_act(**_bad(**overrides), impl=impl)


# ----------------------------------------------------------------------------------------------
# torch.compile / torch.library
# ----------------------------------------------------------------------------------------------
def test_torch_compile_fullgraph_aot_eager(device):
    torch._dynamo.reset()
    conv, norm = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    eager = Conv2dNormAct.from_modules(copy.deepcopy(conv), copy.deepcopy(norm), nn.LeakyReLU(0.2),
                                       impl="triton").to(device)
    compiled_module = Conv2dNormAct.from_modules(conv, norm, nn.LeakyReLU(0.2), impl="triton").to(device)
    compiled = torch.compile(compiled_module, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 5, 5, device=device)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_e, out_c = eager(xe), compiled(xc)
    torch.testing.assert_close(out_c, out_e, **TOL[torch.float32])
    out_e.square().sum().backward()
    out_c.square().sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, **TOL[torch.float32])
    torch.testing.assert_close(compiled_module.conv.weight.grad, eager.conv.weight.grad, **TOL[torch.float32])
    _assert_buffers_equal(compiled_module, eager, TOL[torch.float32])


def test_opcheck_custom_ops(device):
    f32 = dict(device=device)
    x = torch.randn(2, 2, 4, 4, **f32, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, **f32, requires_grad=True)
    b = torch.randn(3, **f32, requires_grad=True)
    geo = ([1, 1], [1, 1], [1, 1])
    torch.library.opcheck(ops._cna_conv_op, (x, w, b, *geo, False, True, 4, 4, 2, 0.2, 1))
    torch.library.opcheck(ops._cna_conv_op, (x, w.transpose(0, 1).detach().clone().requires_grad_(), None,
                                             [2, 2], [1, 1], [1, 1], True, False, 7, 7, 3, 0.0, 0))
    s = torch.randn(2, 3, 4, 4, **f32, requires_grad=True)
    torch.library.opcheck(ops._cna_wgrad_op, (x, s, *geo, True, 3, 3))
    y = torch.randn(2, 3, 4, 4, **f32, requires_grad=True)
    var, mean = torch.var_mean(y.detach(), dim=(0, 2, 3), unbiased=False)
    gamma, beta = torch.rand(3, **f32, requires_grad=True), torch.randn(3, **f32, requires_grad=True)
    torch.library.opcheck(ops._cna_norm_act_op, (y, mean, torch.rsqrt(var + 1e-5), gamma, beta, 1e-5, False, 1, 0.0))
    g = torch.randn(2, 3, 4, 4, **f32)
    torch.library.opcheck(ops._cna_norm_act_bwd_op,
                          (g, y.detach(), mean, torch.rsqrt(var + 1e-5), gamma.detach(), beta.detach(), 1e-5, False,
                           3, 0.0))
    torch.library.opcheck(ops._cna_act_grad_op, (g, torch.sigmoid(y.detach()), 4, 0.0))


# ----------------------------------------------------------------------------------------------
# GPU only
# ----------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[6]], ids=lambda c: c[0])
def test_half_precision_against_fp32_reference(case, dtype):
    reference, fused = _build(case)
    reference, fused = reference.cuda(), fused.cuda()
    fused_half = copy.deepcopy(fused).to(dtype)
    for m in fused_half.modules():  # norms keep fp32 parameters and stats, as under autocast
        if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
            m.float()
    x = torch.randn(4, 3, 16, 16, device="cuda")
    out = fused_half(x.to(dtype))
    assert out.dtype == dtype
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = reference(x)
    torch.testing.assert_close(out.float(), expected, **GPU_TOL[dtype])


@pytest.mark.gpu
def test_torch_compile_inductor_on_cuda():
    m = Conv2dNormAct(8, 16, 4, stride=2, padding=1, norm="batch", act="lrelu", alpha=0.2).cuda()
    ref = copy.deepcopy(m)
    ref.impl = "ref"
    compiled = torch.compile(m, fullgraph=True)
    x = torch.randn(4, 8, 32, 32, device="cuda")
    torch.testing.assert_close(compiled(x), ref(x), atol=5e-3, rtol=5e-3)  # TF32 convs on both sides


@pytest.mark.parametrize("norm", [None, "batch-eval"])
def test_leaky_relu_output_may_be_changed_in_place_before_backward(norm, device, monkeypatch):
    # torch's LeakyReLU saves its input, so `y = lrelu(conv(x)); y += skip` trains. The fused conv + lrelu epilogue
    # (no norm, or BatchNorm folded in eval mode) used to save y for the derivative: autograd's version check then
    # failed. It saves the pre-activation instead, and only when a gradient will flow.
    saved = []
    conv_fwd = ops.K.conv_fwd
    # save_pre of every launch with an activation epilogue (the backward's convs have none)
    monkeypatch.setattr(ops.K, "conv_fwd", lambda *a: (a[7] and saved.append(a[-1])) or conv_fwd(*a))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64).to(device)
    w0 = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64).to(device)
    kw = dict(act="lrelu", alpha=0.2, padding=1)
    if norm:
        kw.update(norm="batch", training=False, running_mean=torch.rand(4, dtype=torch.float64, device=device),
                  running_var=torch.rand(4, dtype=torch.float64, device=device) + 0.5)
    grads = []
    for impl in ("triton", "ref"):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = conv2d_norm_act(x, w, impl=impl, **kw)
        y.mul_(3).add_(1)
        y.square().sum().backward()
        grads.append((x.grad, w.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    assert saved == [True]
    with torch.no_grad():
        conv2d_norm_act(x0, w0, impl="triton", **kw)
    conv2d_norm_act(x0, w0, impl="triton", **kw)  # no input needs a gradient
    conv2d_norm_act(x0, w0.requires_grad_(), impl="triton", **dict(kw, act="tanh", alpha=None))  # tanh' reads y
    assert saved == [True, False, False, False]



def test_conv_parameters_under_a_conv_layers_names():
    # The PyTorch DCGAN example's weights_init, applied to a model whose conv + BN + ReLU chains were fused.
    def weights_init(m):
        classname = m.__class__.__name__
        if classname.find("Conv") != -1:
            nn.init.normal_(m.weight.data, 0.0, 0.02)
        elif classname.find("BatchNorm") != -1:
            nn.init.normal_(m.weight.data, 1.0, 0.02)
            nn.init.constant_(m.bias.data, 0)

    layer = Conv2dNormAct(3, 4, 3, norm="batch", act="relu")
    assert layer.weight is layer.conv.weight and layer.bias is None  # no conv bias before a norm
    plain = Conv2dNormAct(3, 4, 3)
    assert plain.bias is plain.conv.bias and plain.bias is not None
    torch.manual_seed(0)
    layer.apply(weights_init)
    assert abs(layer.conv.weight.std().item() - 0.02) < 0.01 and layer.norm.bias.abs().max() == 0
    assert [name for name, _ in layer.named_parameters()] == ["conv.weight", "norm.weight", "norm.bias"]
