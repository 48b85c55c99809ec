"""Fused conv2d (or conv_transpose2d) + BatchNorm2d/InstanceNorm2d + activation, for training and inference.

    conv2d_norm_act(x, weight, bias=None, stride=1, padding=0, dilation=1, transposed=False,
                    output_padding=0, norm=None, norm_weight=None, norm_bias=None, running_mean=None,
                    running_var=None, training=True, momentum=0.1, eps=1e-5, act='linear', alpha=None,
                    padding_mode='zeros', impl=None)

equals `act(norm(conv(x)))` with exactly the semantics of nn.Conv2d / nn.ConvTranspose2d (weights in
their layouts, groups=1), F.batch_norm / F.instance_norm (`training` = use the batch's statistics
and, when running stats are given, update them in place with momentum and the unbiased variance)
and torch's activations (lrelu's alpha defaults to 0.01; the gain is 1).

Triton path, what runs where:
  * training (batch statistics): one implicit-GEMM conv kernel writes the conv output (+ bias) and,
    in its epilogue, per-tile partial statistics (per channel for BatchNorm, per sample and channel
    for InstanceNorm); a tiny torch merge gives mean/var; one elementwise kernel normalizes, applies
    the affine and the activation. Running stats are updated in place from the merged statistics.
  * inference BatchNorm (running stats) and no norm: the statistics are folded into the conv's
    weights and bias, and the activation runs in the conv's epilogue: one kernel.
  * backward: one kernel computes the activation's gradient and the per-channel sums of dz and
    dz * xhat, one elementwise kernel the normalization's input gradient; then the implicit-GEMM
    data-gradient and weight-gradient kernels. Without a norm, an elementwise kernel applies the
    activation's gradient before them. Double backward is supported (see _conv_norm_act_ops.py).
  * reflect padding is index math in the conv's loader (never a padded copy); in the backward its
    adjoint is computed on the padded grid and folded with aten's reflection_pad2d_backward.
  * transposed convs (and the data gradient of strided convs) run one output phase per program,
    so the kernel taps that cannot reach a phase are skipped instead of masked.
Not fused (yet): folding the normalize+act pass into the prologue of the next layer's conv; the
statistics merge (a few tiny torch ops on per-tile partials) and the eval-mode weight folding
(tiny torch ops on the weights) run outside the kernels.

Module: `Conv2dNormAct`, which holds a real `conv` (nn.Conv2d/nn.ConvTranspose2d) and `norm`
(nn.BatchNorm2d/nn.InstanceNorm2d) submodule, so its state_dict keys are theirs.
"""
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._dispatch import resolve_impl
from ._validate import check_finite_number, check_same_device, check_tensor, in_layout_of

NORMS = (None, "batch", "instance")
ACTS = ("linear", "relu", "lrelu", "tanh", "sigmoid")
PADDING_MODES = ("zeros", "reflect")
_ACT_CODE = {"linear": 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4}


# ----------------------------------------------------------------------------------------------
# Reference: plain differentiable PyTorch
# ----------------------------------------------------------------------------------------------
def _apply_act(z, act, alpha):
    if act == "relu":
        return F.relu(z)
    if act == "lrelu":
        return F.leaky_relu(z, alpha)
    if act == "tanh":
        return torch.tanh(z)
    if act == "sigmoid":
        return torch.sigmoid(z)
    return z


def _conv_norm_act_ref(x, weight, bias, stride, padding, dilation, transposed, output_padding, norm,
                       norm_weight, norm_bias, running_mean, running_var, training, momentum, eps, act, alpha,
                       padding_mode):
    # The result keeps x's layout, as the Triton path's does (torch's convs also follow a channels_last weight,
    # and F.instance_norm returns NCHW for a channels_last input).
    x_in = x
    if padding_mode == "reflect":
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), mode="reflect")
        padding = (0, 0)
    if transposed:
        y = F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, 1, dilation)
    else:
        y = F.conv2d(x, weight, bias, stride, padding, dilation)
    if norm == "batch":
        y = F.batch_norm(y, running_mean, running_var, norm_weight, norm_bias, training, momentum, eps)
    elif norm == "instance":
        y = F.instance_norm(y, running_mean, running_var, norm_weight, norm_bias, training, momentum, eps)
    return in_layout_of(x_in, _apply_act(y, act, alpha))


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _pair(value, name, minimum):
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in items):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return tuple(int(v) for v in items)


