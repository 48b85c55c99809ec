"""torch.compile over a function that calls several fusegan ops: one graph, same values as eager."""
import pytest
import torch

from fusegan.kernels import bias_act, setup_filter, upsample2d


def _layer(x, b, f):
    # A StyleGAN2-like step: bias + lrelu + clamp, then a 2x FIR upsample.
    return upsample2d(bias_act(x, b, act="lrelu", clamp=8.0, impl="triton"), f, impl="triton")


def _inputs(device, dtype):
    x = torch.randn(2, 5, 7, 6, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(5, device=device, dtype=dtype, requires_grad=True)
    return x, b, setup_filter([1, 3, 3, 1], device=device)


def _check_compiled(device, dtype, backend, tol):
    x, b, f = _inputs(device, dtype)
    compiled = torch.compile(_layer, fullgraph=True, backend=backend)  # fullgraph: any graph break raises
    y_eager, y_comp = _layer(x, b, f), compiled(x, b, f)
    torch.testing.assert_close(y_comp, y_eager, **tol)
    dy = torch.randn_like(y_eager)
    g_eager = torch.autograd.grad(y_eager, (x, b), dy)
    g_comp = torch.autograd.grad(y_comp, (x, b), dy)
    for a, e in zip(g_comp, g_eager):
        torch.testing.assert_close(a, e, **tol)


def test_compile_fullgraph_over_bias_act_and_upfirdn2d_cpu():
    torch._dynamo.reset()
    _check_compiled(torch.device("cpu"), torch.float32, "aot_eager", dict(rtol=0, atol=0))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compile_fullgraph_over_bias_act_and_upfirdn2d_cuda(dtype):
    torch._dynamo.reset()
    # Inductor leaves the custom ops as calls to the same kernels, so results match eager to rounding.
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    _check_compiled(torch.device("cuda"), dtype, "inductor", tol)
