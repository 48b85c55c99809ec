"""Audit of the metrics against the references published numbers come from (StyleGAN2-ADA's metrics/, the TF FID
Inception graph, pytorch-fid).

Each test that guards a fixed defect says which one in its docstring; the others pin a convention that was checked
and found to match. Stand-in feature networks keep every test fast (the real Inception weights are not here).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fusegan.engine.metrics as metrics_mod
from fusegan.engine.inception import FIDInceptionV3, load_inception, pytorch_fid_preprocess, tf_preprocess
from fusegan.engine.metrics import (
    clear_metric_caches,
    compute_metrics,
    feature_statistics,
    kid_from_features,
    precision_recall,
    strict_fp32,
)

# Network input ([-1, 1] units) against a float64 reference: float32 rounding of 0..255 pixel values (255 * 2^-24,
# a few roundings deep) and of the interpolation weights, divided by 128. The defect it guards is ~0.5 in size.
TF_INPUT_ATOL = 1e-6
KID_FORMULA_RTOL = 1e-10  # float64 both ways, only the summation order differs


@pytest.fixture(autouse=True)
def _fresh_caches():
    clear_metric_caches()
    yield
    clear_metric_caches()


@pytest.fixture
def restore_tf32_flags():
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    yield
    conv.fp32_precision, matmul.fp32_precision = saved


class RecordingNet(torch.nn.Module):
    """A stand-in feature network (a fixed random projection of 4x4-pooled images) that records what it sees."""

    feature_dim = 8

    def __init__(self, channels=1, seed=0):
        super().__init__()
        self.proj = torch.nn.Linear(channels * 16, self.feature_dim).requires_grad_(False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=torch.Generator().manual_seed(seed)))
        self.images_seen = 0
        self.tf32_seen = []

    def forward(self, images):
        self.images_seen += images.shape[0]
        self.tf32_seen.append((torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision))
        return self.proj(F.adaptive_avg_pool2d(images, 4).flatten(1))


# --------------------------------------------------------------------------------- Inception input


def _nvidia_style_resize(pixels, size=299):
    """The TF graph's resize as StyleGAN2-ADA's inception-2015-12-05.pt reproduces it: bilinear grid_sample
    (border padding, align_corners=False) at input positions j * in / size, given as normalised coordinates."""
    n, c, h, w = pixels.shape

    def normalised(in_size):
        pos = torch.arange(size, dtype=torch.float64) * in_size / size  # TF1 legacy: no half-pixel centres
        return (2 * pos + 1) / in_size - 1  # grid_sample's align_corners=False convention

    gy, gx = torch.meshgrid(normalised(h), normalised(w), indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).expand(n, -1, -1, -1)
    return F.grid_sample(pixels.double(), grid, mode="bilinear", padding_mode="border", align_corners=False)


@pytest.mark.parametrize("shape", [(2, 3, 32, 48), (1, 3, 320, 301), (1, 1, 17, 299)])
def test_inception_input_is_the_tf_graph_preprocessing(shape):
    """Defect: images reached the network through pytorch-fid's F.interpolate (half-pixel centres) and
    x / 127.5 - 1, where the TF graph (and StyleGAN2-ADA's port, whose numbers users compare with) resizes with
    TF1's legacy bilinear resize (input position j * in / out) and scales by (x - 128) / 128. The half-pixel
    shift alone moves every upsampled pixel by almost half an input pixel."""
    g = torch.Generator().manual_seed(sum(shape))
    u8 = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    expected = (_nvidia_style_resize(u8.float().expand(-1, 3, -1, -1)) - 128) / 128
    got = FIDInceptionV3().preprocess(u8)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=TF_INPUT_ATOL, rtol=0)
    # Float images in [-1, 1] (what compute_metrics hands the network) are the same pixels.
    torch.testing.assert_close(tf_preprocess(u8.float() / 127.5 - 1).double(), expected, atol=TF_INPUT_ATOL, rtol=0)


def test_tf_resize_hand_built():
    """Rows 0 and 255 upsampled 2 -> 299: output row j reads input row 2j/299 (no half-pixel centre), clamped at
    the last row: 255 * min(2j/299, 1). Columns are 299 wide already, so they pass unchanged."""
    u8 = torch.zeros(1, 1, 2, 299, dtype=torch.uint8)
    u8[:, :, 1] = 255
    rows = tf_preprocess(u8)[0, 0, :, 0].double()
    j = torch.arange(299, dtype=torch.float64)
    expected = (255 * torch.clamp(2 * j / 299, max=1) - 128) / 128
    torch.testing.assert_close(rows, expected, atol=TF_INPUT_ATOL, rtol=0)
    # Scaling: pixel 128 is 0, 0 is -1, 255 is 127/128 (not 1, as x / 127.5 - 1 would give).
    flat = tf_preprocess(torch.tensor([0, 128, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 5, 7))
    assert flat.shape == (3, 3, 299, 299)
    assert [set(image.unique().tolist()) for image in flat] == [{-1.0}, {0.0}, {127 / 128}]


def test_pytorch_fid_preprocessing_is_still_available(tmp_path):
    x = torch.rand(1, 3, 40, 40) * 2 - 1
    expected = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    torch.testing.assert_close(FIDInceptionV3("pytorch-fid").preprocess(x), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(pytorch_fid_preprocess(x), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        FIDInceptionV3("torchvision")
    torch.save(FIDInceptionV3().state_dict(), tmp_path / "w.pth")
    assert load_inception(tmp_path / "w.pth").preprocessing == "tf"
    assert load_inception(tmp_path / "w.pth", preprocessing="pytorch-fid").preprocessing == "pytorch-fid"


# --------------------------------------------------------------------------------- real images


def test_all_real_images_are_used_by_default():
    """Defect: the real features came from the first `num_images` real images (the trainer's
    --metrics-images, 5000 by default, in dataset order: for a class-sorted folder possibly a single class),
    where StyleGAN2-ADA's fid50k_full / kid50k_full / pr50k3_full measure against all of them."""
    net = RecordingNet()
    reals = torch.randint(0, 256, (300, 1, 8, 8), dtype=torch.uint8)
    compute_metrics(lambda n: torch.rand(n, 1, 8, 8) * 2 - 1, reals, metrics="fid", num_images=50, feature_net=net,
                    batch_size=64)
    assert net.images_seen == 300 + 50
    net.images_seen = 0
    compute_metrics(lambda n: torch.rand(n, 1, 8, 8) * 2 - 1, reals, metrics="fid", num_images=50, feature_net=net,
                    batch_size=64, num_real_images=120)
    assert net.images_seen == 120 + 50  # an explicit count is still honoured


def test_real_image_caps_of_kid_and_pr_are_nvidias(monkeypatch):
    """kid50k_full uses at most 1M real images, pr50k3_full at most 200k (the first ones); FID all."""
    assert (metrics_mod.KID_MAX_REAL_IMAGES, metrics_mod.PR_MAX_REAL_IMAGES) == (1_000_000, 200_000)
    monkeypatch.setattr(metrics_mod, "KID_MAX_REAL_IMAGES", 70)
    monkeypatch.setattr(metrics_mod, "PR_MAX_REAL_IMAGES", 50)
    net = RecordingNet()
    g = torch.Generator().manual_seed(0)
    reals = torch.rand(100, 1, 8, 8, generator=g) * 2 - 1
    fakes = torch.rand(60, 1, 8, 8, generator=g) * 2 - 1
    got = compute_metrics(lambda n: fakes[:n], reals, num_images=60, feature_net=net, batch_size=60,
                          kid_subsets=3, kid_subset_size=1000)
    with torch.no_grad():
        real_feats, fake_feats = net(reals), net(fakes)
    assert got["kid"] == pytest.approx(kid_from_features(fake_feats, real_feats[:70], 3, 1000), rel=1e-6)
    assert (got["precision"], got["recall"]) == pytest.approx(precision_recall(real_feats[:50], fake_feats),
                                                              abs=1e-6)
    assert got["fid"] == pytest.approx(metrics_mod.fid_from_features(fake_feats, real_feats), rel=1e-5)


# --------------------------------------------------------------------------------- numerics


def test_features_and_distances_are_computed_without_tf32(restore_tf32_flags, monkeypatch):
    """Defect: under `--precision tf32` (and for cuDNN convolutions by PyTorch's default) the feature network and
    precision/recall's cdist matmuls ran in TF32 on the GPU, where StyleGAN2-ADA computes metric features in full
    fp32; the metrics then depended on the training precision. The switches are read inside the calls (on a CPU
    they are only settings, which is what is checked here) and put back after."""
    torch.backends.cuda.matmul.allow_tf32 = True  # what Precision('tf32') does
    torch.backends.cudnn.allow_tf32 = True
    before = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    assert before == ("tf32", "tf32")
    seen_by_cdist = []
    cdist = torch.cdist

    def recording_cdist(*args, **kwargs):
        seen_by_cdist.append((torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision))
        return cdist(*args, **kwargs)

    monkeypatch.setattr(torch, "cdist", recording_cdist)
    net = RecordingNet()
    reals = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    compute_metrics(lambda n: torch.rand(n, 1, 8, 8) * 2 - 1, reals, num_images=20, feature_net=net, batch_size=16)
    assert net.tf32_seen and set(net.tf32_seen) == {("ieee", "ieee")}
    assert seen_by_cdist and set(seen_by_cdist) == {("ieee", "ieee")}
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # the legacy view agrees


def test_strict_fp32_restores_on_error(restore_tf32_flags):
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    with pytest.raises(RuntimeError, match="boom"):
        with strict_fp32():
            raise RuntimeError("boom")
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"


def test_feature_statistics_in_chunks_match_numpy():
    x = torch.randn(103, 5) * 3 + 100  # a large mean: the centred second pass keeps the covariance accurate
    mu, sigma = feature_statistics(x, chunk_rows=10)
    x64 = x.double().numpy()
    np.testing.assert_allclose(mu, x64.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x64, rowvar=False), rtol=1e-10)


