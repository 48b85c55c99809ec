"""Imports Triton if it can, and otherwise a tiny stand-in so kernel modules still import.

Kernel modules write `from ._triton import triton, tl` and decorate with `@triton.jit` as usual.
Without Triton (macOS, Windows, a broken install) the stand-in `jit` returns the Python function
unchanged and `tl.constexpr` is a plain annotation; nothing can launch, and `resolve_impl` never
picks the Triton path, so every op falls back to its reference implementation.
"""
import types

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
    TRITON_IMPORT_ERROR = None
except Exception as exc:  # ImportError, or a broken install raising anything else
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = exc

    def _jit(fn=None, **_kwargs):
        return fn if fn is not None else (lambda f: f)

    triton = types.SimpleNamespace(jit=_jit, __version__=None, cdiv=lambda a, b: -(-a // b))
    tl = types.SimpleNamespace(constexpr=object)


# Passed to every kernel launch. FMA contraction stays on (Triton's default so far): Triton 3.9 warns that its
# default turns it off in 3.10, which would change the kernels' rounding and speed with the Triton version.
LAUNCH_OPTIONS = dict(enable_fp_fusion=True)


def compute_dtype(dtype):
    """The Triton dtype an op computes in: fp64 stays fp64 (so gradcheck can run the kernels), all else fp32."""
    import torch

    return tl.float64 if dtype == torch.float64 else tl.float32


def torch_compute_dtype(dtype):
    """The same as a torch dtype: what kernels accumulate partial sums in (fp64 for fp64 inputs, else fp32)."""
    import torch

    return torch.float64 if dtype == torch.float64 else torch.float32


def conv_allows_tf32(dtype) -> bool:
    """Whether an fp32 conv may use TF32: exactly when torch's own convs would (cuDNN's conv precision, TF32 by
    default; `torch.backends.cudnn.allow_tf32` sets it too). Every fused conv follows this one flag, so a fused
    layer and the F.conv2d it replaces round alike. Read through the new API: the legacy getter raises once conv
    and RNN precisions were set apart."""
    import torch

    if dtype != torch.float32:
        return False
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is None:  # torch < 2.9: the legacy switch is the only one
        return bool(torch.backends.cudnn.allow_tf32)
    return conv.fp32_precision == "tf32"
