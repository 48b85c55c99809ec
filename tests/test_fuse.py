"""fusegan.engine.fuse on the layers of DCGAN, pix2pix, CycleGAN and torchvision's ResNet, written here."""
import copy
import pickle
import warnings

import pytest
import torch
import torch.nn as nn

from fusegan.engine.fuse import FuseReport, fuse
from fusegan.kernels.conv_norm_act import Conv2dNormAct
from norm_helpers import randomize_norms
from test_fuse_audit import _check_equivalent  # outputs, gradients and state in train and eval mode



# ----------------------------------------------------------------------------------------------
# Models, written as their authors write them
# ----------------------------------------------------------------------------------------------
def dcgan_discriminator(nc=3, ndf=4):
    return nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, 1, 4, 1, 0, bias=False), nn.Sigmoid(),
    )


class UnetSkipConnectionBlock(nn.Module):
    """pix2pix's U-Net block (junyanz/pytorch-CycleGAN-and-pix2pix), BatchNorm variant."""

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False):
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=False)
        downrelu, downnorm = nn.LeakyReLU(0.2, True), nn.BatchNorm2d(inner_nc)
        uprelu, upnorm = nn.ReLU(True), nn.BatchNorm2d(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=False)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=False)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


def pix2pix_unet():
    inner = UnetSkipConnectionBlock(8, 8, innermost=True)
    mid = UnetSkipConnectionBlock(4, 8, submodule=inner)
    return UnetSkipConnectionBlock(3, 4, input_nc=3, submodule=mid, outermost=True)


