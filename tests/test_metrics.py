"""FID/KID/precision-recall against closed forms and direct formulas; the FID Inception network's structure,
loading and error messages; compute_metrics end to end with a stand-in feature network and its real-feature cache."""
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import fusegan.engine.metrics as metrics_mod
from fusegan.engine.inception import WEIGHTS_FILENAME, FIDInceptionV3, load_inception, pytorch_fid_preprocess
from fusegan.engine.metrics import (
    METRICS,
    FeatureExtractor,
    clear_metric_caches,
    compute_metrics,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    parse_metrics,
    precision_recall,
)

# float64 statistics: scipy's sqrtm is accurate to ~1e-12 relative on these well-conditioned matrices.
FID_CLOSED_FORM_RTOL = 1e-9
# FID from n=200k samples of 3-D Gaussians: the standard error is about 0.01 (dominated by the error of the
# estimated mean difference, 2 |dmu| sqrt(tr(s1 + s2) / n)), so 0.05 is a 5-sigma bound.
FID_SAMPLED_ATOL = 0.05
KID_DIRECT_RTOL = 1e-10  # same float64 sums, different order
INCEPTION_LOAD_ATOL = 0.0  # the same weights and the same input: bit-identical outputs


# ------------------------------------------------------------------------------------------ names


def test_metric_names_and_parse():
    assert METRICS == ("fid", "kid", "pr")
    assert parse_metrics("fid,kid") == ("fid", "kid")
    assert parse_metrics(" PR , fid,pr") == ("pr", "fid")
    assert parse_metrics(["kid"]) == ("kid",)
    with pytest.raises(ValueError, match="'fd'"):
        parse_metrics("fid,fd")
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metrics("fid,,kid")


# -------------------------------------------------------------------------------------------- FID


def _random_spd(d, seed):
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T + 0.5 * np.eye(d)


def test_frechet_distance_is_zero_for_identical_statistics():
    sigma = _random_spd(16, 0)
    mu = np.random.default_rng(1).normal(size=16)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < FID_CLOSED_FORM_RTOL * np.trace(sigma)


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=FID_CLOSED_FORM_RTOL)
    # Torch tensors are accepted too, and the distance is symmetric.
    got_t = frechet_distance(torch.tensor(mu2), torch.tensor(np.diag(s2)), torch.tensor(mu1), torch.tensor(np.diag(s1)))
    assert got_t == pytest.approx(expected, rel=FID_CLOSED_FORM_RTOL)


def test_frechet_distance_one_dimensional_closed_form():
    # 1-D: (m1 - m2)^2 + (sd1 - sd2)^2 with variances sd^2.
    m1, v1, m2, v2 = 0.3, 4.0, -1.2, 0.25
    expected = (m1 - m2) ** 2 + (math.sqrt(v1) - math.sqrt(v2)) ** 2
    assert frechet_distance(m1, v1, m2, v2) == pytest.approx(expected, rel=FID_CLOSED_FORM_RTOL)
    assert frechet_distance([m1], [[v1]], [m2], [[v2]]) == pytest.approx(expected, rel=FID_CLOSED_FORM_RTOL)


def test_frechet_distance_rotation_invariant():
    # Rotating both Gaussians by the same orthogonal Q leaves the distance unchanged, and makes the
    # covariances non-diagonal (non-commuting), which exercises the general matrix square root.
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = np.diag(rng.uniform(0.2, 2, 5)), np.diag(rng.uniform(0.2, 2, 5))
    plain = frechet_distance(mu1, s1, mu2, s2)
    rotated = frechet_distance(q @ mu1, q @ s1 @ q.T, q @ mu2, q @ s2 @ q.T)
    assert rotated == pytest.approx(plain, rel=1e-8)


def test_frechet_distance_checks_shapes():
    with pytest.raises(ValueError, match="sigma1 and sigma2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="mu1 and mu2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3))


def test_feature_statistics_match_numpy():
    x = torch.randn(50, 6, dtype=torch.float64)
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(mu, x.numpy().mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.numpy(), rowvar=False), rtol=1e-12)
    assert feature_statistics(x[:, :1])[1].shape == (1, 1)


