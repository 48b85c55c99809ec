"""The training loop: exact resume, crash safety (SIGKILL), clean stops (SIGTERM), non-finite steps, outputs.

Everything runs the dcgan recipe at toy widths on the reference path (the kernels' interpreter path is tested
in their own files), so each training run takes a second or two.
"""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fusegan.engine import checkpoint as ckpt
from fusegan.engine.config import TrainConfig
from fusegan.engine.trainer import Trainer, TrainingStopped, train

TINY_DCGAN = {"nz": 8, "ngf": 4, "ndf": 4}


def tiny_config(run_dir=None, **overrides):
    fields = dict(recipe="dcgan", data="digits", res=32, batch=8, steps=6, snap=3, log_every=2, workers=0,
                  impl="ref", device="cpu", progress=False, tensorboard=False, run_dir=str(run_dir) if run_dir else None,
                  recipe_options=dict(TINY_DCGAN))
    fields.update(overrides)
    return TrainConfig(**fields)


def final_weights(run_dir):
    weights, state = ckpt.find_latest(run_dir)
    return load_file(str(weights)), ckpt.load_state(state)


def assert_same_run(a, b):
    (wa, sa), (wb, sb) = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    for name in sa["optimizers"]:
        for pid, st in sa["optimizers"][name]["state"].items():
            for field, value in st.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["optimizers"][name]["state"][pid][field]))
    rng_a, rng_b = ckpt.rank_rng_states(sa), ckpt.rank_rng_states(sb)
    assert len(rng_a) == len(rng_b)
    for ra, rb in zip(rng_a, rng_b):
        assert torch.equal(ra["torch"], rb["torch"]) and torch.equal(ra["aug"], rb["aug"])
    assert sa["step"] == sb["step"]


@pytest.mark.parametrize("options", [dict(), dict(xflip=True, workers=2)], ids=["plain", "xflip-workers"])
def test_resume_is_bit_exact(tmp_path, options):
    """N steps straight == k steps, a resume, then N - k steps, bit for bit (weights, Adam moments, RNG)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(straight, steps=7, **options))
    train(tiny_config(split, steps=3, **options))
    # What is trained comes from the checkpoint: a different seed or width on the resuming command line is ignored.
    resumed = tiny_config(tmp_path / "ignored", steps=7, resume=str(split), **options)
    resumed.seed, resumed.recipe_options = 5, dict(TINY_DCGAN, ngf=16)
    summary = train(resumed)
    assert summary["run_dir"] == str(split) and summary["steps"] == 7
    assert_same_run(straight, split)


def rewrite_in_old_rng_layout(run_dir):
    """Rewrites a single-process run's latest state file as files were written before per-rank RNG entries."""
    state_path = ckpt.find_latest(run_dir)[1]
    state = ckpt.load_state(state_path)
    (entry,) = state["rng"]
    state["aug_rng"] = entry.pop("aug")
    state["rng"] = entry
    torch.save(state, state_path)


