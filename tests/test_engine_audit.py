"""Audit of metrics, Inception, checkpoints and the trainer against what the reference implementations do.

Each test that guards a fixed defect says which one in its docstring. Training runs use the dcgan recipe at toy
widths on the reference path (a second or two each).
"""
import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import load_file

from fusegan.engine import checkpoint as ckpt
from fusegan.engine import metrics
from fusegan.engine.config import TrainConfig
from fusegan.engine.inception import FIDInceptionV3, load_inception
from fusegan.engine.trainer import Trainer, train

TINY_DCGAN = {"nz": 8, "ngf": 4, "ndf": 4}
# pytorch-fid and ours call the same scipy sqrtm on the same float64 matrices: only summation order differs.
FID_REFERENCE_RTOL = 1e-9


def tiny_config(run_dir, **overrides):
    fields = dict(recipe="dcgan", data="digits", res=32, batch=8, steps=6, snap=3, log_every=2, workers=0,
                  impl="ref", device="cpu", progress=False, tensorboard=False, run_dir=str(run_dir),
                  recipe_options=dict(TINY_DCGAN))
    fields.update(overrides)
    return TrainConfig(**fields)


def assert_same_checkpoint(a, b):
    (wa, sa), (wb, sb) = [(load_file(str(w)), ckpt.load_state(s)) for w, s in map(ckpt.find_latest, (a, b))]
    assert sa["step"] == sb["step"]
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    for name, opt in sa["optimizers"].items():
        for pid, st in opt["state"].items():
            for field, value in st.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["optimizers"][name]["state"][pid][field]))
    for ra, rb in zip(ckpt.rank_rng_states(sa), ckpt.rank_rng_states(sb)):
        assert torch.equal(ra["torch"], rb["torch"]) and torch.equal(ra["aug"], rb["aug"])


class RecordingProjection(torch.nn.Module):
    """A stand-in feature network that keeps every batch it is shown."""
    feature_dim = 16

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(32 * 32, self.feature_dim).requires_grad_(False)
        self.seen = []

    def forward(self, images):
        self.seen.append(images.detach().clone())
        return self.proj(images.float().mean(1).flatten(1))


@pytest.fixture(autouse=True)
def _fresh_metric_caches():
    metrics.clear_metric_caches()
    yield
    metrics.clear_metric_caches()


# ------------------------------------------------------------------------------------------------ FID


def _pytorch_fid_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance, written out (without its imaginary-part assertion)."""
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = covmean.real
    diff = mu1 - mu2
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def test_fid_with_fewer_samples_than_dimensions_matches_pytorch_fid():
    """N < D: singular covariances, complex sqrtm; the real part is taken as pytorch-fid and NVIDIA do."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 48)).astype(np.float32)
    b = (rng.normal(size=(13, 48)) * 1.2 + 0.3).astype(np.float32)
    stats = [(x.astype(np.float64).mean(0), np.cov(x.astype(np.float64), rowvar=False)) for x in (a, b)]
    expected = _pytorch_fid_distance(*stats[0], *stats[1])
    assert metrics.fid_from_features(torch.from_numpy(a), b) == pytest.approx(expected, rel=FID_REFERENCE_RTOL)


# ------------------------------------------------------------------------------------- metrics in training


def test_load_inception_leaves_the_global_rng_untouched(tmp_path):
    """Defect: building the network drew its throw-away random init from the global RNG, so `--metrics` moved
    the training stream (and a resumed run, which loads it after restoring the RNG, left the uninterrupted one)."""
    path = tmp_path / "inception.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in FIDInceptionV3().state_dict().items()}, str(path))
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    load_inception(path)
    assert torch.equal(torch.get_rng_state(), before)


def test_resume_with_metrics_is_bit_exact(tmp_path, monkeypatch):
    """Defect: metrics at a snapshot drew from the global training RNG (the real-image DataLoader's base seed)
    after the snapshot had saved it, so a run resumed from that snapshot left the uninterrupted one."""
    net = RecordingProjection()
    monkeypatch.setattr(Trainer, "_feature_net", lambda self: net)
    opts = dict(metrics=("fid",), metrics_images=16, snap=2)
    train(tiny_config(tmp_path / "straight", steps=6, **opts))
    metrics.clear_metric_caches()  # what a new process starts with
    train(tiny_config(tmp_path / "split", steps=2, **opts))
    metrics.clear_metric_caches()
    train(tiny_config(tmp_path / "split", steps=6, resume=str(tmp_path / "split"), **opts))
    assert_same_checkpoint(tmp_path / "straight", tmp_path / "split")


