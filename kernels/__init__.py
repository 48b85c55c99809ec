"""fusegan.kernels: fused Triton ops for image-synthesis networks, each with a plain-PyTorch reference.

Every op module follows one anatomy (see docs/ARCHITECTURE.md): Triton kernels, a reference
implementation, a `torch.library` custom op under `fusegan::` with a differentiable backward, and
the public function, which dispatches through `_dispatch.resolve_impl`.
"""
from ._dispatch import default_impl, interpreter_active, resolve_impl
from ._triton import HAS_TRITON
from .bias_act import activation_funcs, bias_act
from ._conv_ops import no_weight_gradients
from .conv2d_resample import conv2d_resample
from .conv_norm_act import Conv2dNormAct, conv2d_norm_act
from .gan_loss import gan_loss
from .minibatch_std import minibatch_std
from .modulated_conv2d import modulated_conv2d
from .normalize import normalize_2nd_moment
from .regularizers import gradient_penalty, path_length_penalty, r1_penalty
from .upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upfirdn2d_bias_act, upsample2d
from .vae_loss import vae_loss

# The public ops, listed by `fusegan info` with the implementation each would use.
OPS = (
    "bias_act",
    "upfirdn2d",
    "upfirdn2d_bias_act",
    "modulated_conv2d",
    "conv2d_resample",
    "conv2d_norm_act",
    "gan_loss",
    "r1_penalty",
    "gradient_penalty",
    "path_length_penalty",
    "vae_loss",
    "minibatch_std",
    "normalize_2nd_moment",
)

__all__ = [
    "Conv2dNormAct",
    "HAS_TRITON",
    "OPS",
    "activation_funcs",
    "bias_act",
    "conv2d_norm_act",
    "conv2d_resample",
    "default_impl",
    "downsample2d",
    "filter2d",
    "gan_loss",
    "gradient_penalty",
    "interpreter_active",
    "minibatch_std",
    "modulated_conv2d",
    "no_weight_gradients",
    "normalize_2nd_moment",
    "path_length_penalty",
    "r1_penalty",
    "resolve_impl",
    "setup_filter",
    "upfirdn2d",
    "upfirdn2d_bias_act",
    "upsample2d",
    "vae_loss",
]
