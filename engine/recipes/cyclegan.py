"""CycleGAN (Zhu et al., "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks",
ICCV 2017), as junyanz/pytorch-CycleGAN-and-pix2pix trains it (`models/cycle_gan_model.py`, `util/image_pool.py`):

    G_A: A -> B and G_B: B -> A, ResNet generators (9 blocks at >= 256, 6 below), InstanceNorm, no dropout
    D_A judges domain B (real_B vs G_A(A)), D_B judges domain A; 70x70 PatchGANs, InstanceNorm
    G loss: GAN_A + GAN_B + lambda_A |G_B(G_A(A)) - A|_1 + lambda_B |G_A(G_B(B)) - B|_1
            + lambda_idt * (lambda_B |G_A(B) - B|_1 + lambda_A |G_B(A) - A|_1)
    D loss: 0.5 * (GAN(D(real), real) + GAN(D(pool(fake)), fake)) for each D, fakes through a pool of 50
    lsgan; Adam lr 2e-4, betas (0.5, 0.999), one optimizer for both Gs and one for both Ds; N(0, 0.02) init;
    the G step first (Ds frozen), then the D step; the linear learning-rate decay (`linear_decay_factor`, in
    steps: lr constant for --n-steps-const steps, then linearly to 0 over --n-steps-decay steps).

The defaults (100,000 + 100,000 steps) are the paper's 100 + 100 epochs of a ~1,000-image domain at batch 1
(horse2zebra has 1,067 horses); set them to epochs * ceil(max(len_A, len_B) / batch) for another dataset.
"""
import torch
import torch.nn.functional as F

from fusegan.kernels.gan_loss import gan_loss
from fusegan.models.pix2pix import NLayerDiscriminator, ResnetGenerator

from .base import Recipe, eval_mode, set_requires_grad
from .pix2pix import (GAN_MODES, add_optimizer_arguments, add_width_arguments, init_weights, make_lr_schedulers,
                      side_by_side, step_lr_schedulers)


class ImagePool:
    """The history of generated images that the discriminators see (Shrivastava et al. 2017), with the query
    semantics of the reference's `ImagePool`: per image, while the pool holds fewer than `pool_size` images
    it is stored and returned; once full, with probability 1/2 it replaces a uniformly chosen stored image
    and that older image is returned, else it is returned itself. pool_size = 0 returns the batch unchanged.

    The coin flips come from the global (CPU) torch RNG, which the trainer saves and restores, and are decided
    on the host from CPU tensors, so a query costs no device sync. The images live on the device in float32;
    `state()` / `load_state()` carry them and the count for an exact resume."""

    def __init__(self, pool_size: int):
        if pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {pool_size}")
        self.pool_size = int(pool_size)
        self.count = 0
        self.images = None  # [pool_size, C, H, W] float32, allocated by the first query

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images.detach()
        out = []
        for image in images.detach().float():
            if self.count < self.pool_size:
                if self.images is None:
                    self.images = image.new_empty((self.pool_size, *image.shape))
                self.images[self.count].copy_(image)
                self.count += 1
                out.append(image)
            elif torch.rand(()).item() > 0.5:  # the reference's `random.uniform(0, 1) > 0.5`
                k = int(torch.randint(self.pool_size, ()).item())
                out.append(self.images[k].clone())
                self.images[k].copy_(image)
            else:
                out.append(image)
        return torch.stack(out)

    def state(self) -> dict:
        stored = self.images[:self.count].clone() if self.count else torch.zeros(0)
        return {"images": stored, "count": self.count}

    def load_state(self, state: dict, device) -> None:
        count = int(state["count"])
        if count > self.pool_size:
            raise ValueError(f"saved pool holds {count} images, more than pool_size={self.pool_size}")
        self.count, self.images = count, None
        if count:
            stored = state["images"]
            self.images = stored.new_empty((self.pool_size, *stored.shape[1:]), device=device)
            self.images[:count].copy_(stored)