def test_fid_from_features_matches_analytic_gaussians():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    m1, s1 = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, 2.0, 0.5])
    m2, s2 = torch.tensor([1.0, -0.5, 0.0]), torch.tensor([2.0, 1.0, 1.5])
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    a = (m1 + torch.randn(n, 3, generator=g) * s1.sqrt()).double() @ q.T
    b = (m2 + torch.randn(n, 3, generator=g) * s2.sqrt()).double() @ q.T
    analytic = (((m1 - m2) ** 2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum()).item()
    assert fid_from_features(a, b) == pytest.approx(analytic, abs=FID_SAMPLED_ATOL)
    assert fid_from_features(a.float(), a.float()) == pytest.approx(0.0, abs=1e-9)


# -------------------------------------------------------------------------------------------- KID


def _unbiased_mmd2_direct(x, y):
    """The unbiased MMD^2 written out as the double sums, with k(a, b) = (a.b / d + 1)^3."""
    x, y = x.tolist(), y.tolist()
    m, d = len(x), len(x[0])

    def k(a, b):
        return (sum(ai * bi for ai, bi in zip(a, b)) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_single_full_subset_equals_direct_mmd():
    x = torch.randn(24, 5, dtype=torch.float64)
    y = torch.randn(24, 5, dtype=torch.float64) * 1.3 + 0.2
    # One subset of size m = N is a permutation of all samples, so the estimate is the full-sample MMD^2.
    got = kid_from_features(x, y, num_subsets=1, max_subset_size=1000, seed=5)
    assert got == pytest.approx(_unbiased_mmd2_direct(x, y), rel=KID_DIRECT_RTOL)


def test_kid_subsets_are_seeded_and_sized():
    x, y = torch.randn(60, 4), torch.randn(80, 4) + 0.3
    a = kid_from_features(x, y, num_subsets=5, max_subset_size=20, seed=1)
    assert a == kid_from_features(x, y, num_subsets=5, max_subset_size=20, seed=1)
    assert a != kid_from_features(x, y, num_subsets=5, max_subset_size=20, seed=2)
    # The subset size is capped by the smaller set: with 60 and 80 samples m = 60, and each subset of
    # the 60-sample set is all of it.
    full = kid_from_features(x, y[:60], num_subsets=1, max_subset_size=10_000)
    assert full == pytest.approx(_unbiased_mmd2_direct(x.double(), y[:60].double()), rel=1e-6)


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 16, generator=g), torch.randn(2000, 16, generator=g)
    same = kid_from_features(a, b, num_subsets=10, max_subset_size=1000)
    shifted = kid_from_features(a, b + 0.5, num_subsets=10, max_subset_size=1000)
    # Unbiased: the same-distribution estimate scatters around 0 (seen |KID| ~ 1e-3 here); the shift gives ~1.
    assert abs(same) < 0.01
    assert shifted > 0.5


# ------------------------------------------------------------------------------------ precision/recall


def _precision_recall_loops(real, fake, k):
    """Explicit loops: radius = distance to the k-th nearest other sample; count probes inside any ball."""
    def radii(points):
        return [sorted(float(np.linalg.norm(p - q)) for j, q in enumerate(points) if j != i)[k - 1]
                for i, p in enumerate(points)]

    def fraction(probes, manifold, r):
        return np.mean([any(np.linalg.norm(p - q) <= r[j] for j, q in enumerate(manifold)) for p in probes])

    return fraction(fake, real, radii(real)), fraction(real, fake, radii(fake))


def test_precision_recall_identical_sets():
    x = torch.randn(40, 8)
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)


def test_precision_recall_far_apart_sets():
    x = torch.randn(40, 8)
    assert precision_recall(x, x + 100.0, k=3) == (0.0, 0.0)


def test_precision_recall_hand_built_1d():
    # Reals 0, 1, 3, 7 with k=1 have radii 1, 1, 2, 4. Fakes: 0.5 (in the ball of 0), 2.5 (ball of 3), 11.5,
    # 12, -1.5 (in none): precision 2/5. Fakes sorted -1.5, 0.5, 2.5, 11.5, 12 have radii 2, 2, 2, 0.5, 0.5;
    # reals 0 and 1 lie within 2 of 0.5, 3 within 2 of 2.5, 7 in no ball: recall 3/4.
    real = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    fake = torch.tensor([[0.5], [2.5], [11.5], [12.0], [-1.5]])
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == pytest.approx(2 / 5)
    assert recall == pytest.approx(3 / 4)


