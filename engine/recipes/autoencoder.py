"""Autoencoder recipes: 'ae' (ConvAutoencoder), 'dae' (DenoisingAutoencoder) and 'vae' (ConvVAE, or the PyTorch
examples' MLP VAE with --arch mlp), on fusegan.models.autoencoder.

The data arrive in [-1, 1]; the models read and reconstruct pixels in [0, 1] (the Bernoulli/BCE targets) and
return logits, so every recipe trains on x01 = (x + 1) / 2 and shows sigmoid(logits) * 2 - 1. The loss is the
fused `vae_loss` with BCE-with-logits, summed over pixels and averaged over the batch, as the PyTorch examples'
`vae/main.py`: recon + beta * KL(q(z|x) || N(0, I)) for the VAE, and the same reduction with no latents (an
empty KL sum) for the deterministic autoencoders. Adam with lr 1e-3, as that example. Losses are computed in
fp32 outside autocast.

Grids: 'reconstructions' (inputs beside reconstructions of the reference batch; for the DAE also the corrupted
input, with a fixed noise draw), and for the VAE 'samples' (decoded fixed prior latents) and 'manifold' (decoded
points on the line between the posterior means of two reference images, the reals at both ends). The trainer
saves `interpolate()` (between prior latents of seeds) as 'interpolation', hence the other name.
"""
import contextlib

import torch

from fusegan.kernels.vae_loss import vae_loss
from fusegan.models.autoencoder import (MLPVAE, NOISES, NORMS, RESOLUTIONS, ConvAutoencoder, ConvVAE,
                                        DenoisingAutoencoder)

from .base import Recipe, eval_mode
from .latent import interpolate_latents, latents_for_seeds

SAMPLE_GRID = 64            # fixed prior latents in the VAE's 'samples' grid (8 x 8)
MANIFOLD_POINTS = 8         # decoded points per 'manifold' strip, between the two reals
MANIFOLD_STRIPS = 4         # strips from reference pairs (0, 1), (2, 3), ...
MLP_INPUT = 784             # the examples' MLP VAE reads 28x28 one-channel images
GROUPS_PER_ROW = 4          # reference images per row of the reconstruction grid


def to_unit(x):
    """[-1, 1] images -> [0, 1] (the BCE targets)."""
    return (x.float() + 1) * 0.5


def logits_to_images(logits):
    return torch.sigmoid(logits.float()) * 2 - 1


