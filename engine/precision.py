"""`--precision fp32|tf32|bf16|fp16`: one object that owns autocast, TF32 switches and the fp16 GradScaler.

Weights and optimizer state stay fp32 in every mode (mixed precision, not low precision): bf16/fp16 only change
what runs inside `autocast()`. fp16 needs loss scaling (GradScaler); bf16 has fp32's range and does not.
"""
import contextlib

import torch

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, mode: str, device: torch.device):
        if mode not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {mode!r}")
        self.mode, self.device = mode, torch.device(device)
        self.dtype = _AUTOCAST_DTYPES.get(mode)  # None: no autocast
        # TF32 only when asked for: fp32 means fp32 matmuls/convs, so that results are comparable across runs.
        allow_tf32 = mode == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=mode == "fp16")

    def autocast(self):
        """The context the forward passes run in (a no-op for fp32/tf32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call backward() on: multiplied by the fp16 loss scale, unchanged otherwise."""
        return self.scaler.scale(loss)

    def __repr__(self):
        return f"Precision({self.mode!r}, device={self.device})"


@contextlib.contextmanager
def strict_fp32():
    """Full-precision float32 matmuls and convolutions (no TF32) inside; the caller's settings are put back after.

    StyleGAN2-ADA computes metric features with TF32 off (its training loop and calc_metrics.py set
    `allow_tf32 = False`); `--precision tf32`, or PyTorch's own default for cuDNN convolutions, would otherwise
    let the feature network and the distance matmuls round to TF32's 10-bit mantissa on Ampere and later GPUs.
    """
    conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if conv is not None and hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the per-op API
        saved = conv.fp32_precision, matmul.fp32_precision
        conv.fp32_precision = matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
    else:
        saved = torch.backends.cudnn.allow_tf32, matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = saved
