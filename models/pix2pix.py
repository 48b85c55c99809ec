"""pix2pix and CycleGAN networks: the U-Net and ResNet generators and the PatchGAN discriminator.

Papers: Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks" (pix2pix, 2017)
and Zhu et al., "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks"
(CycleGAN, 2017). Reference implementation: junyanz/pytorch-CycleGAN-and-pix2pix, `models/networks.py`
(`UnetGenerator`, `ResnetGenerator`, `NLayerDiscriminator`); the architectures, parameter counts and
outputs here are the same, with every conv-norm-act triple one fused `Conv2dNormAct`.

Norms follow the reference's `get_norm_layer`: 'batch' is BatchNorm2d (affine, running stats);
'instance' is InstanceNorm2d with affine=False and track_running_stats=False, so the convs carry a
bias exactly when the norm is 'instance'; None is no norm (the reference's 'none', still bias-free).

Checkpoints: `load_reference_state_dict(model, state_dict)` loads a state_dict saved by the reference
repository (keys such as `model.model.1.model.1.weight` for a U-Net, `model.10.conv_block.1.weight`
for a ResNet generator) and `reference_state_dict(model)` goes the other way. Each model lists which
of its modules corresponds to which reference module (`reference_module_names()`), so the mapping is
module by module and checked, never a blind zip over key order.
"""
import torch
from torch import nn

from fusegan.kernels.conv_norm_act import Conv2dNormAct

NORMS = ("batch", "instance", None)
PADDING_TYPES = ("reflect", "zero")


def _check_norm(norm):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm == "instance"  # use_bias: as in the reference, only InstanceNorm (affine=False) needs one


def _add_pair(names, fused, ref_conv, ref_norm=None, layer=None):
    """Record that fused `<fused>.conv` is the reference's `<ref_conv>` and `<fused>.norm` its `<ref_norm>`."""
    names[f"{fused}.conv"] = ref_conv
    if layer is not None and layer.norm is not None:
        names[f"{fused}.norm"] = ref_norm


# ----------------------------------------------------------------------------------------------
# U-Net generator (pix2pix)
# ----------------------------------------------------------------------------------------------
class UnetSkipBlock(nn.Module):
    """One U-Net level: down conv, the inner levels, up conv, and the skip connection.

    The reference block is `[LeakyReLU, conv, norm] + [inner] + [ReLU, convT, norm]` and returns
    `cat([x, block(x)])`. Its LeakyReLU is in place, so the skip carries lrelu(x), not x; and the
    parent's ReLU runs on the concatenation. Regrouped into conv -> norm -> act triples, each down
    layer is conv-norm-LeakyReLU (its output feeds the next level and the skip), each up layer is
    convT-norm-ReLU, and the skip half of the parent's ReLU is relu(lrelu(v)) = relu(v) of the
    skip, applied here. Dropout (after the up norm in the reference) commutes with the ReLU.
    The values, and so the outputs, are the reference's exactly.
    """

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                 norm="batch", use_dropout=False, impl=None):
        super().__init__()
        use_bias = _check_norm(norm)
        input_nc = outer_nc if input_nc is None else input_nc
        self.outermost, self.innermost = outermost, innermost
        down_kw = dict(kernel_size=4, stride=2, padding=1, bias=use_bias, impl=impl)
        up_kw = dict(kernel_size=4, stride=2, padding=1, transposed=True, impl=impl)
        if innermost:  # no down norm; the up path's ReLU runs right on the down conv's output
            self.down = Conv2dNormAct(input_nc, inner_nc, act="relu", **down_kw)
        elif outermost:  # no down norm; the inner level's in-place LeakyReLU lands here
            self.down = Conv2dNormAct(input_nc, inner_nc, act="lrelu", alpha=0.2, **down_kw)
        else:
            self.down = Conv2dNormAct(input_nc, inner_nc, norm=norm, act="lrelu", alpha=0.2, **down_kw)
        self.submodule = submodule
        up_in = inner_nc if innermost else inner_nc * 2
        if outermost:
            self.up = Conv2dNormAct(up_in, outer_nc, bias=True, act="tanh", **up_kw)
        else:
            self.up = Conv2dNormAct(up_in, outer_nc, norm=norm, bias=use_bias, act="relu", **up_kw)
        self.dropout = nn.Dropout(0.5) if use_dropout else None

    def forward(self, x):
        """`x` is this level's (already activated) input; returns what the parent's up conv reads."""
        inner = self.down(x)
        if self.submodule is not None:
            inner = self.submodule(inner)
        out = self.up(inner)
        if self.outermost:
            return out
        if self.dropout is not None:
            out = self.dropout(out)
        return torch.cat([torch.relu(x), out], 1)

    def reference_module_names(self, fused, ref):
        """{fused module name: reference module name} for this level and the ones inside it."""
        names = {}
        if self.outermost:  # reference: [downconv, inner, uprelu, upconv, tanh]
            down, inner, up = 0, 1, 3
        elif self.innermost:  # [downrelu, downconv, uprelu, upconv, upnorm]
            down, inner, up = 1, None, 3
        else:  # [downrelu, downconv, downnorm, inner, uprelu, upconv, upnorm, (dropout)]
            down, inner, up = 1, 3, 5
        _add_pair(names, f"{fused}.down", f"{ref}.model.{down}", f"{ref}.model.{down + 1}", self.down)
        _add_pair(names, f"{fused}.up", f"{ref}.model.{up}", f"{ref}.model.{up + 1}", self.up)
        if self.submodule is not None:
            names.update(self.submodule.reference_module_names(f"{fused}.submodule", f"{ref}.model.{inner}"))
        return names


