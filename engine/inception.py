"""The FID Inception-v3: the TensorFlow graph `inception-2015-12-05` as ported to PyTorch by pytorch-fid.

The network is torchvision's Inception v3 layout (1008-way classifier, no auxiliary head) with the
changes pytorch-fid makes to match the TensorFlow graph that FID was defined on:

* the average-pool branches of the A, C and first E blocks (Mixed_5b..5d, 6b..6e, 7b) average over
  the valid pixels only (`count_include_pad=False`), as TensorFlow's SAME pooling does;
* the last E block (Mixed_7c) pools its branch with a 3x3 *max* pool, as the TF graph does.

Module names equal the keys of pytorch-fid's state dict file `pt_inception-2015-12-05-6726825d.pth`
(`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`, ..., `fc.weight`), so that
file loads with no renaming. The weights are never downloaded: `load_inception(path)` reads a
local copy, and without one it raises `FileNotFoundError` saying what to supply.

Input: images NCHW, either uint8 in [0, 255] or floating in [-1, 1], 1 or 3 channels (grayscale is repeated to
RGB, as StyleGAN2-ADA's metric_utils does), any size. `preprocessing` says how they reach the 299x299 input:

* "tf" (default): what the TensorFlow graph itself does to its [0, 255] input, and so what the original TF FID
  code and StyleGAN2-ADA's `inception-2015-12-05.pt` (which reproduces the graph's preprocessing exactly) measure:
  TF1's legacy `resize_bilinear` (align_corners=False, *no* half-pixel centres: output pixel j samples input
  position j * in / out, clamped at the last pixel), then (x - 128) / 128. Numbers are then comparable with
  StyleGAN2-ADA's published fid50k_full / kid50k_full (see fusegan.engine.metrics for the remaining protocol).
* "pytorch-fid": what pytorch-fid does with the same weights: F.interpolate bilinear (align_corners=False, i.e.
  half-pixel centres) of [0, 1] images, then 2x - 1 (= x / 127.5 - 1 on [0, 255]). pytorch-fid notes that its
  numbers differ slightly from the TF implementation; this mode reproduces pytorch-fid's.
They differ in the resize (unless the images are 299x299 already) and, always, in the scaling (128 vs 127.5).
Output: the 2048-d average-pool features (what FID, KID and precision/recall use).
"""
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILENAME
FEATURE_DIM = 2048
INPUT_SIZE = 299
NUM_CLASSES = 1008  # the TF graph's classifier: 1000 ImageNet classes plus 8 unused
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, as in torchvision's port


class BasicConv2d(nn.Module):
    """Conv (no bias) -> batch norm -> ReLU; the unit every Inception layer is built from."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _same_avg_pool(x):
    # TensorFlow's SAME average pool divides by the number of valid pixels, not by 9.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _same_max_pool(x):
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | pool->1x1. Out: 224 + pool_features channels."""

    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_same_avg_pool(x)),
        ], dim=1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction (Mixed_6a): 3x3/2 | 1x1->3x3->3x3/2 | maxpool/2. Out: 480 + in channels."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class InceptionC(nn.Module):
    """17x17 block with factorized 7x7 convolutions (1x7 then 7x1). Out: 768 channels."""

    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = layer(b7dbl)
        return torch.cat([self.branch1x1(x), b7, b7dbl, self.branch_pool(_same_avg_pool(x))], dim=1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction (Mixed_7a): 1x1->3x3/2 | 1x1->1x7->7x1->3x3/2 | maxpool/2. Out: 512 + in."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            b7,
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 outputs. Out: 2048 channels. `max_pool` picks the Mixed_7c variant."""

    def __init__(self, in_channels, max_pool=False):
        super().__init__()
        self.pool = _same_max_pool if max_pool else _same_avg_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl),
            self.branch_pool(self.pool(x)),
        ], dim=1)


def _checked_images(images: Tensor) -> Tensor:
    """Checked NCHW images, dtype unchanged, grayscale repeated to RGB."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a 4-D NCHW tensor, got {getattr(images, 'shape', type(images))}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating, got {images.dtype}")
    return images.expand(-1, 3, -1, -1)  # grayscale repeated to RGB


def _tf_resize_axis(x: Tensor, dim: int, out_size: int) -> Tensor:
    """TF1 `resize_bilinear` (align_corners=False, half_pixel_centers=False) along one axis: output j reads input
    position s = j * in / out, i.e. (1 - f) x[floor(s)] + f x[min(floor(s) + 1, in - 1)], f = s - floor(s).
    Elementwise (no matmul), so it rounds alike with or without TF32."""
    in_size = x.shape[dim]
    pos = torch.arange(out_size, device=x.device, dtype=torch.float64) * (in_size / out_size)
    lo = pos.floor().long()  # <= (out - 1) * in / out < in
    hi = (lo + 1).clamp(max=in_size - 1)
    shape = [1] * x.ndim
    shape[dim] = out_size
    frac = (pos - lo).to(x.dtype).view(shape)
    return torch.lerp(x.index_select(dim, lo), x.index_select(dim, hi), frac)


