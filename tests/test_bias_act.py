"""bias_act: the reference against explicit formulas, the Triton path (interpreter on CPU) against the reference,
gradcheck/gradgradcheck in float64 on both, dispatch, argument errors, torch.compile and opcheck."""
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from fusegan.kernels.bias_act import _bias_act_ref, activation_funcs, bias_act

# The package exports the function `bias_act`, which shadows the module of the same name as an attribute.
bias_act_module = importlib.import_module("fusegan.kernels.bias_act")

SQRT2 = math.sqrt(2.0)

# The issue's table (alpha, gain), typed here independently of the module's spec table.
DEFAULTS = {
    "linear": (0.0, 1.0), "relu": (0.0, SQRT2), "lrelu": (0.2, SQRT2), "tanh": (0.0, 1.0), "sigmoid": (0.0, 1.0),
    "elu": (0.0, 1.0), "selu": (0.0, 1.0), "softplus": (0.0, 1.0), "swish": (0.0, SQRT2), "gelu": (0.0, 1.0),
}
ACTS = list(DEFAULTS)
SMOOTH_ACTS = ["tanh", "sigmoid", "elu", "selu", "softplus", "swish", "gelu"]

# Same math in the same precision, different evaluation order: a few ulps.
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def assert_channel_sums_close(db, db_want, dx_want, dim):
    """db = sum of dx over each channel. Summation order differs between implementations, so the tolerance is
    the one the elementwise tolerance implies for a sum: |sum a - sum b| <= rtol * sum |a| (per channel)."""
    tol = TOL[db.dtype]
    bound = tol["rtol"] * dx_want.abs().movedim(dim, 0).reshape(db.shape[0], -1).sum(1) + tol["atol"]
    err = (db - db_want).abs()
    assert (err <= bound).all(), f"channel sums differ by up to {err.max().item():.3g} (bound {bound.min().item():.3g})"


def explicit_act(z, act, alpha):
    """f(z) written out from the definitions."""
    if act == "linear":
        return z
    if act == "relu":
        return torch.where(z > 0, z, torch.zeros_like(z))
    if act == "lrelu":
        return torch.where(z > 0, z, alpha * z)
    if act == "tanh":
        return (torch.exp(z) - torch.exp(-z)) / (torch.exp(z) + torch.exp(-z))  # inputs here stay small
    if act == "sigmoid":
        return 1.0 / (1.0 + torch.exp(-z))
    if act == "elu":
        return torch.where(z > 0, z, torch.expm1(z))
    if act == "selu":
        return SELU_SCALE * torch.where(z > 0, z, SELU_ALPHA * torch.expm1(z))
    if act == "softplus":
        return torch.where(z > 20, z, torch.log1p(torch.exp(z)))
    if act == "swish":
        return z / (1.0 + torch.exp(-z))
    if act == "gelu":
        return 0.5 * z * (1.0 + torch.erf(z / SQRT2))
    raise AssertionError(act)


def explicit_act_grad(z, act, alpha):
    """f'(z) written out by hand (torch's conventions at kinks: relu'(0) = 0, lrelu'(0) = alpha)."""
    one, zero = torch.ones_like(z), torch.zeros_like(z)
    s = 1.0 / (1.0 + torch.exp(-z))
    if act == "linear":
        return one
    if act == "relu":
        return torch.where(z > 0, one, zero)
    if act == "lrelu":
        return torch.where(z > 0, one, alpha * one)
    if act == "tanh":
        return 1.0 - explicit_act(z, "tanh", alpha) ** 2
    if act == "sigmoid":
        return s * (1.0 - s)
    if act == "elu":
        return torch.where(z > 0, one, torch.exp(z))
    if act == "selu":
        return SELU_SCALE * torch.where(z > 0, one, SELU_ALPHA * torch.exp(z))
    if act == "softplus":
        return torch.where(z > 20, one, s)
    if act == "swish":
        return s + z * s * (1.0 - s)
    if act == "gelu":
        return 0.5 * (1.0 + torch.erf(z / SQRT2)) + z * torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    raise AssertionError(act)


