"""Autoencoders on fusegan kernels: convolutional, denoising, variational (conv and MLP), and a PCA baseline.

All conv models share one layout at 32x32 and 64x64 (`base` channels, one stage fewer at 32x32):

    encoder  Conv2dNormAct(4, 2, 1) stages: in_ch -> base (LeakyReLU 0.2, no norm, as in DCGAN's
             discriminator), then base * 2**i with BatchNorm + LeakyReLU(0.2), down to a 4x4 map
    bottleneck  nn.Linear(4*4*C, latent_dim) (no activation: a linear code) and, back,
                nn.Linear(latent_dim, 4*4*C) + ReLU
    decoder  transposed Conv2dNormAct(4, 2, 1) stages with BatchNorm + ReLU back to `base` channels,
             then a transposed conv to in_ch with a bias and no activation: the decoder returns LOGITS
             (pair with BCE-with-logits, or `torch.sigmoid` for pixels in [0, 1]).

Each conv + norm + activation is one fused `Conv2dNormAct` (state_dict keys `<layer>.conv.weight`,
`<layer>.norm.running_mean`, ...); `impl` selects the Triton or the reference path for all of them and
for the VAE loss. `norm='none'` drops the BatchNorms (a model whose output for a sample does not depend on
the rest of its batch). Inputs are images in [0, 1] (the BCE targets).

`PCAAutoencoder` has the same encode/decode interface, fit in closed form with `torch.pca_lowrank`,
so the linear manifold can be compared with the learned ones (note it reconstructs pixels, not logits).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from fusegan.kernels.conv_norm_act import Conv2dNormAct
from fusegan.kernels.vae_loss import vae_loss

RESOLUTIONS = (32, 64)
NOISES = ("gaussian", "masking", "salt_pepper")
CORE = 4  # spatial size of the feature map at the bottleneck


def _stages(resolution):
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution}")
    return int(math.log2(resolution // CORE))  # stride-2 stages between the image and the 4x4 core


NORMS = ("batch", "none")


def _conv_encoder(in_ch, base, n, impl, norm="batch"):
    channels = [base * 2**i for i in range(n)]  # 32x32: base, 2base, 4base
    layers = [Conv2dNormAct(in_ch, channels[0], 4, 2, 1, act="lrelu", alpha=0.2, impl=impl)]
    for cin, cout in zip(channels[:-1], channels[1:]):
        layers.append(Conv2dNormAct(cin, cout, 4, 2, 1, norm=_norm(norm), act="lrelu", alpha=0.2, impl=impl))
    return nn.Sequential(*layers), channels[-1]


def _norm(norm):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return None if norm == "none" else norm


def _conv_decoder(out_ch, base, n, impl, norm="batch"):
    channels = [base * 2 ** (n - 1 - i) for i in range(n)]  # 32x32: 4base, 2base, base
    layers = [Conv2dNormAct(cin, cout, 4, 2, 1, transposed=True, norm=_norm(norm), act="relu", impl=impl)
              for cin, cout in zip(channels[:-1], channels[1:])]
    layers.append(Conv2dNormAct(channels[-1], out_ch, 4, 2, 1, transposed=True, bias=True, act="linear", impl=impl))
    return nn.Sequential(*layers)


class _ConvCodec(nn.Module):
    """Shared encoder trunk and decoder of the conv models (see the module docstring)."""

    def __init__(self, in_ch, resolution, latent_dim, base, impl, norm="batch"):
        super().__init__()
        if latent_dim < 1 or base < 1 or in_ch < 1:
            raise ValueError(f"in_ch, latent_dim and base must be >= 1, got {in_ch}, {latent_dim}, {base}")
        n = _stages(resolution)
        self.in_ch, self.resolution, self.latent_dim, self.base, self.impl = in_ch, resolution, latent_dim, base, impl
        self.encoder, self.core_ch = _conv_encoder(in_ch, base, n, impl, norm)
        self.fc_dec = nn.Linear(latent_dim, self.core_ch * CORE * CORE)
        self.decoder = _conv_decoder(in_ch, base, n, impl, norm)

    def features(self, x):
        """[N, in_ch, R, R] -> [N, core_ch * 16], the flattened 4x4 map (NCHW order for any input layout)."""
        if x.ndim != 4 or x.shape[1:] != (self.in_ch, self.resolution, self.resolution):
            raise ValueError(f"x must have shape [N, {self.in_ch}, {self.resolution}, {self.resolution}], "
                             f"got {tuple(x.shape)}")
        return self.encoder(x).flatten(1)

    def decode(self, z):
        """[N, latent_dim] -> logits [N, in_ch, R, R]."""
        h = F.relu(self.fc_dec(z)).view(z.shape[0], self.core_ch, CORE, CORE)
        return self.decoder(h)


class ConvAutoencoder(_ConvCodec):
    """Deterministic convolutional autoencoder: x -> z = encode(x) (linear code) -> logits = decode(z).

    Paper: Hinton & Salakhutdinov, "Reducing the Dimensionality of Data with Neural Networks", Science 2006
    (the autoencoder as a nonlinear generalization of PCA); the conv layout follows DCGAN (Radford et al.
    2016, PyTorch examples' `dcgan/main.py`: strided 4x4 convs, BatchNorm, LeakyReLU(0.2) / ReLU). Train
    with BCE-with-logits against x in [0, 1].
    """

    def __init__(self, in_ch=1, resolution=32, latent_dim=32, base=32, impl=None, norm="batch"):
        super().__init__(in_ch, resolution, latent_dim, base, impl, norm)
        self.fc_enc = nn.Linear(self.core_ch * CORE * CORE, latent_dim)

    def encode(self, x):
        return self.fc_enc(self.features(x))

    def forward(self, x):
        return self.decode(self.encode(x))

    def loss(self, x, reduction="mean"):
        """Per-sample BCE-with-logits reconstruction loss (summed over pixels, averaged over the batch)."""
        total = F.binary_cross_entropy_with_logits(self(x), x, reduction="sum")
        return total / x.shape[0] if reduction == "mean" else total


class DenoisingAutoencoder(ConvAutoencoder):
    """ConvAutoencoder trained to reconstruct the clean x from a corrupted copy of it.

    Paper: Vincent, Larochelle, Bengio & Manzagol, "Extracting and Composing Robust Features with
    Denoising Autoencoders", ICML 2008 (masking noise); the Gaussian and salt-and-pepper noise models are
    from Vincent et al., "Stacked Denoising Autoencoders", JMLR 2010. Network as in `ConvAutoencoder`.

    noise='gaussian':    x + noise_level * N(0, 1)            (isotropic additive noise)
    noise='masking':     each pixel set to 0 with probability noise_level
    noise='salt_pepper': each pixel, with probability noise_level, set to 0 or 1 (a fair coin)

    `forward` corrupts its input only in training mode (eval reconstructs x as given); `corrupt(x)`
    applies the noise explicitly, and `loss(x)` is the BCE of the reconstruction of corrupt(x) against x.
    """

    def __init__(self, in_ch=1, resolution=32, latent_dim=32, base=32, noise="masking", noise_level=0.25,
                 impl=None, norm="batch"):
        super().__init__(in_ch, resolution, latent_dim, base, impl, norm)
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
        if not (noise_level >= 0 and (noise == "gaussian" or noise_level <= 1)):
            raise ValueError(f"noise_level must be >= 0 (and <= 1 unless noise='gaussian'), got {noise_level}")
        self.noise, self.noise_level = noise, float(noise_level)

    def corrupt(self, x, generator=None):
        """A corrupted copy of x (never in place), whatever the module's mode."""
        p = self.noise_level
        if self.noise == "gaussian":
            return x + p * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        hit = torch.rand(x.shape, generator=generator, device=x.device) < p
        if self.noise == "masking":
            return x.masked_fill(hit, 0)
        salt = torch.rand(x.shape, generator=generator, device=x.device) < 0.5
        return torch.where(hit, salt.to(x.dtype), x)

    def forward(self, x):
        return super().forward(self.corrupt(x) if self.training else x)

    def loss(self, x, reduction="mean"):
        total = F.binary_cross_entropy_with_logits(super().forward(self.corrupt(x)), x, reduction="sum")
        return total / x.shape[0] if reduction == "mean" else total


def _promote(*tensors):
    """The tensors in their widest dtype. Under torch.autocast the decoder's bf16/fp16 outputs meet fp32
    data; the fused vae_loss wants one dtype, and the loss is then computed in fp32 (as autocast does
    for its own BCE)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return [t.to(dtype) for t in tensors]


def reparameterize(mu, logvar, sample=True):
    """z = mu + eps * exp(0.5 * logvar), eps ~ N(0, 1) (Kingma & Welling 2014, section 2.4); mu if not sample."""
    if not sample:
        return mu
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class _GaussianVAE:
    """What the two VAEs share, given `encode(x) -> (mu, logvar)`, `decode(z) -> logits`, `latent_dim`, `impl`
    and `_decoder_input` (the name of the layer that takes z, whose weight gives z's dtype and device)."""

    _decoder_input: str

    def forward(self, x, sample=None):
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, self.training if sample is None else sample)
        return self.decode(z), mu, logvar

    def loss(self, x, beta=1.0, reduction="mean", sample=None):
        """Negative ELBO: BCE-with-logits summed over pixels + beta * KL; 'mean' divides by the batch size."""
        logits, mu, logvar = self(x, sample)
        logits, x, mu, logvar = _promote(logits, x.reshape(logits.shape), mu, logvar)
        return vae_loss(logits, x, mu, logvar, "bce_logits", beta, reduction, impl=self.impl)

    @torch.no_grad()
    def sample(self, n, generator=None):
        """n images in [0, 1] (Bernoulli means) decoded from z ~ N(0, I)."""
        w = getattr(self, self._decoder_input).weight
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=w.dtype, device=w.device)
        return torch.sigmoid(self.decode(z))


