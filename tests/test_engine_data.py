"""fusegan.engine.data: image folders/zips, labels, modes, bad files, pairs, built-ins, sampler, loader, flips."""
import io
import json
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from fusegan.engine.data import (DataError, DataWarning, InfiniteSampler, make_loader, open_dataset,
                                 random_xflip, to_float)

JPEG_TOL = 4  # a solid-color JPEG decodes within a few levels of its color


def save_solid(path, color, size=(8, 8), mode="RGB", **save_args):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save_args)


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def noise_png(seed, size=64):
    return png_bytes(Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)))


def color_of(image):
    """The (single) color of a solid uint8 [C, R, R] image, checking that it is solid."""
    flat = image.reshape(image.shape[0], -1).to(torch.int64)
    assert (flat.max(1).values - flat.min(1).values).max() <= 1, "image is not a solid color"
    return flat[:, 0].tolist()


def assert_color(image, expected, tol=0):
    got = color_of(image)
    assert all(abs(g - e) <= tol for g, e in zip(got, expected)), (got, expected)


# ---------------------------------------------------------------------------------------------- folders / zips
def test_folder_recursion_and_extensions(tmp_path):
    colors = {"a.png": (250, 0, 0), "sub/b.jpg": (0, 250, 0), "sub/deep/c.jpeg": (0, 0, 250),
              "d.webp": (250, 250, 0), "sub/E.PNG": (0, 250, 250), "f.bmp": (10, 20, 30), "g.ppm": (40, 50, 60),
              "h.tif": (70, 80, 90), "sub/i.TIFF": (100, 110, 120)}  # pix2pix/CycleGAN's extensions, any case
    for name, color in colors.items():
        save_solid(tmp_path / name, color, **({"lossless": True} if name.endswith(".webp") else {}))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub" / "labels.csv").write_text("a,1")
    (tmp_path / "._a.png").write_bytes(b"AppleDouble metadata, not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # non-image files are ignored silently
        ds = open_dataset(tmp_path, 8)
    assert ds.files.names == sorted(colors)
    assert (len(ds), ds.resolution, ds.channels, ds.num_classes, ds.has_labels) == (9, 8, 3, 0, False)
    assert ds.name == tmp_path.name
    for i, name in enumerate(sorted(colors)):
        image, label = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 8, 8)
        assert label.dtype == torch.int64 and label.ndim == 0 and label.item() == -1
        assert_color(image, colors[name], tol=JPEG_TOL if name.endswith((".jpg", ".jpeg")) else 0)
    with pytest.raises(IndexError):
        ds[9]


def make_zip(path, members):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def test_zip_layout_with_dataset_json_labels(tmp_path):
    names = [f"{i // 3:05d}/img{i:08d}.png" for i in range(7)]
    members = {name: png_bytes(Image.new("L", (6, 6), 30 * i)) for i, name in enumerate(names)}
    labels = [[name, (i * 2) % 5] for i, name in enumerate(names)]
    members["dataset.json"] = json.dumps({"labels": labels[::-1]})  # order in the json does not matter
    make_zip(tmp_path / "set.zip", members)

    ds = open_dataset(str(tmp_path / "set.zip"), 6, labels=True)
    assert (len(ds), ds.channels, ds.has_labels, ds.num_classes, ds.name) == (7, 1, True, 5, "set")
    for i in range(7):
        image, label = ds[i]
        assert image.shape == (1, 6, 6)
        assert_color(image, [30 * i])
        assert label.item() == (i * 2) % 5
    assert ds.label_counts() == [2, 1, 2, 1, 1]  # labels 0 2 4 1 3 0 2: what conditional metrics sample from
    unlabeled = open_dataset(tmp_path / "set.zip", 6)
    assert (unlabeled.has_labels, unlabeled.num_classes, unlabeled[3][1].item()) == (False, 0, -1)
    assert unlabeled.label_counts() is None
    assert open_dataset(tmp_path / "set.zip", 6, channels=3)[2][0].shape == (3, 6, 6)


