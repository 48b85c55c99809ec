"""`load_nvlabs`: NVIDIA StyleGAN2-ADA networks (pickle or state dict) as fusegan networks.

From a pickle, the constructor kwargs stored with each network are used. From a state dict, the
architecture is read from the key names and tensor shapes; what no tensor records (the minibatch
stddev group size, the mapping lr multiplier, conv_clamp, num_fp16_res) comes from keyword
overrides whose defaults are NVIDIA's constructor defaults.
"""
import os
import re

import torch

from .discriminator import Discriminator
from .generator import Generator
from .nvlabs_pickle import PersistentRecord, load_pickle

NETWORK_NAMES = ("G", "D", "G_ema")


def load_nvlabs(path_or_state_dict, mbstd_group_size=4, mapping_lr_multiplier=0.01, conv_clamp=None,
                num_fp16_res=0, impl=None, device="cpu"):
    """Builds fusegan's G, D and G_ema from NVIDIA StyleGAN2-ADA weights.

    `path_or_state_dict` is a network pickle (.pkl), a safetensors/torch file of a state dict, or a
    state dict, whose keys are NVIDIA's names prefixed by the network (`G.mapping.fc0.weight`,
    `D.b4.fc.weight`, `G_ema.synthesis.b16.conv0.weight`); an unprefixed generator or discriminator
    state dict is recognized too. Returns a dict {name: network} of the networks found, in eval mode.
    The keyword overrides apply to state dicts only: a pickle records its own constructor kwargs.
    """
    overrides = dict(mbstd_group_size=mbstd_group_size, mapping_lr_multiplier=mapping_lr_multiplier,
                     conv_clamp=conv_clamp, num_fp16_res=num_fp16_res)
    source = path_or_state_dict
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.endswith(".pkl"):
            return _from_pickle(load_pickle(path), impl, device)
        source = _load_state_dict_file(path)
    if not isinstance(source, dict):
        raise TypeError(f"path_or_state_dict must be a path or a dict, got {type(source).__name__}")
    if any(isinstance(v, PersistentRecord) for v in source.values()):
        return _from_pickle(source, impl, device)
    nets = {}
    for name, sd in split_networks(source).items():
        is_generator = any(k.startswith("synthesis.") for k in sd)
        kwargs = infer_generator_kwargs(sd, overrides) if is_generator else infer_discriminator_kwargs(sd, overrides)
        net = (Generator if is_generator else Discriminator)(**kwargs, impl=impl)
        _load_exact(net, sd, name)
        nets[name] = net.to(device).eval().requires_grad_(False)
    return nets


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
    c_dim = sd["mapping.embed.weight"].shape[1] if "mapping.embed.weight" in sd else 0
    embed_features = sd["mapping.embed.weight"].shape[0] if c_dim else 0
    w_dim = sd[f"mapping.fc{num_layers - 1}.weight"].shape[0]
    resolutions = sorted(int(r) for r in _matches(sd, r"synthesis\.b(\d+)\."))
    img_resolution = resolutions[-1]
    channels = {res: sd[f"synthesis.b{res}.conv1.weight"].shape[0] for res in resolutions}
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
        mapping["layer_features"] = sd["mapping.fc0.weight"].shape[0]
    first_conv = f"synthesis.b{resolutions[0]}.conv1"
    synthesis = dict(channel_base=channel_base, channel_max=channel_max, architecture=architecture,
                     num_fp16_res=overrides["num_fp16_res"], conv_clamp=overrides["conv_clamp"],
                     use_noise=f"{first_conv}.noise_const" in sd)
    return dict(z_dim=sd["mapping.fc0.weight"].shape[1] - embed_features, c_dim=c_dim, w_dim=w_dim,
                img_resolution=img_resolution, img_channels=sd[f"synthesis.b{img_resolution}.torgb.weight"].shape[0],
                mapping_kwargs=mapping, synthesis_kwargs=synthesis)


def infer_discriminator_kwargs(sd, overrides) -> dict:
    """Discriminator constructor kwargs from the keys and shapes of an NVIDIA discriminator state dict."""
    resolutions = sorted((int(r) for r in _matches(sd, r"b(\d+)\.") if int(r) > 4), reverse=True)
    img_resolution = resolutions[0] if resolutions else 4
    channels = {res: sd[f"b{res}.conv0.weight"].shape[0] for res in resolutions}
    channels[4] = sd["b4.conv.weight"].shape[0]
    channel_base, channel_max = _channel_base_max(channels, "discriminator")
    if resolutions and f"b{resolutions[0]}.skip.weight" in sd:
        architecture = "resnet"
    elif "b4.fromrgb.weight" in sd:
        architecture = "skip"
    else:
        architecture = "orig"
    c_dim = sd["mapping.embed.weight"].shape[1] if "mapping.embed.weight" in sd else 0
    kwargs = dict(c_dim=c_dim, img_resolution=img_resolution,
                  img_channels=sd[f"b{img_resolution}.fromrgb.weight"].shape[1], architecture=architecture,
                  channel_base=channel_base, channel_max=channel_max, num_fp16_res=overrides["num_fp16_res"],
                  conv_clamp=overrides["conv_clamp"], mbstd_group_size=overrides["mbstd_group_size"],
                  mbstd_num_channels=sd["b4.conv.weight"].shape[1] - channels[4])
    if c_dim:
        kwargs["cmap_dim"] = sd["b4.out.weight"].shape[0]
        kwargs["mapping_kwargs"] = dict(num_layers=_count(sd, r"mapping\.fc(\d+)\.weight"),
                                        lr_multiplier=overrides["mapping_lr_multiplier"])
    return kwargs


def _channel_base_max(channels, what):
    """(channel_base, channel_max) with min(base // res, max) == channels[res] at every resolution."""
    channel_max = max(channels.values())
    below = [res * c for res, c in channels.items() if c < channel_max]
    channel_base = min(below) if below else channel_max * max(channels)
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
        kwargs = dict(record.init_kwargs)
        cls = {"Generator": Generator, "Discriminator": Discriminator}.get(record.class_name)
        if cls is None:
            raise ValueError(f"pickle entry {name!r} is a {record.class_name}, not a Generator or Discriminator")
        net = cls(**kwargs, impl=impl)
        _load_exact(net, record.state_dict(), name)
        nets[name] = net.to(device).eval().requires_grad_(False)
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
        if tuple(own[key].shape) != tuple(value.shape):
            raise ValueError(f"{name}.{key}: shape {tuple(value.shape)} does not match {tuple(own[key].shape)}")
    net.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()})


def _load_state_dict_file(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _matches(sd, pattern):
    regex = re.compile(pattern)
    return {m.group(1) for k in sd for m in [regex.match(k)] if m}


def _count(sd, pattern):
    return len(_matches(sd, pattern))

