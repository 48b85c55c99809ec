"""`load_nvlabs`: NVIDIA StyleGAN2-ADA networks (pickle or state dict) as fusegan networks.

From a pickle, the constructor kwargs stored with each network are used. From a state dict, the
architecture is read from the key names and tensor shapes; what no tensor records (the minibatch
stddev group size, the mapping lr multiplier, conv_clamp, num_fp16_res) comes from keyword
overrides whose defaults are NVIDIA's constructor defaults.

Each returned network keeps the constructor kwargs it was built with as `net.init_kwargs`, and
`save_nvlabs_safetensors` writes them into the safetensors metadata, so that a converted file
loads back as the same networks (same images and logits) even where the kwargs (conv_clamp,
num_fp16_res, mbstd group size, mapping lr multiplier) are not recorded in any tensor.
"""
import inspect
import json
import os
import re

import numpy as np
import torch

from .discriminator import Discriminator
from .generator import Generator
from .nvlabs_pickle import PersistentRecord, load_pickle

NETWORK_NAMES = ("G", "D", "G_ema")
NETWORK_CLASSES = {"Generator": Generator, "Discriminator": Discriminator}
KWARGS_METADATA_KEY = "fusegan.nvlabs_kwargs"  # safetensors metadata: JSON {name: {"class", "kwargs"}}


def load_nvlabs(path_or_state_dict, mbstd_group_size=4, mapping_lr_multiplier=0.01, conv_clamp=None,
                num_fp16_res=0, impl=None, device="cpu"):
    """Builds fusegan's G, D and G_ema from NVIDIA StyleGAN2-ADA weights.

    `path_or_state_dict` is a network pickle (.pkl), a safetensors/torch file of a state dict, or a
    state dict, whose keys are NVIDIA's names prefixed by the network (`G.mapping.fc0.weight`,
    `D.b4.fc.weight`, `G_ema.synthesis.b16.conv0.weight`); an unprefixed generator or discriminator
    state dict is recognized too. Returns a dict {name: network} of the networks found, in eval mode.
    The keyword overrides apply to state dicts only: a pickle, or a safetensors file written by
    `save_nvlabs_safetensors`, records its own constructor kwargs. Raises ValueError (or
    `NetworkPickleError`, also a ValueError) for a refused, malformed or mismatched input.
    """
    overrides = dict(mbstd_group_size=mbstd_group_size, mapping_lr_multiplier=mapping_lr_multiplier,
                     conv_clamp=conv_clamp, num_fp16_res=num_fp16_res)
    source, recorded = path_or_state_dict, {}
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.lower().endswith((".pkl", ".pickle")):
            return _from_pickle(load_pickle(path), impl, device)
        source, recorded = _load_state_dict_file(path)
    if not isinstance(source, dict):
        raise TypeError(f"path_or_state_dict must be a path or a dict, got {type(source).__name__}")
    if any(isinstance(v, PersistentRecord) for v in source.values()):
        return _from_pickle(source, impl, device)
    nets = {}
    for name, sd in split_networks(source).items():
        if name in recorded:
            cls, kwargs = recorded[name]
        elif name != "D":  # by name, so that a truncated G is reported as such, not inferred as a D
            cls, kwargs = Generator, infer_generator_kwargs(sd, overrides)
        else:
            cls, kwargs = Discriminator, infer_discriminator_kwargs(sd, overrides)
        nets[name] = _build(cls, (), kwargs, sd, name, impl, device)
    return nets


def save_nvlabs_safetensors(nets, path) -> int:
    """Writes networks from `load_nvlabs` ({name: net}) to one safetensors file that loads back the same.

    Tensors go under `{name}.{key}` (NVIDIA's names); each network's constructor kwargs go into the
    file's metadata, because no tensor records conv_clamp, num_fp16_res, the mbstd group size or the
    mapping lr multiplier. Returns the number of tensors written.
    """
    from safetensors.torch import save_file

    tensors, recorded = {}, {}
    for name, net in nets.items():
        if name not in NETWORK_NAMES or type(net).__name__ not in NETWORK_CLASSES:
            raise ValueError(f"nets[{name!r}]: expected G, D or G_ema as a Generator or Discriminator")
        if not hasattr(net, "init_kwargs"):
            raise ValueError(f"nets[{name!r}] has no init_kwargs: save networks that load_nvlabs built")
        recorded[name] = {"class": type(net).__name__, "kwargs": net.init_kwargs}
        tensors.update({f"{name}.{key}": value.detach().contiguous() for key, value in net.state_dict().items()})
    save_file(tensors, os.fspath(path), metadata={KWARGS_METADATA_KEY: json.dumps(recorded, default=_json_scalar)})
    return len(tensors)


