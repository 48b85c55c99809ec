"""StyleGAN2 as NVIDIA's StyleGAN2-ADA trains it (train.py, training/training_loop.py, training/loss.py).

Per batch, the four phases of the training loop, in order, each with its own fresh latents:

    Gmain  every step        softplus(-D(G(z)))                                     (non-saturating logistic)
    Greg   every 4th step    path length on batch // 2: (|J_w^T y| - pl_mean)^2 * pl_weight, gain 4
    Dmain  every step        softplus(D(G(z))) + softplus(-D(x))
    Dreg   every 16th step   R1: |grad_x D(x)|^2 * r1_gamma / 2, gain 16

Each phase zeroes its optimizer's gradients, enables gradients of its own network only, runs its backward, replaces
non-finite gradient entries (nan_to_num) and steps. A network's main and regularization phases share one Adam
optimizer whose lr and betas are rescaled by c = interval / (interval + 1) (lr * c, betas ** c): lazy
regularization. Style mixing (probability 0.9) mixes the ws of two latents after a random cutoff. G_ema, an
exponential moving average of G with a half-life of `ema_kimg` thousand images (ramped up over the first images), is
what the grids, `sample` and `interpolate` use. There is no ADA augmentation here (the trainer x-flips if asked).
"""
import copy
import dataclasses
import math

import torch

from fusegan.kernels.gan_loss import gan_loss
from fusegan.kernels.modulated_conv2d import no_weight_gradients
from fusegan.kernels.regularizers import path_length_penalty, r1_penalty
from fusegan.models.stylegan2 import Discriminator, Generator

from .base import Recipe, ema_update, set_requires_grad
from .latent import interpolate_latents, latents_for_seeds

# NVIDIA train.py's --cfg presets. 'auto' (-1 entries) is filled in from the resolution and GPU count.
CONFIGS = {
    "auto": dict(ref_gpus=-1, kimg=25000, mb=-1, mbstd=-1, fmaps=-1, lrate=-1, gamma=-1, ema=-1, ramp=0.05, map=2),
    "stylegan2": dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=10, ema=10, ramp=None,
                      map=8),
    "paper256": dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=0.5, lrate=0.0025, gamma=1, ema=20, ramp=None,
                     map=8),
    "paper512": dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=1, lrate=0.0025, gamma=0.5, ema=20, ramp=None,
                     map=8),
    "paper1024": dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=2, ema=10, ramp=None,
                      map=8),
    "cifar": dict(ref_gpus=2, kimg=100000, mb=64, mbstd=32, fmaps=1, lrate=0.0025, gamma=0.01, ema=500, ramp=0.05,
                  map=2),
}
G_REG_INTERVAL = 4      # training_loop.py defaults
D_REG_INTERVAL = 16
PL_BATCH_SHRINK = 2     # loss.py StyleGAN2Loss defaults
PL_DECAY = 0.01
ADAM_BETAS = (0.0, 0.99)
ADAM_EPS = 1e-8
MP_SCHEMES = ("nvidia", "all")