# ------------------------------------------------------------------------- conventions checked to match


def test_kid_is_nvidias_estimator_on_subsets_drawn_without_replacement():
    """StyleGAN2-ADA's compute_kid, rewritten in numpy on the index sets our seeded generator draws: x are the
    generated features, m = min(N_gen, N_real, max_subset_size), n the feature dimension."""
    g = torch.Generator().manual_seed(3)
    fake = torch.randn(40, 6, generator=g, dtype=torch.float64)
    real = torch.randn(55, 6, generator=g, dtype=torch.float64) * 1.1 + 0.2
    num_subsets, max_subset_size, seed = 4, 25, 7
    draw = torch.Generator().manual_seed(seed)
    x_all, y_all, n, m, t = fake.numpy(), real.numpy(), 6, 25, 0.0
    for _ in range(num_subsets):
        ix = torch.randperm(40, generator=draw)[:m].numpy()
        iy = torch.randperm(55, generator=draw)[:m].numpy()
        assert len(set(ix.tolist())) == m and len(set(iy.tolist())) == m  # without replacement
        x, y = x_all[ix], y_all[iy]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    expected = t / num_subsets / m
    got = kid_from_features(fake, real, num_subsets=num_subsets, max_subset_size=max_subset_size, seed=seed)
    assert got == pytest.approx(expected, rel=KID_FORMULA_RTOL)