class ResnetBlock(nn.Module):
    """CycleGAN's ResNet block with reflect padding and InstanceNorm."""

    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True), nn.InstanceNorm2d(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=True), nn.InstanceNorm2d(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock (one ReLU module used twice), with a downsample path."""

    def __init__(self, inplanes, planes, stride=2):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x)
        out += identity
        return self.relu(out)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        if x.mean() > 0:  # fx cannot trace a branch on a tensor's value
            return self.body(x)
        return -self.body(x)


def _fused_kinds(rep):
    return sorted(c.kind for c in rep.fused)


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------
def test_dcgan_discriminator_triton_path(device):
    original = dcgan_discriminator().to(device)
    randomize_norms(original)
    fused, rep = fuse(copy.deepcopy(original), report=True, impl="triton")
    assert _fused_kinds(rep) == ["Conv2d+BatchNorm2d+LeakyReLU", "Conv2d+LeakyReLU", "Conv2d+Sigmoid"]
    assert isinstance(fused[0], Conv2dNormAct) and isinstance(fused[1], nn.Identity)
    assert fused._fusegan_report is rep
    _check_equivalent(original, fused, rep, torch.randn(2, 3, 16, 16, device=device), steps=1)


def test_pix2pix_unet_blocks():
    original = pix2pix_unet()
    randomize_norms(original)
    fused, rep = fuse(copy.deepcopy(original), report=True, impl="ref")
    assert _fused_kinds(rep) == ["Conv2d+BatchNorm2d", "Conv2d+ReLU", "ConvTranspose2d+BatchNorm2d",
                                 "ConvTranspose2d+BatchNorm2d", "ConvTranspose2d+Tanh"]
    # The outermost downconv feeds the next block, which uses it twice (its conv and the skip concat).
    assert rep.left_alone == [("model.0", "nothing fusable follows it (its output has 2 users)")]
    _check_equivalent(original, fused, rep, torch.randn(2, 3, 8, 8))


def test_cyclegan_resnet_block():
    original = ResnetBlock(4)
    fused, rep = fuse(copy.deepcopy(original), report=True, impl="ref")
    # The ReflectionPad2d modules are absorbed: the reflection happens in the conv's loader.
    assert _fused_kinds(rep) == ["ReflectionPad2d+Conv2d+InstanceNorm2d",
                                 "ReflectionPad2d+Conv2d+InstanceNorm2d+ReLU"]
    assert [type(m) for m in fused.conv_block] == [nn.Identity, Conv2dNormAct, nn.Identity, nn.Identity,
                                                   nn.Identity, Conv2dNormAct, nn.Identity]
    assert fused.conv_block[1].reflect_pad == (1, 1)
    _check_equivalent(original, fused, rep, torch.randn(2, 4, 6, 6))


def test_cyclegan_resnet_block_triton_path(device):
    original = ResnetBlock(4).to(device)
    fused, rep = fuse(copy.deepcopy(original), report=True, impl="triton")
    assert len(rep.fused) == 2
    _check_equivalent(original, fused, rep, torch.randn(2, 4, 5, 5, device=device), steps=1)


def test_torchvision_basic_block_shared_relu():
    original = BasicBlock(4, 6)
    randomize_norms(original)
    fused, rep = fuse(copy.deepcopy(original), report=True, impl="ref")
    # self.relu runs twice, so it stays a module of its own; the conv+bn pairs fuse.
    assert _fused_kinds(rep) == ["Conv2d+BatchNorm2d"] * 3
    assert ("relu", "called 2 times in forward") in rep.left_alone
    assert isinstance(fused.relu, nn.ReLU) and isinstance(fused.bn1, nn.Identity)
    _check_equivalent(original, fused, rep, torch.randn(2, 4, 6, 6))
    # An unfused checkpoint loads into the fused model (and the fused one maps back through key_map).
    fresh = fuse(BasicBlock(4, 6))
    fresh.load_state_dict(original.state_dict())
    inverse = {new: old for old, new in rep.key_map.items()}
    BasicBlock(4, 6).load_state_dict({inverse.get(k, k): v for k, v in fused.state_dict().items()})


def test_modes_are_preserved_including_a_frozen_norm():
    original = dcgan_discriminator()
    randomize_norms(original)
    original[3].eval()  # a frozen BatchNorm inside a training model: running stats used, not updated
    fused, rep = fuse(copy.deepcopy(original), report=True, impl="ref")
    assert fused[2].training and not fused[2].norm.training
    _check_equivalent(original, fused, rep, torch.randn(2, 3, 16, 16), steps=1)
    eval_model = dcgan_discriminator().eval()
    assert not fuse(eval_model, impl="ref")[2].training


def test_output_with_other_users_is_not_fused():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()

        def forward(self, x):
            y = self.conv(x)
            return self.act(self.bn(y)) + y

    model, rep = fuse(TwoUsers(), report=True)
    assert rep.fused == [] and isinstance(model.conv, nn.Conv2d)
    assert ("conv", "nothing fusable follows it (its output has 2 users)") in rep.left_alone


def test_untraceable_model_is_unchanged_with_warning():
    model = DataDependent()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 5, 5)
    expected = model(x)
    with pytest.warns(UserWarning, match="could not trace DataDependent.*returned unchanged"):
        out, rep = fuse(model, report=True)
    assert out is model and not rep.traced and rep.fused == []
    assert [type(m) for m in model.body] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert model.state_dict().keys() == before.keys()
    torch.testing.assert_close(model(x), expected)


def test_untraceable_model_sequential_fallback():
    original = DataDependent()
    with pytest.warns(UserWarning, match="only consecutive layers inside nn.Sequential"):
        fused, rep = fuse(copy.deepcopy(original), report=True, impl="ref", sequential_fallback=True)
    assert _fused_kinds(rep) == ["Conv2d+BatchNorm2d+ReLU"]
    _check_equivalent(original, fused, rep, torch.randn(2, 3, 5, 5) + 0.5, steps=1)


def test_fusing_twice_is_a_no_op_and_the_result_pickles():
    model = fuse(dcgan_discriminator(), impl="ref")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, rep = fuse(model, report=True)
    assert rep.fused == [] and again is model
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    clone.eval()
    torch.testing.assert_close(clone(x), model(x))
    assert isinstance(rep, FuseReport) and "fused 0 chain(s)" in str(rep)


def test_unsupported_layers_are_left_alone():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.BatchNorm2d(4), nn.LeakyReLU(-0.5),
                          nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"), nn.ReLU(),
                          nn.Conv2d(4, 4, 1), nn.LeakyReLU(-0.5))
    fused, rep = fuse(model, report=True)
    assert rep.fused == []
    reasons = dict(rep.left_alone)
    assert "groups=2" in reasons["0"]
    assert "padding_mode='circular'" in reasons["3"]
    assert "negative_slope=-0.5" in reasons["6"]
