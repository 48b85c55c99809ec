"""fusegan.kernels: fused Triton ops for image-synthesis networks, each with a plain-PyTorch reference.

Every op module follows one anatomy (see docs/ARCHITECTURE.md): Triton kernels, a reference
implementation, a `torch.library` custom op under `fusegan::` with a differentiable backward, and
the public function, which dispatches through `_dispatch.resolve_impl`.
"""
from ._dispatch import default_impl, interpreter_active, resolve_impl
from ._triton import HAS_TRITON
from .bias_act import activation_funcs, bias_act
from .upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

# The public ops, listed by `fusegan info` with the implementation each would use.
OPS = ("bias_act", "upfirdn2d")

__all__ = ["HAS_TRITON", "OPS", "activation_funcs", "bias_act", "default_impl", "downsample2d", "filter2d",
           "interpreter_active", "resolve_impl", "setup_filter", "upfirdn2d", "upsample2d"]
