"""Image grids as PNG files (Pillow), the way a person looks at samples during training."""
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def tile(images: torch.Tensor, nrow: int, pad: int = 1) -> torch.Tensor:
    """[N, C, H, W] -> one [C, rows*(H+pad)+pad, nrow*(W+pad)+pad] image, row-major, black padding."""
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    canvas = images.new_full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), -1.0)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        canvas[:, top:top + h, left:left + w] = images[i]
    return canvas


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] float [C, H, W] -> uint8 HWC (or HW for one channel)."""
    arr = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(1, 2, 0).numpy()
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


def save_grid(images: torch.Tensor, path, nrow: int = 8) -> Path:
    """Saves [N, C, H, W] images in [-1, 1] (C = 1 or 3) as one PNG grid."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1|3, H, W], got {tuple(images.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(tile(images.float(), nrow))).save(path)
    return path
