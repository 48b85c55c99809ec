"""pix2pix (Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks", CVPR 2017), as
junyanz/pytorch-CycleGAN-and-pix2pix trains it (`models/pix2pix_model.py`, `models/networks.py`):

    G: U-Net (`unet_256` at 256: num_downs = log2(resolution)), BatchNorm, Dropout(0.5) as the noise source
    D: 70x70 PatchGAN on concat(A, B) (input_nc + output_nc channels), BatchNorm
    D loss: 0.5 * (GAN(D(A, G(A)), fake) + GAN(D(A, B), real))           (backward_D)
    G loss: GAN(D(A, G(A)), real) + lambda_L1 * |G(A) - B|_1, lambda_L1 = 100   (backward_G)
    Adam lr 2e-4, betas (0.5, 0.999); N(0, 0.02) init; one D step then one G step on the same G(A).

--gan-mode vanilla is the reference's BCEWithLogitsLoss (the fused logistic `gan_loss`), lsgan its MSELoss.
The default batch is 1, as in the paper (BatchNorm over one image is then instance normalization).

Snapshots run G in eval mode (BatchNorm running statistics, no dropout). The reference's test.py keeps train mode
(batch statistics, dropout as noise), but that would consume the training RNG and move the running statistics,
so taking a snapshot would change the run; eval mode keeps snapshots side-effect free and deterministic.

The reference's linear learning-rate decay is shared with CycleGAN here (`linear_decay_factor`): the trainer
counts steps, so it is expressed in steps (see that function), and it is off for pix2pix unless --n-steps-decay
(alias --decay-steps) is given.
"""
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from fusegan.kernels.gan_loss import gan_loss
from fusegan.models.pix2pix import NLayerDiscriminator, UnetGenerator

from .base import Recipe, eval_mode, set_requires_grad

# the reference's --gan_mode -> the fused gan_loss kind (vanilla: BCE with logits, lsgan: MSE against 1/0)
GAN_MODES = {"vanilla": "logistic", "lsgan": "lsgan"}


# ---- shared with the CycleGAN recipe ---------------------------------------------------------------------------
def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """The reference's init_weights(init_type='normal', init_gain=0.02), for `net.apply`: conv and linear
    weights N(0, gain) with zero biases, BatchNorm scales N(1, gain) with zero shifts."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, gain)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, gain)
        nn.init.zeros_(module.bias)


def linear_decay_factor(step: int, n_const: int, n_decay: int) -> float:
    """Learning-rate multiplier of the step with 0-based index `step`: the reference's `lambda_rule`
    (`1 - max(0, epoch + epoch_count - n_epochs) / (n_epochs_decay + 1)`, epoch_count = 1) with epochs read as
    steps. So the first `n_const` steps run at the full rate, decay step j (1..n_decay) at 1 - j/(n_decay+1),
    and it reaches 0 one step after the last; later steps stay at 0. `n_decay = 0` means no decay at all.

    Correspondence with the reference: it steps its scheduler once per epoch, so n_epochs / n_epochs_decay
    epochs are n_steps_const / n_steps_decay = epochs * ceil(dataset_size / batch) steps here; this decays
    every step instead of in per-epoch stairs, along the same line."""
    if n_decay <= 0:
        return 1.0
    return max(0.0, 1.0 - max(0, step + 1 - n_const) / (n_decay + 1))


def add_width_arguments(group) -> None:
    """The reference's --ngf / --ndf, the first options of both recipes."""
    group.add_argument("--ngf", type=int, default=64, help="generator width (default: 64)")
    group.add_argument("--ndf", type=int, default=64, help="discriminator width (default: 64)")


def add_optimizer_arguments(group, n_const: int, n_decay: int) -> None:
    """Adam, the N(0, std) init and the linear decay, as the reference sets them: the last options of both
    recipes (only the decay's default length differs)."""
    group.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate of G and D (default: 2e-4)")
    group.add_argument("--beta1", type=float, default=0.5, help="Adam beta1 (default: 0.5)")
    group.add_argument("--init-gain", type=float, default=0.02, help="std of the N(0, std) init (default: 0.02)")
    add_lr_schedule_arguments(group, n_const, n_decay)