class UnetGenerator(nn.Module):
    """The pix2pix U-Net generator (Isola et al. 2017), as `UnetGenerator` in junyanz/pytorch-CycleGAN-and-pix2pix.

    image [N, input_nc, H, W] -> image [N, output_nc, H, W] in [-1, 1], H and W divisible by 2**num_downs.
    `num_downs=8` is `unet_256` (54,413,955 parameters with BatchNorm, 3->3), `num_downs=7` is
    `unet_128` (41,828,995). Dropout(0.5) sits in the ngf*8 levels between the innermost and the
    four outer ones when `use_dropout` (pix2pix uses it as its noise source).
    """

    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm="batch", use_dropout=False, impl=None):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5 (the reference's four outer levels plus the innermost), "
                             f"got {num_downs}")
        kw = dict(norm=norm, impl=impl)
        block = UnetSkipBlock(ngf * 8, ngf * 8, innermost=True, **kw)
        for _ in range(num_downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, submodule=block, use_dropout=use_dropout, **kw)
        block = UnetSkipBlock(ngf * 4, ngf * 8, submodule=block, **kw)
        block = UnetSkipBlock(ngf * 2, ngf * 4, submodule=block, **kw)
        block = UnetSkipBlock(ngf, ngf * 2, submodule=block, **kw)
        self.model = UnetSkipBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, **kw)

    def forward(self, x):
        return self.model(x)

    def reference_module_names(self):
        """{fused module name: reference module name} (the reference's top module is also `model`)."""
        return self.model.reference_module_names("model", "model")