def _check_choices(norm, act, padding_mode):
    """The string options, checked by both conv2d_norm_act and Conv2dNormAct (which fails at construction)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if act not in ACTS:
        raise ValueError(f"act must be one of {ACTS}, got {act!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")


def _check_vector(t, name, size, ref):
    if t is None:
        return
    check_tensor(t, name, ndim=1)
    check_same_device(ref, "x", t, name)
    if t.shape[0] != size:
        raise ValueError(f"{name} must have {size} elements (the conv's output channels), got {t.shape[0]}")


def _output_size(x, weight, stride, padding, dilation, transposed, output_padding):
    k = weight.shape[2:]
    if transposed:
        return tuple((x.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k[i] - 1)
                     + output_padding[i] + 1 for i in range(2))
    return tuple((x.shape[2 + i] + 2 * padding[i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1
                 for i in range(2))


def _validate(x, weight, bias, stride, padding, dilation, transposed, output_padding, norm, norm_weight,
              norm_bias, running_mean, running_var, training, momentum, eps, act, alpha, padding_mode):
    check_tensor(x, "x", ndim=4)
    check_tensor(weight, "weight", ndim=4)
    check_same_device(x, "x", weight, "weight")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight must have x's dtype {x.dtype}, got {weight.dtype}")
    _check_choices(norm, act, padding_mode)
    if not isinstance(transposed, bool):
        raise TypeError(f"transposed must be a bool, got {transposed!r}")
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {training!r}")
    stride = _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    dilation = _pair(dilation, "dilation", 1)
    output_padding = _pair(output_padding, "output_padding", 0)
    in_ch = weight.shape[0] if transposed else weight.shape[1]
    out_ch = weight.shape[1] if transposed else weight.shape[0]
    if x.shape[1] != in_ch:
        kind = "transposed " if transposed else ""
        raise ValueError(f"x has {x.shape[1]} channels but the {kind}conv weight of shape {tuple(weight.shape)} "
                         f"expects {in_ch} input channels (groups=1)")
    _check_vector(bias, "bias", out_ch, x)
    if bias is not None and bias.dtype != x.dtype:
        raise TypeError(f"bias must have x's dtype {x.dtype}, got {bias.dtype}")
    if transposed:
        if padding_mode != "zeros":
            raise ValueError("padding_mode must be 'zeros' for a transposed conv (as in nn.ConvTranspose2d)")
        if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation)):
            raise ValueError(f"output_padding must be smaller than either stride or dilation, got "
                             f"output_padding={output_padding}, stride={stride}, dilation={dilation}")
    elif output_padding != (0, 0):
        raise ValueError("output_padding is only used by transposed convs; it must be 0 when transposed=False")
    if padding_mode == "reflect" and any(p >= x.shape[2 + i] for i, p in enumerate(padding)):
        raise ValueError(f"padding {padding} must be smaller than x's spatial size {tuple(x.shape[2:])} "
                         "for padding_mode='reflect'")
    out_hw = _output_size(x, weight, stride, padding, dilation, transposed, output_padding)
    if min(out_hw) < 1:
        raise ValueError(f"the conv output would be empty: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
                         f"stride {stride}, padding {padding}, dilation {dilation}")
    if norm is None:
        for t, name in ((norm_weight, "norm_weight"), (norm_bias, "norm_bias"), (running_mean, "running_mean"),
                        (running_var, "running_var")):
            if t is not None:
                raise ValueError(f"{name} was given but norm is None")
    else:
        for t, name in ((norm_weight, "norm_weight"), (norm_bias, "norm_bias"), (running_mean, "running_mean"),
                        (running_var, "running_var")):
            _check_vector(t, name, out_ch, x)
            # torch's rule (F.batch_norm refuses other mixes): x's dtype, or float32 beside a float16/bfloat16 x.
            if t is not None and t.dtype != x.dtype and not (
                    t.dtype == torch.float32 and x.dtype in (torch.float16, torch.bfloat16)):
                raise TypeError(f"{name} must have x's dtype {x.dtype} (or float32 for a float16/bfloat16 x), "
                                f"got {t.dtype}")
        if (running_mean is None) != (running_var is None):
            raise ValueError("running_mean and running_var must be given together")
        if not training and running_mean is None:
            raise ValueError("running_mean and running_var are needed when training=False (inference uses them)")
        eps = check_finite_number(eps, "eps", allow_none=False)
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        momentum = check_finite_number(momentum, "momentum", allow_none=False)
        n_values = x.shape[0] * out_hw[0] * out_hw[1]
        if training and norm == "batch" and n_values == 1:
            raise ValueError("Expected more than 1 value per channel when training, got input size "
                             f"{torch.Size((x.shape[0], out_ch) + out_hw)}")
        if training and norm == "instance" and out_hw[0] * out_hw[1] == 1:
            raise ValueError("Expected more than 1 spatial element when training, got input size "
                             f"{torch.Size((x.shape[0], out_ch) + out_hw)}")
    if act == "lrelu":
        alpha = 0.01 if alpha is None else check_finite_number(alpha, "alpha", allow_none=False)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0 for act='lrelu', got {alpha}")
    elif alpha is not None:
        raise ValueError(f"alpha is only used by act='lrelu', got alpha={alpha!r} with act={act!r}")
    else:
        alpha = 0.0
    return stride, padding, dilation, output_padding, out_hw, float(alpha), eps, momentum


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------
def conv2d_norm_act(x, weight, bias=None, stride=1, padding=0, dilation=1, transposed=False, output_padding=0,
                    norm=None, norm_weight=None, norm_bias=None, running_mean=None, running_var=None,
                    training=True, momentum=0.1, eps=1e-5, act="linear", alpha=None, padding_mode="zeros",
                    impl=None):
    """act(norm(conv(x))); see the module docstring for the exact semantics and what is fused."""
    stride, padding, dilation, output_padding, out_hw, alpha, eps, momentum = _validate(
        x, weight, bias, stride, padding, dilation, transposed, output_padding, norm, norm_weight, norm_bias,
        running_mean, running_var, training, momentum, eps, act, alpha, padding_mode)
    impl = resolve_impl(impl, x.device)
    if impl == "ref":
        return _conv_norm_act_ref(x, weight, bias, stride, padding, dilation, transposed, output_padding, norm,
                                  norm_weight, norm_bias, running_mean, running_var, training, momentum, eps, act,
                                  alpha, padding_mode)
    from ._conv_norm_act_ops import conv_norm_act_triton

    if norm is not None and (norm_weight is None) != (norm_bias is None):  # the kernels take both or neither
        norm_weight = norm_weight if norm_weight is not None else torch.ones_like(norm_bias)
        norm_bias = norm_bias if norm_bias is not None else torch.zeros_like(norm_weight)
    return conv_norm_act_triton(x, weight, bias, (stride, padding, dilation), transposed, padding_mode == "reflect",
                                out_hw, norm, norm_weight, norm_bias, running_mean, running_var, training,
                                momentum, eps, _ACT_CODE[act], alpha)


# ----------------------------------------------------------------------------------------------
# Module
# ----------------------------------------------------------------------------------------------
_ACT_OF_MODULE = {nn.ReLU: "relu", nn.LeakyReLU: "lrelu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}


class Conv2dNormAct(nn.Module):
    """nn.Conv2d (or nn.ConvTranspose2d) -> nn.BatchNorm2d / nn.InstanceNorm2d -> activation, fused.

    Holds the real `conv` and `norm` modules, so `state_dict()` has their exact keys (`conv.weight`,
    `norm.running_mean`, ...), checkpoints move both ways, and `.train()/.eval()` work as usual.
    `bias` defaults to True without a norm and False with one (a bias before a norm is redundant).
    Norm options follow torch's defaults: BatchNorm affine + running stats, InstanceNorm neither.
    Under torch.autocast the conv runs in the autocast dtype (x, conv weight and bias cast at use);
    the norm's parameters and running statistics stay in their own dtype (fp32) and are updated there.
    """

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, dilation=1, bias=None, norm=None,
                 act="linear", alpha=None, transposed=False, output_padding=0, padding_mode="zeros", eps=1e-5,
                 momentum=0.1, affine=None, track_running_stats=None, impl=None, device=None, dtype=None):
        super().__init__()
        _check_choices(norm, act, padding_mode)
        bias = (norm is None) if bias is None else bias
        self.reflect_pad = None
        kw = dict(device=device, dtype=dtype)
        if transposed:
            conv = nn.ConvTranspose2d(in_ch, out_ch, kernel_size, stride, padding, output_padding, bias=bias,
                                      dilation=dilation, padding_mode=padding_mode, **kw)
        else:
            conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, bias=bias,
                             padding_mode=padding_mode, **kw)
        norm_module = None
        if norm == "batch":
            norm_module = nn.BatchNorm2d(out_ch, eps, momentum, True if affine is None else affine,
                                         True if track_running_stats is None else track_running_stats, **kw)
        elif norm == "instance":
            norm_module = nn.InstanceNorm2d(out_ch, eps, momentum, bool(affine), bool(track_running_stats), **kw)
        self._setup(conv, norm_module, act, alpha, impl)

    @classmethod
    def from_modules(cls, conv, norm=None, act=None, impl=None, reflect_pad=None):
        """A Conv2dNormAct that shares (does not copy) `conv`'s and `norm`'s parameters and buffers.

        `act` is an nn.ReLU/LeakyReLU/Tanh/Sigmoid module, an act name, or None. `reflect_pad`
        (pad_h, pad_w) absorbs an nn.ReflectionPad2d that preceded a padding=0 conv (CycleGAN): the
        reflection then happens in the conv's loader instead of in a padded copy."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.reflect_pad = None
        if reflect_pad is not None:
            if isinstance(conv, nn.ConvTranspose2d) or _padding_of(conv) != (0, 0):
                raise ValueError("reflect_pad needs a Conv2d with padding=0")
            self.reflect_pad = tuple(int(p) for p in reflect_pad)
        if isinstance(act, nn.Module):
            alpha = act.negative_slope if isinstance(act, nn.LeakyReLU) else None
            act = _ACT_OF_MODULE[type(act)]
        else:
            act, alpha = act or "linear", None
        self._setup(conv, norm, act, alpha, impl)
        self.training = conv.training  # not .train(): that would also flip a deliberately frozen norm
        return self

    def _setup(self, conv, norm, act, alpha, impl):
        if not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)):
            raise TypeError(f"conv must be an nn.Conv2d or nn.ConvTranspose2d, got {type(conv).__name__}")
        why = unsupported_conv_reason(conv)
        if why:
            raise ValueError(f"conv is not supported: {why}")
        if norm is not None:
            if type(norm) not in (nn.BatchNorm2d, nn.InstanceNorm2d):
                raise TypeError(f"norm must be an nn.BatchNorm2d or nn.InstanceNorm2d, got {type(norm).__name__}")
            if norm.num_features != conv.out_channels:
                raise ValueError(f"norm has num_features={norm.num_features} but the conv has "
                                 f"{conv.out_channels} output channels")
        self.conv = conv
        self.norm = norm
        self.act = act
        self.alpha = alpha
        self.impl = impl

    @property
    def transposed(self):
        return isinstance(self.conv, nn.ConvTranspose2d)

    # The conv's own parameters under the names a conv layer has, so code written for the unfused layers still
    # finds them: e.g. the PyTorch DCGAN example's `weights_init`, which matches 'Conv' in the class name and
    # initialises `m.weight`. Read-only: the parameters themselves live (and are registered) in `self.conv`.
    @property
    def weight(self):
        return self.conv.weight

    @property
    def bias(self):
        return self.conv.bias

    def forward(self, x):
        conv, norm = self.conv, self.norm
        if x.dim() == 3 and not isinstance(norm, nn.BatchNorm2d):
            # One unbatched [C, H, W] image, which nn.Conv2d and nn.InstanceNorm2d take (nn.BatchNorm2d does not:
            # it gets the 4-D check below, as in torch): a batch of one, as torch runs it.
            return self.forward(x.unsqueeze(0)).squeeze(0)
        transposed = self.transposed
        padding, padding_mode = _padding_of(conv), conv.padding_mode
        if self.reflect_pad is not None:
            padding, padding_mode = self.reflect_pad, "reflect"
        x, weight, bias = _cast_for_autocast(x, conv.weight, conv.bias)
        kwargs = dict(bias=bias, stride=conv.stride, padding=padding, dilation=conv.dilation,
                      transposed=transposed, output_padding=conv.output_padding if transposed else 0,
                      act=self.act, alpha=self.alpha, padding_mode=padding_mode, impl=self.impl)
        # The norm's affine parameters and running statistics stay as they are (fp32 under autocast):
        # both paths normalize in fp32 with them (F.batch_norm accepts them beside a bf16/fp16 input,
        # as cudnn's mixed-precision batch norm does) and update the running buffers in place.
        if norm is None:
            return conv2d_norm_act(x, weight, **kwargs)
        if isinstance(norm, nn.BatchNorm2d):
            # Exactly nn.BatchNorm2d.forward's bookkeeping (momentum=None: cumulative average).
            factor = 0.0 if norm.momentum is None else norm.momentum
            if norm.training and norm.track_running_stats and norm.num_batches_tracked is not None:
                norm.num_batches_tracked.add_(1)
                factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
            use_batch_stats = norm.training or (norm.running_mean is None and norm.running_var is None)
            track = not norm.training or norm.track_running_stats
            return conv2d_norm_act(
                x, weight, norm="batch", norm_weight=norm.weight, norm_bias=norm.bias,
                running_mean=norm.running_mean if track else None, running_var=norm.running_var if track else None,
                training=use_batch_stats, momentum=factor, eps=norm.eps, **kwargs)
        use_batch_stats = norm.training or not norm.track_running_stats
        return conv2d_norm_act(
            x, weight, norm="instance", norm_weight=norm.weight, norm_bias=norm.bias,
            running_mean=norm.running_mean, running_var=norm.running_var, training=use_batch_stats,
            momentum=norm.momentum if norm.momentum is not None else 0.0, eps=norm.eps, **kwargs)

    def extra_repr(self):
        text = f"act={self.act!r}" + (f", alpha={self.alpha}" if self.alpha is not None else "")
        return text + (f", reflect_pad={self.reflect_pad}" if self.reflect_pad is not None else "")