def test_labels_missing_or_null_raise(tmp_path):
    save_solid(tmp_path / "a" / "x.png", (1, 2, 3))
    with pytest.raises(DataError, match="dataset.json"):
        open_dataset(tmp_path / "a", 8, labels=True)
    (tmp_path / "a" / "dataset.json").write_text(json.dumps({"labels": None}))
    assert len(open_dataset(tmp_path / "a", 8)) == 1  # null labels are fine for unconditional data
    with pytest.raises(DataError, match="no labels"):
        open_dataset(tmp_path / "a", 8, labels=True)
    (tmp_path / "a" / "dataset.json").write_text(json.dumps({"labels": [["other.png", 1]]}))
    with pytest.raises(DataError, match="x.png"):
        open_dataset(tmp_path / "a", 8, labels=True)


def test_folder_labels_use_relative_forward_slash_names(tmp_path):
    save_solid(tmp_path / "cats" / "a.png", (10, 10, 10))
    save_solid(tmp_path / "dogs" / "b.png", (20, 20, 20))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["cats/a.png", 0], ["dogs/b.png", 1]]}))
    ds = open_dataset(tmp_path, 4, labels=True)
    assert [ds[i][1].item() for i in range(2)] == [0, 1] and ds.num_classes == 2


def test_mixed_sizes_resized_and_center_cropped(tmp_path):
    wide = np.zeros((32, 64), dtype=np.uint8)
    wide[:, 16:48] = 200  # the central 32 columns: what a center crop of the 32x32 square keeps
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(np.ascontiguousarray(wide.T)).save(tmp_path / "tall.png")
    save_solid(tmp_path / "small.png", (90,), size=(5, 5), mode="L")
    save_solid(tmp_path / "big.png", (40,), size=(50, 50), mode="L")
    ds = open_dataset(tmp_path, 16)
    assert ds.channels == 1
    items = {name: ds[i][0] for i, name in enumerate(ds.files.names)}
    assert all(image.shape == (1, 16, 16) for image in items.values())
    assert_color(items["small.png"], [90])
    assert_color(items["big.png"], [40])
    for name, image in (("wide.png", items["wide.png"][0]), ("tall.png", items["tall.png"][0].T)):
        # Output column j is centred on source column 2j + 17; Lanczos at scale 1/2 reaches 6 columns out, so
        # columns 3..12 see only the 200 band. A squash (no crop) would leave column 1 nearly black.
        assert (image[:, 3:13] == 200).all(), name
        assert (image[:, 1] > 120).all() and (image[:, 14] > 120).all(), name
        assert (image[:, 0] < 200).all(), name  # ringing from the dark border that a crop at 16 keeps near


def test_mixed_modes_are_converted(tmp_path):
    save_solid(tmp_path / "l.png", (77,), mode="L")
    save_solid(tmp_path / "rgba.png", (200, 100, 50, 128), mode="RGBA")  # composited on black
    save_solid(tmp_path / "la.png", (200, 128), mode="LA")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(tmp_path / "p.png")
    palette_t = Image.new("P", (8, 8), 0)
    palette_t.putpalette([255, 255, 255, 10, 200, 30] + [0] * 762)
    palette_t.save(tmp_path / "pt.png", transparency=0)  # fully transparent white -> black
    Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)).save(tmp_path / "i16.png")  # 32896 / 257 = 128
    save_solid(tmp_path / "cmyk.jpg", (0, 255, 0, 0), mode="CMYK", quality=100)  # no magenta ink: green
    save_solid(tmp_path / "one.png", 1, mode="1")
    assert Image.open(tmp_path / "i16.png").mode == "I;16" and Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"

    ds = open_dataset(tmp_path, 8)
    assert ds.channels == 3  # some images are in color
    got = {name: ds[i][0] for i, name in enumerate(ds.files.names)}
    assert_color(got["l.png"], [77, 77, 77])
    assert_color(got["rgba.png"], [100, 50, 25], tol=1)
    assert_color(got["la.png"], [100, 100, 100], tol=1)
    assert_color(got["p.png"], [10, 200, 30])
    assert_color(got["pt.png"], [0, 0, 0])
    assert_color(got["i16.png"], [128, 128, 128])
    assert_color(got["cmyk.jpg"], [255, 0, 255], tol=JPEG_TOL)
    assert_color(got["one.png"], [255, 255, 255])

    gray = open_dataset(tmp_path, 8, channels=1)
    luma = {name: gray[i][0] for i, name in enumerate(gray.files.names)}
    assert_color(luma["p.png"], [round(10 * 0.299 + 200 * 0.587 + 30 * 0.114)], tol=1)
    assert_color(luma["i16.png"], [128])


