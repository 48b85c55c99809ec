"""pix2pix / CycleGAN networks: the reference repository's parameter counts, shapes, equality with a plain nn
reference written from the published architecture, and checkpoint key mapping."""
import functools

import pytest
import torch
from torch import nn

from fusegan.models.pix2pix import (NLayerDiscriminator, ResnetGenerator, UnetGenerator, load_reference_state_dict,
                                    reference_state_dict)

# fp32; the reference path runs the same torch ops in another grouping, the Triton path other kernels.
RTOL, ATOL = 1e-4, 1e-5


def count(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_the_reference_repository():
    # The models are big (tens of millions of parameters): each is built once.
    assert count(UnetGenerator(3, 3, 8, norm="batch")) == 54_413_955  # unet_256
    assert count(UnetGenerator(3, 3, 7, norm="batch")) == 41_828_995  # unet_128
    assert count(NLayerDiscriminator(6, norm="batch")) == 2_768_705
    assert count(NLayerDiscriminator(3, norm="instance")) == 2_764_737
    assert count(ResnetGenerator(3, 3, n_blocks=9, norm="instance")) == 11_378_179
    assert count(ResnetGenerator(3, 3, n_blocks=6, norm="instance")) == 7_837_699


def test_shapes():
    x = torch.randn(2, 3, 32, 32)
    assert UnetGenerator(3, 2, 5, ngf=2, impl="ref")(x).shape == (2, 2, 32, 32)
    assert ResnetGenerator(3, 2, ngf=2, n_blocks=1, impl="ref")(x).shape == (2, 2, 32, 32)
    assert NLayerDiscriminator(3, ndf=2, impl="ref")(x).shape == (2, 1, 2, 2)  # 32 -> 16 -> 8 -> 4 -> 3 -> 2
    assert NLayerDiscriminator(3, ndf=2, n_layers=1, impl="ref")(x).shape == (2, 1, 14, 14)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="norm"):
        NLayerDiscriminator(3, ndf=2, norm="group")
    with pytest.raises(ValueError, match="num_downs"):
        UnetGenerator(3, 3, 4, ngf=2)
    with pytest.raises(ValueError, match="padding_type"):
        ResnetGenerator(3, 3, ngf=2, n_blocks=1, padding_type="replicate")


# ----------------------------------------------------------------------------------------------
# Plain nn references, written from the published architecture (pix2pix / CycleGAN papers and the
# reference repository's layer lists), with the reference's module layout and in-place activations.
# ----------------------------------------------------------------------------------------------
def norm_layer(norm):
    if norm == "batch":
        return nn.BatchNorm2d
    return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)


