"""CycleGAN training step (issue 8): two ResNet-9-block generators, two 70x70 PatchGANs, 256^2, batch 4, bf16
autocast, channels_last.

The recipe is junyanz/pytorch-CycleGAN-and-pix2pix's cycle_gan_model (engine/recipes/cyclegan.py): the G step
(both generators: GAN, cycle and identity losses) then the D step on fakes from the 50-image pools. A repetition
is 16 steps (64 images), so the pools are full after the first warm-up cycle and the timed steps run the pool's
steady state (random swaps), as most of training does.
"""
from .training import TrainCase, TrainSpec

CASES = [
    TrainCase(
        op="cyclegan",
        name="train.cyclegan.resnet_9blocks.256px_b4",
        recipe="cyclegan",
        data_kind="unpaired",
        channels=3,
        full=TrainSpec(resolution=256, batch=4, options={}, window=16),  # 9 ResNet blocks at >= 256
        smoke=TrainSpec(resolution=32, batch=2, options=dict(ngf=4, ndf=4, n_blocks=1, pool_size=3), window=2),
        amortization="one repetition = 16 steps (G step + D step each; no regularization)",
        # Issue 8, H100-class, bf16: >= 1.3x eager and >= 1.1x torch.compile.
        targets={"train": {"vs_eager": 1.3, "vs_compile": 1.1}},
    ),
]
