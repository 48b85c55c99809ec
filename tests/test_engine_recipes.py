"""Every recipe through the real trainer at toy sizes: data -> steps -> grids -> checkpoint -> exact resume.

The recipes' own maths is tested in tests/test_recipe_*.py; here it is the wiring: each recipe gets its kind
of data (built-in, paired A|B folder, unpaired trainA/trainB), writes its grids, and resumes bit for bit.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fusegan.engine import checkpoint as ckpt
from fusegan.engine.config import TrainConfig
from fusegan.engine.trainer import train

TINY_STYLEGAN2 = {"cfg": "cifar", "z_dim": 16, "w_dim": 16, "map": 2, "channel_base": 256, "channel_max": 16,
                  "mbstd_group": 2}


def _image(rng, size, channels=3):
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze())


@pytest.fixture(scope="module")
def paired_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paired")
    rng = np.random.default_rng(0)
    for i in range(5):
        _image(rng, (64, 32)).save(folder / f"{i}.png")  # A | B side by side
    return folder


@pytest.fixture(scope="module")
def unpaired_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unpaired")
    rng = np.random.default_rng(1)
    for domain, count in (("trainA", 3), ("trainB", 4)):
        (folder / domain).mkdir()
        for i in range(count):
            _image(rng, (40, 36)).save(folder / domain / f"{i}.jpg")
    return folder


CASES = {
    "dcgan": dict(data="digits", res=32, batch=8, recipe_options={"nz": 8, "ngf": 4, "ndf": 4}),
    "stylegan2": dict(data="faces", res=16, batch=4, recipe_options=TINY_STYLEGAN2),
    "vae": dict(data="digits", res=32, batch=8, recipe_options={"base": 4, "latent_dim": 4}),
    "ae": dict(data="digits", res=32, batch=8, recipe_options={"base": 4, "latent_dim": 4}),
    "dae": dict(data="faces", res=32, batch=8, recipe_options={"base": 4, "latent_dim": 4}),
    "pix2pix": dict(data="paired", res=32, batch=2, recipe_options={"ngf": 4, "ndf": 4}),
    "cyclegan": dict(data="unpaired", res=32, batch=2, recipe_options={"ngf": 4, "ndf": 4, "n_blocks": 1,
                                                                       "pool_size": 2}),
}
GRIDS = {"dcgan": ["fakes", "interpolation"], "stylegan2": ["fakes", "interpolation"],
         "vae": ["reconstructions", "samples", "manifold", "interpolation"], "ae": ["reconstructions"],
         "dae": ["reconstructions"], "pix2pix": ["translation"], "cyclegan": ["translation"]}


def _config(recipe, run_dir, folders, steps):
    case = dict(CASES[recipe])
    if case["data"] in folders:
        case["data"] = str(folders[case["data"]])
    return TrainConfig(recipe=recipe, steps=steps, snap=2, log_every=1, workers=0, impl="ref", device="cpu",
                       progress=False, tensorboard=False, run_dir=str(run_dir), xflip=True, **case)


@pytest.mark.parametrize("recipe", sorted(CASES))
def test_recipe_trains_snapshots_and_resumes_exactly(recipe, tmp_path, paired_folder, unpaired_folder):
    folders = {"paired": paired_folder, "unpaired": unpaired_folder}
    straight, split = tmp_path / "straight", tmp_path / "split"
    summary = train(_config(recipe, straight, folders, steps=4))
    assert summary["steps"] == 4 and summary["nonfinite_steps"] == 0
    for name in GRIDS[recipe]:
        with Image.open(straight / "grids" / f"{name}-00000004.png") as image:
            assert min(image.size) > 16
    stats = [json.loads(line) for line in (straight / "stats.jsonl").read_text().splitlines()]
    assert len(stats) == 4 and all(np.isfinite(v) for r in stats for k, v in r.items() if k != "time")

    train(_config(recipe, split, folders, steps=2))
    train(_config(recipe, tmp_path / "unused", folders, steps=4).__class__.from_dict(
        dict(_config(recipe, tmp_path / "unused", folders, steps=4).to_dict(), resume=str(split))))
    a = load_file(str(ckpt.find_latest(straight)[0]))
    b = load_file(str(ckpt.find_latest(split)[0]))
    assert a.keys() == b.keys()
    mismatched = [k for k in a if not torch.equal(a[k], b[k])]
    assert not mismatched, mismatched[:5]


def test_tensorboard_scalars_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = _config("dcgan", tmp_path, {}, steps=2)
    cfg.tensorboard = True
    train(cfg)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", sorted(CASES))
@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compile"])
def test_recipe_trains_on_gpu_with_fused_ops(recipe, compile_, tmp_path, paired_folder, unpaired_folder):
    """The fused (Triton) path in bf16 and channels_last, with and without --compile; 17 steps reach both of
    StyleGAN2's lazy regularization phases (R1 every 16, path length every 4)."""
    folders = {"paired": paired_folder, "unpaired": unpaired_folder}
    cfg = _config(recipe, tmp_path, folders, steps=17)
    cfg.device, cfg.impl, cfg.precision, cfg.channels_last, cfg.compile = "cuda", None, "bf16", True, compile_
    summary = train(cfg)
    assert summary["steps"] == 17 and summary["nonfinite_steps"] == 0 and summary["peak_memory_gb"] > 0
    stats = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert all(np.isfinite(v) for r in stats for k, v in r.items() if k != "time")


def test_conditional_run_keeps_the_label_distribution_for_its_metrics(tmp_path):
    # StyleGAN2-ADA's metrics condition each generated image on a random dataset item's label: the recipe gets the
    # dataset's images per class, and so does a recipe loaded back from the checkpoint.
    from fusegan.engine.inference import load_recipe
    from sklearn.datasets import load_digits
    config = dict(CASES["stylegan2"], data="digits", cond=True)
    train(TrainConfig(recipe="stylegan2", steps=1, snap=1, log_every=1, workers=0, impl="ref", device="cpu",
                      progress=False, tensorboard=False, run_dir=str(tmp_path), **config))
    counts = np.bincount(load_digits().target, minlength=10).tolist()
    recipe = load_recipe(tmp_path)
    assert recipe.c_dim == 10
    assert recipe.label_weights.tolist() == counts
