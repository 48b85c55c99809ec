"""Datasets of image files (a folder or a zip): plain images with optional labels, pix2pix A|B pairs, and
CycleGAN trainA/ + trainB/ domains.

Unreadable files, in two steps, both deterministic:
1. At construction every image's header is read (Pillow's `Image.open`: the first bytes, no decode; in a zip
   only those bytes are decompressed). Files that are not images (a text file named .png, an empty file) are
   left out of the index with a warning.
2. `__getitem__` decodes fully. A file that fails here (a truncated PNG) is warned about, remembered, and
   replaced by the next readable index (i+1, i+2, ... cyclically), so a given index always yields the same
   sample. `verify()` decodes everything up front instead.
Either step raises DataError once more than `max_bad_fraction` of the image files are known to be bad (in
this process: each DataLoader worker counts the files it has tried).
"""
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import (GRAYSCALE_MODES, IMAGE_EXTENSIONS, DataError, DataWarning, decode, is_image_name,
                     resize_center_crop, split_pair, to_tensor)
from .sources import open_source

DIRECTIONS = ("AtoB", "BtoA")
TRAIN_PHASE = "train/"  # pix2pix's phase folder under its dataroot
_MASK64 = (1 << 64) - 1  # torch.Generator seeds are 64-bit


def _check_common(resolution, channels, max_bad_fraction):
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    if not 0.0 <= float(max_bad_fraction) <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction!r}")


class ImageFiles:
    """The image files of a source (those under `prefix`), header-checked now and decoded on demand."""

    def __init__(self, source, *, max_bad_fraction: float, prefix: str = ""):
        self.source, self.max_bad_fraction = source, float(max_bad_fraction)
        self.where = source.describe(prefix) if prefix else source.label
        candidates = [name for name in source.list_files(prefix) if is_image_name(name)]
        if not candidates:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {self.where}")
        self.total, self.names, self.modes, self.bad = len(candidates), [], [], set()
        for name in candidates:
            try:
                self.modes.append(self._probe(name))
                self.names.append(name)
            except Exception as error:  # noqa: BLE001 - any reason a file is not an image
                self._skip(name, error)
        if not self.names:
            raise DataError(f"none of the {self.total} images in {self.where} could be read")

    def _probe(self, name: str) -> str:
        from PIL import Image

        with self.source.open_header(name) as file, Image.open(file) as image:
            return image.mode

    def _skip(self, name: str, error: Exception):
        self.bad.add(name)
        warnings.warn(f"skipping unreadable image {self.source.describe(name)}: {error}", DataWarning, stacklevel=3)
        if len(self.bad) > self.max_bad_fraction * self.total:
            shown = ", ".join(sorted(self.bad)[:5])
            raise DataError(f"{len(self.bad)} of {self.total} images in {self.where} could not be read, more than "
                            f"max_bad_fraction={self.max_bad_fraction:g} (for example: {shown})")

    def all_grayscale(self) -> bool:
        return all(mode in GRAYSCALE_MODES for mode in self.modes)

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int, read):
        """(i, read(file)) for the first readable index i = index, index+1, ... (cyclic)."""
        count = len(self.names)
        for step in range(count):
            i = (index + step) % count
            name = self.names[i]
            if name in self.bad:
                continue
            try:
                with self.source.open(name) as file:
                    return i, read(file)
            except DataError:
                raise
            except Exception as error:  # noqa: BLE001 - decode failures of every kind are skipped
                self._skip(name, error)
        raise DataError(f"none of the {self.total} images in {self.where} could be read")

    def verify(self, read) -> int:
        """Decodes every file now (warning about and remembering bad ones); returns how many are bad."""
        for i in range(len(self.names)):
            self.load(i, read)
        return len(self.bad)


def _pick_channels(channels, *file_sets) -> int:
    """channels=None: 1 when every header-checked image is grayscale (L, I;16, LA, ...), else 3."""
    if channels is not None:
        return channels
    return 1 if all(files.all_grayscale() for files in file_sets) else 3