class RefUnetLevel(nn.Module):
    def __init__(self, outer, inner, input_nc=None, sub=None, outermost=False, innermost=False, norm="batch",
                 dropout=False):
        super().__init__()
        self.outermost = outermost
        bias, norm_fn = norm == "instance", norm_layer(norm)
        input_nc = input_nc or outer
        downconv = nn.Conv2d(input_nc, inner, 4, 2, 1, bias=bias)
        if outermost:
            layers = [downconv, sub, nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(0.2, True), downconv, nn.ReLU(True),
                      nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias), norm_fn(outer)]
        else:
            layers = [nn.LeakyReLU(0.2, True), downconv, norm_fn(inner), sub, nn.ReLU(True),
                      nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias), norm_fn(outer)]
            layers += [nn.Dropout(0.5)] if dropout else []
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        # As in the reference: the in-place LeakyReLU inside self.model also rewrites the skip `x`.
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class RefUnet(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf, norm, dropout):
        super().__init__()
        level = RefUnetLevel(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            level = RefUnetLevel(ngf * 8, ngf * 8, sub=level, norm=norm, dropout=dropout)
        for outer, inner in ((4, 8), (2, 4), (1, 2)):
            level = RefUnetLevel(ngf * outer, ngf * inner, sub=level, norm=norm)
        self.model = RefUnetLevel(output_nc, ngf, input_nc, level, outermost=True, norm=norm)

    def forward(self, x):
        return self.model(x)


class RefResnetBlock(nn.Module):
    def __init__(self, dim, norm, dropout):
        super().__init__()
        bias, norm_fn = norm == "instance", norm_layer(norm)
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_fn(dim), nn.ReLU(True)]
        layers += [nn.Dropout(0.5)] if dropout else []
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), norm_fn(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class RefResnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf, n_blocks, norm, dropout):
        super().__init__()
        bias, norm_fn = norm == "instance", norm_layer(norm)
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=bias), norm_fn(ngf), nn.ReLU(True)]
        for m in (1, 2):
            layers += [nn.Conv2d(ngf * m, ngf * m * 2, 3, 2, 1, bias=bias), norm_fn(ngf * m * 2), nn.ReLU(True)]
        layers += [RefResnetBlock(ngf * 4, norm, dropout) for _ in range(n_blocks)]
        for m in (4, 2):
            layers += [nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, 2, 1, output_padding=1, bias=bias),
                       norm_fn(ngf * m // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class RefPatchGAN(nn.Module):
    def __init__(self, input_nc, ndf, n_layers, norm):
        super().__init__()
        bias, norm_fn = norm == "instance", norm_layer(norm)
        layers = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2 if n < n_layers else 1, 1, bias=bias),
                       norm_fn(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def randomize_(module):
    """Non-trivial BatchNorm affines and running stats, so that eval mode checks them too."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.3), nn.init.normal_(m.bias, 0.0, 0.3)
            m.running_mean.normal_(0.0, 0.1), m.running_var.uniform_(0.5, 1.5)
    return module


def assert_same_state(fused, ref):
    ours, theirs = reference_state_dict(fused), ref.state_dict()
    assert ours.keys() == theirs.keys()
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=RTOL, atol=1e-6, msg=key)


def check_against_reference(fused, ref, x, training, seed=1):
    load_reference_state_dict(fused, ref.state_dict())
    fused.train(training), ref.train(training)
    torch.manual_seed(seed)  # the same dropout masks: both draw them in the same order and shapes
    out_ref = ref(x.clone())
    torch.manual_seed(seed)
    out = fused(x)
    torch.testing.assert_close(out, out_ref, rtol=RTOL, atol=ATOL)
    assert_same_state(fused, ref)  # in training, the running statistics moved identically
    return out


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("num_downs,size,dropout", [(5, 32, False), (6, 64, True)])
def test_unet_matches_plain_nn_reference(num_downs, size, dropout, training):
    ref = randomize_(RefUnet(3, 2, num_downs, 2, "batch", dropout))
    fused = UnetGenerator(3, 2, num_downs, ngf=2, norm="batch", use_dropout=dropout, impl="ref")
    out = check_against_reference(fused, ref, torch.randn(2, 3, size, size), training)
    assert out.shape == (2, 2, size, size)


def test_unet_instance_norm_matches_plain_nn_reference():
    ref = RefUnet(3, 2, 5, 2, "instance", False)
    fused = UnetGenerator(3, 2, 5, ngf=2, norm="instance", impl="ref")
    check_against_reference(fused, ref, torch.randn(2, 3, 64, 64), training=True)  # 2x2 at the innermost norm


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("norm,dropout", [("instance", True), ("batch", False)])
def test_resnet_generator_matches_plain_nn_reference(norm, dropout, training):
    ref = randomize_(RefResnetGenerator(3, 2, 2, 2, norm, dropout))
    fused = ResnetGenerator(3, 2, ngf=2, n_blocks=2, norm=norm, use_dropout=dropout, impl="ref")
    check_against_reference(fused, ref, torch.randn(2, 3, 16, 16), training)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("norm,input_nc,n_layers", [("batch", 6, 3), ("instance", 3, 2)])
def test_patchgan_matches_plain_nn_reference(norm, input_nc, n_layers, training):
    ref = randomize_(RefPatchGAN(input_nc, 2, n_layers, norm))
    fused = NLayerDiscriminator(input_nc, ndf=2, n_layers=n_layers, norm=norm, impl="ref")
    check_against_reference(fused, ref, torch.randn(2, input_nc, 32, 32), training)


# ----------------------------------------------------------------------------------------------
# Checkpoint mapping
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: (UnetGenerator(3, 3, 6, ngf=2, use_dropout=True), RefUnet(3, 3, 6, 2, "batch", True)),
    lambda: (ResnetGenerator(3, 3, ngf=2, n_blocks=2, norm="batch", use_dropout=True),
             RefResnetGenerator(3, 3, 2, 2, "batch", True)),
    lambda: (NLayerDiscriminator(6, ndf=2), RefPatchGAN(6, 2, 3, "batch")),
])
def test_reference_state_dict_round_trip(make):
    fused, ref = make()
    randomize_(ref)
    load_reference_state_dict(fused, ref.state_dict())
    assert_same_state(fused, ref)  # every reference key, every value
    again = make()[0]
    load_reference_state_dict(again, reference_state_dict(fused))
    for key, value in fused.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_checkpoint_variants_and_errors():
    fused, ref = ResnetGenerator(3, 3, ngf=2, n_blocks=1), RefResnetGenerator(3, 3, 2, 1, "instance", False)
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}  # saved from nn.DataParallel
    state["model.2.running_mean"] = torch.zeros(2)  # InstanceNorm buffers of old PyTorch versions
    state["model.10.conv_block.2.running_var"] = torch.ones(8)
    load_reference_state_dict(fused, state)
    assert_same_state(fused, ref)

    unet, ref_unet = UnetGenerator(3, 3, 5, ngf=2), RefUnet(3, 3, 5, 2, "batch", False)
    old = {k: v for k, v in ref_unet.state_dict().items() if not k.endswith("num_batches_tracked")}  # pre-0.4
    load_reference_state_dict(unet, old)
    with pytest.raises(KeyError, match="model.model.9.weight"):
        load_reference_state_dict(unet, {**old, "model.model.9.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Missing"):
        load_reference_state_dict(unet, {k: v for k, v in old.items() if k != "model.model.0.weight"})


def test_channels_last_input():
    x = torch.randn(2, 3, 32, 32)
    for model in (UnetGenerator(3, 2, 5, ngf=2, impl="ref"), ResnetGenerator(3, 2, ngf=2, n_blocks=1, impl="ref"),
                  NLayerDiscriminator(3, ndf=2, impl="ref")):
        randomize_(model).eval()
        torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), model(x), rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------------
# torch.autocast: the fused networks compute what the plain nn networks compute under autocast
# ----------------------------------------------------------------------------------------------
BF16_EPS = torch.finfo(torch.bfloat16).eps
AUTOCAST_CASES = [
    ("unet-batch-dropout", lambda: RefUnet(3, 2, 6, 2, "batch", True),
     lambda: UnetGenerator(3, 2, 6, ngf=2, norm="batch", use_dropout=True, impl="ref"), (2, 3, 64, 64)),
    ("unet-instance", lambda: RefUnet(3, 2, 5, 2, "instance", False),
     lambda: UnetGenerator(3, 2, 5, ngf=2, norm="instance", impl="ref"), (2, 3, 32, 32)),
    ("resnet-reflect-dropout", lambda: RefResnetGenerator(3, 2, 2, 2, "instance", True),
     lambda: ResnetGenerator(3, 2, ngf=2, n_blocks=2, norm="instance", use_dropout=True, impl="ref"), (2, 3, 16, 16)),
    ("patchgan-batch", lambda: RefPatchGAN(6, 2, 3, "batch"),
     lambda: NLayerDiscriminator(6, ndf=2, n_layers=3, norm="batch", impl="ref"), (2, 6, 32, 32)),
]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("make_ref,make,shape", [c[1:] for c in AUTOCAST_CASES], ids=[c[0] for c in AUTOCAST_CASES])
def test_bf16_autocast_matches_plain_nn_under_autocast(make_ref, make, shape, training):
    ref, fused = randomize_(make_ref()), make()
    load_reference_state_dict(fused, ref.state_dict())
    fused.train(training), ref.train(training)
    x = torch.randn(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)  # the same dropout masks
        want = ref(x.clone())
        torch.manual_seed(1)
        got = fused(x)
    # The same bf16 convs, the same fp32-parameter norms, the same activations: bit for bit.
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert_same_state(fused, ref)  # running statistics: fp32, updated alike
    weights = torch.randn(shape[:1] + want.shape[1:])
    (want.float() * weights).sum().backward()
    (got.float() * weights).sum().backward()
    names, plain = fused.reference_module_names(), dict(ref.named_parameters())
    ours, theirs = [], []
    for key, p in fused.named_parameters():
        module, _, leaf = key.rpartition(".")
        assert p.grad.dtype == torch.float32, key
        ours.append(p.grad.flatten()), theirs.append(plain[f"{names[module]}.{leaf}"].grad.flatten())
    ours, theirs = torch.cat(ours), torch.cat(theirs)
    # Exact, except that the U-Net sums its skip and inner gradients (bf16) in another order than the
    # reference's ReLU-on-the-concatenation; worst seen over 16 runs: 1.3 eps in norm.
    assert ((ours - theirs).norm() / theirs.norm()).item() <= 3 * BF16_EPS


# ----------------------------------------------------------------------------------------------
# Triton path (the interpreter on CPU): same weights, same outputs as the reference path
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False])
def test_triton_path_matches_reference_path(device, training):
    x = torch.randn(2, 3, 16, 16, device=device)
    for make in (lambda impl: ResnetGenerator(3, 2, ngf=2, n_blocks=1, norm="instance", impl=impl),
                 lambda impl: NLayerDiscriminator(3, ndf=2, n_layers=2, norm="batch", impl=impl)):
        ref, fused = randomize_(make("ref")).to(device), make("triton").to(device)
        fused.load_state_dict(ref.state_dict())
        ref.train(training), fused.train(training)
        torch.testing.assert_close(fused(x), ref(x), rtol=RTOL, atol=ATOL)
        for key, value in ref.state_dict().items():  # running statistics too
            torch.testing.assert_close(fused.state_dict()[key], value, rtol=RTOL, atol=1e-6, msg=key)


@pytest.mark.gpu
def test_compile_forward_gpu():
    G = UnetGenerator(3, 3, 6, ngf=8).cuda()
    D = NLayerDiscriminator(6, ndf=8).cuda()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    eager_img = G(x)
    img = torch.compile(G, fullgraph=True)(x)
    torch.testing.assert_close(img, eager_img, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(torch.compile(D, fullgraph=True)(torch.cat([x, img], 1)),
                               D(torch.cat([x, eager_img], 1)), rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("padding_type", ["reflect", "zero"])
def test_compile_resnet_generator_gpu(padding_type):
    G = ResnetGenerator(3, 3, ngf=8, n_blocks=2, padding_type=padding_type).cuda()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    compiled = torch.compile(G, fullgraph=True, backend="inductor")
    for training in (True, False):
        G.train(training)
        torch.testing.assert_close(compiled(x), G(x), rtol=1e-3, atol=1e-4)
