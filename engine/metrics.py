"""Image-generation metrics from network features: FID, KID and k-NN precision/recall.

The formulas follow the references that published numbers come from:

* FID (Heusel et al. 2017): float64 mean and covariance, and the trace of `scipy.linalg.sqrtm(sigma1 @ sigma2)`,
  real part, as pytorch-fid and StyleGAN2-ADA's metrics/frechet_inception_distance.py compute it. sqrtm (not a
  symmetric eigen form) is used on purpose, so that numbers match those references also in their ill-conditioned
  cases (fewer samples than feature dimensions), where the two forms differ. The covariance is the unbiased one
  (divided by N - 1) of pytorch-fid and the original TF code; StyleGAN2-ADA's FeatureStats divides by N. That
  scales each covariance by (N - 1) / N, which moves the FID by at most about tr(sigma_real) / N_real +
  tr(sigma_gen) / N_gen: thousandths at 50k images, far below the run-to-run noise.
* KID (Binkowski et al. 2018) as StyleGAN2-ADA's metrics/kernel_inception_distance.py: the unbiased MMD^2
  with the kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets drawn without replacement.
* Precision/recall (Kynkaanniemi et al. 2019) as StyleGAN2-ADA's metrics/precision_recall.py: a sample set's
  manifold is the union of balls around its samples reaching to each one's k-th nearest neighbour (itself not
  counted; an exact duplicate is a neighbour at distance 0, as with NVIDIA's kthvalue(k + 1)). StyleGAN2-ADA
  computes it on VGG16 features; `compute_metrics` uses its one feature network for every metric, by default
  the FID Inception (the VGG16 weights are not available here). Precision/recall on Inception features are
  therefore NOT comparable with published pr50k3 / pr50k3_full numbers.
* The FID Inception's input: see `fusegan.engine.inception` ("tf" preprocessing, as StyleGAN2-ADA, by default).

`compute_metrics` runs a generator and a real dataset through a feature network (by default the FID
Inception-v3 from `fusegan.engine.inception`, whose weights come only from a local file) and caches the
real features in memory, so that evaluating successive snapshots extracts them once. As StyleGAN2-ADA's
fid50k_full / kid50k_full / pr50k3_full, it measures the generated images against ALL real images by default
(precision/recall against the first 200k, KID against the first 1M, as NVIDIA caps them); its `num_images`
generated images are NVIDIA's 50k only when asked for (FID is biased upwards at fewer samples).
"""
import numbers
import os
from typing import Callable, Iterable, Protocol, Union, runtime_checkable

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from .inception import load_inception
from .precision import strict_fp32

METRICS = ("fid", "kid", "pr")
# The real images StyleGAN2-ADA's kid50k_full and pr50k3_full use at most (max_real; fid50k_full uses all).
KID_MAX_REAL_IMAGES = 1_000_000
PR_MAX_REAL_IMAGES = 200_000


def parse_metrics(spec) -> tuple:
    """'fid,kid' (or an iterable of names) -> ('fid', 'kid'): validated, lower-cased, de-duplicated, in order."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    parsed = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"metric names must be strings, got {name!r}")
        name = name.strip().lower()
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
        if name not in parsed:
            parsed.append(name)
    return tuple(parsed)


# ---------------------------------------------------------------------------------------------- FID


def _as_float64(x, name) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a tensor or array of numbers, got {type(x).__name__}") from None


def _check_features(feats, name, min_rows=2) -> Tensor:
    """Features as a 2-D floating tensor [N, D] with N >= min_rows (numpy arrays are accepted)."""
    if isinstance(feats, np.ndarray):
        feats = torch.from_numpy(feats)
    if not isinstance(feats, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(feats).__name__}")
    if feats.ndim != 2:
        raise ValueError(f"{name} must be 2-D [num_samples, feature_dim], got shape {tuple(feats.shape)}")
    if feats.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} samples, got {feats.shape[0]}")
    if not feats.is_floating_point():
        feats = feats.double()
    return feats


def _check_feature_pair(feats_a, feats_b, names, dtype) -> tuple:
    """Two feature sets checked as `_check_features`, in `dtype`, the second on the first's device, with the
    same feature_dim."""
    name_a, name_b = names
    a = _check_features(feats_a, name_a).to(dtype)
    b = _check_features(feats_b, name_b).to(dtype).to(a.device)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} differ in feature_dim: {a.shape[1]} vs {b.shape[1]}")
    return a, b


def feature_statistics(feats, chunk_rows=65536) -> tuple:
    """(mean, covariance) of [N, D] features in float64 numpy; covariance unbiased (N - 1), as np.cov.

    Two passes over `chunk_rows` rows at a time (mean, then centred products), so that all real images of a
    large dataset never need a float64 copy at once."""
    feats = _check_features(feats, "feats")
    n, d = feats.shape
    chunks = feats.split(chunk_rows)
    mu = sum(chunk.double().sum(dim=0) for chunk in chunks) / n
    sigma = torch.zeros(d, d, dtype=torch.float64, device=feats.device)
    for chunk in chunks:
        centred = chunk.double() - mu
        sigma += centred.T @ centred
    return mu.cpu().numpy(), (sigma / (n - 1)).cpu().numpy()


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6) -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)) between two Gaussians, in float64.

    The matrix root is scipy.linalg.sqrtm's, real part taken (as pytorch-fid and StyleGAN2-ADA do). If it
    is not finite (singular product), `eps` is added to both diagonals and the root retried (pytorch-fid).
    """
    mu1, mu2 = np.atleast_1d(_as_float64(mu1, "mu1")), np.atleast_1d(_as_float64(mu2, "mu2"))
    sigma1, sigma2 = np.atleast_2d(_as_float64(sigma1, "sigma1")), np.atleast_2d(_as_float64(sigma2, "sigma2"))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,):
        raise ValueError(f"mu1 and mu2 must be vectors of the same length, got {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"sigma1 and sigma2 must be {d}x{d}, got {sigma1.shape} and {sigma2.shape}")
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(d) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean).real)


