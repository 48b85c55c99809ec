"""DCGAN training step (issue 8): 64^2, batch 128, bf16 autocast, channels_last.

The recipe is the PyTorch DCGAN example's (engine/recipes/dcgan.py): one D step (reals, then detached fakes) and
one G step per batch, BCE with logits, Adam. No regularization, so a repetition is 20 consecutive steps (a step is
milliseconds on an H100: 20 of them average out launch and host-sync jitter).
"""
from .training import TrainCase, TrainSpec

CASES = [
    TrainCase(
        op="dcgan",
        name="train.dcgan.64px_b128",
        recipe="dcgan",
        data_kind="image",
        channels=3,
        full=TrainSpec(resolution=64, batch=128, options={}, window=20),
        smoke=TrainSpec(resolution=32, batch=4, options=dict(nz=8, ngf=4, ndf=4), window=2),
        amortization="one repetition = 20 steps (D step + G step each; no regularization)",
        # Issue 8, H100-class, bf16: >= 1.3x eager and >= 1.1x torch.compile.
        targets={"train": {"vs_eager": 1.3, "vs_compile": 1.1}},
        quick=True,
    ),
]
