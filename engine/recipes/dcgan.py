"""DCGAN, as the PyTorch example trains it: BCE with logits (the fused logistic `gan_loss`), Adam lr 2e-4 with
betas (0.5, 0.999), N(0, 0.02) initialization, one D step (reals, then detached fakes) and one G step per batch."""
import torch

from fusegan.kernels.gan_loss import KINDS, gan_loss
from fusegan.models.dcgan import RESOLUTIONS, Discriminator, Generator, weights_init

from .base import Recipe, eval_mode, set_requires_grad
from .latent import interpolate_latents, latents_for_seeds

GRID_SIZE = 64  # fixed latents shown at every snapshot (8 x 8)


class DCGANRecipe(Recipe):
    name = "dcgan"
    default_batch = 64
    default_resolution = 32
    default_data = "digits"
    default_steps = 1500  # `fusegan train` with no options: recognisable digits in a few CPU minutes
    loss_names = ("loss_D", "loss_G", "D_real", "D_fake")

    @classmethod
    def add_arguments(cls, parser):
        group = parser.add_argument_group("dcgan")
        group.add_argument("--nz", type=int, default=100, help="latent size (default: 100)")
        group.add_argument("--ngf", type=int, default=None,
                           help="generator width (default: 64 at 64x64 as the PyTorch example, 32 at 32x32)")
        group.add_argument("--ndf", type=int, default=None,
                           help="discriminator width (default: 64 at 64x64 as the PyTorch example, 32 at 32x32)")
        group.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate of G and D (default: 2e-4)")
        group.add_argument("--beta1", type=float, default=0.5, help="Adam beta1 (default: 0.5)")
        group.add_argument("--gan-loss", choices=KINDS, default="logistic",
                           help="GAN loss; logistic = BCE with logits, as the example (default: logistic)")

    def __init__(self, ctx, options, data):
        super().__init__(ctx, options, data)
        if data.resolution not in RESOLUTIONS:
            raise ValueError(f"dcgan trains at resolution {' or '.join(map(str, RESOLUTIONS))}, "
                             f"got {data.resolution} (use --res)")
        o = options
        default_width = 64 if data.resolution == 64 else 32  # 32x32 (small datasets): one stage, half the width
        o.ngf, o.ndf = o.ngf or default_width, o.ndf or default_width
        G = Generator(nz=o.nz, ngf=o.ngf, nc=data.channels, resolution=data.resolution, impl=ctx.impl)
        D = Discriminator(ndf=o.ndf, nc=data.channels, resolution=data.resolution, impl=ctx.impl)
        G.apply(weights_init)
        D.apply(weights_init)
        self.G, self.D = self.prepare(G), self.prepare(D)
        self.nets = {"G": self.G, "D": self.D}
        betas = (o.beta1, 0.999)
        self.optimizers = {"D": torch.optim.Adam(self.D.parameters(), lr=o.lr, betas=betas),
                           "G": torch.optim.Adam(self.G.parameters(), lr=o.lr, betas=betas)}
        self.G_fwd, self.D_fwd = self.maybe_compile(self.G), self.maybe_compile(self.D)
        self.fixed_z = latents_for_seeds(range(GRID_SIZE), o.nz, ctx.device, base_seed=ctx.seed)

    def loss(self, logits, target):
        # In fp32 whatever the autocast dtype (as autocast runs BCEWithLogits, and as pix2pix/CycleGAN do here):
        # gan_loss returns the logits' dtype, and a bf16/fp16 loss would round what is summed, checked and logged.
        return gan_loss(logits.float(), target, kind=self.options.gan_loss, impl=self.ctx.impl)

    def train_step(self, batch, step):
        real = batch[0]
        z = torch.randn(real.shape[0], self.options.nz, device=real.device)
        autocast = self.ctx.precision.autocast

        # D: maximize log D(x) + log(1 - D(G(z))), reals and fakes as two batches (their own BatchNorm stats).
        set_requires_grad(self.D, True)
        with autocast():
            fake = self.G_fwd(z)
            logits_real = self.D_fwd(real)
            logits_fake = self.D_fwd(fake.detach())
        loss_D = self.loss(logits_real, "real") + self.loss(logits_fake, "fake")
        self.backward(loss_D)
        self.step_optimizer("D", loss_D)

        # G: the non-saturating loss, maximize log D(G(z)).
        set_requires_grad(self.D, False)
        with autocast():
            logits_gen = self.D_fwd(fake)
        loss_G = self.loss(logits_gen, "gen")
        self.backward(loss_G)
        self.step_optimizer("G", loss_G)
        set_requires_grad(self.D, True)
        return {"loss_D": loss_D.detach(), "loss_G": loss_G.detach(),
                "D_real": torch.sigmoid(logits_real.detach().float()).mean(),
                "D_fake": torch.sigmoid(logits_fake.detach().float()).mean()}

    @torch.no_grad()
    def generate(self, z):
        """G in eval mode (BatchNorm running statistics), so a sample does not depend on its batch."""
        with eval_mode(self.G), self.ctx.precision.autocast():
            return self.G(z).float()

    def snapshot_grid(self):
        return {"fakes": (self.generate(self.fixed_z), 8)}

    def sample(self, n, generator, truncation=1.0):
        z = torch.randn(n, self.options.nz, generator=generator, device=generator.device).to(self.ctx.device)
        return self.generate(z * truncation)  # DCGAN has no mapping network: truncation scales z

    def interpolate(self, seeds, steps, truncation=1.0):
        z = latents_for_seeds(seeds, self.options.nz, self.ctx.device)
        return self.generate(interpolate_latents(z, steps, spherical=True) * truncation)
