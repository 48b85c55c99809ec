"""Second audit of fusegan.engine.fuse: what forward does beyond the one graph fx records (other modes, default
arguments, grad-mode blocks, Python side effects of tracing), checkpoints loaded into a fused submodule, and layer
variants that must be left alone. The models are small; every check but the last uses impl='ref'."""
import copy
import io
import types
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fusegan.engine.fuse import fuse
from norm_helpers import randomize_norms
from test_fuse_audit import TOL, _check_equivalent, _fuse_copy, _kinds


# ----------------------------------------------------------------------------------------------
# Defects found by this audit (each test failed before the fix in engine/fuse.py)
# ----------------------------------------------------------------------------------------------
class SideEffects(nn.Module):
    """forward counts its calls and keeps features for a feature-matching loss."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
        self.calls = 0
        self.features = []

    def forward(self, x):
        self.calls += 1
        y = self.bn(self.conv(x))
        self.features.append(y)
        self.last = y
        return self.act(y)


def test_tracing_leaves_no_side_effects_on_the_model():
    # fx runs forward on Proxies: `calls` was incremented by fuse, and `last` / `features` kept fx Proxy objects,
    # so torch.save of the fused model raised "cannot pickle 'module' object".
    original = randomize_norms(SideEffects())
    fused, rep = _fuse_copy(original)
    assert _kinds(rep) == ["Conv2d+BatchNorm2d"]  # the stored features still stop the chain before the ReLU
    assert fused.calls == 0 and fused.features == [] and not hasattr(fused, "last")
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(loaded(x), original(x), **TOL[torch.float32])
    torch.testing.assert_close(loaded.features[0], original.features[0], **TOL[torch.float32])
    assert loaded.calls == original.calls == 1


class AuxInTraining(nn.Module):
    """An auxiliary head on the norm's output in training only (Inception-style), itself a chain run only then."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
        self.aux = nn.Sequential(nn.Conv2d(4, 1, 1), nn.Sigmoid())

    def forward(self, x):
        h = self.bn(self.conv(x))
        out = self.act(h)
        if self.training:
            return out + self.aux(h).mean()
        return out


@pytest.mark.parametrize("fused_in", ["train", "eval"])
def test_forward_branching_on_training_is_traced_in_both_modes(fused_in):
    # fx follows `if self.training` in the mode the model is in: fused in eval, the ReLU moved into the conv and
    # the training-mode aux head then read the activated features.
    original = randomize_norms(AuxInTraining()).train(fused_in == "train")
    fused, rep = _fuse_copy(original)
    assert _kinds(rep) == ["Conv2d+BatchNorm2d", "Conv2d+Sigmoid"]  # the aux head only runs in training: fused
    assert isinstance(fused.act, nn.ReLU)
    _check_equivalent(original, fused, rep, torch.randn(2, 3, 6, 6))


class OptionalArgument(nn.Module):
    """A default argument whose None branch uses the norm's output a second time."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.2)

    def forward(self, x, scale=None):
        h = self.bn(self.conv(x))
        if scale is None:
            return self.act(h) + h.mean()
        return self.act(h) * scale


def test_optional_argument_left_at_its_default_is_traced_too():
    # fx makes `scale` a Proxy, so `scale is None` was False while tracing and the None branch went unseen.
    original = randomize_norms(OptionalArgument())
    fused, rep = _fuse_copy(original)
    assert _kinds(rep) == ["Conv2d+BatchNorm2d"] and isinstance(fused.act, nn.LeakyReLU)
    _check_equivalent(original, fused, rep, torch.randn(2, 3, 6, 6))
    x, scale = torch.randn(2, 3, 6, 6), torch.randn(1, 4, 1, 1)
    torch.testing.assert_close(fused(x, scale), original(x, scale), **TOL[torch.float32])


class FrozenEncoder(nn.Module):
    """A frozen encoder run under torch.no_grad, then a trainable head starting with a norm."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.head = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))

    def forward(self, x):
        with torch.no_grad():
            features = self.encoder(x)
        return self.head(features)