# ----------------------------------------------------------------------------------------------
# ResNet generator (CycleGAN)
# ----------------------------------------------------------------------------------------------
class ResnetBlock(nn.Module):
    """x + (conv3x3-norm-ReLU, [Dropout(0.5)], conv3x3-norm)(x), with reflection (or zero) padding.

    Reflection padding happens inside the fused conv's loader instead of a padded copy."""

    def __init__(self, dim, norm="instance", use_dropout=False, padding_type="reflect", impl=None):
        super().__init__()
        use_bias = _check_norm(norm)
        if padding_type not in PADDING_TYPES:
            raise ValueError(f"padding_type must be one of {PADDING_TYPES}, got {padding_type!r}")
        self.padding_type = padding_type
        mode = "reflect" if padding_type == "reflect" else "zeros"
        kw = dict(kernel_size=3, padding=1, padding_mode=mode, norm=norm, bias=use_bias, impl=impl)
        self.conv1 = Conv2dNormAct(dim, dim, act="relu", **kw)
        self.dropout = nn.Dropout(0.5) if use_dropout else None
        self.conv2 = Conv2dNormAct(dim, dim, **kw)

    def forward(self, x):
        h = self.conv1(x)
        if self.dropout is not None:
            h = self.dropout(h)
        return x + self.conv2(h)

    def reference_module_names(self, fused, ref):
        # reference conv_block: [pad, conv, norm, relu, (dropout), pad, conv, norm]; 'zero' has no pads
        pad = 1 if self.padding_type == "reflect" else 0
        first = pad
        second = first + 3 + (self.dropout is not None) + pad
        names = {}
        _add_pair(names, f"{fused}.conv1", f"{ref}.conv_block.{first}", f"{ref}.conv_block.{first + 1}", self.conv1)
        _add_pair(names, f"{fused}.conv2", f"{ref}.conv_block.{second}", f"{ref}.conv_block.{second + 1}",
                  self.conv2)
        return names


class ResnetGenerator(nn.Module):
    """The CycleGAN ResNet generator (Zhu et al. 2017, after Johnson et al.'s fast style transfer network),
    as `ResnetGenerator` in junyanz/pytorch-CycleGAN-and-pix2pix.

    image [N, input_nc, H, W] -> image [N, output_nc, H, W] in [-1, 1], H and W divisible by 4:
    a reflection-padded 7x7 conv, two stride-2 convs, `n_blocks` residual blocks, two stride-2
    transposed convs (output_padding=1) and a reflection-padded 7x7 conv with Tanh. 11,378,179
    parameters with 9 blocks (`resnet_9blocks`) and 7,837,699 with 6, at 3->3 with InstanceNorm.
    """

    n_downsampling = 2

    def __init__(self, input_nc, output_nc, ngf=64, n_blocks=9, norm="instance", use_dropout=False,
                 padding_type="reflect", impl=None):
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        use_bias = _check_norm(norm)
        kw = dict(norm=norm, bias=use_bias, act="relu", impl=impl)
        layers = [Conv2dNormAct(input_nc, ngf, 7, padding=3, padding_mode="reflect", **kw)]
        for i in range(self.n_downsampling):
            mult = 2**i
            layers.append(Conv2dNormAct(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, **kw))
        dim = ngf * 2**self.n_downsampling
        layers += [ResnetBlock(dim, norm, use_dropout, padding_type, impl) for _ in range(n_blocks)]
        for i in range(self.n_downsampling):
            mult = 2 ** (self.n_downsampling - i)
            layers.append(Conv2dNormAct(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1,
                                        transposed=True, **kw))
        layers.append(Conv2dNormAct(ngf, output_nc, 7, padding=3, padding_mode="reflect", bias=True, act="tanh",
                                    impl=impl))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)

    def reference_module_names(self):
        """{fused module name: reference module name}; the reference is one flat `model` Sequential:
        [pad, conv, norm, relu] + 2 x [conv, norm, relu] + blocks + 2 x [convT, norm, relu] + [pad, conv, tanh]."""
        names, ref = {}, 0
        for i, layer in enumerate(self.model):
            if isinstance(layer, ResnetBlock):
                names.update(layer.reference_module_names(f"model.{i}", f"model.{ref}"))
                ref += 1
                continue
            if i == 0 or i == len(self.model) - 1:
                ref += 1  # the ReflectionPad2d(3) before the 7x7 convs
            _add_pair(names, f"model.{i}", f"model.{ref}", f"model.{ref + 1}", layer)
            ref += 3  # conv, norm, relu (the head's conv, tanh is last anyway)
        return names


