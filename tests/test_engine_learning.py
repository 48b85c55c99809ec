"""A learning test, not only "the loss went down": DCGAN trained briefly on the built-in digits must draw
digits that a classifier trained on real digits recognises as at least 8 of the 10 classes with mean
confidence >= 0.6; random images, a collapsed generator and blank images must fail the same check."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from fusegan.engine.config import TrainConfig
from fusegan.engine.data import load_digits_dataset
from fusegan.engine.inference import load_recipe
from fusegan.engine.trainer import train

MIN_CLASSES, MIN_CONFIDENCE = 8, 0.6
NUM_SAMPLES = 500
LEARN_STEPS = 500  # ~20-40 s on 2 CPU cores at batch 64 with ngf = ndf = 32 (all 10 classes from ~400 on)


@pytest.fixture(scope="module")
def digit_classifier():
    """Multinomial logistic regression on the real 32x32 digits, as pixels in [0, 1]."""
    data = load_digits_dataset(32, labels=True)
    x = data.images.reshape(len(data), -1).float().numpy() / 255
    clf = LogisticRegression(max_iter=3000).fit(x, data.labels.numpy())
    assert clf.score(x, data.labels.numpy()) > 0.95
    return clf


def recognised(clf, images):
    """(number of classes predicted, mean confidence) for images in [-1, 1], [N, 1, 32, 32]."""
    pixels = ((images.float().clamp(-1, 1) + 1) / 2).reshape(len(images), -1).numpy()
    proba = clf.predict_proba(pixels)
    return len(np.unique(proba.argmax(1))), float(proba.max(1).mean())


def passes(clf, images):
    classes, confidence = recognised(clf, images)
    return classes >= MIN_CLASSES and confidence >= MIN_CONFIDENCE


def test_check_accepts_real_digits(digit_classifier):
    data = load_digits_dataset(32)
    assert passes(digit_classifier, data.images[:NUM_SAMPLES].float() / 127.5 - 1)


def test_check_rejects_random_blank_and_collapsed_images(digit_classifier):
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(NUM_SAMPLES, 1, 32, 32, generator=gen) * 2 - 1
    blank = torch.full((NUM_SAMPLES, 1, 32, 32), -1.0)
    one_digit = (load_digits_dataset(32).images[:1].float() / 127.5 - 1).expand(NUM_SAMPLES, -1, -1, -1)
    for images in (noise, blank, one_digit):
        assert not passes(digit_classifier, images)


def test_dcgan_learns_recognisable_digits(digit_classifier, tmp_path):
    train(TrainConfig(recipe="dcgan", data="digits", steps=LEARN_STEPS, snap=LEARN_STEPS, batch=64, workers=0,
                      impl="ref", device="cpu", progress=False, tensorboard=False, run_dir=str(tmp_path),
                      recipe_options={}))  # the main job's model: 32x32 DCGAN, ngf = ndf = 32
    recipe = load_recipe(tmp_path)
    samples = recipe.sample(NUM_SAMPLES, torch.Generator().manual_seed(0))
    classes, confidence = recognised(digit_classifier, samples)
    assert classes >= MIN_CLASSES and confidence >= MIN_CONFIDENCE, (classes, confidence)