def test_precision_recall_hand_built_2d():
    # Reals at the unit square's corners, k=1: radius 1 each. Fake (0.5, 0.5) is 0.707 from every corner,
    # (3, 3) is far: precision 1/2. The two fakes, k=1, both have radius |(2.5, 2.5)| = 3.54, and every
    # corner is within 0.71 of (0.5, 0.5): recall 1.
    real = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    fake = torch.tensor([[0.5, 0.5], [3.0, 3.0]])
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_matches_loops_and_batching(k):
    g = torch.Generator().manual_seed(k)
    real = torch.randn(37, 2, generator=g, dtype=torch.float64)
    fake = torch.randn(29, 2, generator=g, dtype=torch.float64) * 0.6 + 1.5
    expected = _precision_recall_loops(real.numpy(), fake.numpy(), k)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # a case where both counts are informative
    for batch_size in (1, 7, 1024):
        got = precision_recall(real, fake, k=k, batch_size=batch_size)
        assert got == pytest.approx(expected, abs=1e-7)


def test_precision_recall_needs_more_than_k_samples():
    with pytest.raises(ValueError, match="more than k=3"):
        precision_recall(torch.randn(3, 2), torch.randn(10, 2), k=3)


# ----------------------------------------------------------------------------------- Inception network

# Parameters of pytorch-fid's FIDInceptionV3 (torchvision's Inception3 with aux_logits=False,
# num_classes=1008; the FID blocks only change pooling, not parameters). Derivation:
#   torchvision inception_v3 (aux logits, 1000 classes)               27,161,264
#   - AuxLogits: conv0 768*128 + BN 2*128 = 98,560; conv1 128*768*25 + BN 2*768 = 2,459,136;
#                fc 768*1000 + 1000 = 769,000                        -3,326,696
#   = without AuxLogits, fc 1000                                      23,834,568
#   + fc with 1008 outputs instead of 1000: 8 * (2048 + 1)            +   16,392
#   = FIDInceptionV3                                                  23,850,960
FID_INCEPTION_PARAMS = 23_850_960
FID_INCEPTION_FC_PARAMS = 2048 * 1008 + 1008
KNOWN_PYTORCH_FID_KEYS = [
    "Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.weight", "Conv2d_1a_3x3.bn.bias",
    "Conv2d_1a_3x3.bn.running_mean", "Conv2d_1a_3x3.bn.running_var", "Conv2d_4a_3x3.conv.weight",
    "Mixed_5b.branch1x1.conv.weight", "Mixed_5b.branch5x5_2.conv.weight", "Mixed_5b.branch_pool.bn.running_var",
    "Mixed_6a.branch3x3.conv.weight", "Mixed_6e.branch7x7dbl_5.conv.weight", "Mixed_7a.branch7x7x3_4.bn.bias",
    "Mixed_7b.branch3x3_2a.conv.weight", "Mixed_7c.branch3x3dbl_3b.conv.weight", "fc.weight", "fc.bias",
]
KNOWN_PYTORCH_FID_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_2.conv.weight": (192, 192, 7, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
}


def _randomized_inception(seed=0):
    """Random weights with O(1) activations (He-normal convs, random BN statistics) so outputs are informative."""
    g = torch.Generator().manual_seed(seed)
    net = FIDInceptionV3().eval()
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("conv.weight"):
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * math.sqrt(2.0 / fan_in))
            elif name.endswith(("bn.weight", "bn.running_var")):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("bn.bias", "bn.running_mean")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return net


@pytest.fixture(scope="module")
def inception_net():
    return _randomized_inception()


def test_inception_structure_matches_pytorch_fid():
    net = FIDInceptionV3()
    assert sum(p.numel() for p in net.parameters()) == FID_INCEPTION_PARAMS
    assert net.fc.weight.numel() + net.fc.bias.numel() == FID_INCEPTION_FC_PARAMS
    state = net.state_dict()
    for key in KNOWN_PYTORCH_FID_KEYS:
        assert key in state, key
    for key, shape in KNOWN_PYTORCH_FID_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    # 94 conv+BN units (5 stem, 3x7 A, 4 B, 4x10 C, 6 D, 2x9 E) x (1 conv + 5 BN tensors) + fc weight and bias.
    assert len(state) == 94 * 6 + 2
    assert isinstance(net, FeatureExtractor) and net.feature_dim == 2048