def _json_scalar(value):
    if isinstance(value, np.generic):  # numpy scalars in a pickle's kwargs
        return value.item()
    raise TypeError(f"constructor kwarg {value!r} of type {type(value).__name__} cannot be saved as JSON")


def _build(cls, args, kwargs, sd, name, impl, device):
    try:
        # Positional args (NVIDIA's persistence records them apart) become kwargs, so init_kwargs is complete.
        kwargs = dict(inspect.signature(cls).bind(*args, **kwargs).arguments)
        if "impl" in kwargs:
            raise TypeError("impl is not a constructor kwarg of NVIDIA's networks")
        net = cls(**kwargs, impl=impl)
    except TypeError as exc:  # unknown or missing kwargs in a pickle or metadata record
        raise ValueError(f"{name}: cannot build a {cls.__name__} from the recorded kwargs: {exc}") from exc
    _load_exact(net, sd, name)
    net.init_kwargs = _plain(kwargs)
    return net.to(device).eval().requires_grad_(False)


def _plain(value):
    """kwargs as plain dicts/lists (a pickle's EasyDicts become dicts), for `init_kwargs`."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def split_networks(state_dict) -> dict:
    """{'G': sd, 'D': sd, 'G_ema': sd} from a prefixed state dict (non-network keys such as `z` ignored)."""
    nets = {}
    for key, value in state_dict.items():
        prefix, _, rest = key.partition(".")
        if prefix in NETWORK_NAMES and rest:
            nets.setdefault(prefix, {})[rest] = value
    if nets:
        return nets
    if any(k.startswith("synthesis.") for k in state_dict):
        return {"G": dict(state_dict)}
    if any(k.startswith("b4.") for k in state_dict):
        return {"D": dict(state_dict)}
    raise ValueError("path_or_state_dict holds no StyleGAN2 network: expected keys such as "
                     "'G.mapping.fc0.weight', 'synthesis.b4.const' or 'b4.fc.weight'")


def infer_generator_kwargs(sd, overrides) -> dict:
    """Generator constructor kwargs from the keys and shapes of an NVIDIA generator state dict."""
    num_layers = _count(sd, r"mapping\.fc(\d+)\.weight")
    if num_layers == 0:
        raise ValueError("generator state dict has no mapping network: expected keys 'mapping.fc0.weight', ...")
    c_dim = _shape(sd, "mapping.embed.weight", 1) if "mapping.embed.weight" in sd else 0
    embed_features = _shape(sd, "mapping.embed.weight", 0) if c_dim else 0
    w_dim = _shape(sd, f"mapping.fc{num_layers - 1}.weight", 0)
    resolutions = sorted(int(r) for r in _matches(sd, r"synthesis\.b(\d+)\."))
    if not resolutions:
        raise ValueError("generator state dict has no synthesis blocks: expected keys 'synthesis.b4.conv1.weight', ...")
    img_resolution = resolutions[-1]
    channels = {res: _shape(sd, f"synthesis.b{res}.conv1.weight", 0) for res in resolutions}
    channel_base, channel_max = _channel_base_max(channels, "synthesis")
    has_skip = len(resolutions) > 1 and f"synthesis.b{resolutions[1]}.skip.weight" in sd
    if has_skip:
        architecture = "resnet"
    elif len(resolutions) > 1 and f"synthesis.b{resolutions[0]}.torgb.weight" in sd:
        architecture = "skip"
    else:
        architecture = "orig"
    mapping = dict(num_layers=num_layers, lr_multiplier=overrides["mapping_lr_multiplier"])
    if c_dim:
        mapping["embed_features"] = embed_features
    if num_layers > 1:
        mapping["layer_features"] = _shape(sd, "mapping.fc0.weight", 0)
    first_conv = f"synthesis.b{resolutions[0]}.conv1"
    synthesis = dict(channel_base=channel_base, channel_max=channel_max, architecture=architecture,
                     num_fp16_res=overrides["num_fp16_res"], conv_clamp=overrides["conv_clamp"],
                     use_noise=f"{first_conv}.noise_const" in sd)
    return dict(z_dim=_shape(sd, "mapping.fc0.weight", 1) - embed_features, c_dim=c_dim, w_dim=w_dim,
                img_resolution=img_resolution, img_channels=_shape(sd, f"synthesis.b{img_resolution}.torgb.weight", 0),
                mapping_kwargs=mapping, synthesis_kwargs=synthesis)


def infer_discriminator_kwargs(sd, overrides) -> dict:
    """Discriminator constructor kwargs from the keys and shapes of an NVIDIA discriminator state dict."""
    resolutions = sorted((int(r) for r in _matches(sd, r"b(\d+)\.") if int(r) > 4), reverse=True)
    img_resolution = resolutions[0] if resolutions else 4
    channels = {res: _shape(sd, f"b{res}.conv0.weight", 0) for res in resolutions}
    channels[4] = _shape(sd, "b4.conv.weight", 0)
    channel_base, channel_max = _channel_base_max(channels, "discriminator")
    if resolutions and f"b{resolutions[0]}.skip.weight" in sd:
        architecture = "resnet"
    elif "b4.fromrgb.weight" in sd:
        architecture = "skip"
    else:
        architecture = "orig"
    c_dim = _shape(sd, "mapping.embed.weight", 1) if "mapping.embed.weight" in sd else 0
    kwargs = dict(c_dim=c_dim, img_resolution=img_resolution,
                  img_channels=_shape(sd, f"b{img_resolution}.fromrgb.weight", 1), architecture=architecture,
                  channel_base=channel_base, channel_max=channel_max, num_fp16_res=overrides["num_fp16_res"],
                  conv_clamp=overrides["conv_clamp"], mbstd_group_size=overrides["mbstd_group_size"],
                  mbstd_num_channels=_shape(sd, "b4.conv.weight", 1) - channels[4])
    if c_dim:
        kwargs["cmap_dim"] = _shape(sd, "b4.out.weight", 0)
        kwargs["mapping_kwargs"] = dict(num_layers=_count(sd, r"mapping\.fc(\d+)\.weight"),
                                        lr_multiplier=overrides["mapping_lr_multiplier"])
    return kwargs


def _channel_base_max(channels, what):
    """(channel_base, channel_max) with min(base // res, max) == channels[res] at every resolution."""
    channel_max = max(channels.values())
    # c == base // res means res * c <= base < res * (c + 1): the largest res * c is the smallest such base.
    below = [res * c for res, c in channels.items() if c < channel_max]
    channel_base = max(below) if below else channel_max * max(channels)
    if any(min(channel_base // res, channel_max) != c for res, c in channels.items()):
        raise ValueError(f"cannot express the {what} channel counts {channels} as min(channel_base // res, channel_max)")
    return channel_base, channel_max


def _from_pickle(data, impl, device):
    nets = {}
    for name in NETWORK_NAMES:
        record = data.get(name) if isinstance(data, dict) else None
        if record is None:
            continue
        if not isinstance(record, PersistentRecord):
            raise ValueError(f"pickle entry {name!r} is not a StyleGAN2-ADA network record")
        cls = NETWORK_CLASSES.get(record.class_name)
        if cls is None:
            raise ValueError(f"pickle entry {name!r} is a {record.class_name}, not a Generator or Discriminator")
        nets[name] = _build(cls, record.init_args, record.init_kwargs, record.state_dict(), name, impl, device)
    if not nets:
        raise ValueError("the pickle holds none of the networks G, D, G_ema")
    return nets


def _load_exact(net, sd, name):
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"{name}: state dict does not match the inferred architecture; "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name}.{key} is a {type(value).__name__}, not a tensor")
        if tuple(own[key].shape) != tuple(value.shape):
            raise ValueError(f"{name}.{key}: shape {tuple(value.shape)} does not match {tuple(own[key].shape)}")
    net.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()})


