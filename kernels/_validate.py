"""Argument checks shared by every op. Each raises before any kernel launch and names the argument."""
import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(x, name, ndim=None, min_ndim=None, dtypes=FLOAT_DTYPES):
    """`x` must be a floating tensor of an accepted dtype, and of rank `ndim` (or at least `min_ndim`)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if dtypes is not None and x.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dims, got shape {tuple(x.shape)}")
    return x


def check_same_device(ref, ref_name, other, name):
    """`other` must live on the same device as `ref`."""
    if other is not None and other.device != ref.device:
        raise ValueError(f"{name} is on {other.device} but {ref_name} is on {ref.device}")


def check_dim(dim, ndim, name="dim"):
    """Returns `dim` normalized to [0, ndim); raises if it is not an int in range."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(dim).__name__}")
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name}={dim} is out of range for a {ndim}-D tensor")
    return int(dim) % ndim


def check_positive_int(value, name):
    """`value` must be an integer >= 1 (bools and floats are refused, even 2.0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_finite_number(value, name, allow_none=True):
    """`value` must be a finite real number (or None when allowed); returns it as a float."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_broadcasts_to(t, name, shape, ref, ref_name="x"):
    """`t` (None allowed) must be a floating tensor on `ref`'s device that broadcasts to `shape` without
    growing it (e.g. a noise term of an op's output): the ops fold such terms in with zero strides."""
    if t is None:
        return
    check_tensor(t, name)
    check_same_device(ref, ref_name, t, name)
    shape = tuple(shape)
    try:
        ok = t.ndim <= len(shape) and torch.broadcast_shapes(t.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} of shape {list(t.shape)} does not broadcast to the output shape {list(shape)}")


def check_channel_vector(t, name, channels, ref, ref_name="x", whose="x has {} channels"):
    """`t` (None allowed) must be a 1-D floating tensor on `ref`'s device with one entry per channel (a
    bias); `whose` names where the channel count comes from in the message, e.g. 'weight has {} out channels'."""
    if t is None:
        return
    check_tensor(t, name, ndim=1)
    check_same_device(ref, ref_name, t, name)
    if t.shape[0] != channels:
        raise ValueError(f"{name} has length {t.shape[0]} but {whose.format(channels)}")


def same_layout_empty(shape, like: torch.Tensor, dtype=None):
    """An empty tensor of `shape` laid out like `like`: channels_last if `like` is, else contiguous."""
    fmt = torch.channels_last if is_channels_last(like) else torch.contiguous_format
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)


def conv_out_empty(shape, x: torch.Tensor, w: torch.Tensor):
    """An empty conv output laid out like x; where x is NCHW- and NHWC-contiguous at once (a [N, C, 1, 1]
    latent, one channel), laid out like the weight, as torch's convs do: so a channels_last network stays
    channels_last from its latent (DCGAN's G) on the Triton path too, as `in_layout_of` keeps it on the
    reference path."""
    both = x.ndim == 4 and x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return same_layout_empty(shape, w if both else x, dtype=x.dtype)


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D tensor stored NHWC (and not also plainly contiguous, as when C == 1)."""
    return x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def in_layout_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`y` in x's memory layout (a reference path returning what the Triton path returns). Where x is both NCHW-
    and NHWC-contiguous (one channel, or 1x1 pixels), y keeps the layout torch chose: torch's convs follow the
    weight's layout there, so a channels_last network stays channels_last from a [N, C, 1, 1] latent or a
    one-channel image."""
    if is_channels_last(x):
        return y.contiguous(memory_format=torch.channels_last)
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return y
    return y.contiguous()


def dense(x: torch.Tensor) -> torch.Tensor:
    """`x` if its storage is dense in a layout we keep (contiguous or channels_last), else a contiguous copy."""
    return x if x.is_contiguous() or is_channels_last(x) else x.contiguous()
