"""Drop-in for NVIDIA StyleGAN2-ADA's `torch_utils.ops`: change one import line.

    from torch_utils.ops import bias_act, upfirdn2d, conv2d_resample, conv2d_gradfix   # before
    from fusegan.kernels.ops import bias_act, upfirdn2d, conv2d_resample, conv2d_gradfix  # after

NVIDIA's code calls these as modules (`bias_act.bias_act(...)`, `upfirdn2d.setup_filter(...)`),
while `fusegan.kernels` exports the functions themselves under the same names, shadowing the
modules as package attributes. This file hands out the modules.
"""
import importlib
import types

bias_act = importlib.import_module("fusegan.kernels.bias_act")
upfirdn2d = importlib.import_module("fusegan.kernels.upfirdn2d")
conv2d_resample = importlib.import_module("fusegan.kernels.conv2d_resample")
# NVIDIA's conv2d_gradfix is used by the training loop only for `no_weight_gradients()`.
conv2d_gradfix = types.SimpleNamespace(
    no_weight_gradients=importlib.import_module("fusegan.kernels._conv_ops").no_weight_gradients)

__all__ = ["bias_act", "conv2d_gradfix", "conv2d_resample", "upfirdn2d"]