def test_channels_default_is_one_for_grayscale_folders(tmp_path):
    save_solid(tmp_path / "a.png", (10,), mode="L")
    Image.fromarray(np.full((8, 8), 1000, dtype=np.uint16)).save(tmp_path / "b.png")
    assert open_dataset(tmp_path, 8).channels == 1
    save_solid(tmp_path / "c.png", (1, 2, 3))
    assert open_dataset(tmp_path, 8).channels == 3


# ------------------------------------------------------------------------------------------------- bad files
def write_good_pngs(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"good{i:03d}.png").write_bytes(png_bytes(Image.new("L", (4, 4), i)))


def test_corrupt_files_are_skipped_with_a_warning_naming_them(tmp_path):
    write_good_pngs(tmp_path, 40)
    (tmp_path / "fake.png").write_text("this is text, not a PNG")
    data = noise_png(0)
    (tmp_path / "good020x.png").write_bytes(data[: len(data) * 6 // 10])  # header fine, pixels truncated
    with pytest.warns(DataWarning, match="fake.png"):
        ds = open_dataset(tmp_path, 4)
    assert len(ds) == 41 and "fake.png" not in ds.files.names  # the text file never enters the index
    truncated = ds.files.names.index("good020x.png")
    with pytest.warns(DataWarning, match="good020x.png"):
        image, _ = ds[truncated]
    assert torch.equal(image, ds[truncated + 1][0])  # replaced by the next readable image
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known bad now: no second warning, same replacement
        assert torch.equal(ds[truncated][0], image)
    assert ds.verify() == 2


def test_too_many_bad_files_raise(tmp_path):
    write_good_pngs(tmp_path / "a", 10)
    (tmp_path / "a" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.warns(DataWarning, match="bad.jpg"), pytest.raises(DataError, match="max_bad_fraction"):
        open_dataset(tmp_path / "a", 4)  # 1 of 11 > 5 %
    with pytest.warns(DataWarning):
        assert len(open_dataset(tmp_path / "a", 4, max_bad_fraction=0.1)) == 10

    write_good_pngs(tmp_path / "b", 10)
    data = noise_png(1)
    (tmp_path / "b" / "trunc.png").write_bytes(data[: len(data) // 2])
    ds = open_dataset(tmp_path / "b", 4)  # the header check passes; decoding finds it
    with pytest.warns(DataWarning, match="trunc.png"), pytest.raises(DataError, match=str(tmp_path / "b")):
        ds.verify()
    ds = open_dataset(tmp_path / "b", 4)
    with pytest.warns(DataWarning), pytest.raises(DataError):
        ds[ds.files.names.index("trunc.png")]


def test_empty_or_missing_paths_raise_naming_the_path(tmp_path):
    assert issubclass(DataError, ValueError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        open_dataset(tmp_path / "empty", 8)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no images.*text"):
        open_dataset(tmp_path / "text", 8)
    with pytest.raises(DataError, match="does-not-exist"):
        open_dataset(tmp_path / "does-not-exist", 8)
    make_zip(tmp_path / "nothing.zip", {"readme.txt": "hi"})
    with pytest.raises(DataError, match="nothing.zip"):
        open_dataset(tmp_path / "nothing.zip", 8)
    (tmp_path / "broken.zip").write_text("not a zip")
    with pytest.raises(DataError, match="broken.zip"):
        open_dataset(tmp_path / "broken.zip", 8)
    with pytest.raises(ValueError, match="kind"):
        open_dataset(tmp_path, 8, kind="triplets")


# ---------------------------------------------------------------------------------------- paired / unpaired
def save_pair(path, color_a, color_b, half=16):
    image = Image.new("RGB", (2 * half, half), color_a)
    image.paste(Image.new("RGB", (half, half), color_b), (half, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_paired_split_and_direction(tmp_path):
    pairs = [((200, 0, 0), (0, 0, 200)), ((0, 150, 0), (150, 150, 150))]
    for i, (a, b) in enumerate(pairs):
        save_pair(tmp_path / "train" / f"{i}.png", a, b)
    ds = open_dataset(tmp_path / "train", 8, kind="paired")
    assert (len(ds), ds.channels, ds.resolution, ds.has_labels) == (2, 3, 8, False)
    reverse = open_dataset(tmp_path / "train", 8, kind="paired", direction="BtoA")
    for i, (a, b) in enumerate(pairs):
        got_a, got_b = ds[i]
        assert got_a.shape == got_b.shape == (3, 8, 8)
        assert_color(got_a, a)
        assert_color(got_b, b)
        rev_a, rev_b = reverse[i]
        assert torch.equal(rev_a, got_b) and torch.equal(rev_b, got_a)
    with pytest.raises(ValueError, match="direction"):
        open_dataset(tmp_path / "train", 8, kind="paired", direction="AB")
    with pytest.raises(DataError, match="labels"):
        open_dataset(tmp_path / "train", 8, kind="paired", labels=True)


def make_unpaired(root, len_a, len_b):
    for i in range(len_a):
        save_solid(root / "trainA" / f"a{i}.png", (10 * i, 0, 0))
    for i in range(len_b):
        save_solid(root / "trainB" / f"b{i}.png", (0, 10 * i, 0))


def test_unpaired_lengths_and_reproducible_partners(tmp_path):
    make_unpaired(tmp_path, 3, 7)
    ds = open_dataset(tmp_path, 8, kind="unpaired", seed=5)
    assert (len(ds), ds.len_a, ds.len_b, ds.channels) == (7, 3, 7, 3)
    again = open_dataset(tmp_path, 8, kind="unpaired", seed=5)
    partners = []
    for i in range(len(ds)):
        a, b = ds[i]
        assert_color(a, [10 * (i % 3), 0, 0])
        partner = color_of(b)[1] // 10
        assert 0 <= partner < 7 and torch.equal(again[i][1], b)
        partners.append(partner)
    assert partners == [ds.b_index(i) for i in range(7)]
    assert len(set(partners)) > 1  # a spread of partners, not one fixed image
    other = open_dataset(tmp_path, 8, kind="unpaired", seed=6)
    assert [other.b_index(i) for i in range(7)] != partners

    swapped = tmp_path / "swapped"
    make_unpaired(swapped, 6, 2)
    ds = open_dataset(swapped, 8, kind="unpaired")
    assert (len(ds), ds.len_a, ds.len_b) == (6, 6, 2)
    assert all(ds.b_index(i) in (0, 1) for i in range(6))


def test_unpaired_from_zip_and_missing_domain(tmp_path):
    members = {f"trainA/{i}.png": png_bytes(Image.new("RGB", (8, 8), (i, 0, 0))) for i in range(2)}
    members.update({f"trainB/{i}.png": png_bytes(Image.new("RGB", (8, 8), (0, i, 0))) for i in range(3)})
    make_zip(tmp_path / "horses.zip", members)
    ds = open_dataset(tmp_path / "horses.zip", 8, kind="unpaired")
    assert (len(ds), ds.len_a, ds.len_b, ds.name) == (3, 2, 3, "horses")
    save_solid(tmp_path / "only_a" / "trainA" / "x.png", (1, 1, 1))
    with pytest.raises(DataError, match="trainB"):
        open_dataset(tmp_path / "only_a", 8, kind="unpaired")


# ------------------------------------------------------------------------------------------------- built-ins
def test_digits():
    ds = open_dataset("digits", 32, labels=True)
    assert (len(ds), ds.channels, ds.resolution, ds.num_classes, ds.has_labels, ds.name) == \
        (1797, 1, 32, 10, True, "digits")
    image, label = ds[0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.uint8 and label.dtype == torch.int64
    labels = torch.stack([ds[i][1] for i in range(len(ds))])
    assert sorted(labels.unique().tolist()) == list(range(10))
    from sklearn.datasets import load_digits
    assert torch.equal(labels, torch.from_numpy(load_digits().target).to(torch.int64))
    assert ds.images.max().item() == 255 and ds.images.min().item() == 0  # 0..16 scaled to the full range
    # The 8x8 block means of the upscaled image follow the original digit (scaled by 255/16).
    original = torch.from_numpy(load_digits().images[0]).float() * 255 / 16
    block_means = ds.images[0, 0].float().reshape(8, 4, 8, 4).mean((1, 3))
    assert (block_means - original).abs().mean() < 20
    assert open_dataset("digits", 32)[5][1].item() == -1
    native = open_dataset("digits", 8)  # at 8x8 no resize: exactly the 0..16 values scaled by 255/16
    expected = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    assert torch.equal(native.images[:, 0], torch.from_numpy(expected))
    rgb = open_dataset("digits", 16, channels=3)
    assert rgb[3][0].shape == (3, 16, 16) and torch.equal(rgb[3][0][0], rgb[3][0][2])


def test_faces():
    ds = open_dataset("faces", 32)
    assert (len(ds), ds.channels, ds.num_classes, ds.has_labels, ds.name) == (200, 1, 0, False, "faces")
    image, label = ds[7]
    assert image.shape == (1, 32, 32) and image.dtype == torch.uint8 and label.item() == -1
    assert ds.images.float().std() > 20  # real faces, not a constant
    with pytest.raises(DataError, match="faces"):
        open_dataset("faces", 32, labels=True)


# --------------------------------------------------------------------------------------------------- sampler
def take(sampler, count):
    iterator = iter(sampler)
    return [next(iterator) for _ in range(count)]


def test_sampler_walks_seeded_permutations_deterministically():
    sampler = InfiniteSampler(10, seed=3)
    stream = take(sampler, 30)
    assert stream == take(InfiniteSampler(10, seed=3), 30)
    for epoch in range(3):
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
        assert stream[10 * epoch:10 * (epoch + 1)] == expected
    assert take(InfiniteSampler(10, seed=4), 10) != stream[:10]


@pytest.mark.parametrize("world_size,rank", [(1, 0), (3, 1)])
def test_sampler_resume_equals_uninterrupted(world_size, rank):
    full = take(InfiniteSampler(11, seed=7, rank=rank, world_size=world_size), 60)
    for cut in (0, 1, 4, 11, 37):
        head = take(InfiniteSampler(11, seed=7, rank=rank, world_size=world_size), cut)
        tail = take(InfiniteSampler(11, seed=7, rank=rank, world_size=world_size, start_index=cut), 60 - cut)
        assert head + tail == full


@pytest.mark.parametrize("length,world_size", [(12, 3), (10, 3), (2, 4)])
def test_sampler_rank_sharding_disjoint_and_covering(length, world_size):
    per_rank = 3 * length
    streams = [take(InfiniteSampler(length, seed=1, rank=r, world_size=world_size), per_rank)
               for r in range(world_size)]
    interleaved = [streams[k % world_size][k // world_size] for k in range(per_rank * world_size)]
    assert interleaved == take(InfiniteSampler(length, seed=1), per_rank * world_size)
    if length % world_size == 0:  # each epoch splits exactly: disjoint shards covering the dataset
        shards = [set(stream[:length // world_size]) for stream in streams]
        assert set().union(*shards) == set(range(length))
        assert sum(len(shard) for shard in shards) == length


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError):
        InfiniteSampler(0)
    with pytest.raises(ValueError):
        InfiniteSampler(5, rank=2, world_size=2)
    with pytest.raises(ValueError):
        InfiniteSampler(5, start_index=-1)


# ---------------------------------------------------------------------------------------------------- loader
@pytest.fixture
def zip_dataset(tmp_path):
    members = {f"{i:02d}.png": png_bytes(Image.new("L", (8, 8), 20 * i)) for i in range(10)}
    members["dataset.json"] = json.dumps({"labels": [[f"{i:02d}.png", i % 4] for i in range(10)]})
    make_zip(tmp_path / "ten.zip", members)
    return open_dataset(tmp_path / "ten.zip", 8, labels=True)


def batches(loader, count):
    return [next(loader) for _ in range(count)]


def test_loader_batches_follow_the_sampler(zip_dataset):
    loader = make_loader(zip_dataset, 4, seed=2, device="cpu")
    order = take(InfiniteSampler(10, seed=2), 24)
    for k, (images, labels) in enumerate(batches(loader, 6)):
        assert images.shape == (4, 1, 8, 8) and images.dtype == torch.uint8 and images.device.type == "cpu"
        indices = order[4 * k:4 * (k + 1)]
        assert images[:, 0, 0, 0].tolist() == [20 * i for i in indices]
        assert labels.tolist() == [i % 4 for i in indices]


def test_loader_workers_match_single_process(zip_dataset):
    expected = batches(make_loader(zip_dataset, 4, seed=9, device="cpu"), 5)
    loader = make_loader(zip_dataset, 4, seed=9, workers=2, device="cpu")
    got = batches(loader, 5)
    workers = loader._batches._workers
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    loader.close()
    assert not any(w.is_alive() for w in workers)  # close() stops the persistent workers
    loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)
    for (e_img, e_lab), (g_img, g_lab) in zip(expected, got):
        assert torch.equal(e_img, g_img) and torch.equal(e_lab, g_lab)


def test_loader_resume_and_dataset_smaller_than_batch(zip_dataset, tmp_path):
    full = batches(make_loader(zip_dataset, 3, seed=4, rank=1, world_size=2, device="cpu"), 6)
    resumed = batches(make_loader(zip_dataset, 3, seed=4, rank=1, world_size=2, start_index=9, device="cpu"), 3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[3:], resumed))

    for i in range(3):
        save_solid(tmp_path / "three" / f"{i}.png", (i,), mode="L")
    tiny = open_dataset(tmp_path / "three", 8)
    images, labels = next(make_loader(tiny, 8, seed=0, device="cpu"))
    assert images.shape == (8, 1, 8, 8) and (labels == -1).all()
    assert sorted(images[:6, 0, 0, 0].tolist()) == [0, 0, 1, 1, 2, 2]  # two whole epochs, then more


def test_zip_is_reopened_in_each_process(zip_dataset, monkeypatch):
    source = zip_dataset.files.source
    parent_handle = source._zipfile()
    assert source._zipfile() is parent_handle
    monkeypatch.setattr(os, "getpid", lambda: -12345)  # as in a forked DataLoader worker
    assert source._zipfile() is not parent_handle  # never share a file offset with the parent


def test_datasets_pickle_for_spawned_workers(zip_dataset):
    copy = pickle.loads(pickle.dumps(zip_dataset))
    assert all(torch.equal(copy[i][0], zip_dataset[i][0]) for i in range(len(copy)))


@pytest.mark.gpu
def test_cuda_prefetcher_matches_cpu(zip_dataset):
    expected = batches(make_loader(zip_dataset, 4, seed=1, device="cpu"), 4)
    got = batches(make_loader(zip_dataset, 4, seed=1, workers=2, device="cuda"), 4)
    for (e_img, e_lab), (g_img, g_lab) in zip(expected, got):
        assert g_img.is_cuda and torch.equal(e_img, g_img.cpu()) and torch.equal(e_lab, g_lab.cpu())


# ---------------------------------------------------------------------------------------- device-side steps
def test_to_float_range():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    y = to_float(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert y.min().item() == -1.0 and y.max().item() == 1.0
    expected = torch.tensor([v / 127.5 - 1 for v in range(256)], dtype=torch.float64)
    torch.testing.assert_close(y.flatten().double(), expected, rtol=0, atol=1e-6)
    assert to_float(x, torch.float64).dtype == torch.float64


def test_random_xflip_reproducible_and_per_sample():
    x = torch.randint(0, 256, (64, 3, 4, 5), dtype=torch.uint8)
    out = random_xflip(x, torch.Generator().manual_seed(11))
    assert torch.equal(out, random_xflip(x, torch.Generator().manual_seed(11)))
    draw = torch.rand(64, generator=torch.Generator().manual_seed(11)) < 0.5
    for i in range(64):
        assert torch.equal(out[i], x[i].flip(-1) if draw[i] else x[i])
    assert 10 < int(draw.sum()) < 54  # independent per sample
    assert torch.equal(random_xflip(x, torch.Generator(), p=0.0), x)
    assert torch.equal(random_xflip(x, torch.Generator(), p=1.0), x.flip(-1))


def test_random_xflip_applies_the_same_flip_to_pairs():
    a = torch.randint(0, 256, (32, 3, 4, 6), dtype=torch.uint8)
    b = torch.randn(32, 1, 4, 6)
    flipped_a, flipped_b = random_xflip((a, b), torch.Generator().manual_seed(3))
    flipped_samples = 0
    for i in range(32):
        a_flipped = torch.equal(flipped_a[i], a[i].flip(-1))
        assert a_flipped or torch.equal(flipped_a[i], a[i])
        assert torch.equal(flipped_b[i], b[i].flip(-1) if a_flipped else b[i])
        flipped_samples += a_flipped
    assert 0 < flipped_samples < 32
    assert torch.equal(random_xflip([a], torch.Generator().manual_seed(3))[0], flipped_a)
    with pytest.raises(ValueError, match="batch"):
        random_xflip((a, b[:5]), torch.Generator())