def explicit_bias_act(x, b, dim, act, alpha, gain, clamp):
    """(y, dy -> (dx, db)) from the formulas; the gradient is zero wherever |y| >= clamp."""
    alpha = DEFAULTS[act][0] if alpha is None else alpha
    gain = DEFAULTS[act][1] if gain is None else gain
    z = x if b is None else x + b.reshape([-1 if i == dim % x.ndim else 1 for i in range(x.ndim)])
    y = explicit_act(z, act, alpha) * gain
    keep = torch.ones_like(y, dtype=torch.bool) if clamp is None else y.abs() < clamp

    def grads(dy):
        dx = torch.where(keep, dy * gain * explicit_act_grad(z, act, alpha), torch.zeros_like(dy))
        db = None if b is None else dx.movedim(dim, 0).reshape(x.shape[dim], -1).sum(1)
        return dx, db

    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y, grads


def _make_x(case, dtype):
    """x for a case: its shape, layout (contiguous, channels_last, strided slice, permuted dense) and scale."""
    shape, layout = case["shape"], case.get("layout", "contiguous")
    if layout == "channels_last":
        x = torch.randn(shape, dtype=dtype).to(memory_format=torch.channels_last)
    elif layout == "sliced":  # not dense: every other channel of a bigger tensor
        big = list(shape)
        big[1] *= 2
        x = torch.randn(big, dtype=dtype)[:, ::2]
    elif layout == "permuted":  # dense, but neither contiguous nor channels_last
        x = torch.randn([shape[0], shape[2], shape[1]], dtype=dtype).transpose(1, 2)
    else:
        x = torch.randn(shape, dtype=dtype)
    return x * 2.0


CASES = {
    "nchw": dict(shape=(2, 5, 3, 4), dim=1, bias=True),
    "nchw_clamp_gain": dict(shape=(2, 5, 3, 4), dim=1, bias=True, gain=0.7, clamp=0.9),
    "channels_last": dict(shape=(2, 5, 3, 4), dim=1, bias=True, layout="channels_last", clamp=1.3),
    "channels_last_70ch": dict(shape=(2, 70, 3, 2), dim=1, bias=True, layout="channels_last", alpha=0.1),
    "dense_layer": dict(shape=(3, 7), dim=1, bias=True, clamp=1.1),
    "dim0": dict(shape=(4, 3, 5), dim=0, bias=True, gain=2.5),
    "dim2": dict(shape=(4, 3, 5), dim=2, bias=True, clamp=0.5, alpha=0.1),
    "dim_neg2": dict(shape=(4, 3, 5), dim=-2, bias=True, gain=-1.5),
    "one_element": dict(shape=(1,), dim=0, bias=True, clamp=0.3),
    "no_bias_clamp": dict(shape=(2, 5, 3, 4), dim=1, bias=False, clamp=1.0),
    "odd_large": dict(shape=(2, 3, 33, 65), dim=1, bias=True, clamp=2.0),
    "sliced": dict(shape=(3, 5, 7), dim=1, bias=True, layout="sliced"),
    "permuted": dict(shape=(4, 5, 3), dim=1, bias=True, layout="permuted", clamp=1.5),
}


def _inputs(case, dtype):
    x = _make_x(case, dtype)
    b = torch.randn(x.shape[case["dim"]], dtype=dtype) if case["bias"] else None
    kwargs = dict(dim=case["dim"], alpha=case.get("alpha"), gain=case.get("gain"), clamp=case.get("clamp"))
    return x, b, kwargs


def _run(x, b, act, kwargs, impl, dy):
    """Output and gradients (x, b) of bias_act through autograd."""
    x = x.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    y = bias_act(x, b, act=act, impl=impl, **kwargs)
    y.backward(dy)
    return y.detach(), x.grad, None if b is None else b.grad


