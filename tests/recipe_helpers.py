"""Shared by the recipe tests (imported as a plain module: pytest puts tests/ on sys.path)."""
import argparse
import io

import torch

from fusegan.engine.precision import Precision
from fusegan.engine.recipes import get_recipe
from fusegan.engine.recipes.base import TrainContext


def build_recipe(name, args, data, impl="ref", batch_size=2):
    """Recipe `name` on the CPU in fp32, its options parsed from the command-line words `args`, for `data`."""
    R = get_recipe(name)
    parser = argparse.ArgumentParser()
    R.add_arguments(parser)
    ctx = TrainContext(device=torch.device("cpu"), precision=Precision("fp32", "cpu"), batch_size=batch_size,
                       impl=impl)
    return R(ctx, parser.parse_args(list(args)), data)


def net_params(recipe):
    """Copies of the parameters of every network in `recipe.nets`, as {'<net>.<parameter>': tensor}."""
    return {f"{name}.{k}": v.detach().clone() for name, net in recipe.nets.items()
            for k, v in net.named_parameters()}


def assert_steps_change_every_parameter(recipe, batch, params, steps=2):
    """`steps` train steps on `batch`: each returns the losses `recipe.loss_names` names, in that order, as
    detached finite 0-d tensors; every parameter (`params(recipe)`: {name: copy}) changes; no step is skipped."""
    before = params(recipe)
    for step in range(steps):
        losses = recipe.train_step(batch, step)
        assert tuple(losses) == recipe.loss_names
        for key, value in losses.items():
            assert value.ndim == 0 and not value.requires_grad and torch.isfinite(value), key
    after = params(recipe)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged
    assert recipe.nonfinite == []


def assert_nonfinite_step_is_skipped(recipe, batch, step, skipped, params):
    """A train step on `batch` (which holds a NaN) skips the optimizer steps named in `skipped`, in that order,
    and so changes no parameter (`params(recipe)`: {name: copy})."""
    before = params(recipe)
    recipe.train_step(batch, step)
    assert recipe.nonfinite == skipped
    after = params(recipe)
    assert all(torch.equal(before[k], after[k]) for k in before)


def round_trip(state):
    """What a checkpoint does to extra_state: torch.save, then torch.load(weights_only=True) onto the CPU."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True, map_location="cpu")
