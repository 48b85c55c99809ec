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
