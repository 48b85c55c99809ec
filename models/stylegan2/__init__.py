"""StyleGAN2 on fusegan ops, weight-compatible with NVIDIA's StyleGAN2-ADA (`load_nvlabs`)."""
from .discriminator import Discriminator, DiscriminatorBlock, DiscriminatorEpilogue, MinibatchStdLayer
from .generator import Generator, MappingNetwork, SynthesisBlock, SynthesisLayer, SynthesisNetwork, ToRGBLayer
from .layers import Conv2dLayer, FullyConnectedLayer, set_impl
from .nvlabs import infer_discriminator_kwargs, infer_generator_kwargs, load_nvlabs, save_nvlabs_safetensors
from .nvlabs_pickle import NetworkPickleError

__all__ = [
    "Conv2dLayer",
    "Discriminator",
    "DiscriminatorBlock",
    "DiscriminatorEpilogue",
    "FullyConnectedLayer",
    "Generator",
    "MappingNetwork",
    "NetworkPickleError",
    "MinibatchStdLayer",
    "SynthesisBlock",
    "SynthesisLayer",
    "SynthesisNetwork",
    "ToRGBLayer",
    "infer_discriminator_kwargs",
    "infer_generator_kwargs",
    "load_nvlabs",
    "save_nvlabs_safetensors",
    "set_impl",
]