def tf_preprocess(images: Tensor) -> Tensor:
    """The TF FID graph's own preprocessing (reproduced by StyleGAN2-ADA's inception-2015-12-05.pt): [0, 255]
    pixels resized to 299x299 by TF1's legacy bilinear resize, then (x - 128) / 128. Float images in [-1, 1] are
    taken as the pixels (x + 1) * 127.5."""
    images = _checked_images(images)
    pixels = images.float() if images.dtype == torch.uint8 else (images.float() + 1) * 127.5
    pixels = _tf_resize_axis(_tf_resize_axis(pixels, 2, INPUT_SIZE), 3, INPUT_SIZE)
    return (pixels - 128) / 128


def pytorch_fid_preprocess(images: Tensor) -> Tensor:
    """pytorch-fid's preprocessing: [0, 1] images resized by F.interpolate (bilinear, align_corners=False), then
    2x - 1. Bilinear resizing is affine-equivariant (its weights sum to 1), so [-1, 1] images resized directly
    give the same input."""
    images = _checked_images(images)
    x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)


PREPROCESSING = {"tf": tf_preprocess, "pytorch-fid": pytorch_fid_preprocess}


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 feature network. `forward(images)` returns [N, 2048] pool features.

    `preprocessing`: how images become the 299x299 input, "tf" (default: the TF graph's own, as StyleGAN2-ADA)
    or "pytorch-fid" (see the module docstring). Satisfies `fusegan.engine.metrics.FeatureExtractor` (`feature_dim`, `name`, callable).
    `fc` is kept only so the state dict matches pytorch-fid's key for key; features never use it.
    """

    feature_dim = FEATURE_DIM
    name = "inception-2015-12-05"

    def __init__(self, preprocessing: str = "tf"):
        super().__init__()
        if preprocessing not in PREPROCESSING:
            raise ValueError(f"preprocessing must be one of {', '.join(PREPROCESSING)}, got {preprocessing!r}")
        self.preprocessing = preprocessing
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 [0,255] or float [-1,1], 1 or 3 channels, any size -> the float32 3x299x299 network input, as
        `self.preprocessing` says ("tf" or "pytorch-fid"; see the module docstring)."""
        return PREPROCESSING[self.preprocessing](images)

    def forward(self, images: Tensor) -> Tensor:
        x = self.preprocess(images)
        for layer in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3):
            x = layer(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def _is_optional_key(key: str) -> bool:
    # Files from older PyTorch versions lack BN's step counter (unused in eval), and only the
    # features matter here, so the classifier may be absent too.
    return key.endswith(".num_batches_tracked") or key in ("fc.weight", "fc.bias")


def missing_weights_message(path=None) -> str:
    """What to tell the user when the Inception weights are not there."""
    where = "no path was given" if path is None else f"'{path}' does not exist"
    return (f"FID Inception weights not found: {where}. Supply pytorch-fid's weight file {WEIGHTS_FILENAME} "
            f"(the pytorch-fid release asset, {WEIGHTS_URL}), or a .safetensors file with the same keys, "
            f"with the option --inception PATH (load_inception(path) in Python). Nothing is downloaded.")


def read_state_dict(path) -> dict:
    """Reads a state dict from a .pth (torch.load with weights_only=True) or a .safetensors file."""
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(missing_weights_message(path))
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(os.fspath(path))
    state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def check_state_dict(model: nn.Module, state: dict) -> None:
    """Raises ValueError listing every missing key, unexpected key and shape mismatch, if any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not _is_optional_key(k)]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
                   for k in state if k in expected and state[k].shape != expected[k].shape]
    problems = []
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
        if keys:
            problems.append(f"{len(keys)} {title}: " + ", ".join(keys))
    if problems:
        raise ValueError("not a pytorch-fid FID Inception state dict (" + WEIGHTS_FILENAME + "); "
                         + "; ".join(problems))


def load_inception(path, device=None, preprocessing: str = "tf") -> FIDInceptionV3:
    """The FID Inception network with weights from the local file `path` (.pth or .safetensors), preprocessing
    its input as `preprocessing` says ("tf": as the TF graph and StyleGAN2-ADA; "pytorch-fid": as pytorch-fid).

    Raises FileNotFoundError (saying what to supply) when `path` is None or missing, and ValueError
    when the file's keys or shapes differ from pytorch-fid's. Returned in eval mode, without gradients.
    """
    state = read_state_dict(path)
    # The layers' default init (overwritten just below) draws from the global RNG: fork it, so that loading the
    # metric network never moves a training run's random stream (its exact resume depends on that stream).
    with torch.random.fork_rng(devices=[]):
        model = FIDInceptionV3(preprocessing)
    check_state_dict(model, state)
    model.load_state_dict(state, strict=False)  # strictness was checked above, with optional keys allowed
    return model.eval().requires_grad_(False).to(device)
