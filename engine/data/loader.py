"""Feeding batches to the trainer: a resumable infinite sampler, a DataLoader around it, a device prefetcher,
and the two device-side steps (uint8 -> float in [-1, 1], random x-flips).

Order of samples. The global stream is the concatenation of permutations p_0, p_1, ... of the dataset, p_e =
torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)). Rank r takes global positions
r, r + world_size, r + 2 world_size, ... (StyleGAN2-ADA style), so the ranks are disjoint and together cover
every window of the global stream, even when n is not a multiple of world_size (or smaller than it).
`start_index` counts samples of this rank's stream: after k batches of b images per rank, resume with
start_index = k * b and the run sees exactly the data an uninterrupted one would.

Datasets that set `epoch_indexed = True` (the unpaired one: CycleGAN redraws B's partners every epoch) get
epoch * n + i in place of index i, the epoch being that of the global position. The epoch travels with the
index, so DataLoader worker processes and resumed runs know it without any state of their own.
"""
from typing import Iterator, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Sampler


class InfiniteSampler(Sampler):
    """Yields dataset indices forever, in the order described in the module docstring. epoch_indexed=None: the
    dataset's own `epoch_indexed` attribute (False for a length)."""

    def __init__(self, dataset_or_len, *, seed: int = 0, rank: int = 0, world_size: int = 1, start_index: int = 0,
                 epoch_indexed: Optional[bool] = None):
        length = dataset_or_len if isinstance(dataset_or_len, int) else len(dataset_or_len)
        if length < 1:
            raise ValueError(f"the dataset is empty (length {length})")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if start_index < 0:
            raise ValueError(f"start_index must be >= 0, got {start_index}")
        self.length, self.seed, self.rank, self.world_size = length, int(seed), rank, world_size
        self.start_index = int(start_index)
        if epoch_indexed is None:
            epoch_indexed = bool(getattr(dataset_or_len, "epoch_indexed", False))
        self.epoch_indexed = epoch_indexed

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.length, generator=generator)

    def __iter__(self) -> Iterator[int]:
        position = self.start_index * self.world_size + self.rank  # in the global stream
        epoch, offset = divmod(position, self.length)
        while True:
            order = self.permutation(epoch).tolist()
            base = epoch * self.length if self.epoch_indexed else 0
            while offset < self.length:
                yield base + order[offset]
                offset += self.world_size
            epoch, offset = epoch + offset // self.length, offset % self.length


def to_float(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images (0..255) as `dtype` in [-1, 1]: x / 127.5 - 1, rounded once to `dtype`. The arithmetic runs
    in float32 (float64 for float64): dividing in bf16/fp16 would round twice and miss by up to a whole ulp."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return (images.to(compute) / 127.5 - 1).to(dtype)


def random_xflip(x: Union[torch.Tensor, Sequence[torch.Tensor]], generator: torch.Generator, p: float = 0.5):
    """Mirrors each sample of a batch [N, ..., W] left-right with probability p, independently per sample.
    x may be several tensors (a tuple or list, e.g. the A and B of pix2pix): sample i of every tensor gets the
    same flip; for independent flips (CycleGAN's unpaired A and B) call it once per tensor. Draws exactly N
    numbers from `generator` per call, whatever p, so the stream is reproducible. Returns the same structure
    as x."""
    tensors = [x] if isinstance(x, torch.Tensor) else list(x)
    if not tensors or not all(isinstance(t, torch.Tensor) and t.ndim >= 2 for t in tensors):
        raise TypeError("x must be a tensor [N, ..., W] or a sequence of them")
    batch = tensors[0].shape[0]
    if any(t.shape[0] != batch for t in tensors):
        raise ValueError(f"all tensors must share the batch size, got {[t.shape[0] for t in tensors]}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    draw = torch.rand(batch, generator=generator, device=generator.device) < p
    out = []
    for t in tensors:
        flip = draw.to(t.device).view(batch, *([1] * (t.ndim - 1)))
        out.append(torch.where(flip, t.flip(-1), t))
    if isinstance(x, torch.Tensor):
        return out[0]
    return tuple(out) if isinstance(x, tuple) else out


class DeviceLoader:
    """An infinite iterator of batches (tuples of tensors) already on `device`. On CUDA the next batch is
    copied on a side stream while the current one is used; on other devices batches are moved as they come."""

    def __init__(self, loader: DataLoader, device: torch.device):
        self.loader, self.device = loader, torch.device(device)
        self.sampler = loader.batch_sampler.sampler
        self._batches = iter(loader)
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._next = self._fetch() if self._stream is not None else None

    def _copy(self, batch):
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def _fetch(self):
        batch = next(self._batches)
        with torch.cuda.stream(self._stream):
            return self._copy(batch)

    def __iter__(self):
        return self

    def __next__(self):
        if self._batches is None:
            raise RuntimeError("this loader was closed")
        if self._stream is None:
            return self._copy(next(self._batches))
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self._stream)  # the copy has finished before the trainer reads the batch
        batch = self._next
        for t in batch:
            t.record_stream(current)  # memory allocated on the side stream, used on this one
        self._next = self._fetch()
        return batch

    def close(self):
        """Stops the worker processes now (else they stop when this object is garbage collected). Idempotent."""
        batches, self._batches, self._next = self._batches, None, None
        shutdown = getattr(batches, "_shutdown_workers", None)  # only the multi-process iterator has workers
        if shutdown is not None:
            shutdown()


def make_loader(dataset, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, start_index: int = 0,
                workers: int = 0, device, prefetch_factor: int = 2, pin_memory=None) -> DeviceLoader:
    """Batches of `batch_size` samples (per rank) drawn by an InfiniteSampler, on `device`, forever.
    pin_memory defaults to True on CUDA; workers > 0 keeps its worker processes alive (persistent_workers)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    device = torch.device(device)
    sampler = InfiniteSampler(dataset, seed=seed, rank=rank, world_size=world_size, start_index=start_index)
    options = dict(persistent_workers=True, prefetch_factor=prefetch_factor) if workers > 0 else {}
    # A generator of its own: otherwise every DataLoader iterator draws its workers' base seed from the global
    # RNG, and a resumed run (which creates its iterator mid-run) would diverge from an uninterrupted one.
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed + 1_000_003 * rank),
                        pin_memory=device.type == "cuda" if pin_memory is None else pin_memory, **options)
    return DeviceLoader(loader, device)