class _AutoencoderRecipe(Recipe):
    """What the three share: options, one network `self.model` with one Adam optimizer, the reconstruction
    grid. Subclasses build the model and say how one batch turns into (logits, mu, logvar)."""

    data_kind = "image"
    default_batch = 128
    default_resolution = 32
    default_data = "digits"
    loss_names = ("loss",)
    net_name = ""

    @classmethod
    def add_arguments(cls, parser):
        group = parser.add_argument_group(cls.name)
        group.add_argument("--latent-dim", type=int, default=None,
                           help="size of the code (default: 32; 20 for the VAE's --arch mlp)")
        group.add_argument("--base", type=int, default=32, help="width of the conv encoder/decoder (default: 32)")
        group.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
        group.add_argument("--norm", choices=NORMS, default="batch",
                           help="normalization in the conv encoder/decoder (default: batch)")
        cls.add_model_arguments(group)

    @classmethod
    def add_model_arguments(cls, group):
        pass

    @staticmethod
    def default_latent_dim(options):
        return 32

    def __init__(self, ctx, options, data):
        super().__init__(ctx, options, data)
        self.latent_dim = options.latent_dim or self.default_latent_dim(options)
        self.model = self.prepare(self.build_model())
        self.nets = {self.net_name: self.model}
        self.optimizers = {self.net_name: torch.optim.Adam(self.model.parameters(), lr=options.lr)}
        self.model_fwd = self.maybe_compile(self.model)

    def check_conv_resolution(self):
        if self.data.resolution not in RESOLUTIONS:
            raise ValueError(f"the conv autoencoders train at resolution {' or '.join(map(str, RESOLUTIONS))}, "
                             f"got {self.data.resolution} (use --res)")

    def build_model(self):
        raise NotImplementedError

    def forward_train(self, x01):
        """(logits shaped like x01, mu, logvar) for the loss; mu/logvar [N, 0] when there is no posterior."""
        raise NotImplementedError

    def loss(self, logits, x01, mu, logvar):
        beta = getattr(self.options, "beta", 0.0)
        return vae_loss(logits.float(), x01, mu.float(), logvar.float(), "bce_logits", beta, "mean",
                        impl=self.ctx.impl)

    def train_step(self, batch, step):
        x01 = to_unit(batch[0])
        with self.ctx.precision.autocast():
            logits, mu, logvar = self.forward_train(x01)
        loss = self.loss(logits, x01, mu, logvar)
        self.backward(loss)
        self.step_optimizer(self.net_name, loss)
        return self.losses(loss.detach(), mu.detach().float(), logvar.detach().float())

    def losses(self, loss, mu, logvar):
        return {"loss": loss}

    # ---- evaluation -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def eval_mode(self):
        """The model in eval mode (BatchNorm running statistics, no sampling, no corruption) inside."""
        with eval_mode(self.model):
            yield

    def reconstruct(self, x01):
        """Logits of the reconstruction of x01 (eval mode; the VAE uses the posterior mean)."""
        return self.model(x01)

    def grid_inputs(self, x01):
        """The columns of the reconstruction grid, in [-1, 1]."""
        return [x01 * 2 - 1, logits_to_images(self.reconstruct(x01))]

    @torch.no_grad()
    def snapshot_grid(self):
        if self.reference_batch is None:
            raise RuntimeError("snapshot_grid needs set_reference_batch first")
        x01 = to_unit(self.reference_batch[0])
        with self.eval_mode(), self.ctx.precision.autocast():
            columns = [c.float() for c in self.grid_inputs(x01)]
        per_row = len(columns) * min(GROUPS_PER_ROW, x01.shape[0])
        return {"reconstructions": (torch.stack(columns, 1).flatten(0, 1), per_row)}


class AERecipe(_AutoencoderRecipe):
    name = "ae"
    net_name = "AE"

    def build_model(self):
        self.check_conv_resolution()
        return ConvAutoencoder(self.data.channels, self.data.resolution, self.latent_dim, self.options.base,
                               impl=self.ctx.impl, norm=self.options.norm)

    def forward_train(self, x01):
        logits = self.model_fwd(x01)
        no_latents = logits.new_zeros((x01.shape[0], 0))  # the reduction's KL term is then an empty sum
        return logits, no_latents, no_latents


class DAERecipe(AERecipe):
    """Reconstructs the clean x01 from a corrupted copy (the model corrupts in training mode, from the global
    RNG)."""
    name = "dae"
    net_name = "DAE"

    @classmethod
    def add_model_arguments(cls, group):
        group.add_argument("--noise", choices=NOISES, default="masking",
                           help="corruption: masking (pixels to 0), gaussian (additive) or salt_pepper "
                                "(default: masking)")
        group.add_argument("--noise-level", type=float, default=0.25,
                           help="masking/salt_pepper probability or gaussian std (default: 0.25)")

    def build_model(self):
        self.check_conv_resolution()
        return DenoisingAutoencoder(self.data.channels, self.data.resolution, self.latent_dim, self.options.base,
                                    noise=self.options.noise, noise_level=self.options.noise_level,
                                    impl=self.ctx.impl, norm=self.options.norm)

    def grid_inputs(self, x01):
        # a fixed noise draw (never the training RNG), so successive grids are comparable
        generator = torch.Generator(x01.device).manual_seed(self.ctx.seed)
        corrupted = self.model.corrupt(x01, generator=generator)
        return [x01 * 2 - 1, corrupted.clamp(0, 1) * 2 - 1, logits_to_images(self.model(corrupted))]