class ConvVAE(_GaussianVAE, _ConvCodec):
    """Convolutional variational autoencoder with a Gaussian posterior and a Bernoulli (logit) decoder.

    Paper: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014. The loss is the negative ELBO
    of the PyTorch examples' `vae/main.py` (BCE summed over pixels + KL, per sample), with a beta weight
    (Higgins et al., "beta-VAE", ICLR 2017), computed by the fused `vae_loss`. Conv layout as in
    `ConvAutoencoder`, with two linear heads, `fc_mu` and `fc_logvar`.

    `encode(x) -> (mu, logvar)`; `forward(x, sample=None) -> (logits, mu, logvar)`: z is sampled in
    training and is the posterior mean mu in eval, unless `sample` says otherwise.
    """

    _decoder_input = "fc_dec"

    def __init__(self, in_ch=1, resolution=32, latent_dim=32, base=32, impl=None, norm="batch"):
        super().__init__(in_ch, resolution, latent_dim, base, impl, norm)
        self.fc_mu = nn.Linear(self.core_ch * CORE * CORE, latent_dim)
        self.fc_logvar = nn.Linear(self.core_ch * CORE * CORE, latent_dim)

    def encode(self, x):
        h = self.features(x)
        return self.fc_mu(h), self.fc_logvar(h)