def test_chain_does_not_cross_a_grad_mode_block():
    # encoder.2 -> head.0 -> head.1 was fused, so the head's BatchNorm ran under no_grad and got no gradients.
    original = randomize_norms(FrozenEncoder())
    fused, rep = _fuse_copy(original)
    assert _kinds(rep) == ["Conv2d+ReLU"] and isinstance(fused.head[0], nn.BatchNorm2d)
    assert any(name == "encoder.2" and "grad" in why for name, why in rep.left_alone)
    _check_equivalent(original, fused, rep, torch.randn(2, 3, 8, 8))


def test_forward_replaced_on_the_instance_is_left_alone():
    # A conv whose forward was patched on the instance (instrumentation, LoRA-style wrappers) lost the patch.
    original = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                             nn.Conv2d(4, 4, 1), nn.InstanceNorm2d(4, affine=True)))
    for index in (0, 4):  # a bound method: deepcopy rebinds it to the copied module
        original[index].forward = types.MethodType(lambda self, x: type(self).forward(self, x) * 2, original[index])
    fused, rep = _fuse_copy(original)
    assert rep.fused == []
    assert ("0", "its forward is replaced on the instance") in rep.left_alone
    assert ("4", "its forward is replaced on the instance") in rep.left_alone
    _check_equivalent(original, fused, rep, torch.randn(2, 3, 6, 6))


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.Tanh())

    def forward(self, x):
        return self.net(x)


class GAN(nn.Module):
    def __init__(self):
        super().__init__()
        self.G = Generator()
        self.D = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 1))

    def forward(self, x):
        return self.D(self.G(x))


def test_unfused_checkpoint_loads_into_a_fused_submodule():
    # The old-key remapper sat on the root only: `gan.G.load_state_dict(generator_checkpoint)` raised missing keys.
    generator = randomize_norms(Generator())
    gan = fuse(GAN(), impl="ref")
    assert str(gan.G.load_state_dict(generator.state_dict())) == "<All keys matched successfully>"
    gan.eval()
    generator.eval()
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(gan.G(x), generator(x), **TOL[torch.float32])
    whole = randomize_norms(GAN())
    assert str(gan.load_state_dict(whole.state_dict())) == "<All keys matched successfully>"  # the root still works
    torch.testing.assert_close(gan(x), whole.eval()(x), **TOL[torch.float32])


def test_report_lists_each_reason_once():
    class SharedAct(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.act = nn.ReLU()  # one ReLU after every norm, as user code often has

        def forward(self, x):
            return self.act(self.b2(self.c2(self.act(self.b1(self.c1(x))))))

    original = randomize_norms(SharedAct())
    fused, rep = _fuse_copy(original)
    assert _kinds(rep) == ["Conv2d+BatchNorm2d"] * 2
    assert rep.left_alone == [("act", "called 2 times in forward")]
    _check_equivalent(original, fused, rep, torch.randn(2, 3, 6, 6))


# ----------------------------------------------------------------------------------------------
# Checked and found correct, kept as regression tests
# ----------------------------------------------------------------------------------------------
class WeightStandardizedConv(nn.Conv2d):
    def forward(self, x):
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class DoubledBatchNorm(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x) * 2


LEFT_ALONE = {  # conv (and norm) variants whose weight or forward is not the plain layer's
    "spectral_norm_parametrization": lambda: [nn.utils.parametrizations.spectral_norm(nn.Conv2d(3, 4, 3)),
                                              nn.BatchNorm2d(4)],
    "weight_norm_parametrization": lambda: [nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3)),
                                            nn.BatchNorm2d(4)],
    "spectral_norm_hook": lambda: [nn.utils.spectral_norm(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4)],
    "weight_norm_hook": lambda: [nn.utils.weight_norm(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4)],
    "weight_standardized_subclass": lambda: [WeightStandardizedConv(3, 4, 3), nn.BatchNorm2d(4)],
    "lazy_uninitialized": lambda: [nn.LazyConv2d(4, 3), nn.LazyBatchNorm2d()],
    "sync_batchnorm": lambda: [nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4)],
    "hardtanh_only": lambda: [nn.Conv2d(3, 4, 3), nn.Hardtanh()],
}