def test_metrics_see_generated_images_quantized_like_stylegan2_ada(tmp_path, monkeypatch):
    """Defect: generator outputs went to the feature network as raw floats (StyleGAN2's are unbounded), where
    StyleGAN2-ADA measures `(img * 127.5 + 128).clamp(0, 255).to(uint8)` and pytorch-fid saved PNGs."""
    net = RecordingProjection()
    monkeypatch.setattr(Trainer, "_feature_net", lambda self: net)
    trainer = Trainer(tiny_config(tmp_path, metrics=("fid",), metrics_images=8))
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(8, 1, 32, 32, generator=g) * 2  # well outside [-1, 1] in places
    monkeypatch.setattr(trainer.recipe, "sample", lambda n, generator, truncation=1.0: raw[:n].clone())
    trainer._metrics()
    expected_u8 = (raw * 127.5 + 128).clamp(0, 255).to(torch.uint8)  # NVIDIA's metric_utils line
    fakes = net.seen[-1]  # reals are extracted first, then the fakes
    torch.testing.assert_close(fakes.float(), expected_u8.float() / 127.5 - 1, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------- checkpoints


def _finished_run(tmp_path, **overrides):
    run = tmp_path / "run"
    train(tiny_config(run, steps=3, snap=3, **overrides))
    return run


def test_truncated_weights_file_gives_a_checkpoint_error_naming_it(tmp_path):
    """Defect: a truncated .safetensors raised safetensors' own SafetensorError (not a RuntimeError, so the CLI
    printed a traceback) without the file's name."""
    run = _finished_run(tmp_path)
    weights, _ = ckpt.find_latest(run)
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match=weights.name):
        Trainer(tiny_config(run, steps=5, resume=str(run)))


def test_truncated_state_file_gives_a_checkpoint_error(tmp_path):
    run = _finished_run(tmp_path)
    _, state = ckpt.find_latest(run)
    data = state.read_bytes()
    state.write_bytes(data[:len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="cannot read checkpoint state"):
        Trainer(tiny_config(run, steps=5, resume=str(run)))


def test_a_crash_while_saving_keeps_the_previous_snapshot(tmp_path, monkeypatch):
    run = _finished_run(tmp_path)
    previous = ckpt.find_latest(run)
    real_save = torch.save

    def dying_save(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    trainer = Trainer(tiny_config(run, steps=4, resume=str(run)))
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt.find_latest(run) == previous
    assert ckpt.load_state(previous[1])["step"] == 3
    assert not list((run / "checkpoints").glob(".*tmp*"))  # no temporary left behind


# ------------------------------------------------------------------------------------------- trainer


def test_resume_without_a_length_continues_to_the_runs_own_length(tmp_path):
    """Defect: `--resume DIR` with neither --steps nor --kimg trained to the recipe's default length (1,500
    steps for dcgan) instead of the length the run was started with."""
    run = _finished_run(tmp_path)
    state_path = ckpt.find_latest(run)[1]
    state = ckpt.load_state(state_path)
    state["config"]["steps"] = 5  # a run started with --steps 5 that stopped at its step-3 snapshot
    torch.save(state, state_path)
    resumed = Trainer(tiny_config(run, steps=None, resume=str(run)))
    assert resumed.step == 3 and resumed.total_steps == 5
    # A length on the resuming command line still wins.
    assert Trainer(tiny_config(run, steps=None, kimg=0.056, resume=str(run))).total_steps == 7


def test_kimg_with_a_batch_that_does_not_divide_it(tmp_path):
    # 0.02 kimg at batch 6: ceil(20 / 6) = 4 steps, 24 images (StyleGAN2-ADA stops once cur_nimg >= total).
    summary = train(tiny_config(tmp_path, steps=None, kimg=0.02, batch=6, snap=100))
    assert summary["steps"] == 4 and summary["images_seen"] == 24
    state = ckpt.load_state(ckpt.find_latest(tmp_path)[1])
    assert state["images_seen"] == 24
    assert math.isclose(json.loads((tmp_path / "stats.jsonl").read_text().splitlines()[-1])["kimg"], 0.024)


@pytest.mark.parametrize("field, value", [("snap", 0), ("log_every", 0), ("max_nonfinite", 0), ("batch", -8),
                                          ("steps", -1), ("kimg", 0.0)])
def test_bad_run_lengths_are_refused_before_training(tmp_path, field, value):
    """Defect: --snap 0 or --log-every 0 trained a step and then died with a ZeroDivisionError traceback."""
    overrides = {field: value, **({"steps": None} if field == "kimg" else {})}
    with pytest.raises(ValueError, match=f"--{field.replace('_', '-')} must be"):
        Trainer(tiny_config(tmp_path, **overrides))
    assert not (tmp_path / "checkpoints").exists()


def test_cli_reports_a_zero_snap_interval_in_one_line(tmp_path, capsys):
    from fusegan.engine.cli import main
    code = main(["train", "--snap", "0", "--steps", "2", "--batch", "4", "--workers", "0", "--impl", "ref",
                 "--device", "cpu", "--no-progress", "--no-tensorboard", "--run-dir", str(tmp_path),
                 "--nz", "8", "--ngf", "4", "--ndf", "4"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "fusegan train: ValueError: --snap must be >= 1, got 0"
