"""Built-in offline datasets, held in memory (nothing is cached on disk):
- `digits`: scikit-learn's `load_digits`, 1,797 8x8 digits with values 0..16, scaled to 0..255 and resized
  (bicubic) to the resolution; labels 0..9.
- `faces`: scikit-image's `data.lfw_subset()`, 200 25x25 grayscale faces in [0, 1], scaled to 0..255 and
  resized (bicubic); no labels.
Both are single-channel; channels=3 repeats the channel.
"""
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .images import DataError


class TensorImageDataset(Dataset):
    """In-memory images uint8 [N, C, R, R] with optional int64 labels [N]; items as (image, label or -1)."""

    def __init__(self, images: torch.Tensor, labels=None, *, name: str, num_classes: int = 0):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"images must be uint8 [N, C, R, R], got {images.dtype} {tuple(images.shape)}")
        self.images, self.name = images.contiguous(), name
        self.resolution, self.channels = images.shape[-1], images.shape[1]
        self.has_labels = labels is not None
        self.labels = labels.to(torch.int64) if labels is not None else None
        self.num_classes = num_classes if self.has_labels else 0

    def __len__(self) -> int:
        return self.images.shape[0]

    def label_counts(self):
        """Images per class ([num_classes] ints), None without labels."""
        if not self.has_labels:
            return None
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        label = self.labels[index] if self.has_labels else torch.tensor(-1, dtype=torch.int64)
        return self.images[index], label


def _to_uint8(images: torch.Tensor, resolution: int, channels: int) -> torch.Tensor:
    """Float images [N, h, w] in 0..255 resized (bicubic, antialiased when shrinking) to uint8 [N, C, R, R]."""
    x = images.to(torch.float32)[:, None]
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False, antialias=True)
    x = x.round().clamp_(0, 255).to(torch.uint8)  # bicubic overshoots: clamp
    return x.expand(-1, channels, -1, -1).contiguous()


def load_digits_dataset(resolution: int = 32, channels: int = 1, *, labels: bool = False) -> TensorImageDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images) * (255.0 / 16.0)
    targets = torch.from_numpy(digits.target).to(torch.int64) if labels else None
    return TensorImageDataset(_to_uint8(images, resolution, channels), targets, name="digits", num_classes=10)


def load_faces_dataset(resolution: int = 32, channels: int = 1, *, labels: bool = False) -> TensorImageDataset:
    if labels:
        raise DataError("the built-in 'faces' dataset has no labels (labels=True was asked)")
    from skimage.data import lfw_subset

    images = torch.from_numpy(lfw_subset()) * 255.0
    return TensorImageDataset(_to_uint8(images, resolution, channels), None, name="faces")


BUILTIN_DATASETS = {"digits": load_digits_dataset, "faces": load_faces_dataset}