# ----------------------------------------------------------------------------------------------
# Reference against explicit formulas
# ----------------------------------------------------------------------------------------------
def test_activation_table_matches_the_issue():
    assert set(activation_funcs) == set(ACTS)
    for act, (alpha, gain) in DEFAULTS.items():
        assert activation_funcs[act].def_alpha == alpha, act
        assert activation_funcs[act].def_gain == pytest.approx(gain, rel=1e-15), act
        assert activation_funcs[act]["def_gain"] == activation_funcs[act].def_gain  # NVIDIA's EasyDict access


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("act", ACTS)
def test_reference_matches_explicit_formulas(act, case_name, dtype):
    case = CASES[case_name]
    x, b, kwargs = _inputs(case, dtype)
    dy = torch.randn(x.shape, dtype=dtype)
    y, x_grad, b_grad = _run(x, b, act, kwargs, "ref", dy)
    y_exp, grads = explicit_bias_act(x, b, case["dim"], act, kwargs["alpha"], kwargs["gain"], kwargs["clamp"])
    dx_exp, db_exp = grads(dy)
    torch.testing.assert_close(y, y_exp, **TOL[dtype])
    torch.testing.assert_close(x_grad, dx_exp, **TOL[dtype])
    if b is not None:
        assert_channel_sums_close(b_grad, db_exp, dx_exp, case["dim"])


