"""Audit of fusegan.engine.data: defects found and fixed (each test failed before its fix), plus checks of
behaviour test_engine_data.py does not pin down (NVIDIA's file order, labels following a skipped image)."""
import io
import json
import zipfile
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from fusegan.engine.data import DataWarning, open_dataset, to_float


def png_bytes(image, **save_args):
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save_args)
    return buffer.getvalue()


def save_gray(path, value, size=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (size, size), value).save(path)


# ------------------------------------------------------------------------------------------------ unpaired
@pytest.mark.parametrize("len_a,len_b", [(20, 20), (5, 20), (20, 6)])
def test_unpaired_uses_every_image_of_domain_b(tmp_path, len_a, len_b):
    """CycleGAN draws B at random on every access, so every B image is trained on. A fixed partner per index
    from a hash (the old b_index) is a random function: with len_b >= len_a about 1/e of domain B was never
    seen, in any epoch. Partners must cover B, each image as often as the others (within one)."""
    for i in range(len_a):
        save_gray(tmp_path / "trainA" / f"a{i:02d}.png", i)
    for i in range(len_b):
        save_gray(tmp_path / "trainB" / f"b{i:02d}.png", 100 + i)
    ds = open_dataset(tmp_path, 4, kind="unpaired", seed=3)
    assert len(ds) == max(len_a, len_b)
    uses = Counter(ds.b_index(i) for i in range(len(ds)))
    assert set(uses) == set(range(len_b))
    assert max(uses.values()) - min(uses.values()) <= 1
    # The items follow b_index, reproducibly, and still differ between seeds.
    got = [ds[i][1][0, 0, 0].item() - 100 for i in range(len(ds))]
    assert got == [ds.b_index(i) for i in range(len(ds))]
    again = open_dataset(tmp_path, 4, kind="unpaired", seed=3)
    assert [again.b_index(i) for i in range(len(ds))] == got
    other = open_dataset(tmp_path, 4, kind="unpaired", seed=4)
    assert [other.b_index(i) for i in range(len(ds))] != got


# ------------------------------------------------------------------------------------------------ zip probe
def test_zip_construction_reads_headers_not_whole_images(tmp_path, monkeypatch):
    """Opening a dataset checks each image's header. For a zip the old code decompressed every member in full
    to do so (a whole pass over FFHQ's 90 GB before the first step); a header needs a few kilobytes."""
    rng = np.random.default_rng(0)
    members = {f"{i:05d}.png": png_bytes(Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)),
                                         compress_level=0) for i in range(6)}
    with zipfile.ZipFile(tmp_path / "set.zip", "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    total = sum(len(data) for data in members.values())

    read_bytes = [0]
    original_read = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = original_read(self, n)
        read_bytes[0] += len(data)
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    ds = open_dataset(tmp_path / "set.zip", 8)
    assert len(ds) == 6 and ds.channels == 3
    assert read_bytes[0] < total // 10, (read_bytes[0], total)
    first = Image.open(io.BytesIO(members["00000.png"])).convert("RGB").resize((8, 8), Image.Resampling.LANCZOS)
    assert torch.equal(ds[0][0], torch.from_numpy(np.array(first)).permute(2, 0, 1))  # decoding still whole


# ------------------------------------------------------------------------------------------------ to_float
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_to_float_in_half_precision_is_correctly_rounded(dtype):
    """to_float(x, dtype) must be x / 127.5 - 1 rounded once to dtype. Dividing in bf16 first rounded twice:
    half of the 256 levels came out wrong, e.g. 129 -> 0.0156 instead of 0.0118 (a third too large)."""
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    expected = (x.to(torch.float64) / 127.5 - 1).to(dtype)
    got = to_float(x, dtype)
    assert got.dtype == dtype and torch.equal(got, expected)
    assert torch.equal(to_float(x), x.to(torch.float32) / 127.5 - 1)  # NVIDIA's formula, unchanged in fp32
    assert torch.equal(to_float(x, torch.float64), x.to(torch.float64) / 127.5 - 1)
    channels_last = x.expand(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    assert to_float(channels_last, dtype).is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------------------ paired
def save_pair(path, value_a, value_b, half=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("L", (2 * half, half), value_a)
    image.paste(Image.new("L", (half, half), value_b), (half, 0))
    image.save(path)


def test_paired_root_with_phase_folders_trains_on_train_only(tmp_path):
    """pix2pix datasets (facades, maps, edges2shoes) unpack as ROOT/train, ROOT/val, ROOT/test, and pix2pix
    reads ROOT/train (its dataroot/phase), as cyclegan here reads ROOT/trainA and ROOT/trainB. Searching ROOT
    recursively trained on the val and test pairs too."""
    for phase, count in (("train", 3), ("val", 2), ("test", 4)):
        for i in range(count):
            save_pair(tmp_path / "facades" / phase / f"{i}.png", 10 * i, 200)
    ds = open_dataset(tmp_path / "facades", 8, kind="paired")
    assert len(ds) == 3 and ds.files.names == ["train/0.png", "train/1.png", "train/2.png"]
    assert [ds[i][0][0, 0, 0].item() for i in range(3)] == [0, 10, 20]
    assert len(open_dataset(tmp_path / "facades" / "val", 8, kind="paired")) == 2  # a phase folder itself
    with zipfile.ZipFile(tmp_path / "facades.zip", "w") as z:
        for phase in ("train", "test"):
            z.write(tmp_path / "facades" / phase / "0.png", f"{phase}/0.png")
    assert open_dataset(tmp_path / "facades.zip", 8, kind="paired").files.names == ["train/0.png"]
    flat = tmp_path / "flat"  # no train/ folder: every image, as before
    for name in ("x.png", "sub/y.png"):
        save_pair(flat / name, 1, 2)
    assert len(open_dataset(flat, 8, kind="paired")) == 2


# ------------------------------------------------------------------------------------------------ checks
def test_file_order_and_labels_follow_nvidia(tmp_path):
    """Names sorted as strings of relative paths (NVIDIA's `sorted(relpath)`), upper-case extensions kept,
    labels matched by name whatever the json order; a skipped file's replacement brings its own label."""
    names = ["img10.png", "img2.PNG", "a/img1.png", "B/z.jpg", "a/b/c.webp"]
    for i, name in enumerate(names):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (20 * i, 0, 0)).save(path, **({"lossless": True} if name.endswith("webp") else {}))
    bad = tmp_path / "img3.png"
    data = png_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    bad.write_bytes(data[: len(data) // 2])  # a valid header, truncated pixels
    labels = {name: i for i, name in enumerate(names)} | {"img3.png": 7}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [[n, c] for n, c in labels.items()][::-1]}))
    ds = open_dataset(tmp_path, 4, labels=True, max_bad_fraction=0.5)
    order = sorted(names + ["img3.png"])
    assert ds.files.names == order == ["B/z.jpg", "a/b/c.webp", "a/img1.png", "img10.png", "img2.PNG", "img3.png"]
    assert ds.num_classes == 8
    for i, name in enumerate(order[:-1]):
        image, label = ds[i]
        assert label.item() == labels[name]
        assert abs(image[0, 0, 0].item() - 20 * names.index(name)) <= (4 if name.endswith("jpg") else 0)
    with pytest.warns(DataWarning, match="img3.png"):
        image, label = ds[len(order) - 1]  # replaced by index 0 (cyclic): image and label of B/z.jpg
    assert label.item() == labels["B/z.jpg"] and torch.equal(image, ds[0][0])
