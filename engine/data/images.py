"""Decoding one image file into a fixed mode and size: the part of the data pipeline every dataset shares.

Conversions, so that no mode crashes the loader:
- alpha (RGBA, LA, PA, RGBa, La, and P or L/RGB with a `transparency` entry) is composited on black, the
  background a zero-padded generator sees outside the object;
- 16-bit and 32-bit integer grayscale (I;16, I;16B, I) is scaled from 0..65535 to 0..255 (Pillow's own
  conversion clips at 255 instead), float grayscale (F) is read as 0..1;
- everything else (1, P, CMYK, YCbCr, LAB, HSV, ...) goes through Pillow's `convert`;
- then 'L' (ITU-R 601 luma) for one channel or 'RGB' for three.
The EXIF orientation tag is applied, so camera photos are upright.
"""
import numpy as np
import torch
from PIL import Image, ImageOps

# pix2pix/CycleGAN's IMG_EXTENSIONS (any case) and WebP.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
RESAMPLE = Image.Resampling.LANCZOS


class DataError(ValueError):
    """A dataset cannot be opened or read: missing path, no images, or too many unreadable images."""


class DataWarning(UserWarning):
    """An image was skipped because it could not be read."""


def is_image_name(name: str) -> bool:
    """Whether a (relative, '/'-separated) file name is one this pipeline reads. macOS metadata (`__MACOSX/`
    folders in zips, `._name.png` AppleDouble files) carries image extensions without being images: ignored."""
    parts = name.split("/")
    if "__MACOSX" in parts[:-1] or parts[-1].startswith("._"):
        return False
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """I;16*/I as 0..65535 and F as 0..1, scaled to an 8-bit 'L' image (rounded, clipped)."""
    array = np.asarray(image, dtype=np.float64)
    scale = 255.0 if image.mode == "F" else 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8), mode="L")


def convert_mode(image: Image.Image, channels: int) -> Image.Image:
    """`image` (any Pillow mode) as 'L' (channels=1) or 'RGB' (channels=3); see the module docstring."""
    target = "L" if channels == 1 else "RGB"
    if image.mode.startswith("I") or image.mode == "F":
        image = _high_bit_depth_to_l(image)
    elif image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    if image.mode != target:
        # CMYK, YCbCr, LAB and HSV only convert to RGB directly; RGB -> L is then the usual luma.
        image = image.convert("RGB")
        if target == "L":
            image = image.convert("L")
    return image


def resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Shorter side resized to `resolution` (Lanczos), then the central resolution x resolution square."""
    width, height = image.size
    if width == height == resolution:
        return image
    scale = resolution / min(width, height)
    new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), RESAMPLE)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def split_pair(image: Image.Image):
    """The left and right halves of a pix2pix A|B image (the middle column of an odd width is dropped)."""
    width, height = image.size
    half = width // 2
    return image.crop((0, 0, half, height)), image.crop((width - half, 0, width, height))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An 'L' or 'RGB' image as a contiguous uint8 tensor [C, H, W]."""
    array = np.array(image, dtype=np.uint8)  # a copy: Pillow's buffer is read-only
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def decode(file, channels: int) -> Image.Image:
    """Fully decodes an open binary file into an upright 'L' or 'RGB' image. Any failure (not an image,
    truncated data, decompression bomb, unsupported mode) raises; the caller decides whether to skip."""
    with Image.open(file) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        return convert_mode(image, channels)