def _load_state_dict_file(path):
    """(state dict, {name: (class, kwargs)} recorded by save_nvlabs_safetensors) of a .safetensors/.pt file."""
    if path.lower().endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(path), _recorded_kwargs(metadata.get(KWARGS_METADATA_KEY), path)
    return torch.load(path, map_location="cpu", weights_only=True), {}


def _recorded_kwargs(text, path):
    if text is None:
        return {}
    try:
        records = json.loads(text)
        return {name: (NETWORK_CLASSES[r["class"]], dict(r["kwargs"])) for name, r in records.items()
                if name in NETWORK_NAMES}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: malformed {KWARGS_METADATA_KEY} metadata ({exc!r})") from exc


def _shape(sd, key, dim):
    """sd[key].shape[dim], or a ValueError that names the key a truncated or foreign state dict lacks."""
    value = sd.get(key)
    if value is None:
        raise ValueError(f"cannot infer the architecture: the state dict has no {key!r}")
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) <= dim:
        raise ValueError(f"cannot infer the architecture: {key!r} has shape {shape}, expected at least {dim + 1} dims")
    return int(shape[dim])


def _matches(sd, pattern):
    regex = re.compile(pattern)
    return {m.group(1) for k in sd for m in [regex.match(k)] if m}


def _count(sd, pattern):
    return len(_matches(sd, pattern))