def fid_from_features(feats_a, feats_b) -> float:
    """FID between two sets of features [N, D] (float64 statistics)."""
    return frechet_distance(*feature_statistics(feats_a), *feature_statistics(feats_b))


# ---------------------------------------------------------------------------------------------- KID


def kid_from_features(feats_a, feats_b, num_subsets=100, max_subset_size=1000, seed=0) -> float:
    """Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, in float64.

    As StyleGAN2-ADA: m = min(N_a, N_b, max_subset_size); each of `num_subsets` rounds draws m rows of each
    set without replacement (a torch.Generator seeded with `seed`) and adds
        t += (sum_{i != j} k(x_i, x_j) + k(y_i, y_j)) / (m - 1) - 2 * sum_{i, j} k(x_i, y_j) / m,
    and KID = t / num_subsets / m. Runs on the features' device (matmuls; fast on a GPU).
    """
    x_all, y_all = _check_feature_pair(feats_a, feats_b, ("feats_a", "feats_b"), torch.float64)
    num_subsets = _check_positive_int(num_subsets, "num_subsets")
    max_subset_size = _check_positive_int(max_subset_size, "max_subset_size")
    if max_subset_size < 2:
        raise ValueError("max_subset_size must be >= 2 (the unbiased estimate divides by m - 1)")
    d = x_all.shape[1]
    m = min(x_all.shape[0], y_all.shape[0], max_subset_size)
    generator = torch.Generator().manual_seed(int(seed))
    t = torch.zeros((), dtype=torch.float64, device=x_all.device)  # summed on the device: no sync per subset
    for _ in range(num_subsets):
        x = x_all[torch.randperm(x_all.shape[0], generator=generator)[:m].to(x_all.device)]
        y = y_all[torch.randperm(y_all.shape[0], generator=generator)[:m].to(x_all.device)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        t += (a.sum() - a.diagonal().sum()) / (m - 1) - b.sum() * 2 / m
    return t.item() / num_subsets / m


# ------------------------------------------------------------------------------------ numerics


# ------------------------------------------------------------------------------------ precision/recall


def _kth_neighbour_radii(manifold: Tensor, k: int, batch_size: int) -> Tensor:
    # Each row's distances include its own 0, so the k-th neighbour other than itself is the (k+1)-th smallest.
    return torch.cat([torch.cdist(rows, manifold).kthvalue(k + 1, dim=1).values
                      for rows in manifold.split(batch_size)])


def _fraction_inside(probes: Tensor, manifold: Tensor, radii: Tensor, batch_size: int) -> float:
    inside = [(torch.cdist(rows, manifold) <= radii).any(dim=1) for rows in probes.split(batch_size)]
    return torch.cat(inside).float().mean().item()


def precision_recall(real_feats, fake_feats, k=3, batch_size=1024) -> tuple:
    """(precision, recall) with k-NN manifolds (Kynkaanniemi et al. 2019), as StyleGAN2-ADA computes them.

    A real sample's ball reaches to its k-th nearest other real sample; precision is the fraction of fakes
    inside at least one real ball (boundary included). Recall is the same with the roles swapped. Distances
    are float32 torch.cdist (TF32 off), `batch_size` rows at a time (memory: batch_size x N floats), on the
    features' device. (StyleGAN2-ADA rounds the features and the radii to float16 to save memory; this keeps
    them float32, which only moves samples lying within float16 rounding of a ball's edge.)
    """
    real, fake = _check_feature_pair(real_feats, fake_feats, ("real_feats", "fake_feats"), torch.float32)
    k = _check_positive_int(k, "k")
    batch_size = _check_positive_int(batch_size, "batch_size")
    for feats, name in ((real, "real_feats"), (fake, "fake_feats")):
        if feats.shape[0] <= k:
            raise ValueError(f"{name} needs more than k={k} samples for k-NN radii, got {feats.shape[0]}")
    with strict_fp32():  # cdist is a matmul on large sets: TF32 would blur who is inside which ball
        precision = _fraction_inside(fake, real, _kth_neighbour_radii(real, k, batch_size), batch_size)
        recall = _fraction_inside(real, fake, _kth_neighbour_radii(fake, k, batch_size), batch_size)
    return precision, recall


# ------------------------------------------------------------------------------------ compute_metrics


@runtime_checkable
class FeatureExtractor(Protocol):
    """What `compute_metrics` needs from a feature network.

    Called with float32 images [N, C, H, W] in [-1, 1] on the metric device (C as the data has it, 1 or 3;
    the network adapts them, e.g. Inception repeats grayscale to RGB and resizes to 299), it returns
    features [N, feature_dim]. `FIDInceptionV3` is one; any nn.Module with a `feature_dim` attribute is too.
    """

    feature_dim: int

    def __call__(self, images: Tensor) -> Tensor: ...


# (dataset_name, num_real_images (None: all), id(net)) -> {"net", "features" (CPU float32), "stats" (FID mean/cov,
# once asked)}.
# Each entry holds its network, so the id in its key cannot be reused by another network while it exists.
_REAL_FEATURES_CACHE = {}
_INCEPTION_CACHE = {}  # (resolved path, device) -> FIDInceptionV3


def clear_metric_caches() -> None:
    """Forgets cached real-image features and loaded Inception networks."""
    _REAL_FEATURES_CACHE.clear()
    _INCEPTION_CACHE.clear()


def _check_positive_int(value, name) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _resolve_feature_net(feature_net, device):
    """A FeatureExtractor as given, or the FID Inception loaded from a path (None: raises what to supply)."""
    if feature_net is None or isinstance(feature_net, (str, os.PathLike)):
        device = torch.device(device if device is not None else "cpu")
        key = (None if feature_net is None else os.path.realpath(feature_net), device)
        if key not in _INCEPTION_CACHE:
            _INCEPTION_CACHE[key] = load_inception(feature_net, device=device)
        return _INCEPTION_CACHE[key], device
    if not callable(feature_net):
        raise TypeError(f"feature_net must be a FeatureExtractor (callable) or a weights path, got "
                        f"{type(feature_net).__name__}")
    if device is None:
        first = next(iter(feature_net.parameters()), None) if isinstance(feature_net, torch.nn.Module) else None
        device = first.device if first is not None else torch.device("cpu")
    return feature_net, torch.device(device)


def quantize_images(images: Tensor) -> Tensor:
    """Generated float images in [-1, 1] -> uint8 [0, 255], exactly as StyleGAN2-ADA's metric_utils measures its
    generator: `(img * 127.5 + 128).clamp(0, 255).to(torch.uint8)` (round to nearest, out-of-range values
    clipped; pytorch-fid users get the same from saved PNGs). Generators such as StyleGAN2's are not bounded, so
    feeding their raw floats to the feature network would measure pixels no image file can hold."""
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise TypeError(f"images must be a floating tensor, got {getattr(images, 'dtype', type(images))}")
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def _to_model_range(images, name) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]; floating images are taken to be in [-1, 1] already."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(f"{name} must be 4-D NCHW image tensors, got {getattr(images, 'shape', type(images))}")
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    if not images.is_floating_point():
        raise TypeError(f"{name} must be uint8 or floating, got {images.dtype}")
    return images.float()