def _check_index(index: int, length: int):
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for a dataset of {length}")


def _read_labels(source, names):
    """Integer labels of `names` from dataset.json at the source root ({"labels": [[fname, int], ...]})."""
    where = source.describe("dataset.json")
    try:
        meta = source.read_json("dataset.json")
    except ValueError as error:
        raise DataError(f"cannot parse {where}: {error}") from error
    raw = meta.get("labels") if isinstance(meta, dict) else None
    if raw is None:
        raise DataError(f"labels=True but {where} is missing or has no labels")
    mapping = {}
    for entry in raw:
        ok = isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
        if not ok or isinstance(entry[1], bool) or not isinstance(entry[1], int) or entry[1] < 0:
            raise DataError(f"{where}: each label must be [file name, non-negative int], got {entry!r}")
        mapping[entry[0].replace("\\", "/")] = entry[1]
    missing = [name for name in names if name not in mapping]
    if missing:
        raise DataError(f"{where} has no label for {len(missing)} images, for example {missing[0]}")
    return [mapping[name] for name in names]


class ImageFolderDataset(Dataset):
    """Images of a folder or zip, as (uint8 [C, R, R], int64 label or -1). Labels (labels=True) come from
    dataset.json; num_classes is then the largest label + 1."""

    def __init__(self, path, resolution: int, channels=None, *, labels: bool = False,
                 max_bad_fraction: float = 0.05):
        _check_common(resolution, channels, max_bad_fraction)
        source = open_source(path)
        self.files = ImageFiles(source, max_bad_fraction=max_bad_fraction)
        self.resolution, self.channels = resolution, _pick_channels(channels, self.files)
        self.name = source.name
        self.has_labels = bool(labels)
        self._labels = _read_labels(source, self.files.names) if labels else None
        self.num_classes = max(self._labels) + 1 if labels else 0

    def _read(self, file) -> torch.Tensor:
        return to_tensor(resize_center_crop(decode(file, self.channels), self.resolution))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        _check_index(index, len(self))
        i, image = self.files.load(index, self._read)
        label = self._labels[i] if self.has_labels else -1
        return image, torch.tensor(label, dtype=torch.int64)

    def label_counts(self):
        """Images per class ([num_classes] ints), None without labels."""
        if not self.has_labels:
            return None
        return torch.bincount(torch.tensor(self._labels), minlength=self.num_classes).tolist()

    def verify(self) -> int:
        return self.files.verify(self._read)


class PairedImageDataset(Dataset):
    """pix2pix A|B images (A left, B right), as (A, B) uint8 [C, R, R] each; direction='BtoA' swaps them.
    Each half is resized and cropped on its own, so both stay aligned. A source with images under train/ (the
    ROOT/train, ROOT/val, ROOT/test layout of pix2pix's datasets, which it reads as dataroot/phase) gives those
    only, never the val/test pairs; otherwise every image of the source, recursively."""

    num_classes, has_labels = 0, False

    def __init__(self, path, resolution: int, channels=None, *, direction: str = "AtoB",
                 max_bad_fraction: float = 0.05):
        _check_common(resolution, channels, max_bad_fraction)
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        source = open_source(path)
        prefix = TRAIN_PHASE if any(is_image_name(name) for name in source.list_files(TRAIN_PHASE)) else ""
        self.files = ImageFiles(source, max_bad_fraction=max_bad_fraction, prefix=prefix)
        self.resolution, self.channels = resolution, _pick_channels(channels, self.files)
        self.direction = direction
        self.name = source.name

    def _read(self, file):
        left, right = split_pair(decode(file, self.channels))
        if left.width == 0:
            raise ValueError("image is too narrow to split into A|B halves")
        a, b = (to_tensor(resize_center_crop(half, self.resolution)) for half in (left, right))
        return (a, b) if self.direction == "AtoB" else (b, a)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        _check_index(index, len(self))
        return self.files.load(index, self._read)[1]

    def verify(self) -> int:
        return self.files.verify(self._read)


