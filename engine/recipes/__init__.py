"""The training recipes, by name. Each lives in its own module and is imported only when asked for."""
import importlib

# name -> (module, class)
_RECIPES = {
    "dcgan": ("dcgan", "DCGANRecipe"),
    "stylegan2": ("stylegan2", "StyleGAN2Recipe"),
    "pix2pix": ("pix2pix", "Pix2PixRecipe"),
    "cyclegan": ("cyclegan", "CycleGANRecipe"),
    "vae": ("autoencoder", "VAERecipe"),
    "ae": ("autoencoder", "AERecipe"),
    "dae": ("autoencoder", "DAERecipe"),
}
RECIPES = tuple(_RECIPES)


def get_recipe(name: str):
    """The Recipe class called `name`; ValueError listing the choices for an unknown one."""
    if name not in _RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    module, cls = _RECIPES[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


__all__ = ["RECIPES", "get_recipe"]
