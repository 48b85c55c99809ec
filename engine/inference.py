"""Using a trained run: rebuild its recipe from a checkpoint, then sample or interpolate (`fusegan sample`)."""
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import TrainConfig
from .precision import Precision
from .recipes import get_recipe
from .recipes.base import DataInfo, TrainContext


def resolve_checkpoint(path):
    """(weights, state) for a run folder, its checkpoints/ folder, or a step-*.state.pt / .safetensors file."""
    path = Path(path)
    if path.is_dir():
        found = ckpt.find_latest(path.parent if path.name == ckpt.CHECKPOINT_DIR else path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {path}")
        return found
    stem = path.name.removesuffix(".state.pt").removesuffix(".safetensors")
    pair = path.with_name(stem + ".safetensors"), path.with_name(stem + ".state.pt")
    missing = [str(p) for p in pair if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint file(s) not found: {', '.join(missing)}")
    return pair


def load_recipe(path, device="cpu", impl=None):
    """The trained recipe (networks loaded, eval-ready) of a checkpoint, on `device`."""
    weights, state_path = resolve_checkpoint(path)
    state = ckpt.load_state(state_path)
    cfg = TrainConfig.from_dict(state["config"])
    device = torch.device(device)
    recipe_cls = get_recipe(cfg.recipe)
    from .trainer import recipe_options  # the trainer module imports data loaders; only needed here
    ctx = TrainContext(device=device, precision=Precision("fp32", device), batch_size=cfg.batch, seed=cfg.seed,
                       impl=impl if impl is not None else cfg.impl)
    recipe = recipe_cls(ctx, recipe_options(recipe_cls, cfg.recipe_options), DataInfo(**state["data_info"]))
    ckpt.load_weights(weights, recipe.nets)
    recipe.load_extra_state(state["recipe"])
    return recipe