class MLPVAE(_GaussianVAE, nn.Module):
    """The PyTorch examples' MNIST VAE (`vae/main.py`): 784-400-20-400-784 with ReLU hidden layers.

    Paper: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014. Layer names match the example
    (fc1, fc21 = mu head, fc22 = logvar head, fc3, fc4), so its checkpoints load; 652,824 parameters.
    Unlike the example, `forward` returns decoder LOGITS (the example applies a sigmoid and then
    F.binary_cross_entropy); `loss` uses the fused `vae_loss` with BCE-with-logits, which is the same
    objective, computed stably.
    """

    _decoder_input = "fc3"

    def __init__(self, input_dim=784, hidden=400, latent_dim=20, impl=None):
        super().__init__()
        self.input_dim, self.latent_dim, self.impl = input_dim, latent_dim, impl
        self.fc1 = nn.Linear(input_dim, hidden)
        self.fc21 = nn.Linear(hidden, latent_dim)
        self.fc22 = nn.Linear(hidden, latent_dim)
        self.fc3 = nn.Linear(latent_dim, hidden)
        self.fc4 = nn.Linear(hidden, input_dim)

    def encode(self, x):
        h = F.relu(self.fc1(x.reshape(-1, self.input_dim)))
        return self.fc21(h), self.fc22(h)

    def decode(self, z):
        return self.fc4(F.relu(self.fc3(z)))