def test_reference_matches_torch_functional():
    x = torch.randn(3, 4, 5, dtype=torch.float64) * 3
    b = torch.randn(4, dtype=torch.float64)
    z = x + b[:, None]
    expected = {
        "linear": z, "relu": F.relu(z) * SQRT2, "lrelu": F.leaky_relu(z, 0.2) * SQRT2, "tanh": torch.tanh(z),
        "sigmoid": torch.sigmoid(z), "elu": F.elu(z), "selu": F.selu(z), "softplus": F.softplus(z),
        "swish": F.silu(z) * SQRT2, "gelu": F.gelu(z),
    }
    for act in ACTS:
        torch.testing.assert_close(_bias_act_ref(x, b, 1, act), expected[act], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(_bias_act_ref(x, b, 1, "lrelu", alpha=0.05, gain=3.0, clamp=2.0),
                               (F.leaky_relu(z, 0.05) * 3.0).clamp(-2.0, 2.0), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_clamp_boundary_has_zero_gradient(impl):
    """|y| == clamp exactly counts as clamped (torch.clamp alone would pass the gradient there)."""
    x = torch.tensor([[-2.0, -1.0, 0.5, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    y = bias_act(x, act="linear", clamp=2.0, impl=impl)
    y.sum().backward()
    assert y.tolist() == [[-2.0, -1.0, 0.5, 2.0, 2.0]]
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 0.0, 0.0]]
    x = torch.tensor([[1.0, 0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    bias_act(x, act="relu", gain=2.0, clamp=2.0, impl=impl).sum().backward()  # y = 2, 1, 0
    assert x.grad.tolist() == [[0.0, 2.0, 0.0]]


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_negative_clamp_means_off(impl):
    x = torch.randn(2, 3, 4) * 10
    torch.testing.assert_close(bias_act(x, act="lrelu", clamp=-1, impl=impl),
                               bias_act(x, act="lrelu", impl=impl), rtol=0, atol=0)
    zero = bias_act(x, act="lrelu", clamp=0, impl=impl)  # clamp=0 is on: everything clamps to 0
    assert torch.equal(zero, torch.zeros_like(x))


# ----------------------------------------------------------------------------------------------
# Triton (interpreter on CPU) against the reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("act", ACTS)
def test_triton_matches_reference(act, case_name, dtype, device):
    case = CASES[case_name]
    x, b, kwargs = _inputs(case, dtype)
    x, b = x.to(device), None if b is None else b.to(device)
    dy = torch.randn(x.shape, dtype=dtype, device=device)
    y_ref, dx_ref, db_ref = _run(x, b, act, kwargs, "ref", dy)
    y, dx, db = _run(x, b, act, kwargs, "triton", dy)
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    torch.testing.assert_close(dx, dx_ref, **TOL[dtype])
    if b is not None:
        assert_channel_sums_close(db, db_ref, dx_ref, case["dim"])
    if case.get("layout") in ("channels_last", "permuted", "contiguous", None):  # dense: returned as received
        assert y.stride() == x.stride()


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # numpy, in the unused where() branch
@pytest.mark.parametrize("act", ["tanh", "sigmoid", "softplus", "swish", "gelu", "selu", "elu"])
def test_triton_extreme_inputs(act, device):
    """Large |z| must saturate (no inf/NaN from exp overflow), and softplus must switch to z above 20."""
    x = torch.tensor([-500.0, -60.0, -21.0, -19.0, -1e-8, 0.0, 1e-8, 19.0, 21.0, 60.0, 500.0], device=device)
    for dtype in (torch.float32, torch.float64):
        xd = x.to(dtype)
        dy = torch.ones_like(xd)
        y_ref, dx_ref, _ = _run(xd, None, act, {}, "ref", dy)
        y, dx, _ = _run(xd, None, act, {}, "triton", dy)
        assert torch.isfinite(y).all() and torch.isfinite(dx).all()
        torch.testing.assert_close(y, y_ref, **TOL[dtype])
        torch.testing.assert_close(dx, dx_ref, **TOL[dtype])


def test_triton_empty_tensor(device):
    x = torch.randn(2, 0, 3, device=device, requires_grad=True)
    b = torch.randn(0, device=device, requires_grad=True)
    y = bias_act(x, b, act="lrelu", impl="triton")
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape and b.grad.shape == (0,)


def test_triton_gradient_with_other_layout_than_x(device):
    """dy in another layout than x (autograd does not promise one): the launcher aligns it."""
    x = torch.randn(2, 6, 3, 5, device=device).to(memory_format=torch.channels_last).requires_grad_()
    b = torch.randn(6, device=device, requires_grad=True)
    dy = torch.randn(2, 6, 3, 5, device=device)  # contiguous
    y = bias_act(x, b, act="swish", clamp=1.0, impl="triton")
    y.backward(dy)
    _, dx_ref, db_ref = _run(x, b, "swish", dict(clamp=1.0), "ref", dy)
    torch.testing.assert_close(x.grad, dx_ref, **TOL[torch.float32])
    assert_channel_sums_close(b.grad, db_ref, dx_ref, 1)


# ----------------------------------------------------------------------------------------------
# gradcheck / gradgradcheck (float64)
# ----------------------------------------------------------------------------------------------
def _gradcheck_inputs(act, shape, dim, device):
    """x away from the kinks at 0 (|x| in [0.2, 1.2], |b| <= 0.05) and a clamp halfway into the widest gap
    between |y| values, so some outputs clamp and none sits within finite-difference reach of the boundary."""
    gen = torch.Generator().manual_seed(1)
    mag = torch.rand(shape, generator=gen, dtype=torch.float64) + 0.2
    sign = torch.randint(0, 2, shape, generator=gen).to(torch.float64) * 2 - 1
    x = (mag * sign).to(device)
    b = ((torch.rand(shape[dim], generator=gen, dtype=torch.float64) - 0.5) * 0.1).to(device)
    ys = _bias_act_ref(x, b, dim, act).abs().flatten().sort().values
    lo = ys.numel() // 4
    gaps = ys[lo + 1:] - ys[lo:-1]
    i = lo + int(gaps.argmax())
    clamp = float(ys[i] + ys[i + 1]) / 2
    assert float(gaps.max()) > 1e-3
    return x.requires_grad_(), b.requires_grad_(), clamp


@pytest.mark.parametrize("impl", ["ref", "triton"])
@pytest.mark.parametrize("act", ACTS)
def test_gradcheck_and_gradgradcheck(act, impl, device):
    x, b, clamp = _gradcheck_inputs(act, (2, 3, 2), 1, device)

    def fn(x, b):
        return bias_act(x, b, dim=1, act=act, clamp=clamp, impl=impl)

    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize("act", ["swish", "lrelu"])
def test_gradgradcheck_triton_channel_as_column(act, device):
    """The other memory view (channel = fastest axis: dense layers, NHWC), with a non-default alpha/gain."""
    x, b, clamp = _gradcheck_inputs(act, (3, 4), 1, device)

    def fn(x, b):
        return bias_act(x, b, dim=1, act=act, alpha=0.3, gain=1.7, clamp=clamp, impl="triton")

    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_second_order_matches_reference(device):
    """The double-backward term itself (R1-style: grad of a function of the gradient), triton vs reference."""
    x0, b0, clamp = _gradcheck_inputs("gelu", (2, 3, 4), 1, device)
    results = []
    for impl in ("ref", "triton"):
        x, b = x0.detach().clone().requires_grad_(), b0.detach().clone().requires_grad_()
        y = bias_act(x, b, act="gelu", gain=1.3, clamp=clamp, impl=impl)
        gx, gb = torch.autograd.grad((y * y).sum(), (x, b), create_graph=True)
        penalty = gx.square().sum() + gb.square().sum()
        results.append(torch.autograd.grad(penalty, (x, b)))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def spies(monkeypatch):
    """Records which implementation the public function calls."""
    calls = []
    ref, op = bias_act_module._bias_act_ref, bias_act_module._bias_act_op
    monkeypatch.setattr(bias_act_module, "_bias_act_ref", lambda *a, **k: calls.append("ref") or ref(*a, **k))
    monkeypatch.setattr(bias_act_module, "_bias_act_op", lambda *a, **k: calls.append("triton") or op(*a, **k))
    return calls


def test_dispatch_explicit_impl(spies, device):
    x = torch.randn(2, 3, device=device)
    bias_act(x, impl="ref")
    bias_act(x, impl="triton")
    assert spies == ["ref", "triton"]


def test_dispatch_default(spies, device):
    """Triton on the test device: CUDA, or CPU under the interpreter (conftest sets TRITON_INTERPRET=1)."""
    bias_act(torch.randn(2, 3, device=device))
    assert spies == ["triton"]


def test_dispatch_default_on_cpu_without_interpreter(spies, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    bias_act(torch.randn(2, 3))
    assert spies == ["ref"]


@pytest.mark.parametrize("env", ["ref", "triton"])
def test_dispatch_env_var(spies, monkeypatch, env, device):
    monkeypatch.setenv("FUSEGAN_IMPL", env)
    bias_act(torch.randn(2, 3, device=device))
    assert spies == [env]
    bias_act(torch.randn(2, 3, device=device), impl="ref")  # an explicit impl still wins
    assert spies == [env, "ref"]


def test_dispatch_nvidia_impl_cuda_is_automatic(spies, monkeypatch, device):
    # NVIDIA's ops default to impl='cuda': their custom kernel where it can run, else the reference.
    bias_act(torch.randn(2, 3, device=device), impl="cuda")
    bias_act(torch.randn(2, 3, device=device))
    assert spies == ["triton", "triton"]  # CUDA tensors, or CPU ones under the interpreter (as here)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    bias_act(torch.randn(2, 3), impl="cuda")  # CPU tensors without the interpreter: the reference, as NVIDIA's
    assert spies[-1] == "ref"


def test_dispatch_bad_impl(monkeypatch):
    with pytest.raises(ValueError, match="impl"):
        bias_act(torch.randn(2, 3), impl="fast")
    monkeypatch.setenv("FUSEGAN_IMPL", "fast")
    with pytest.raises(ValueError, match="FUSEGAN_IMPL"):
        bias_act(torch.randn(2, 3))


# ----------------------------------------------------------------------------------------------
# Bad input: the right error, naming the argument, before anything runs
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def no_launch(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an implementation ran before the arguments were checked")

    monkeypatch.setattr(bias_act_module, "_bias_act_ref", fail)
    monkeypatch.setattr(bias_act_module, "_bias_act_op", fail)


X = torch.randn(2, 3, 4)


def test_x_not_a_tensor(no_launch):
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        bias_act([[1.0, 2.0]], impl="triton")


def test_x_not_float(no_launch):
    with pytest.raises(TypeError, match="x must have dtype"):
        bias_act(torch.ones(2, 3, dtype=torch.int32), impl="triton")


def test_b_not_1d(no_launch):
    with pytest.raises(ValueError, match="b must be 1-D"):
        bias_act(X, torch.zeros(3, 1), impl="triton")


def test_b_wrong_length(no_launch):
    with pytest.raises(ValueError, match=r"b has length 4 but x.shape\[1\] is 3"):
        bias_act(X, torch.zeros(4), impl="triton")


def test_b_wrong_dtype(no_launch):
    with pytest.raises(TypeError, match="b has dtype torch.float64"):
        bias_act(X, torch.zeros(3, dtype=torch.float64), impl="triton")


def test_b_not_a_tensor(no_launch):
    with pytest.raises(TypeError, match="b must be a torch.Tensor"):
        bias_act(X, [0.0, 0.0, 0.0], impl="triton")


def test_b_wrong_device(no_launch):
    with pytest.raises(ValueError, match="b is on meta"):
        bias_act(X, torch.zeros(3, device="meta"), impl="triton")


@pytest.mark.parametrize("dim", [3, -4])
def test_dim_out_of_range(no_launch, dim):
    with pytest.raises(ValueError, match=f"dim={dim} is out of range"):
        bias_act(X, torch.zeros(3), dim=dim, impl="triton")


def test_dim_not_an_int(no_launch):
    with pytest.raises(TypeError, match="dim must be an int"):
        bias_act(X, torch.zeros(3), dim=1.0, impl="triton")
    with pytest.raises(TypeError, match="dim must be an int"):
        bias_act(X, dim="1", impl="triton")


def test_dim_is_ignored_without_bias(device):
    """As NVIDIA: dim names the axis of b; without b any int goes (the result does not depend on it)."""
    x = torch.randn(2, 3, device=device)
    torch.testing.assert_close(bias_act(x, dim=7, act="relu"), bias_act(x, act="relu"), rtol=0, atol=0)


@pytest.mark.parametrize("act", ["leaky_relu", "Relu", None, 3])
def test_unknown_act(no_launch, act):
    with pytest.raises(ValueError, match=r"act must be one of \[.*'gelu'.*'lrelu'.*\]"):
        bias_act(X, act=act, impl="triton")


@pytest.mark.parametrize("name", ["alpha", "gain", "clamp"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "1.0", True, torch.tensor(1.0)])
def test_non_finite_or_non_number_scalars(no_launch, name, value):
    with pytest.raises(TypeError, match=f"{name} must be a finite number"):
        bias_act(X, act="lrelu", impl="triton", **{name: value})


# ----------------------------------------------------------------------------------------------
# torch.compile and the custom ops
# ----------------------------------------------------------------------------------------------
def test_torch_compile_aot_eager_fullgraph(device):
    def fn(x, b):
        y = bias_act(x, b, act="lrelu", clamp=1.5, impl="triton")
        return bias_act(y, None, act="tanh", gain=2.0, impl="triton")

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 3, 5, device=device).to(memory_format=torch.channels_last)
    b = torch.randn(4, device=device)
    dy = torch.randn(2, 4, 3, 5, device=device)
    results = []
    for f in (fn, compiled):
        xi, bi = x.clone().requires_grad_(), b.clone().requires_grad_()
        y = f(xi, bi)
        y.backward(dy)
        results.append((y.detach(), xi.grad, bi.grad))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_opcheck_custom_ops(device):
    from fusegan.kernels.bias_act import _bias_act_grad2_op, _bias_act_grad_op, _bias_act_op

    def t(*shape, cl=False):
        v = torch.randn(*shape, dtype=torch.float64, device=device)
        return v.to(memory_format=torch.channels_last) if cl else v

    x, b, dy = t(2, 3, 4, 2, cl=True).requires_grad_(), t(3).requires_grad_(), t(2, 3, 4, 2).requires_grad_()
    torch.library.opcheck(_bias_act_op, (x, b, 1, "swish", 0.0, 1.4, 0.8))
    torch.library.opcheck(_bias_act_op, (t(3, 5).requires_grad_(), None, 0, "lrelu", 0.2, 1.4, -1.0))
    torch.library.opcheck(_bias_act_grad_op, (dy, x, b, 1, "tanh", 0.0, 1.0, 0.8, True))
    torch.library.opcheck(_bias_act_grad_op, (dy, x, None, 1, "relu", 0.0, 1.4, -1.0, False))
    # grad2 has no autograd of its own (third order is not supported), so its inputs do not require grad.
    torch.library.opcheck(_bias_act_grad2_op, (t(2, 3, 5), t(2, 3, 5), t(2, 3, 5), t(3), 1, "gelu", 0.0, 1.0, 0.7,
                                               True))


# ----------------------------------------------------------------------------------------------
# GPU only
# ----------------------------------------------------------------------------------------------
# Outputs and dx are compared with the fp32 reference evaluated on the same (rounded) inputs, so the error is
# the final rounding to fp16/bf16 plus a little fp32 arithmetic: half an ulp; the tolerance is two ulps.
LOW_TOL = {torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act", ACTS)
def test_gpu_low_precision_matches_fp32_reference(act, dtype, layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = (torch.randn(4, 96, 17, 33, device="cuda") * 2).to(dtype).contiguous(memory_format=fmt)
    b = torch.randn(96, device="cuda").to(dtype)
    dy = torch.randn(x.shape, device="cuda").to(dtype)
    y, dx, db = _run(x, b, act, dict(clamp=1.5), "triton", dy)
    y_ref, dx_ref, db_ref = _run(x.float(), b.float(), act, dict(clamp=1.5), "ref", dy.float())
    assert y.dtype == dtype and dx.dtype == dtype and db.dtype == dtype
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y.float(), y_ref, **LOW_TOL[dtype])
    torch.testing.assert_close(dx.float(), dx_ref, **LOW_TOL[dtype])
    # db is reduced in fp32 and rounded once: relative error of one ulp, plus fp32 summation noise.
    atol = 1e-4 * float(dx_ref.abs().sum(dim=(0, 2, 3)).max())
    torch.testing.assert_close(db.float(), db_ref, rtol=LOW_TOL[dtype]["rtol"], atol=atol)


@pytest.mark.gpu
def test_gpu_torch_compile_default_backend():
    """Inductor traces the custom ops without a graph break; the same kernels run, so results are identical."""
    def fn(x, b):
        y = bias_act(x, b, act="lrelu", clamp=256.0)
        return bias_act(y, None, act="swish", gain=0.5)

    compiled = torch.compile(fn, fullgraph=True)
    x = torch.randn(4, 64, 16, 16, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    b = torch.randn(64, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(4, 64, 16, 16, device="cuda", dtype=torch.bfloat16)
    results = []
    for f in (fn, compiled):
        xi, bi = x.clone().requires_grad_(), b.clone().requires_grad_()
        y = f(xi, bi)
        y.backward(dy)
        results.append((y.detach(), xi.grad, bi.grad))
    assert results[1][0].is_contiguous(memory_format=torch.channels_last)
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.gpu
def test_gpu_more_than_2_pow_31_elements():
    """int64 offsets: the tail of a tensor past 2**31 elements is computed, and computed right, both ways."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs about 18 GiB of free GPU memory")
    x = torch.randn(2, 1024, 1024, 1025, device="cuda", dtype=torch.bfloat16)  # 2_149_580_800 elements
    b = torch.randn(1024, device="cuda", dtype=torch.bfloat16)
    x.requires_grad_()
    y = bias_act(x, b, act="lrelu", clamp=1.0, impl="triton")
    dy = torch.randn_like(y)
    y.backward(dy)
    tail = (slice(1, 2), slice(1000, 1024))
    _, dx_ref, _ = _run(x.detach()[tail].float(), b[1000:].float(), "lrelu", dict(dim=1, clamp=1.0), "ref",
                        dy[tail].float())
    y_ref = _bias_act_ref(x.detach()[tail].float(), b[1000:].float(), 1, "lrelu", clamp=1.0)
    torch.testing.assert_close(y[tail].float(), y_ref, **LOW_TOL[torch.bfloat16])
    torch.testing.assert_close(x.grad[tail].float(), dx_ref, **LOW_TOL[torch.bfloat16])