def _extract(net, images: Tensor, device) -> Tensor:
    with torch.no_grad(), torch.autocast(device.type, enabled=False), strict_fp32():
        feats = net(images.to(device))
    if not isinstance(feats, Tensor) or feats.ndim != 2 or feats.shape[0] != images.shape[0]:
        raise ValueError(f"feature_net must return [N, feature_dim] for N={images.shape[0]} images, "
                         f"got {getattr(feats, 'shape', type(feats))}")
    return feats.float()


def _real_batches(real, batch_size) -> Iterable:
    """Batches of real images from a tensor/array (sliced) or an iterable of batches ((images, labels) ok)."""
    if isinstance(real, (Tensor, np.ndarray)):
        for start in range(0, real.shape[0], batch_size):
            yield real[start:start + batch_size]
        return
    for batch in real:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _real_features(real, num_images, net, device, batch_size) -> Tensor:
    """Features of the first `num_images` real images (None: all of them), on the CPU."""
    feats, count = [], 0
    for batch in _real_batches(real, batch_size):
        batch = _to_model_range(batch, "real images")
        if num_images is not None:
            batch = batch[:num_images - count]
        feats.append(_extract(net, batch, device).cpu())
        count += batch.shape[0]
        if num_images is not None and count >= num_images:
            break
    if count < 2:
        raise ValueError(f"real images: need at least 2, got {count}")
    return torch.cat(feats)