def add_lr_schedule_arguments(group, n_const: int, n_decay: int) -> None:
    group.add_argument("--n-steps-const", type=int, default=n_const,
                       help=f"steps at the initial learning rate before the linear decay (default: {n_const})")
    group.add_argument("--n-steps-decay", "--decay-steps", dest="n_steps_decay", type=int, default=n_decay,
                       help="steps over which the learning rate decays linearly to 0 after --n-steps-const; "
                            f"0: constant (default: {n_decay})")


def make_lr_schedulers(optimizers: dict, n_const: int, n_decay: int) -> dict:
    """One LambdaLR per optimizer on `linear_decay_factor`, stepped once per train_step (whether or not the
    optimizer step was skipped: the schedule follows the step count, as the reference's follows epochs)."""
    if n_const < 0 or n_decay < 0:
        raise ValueError(f"--n-steps-const and --n-steps-decay must be >= 0, got {n_const} and {n_decay}")
    return {name: torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: linear_decay_factor(step, n_const, n_decay))
            for name, opt in optimizers.items()}


def step_lr_schedulers(schedulers: dict) -> None:
    """Advances every schedule by one step. torch warns when a scheduler steps before its optimizer ever did;
    here that is expected (the first optimizer steps were skipped as non-finite), so that warning is muted."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        for scheduler in schedulers.values():
            scheduler.step()


def match_channels(*images):
    """Float copies with a common channel count (one-channel images repeated), so that inputs and outputs of
    different domains can share one grid."""
    channels = max(x.shape[1] for x in images)
    return [(x.expand(-1, channels, -1, -1) if x.shape[1] == 1 else x).float().contiguous() for x in images]


def side_by_side(*columns):
    """[N, C, H, W] tensors -> [N * len(columns), C, H, W], row i holding columns[0][i], columns[1][i], ..."""
    return torch.stack(match_channels(*columns), 1).flatten(0, 1)


# ---- the recipe ------------------------------------------------------------------------------------------------
class Pix2PixRecipe(Recipe):
    name = "pix2pix"
    data_kind = "paired"
    default_batch = 1           # the paper's batch size
    default_resolution = 256
    default_data = ""           # no built-in paired dataset: the trainer asks for --data
    loss_names = ("G_GAN", "G_L1", "D_real", "D_fake")

    @classmethod
    def add_arguments(cls, parser):
        group = parser.add_argument_group("pix2pix")
        add_width_arguments(group)
        group.add_argument("--num-downs", type=int, default=None,
                           help="U-Net levels (default: log2(resolution), 8 = unet_256 at 256)")
        group.add_argument("--n-layers-d", type=int, default=3, help="PatchGAN layers; 3 = 70x70 (default: 3)")
        group.add_argument("--norm", choices=("batch", "instance"), default="batch",
                           help="normalization of G and D (default: batch)")
        group.add_argument("--no-dropout", action="store_true", help="no Dropout(0.5) in the U-Net")
        group.add_argument("--gan-mode", choices=tuple(GAN_MODES), default="vanilla",
                           help="vanilla = BCE with logits, lsgan = least squares (default: vanilla)")
        group.add_argument("--lambda-l1", type=float, default=100.0, help="weight of the L1 term (default: 100)")
        add_optimizer_arguments(group, n_const=0, n_decay=0)

    def __init__(self, ctx, options, data):
        super().__init__(ctx, options, data)
        o = options
        num_downs = o.num_downs
        if num_downs is None:
            num_downs = int(math.log2(data.resolution)) if data.resolution > 0 else 0
            if 2**num_downs != data.resolution:
                raise ValueError(f"pix2pix's U-Net needs a power-of-two resolution (or --num-downs), "
                                 f"got {data.resolution}")
        if num_downs < 5 or data.resolution % 2**num_downs:
            raise ValueError(f"the U-Net with num_downs={num_downs} needs a resolution divisible by "
                             f"2**num_downs and num_downs >= 5 (resolution >= 32), got {data.resolution}")
        in_nc, out_nc = data.channels, data.channels_b or data.channels
        G = UnetGenerator(in_nc, out_nc, num_downs, ngf=o.ngf, norm=o.norm, use_dropout=not o.no_dropout,
                          impl=ctx.impl)
        D = NLayerDiscriminator(in_nc + out_nc, ndf=o.ndf, n_layers=o.n_layers_d, norm=o.norm, impl=ctx.impl)
        for net in (G, D):
            net.apply(lambda m: init_weights(m, o.init_gain))
        self.G, self.D = self.prepare(G), self.prepare(D)
        self.nets = {"G": self.G, "D": self.D}
        betas = (o.beta1, 0.999)
        self.optimizers = {"D": torch.optim.Adam(self.D.parameters(), lr=o.lr, betas=betas),
                           "G": torch.optim.Adam(self.G.parameters(), lr=o.lr, betas=betas)}
        self.schedulers = make_lr_schedulers(self.optimizers, o.n_steps_const, o.n_steps_decay)
        self.G_fwd, self.D_fwd = self.maybe_compile(self.G), self.maybe_compile(self.D)
        self.gan_kind = GAN_MODES[o.gan_mode]

    def gan(self, logits, target):
        return gan_loss(logits.float(), target, kind=self.gan_kind, impl=self.ctx.impl)

    def train_step(self, batch, step):
        real_A, real_B = batch[0], batch[1]
        autocast = self.ctx.precision.autocast
        with autocast():
            fake_B = self.G_fwd(real_A)

        # D: fakes (detached) and reals as two batches, each with its own BatchNorm statistics, as backward_D.
        set_requires_grad(self.D, True)
        with autocast():
            pred_fake = self.D_fwd(torch.cat([real_A, fake_B.detach()], 1))
            pred_real = self.D_fwd(torch.cat([real_A, real_B], 1))
        loss_D_fake = self.gan(pred_fake, "fake")
        loss_D_real = self.gan(pred_real, "real")
        loss_D = 0.5 * (loss_D_fake + loss_D_real)
        self.backward(loss_D)
        self.step_optimizer("D", loss_D)

        # G: fool the updated D on the same G(A), and stay close to B in L1.
        set_requires_grad(self.D, False)
        with autocast():
            pred_gen = self.D_fwd(torch.cat([real_A, fake_B], 1))
        loss_G_GAN = self.gan(pred_gen, "gen")
        loss_G_L1 = F.l1_loss(fake_B.float(), real_B.float()) * self.options.lambda_l1
        loss_G = loss_G_GAN + loss_G_L1
        self.backward(loss_G)
        self.step_optimizer("G", loss_G)
        set_requires_grad(self.D, True)

        step_lr_schedulers(self.schedulers)
        return {"G_GAN": loss_G_GAN.detach(), "G_L1": loss_G_L1.detach(),
                "D_real": loss_D_real.detach(), "D_fake": loss_D_fake.detach()}

    @torch.no_grad()
    def translate(self, A):
        """G(A) in eval mode (see the module docstring for why not train mode)."""
        with eval_mode(self.G), self.ctx.precision.autocast():
            return self.G(A).float()

    def snapshot_grid(self):
        if self.reference_batch is None:
            raise RuntimeError("snapshot_grid needs set_reference_batch first")
        A, B = self.reference_batch[0], self.reference_batch[1]
        return {"translation": (side_by_side(A, self.translate(A), B), 3)}  # rows: input | output | target

    def extra_state(self):
        return {"schedulers": {name: s.state_dict() for name, s in self.schedulers.items()}}

    def load_extra_state(self, state):
        for name, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][name])