class CycleGANRecipe(Recipe):
    name = "cyclegan"
    data_kind = "unpaired"
    default_batch = 1
    default_resolution = 256
    default_data = ""           # no built-in unpaired dataset: the trainer asks for --data
    loss_names = ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B")  # the reference's

    @classmethod
    def add_arguments(cls, parser):
        group = parser.add_argument_group("cyclegan")
        add_width_arguments(group)
        group.add_argument("--n-blocks", type=int, default=None,
                           help="ResNet blocks in each generator (default: 9 at resolution >= 256, else 6)")
        group.add_argument("--n-layers-d", type=int, default=3, help="PatchGAN layers; 3 = 70x70 (default: 3)")
        group.add_argument("--norm", choices=("instance", "batch"), default="instance",
                           help="normalization of the Gs and Ds (default: instance)")
        group.add_argument("--dropout", action="store_true", help="Dropout(0.5) in the ResNet blocks (default: off)")
        group.add_argument("--gan-mode", choices=tuple(GAN_MODES), default="lsgan",
                           help="lsgan = least squares, vanilla = BCE with logits (default: lsgan)")
        group.add_argument("--lambda-a", type=float, default=10.0, help="cycle weight A->B->A (default: 10)")
        group.add_argument("--lambda-b", type=float, default=10.0, help="cycle weight B->A->B (default: 10)")
        group.add_argument("--lambda-identity", type=float, default=0.5,
                           help="identity loss weight, relative to lambda_A/B; 0: none (default: 0.5)")
        group.add_argument("--pool-size", type=int, default=50, help="image pool per D; 0: none (default: 50)")
        add_optimizer_arguments(group, n_const=100_000, n_decay=100_000)

    def __init__(self, ctx, options, data):
        super().__init__(ctx, options, data)
        o = options
        if data.resolution % 4:
            raise ValueError(f"the ResNet generator needs a resolution divisible by 4, got {data.resolution}")
        nc_A, nc_B = data.channels, data.channels_b or data.channels
        if o.lambda_identity > 0 and nc_A != nc_B:
            raise ValueError(f"the identity loss needs domains with the same channels (A: {nc_A}, B: {nc_B}); "
                             f"use --lambda-identity 0")
        n_blocks = o.n_blocks if o.n_blocks is not None else (9 if data.resolution >= 256 else 6)
        g_kw = dict(ngf=o.ngf, n_blocks=n_blocks, norm=o.norm, use_dropout=o.dropout, impl=ctx.impl)
        d_kw = dict(ndf=o.ndf, n_layers=o.n_layers_d, norm=o.norm, impl=ctx.impl)
        nets = {"G_A": ResnetGenerator(nc_A, nc_B, **g_kw), "G_B": ResnetGenerator(nc_B, nc_A, **g_kw),
                "D_A": NLayerDiscriminator(nc_B, **d_kw), "D_B": NLayerDiscriminator(nc_A, **d_kw)}
        for net in nets.values():
            net.apply(lambda m: init_weights(m, o.init_gain))
        self.nets = {name: self.prepare(net) for name, net in nets.items()}
        self.G_A, self.G_B, self.D_A, self.D_B = (self.nets[k] for k in ("G_A", "G_B", "D_A", "D_B"))
        betas = (o.beta1, 0.999)
        self.optimizers = {
            "G": torch.optim.Adam([*self.G_A.parameters(), *self.G_B.parameters()], lr=o.lr, betas=betas),
            "D": torch.optim.Adam([*self.D_A.parameters(), *self.D_B.parameters()], lr=o.lr, betas=betas)}
        self.schedulers = make_lr_schedulers(self.optimizers, o.n_steps_const, o.n_steps_decay)
        self.fwd = {name: self.maybe_compile(net) for name, net in self.nets.items()}
        self.fake_A_pool, self.fake_B_pool = ImagePool(o.pool_size), ImagePool(o.pool_size)
        self.gan_kind = GAN_MODES[o.gan_mode]

    def gan(self, logits, target):
        return gan_loss(logits.float(), target, kind=self.gan_kind, impl=self.ctx.impl)

    def d_loss(self, D, real, fake):
        """backward_D_basic: 0.5 * (real term + fake term), reals and fakes as separate batches."""
        with self.ctx.precision.autocast():
            pred_real, pred_fake = D(real), D(fake.detach())
        return 0.5 * (self.gan(pred_real, "real") + self.gan(pred_fake, "fake"))

    def train_step(self, batch, step):
        o, f = self.options, self.fwd
        real_A, real_B = batch[0], batch[1]
        l1 = lambda x, y: F.l1_loss(x.float(), y.float())  # noqa: E731
        zero = real_A.new_zeros((), dtype=torch.float32)

        # G step, both Ds frozen.
        set_requires_grad(self.D_A, False)
        set_requires_grad(self.D_B, False)
        with self.ctx.precision.autocast():
            fake_B = f["G_A"](real_A)
            rec_A = f["G_B"](fake_B)
            fake_A = f["G_B"](real_B)
            rec_B = f["G_A"](fake_A)
            if o.lambda_identity > 0:
                idt_A, idt_B = f["G_A"](real_B), f["G_B"](real_A)
            pred_A, pred_B = f["D_A"](fake_B), f["D_B"](fake_A)
        if o.lambda_identity > 0:
            loss_idt_A = l1(idt_A, real_B) * o.lambda_b * o.lambda_identity
            loss_idt_B = l1(idt_B, real_A) * o.lambda_a * o.lambda_identity
        else:
            loss_idt_A = loss_idt_B = zero
        loss_G_A, loss_G_B = self.gan(pred_A, "gen"), self.gan(pred_B, "gen")
        loss_cycle_A = l1(rec_A, real_A) * o.lambda_a
        loss_cycle_B = l1(rec_B, real_B) * o.lambda_b
        loss_G = loss_G_A + loss_G_B + loss_cycle_A + loss_cycle_B + loss_idt_A + loss_idt_B
        self.backward(loss_G)
        g_stepped = self.step_optimizer("G", loss_G)
        set_requires_grad(self.D_A, True)
        set_requires_grad(self.D_B, True)

        # D step on pooled fakes. A skipped G step may mean non-finite fakes: they stay out of the pools (one
        # would otherwise poison the D steps until swapped out) and go to the Ds directly, whose step then skips.
        mf = self.ctx.memory_format
        if g_stepped:
            pooled_B = self.fake_B_pool.query(fake_B).contiguous(memory_format=mf)
            pooled_A = self.fake_A_pool.query(fake_A).contiguous(memory_format=mf)
        else:
            pooled_B, pooled_A = fake_B, fake_A
        loss_D_A = self.d_loss(f["D_A"], real_B, pooled_B)
        loss_D_B = self.d_loss(f["D_B"], real_A, pooled_A)
        loss_D = loss_D_A + loss_D_B
        self.backward(loss_D)
        self.step_optimizer("D", loss_D)

        step_lr_schedulers(self.schedulers)
        losses = {"D_A": loss_D_A, "G_A": loss_G_A, "cycle_A": loss_cycle_A, "idt_A": loss_idt_A,
                  "D_B": loss_D_B, "G_B": loss_G_B, "cycle_B": loss_cycle_B, "idt_B": loss_idt_B}
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def translate(self, real_A, real_B):
        """(fake_B, rec_A, fake_A, rec_B) with the generators in eval mode (InstanceNorm has no running
        statistics and dropout is off by default, so this equals train mode without touching the RNG)."""
        with eval_mode(self.G_A, self.G_B), self.ctx.precision.autocast():
            fake_B, fake_A = self.G_A(real_A), self.G_B(real_B)
            rec_A, rec_B = self.G_B(fake_B), self.G_A(fake_A)
        return tuple(x.float() for x in (fake_B, rec_A, fake_A, rec_B))

    def snapshot_grid(self):
        if self.reference_batch is None:
            raise RuntimeError("snapshot_grid needs set_reference_batch first")
        real_A, real_B = self.reference_batch[0], self.reference_batch[1]
        fake_B, rec_A, fake_A, rec_B = self.translate(real_A, real_B)
        # each row: real_A | fake_B | rec_A | real_B | fake_A | rec_B
        return {"translation": (side_by_side(real_A, fake_B, rec_A, real_B, fake_A, rec_B), 6)}

    def extra_state(self):
        return {"fake_A_pool": self.fake_A_pool.state(), "fake_B_pool": self.fake_B_pool.state(),
                "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()}}

    def load_extra_state(self, state):
        self.fake_A_pool.load_state(state["fake_A_pool"], self.ctx.device)
        self.fake_B_pool.load_state(state["fake_B_pool"], self.ctx.device)
        for name, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][name])