def test_resume_from_a_checkpoint_without_per_rank_rng_entries(tmp_path):
    """State files written before per-rank RNG entries (one "rng" dict, the x-flip generator as "aug_rng")
    still resume bit for bit."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config(straight, steps=5, xflip=True))
    train(tiny_config(split, steps=3, xflip=True))
    rewrite_in_old_rng_layout(split)
    train(tiny_config(split, steps=5, xflip=True, resume=str(split)))
    assert_same_run(straight, split)


def test_resume_changes_something_when_the_data_order_differs(tmp_path):
    """The exactness check can fail: a different seed gives different weights."""
    train(tiny_config(tmp_path / "a", steps=3))
    train(tiny_config(tmp_path / "b", steps=3, seed=1))
    wa, wb = final_weights(tmp_path / "a")[0], final_weights(tmp_path / "b")[0]
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_auto_picks_the_newest_matching_run(tmp_path):
    out = tmp_path / "runs"
    first = train(tiny_config(out=str(out), steps=3))
    assert Path(first["run_dir"]).name == "00000-dcgan-digits"
    again = train(tiny_config(out=str(out), steps=5, resume="auto"))
    assert again["run_dir"] == first["run_dir"] and again["steps"] == 5
    fresh = train(tiny_config(out=str(out / "other"), steps=2, resume="auto"))
    assert Path(fresh["run_dir"]).name == "00000-dcgan-digits" and fresh["steps"] == 2


def test_snapshot_contents_load_without_pickle(tmp_path):
    train(tiny_config(tmp_path, steps=3, snap=3))
    weights, state_path = ckpt.find_latest(tmp_path)
    state = torch.load(state_path, weights_only=True)  # would raise on any non-allowlisted object
    assert state["step"] == 3 and state["images_seen"] == 24
    assert set(state["optimizers"]) == {"D", "G"} and state["config"]["recipe"] == "dcgan"
    keys = load_file(str(weights)).keys()
    assert any(k.startswith("G.") for k in keys) and any(k.startswith("D.") for k in keys)
    assert any(k.endswith("running_mean") for k in keys)  # buffers too, for exact resume
    for name in ("fakes-00000003.png", "interpolation-00000003.png", "reals.png"):
        assert (tmp_path / "grids" / name).is_file()
    lines = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 3]
    for key in ("kimg", "img_per_s", "sec_per_kimg", "loss_D", "loss_G"):
        assert all(key in r for r in lines), key
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["images_seen"] == 24 and summary["mean_img_per_s"] > 0


def test_foreign_pickle_in_state_file_is_refused(tmp_path):
    path = tmp_path / "step-00000001.state.pt"
    torch.save({"step": 1, "evil": Path("/")}, path)  # a non-allowlisted global
    with pytest.raises(ckpt.CheckpointError, match="cannot read checkpoint state"):
        ckpt.load_state(path)


def test_keep_prunes_old_snapshots(tmp_path):
    train(tiny_config(tmp_path, steps=8, snap=2, keep=2))
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert names == ["step-00000006.safetensors", "step-00000006.state.pt",
                     "step-00000008.safetensors", "step-00000008.state.pt"]


def test_nonfinite_steps_are_skipped_then_the_run_stops(tmp_path, monkeypatch):
    original = Trainer._prepare

    def poisoned(self, batch):
        images, labels = original(self, batch)
        return images * float("nan"), labels

    monkeypatch.setattr(Trainer, "_prepare", poisoned)
    trainer = Trainer(tiny_config(tmp_path, steps=20, max_nonfinite=4))
    before = {k: v.clone() for k, v in trainer.recipe.D.state_dict().items() if "num_batches" not in k}
    with pytest.raises(TrainingStopped, match=r"4 steps in a row had a non-finite loss in D"):
        trainer.run()
    after = trainer.recipe.D.state_dict()
    for key, value in before.items():
        if "running" not in key:  # parameters: never stepped with NaN gradients
            assert torch.equal(value, after[key]), key
    events = (tmp_path / "events.log").read_text().splitlines()
    assert len(events) == 4 and "optimizer step skipped (1 in a row, 1 in total)" in events[0]


def test_isolated_nonfinite_step_is_counted_and_training_goes_on(tmp_path, monkeypatch):
    original = Trainer._prepare
    calls = {"n": 0}

    def poisoned_once(self, batch):
        images, labels = original(self, batch)
        calls["n"] += 1
        return (images * float("nan") if calls["n"] == 2 else images), labels

    monkeypatch.setattr(Trainer, "_prepare", poisoned_once)
    summary = train(tiny_config(tmp_path, steps=4, max_nonfinite=2))
    assert summary["steps"] == 4 and summary["nonfinite_steps"] == 1


def _cli(*args):
    return [sys.executable, "-m", "fusegan.engine", *args]


def _tiny_cli_args(run_dir, steps, snap):
    return ["train", "--steps", str(steps), "--snap", str(snap), "--batch", "8", "--workers", "0", "--impl", "ref",
            "--device", "cpu", "--no-progress", "--no-tensorboard", "--run-dir", str(run_dir), "--log-every", "1",
            "--nz", "8", "--ngf", "4", "--ndf", "4"]


def _wait_for_step(run_dir, step, proc, timeout=120):
    latest = Path(run_dir) / "checkpoints" / "latest.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if json.loads(latest.read_text())["step"] >= step:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of step {step} within {timeout} s")


def _env():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    return env


def test_sigkill_mid_run_leaves_a_loadable_latest_and_resume_matches(tmp_path):
    """Killed without warning (SIGKILL: no handler runs) while snapshots are being written every step: the latest
    checkpoint is complete, and resuming from it ends where an uninterrupted run ends."""
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    proc = subprocess.Popen(_cli(*_tiny_cli_args(killed, 400, 1)), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    _wait_for_step(killed, 5, proc)
    time.sleep(0.3)  # land somewhere in the middle of later steps and writes
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    weights, state_path = ckpt.find_latest(killed)
    state = ckpt.load_state(state_path)
    load_file(str(weights))
    reached = state["step"]
    assert reached >= 5
    target = reached + 3
    # Both continuations run as the killed one did (same command line, same thread count), since CPU kernels
    # may sum in a different order with a different number of threads.
    for args in (_tiny_cli_args(killed, target, 100) + ["--resume", str(killed)],
                 _tiny_cli_args(straight, target, 100)):
        subprocess.run(_cli(*args), env=_env(), check=True, capture_output=True, timeout=300)
    assert_same_run(straight, killed)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_writes_a_final_snapshot_and_exits_cleanly(tmp_path, sig):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli(*_tiny_cli_args(run, 100000, 2)), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for_step(run, 2, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert f"{sig.name}: wrote a snapshot at step" in out
    state = ckpt.load_state(ckpt.find_latest(run)[1])
    assert state["step"] >= 2 and json.loads((run / "summary.json").read_text())["stopped_by"] == sig.name


class _RandomProjection(torch.nn.Module):
    """A stand-in feature network (the real FID Inception needs a 92 MB weights file and 299x299 inputs)."""
    feature_dim = 16

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(32 * 32, self.feature_dim)

    def forward(self, images):
        return self.proj(images.float().mean(1).flatten(1))


def test_metrics_are_evaluated_at_every_snapshot(tmp_path, monkeypatch):
    net = _RandomProjection().requires_grad_(False)
    monkeypatch.setattr(Trainer, "_feature_net", lambda self: net)
    train(tiny_config(tmp_path, steps=4, snap=2, metrics=("fid", "kid", "pr"), metrics_images=40))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:
        assert set(row) >= {"fid", "kid", "precision", "recall"}
        assert row["fid"] > 0 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1


def test_metrics_without_inception_weights_fail_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        train(tiny_config(tmp_path, steps=2, metrics=("fid",)))
    assert not (tmp_path / "checkpoints").exists()


def test_metrics_need_a_generative_recipe(tmp_path):
    cfg = tiny_config(tmp_path, recipe="ae", metrics=("fid",), recipe_options={"base": 4, "latent_dim": 4})
    with pytest.raises(ValueError, match="--metrics needs a recipe that generates images"):
        train(cfg)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_train(tmp_path, precision):
    summary = train(tiny_config(tmp_path, steps=3, precision=precision, channels_last=True))
    assert summary["steps"] == 3 and summary["nonfinite_steps"] == 0
    state = ckpt.load_state(ckpt.find_latest(tmp_path)[1])
    assert state["config"]["precision"] == precision
    scaler_scale = state["scaler"].get("scale")
    assert (scaler_scale is not None) == (precision == "fp16")  # GradScaler only for fp16
    stats = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss_D"]) and math.isfinite(r["loss_G"]) for r in stats)