def resolve_config(cfg: str, resolution: int, gpus: int = 1) -> dict:
    """NVIDIA train.py's hyperparameters for `--cfg cfg` at `resolution` on `gpus` GPUs (before command-line
    overrides): the preset's fields (mb is NVIDIA's batch) plus what train.py derives from them."""
    if cfg not in CONFIGS:
        raise ValueError(f"cfg must be one of {', '.join(CONFIGS)}, got {cfg!r}")
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    spec = dict(CONFIGS[cfg])
    if cfg == "auto":
        res = resolution
        spec["ref_gpus"] = gpus
        spec["mb"] = max(min(gpus * min(4096 // res, 32), 64), gpus)  # keep GPU memory consumption at bay
        spec["mbstd"] = min(spec["mb"] // gpus, 4)
        spec["fmaps"] = 1 if res >= 512 else 0.5
        spec["lrate"] = 0.002 if res >= 1024 else 0.0025
        spec["gamma"] = 0.0002 * res**2 / spec["mb"]  # NVIDIA's heuristic
        spec["ema"] = spec["mb"] * 10 / 32
    spec.update(
        channel_base=int(spec["fmaps"] * 32768),
        channel_max=512,
        num_fp16_res=4,         # NVIDIA's mixed precision: the top 4 resolutions in fp16 ...
        conv_clamp=256,         # ... with activations clamped to avoid fp16 overflow
        pl_weight=0 if cfg == "cifar" else 2,
        style_mixing_prob=0 if cfg == "cifar" else 0.9,
        d_architecture="orig" if cfg == "cifar" else "resnet",
    )
    return spec


def default_batch_for(cfg: str, resolution: int, gpus: int = 1) -> int:
    """The global batch NVIDIA's `--cfg` recommends (its `mb`); an explicit --batch replaces it. The config's other
    numbers (gamma, ema for 'auto') are derived from this recommended batch, not from the batch actually used, as
    in train.py."""
    return resolve_config(cfg, resolution, gpus)["mb"]


def lazy_regularization(lr: float, betas, interval: int):
    """Adam's (lr, betas) for a network regularized every `interval` steps (training_loop.py): the reg phase's
    extra steps make each image count (interval + 1) / interval times, so lr * c and betas ** c, c = i / (i + 1)."""
    c = interval / (interval + 1)
    return lr * c, tuple(beta**c for beta in betas)


def ema_beta(batch_size: int, ema_kimg: float, ema_rampup, cur_nimg: int) -> float:
    """G_ema's decay per step: a half-life of ema_kimg thousand images, ramped up (when ema_rampup is not None) to
    cur_nimg * ema_rampup images so that early G_ema follows G."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


def _ramp(text):
    """--ema-rampup: a ratio, or 'none' (no ramp-up; kept as the string so that None can mean 'from --cfg')."""
    return "none" if str(text).lower() == "none" else float(text)


def resolve_hyperparameters(options, resolution: int, gpus: int = 1) -> dict:
    """resolve_config's numbers with the command-line overrides applied (None = keep the config's value)."""
    hp = resolve_config(options.cfg, resolution, gpus)
    overrides = {"gamma": options.r1_gamma, "pl_weight": options.pl_weight, "style_mixing_prob": options.style_mixing,
                 "ema": options.ema_kimg, "lrate": options.lr, "map": options.map, "fmaps": options.fmaps,
                 "channel_max": options.channel_max, "mbstd": options.mbstd_group,
                 "d_architecture": options.d_architecture}
    hp.update({k: v for k, v in overrides.items() if v is not None})
    if options.ema_rampup is not None:
        hp["ramp"] = None if options.ema_rampup == "none" else float(options.ema_rampup)
    hp["channel_base"] = options.channel_base if options.channel_base is not None else int(hp["fmaps"] * 32768)
    hp["z_dim"], hp["w_dim"] = options.z_dim, options.w_dim
    return hp


class _WithoutLossScaling:
    """ctx.precision for NVIDIA's fp16 scheme, which trains without loss scaling (fp16 in the top resolutions,
    conv_clamp and nan_to_num keep it finite): the same mode and autocast, a disabled GradScaler."""

    def __init__(self, precision):
        self.mode, self.device, self.dtype = precision.mode, precision.device, precision.dtype
        self.autocast = precision.autocast
        self.scaler = torch.amp.GradScaler(precision.device.type, enabled=False)

    def scale(self, loss):
        return loss


def _label_weights(label_counts, c_dim):
    """The class distribution of conditional data as float64 weights for torch.multinomial (None: unknown, or
    unconditional)."""
    if c_dim == 0 or label_counts is None:
        return None
    counts = torch.as_tensor(label_counts, dtype=torch.float64)
    if counts.shape != (c_dim,) or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"label_counts must hold {c_dim} non-negative counts with a positive sum, got "
                         f"{list(label_counts)}")
    return counts


class StyleGAN2Recipe(Recipe):
    """StyleGAN2-ADA's StyleGAN2Loss and training loop (without ADA) on fusegan's StyleGAN2 G and D.

    Precision (`--precision`; the networks cast per block, so no autocast is used in any mode):
      fp32 / tf32  plain fp32 networks, no activation clamp (NVIDIA's `--fp32`).
      bf16         fusegan's own faster option: every block in bfloat16 (num_fp16_res='all'), conv_clamp from the
                   config; bf16 has fp32's range, so no GradScaler.
      fp16         `--sg2-mp nvidia` (default): NVIDIA's scheme, fp16 in the top num_fp16_res=4 resolutions with
                   conv_clamp=256 and no loss scaling (the trainer's GradScaler is left unused);
                   `--sg2-mp all`: every block in fp16, with the trainer's GradScaler (loss scaling).
    The mapping networks and D's 4x4 epilogue always run in fp32 (with NVIDIA's scheme also the blocks below the
    top 4 resolutions); weights and Adam state are fp32 in every mode.

    --compile compiles the forwards of the main phases (Gmain, Dmain) only. The regularization phases
    differentiate through a gradient (double backward), which torch.compile does not support, and rely on
    no_weight_gradients(), which a compiled graph would read at trace time, so they run eager.

    The --cfg batch (NVIDIA's mb) is a recommendation, see `default_batch_for`; the trainer's --batch decides.
    """

    name = "stylegan2"
    default_batch = 32          # default_batch_for('auto', 32, 1)
    default_resolution = 32
    default_data = "faces"
    loss_names = ("loss_G", "loss_D", "scores_real", "scores_fake")
    g_reg_interval = G_REG_INTERVAL
    d_reg_interval = D_REG_INTERVAL
    pl_batch_shrink = PL_BATCH_SHRINK
    pl_decay = PL_DECAY
    default_batch_for = staticmethod(default_batch_for)

    @classmethod
    def recommended_batch(cls, options, resolution, world_size):
        """NVIDIA's batch for --cfg at this resolution and process count (train.py's `mb`)."""
        return default_batch_for(options.cfg, resolution, world_size)

    @classmethod
    def add_arguments(cls, parser):
        group = parser.add_argument_group("stylegan2 (None: from --cfg, as NVIDIA's train.py)")
        group.add_argument("--cfg", choices=tuple(CONFIGS), default="auto",
                           help="NVIDIA train.py hyperparameter preset (default: auto)")
        group.add_argument("--r1-gamma", type=float, default=None, help="R1 weight gamma (default: from --cfg)")
        group.add_argument("--pl-weight", type=float, default=None,
                           help="path length weight (default: 2; 0 for cifar)")
        group.add_argument("--style-mixing", type=float, default=None,
                           help="style mixing probability (default: 0.9; 0 for cifar)")
        group.add_argument("--ema-kimg", type=float, default=None, help="G_ema half-life in kimg (default: --cfg)")
        group.add_argument("--ema-rampup", type=_ramp, default=None,
                           help="G_ema ramp-up ratio, or 'none' (default: from --cfg)")
        group.add_argument("--lr", type=float, default=None, help="Adam learning rate of G and D (default: --cfg)")
        group.add_argument("--map", type=int, default=None, help="mapping network layers (default: --cfg)")
        group.add_argument("--fmaps", type=float, default=None, help="channel_base = fmaps * 32768 (default: --cfg)")
        group.add_argument("--channel-base", type=int, default=None, help="overrides --fmaps")
        group.add_argument("--channel-max", type=int, default=None, help="most channels per layer (default: 512)")
        group.add_argument("--mbstd-group", type=int, default=None, help="D minibatch-stddev group (default: --cfg)")
        group.add_argument("--d-architecture", choices=("orig", "skip", "resnet"), default=None,
                           help="D architecture (default: resnet; orig for cifar)")
        group.add_argument("--z-dim", type=int, default=512, help="latent size (default: 512)")
        group.add_argument("--w-dim", type=int, default=512, help="intermediate latent size (default: 512)")
        group.add_argument("--sg2-mp", choices=MP_SCHEMES, default="nvidia",
                           help="with --precision fp16: 'nvidia' = fp16 in the top 4 resolutions, no loss scaling; "
                                "'all' = every block in fp16 with loss scaling (default: nvidia)")

    def __init__(self, ctx, options, data):
        super().__init__(ctx, options, data)
        if ctx.precision.mode == "fp16" and options.sg2_mp == "nvidia":
            self.ctx = ctx = dataclasses.replace(ctx, precision=_WithoutLossScaling(ctx.precision))
        hp = self.hp = resolve_hyperparameters(options, data.resolution, ctx.dist.world_size)
        self.r1_gamma, self.pl_weight = float(hp["gamma"]), float(hp["pl_weight"])
        self.style_mixing_prob = float(hp["style_mixing_prob"])
        mbstd = min(hp["mbstd"], ctx.batch_gpu)
        if ctx.batch_gpu % mbstd:
            raise ValueError(f"the batch per process ({ctx.batch_gpu}) must be divisible by D's minibatch-stddev "
                             f"group ({mbstd}); change --batch or --mbstd-group")
        self.c_dim = data.num_classes
        self.label_weights = _label_weights(data.label_counts, self.c_dim)
        precision = self._precision_kwargs(hp)
        # --channels-last puts the low-precision blocks' activations in NHWC (NVIDIA's fp16_channels_last; the
        # fp32 blocks stay NCHW, as there). Without it the networks would only convert their weights: G's
        # activations start from its NCHW const input and every D block converts its input to its own format.
        G = Generator(z_dim=hp["z_dim"], c_dim=self.c_dim, w_dim=hp["w_dim"], img_resolution=data.resolution,
                      img_channels=data.channels, mapping_kwargs=dict(num_layers=hp["map"]),
                      synthesis_kwargs=dict(channel_base=hp["channel_base"], channel_max=hp["channel_max"],
                                            fp16_channels_last=ctx.channels_last, **precision), impl=ctx.impl)
        D = Discriminator(c_dim=self.c_dim, img_resolution=data.resolution, img_channels=data.channels,
                          architecture=hp["d_architecture"], channel_base=hp["channel_base"],
                          channel_max=hp["channel_max"], mbstd_group_size=hp["mbstd"], impl=ctx.impl,
                          block_kwargs=dict(fp16_channels_last=ctx.channels_last), **precision)
        # As training_loop.py: both start frozen; each phase enables its own network's gradients.
        self.G = self.prepare(G).train().requires_grad_(False)
        self.D = self.prepare(D).train().requires_grad_(False)
        self.G_ema = copy.deepcopy(self.G).eval()
        self.nets = {"G": self.G, "D": self.D, "G_ema": self.G_ema}
        self.optimizers = {}
        for name, net, interval in (("G", self.G, G_REG_INTERVAL), ("D", self.D, D_REG_INTERVAL)):
            lr, betas = lazy_regularization(hp["lrate"], ADAM_BETAS, interval)
            self.optimizers[name] = torch.optim.Adam(net.parameters(), lr=lr, betas=betas, eps=ADAM_EPS)
        self.pl_mean = torch.zeros([], device=ctx.device)
        self.mapping_fwd = self.maybe_compile(self.G.mapping)
        self.synthesis_fwd = self.maybe_compile(self.G.synthesis)
        self.D_fwd = self.maybe_compile(self.D)
        self.grid_size = 64 if data.resolution <= 256 else 16
        self.grid_z = latents_for_seeds(range(self.grid_size), hp["z_dim"], ctx.device, base_seed=ctx.seed)

    def _precision_kwargs(self, hp) -> dict:
        mode = self.ctx.precision.mode
        if mode in ("fp32", "tf32"):
            return dict(num_fp16_res=0, conv_clamp=None)
        if mode == "bf16":
            return dict(num_fp16_res="all", conv_clamp=hp["conv_clamp"], mp_dtype=torch.bfloat16)
        blocks = hp["num_fp16_res"] if self.options.sg2_mp == "nvidia" else "all"
        return dict(num_fp16_res=blocks, conv_clamp=hp["conv_clamp"], mp_dtype=torch.float16)

    # ---- labels -------------------------------------------------------------------------------------------
    def labels_to_c(self, labels: torch.Tensor) -> torch.Tensor:
        """One-hot conditioning vectors [N, num_classes] ([N, 0] when unconditional); a comparison, not F.one_hot,
        which checks the label range on the host."""
        classes = torch.arange(self.c_dim, device=labels.device)
        return (labels.reshape(-1, 1) == classes).to(torch.float32)

    # ---- NVIDIA's StyleGAN2Loss ---------------------------------------------------------------------------
    def run_G(self, z, c, *, regularizing=False):
        """(images, ws) as loss.py's run_G, style mixing included. Eager modules when regularizing."""
        mapping = self.G.mapping if regularizing else self.mapping_fwd
        synthesis = self.G.synthesis if regularizing else self.synthesis_fwd
        ws = mapping(z, c)
        if self.style_mixing_prob > 0:
            num_ws = ws.shape[1]
            cutoff = torch.empty([], dtype=torch.int64, device=ws.device).random_(1, num_ws)
            cutoff = torch.where(torch.rand([], device=ws.device) < self.style_mixing_prob, cutoff,
                                 torch.full_like(cutoff, num_ws))
            mixed = mapping(torch.randn_like(z), c, skip_w_avg_update=True)
            # NVIDIA writes ws[:, cutoff:] = mixed[:, cutoff:]; slicing by a tensor syncs with the host, a mask
            # selects the same layers without a sync.
            later = (torch.arange(num_ws, device=ws.device) >= cutoff).reshape(1, num_ws, 1)
            ws = torch.where(later, mixed, ws)
        return synthesis(ws), ws

    def run_D(self, img, c, *, regularizing=False):
        return (self.D if regularizing else self.D_fwd)(img, c)

    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain):
        """One phase's losses and backward (loss.py's accumulate_gradients, phases split as in the training loop).
        Returns (the phase's loss for the finiteness check, {stat name: detached 0-d tensor})."""
        impl = self.ctx.impl
        if phase == "Gmain":  # maximize logits for generated images
            gen_img, _ = self.run_G(gen_z, gen_c)
            gen_logits = self.run_D(gen_img, gen_c)
            loss = gan_loss(gen_logits, "gen", impl=impl)
            self.backward(loss * gain)
            return loss, {"loss_G": loss.detach(), "scores_fake": gen_logits.detach().float().mean()}

        if phase == "Greg":  # path length regularization, on a shrunk batch
            n = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
            gen_img, gen_ws = self.run_G(gen_z[:n], gen_c[:n], regularizing=True)
            pl_noise = torch.randn_like(gen_img) / math.sqrt(gen_img.shape[2] * gen_img.shape[3])
            with no_weight_gradients():  # only d/dws is needed here; the weights get theirs in the backward below
                (pl_grads,) = torch.autograd.grad(outputs=[(gen_img * pl_noise).sum()], inputs=[gen_ws],
                                                  create_graph=True, only_inputs=True)
            pl_penalty, pl_mean = path_length_penalty(pl_grads, self.pl_mean, decay=self.pl_decay, impl=impl)
            self.pl_mean.copy_(pl_mean)  # train_step puts the old value back if this phase is skipped
            # NVIDIA's `gen_img[:, 0, 0, 0] * 0`: a zero gradient for the parameters the penalty does not reach
            # (the toRGB biases), so that Adam counts this step for them too, as for every other parameter
            # (a None gradient would skip them; multi-process averaging would turn it into zeros).
            loss = (gen_img[:, 0, 0, 0] * 0 + pl_penalty * self.pl_weight).mean()
            self.backward(loss * gain)
            return loss, {"pl_penalty": pl_penalty.detach().mean(), "pl_mean": pl_mean.detach().clone()}

        if phase == "Dmain":  # minimize logits for generated images, maximize for reals
            gen_img, _ = self.run_G(gen_z, gen_c)  # G is frozen in this phase: no graph reaches it
            gen_logits = self.run_D(gen_img, gen_c)
            loss_gen = gan_loss(gen_logits, "fake", impl=impl)
            self.backward(loss_gen * gain)  # as NVIDIA, two backwards: the fake graph is freed first
            real_logits = self.run_D(real_img.detach(), real_c)
            loss_real = gan_loss(real_logits, "real", impl=impl)
            self.backward(loss_real * gain)
            loss = loss_gen + loss_real
            return loss, {"loss_D": loss.detach(), "scores_real": real_logits.detach().float().mean()}

        if phase == "Dreg":  # R1 regularization
            real = real_img.detach().requires_grad_(True)
            real_logits = self.run_D(real, real_c, regularizing=True)
            with no_weight_gradients():
                (r1_grads,) = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real], create_graph=True,
                                                  only_inputs=True)
            penalty = r1_penalty(r1_grads, impl=impl)
            # NVIDIA's `real_logits * 0`: a zero gradient for D's output bias, which R1 does not reach (see Greg)
            loss = (real_logits.reshape(-1) * 0 + penalty * (self.r1_gamma / 2)).mean()
            self.backward(loss * gain)
            return loss, {"r1_penalty": penalty.detach().mean()}
        raise ValueError(f"unknown phase {phase!r}")

    def phases(self):
        """(phase, optimizer name, network, interval, runs) in the training loop's order; a regularization phase
        whose weight is 0 does nothing (NVIDIA's still steps Adam with no gradients, a no-op)."""
        return (("Gmain", "G", self.G, 1, True),
                ("Greg", "G", self.G, self.g_reg_interval, self.pl_weight != 0),
                ("Dmain", "D", self.D, 1, True),
                ("Dreg", "D", self.D, self.d_reg_interval, self.r1_gamma != 0))

    def train_step(self, batch, step):
        real_img, labels = batch[0], batch[1]
        n = real_img.shape[0]
        device = real_img.device
        real_c = self.labels_to_c(labels) if self.c_dim > 0 else real_img.new_zeros([n, 0])
        phases = self.phases()
        # As training_loop.py, every phase gets its own latents and labels, drawn for all phases whether they run
        # or not.
        all_gen_z = torch.randn([len(phases), n, self.hp["z_dim"]], device=device)
        all_gen_c = self._phase_labels(len(phases), real_c)
        out = {}
        for (phase, opt_name, net, interval, runs), gen_z, gen_c in zip(phases, all_gen_z, all_gen_c):
            if step % interval != 0 or not runs:
                continue
            self.optimizers[opt_name].zero_grad(set_to_none=True)
            set_requires_grad(net, True)
            pl_mean_before = self.pl_mean.clone()
            loss, stats = self.accumulate_gradients(phase, real_img, real_c, gen_z, gen_c, gain=interval)
            # step_optimizer before freezing again: multi-process averaging reads requires_grad.
            if not self.step_optimizer(opt_name, loss, nan_to_num=True):
                self.nonfinite[-1] = phase  # name the phase, not just its optimizer
                # A skipped phase leaves no trace: an inf/nan pl_mean would make every later Greg non-finite.
                self.pl_mean.copy_(pl_mean_before)
            set_requires_grad(net, False)
            out.update(stats)

        beta = ema_beta(self.ctx.batch_size, self.hp["ema"], self.hp["ramp"], cur_nimg=step * self.ctx.batch_size)
        ema_update(self.G_ema, self.G, beta)
        ordered = {k: out[k] for k in self.loss_names if k in out}
        ordered.update({k: v for k, v in out.items() if k not in ordered})
        return ordered

    def _phase_labels(self, phases, real_c):
        """Each phase's gen_c [phases, N, c_dim]. NVIDIA's training_loop.py takes the labels of random dataset
        items: classes drawn with the dataset's frequencies (label_counts). Without them (a DataInfo built by hand),
        the real batch's labels shuffled, a sample of the same distribution."""
        n = real_c.shape[0]
        if self.c_dim == 0:
            return real_c.expand(phases, -1, -1)
        if self.label_weights is not None:
            weights = self.label_weights.to(real_c.device, torch.float32)
            labels = torch.multinomial(weights, phases * n, replacement=True)
            return self.labels_to_c(labels).view(phases, n, self.c_dim)
        return torch.stack([real_c[torch.randperm(n, device=real_c.device)] for _ in range(phases)])

    # ---- G_ema outputs ------------------------------------------------------------------------------------
    def _grid_c(self, n, per_row):
        """Conditioning for grids: one class per row (empty when unconditional)."""
        if self.c_dim == 0:
            return torch.zeros([n, 0], device=self.ctx.device)
        return self.labels_to_c((torch.arange(n, device=self.ctx.device) // per_row) % self.c_dim)

    @torch.no_grad()
    def synthesize(self, ws, noise_mode="const"):
        return self.G_ema.synthesis(ws, noise_mode=noise_mode).float()

    @torch.no_grad()
    def snapshot_grid(self):
        per_row = int(math.isqrt(self.grid_size))
        c = self._grid_c(self.grid_size, per_row)
        ws = self.G_ema.mapping(self.grid_z, c)
        grids = {"fakes": (self.synthesize(ws), per_row)}
        # Style mixing as NVIDIA's style_mixing.py: image (i, j) has row seed i's ws with the coarse half of the
        # layers taken from column seed j. The top row shows the column seeds, the left column the row seeds.
        k = 4
        rows, cols = ws[:k], ws[k:2 * k]
        cutoff = max(ws.shape[1] // 2, 1)
        mixed = rows[:, None].repeat(1, k, 1, 1)              # [row, col, num_ws, w_dim]: fine styles of the row
        mixed[:, :, :cutoff] = cols[None, :, :cutoff]         # coarse styles of the column
        images = self.synthesize(torch.cat([cols, rows, mixed.flatten(0, 1)]))
        blank = torch.full_like(images[:1], -1.0)
        col_imgs, row_imgs, mix_imgs = images[:k], images[k:2 * k], images[2 * k:].unflatten(0, (k, k))
        layout = [blank, col_imgs]
        for i in range(k):
            layout += [row_imgs[i:i + 1], mix_imgs[i]]
        grids["style_mixing"] = (torch.cat(layout), k + 1)
        return grids

    @torch.no_grad()
    def sample(self, n, generator, truncation=1.0, noise_mode="const"):
        """G_ema's images of latents drawn from `generator`; noise_mode 'const' as NVIDIA's generate.py; classes
        uniform when conditional."""
        return self._generate(n, generator, truncation, noise_mode, label_weights=None)

    @torch.no_grad()
    def metric_samples(self, n, generator):
        # NVIDIA's metric_utils runs G_ema(z, c) with its default noise_mode='random' (drawn from the global RNG,
        # which the trainer puts back after a snapshot's metrics) and c the label of a random dataset item: classes
        # as frequent as in the data.
        return self._generate(n, generator, 1.0, "random", label_weights=self.label_weights)

    def _generate(self, n, generator, truncation, noise_mode, label_weights):
        z = torch.randn(n, self.hp["z_dim"], generator=generator, device=generator.device).to(self.ctx.device)
        if self.c_dim > 0:
            if label_weights is None:
                labels = torch.randint(self.c_dim, (n,), generator=generator, device=generator.device)
            else:
                labels = torch.multinomial(label_weights.to(generator.device), n, replacement=True,
                                           generator=generator)
            c = self.labels_to_c(labels.to(self.ctx.device))
        else:
            c = torch.zeros([n, 0], device=self.ctx.device)
        ws = self.G_ema.mapping(z, c, truncation_psi=truncation)
        return self.synthesize(ws, noise_mode=noise_mode)

    @torch.no_grad()
    def interpolate(self, seeds, steps, truncation=1.0):
        """Linear interpolation in w-space (the per-layer ws of each seed, truncated), synthesized by G_ema."""
        z = latents_for_seeds(seeds, self.hp["z_dim"], self.ctx.device)
        c = self._grid_c(len(seeds), len(seeds))  # class 0 when conditional
        ws = self.G_ema.mapping(z, c, truncation_psi=truncation)
        path = interpolate_latents(ws.flatten(1), steps, spherical=False)
        return self.synthesize(path.reshape(-1, *ws.shape[1:]))

    # ---- resume -------------------------------------------------------------------------------------------
    def extra_state(self):
        return {"pl_mean": self.pl_mean.detach().cpu().clone()}

    def load_extra_state(self, state):
        if "pl_mean" in state:
            self.pl_mean.copy_(torch.as_tensor(state["pl_mean"]).reshape([]))


__all__ = ["CONFIGS", "StyleGAN2Recipe", "default_batch_for", "ema_beta", "lazy_regularization", "resolve_config",
           "resolve_hyperparameters"]
