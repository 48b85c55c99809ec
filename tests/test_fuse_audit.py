"""fusegan.engine.fuse on the models users really bring: every conv/norm/act variant, graph shapes that must
stop a chain, and models whose forward or hooks would notice the rewrite. Each fused model is held to the
original's outputs, input and parameter gradients, running statistics and parameter identity."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fusegan.engine.fuse import fuse
from norm_helpers import randomize_norms

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def _check_equivalent(original, fused, rep, x, steps=2, modes=("train", "eval")):
    """Same outputs, input and parameter gradients and state, several steps in each mode; parameters shared."""
    tol = TOL[x.dtype]
    fused_params = dict(fused.named_parameters())
    for name, p in copy.deepcopy(original).named_parameters():  # the fused model holds the same objects
        assert fused_params[rep.key_map.get(name, name)].shape == p.shape, name
    for mode in modes:
        original.train(mode == "train")
        fused.train(mode == "train")
        for _ in range(steps):
            xo, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
            out_o, out_f = original(xo), fused(xf)
            torch.testing.assert_close(out_f, out_o, **tol)
            g = torch.randn_like(out_o)
            out_o.backward(g)
            out_f.backward(g)
            torch.testing.assert_close(xf.grad, xo.grad, **tol)
            for name, p in original.named_parameters():
                torch.testing.assert_close(fused_params[rep.key_map.get(name, name)].grad, p.grad, **tol, msg=name)
            fused_state = fused.state_dict()
            for name, value in original.state_dict().items():
                torch.testing.assert_close(fused_state[rep.key_map.get(name, name)], value, **tol, msg=name)
            original.zero_grad(set_to_none=True)
            fused.zero_grad(set_to_none=True)


def _fuse_copy(original, impl="ref"):
    fused, rep = fuse(copy.deepcopy(original), report=True, impl=impl)
    return fused, rep


def _kinds(rep):
    return sorted(c.kind for c in rep.fused)


# ----------------------------------------------------------------------------------------------
# Defects found by the audit (each test failed before the fix in engine/fuse.py)
# ----------------------------------------------------------------------------------------------
class UpWithOutputSize(nn.Module):
    """A U-Net decoder step that asks ConvTranspose2d for the skip's size (how odd sizes are handled)."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1)
        self.bn, self.act = nn.BatchNorm2d(3), nn.ReLU()

    def forward(self, x, skip):
        return self.act(self.bn(self.up(x, output_size=skip.shape[-2:]))) + skip


def test_conv_transpose_with_output_size_keyword_is_left_alone():
    # Was fused, and the fused model then raised: Conv2dNormAct.forward() got an unexpected keyword 'output_size'.
    original = UpWithOutputSize()
    fused, rep = _fuse_copy(original)
    assert rep.fused == [] and ("up", "called with more than one argument") in rep.left_alone
    x, skip = torch.randn(2, 4, 5, 5), torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(fused(x, skip), original(x, skip))


def test_negative_reflection_pad_is_not_absorbed():
    # ReflectionPad2d(-1) crops; it was absorbed as padding -1 and every forward raised "padding must be >= 0".
    def model():
        return nn.Sequential(nn.ReflectionPad2d(-1), nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4), nn.ReLU())

    original = model()
    fused, rep = _fuse_copy(original)
    assert _kinds(rep) == ["Conv2d+InstanceNorm2d+ReLU"] and isinstance(fused[0], nn.ReflectionPad2d)
    assert any("negative padding" in why for name, why in rep.left_alone if name == "0")
    _check_equivalent(original, fused, rep, torch.randn(2, 3, 7, 7), steps=1)

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model()

        def forward(self, x):
            return self.body(x) if x.sum() > 0 else -self.body(x)

    original = Untraceable()
    with pytest.warns(UserWarning, match="only consecutive layers"):
        fused = fuse(copy.deepcopy(original), impl="ref", sequential_fallback=True)
    x = torch.randn(2, 3, 7, 7) + 1
    torch.testing.assert_close(fused(x), original(x), **TOL[torch.float32])


class TiedAutoencoder(nn.Module):
    """Decoder reuses the encoder's weight (tied weights), a common autoencoder; a second chain is independent."""

    def __init__(self):
        super().__init__()
        self.enc, self.enc_act = nn.Conv2d(3, 6, 3, padding=1), nn.LeakyReLU(0.2)
        self.mid, self.mid_bn, self.mid_act = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU()

    def forward(self, x):
        h = self.mid_act(self.mid_bn(self.mid(self.enc_act(self.enc(x)))))
        return F.conv_transpose2d(h, self.enc.weight, padding=1)