@pytest.mark.parametrize("case", sorted(LEFT_ALONE))
def test_layers_that_are_not_plain_torch_layers_are_left_alone(case):
    def model():  # built twice from one seed: hook-based weight_norm models cannot be deep-copied
        torch.manual_seed(1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecated hook-based weight_norm
            return nn.Sequential(*LEFT_ALONE[case](), nn.ReLU())

    original = model()
    fused, rep = fuse(model(), report=True, impl="ref")
    assert rep.fused == [] and [type(m).__name__ for m in fused] == [type(m).__name__ for m in original], str(rep)
    x = torch.randn(2, 3, 6, 6)
    torch.manual_seed(2)
    expected = original(x)  # (materializes the lazy modules, from the same seed)
    torch.manual_seed(2)
    torch.testing.assert_close(fused(x), expected, atol=0, rtol=0)


def test_batch_norm_subclass_with_its_own_forward_is_left_alone():
    original = nn.Sequential(nn.Conv2d(3, 4, 3), DoubledBatchNorm(4), nn.ReLU())
    with pytest.warns(UserWarning, match="could not trace"):  # BatchNorm's own forward is traced, and branches
        fused, rep = fuse(copy.deepcopy(original), report=True, impl="ref")
    assert rep.fused == [] and type(fused[1]) is DoubledBatchNorm


@pytest.mark.parametrize("make", [lambda m: torch.compile(m, backend="eager"), nn.DataParallel])
def test_wrapped_models_come_back_unchanged(make):
    wrapped = make(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    with pytest.warns(UserWarning, match="returned unchanged"):
        fused, rep = fuse(wrapped, report=True, impl="ref")
    assert fused is wrapped and rep.fused == []
    assert [type(m) for m in wrapped.modules()][-3:] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]


def test_batch_of_one_in_training_raises_like_batch_norm():
    original = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    fused, _ = _fuse_copy(original)
    x = torch.randn(1, 3, 3, 3)  # one value per channel
    for model in (original, fused):
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            model(x)


def test_no_grad_autocast_and_deepcopy_for_ema():
    original = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=None), nn.LeakyReLU(0.2),
                                             nn.Conv2d(4, 4, 1), nn.InstanceNorm2d(4, affine=True), nn.Tanh()))
    fused, rep = _fuse_copy(original)
    ema = copy.deepcopy(fused)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():  # running stats are still updated (cumulative average: momentum=None)
        torch.testing.assert_close(fused(x), original(x), **TOL[torch.float32])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the ref path runs the same ops in the same dtypes
        out_fused, out_original = fused(x), original(x)
    assert out_fused.dtype == out_original.dtype == torch.bfloat16
    torch.testing.assert_close(out_fused, out_original, atol=0, rtol=0)
    torch.testing.assert_close(fused[0].norm.running_var, original[1].running_var, **TOL[torch.float32])
    assert fused[0].norm.num_batches_tracked == original[1].num_batches_tracked == 2
    assert ema[0].conv.weight is not fused[0].conv.weight and ema[0].norm.num_batches_tracked == 0
    _check_equivalent(original, fused, rep, x, steps=1)


# ----------------------------------------------------------------------------------------------
# The Triton path's LeakyReLU backward reads a saved pre-activation, not the output (torch saves the input)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["train", "eval"])  # eval: BatchNorm folded into the conv, the same epilogue
def test_triton_chain_output_modified_in_place_after_leaky_relu(device, mode):
    original = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.2)).to(device, torch.float64)
    if mode == "train":
        original = nn.Sequential(original[0], original[2])
    randomize_norms(original)
    getattr(original, mode)()
    fused, _ = _fuse_copy(original, impl="triton")
    x = torch.randn(2, 3, 5, 5, device=device, dtype=torch.float64)
    grads = []
    for model in (original, fused):
        out = model(x)
        out.add_(1)  # e.g. `out += skip`; torch allows it after a LeakyReLU
        out.square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want)