def test_pr_radius_counts_duplicates_as_neighbours_like_nvidia():
    """NVIDIA's radius is the (k+1)-th smallest distance with the sample's own zero included, so an exact
    duplicate is a neighbour at distance 0. Reals 0, 0, 10, 20 with k=1: radii 0, 0, 10, 10. A fake at -0.5 is
    in no ball (0.5 > 0 from the zeros, 10.5 > 10 from 10); a fake at 0.5 is in 10's (9.5 <= 10)."""
    real = torch.tensor([[0.0], [0.0], [10.0], [20.0]])
    assert precision_recall(real, torch.tensor([[-0.5], [0.5]]), k=1)[0] == 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_precision_recall_on_gpu_is_the_same_with_tf32_switched_on(restore_tf32_flags):
    """Features with a large common offset: d^2 = |x|^2 + |y|^2 - 2 x.y cancels to ~1e-5 of |x|^2, which fp32
    keeps (eps 6e-8) and TF32 (eps 5e-4) does not. With TF32 switched on globally, precision/recall must still
    equal the strict-fp32 result."""
    g = torch.Generator().manual_seed(0)
    real = (1.0 + 3e-3 * torch.randn(3000, 64, generator=g)).cuda()
    fake = (1.0 + 3e-3 * torch.randn(2000, 64, generator=g) + 1e-3).cuda()
    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "ieee"
    strict = precision_recall(real, fake, k=3)
    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "tf32"
    assert precision_recall(real, fake, k=3) == strict
