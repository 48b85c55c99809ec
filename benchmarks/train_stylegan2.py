"""StyleGAN2 training steps (issue 8): paper256 at 256^2 and config-f at 1024^2, batch 32, bf16, channels_last.

The recipe is NVIDIA StyleGAN2-ADA's training loop without ADA (engine/recipes/stylegan2.py): per step Gmain and
Dmain, path length (Greg, on batch // 2) every 4th step and R1 (Dreg) every 16th, G_ema updated every step.
--precision bf16 runs every synthesis and discriminator block in bfloat16 (fusegan's option; NVIDIA's own mixed
precision is fp16 in the top 4 resolutions). `--cfg paper256` / `--cfg stylegan2` (config-f) set the networks
and hyperparameters as NVIDIA's train.py does; the batch is 32 for both (on one GPU, so batch_gpu = 32).

sec/kimg is comparable to StyleGAN2-ADA's tables (there: 8 GPUs, mixed fp16, the batch split across them).
"""
from .training import TrainCase, TrainSpec

# A tiny StyleGAN2 for the CPU smoke run: 16x16, 16 channels at most, 2 mapping layers.
SMOKE_OPTIONS = dict(channel_base=128, channel_max=16, z_dim=32, w_dim=32, map=2)

CASES = [
    TrainCase(
        op="stylegan2",
        name="train.stylegan2.paper256.256px_b32",
        recipe="stylegan2",
        data_kind="image",
        channels=3,
        full=TrainSpec(resolution=256, batch=32, options=dict(cfg="paper256"), window=16, cycle=16),
        smoke=TrainSpec(resolution=16, batch=4, options=dict(cfg="paper256", **SMOKE_OPTIONS), window=1, cycle=2),
        amortization="one repetition = steps 0..15: 16 Gmain + 16 Dmain, 4 Greg (path length, every 4th step) "
                     "and 1 Dreg (R1, every 16th), exactly as training amortizes them",
        # Issue 8, H100-class, bf16: >= 1.5x eager, >= 1.25x torch.compile, >= 40% model-FLOPs utilization.
        targets={"train": {"vs_eager": 1.5, "vs_compile": 1.25, "frac_matmul_peak": 0.4}},
    ),
    TrainCase(
        op="stylegan2",
        name="train.stylegan2.config_f.1024px_b32",
        recipe="stylegan2",
        data_kind="image",
        channels=3,
        # One warm-up cycle (16 steps: it compiles everything) instead of two: a config-f step is the slowest here.
        full=TrainSpec(resolution=1024, batch=32, options=dict(cfg="stylegan2"), window=4, cycle=16, warmup=1),
        smoke=TrainSpec(resolution=16, batch=4, options=dict(cfg="stylegan2", **SMOKE_OPTIONS), window=1, cycle=2),
        amortization="one repetition = 4 steps; repetitions rotate through steps 0-3, 4-7, 8-11, 12-15 (each with "
                     "1 Greg, the first also with the Dreg); per-step times are the sum of the four windows' "
                     "percentiles / 16, i.e. amortized over 16 steps as in training",
    ),
]