class UnpairedImageDataset(Dataset):
    """CycleGAN domains trainA/ and trainB/ (folders, or prefixes in a zip), as (A, B) uint8 [C, R, R].
    len = max(len_a, len_b). B's partner of each A is drawn afresh every epoch, as CycleGAN's UnalignedDataset
    does (`index_B = random.randint(0, B_size - 1)` per item), but reproducibly: the index carries the epoch
    (`epoch_indexed`: InfiniteSampler yields epoch * len + i, i in range(len); a plain i is epoch 0), and
    index epoch * len + i gives A[i % len_a] and B[perm_epoch[i] % len_b], perm_epoch a permutation of range(len)
    seeded from (seed, epoch). So a given (epoch, i) always gives the same pair, with any worker count and after
    a resume, and every epoch uses every B image, each as often as the others (within one); independent draws
    (or a hash of i) would leave about 1/e of domain B out of each epoch when len_b >= len_a."""

    num_classes, has_labels = 0, False
    epoch_indexed = True  # InfiniteSampler tags its indices with their epoch (see engine/data/loader.py)
    _CACHED_EPOCHS = 2  # a batch, or a worker's prefetched batches, may straddle an epoch boundary

    def __init__(self, path, resolution: int, channels=None, *, seed: int = 0, max_bad_fraction: float = 0.05):
        _check_common(resolution, channels, max_bad_fraction)
        source = open_source(path)
        self.files_a = ImageFiles(source, max_bad_fraction=max_bad_fraction, prefix="trainA/")
        self.files_b = ImageFiles(source, max_bad_fraction=max_bad_fraction, prefix="trainB/")
        self.resolution = resolution
        self.channels = _pick_channels(channels, self.files_a, self.files_b)
        self.seed = int(seed)
        self.name = source.name
        self._b_orders = {}  # epoch -> its permutation, the latest few only

    @property
    def len_a(self) -> int:
        return len(self.files_a)

    @property
    def len_b(self) -> int:
        return len(self.files_b)

    def b_order(self, epoch: int) -> torch.Tensor:
        """The permutation of range(len) that picks B's partners in `epoch`. Its seed mixes (seed, epoch) through
        numpy's SeedSequence, so it is unrelated to the sampler's own per-epoch permutations (seed + epoch)."""
        order = self._b_orders.get(epoch)
        if order is None:
            mixed = int(np.random.SeedSequence([self.seed & _MASK64, epoch]).generate_state(1, np.uint64)[0])
            order = torch.randperm(len(self), generator=torch.Generator().manual_seed(mixed))
            if len(self._b_orders) >= self._CACHED_EPOCHS:
                del self._b_orders[min(self._b_orders)]
            self._b_orders[epoch] = order
        return order

    def b_index(self, index: int) -> int:
        """The B image paired with `index` (= epoch * len + i)."""
        epoch, i = divmod(index, len(self))
        return int(self.b_order(epoch)[i]) % self.len_b

    def _read(self, file) -> torch.Tensor:
        return to_tensor(resize_center_crop(decode(file, self.channels), self.resolution))

    def __len__(self) -> int:
        return max(self.len_a, self.len_b)

    def __getitem__(self, index: int):
        if index < 0:  # no upper bound: indices past len carry the epoch
            raise IndexError(f"index {index} out of range: indices of an unpaired dataset are >= 0")
        i = index % len(self)
        a = self.files_a.load(i % self.len_a, self._read)[1]
        b = self.files_b.load(self.b_index(index), self._read)[1]
        return a, b

    def __iter__(self):
        """Epoch 0's items: without it, Python would iterate through __getitem__, which has no end here."""
        return (self[i] for i in range(len(self)))

    def verify(self) -> int:
        return self.files_a.verify(self._read) + self.files_b.verify(self._read)