def test_inception_forward_shapes_and_input_forms(inception_net):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        feats = inception_net(x)
        assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
        assert feats.std() > 1e-3  # the randomized weights keep activations alive
        assert (feats >= 0).all()  # an average of ReLU outputs
        # Grayscale is repeated to RGB.
        gray = torch.rand(1, 1, 40, 40) * 2 - 1
        torch.testing.assert_close(inception_net(gray), inception_net(gray.repeat(1, 3, 1, 1)))
        # uint8 [0, 255] maps to the same input as its float [-1, 1] equivalent.
        u8 = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
        torch.testing.assert_close(inception_net(u8), inception_net(u8.float() / 127.5 - 1))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        inception_net(torch.zeros(1, 4, 32, 32))


def test_inception_preprocess_resizes_like_pytorch_fid():
    # pytorch-fid: interpolate [0, 1] images to 299 bilinearly (align_corners=False), then 2x - 1.
    x01 = torch.rand(2, 3, 50, 70)
    expected = 2 * torch.nn.functional.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False) - 1
    torch.testing.assert_close(pytorch_fid_preprocess(2 * x01 - 1), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_inception_round_trip(tmp_path, inception_net, suffix):
    path = tmp_path / ("weights" + suffix)
    state = {k: v.contiguous() for k, v in inception_net.state_dict().items()}
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    loaded = load_inception(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(1, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), inception_net(x), atol=INCEPTION_LOAD_ATOL, rtol=0)


def test_load_inception_accepts_files_without_optional_keys(tmp_path, inception_net):
    # Old-PyTorch files lack num_batches_tracked; the classifier is not needed for features.
    state = {k: v for k, v in inception_net.state_dict().items()
             if not k.endswith("num_batches_tracked") and not k.startswith("fc.")}
    torch.save(state, tmp_path / WEIGHTS_FILENAME)
    loaded = load_inception(tmp_path / WEIGHTS_FILENAME)
    torch.testing.assert_close(loaded.Mixed_7c.branch_pool.bn.running_var,
                               inception_net.Mixed_7c.branch_pool.bn.running_var)


@pytest.mark.parametrize("path", [None, "does/not/exist.pth"])
def test_load_inception_missing_file_says_what_to_supply(path):
    with pytest.raises(FileNotFoundError) as info:
        load_inception(path)
    message = str(info.value)
    for part in (WEIGHTS_FILENAME, "pytorch-fid", "--inception PATH", "releases/download"):
        assert part in message
    if path is not None:
        assert path in message


def test_load_inception_bad_keys_are_listed(tmp_path):
    state = FIDInceptionV3().state_dict()
    del state["Mixed_6c.branch7x7_1.conv.weight"]
    state["blocks.0.0.conv.weight"] = torch.zeros(1)
    state["Mixed_5b.branch1x1.conv.weight"] = torch.zeros(64, 192, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as info:
        load_inception(tmp_path / "bad.pth")
    message = str(info.value)
    assert "1 missing keys: Mixed_6c.branch7x7_1.conv.weight" in message
    assert "1 unexpected keys: blocks.0.0.conv.weight" in message
    assert "Mixed_5b.branch1x1.conv.weight: file (64, 192, 3, 3), model (64, 192, 1, 1)" in message


def test_load_inception_rejects_non_state_dict(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict"):
        load_inception(tmp_path / "list.pth")


# ------------------------------------------------------------------------------------ compute_metrics


class RandomProjection(torch.nn.Module):
    """A stand-in feature network: a fixed random linear map of the 8x8-pooled image."""

    feature_dim = 16

    def __init__(self, channels=1):
        super().__init__()
        self.proj = torch.nn.Linear(channels * 64, self.feature_dim)

    def forward(self, images):
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1))


class CountingLoader:
    """An iterable of (images, labels) batches that counts how often it is iterated."""

    def __init__(self, images, batch_size):
        self.images, self.batch_size, self.iterations = images, batch_size, 0

    def __iter__(self):
        self.iterations += 1
        for start in range(0, len(self.images), self.batch_size):
            yield self.images[start:start + self.batch_size], torch.zeros(0)


@pytest.fixture(autouse=True)
def _fresh_caches():
    clear_metric_caches()
    yield
    clear_metric_caches()


def _fake_images_fn(shift):
    g = torch.Generator().manual_seed(1)

    def fn(n):
        return (torch.rand(n, 1, 16, 16, generator=g) * 2 - 1 + shift).clamp(-1, 1)

    return fn


def test_compute_metrics_end_to_end_with_cache():
    net = RandomProjection()
    real_u8 = torch.randint(0, 256, (300, 1, 16, 16), dtype=torch.uint8)
    loader = CountingLoader(real_u8, batch_size=64)
    kwargs = dict(num_images=200, feature_net=net, batch_size=50, dataset_name="noise16", kid_subsets=10,
                  kid_subset_size=100)
    first = compute_metrics(_fake_images_fn(0.0), loader, **kwargs)
    assert set(first) == {"fid", "kid", "precision", "recall"}
    assert all(math.isfinite(v) for v in first.values())
    assert loader.iterations == 1
    second = compute_metrics(_fake_images_fn(0.5), loader, **kwargs)
    assert loader.iterations == 1  # the real features came from the cache
    assert second["fid"] > first["fid"] and second["kid"] > first["kid"]  # the shifted generator is worse
    # All real images are used whatever the number of generated ones, so that changes no cache entry ...
    compute_metrics(_fake_images_fn(0.0), loader, **{**kwargs, "num_images": 100})
    assert loader.iterations == 1
    # ... while another real-image count, or another network, is another cache entry.
    compute_metrics(_fake_images_fn(0.0), loader, **{**kwargs, "num_real_images": 100})
    assert loader.iterations == 2
    compute_metrics(_fake_images_fn(0.0), loader, **{**kwargs, "feature_net": RandomProjection()})
    assert loader.iterations == 3


def test_compute_metrics_matches_direct_feature_metrics():
    net = RandomProjection()
    real = torch.rand(120, 1, 16, 16) * 2 - 1
    fake_fn = _fake_images_fn(0.2)
    got = compute_metrics(fake_fn, real, metrics="fid,pr", num_images=120, feature_net=net, batch_size=32)
    assert set(got) == {"fid", "precision", "recall"}
    # Rebuild the same fake stream: compute_metrics drew 32, 32, 32, 24 images from one seeded RNG.
    stream = _fake_images_fn(0.2)
    with torch.no_grad():
        real_feats = net(real)
        fake_feats = net(torch.cat([stream(n) for n in (32, 32, 32, 24)]))
    assert got["fid"] == pytest.approx(fid_from_features(fake_feats, real_feats), rel=1e-5)
    assert (got["precision"], got["recall"]) == pytest.approx(precision_recall(real_feats, fake_feats), abs=1e-6)


def test_compute_metrics_argument_errors():
    net = RandomProjection()
    real = torch.rand(20, 1, 16, 16)
    with pytest.raises(FileNotFoundError, match="--inception PATH"):
        compute_metrics(_fake_images_fn(0.0), real, num_images=10, feature_net=None)
    with pytest.raises(ValueError, match="unknown metric 'is'"):
        compute_metrics(_fake_images_fn(0.0), real, metrics="fid,is", num_images=10, feature_net=net)
    with pytest.raises(ValueError, match=r"returned 3 images"):
        compute_metrics(lambda n: torch.zeros(3, 1, 16, 16), real, metrics="fid", num_images=10, feature_net=net)
    with pytest.raises(ValueError, match="at least 2"):
        compute_metrics(_fake_images_fn(0.0), real[:1], metrics="fid", num_images=10, feature_net=net)


def test_compute_metrics_loads_inception_from_path(tmp_path, inception_net):
    path = tmp_path / WEIGHTS_FILENAME
    torch.save(inception_net.state_dict(), path)
    real = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    # KID only: FID of 2 samples in 2048-D is a singular 2048x2048 sqrtm, slow and not the point here.
    for _ in range(2):
        got = compute_metrics(lambda n: torch.rand(n, 1, 32, 32) * 2 - 1, real, metrics="kid", num_images=2,
                              feature_net=str(path), batch_size=2, kid_subsets=2, dataset_name="u8")
        assert set(got) == {"kid"} and math.isfinite(got["kid"])
    assert len(metrics_mod._INCEPTION_CACHE) == 1  # loaded once, reused for the second evaluation
