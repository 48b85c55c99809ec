"""pix2pix training step (issue 8): unet_256 generator, 70x70 PatchGAN, 256^2, batch 16, bf16 autocast, channels_last.

The recipe is junyanz/pytorch-CycleGAN-and-pix2pix's pix2pix_model (engine/recipes/pix2pix.py): G(A), a D step
on fakes and reals, then a G step with GAN + 100 * L1; BatchNorm, Dropout(0.5). A repetition is 8 steps.
"""
from .training import TrainCase, TrainSpec

CASES = [
    TrainCase(
        op="pix2pix",
        name="train.pix2pix.unet_256.256px_b16",
        recipe="pix2pix",
        data_kind="paired",
        channels=3,
        full=TrainSpec(resolution=256, batch=16, options={}, window=8),  # num_downs = log2(256) = 8: unet_256
        smoke=TrainSpec(resolution=32, batch=2, options=dict(ngf=4, ndf=4), window=2),
        amortization="one repetition = 8 steps (D step + G step each; no regularization)",
        # Issue 8, H100-class, bf16: >= 1.3x eager and >= 1.1x torch.compile.
        targets={"train": {"vs_eager": 1.3, "vs_compile": 1.1}},
    ),
]
