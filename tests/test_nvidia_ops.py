"""`fusegan.kernels.ops` serves NVIDIA-style code that calls the ops through their modules."""
import torch

from fusegan.kernels.ops import bias_act, conv2d_gradfix, conv2d_resample, upfirdn2d


def test_nvidia_style_calls_work_through_the_modules():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    y = conv2d_resample.conv2d_resample(x=x, w=w, f=f, down=2, padding=1, impl="ref")
    y = bias_act.bias_act(y, torch.zeros(4), act="lrelu", gain=bias_act.activation_funcs["lrelu"].def_gain, impl="ref")
    y = upfirdn2d.upsample2d(y, f, impl="ref")
    assert y.shape == (2, 4, 8, 8)
    with conv2d_gradfix.no_weight_gradients():
        y.sum().backward()
    assert x.grad is not None and w.grad is None