def _cast_for_autocast(x, weight, bias):
    """Under torch.autocast, (x, weight, bias) in the autocast dtype; otherwise unchanged.

    The fused op is a custom op that autocast does not see (and it wants weight and bias in x's
    dtype), so the module casts at use, as NVIDIA's layers do: the parameters stay fp32 and their
    gradients arrive in fp32 through the casts. Like autocast itself, float64 inputs are left alone.
    """
    kind = x.device.type
    if not (x.is_floating_point() and x.dtype != torch.float64 and torch.amp.is_autocast_available(kind)
            and torch.is_autocast_enabled(kind)):  # (asking about a device without autocast, e.g. meta, raises)
        return x, weight, bias
    dtype = torch.get_autocast_dtype(kind)
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def _padding_of(conv):
    if isinstance(conv.padding, str):  # 'valid', or 'same' with a symmetric total (checked when built)
        if conv.padding == "valid":
            return (0, 0)
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
    return conv.padding


def unsupported_conv_reason(conv):
    """Why conv2d_norm_act cannot run `conv` (None when it can)."""
    if conv.groups != 1:
        return f"groups={conv.groups} (only groups=1 is fused)"
    if conv.padding_mode not in PADDING_MODES:
        return f"padding_mode={conv.padding_mode!r} (only 'zeros' and 'reflect' are fused)"
    if isinstance(conv.padding, str) and conv.padding == "same":
        if any((d * (k - 1)) % 2 for d, k in zip(conv.dilation, conv.kernel_size)):
            return "padding='same' with an even kernel (asymmetric padding)"
    return None