class VAERecipe(_AutoencoderRecipe):
    name = "vae"
    net_name = "VAE"
    loss_names = ("loss", "recon", "kl")

    @classmethod
    def add_model_arguments(cls, group):
        group.add_argument("--beta", type=float, default=1.0, help="KL weight (beta-VAE; default: 1)")
        group.add_argument("--arch", choices=("conv", "mlp"), default="conv",
                           help="conv: ConvVAE; mlp: the PyTorch examples' 784-400-20 VAE, for 28x28 "
                                "one-channel data (default: conv)")
        group.add_argument("--hidden", type=int, default=400, help="hidden width of the MLP VAE (default: 400)")

    @staticmethod
    def default_latent_dim(options):
        return 20 if options.arch == "mlp" else 32  # 20: the example's latent size

    def __init__(self, ctx, options, data):
        super().__init__(ctx, options, data)
        self.fixed_z = latents_for_seeds(range(SAMPLE_GRID), self.latent_dim, ctx.device, base_seed=ctx.seed)

    def build_model(self):
        d = self.data
        if self.options.arch == "mlp":
            if d.channels * d.resolution**2 != MLP_INPUT:
                raise ValueError(f"--arch mlp is the 784-input MLP VAE: it needs 28x28 one-channel data "
                                 f"(--res 28), got {d.channels}x{d.resolution}x{d.resolution}")
            return MLPVAE(MLP_INPUT, self.options.hidden, self.latent_dim, impl=self.ctx.impl)
        self.check_conv_resolution()
        return ConvVAE(d.channels, d.resolution, self.latent_dim, self.options.base, impl=self.ctx.impl,
                       norm=self.options.norm)

    def as_images(self, logits):
        """Decoder logits (flat for the MLP) -> [N, C, R, R] images in [-1, 1]."""
        d = self.data
        return logits_to_images(logits.reshape(-1, d.channels, d.resolution, d.resolution))

    def forward_train(self, x01):
        logits, mu, logvar = self.model_fwd(x01)  # training mode: z = mu + eps * sigma, eps from the global RNG
        return logits.reshape(x01.shape), mu, logvar

    def losses(self, loss, mu, logvar):
        kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum() / mu.shape[0]
        return {"loss": loss, "recon": loss - self.options.beta * kl, "kl": kl}

    def reconstruct(self, x01):
        return self.model(x01, sample=False)[0].reshape(x01.shape)

    @torch.no_grad()
    def decode(self, z):
        """Images in [-1, 1] decoded from latents, in eval mode."""
        with self.eval_mode(), self.ctx.precision.autocast():
            return self.as_images(self.model.decode(z.to(self.ctx.device)))

    @torch.no_grad()
    def manifold(self, x01):
        """Strips [x_a, decode((1 - t) mu_a + t mu_b) for MANIFOLD_POINTS t in [0, 1], x_b] for pairs of inputs."""
        pairs = min(MANIFOLD_STRIPS, x01.shape[0] // 2)
        if pairs == 0:
            return None
        a, b = x01[0:2 * pairs:2], x01[1:2 * pairs:2]
        with self.eval_mode(), self.ctx.precision.autocast():
            mu_a, mu_b = self.model.encode(a)[0].float(), self.model.encode(b)[0].float()
        t = torch.linspace(0, 1, MANIFOLD_POINTS, device=mu_a.device)[None, :, None]
        path = torch.lerp(mu_a[:, None], mu_b[:, None], t).flatten(0, 1)     # [pairs * points, latent]
        decoded = self.decode(path).unflatten(0, (pairs, MANIFOLD_POINTS))
        strips = torch.cat([a[:, None] * 2 - 1, decoded, b[:, None] * 2 - 1], 1)
        return strips.flatten(0, 1), MANIFOLD_POINTS + 2

    def snapshot_grid(self):
        grids = super().snapshot_grid()
        grids["samples"] = (self.decode(self.fixed_z), 8)
        strips = self.manifold(to_unit(self.reference_batch[0]))
        if strips is not None:
            grids["manifold"] = strips
        return grids

    def sample(self, n, generator, truncation=1.0):
        z = torch.randn(n, self.latent_dim, generator=generator, device=generator.device)
        return self.decode(z * truncation)

    def interpolate(self, seeds, steps, truncation=1.0):
        z = latents_for_seeds(seeds, self.latent_dim, self.ctx.device)
        return self.decode(interpolate_latents(z, steps, spherical=True) * truncation)


__all__ = ["AERecipe", "DAERecipe", "VAERecipe"]