# ----------------------------------------------------------------------------------------------
# PatchGAN discriminator
# ----------------------------------------------------------------------------------------------
class NLayerDiscriminator(nn.Module):
    """The PatchGAN discriminator of pix2pix and CycleGAN (Isola et al. 2017; Zhu et al. 2017), as
    `NLayerDiscriminator` in junyanz/pytorch-CycleGAN-and-pix2pix.

    image [N, input_nc, H, W] -> patch logits [N, 1, h, w]. n_layers=3 is the 70x70 PatchGAN:
    2,768,705 parameters with 6 input channels (pix2pix's conditional input) and BatchNorm,
    2,764,737 with 3 input channels and InstanceNorm (CycleGAN).
    """

    def __init__(self, input_nc, ndf=64, n_layers=3, norm="batch", impl=None):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        use_bias = _check_norm(norm)
        lrelu = dict(act="lrelu", alpha=0.2, impl=impl)
        layers = [Conv2dNormAct(input_nc, ndf, 4, stride=2, padding=1, bias=True, **lrelu)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last norm layer keeps the resolution
            layers.append(Conv2dNormAct(ndf * prev, ndf * mult, 4, stride=stride, padding=1, norm=norm,
                                        bias=use_bias, **lrelu))
        layers.append(Conv2dNormAct(ndf * mult, 1, 4, stride=1, padding=1, bias=True, impl=impl))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)

    def reference_module_names(self):
        """The reference is one flat `model` Sequential: [conv, lrelu] + n_layers x [conv, norm, lrelu] + [conv]."""
        names, ref = {}, 0
        for i, layer in enumerate(self.model):
            _add_pair(names, f"model.{i}", f"model.{ref}", f"model.{ref + 1}", layer)
            ref += 2 if i == 0 else 3
        return names


# ----------------------------------------------------------------------------------------------
# Checkpoints of the reference repository
# ----------------------------------------------------------------------------------------------
_LEGACY_INSTANCE_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _strip_data_parallel(key):
    return key[len("module."):] if key.startswith("module.") else key


def load_reference_state_dict(model, state_dict):
    """Load a state_dict of the reference repository's network into `model` (same configuration).

    Keys are mapped module by module through `model.reference_module_names()`. A `module.` prefix
    (nn.DataParallel) is dropped. Like the reference's own loader, InstanceNorm running stats saved
    by old PyTorch versions are ignored (these norms track none); a missing `num_batches_tracked`
    (checkpoints from before PyTorch 0.4) keeps the model's value. Anything else that does not map,
    or a parameter the checkpoint lacks, raises (KeyError / load_state_dict's RuntimeError).
    """
    ref_to_fused = {ref: fused for fused, ref in model.reference_module_names().items()}
    own = model.state_dict()
    converted, unexpected = {}, []
    for key, value in state_dict.items():
        module, _, leaf = _strip_data_parallel(key).rpartition(".")
        fused_module = ref_to_fused.get(module)
        fused_key = f"{fused_module}.{leaf}"
        if fused_module is None:
            unexpected.append(key)
        elif fused_key in own:
            converted[fused_key] = value
        elif not (leaf in _LEGACY_INSTANCE_NORM_BUFFERS
                  and isinstance(model.get_submodule(fused_module), nn.InstanceNorm2d)):
            unexpected.append(key)
    if unexpected:
        raise KeyError(f"keys of the reference state_dict that do not map onto {type(model).__name__}: "
                       f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    for key, value in own.items():
        if key.endswith(".num_batches_tracked") and key not in converted:
            converted[key] = value
    return model.load_state_dict(converted, strict=True)


def reference_state_dict(model):
    """`model.state_dict()` under the reference repository's key names (what its networks load)."""
    fused_to_ref = model.reference_module_names()
    out = {}
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        out[f"{fused_to_ref[module]}.{leaf}"] = value
    return out