class PCAAutoencoder(nn.Module):
    """Linear baseline: the top-`latent_dim` principal subspace, encode = project, decode = back-project.

    Paper: Pearson 1901 / Hotelling 1933 (PCA); the optimal linear autoencoder under squared error
    (Baldi & Hornik, "Neural Networks and Principal Component Analysis", 1989). Reference implementation:
    `torch.pca_lowrank` (Halko, Martinsson & Tropp 2011 randomized SVD), with `oversample` extra
    directions and `niter` power iterations so the kept subspace is accurate.

    `fit(x)` takes [N, ...] samples (flattened to [N, D]); `encode(x) -> z [N, latent_dim]` (centered
    coordinates); `decode(z)` -> reconstructions in x's sample shape (pixels, not logits). The squared
    reconstruction error over the fitted set equals the sum of the discarded squared singular values
    of the centered data.
    """

    # Everything a fit produces is a buffer, so state_dict() carries a fitted PCA (safetensors too: all
    # tensors), and load_state_dict() restores it into a fresh, unfitted module.
    _FITTED = ("mean", "components", "singular_values", "num_fitted", "fitted_sample_shape")

    def __init__(self, latent_dim, oversample=10, niter=4):
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim, self.oversample, self.niter = latent_dim, oversample, niter
        self.sample_shape = None  # x.shape[1:] of the fitted data (a Python copy of fitted_sample_shape)
        self.register_buffer("mean", None)
        self.register_buffer("components", None)  # [D, latent_dim], orthonormal columns
        self.register_buffer("singular_values", None)  # [latent_dim]
        self.register_buffer("num_fitted", None)  # 0-d int64: N of the fitted data
        self.register_buffer("fitted_sample_shape", None)  # int64 [ndim - 1]

    @torch.no_grad()
    def fit(self, x):
        data = x.reshape(x.shape[0], -1)
        n, d = data.shape
        if self.latent_dim > min(n, d):
            raise ValueError(f"latent_dim={self.latent_dim} exceeds min(N, D) = {min(n, d)}")
        q = min(self.latent_dim + self.oversample, n, d)
        mean = data.mean(0)
        _, s, v = torch.pca_lowrank(data - mean, q=q, center=False, niter=self.niter)
        self.sample_shape = tuple(x.shape[1:])
        # own compact copies, not views of pca_lowrank's larger outputs (safetensors wants contiguous tensors)
        self.mean, self.components = mean, v[:, :self.latent_dim].contiguous()
        self.singular_values = s[:self.latent_dim].clone()
        self.num_fitted = torch.tensor(n, dtype=torch.int64, device=x.device)
        self.fitted_sample_shape = torch.tensor(self.sample_shape, dtype=torch.int64, device=x.device)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # An unfitted module's buffers are None, which load_state_dict would skip (and call the saved
        # tensors unexpected), and a module fitted on other data has other shapes: give each fitted
        # buffer the saved tensor's shape first, then let nn.Module load (and check) as usual.
        for name in self._FITTED:
            saved, current = state_dict.get(prefix + name), self._buffers[name]
            if isinstance(saved, torch.Tensor) and (current is None or current.shape != saved.shape):
                like = saved if current is None else current
                self._buffers[name] = torch.empty(saved.shape, dtype=like.dtype, device=like.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.fitted_sample_shape is not None:
            self.sample_shape = tuple(int(v) for v in self.fitted_sample_shape.tolist())

    def explained_variance(self):
        """Variance along each kept component (unbiased, as sklearn's PCA)."""
        self._check_fitted()
        return self.singular_values.square() / (self.num_fitted - 1)

    def _check_fitted(self):
        if self.components is None:
            raise RuntimeError("PCAAutoencoder is not fitted: call fit(x) first")

    def encode(self, x):
        self._check_fitted()
        return (x.reshape(x.shape[0], -1) - self.mean) @ self.components

    def decode(self, z):
        self._check_fitted()
        return (z @ self.components.T + self.mean).reshape(z.shape[0], *self.sample_shape)

    def forward(self, x):
        return self.decode(self.encode(x))