class ReadsAttributes(nn.Module):
    """forward reads a replaced module's attributes: an int (never in the fx graph) and a buffer."""

    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 5, 3), nn.Tanh()
        self.conv2, self.bn2 = nn.Conv2d(5, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.act(self.conv(x))
        pooled = y.reshape(y.shape[0], self.conv.out_channels, -1).mean(-1)
        z = self.bn2(self.conv2(y)) - self.bn2.running_mean.view(1, -1, 1, 1)
        return z.flatten(1).sum(1) + pooled.sum(1)


@pytest.mark.parametrize("make, broken, kept", [
    # Conv2dNormAct has the conv's `weight` (and `bias`) under their names: tied weights survive fusing.
    (TiedAutoencoder, [], ["Conv2d+BatchNorm2d+ReLU", "Conv2d+LeakyReLU"]),
    (ReadsAttributes, ["conv", "conv2"], []),
])
def test_forward_reading_a_replaced_module_keeps_working(make, broken, kept):
    # Was fused, and forward then raised AttributeError ('Conv2dNormAct' has no 'out_channels', 'Identity' has no
    # 'running_mean'). Now exactly the chains that break forward are undone.
    original = randomize_norms(make())
    fused, rep = _fuse_copy(original)
    assert _kinds(rep) == kept
    undone = sorted(name for name, why in rep.left_alone if "breaks forward" in why)
    assert undone == broken
    _check_equivalent(original, fused, rep, torch.randn(2, 3, 6, 6))


class FeatureBlock(nn.Module):
    """A discriminator whose `features` Sequential ends in a norm, with the activation applied outside."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.act = nn.LeakyReLU(0.2)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 2, 1), nn.InstanceNorm2d(2))

    def forward(self, x):
        return self.head(self.act(self.features(x)))


def test_hooked_container_crossed_by_a_chain_sees_the_same_features():
    # The act moved into `features`, so a feature-matching hook silently captured activated features; and the
    # `head` pre-hook received the pre-ReLU conv input. Now the chains stop at hooked container boundaries.
    original = randomize_norms(FeatureBlock())
    captured = {"features": [], "head": []}
    original.features.register_forward_hook(lambda m, inp, out: captured["features"].append(out))
    original.head.register_forward_pre_hook(lambda m, inp: captured["head"].append(inp[0]))
    fused, rep = _fuse_copy(original)  # the deep copy keeps the hooks (same lambdas)
    assert ("act", "fusing it would cross features, which has hooks") in rep.left_alone
    assert _kinds(rep) == ["Conv2d+BatchNorm2d", "Conv2d+InstanceNorm2d"]
    captured["features"].clear()
    captured["head"].clear()
    x = torch.randn(2, 3, 6, 6)
    original(x), fused(x)
    for key, (seen_by_original, seen_by_fused) in captured.items():
        torch.testing.assert_close(seen_by_fused, seen_by_original, **TOL[torch.float32], msg=key)
    _check_equivalent(original, fused, rep, x)


def test_value_stored_on_an_attribute_stops_the_chain():
    # `self.features.append(y)` is no fx use: the norm output kept for a feature-matching loss became post-ReLU.
    class StoresFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
            self.features = []

        def forward(self, x):
            y = self.bn(self.conv(x))
            self.features.append(y)
            self.last = y
            return self.act(y)

    original = randomize_norms(StoresFeatures())
    fused, rep = _fuse_copy(original)
    assert _kinds(rep) == ["Conv2d+BatchNorm2d"] and isinstance(fused.act, nn.ReLU)
    fused.features.clear()
    x = torch.randn(2, 3, 6, 6)
    original(x), fused(x)
    torch.testing.assert_close(fused.features[0], original.features[0], **TOL[torch.float32])
    torch.testing.assert_close(fused.last, original.last, **TOL[torch.float32])


def test_fused_eval_model_has_no_module_in_training_mode():
    # The nn.Identity placeholders used to start in training mode inside an eval() model.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    fuse(model, impl="ref")
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_a_conv_called_twice_is_reported_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(self.conv(x)))

    _, rep = fuse(Twice(), report=True)
    assert rep.left_alone == [("conv", "called 2 times in forward")]


# ----------------------------------------------------------------------------------------------
# What was checked and found correct, kept as regression tests
# ----------------------------------------------------------------------------------------------
def _conv(**kw):
    return nn.Conv2d(4, 6, 3, **kw)


CHAINS = {
    "dilation": (lambda: [_conv(dilation=2, padding=2), nn.BatchNorm2d(6), nn.ReLU()], True),
    "stride2_lrelu": (lambda: [_conv(stride=2, padding=1), nn.BatchNorm2d(6), nn.LeakyReLU(0.3)], True),
    "same": (lambda: [_conv(padding="same", dilation=2), nn.BatchNorm2d(6), nn.ReLU(inplace=True)], True),
    "valid": (lambda: [_conv(padding="valid"), nn.BatchNorm2d(6, momentum=None), nn.Sigmoid()], True),
    "reflect_rect": (lambda: [nn.Conv2d(4, 6, (3, 5), padding=(1, 2), padding_mode="reflect"),
                              nn.InstanceNorm2d(6, affine=True), nn.ReLU()], True),
    "reflect_same": (lambda: [_conv(padding="same", padding_mode="reflect"),
                              nn.InstanceNorm2d(6, track_running_stats=True), nn.Tanh()], True),
    "reflection_pad_dilated": (lambda: [nn.ReflectionPad2d(2), _conv(dilation=2, stride=2),
                                        nn.InstanceNorm2d(6, affine=True, track_running_stats=True, momentum=None),
                                        nn.LeakyReLU(0.2, inplace=True)], True),
    "bn_untracked": (lambda: [_conv(bias=True), nn.BatchNorm2d(6, track_running_stats=False), nn.LeakyReLU(1.5)],
                     True),
    "bn_no_affine": (lambda: [_conv(bias=False), nn.BatchNorm2d(6, affine=False), nn.LeakyReLU(0.0)], True),
    "transposed": (lambda: [nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, dilation=2),
                            nn.BatchNorm2d(6), nn.Tanh()], True),
    "one_by_one_no_norm": (lambda: [nn.Conv2d(4, 6, 1, bias=False), nn.ReLU(inplace=True)], True),
    "groups": (lambda: [nn.Conv2d(4, 6, 3, groups=2), nn.BatchNorm2d(6), nn.ReLU()], False),
    "depthwise": (lambda: [nn.Conv2d(4, 4, 3, groups=4), nn.BatchNorm2d(4), nn.ReLU()], False),
    "transposed_groups": (lambda: [nn.ConvTranspose2d(4, 6, 3, groups=2), nn.BatchNorm2d(6), nn.ReLU()], False),
    "circular": (lambda: [_conv(padding=1, padding_mode="circular"), nn.BatchNorm2d(6), nn.ReLU()], False),
    "replicate": (lambda: [_conv(padding=1, padding_mode="replicate"), nn.BatchNorm2d(6), nn.ReLU()], False),
    "same_even_kernel": (lambda: [nn.Conv2d(4, 6, 4, padding="same"), nn.BatchNorm2d(6), nn.ReLU()], False),
    "groupnorm": (lambda: [_conv(), nn.GroupNorm(2, 6), nn.ReLU()], False),
    "dropout_between": (lambda: [_conv(), nn.Dropout(0.0), nn.BatchNorm2d(6), nn.ReLU()], False),
    "instancenorm_wrong_size": (lambda: [_conv(), nn.InstanceNorm2d(5), nn.ReLU()], False),  # torch only warns
}


@pytest.mark.parametrize("case", sorted(CHAINS))
def test_chain_variants_fuse_exactly_or_stay(case):
    make, fusable = CHAINS[case]
    original = randomize_norms(nn.Sequential(*make()))
    fused, rep = _fuse_copy(original)
    assert bool(rep.fused) == fusable, str(rep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # InstanceNorm2d's num_features warning
        _check_equivalent(original, fused, rep, torch.randn(2, 4, 9, 9))


@pytest.mark.parametrize("act, fused_kind", [(nn.SiLU, "Conv2d+BatchNorm2d"), (nn.GELU, "Conv2d+BatchNorm2d"),
                                             (nn.ReLU6, "Conv2d+BatchNorm2d"), (nn.PReLU, "Conv2d+BatchNorm2d")])
def test_unsupported_activations_stay_modules(act, fused_kind):
    original = randomize_norms(nn.Sequential(nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), act()))
    fused, rep = _fuse_copy(original)
    assert _kinds(rep) == [fused_kind] and type(fused[2]) is act
    _check_equivalent(original, fused, rep, torch.randn(2, 4, 7, 7), steps=1)


class GraphShapes(nn.Module):
    """Functional activation, ModuleList/ModuleDict, a norm output used twice, a residual add with inplace ReLU."""

    def __init__(self):
        super().__init__()
        self.stem = nn.ModuleList([nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)])
        self.branch = nn.ModuleDict(dict(conv=nn.Conv2d(4, 4, 3, padding=1, bias=False), bn=nn.BatchNorm2d(4),
                                         act=nn.ReLU(inplace=True)))
        self.side = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 1)), nn.Sequential(nn.InstanceNorm2d(4, affine=True)))
        self.side_act = nn.Tanh()

    def forward(self, x):
        h = F.leaky_relu(self.stem[1](self.stem[0](x)), 0.2)
        y = self.branch["bn"](self.branch["conv"](h))
        out = self.branch["act"](y) + self.side_act(self.side(y))
        out += h
        return torch.relu_(out)


def test_graph_shapes_fuse_only_what_is_safe():
    original = randomize_norms(GraphShapes())
    fused, rep = _fuse_copy(original)
    # y (the norm's output) has two users, so branch.act stays; the nested Sequentials fuse with the Tanh.
    assert _kinds(rep) == ["Conv2d+BatchNorm2d", "Conv2d+BatchNorm2d", "Conv2d+InstanceNorm2d+Tanh"]
    assert isinstance(fused.branch["act"], nn.ReLU)
    _check_equivalent(original, fused, rep, torch.randn(2, 3, 6, 6))


def test_shared_and_reused_modules_are_left_alone():
    conv = nn.Conv2d(3, 3, 3, padding=1)

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.bn = conv, conv, nn.BatchNorm2d(3)
            self.bn2, self.act = nn.BatchNorm2d(3), nn.ReLU()
            self.conv2 = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.act(self.bn(self.a(x))) + self.bn2(self.conv2(x)) + self.act(x)

    original = randomize_norms(Shared())
    fused, rep = _fuse_copy(original)
    assert _kinds(rep) == ["Conv2d+BatchNorm2d"] and rep.fused[0].conv == "conv2"
    assert ("a", "registered under several names") in rep.left_alone
    _check_equivalent(original, fused, rep, torch.randn(2, 3, 5, 5))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_parameter_dtypes(dtype):
    original = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.2))).to(dtype)
    fused, rep = _fuse_copy(original)
    assert len(rep.fused) == 1
    x = torch.randn(2, 3, 6, 6, dtype=dtype)
    if dtype == torch.float64:
        _check_equivalent(original, fused, rep, x)
    else:  # the ref path runs the same torch ops, so bf16 results agree exactly
        torch.testing.assert_close(fused(x), original(x), atol=0, rtol=0)
        torch.testing.assert_close(fused[0].norm.running_var, original[1].running_var, atol=0, rtol=0)


def test_channels_last_model():
    original = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    original = original.to(memory_format=torch.channels_last)
    fused, rep = _fuse_copy(original)
    x = torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)
    original(x)  # one training step on both (running stats), then the layout
    assert fused(x).is_contiguous(memory_format=torch.channels_last)
    _check_equivalent(original, fused, rep, x)


def test_checkpoints_and_idempotence():
    original = randomize_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                             nn.Conv2d(4, 4, 3), nn.InstanceNorm2d(4, affine=True)))
    fused, rep = _fuse_copy(original)
    again, rep2 = fuse(fused, report=True)
    assert again is fused and rep2.fused == [] and rep2.left_alone == []
    fresh = fuse(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                               nn.Conv2d(4, 4, 3), nn.InstanceNorm2d(4, affine=True)))
    assert str(fresh.load_state_dict(original.state_dict())) == "<All keys matched successfully>"
    inverse = {new: old for old, new in rep.key_map.items()}
    back = copy.deepcopy(original)
    back.load_state_dict({inverse[k]: v for k, v in fresh.state_dict().items()})
    fresh.eval()
    back.eval()
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(fresh(x), back(x), **TOL[torch.float32])


def test_triton_path_float64_through_the_interpreter(device):
    original = nn.Sequential(
        nn.ReflectionPad2d(1), nn.Conv2d(3, 4, 3, bias=False),
        nn.InstanceNorm2d(4, affine=True, track_running_stats=True), nn.LeakyReLU(1.5),
        nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(3, momentum=None),
        nn.Tanh()).to(device, torch.float64)
    randomize_norms(original)
    fused, rep = _fuse_copy(original, impl="triton")
    assert len(rep.fused) == 2
    _check_equivalent(original, fused, rep, torch.randn(2, 3, 5, 5, device=device, dtype=torch.float64), steps=1)
