"""fusegan.engine.data: datasets (image folders and zips, pix2pix pairs, CycleGAN domains, built-in digits and
faces) yielding uint8 tensors, and the loader that feeds them to the trainer on the device.

Items: image datasets give (image uint8 [C, R, R], label int64 scalar, -1 when unlabeled); paired and
unpaired datasets give (A, B), both uint8 [C, R, R]. Conversion to float and x-flips happen on the device
(`to_float`, `random_xflip`), so host->device copies stay uint8; the trainer gives paired A and B one shared
flip and unpaired A and B independent flips, as pix2pix's and CycleGAN's datasets do.
"""
from .builtin import BUILTIN_DATASETS, TensorImageDataset, load_digits_dataset, load_faces_dataset
from .folders import ImageFolderDataset, PairedImageDataset, UnpairedImageDataset
from .images import IMAGE_EXTENSIONS, DataError, DataWarning
from .loader import DeviceLoader, InfiniteSampler, make_loader, random_xflip, to_float

KINDS = ("image", "paired", "unpaired")


def open_dataset(spec, resolution: int, channels=None, *, labels: bool = False, kind: str = "image",
                 direction: str = "AtoB", max_bad_fraction: float = 0.05, seed: int = 0):
    """The dataset named by `spec`: 'digits' or 'faces' (built in; kind='image' only), else a folder or a .zip
    path (a folder literally named like a built-in is reached as './digits').

    channels=None: 1 for the built-ins; for files, 1 when every image is grayscale (by its header) else 3.
    labels=True: conditional data (dataset.json labels, or the digits' classes); DataError when there are none.
    kind='paired': pix2pix A|B images (those under train/ when there is one), `direction` 'AtoB' or 'BtoA'.
    kind='unpaired': trainA/ and trainB/, B's partner of each A redrawn every epoch from (`seed`, epoch), every B
    image used in each epoch (the sampler tags indices with their epoch; see folders.UnpairedImageDataset).
    Files that cannot be read are skipped with a DataWarning; more than `max_bad_fraction` of them raises
    DataError (see folders.py).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(spec, str) and spec in BUILTIN_DATASETS:
        if kind != "image":
            raise ValueError(f"the built-in dataset {spec!r} is kind='image', not {kind!r}")
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
        return BUILTIN_DATASETS[spec](resolution, channels or 1, labels=labels)
    if kind != "image" and labels:
        raise DataError(f"kind={kind!r} data has no labels (labels=True was asked for {spec})")
    if kind == "paired":
        return PairedImageDataset(spec, resolution, channels, direction=direction, max_bad_fraction=max_bad_fraction)
    if kind == "unpaired":
        return UnpairedImageDataset(spec, resolution, channels, seed=seed, max_bad_fraction=max_bad_fraction)
    return ImageFolderDataset(spec, resolution, channels, labels=labels, max_bad_fraction=max_bad_fraction)


__all__ = [
    "BUILTIN_DATASETS", "DataError", "DataWarning", "DeviceLoader", "IMAGE_EXTENSIONS", "ImageFolderDataset",
    "InfiniteSampler", "PairedImageDataset", "TensorImageDataset", "UnpairedImageDataset", "load_digits_dataset",
    "load_faces_dataset", "make_loader", "open_dataset", "random_xflip", "to_float",
]