def _fake_features(fake_images_fn, num_images, net, device, batch_size) -> Tensor:
    feats = []
    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        with torch.no_grad():
            images = _to_model_range(fake_images_fn(n), "fake_images_fn(n)")
        if images.shape[0] != n:
            raise ValueError(f"fake_images_fn({n}) returned {images.shape[0]} images")
        feats.append(_extract(net, images, device))
    return torch.cat(feats)


def compute_metrics(fake_images_fn: Callable[[int], Tensor], real_images, metrics=METRICS, num_images=10000,
                    feature_net: Union[FeatureExtractor, str, os.PathLike, None] = None, device=None,
                    batch_size=64, *, dataset_name=None, num_real_images=None, kid_subsets=100,
                    kid_subset_size=1000, pr_k=3, seed=0) -> dict:
    """Evaluates a generator against real images. Returns {'fid', 'kid', 'precision', 'recall'} (those asked).

    fake_images_fn(n): n images [n, C, H, W] (C = 1 or 3 for Inception), uint8 or float in [-1, 1], called
        under no_grad in chunks of `batch_size` until `num_images` are drawn. Floats are used as given: wrap a
        generator's output in `quantize_images` to measure what StyleGAN2-ADA measures (the trainer does).
    real_images: a uint8 [0, 255] or float [-1, 1] tensor [N, C, H, W], or a finite iterable of such batches
        (a DataLoader; (images, labels) batches are fine), never x-flipped (NVIDIA's *_full metrics set
        xflip=False). num_real_images=None (default) uses all of them for FID, as StyleGAN2-ADA's fid50k_full,
        the first 1M for KID and the first 200k for precision/recall, as its kid50k_full and pr50k3_full; an int
        uses the first `num_real_images` (or all if fewer) for every metric.
    feature_net: a FeatureExtractor, or the path of the FID Inception weights (`load_inception`); None
        raises FileNotFoundError saying which file to supply.
    device: where the images are sent and the metrics computed (default: the network's parameters' device,
        else CPU). A network passed as an object must already be there; one loaded from a path is put there.
    dataset_name: when given, the real features are cached in memory under (dataset_name, num_real_images,
        feature network) and later calls with the same key skip the real data entirely; without a name nothing
        is cached. The name must identify the images (data and resolution): the trainer uses 'DATA@RES'.
    kid_subsets, kid_subset_size, seed: `kid_from_features`; pr_k: the k of `precision_recall`.
    """
    metrics = parse_metrics(metrics)
    num_images = _check_positive_int(num_images, "num_images")
    num_real = None if num_real_images is None else _check_positive_int(num_real_images, "num_real_images")
    batch_size = _check_positive_int(batch_size, "batch_size")
    net, device = _resolve_feature_net(feature_net, device)

    key = None if dataset_name is None else (dataset_name, num_real, id(net))
    entry = _REAL_FEATURES_CACHE.get(key)
    if entry is None:
        entry = {"net": net, "features": _real_features(real_images, num_real, net, device, batch_size)}
        if key is not None:
            _REAL_FEATURES_CACHE[key] = entry
    fake = _fake_features(fake_images_fn, num_images, net, device, batch_size)
    real = entry["features"].to(device)

    results = {}
    if "fid" in metrics:
        if "stats" not in entry:
            entry["stats"] = feature_statistics(real)
        results["fid"] = frechet_distance(*feature_statistics(fake), *entry["stats"])
    if "kid" in metrics:
        kid_real = real[:KID_MAX_REAL_IMAGES] if num_real is None else real
        results["kid"] = kid_from_features(fake, kid_real, kid_subsets, kid_subset_size, seed)
    if "pr" in metrics:
        pr_real = real[:PR_MAX_REAL_IMAGES] if num_real is None else real
        results["precision"], results["recall"] = precision_recall(pr_real, fake, k=pr_k, batch_size=1024)
    return results
