"""CycleGAN's unpaired data as pytorch-CycleGAN-and-pix2pix's UnalignedDataset gives it: B's partner of each A
redrawn every epoch (reproducibly: the sampler tags indices with their epoch, so workers and resumed runs see the
same pairs) and A and B x-flipped independently; pix2pix's paired A and B keep one shared flip."""
import itertools
from collections import Counter

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fusegan.engine import checkpoint as ckpt
from fusegan.engine.config import TrainConfig
from fusegan.engine.data import InfiniteSampler, make_loader, open_dataset, random_xflip, to_float
from fusegan.engine.trainer import Trainer, train

TINY_CYCLEGAN = {"ngf": 2, "ndf": 2, "n_blocks": 1, "n_layers_d": 2, "pool_size": 2}
TINY_PIX2PIX = {"ngf": 2, "ndf": 2}


def save_solid(path, color, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def make_unpaired(root, len_a, len_b):
    """A image i is red 10 * i, B image j green 10 * j: a batch tells which images it holds."""
    for i in range(len_a):
        save_solid(root / "trainA" / f"a{i:02d}.png", (10 * i, 0, 0))
    for j in range(len_b):
        save_solid(root / "trainB" / f"b{j:02d}.png", (0, 10 * j, 0))
    return root


def take(sampler, count):
    stream = iter(sampler)
    return [next(stream) for _ in range(count)]


def pairs_of(batches):
    """(A image, B image) of every sample of uint8 (A, B) batches, in order."""
    return [(int(a[0, 0, 0]) // 10, int(b[1, 0, 0]) // 10) for batch_a, batch_b in batches
            for a, b in zip(batch_a, batch_b)]


def loader_pairs(dataset, batch, count, **options):
    loader = make_loader(dataset, batch, device="cpu", **options)
    try:
        return pairs_of(next(loader) for _ in range(count))
    finally:
        loader.close()


# ------------------------------------------------------------------------------------- partners per epoch
def test_sampler_tags_indices_with_their_epoch_for_unpaired_data(tmp_path):
    unpaired = open_dataset(make_unpaired(tmp_path / "u", 5, 3), 8, kind="unpaired", seed=2)
    plain = take(InfiniteSampler(5, seed=2), 23)
    assert take(InfiniteSampler(unpaired, seed=2), 23) == [k // 5 * 5 + i for k, i in enumerate(plain)]
    assert take(InfiniteSampler(unpaired, seed=2, epoch_indexed=False), 23) == plain
    # Sharded and resumed: the epoch is that of the global position.
    shard = take(InfiniteSampler(unpaired, seed=2, rank=1, world_size=2, start_index=4), 9)
    global_positions = [(4 + k) * 2 + 1 for k in range(9)]
    plain_global = take(InfiniteSampler(5, seed=2), 30)
    assert shard == [p // 5 * 5 + plain_global[p] for p in global_positions]
    # Every other kind of data gets plain indices, as before.
    save_solid(tmp_path / "p" / "0.png", (1, 2, 3), size=(16, 8))
    paired = open_dataset(tmp_path / "p", 8, kind="paired")
    assert InfiniteSampler(paired).epoch_indexed is False and take(InfiniteSampler(paired, seed=2), 3) == [0] * 3


def test_items_past_len_carry_the_epoch(tmp_path):
    ds = open_dataset(make_unpaired(tmp_path, 5, 3), 8, kind="unpaired", seed=7)
    n = len(ds)
    assert n == 5
    for epoch in range(4):
        for i in range(n):
            a, b = ds[epoch * n + i]
            j = ds.b_index(epoch * n + i)
            assert 0 <= j < 3
            assert (int(a[0, 0, 0]) // 10, int(b[1, 0, 0]) // 10) == (i % ds.len_a, j)
    partners = [[ds.b_index(e * n + i) for i in range(n)] for e in range(4)]
    assert all(first != second for first, second in zip(partners, partners[1:]))
    same_seed = open_dataset(tmp_path, 8, kind="unpaired", seed=7)
    assert [[same_seed.b_index(e * n + i) for i in range(n)] for e in range(4)] == partners
    with pytest.raises(IndexError):
        ds[-1]


@pytest.mark.parametrize("len_a,len_b", [(12, 5), (5, 12), (6, 6)])
def test_b_partners_change_every_epoch_and_every_b_is_used_in_each(tmp_path, len_a, len_b):
    ds = open_dataset(make_unpaired(tmp_path, len_a, len_b), 8, kind="unpaired", seed=3)
    n, epochs = len(ds), 4
    stream = loader_pairs(ds, 4, epochs * n // 4, seed=11)
    per_epoch = [stream[e * n:(e + 1) * n] for e in range(epochs)]
    for pairs in per_epoch:
        assert Counter(a for a, _ in pairs) == Counter(i % len_a for i in range(n))  # A as before
        uses = Counter(b for _, b in pairs)
        assert set(uses) == set(range(len_b)) and max(uses.values()) - min(uses.values()) <= 1
    for first, second in zip(per_epoch, per_epoch[1:]):
        assert Counter(first) != Counter(second)  # new partners each epoch
    if len_a >= len_b:  # each A image once per epoch: it must meet more than one B over the epochs
        partners = {a: {b for pairs in per_epoch for a2, b in pairs if a2 == a} for a in range(len_a)}
        assert sum(len(seen) > 1 for seen in partners.values()) >= len_a - 1


def test_resume_mid_epoch_sees_the_same_pairs(tmp_path):
    ds = open_dataset(make_unpaired(tmp_path, 7, 4), 8, kind="unpaired", seed=5)
    options = dict(seed=5, rank=1, world_size=2)
    full = loader_pairs(ds, 3, 10, **options)
    # 4 batches of 3 on rank 1 of 2: global position 25, i.e. epoch 3, offset 4 of 7.
    resumed = loader_pairs(ds, 3, 6, start_index=12, **options)
    assert resumed == full[12:]
    expected = [(i % len(ds) % 7, ds.b_index(i)) for i in take(InfiniteSampler(ds, **options), 30)]
    assert full == expected
    assert len(set(full)) > len(ds)  # partners are redrawn: more distinct pairs than indices


def test_workers_give_the_same_pairs_as_one_process(tmp_path):
    ds = open_dataset(make_unpaired(tmp_path, 6, 4), 8, kind="unpaired", seed=1)
    single = loader_pairs(ds, 4, 8, seed=9)
    assert loader_pairs(ds, 4, 8, seed=9, workers=2) == single
    assert len(set(single)) > len(ds)


# ---------------------------------------------------------------------------------------------- x-flips
def trainer_for(recipe, data, run_dir, res, options):
    return Trainer(TrainConfig(recipe=recipe, data=str(data), res=res, batch=2, steps=1, xflip=True, workers=0,
                               impl="ref", device="cpu", progress=False, tensorboard=False, run_dir=str(run_dir),
                               recipe_options=dict(options)))


def flips(out, images):
    """Per sample: True when `out` is the float version of `images` mirrored, False when it is unchanged."""
    base = to_float(images)
    result = []
    for o, x in zip(out, base):
        flipped = torch.equal(o, x.flip(-1))
        assert flipped or torch.equal(o, x)
        result.append(flipped)
    return result


def random_images(seed, n=64, res=16):
    return torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_unpaired_batches_flip_a_and_b_independently(tmp_path):
    folder = make_unpaired(tmp_path / "data", 3, 4)
    trainer = trainer_for("cyclegan", folder, tmp_path / "run", 16, TINY_CYCLEGAN)
    assert trainer.data_info.kind == "unpaired"
    x = random_images(0)
    replay = torch.Generator().set_state(trainer.aug_generator.get_state())
    a, b = trainer._prepare((x, x.clone()))  # the same images in A and B: any difference is the flip
    flips_a, flips_b = flips(a, x), flips(b, x)
    agree = sum(fa == fb for fa, fb in zip(flips_a, flips_b))
    assert 0 < agree < 64  # same-flip and different-flip pairs both occur
    assert 0 < sum(flips_a) < 64 and 0 < sum(flips_b) < 64
    # A's flips, then B's, each a random_xflip draw from the x-flip generator alone.
    assert torch.equal(a, random_xflip(to_float(x), replay)) and torch.equal(b, random_xflip(to_float(x), replay))
    assert torch.equal(trainer.aug_generator.get_state(), replay.get_state())
    again = trainer_for("cyclegan", folder, tmp_path / "again", 16, TINY_CYCLEGAN)
    a2, b2 = again._prepare((x, x.clone()))
    assert torch.equal(a, a2) and torch.equal(b, b2)  # deterministic for a fixed seed


def test_paired_batches_share_one_flip(tmp_path):
    save_solid(tmp_path / "data" / "0.png", (1, 2, 3), size=(64, 32))
    trainer = trainer_for("pix2pix", tmp_path / "data", tmp_path / "run", 32, TINY_PIX2PIX)
    assert trainer.data_info.kind == "paired"
    x, y = random_images(1, res=32), random_images(2, res=32)
    replay = torch.Generator().set_state(trainer.aug_generator.get_state())
    a, b = trainer._prepare((x, y))
    flips_a = flips(a, x)
    assert flips(b, y) == flips_a and 0 < sum(flips_a) < 64
    expected_a, expected_b = random_xflip((to_float(x), to_float(y)), replay)
    assert torch.equal(a, expected_a) and torch.equal(b, expected_b)


# ------------------------------------------------------------------------------------------ whole runs
def test_cyclegan_resume_mid_epoch_is_bit_exact(tmp_path):
    """Steps 0..5 straight == steps 0..2, a resume (mid-epoch: 4 samples an epoch, batch 1), steps 3..5, with
    DataLoader workers and x-flips: the epoch-tagged indices and the per-tensor flips resume exactly."""
    folder = make_unpaired(tmp_path / "data", 3, 4)

    def config(run_dir, steps, **extra):
        return TrainConfig(recipe="cyclegan", data=str(folder), res=16, batch=1, steps=steps, snap=3, log_every=3,
                           xflip=True, workers=2, impl="ref", device="cpu", progress=False, tensorboard=False,
                           run_dir=str(run_dir), recipe_options=dict(TINY_CYCLEGAN), **extra)

    straight, split = tmp_path / "straight", tmp_path / "split"
    train(config(straight, 6))
    train(config(split, 3))
    train(config(split, 6, resume=str(split)))
    a, b = load_file(str(ckpt.find_latest(straight)[0])), load_file(str(ckpt.find_latest(split)[0]))
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def test_iterating_the_dataset_gives_epoch_zero_and_ends(tmp_path):
    ds = open_dataset(make_unpaired(tmp_path, 3, 4), 8, kind="unpaired", seed=0)
    items = list(itertools.islice(ds, len(ds) + 1))  # islice: a failure ends too
    assert len(items) == len(ds) == 4
    assert all(torch.equal(a, ds[i][0]) and torch.equal(b, ds[i][1]) for i, (a, b) in enumerate(items))
