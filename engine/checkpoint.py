"""Snapshots that survive crashes and never unpickle arbitrary objects.

A snapshot at step S is two files in `<run>/checkpoints/`:
- `step-SSSSSSSS.safetensors`: every network's state_dict (parameters and buffers), keys "<net>.<name>";
- `step-SSSSSSSS.state.pt`: optimizers, GradScaler, RNG states, counters, recipe extras and the config, made of
  tensors, numbers, strings, lists and dicts only, so `torch.load(weights_only=True)` reads it.
and then `latest.json` names the pair. Every file is written to a temporary name, flushed to disk and moved
into place with `os.replace` (atomic on POSIX), and `latest.json` is replaced last: a process killed at any
moment leaves the previous snapshot intact and `latest.json` pointing at a complete pair.

RNG states are per process. Each rank draws its own streams (other latents and noise on every GPU), so one
process's state restored on every rank would make all ranks draw the same numbers. `state["rng"]` is therefore a
list indexed by rank, one entry per process of the run that wrote it (its length is that run's world size), each
entry a `rng_state` dict: "torch", "python", "numpy", "cuda" (CUDA runs) and the trainer's named generators
("aug", the x-flip generator). `rank_rng_states` reads that list, and also the files written before it existed,
which held one process's dict as "rng" and its x-flip generator as "aug_rng" (a one-entry list).
"""
import json
import os
import random
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"
_STEP_FILE = re.compile(r"^step-(\d{8})\.state\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not match the run."""


def _atomic_write(path: Path, write):
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state(device: torch.device, **generators: torch.Generator) -> dict:
    """Every RNG this process draws from, as tensors and plain numbers: the global torch, python, numpy (and
    CUDA) ones, and each of `generators` under its keyword."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    state.update({name: gen.get_state() for name, gen in generators.items()})
    return state


def set_rng_state(state: dict, device: torch.device, **generators: torch.Generator):
    """Puts back what `rng_state(device, **generators)` returned."""
    torch.set_rng_state(state["torch"])
    version, gauss = state["python"][-2], state["python"][-1]
    random.setstate((version, tuple(state["python"][:-2]), gauss))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    for name, gen in generators.items():
        gen.set_state(state[name])


def rank_rng_states(state: dict) -> list:
    """The RNG entries of a state file in rank order (see the module docstring), old single-process files
    included."""
    rng = state["rng"]
    if isinstance(rng, dict):  # written before per-rank entries: one process's state, x-flip generator beside it
        return [dict(rng, aug=state["aug_rng"])]
    return list(rng)


def save_snapshot(run_dir, step: int, nets: dict, state: dict, keep: int = 3) -> Path:
    """Writes the snapshot of `step` (see the module docstring), points latest.json at it and keeps the newest
    `keep` snapshots (0: all of them). Returns the state file's path."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"step-{step:08d}"
    tensors = {f"{name}.{key}": value.detach().contiguous().cpu()
               for name, net in nets.items() for key, value in net.state_dict().items()}
    weights, state_file = folder / f"{stem}.safetensors", folder / f"{stem}.state.pt"
    _atomic_write(weights, lambda p: save_file(tensors, str(p), metadata={"step": str(step)}))
    _atomic_write(state_file, lambda p: torch.save(dict(state, step=step), p))
    latest = {"step": step, "weights": weights.name, "state": state_file.name}
    _atomic_write(folder / LATEST, lambda p: p.write_text(json.dumps(latest) + "\n"))
    _prune(folder, keep)
    return state_file


def _prune(folder: Path, keep: int):
    steps = sorted(int(m.group(1)) for m in map(_STEP_FILE.match, os.listdir(folder)) if m)
    for step in steps[:-keep] if keep > 0 else []:
        for suffix in (".safetensors", ".state.pt"):
            (folder / f"step-{step:08d}{suffix}").unlink(missing_ok=True)


def find_latest(run_dir):
    """The (weights, state) paths of the run's newest complete snapshot, or None when it has none. Trusts
    latest.json; falls back to the newest pair on disk when latest.json is missing or names absent files."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    try:
        latest = json.loads((folder / LATEST).read_text())
        pair = folder / latest["weights"], folder / latest["state"]
        if all(p.is_file() for p in pair):
            return pair
    except (OSError, ValueError, KeyError):
        pass
    for step in sorted((int(m.group(1)) for m in map(_STEP_FILE.match, os.listdir(folder)) if m), reverse=True):
        pair = folder / f"step-{step:08d}.safetensors", folder / f"step-{step:08d}.state.pt"
        if pair[0].is_file():
            return pair
    return None


def load_state(path) -> dict:
    """The state file, read without unpickling any object beyond tensors and plain containers."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError for foreign or corrupt files
        raise CheckpointError(f"cannot read checkpoint state {path}: {exc}") from exc


def load_weights(path, nets: dict):
    """Loads the safetensors file into `nets` (strict: every key of every net must be present)."""
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors' SafetensorError (truncated or corrupt) is no RuntimeError/OSError
        raise CheckpointError(f"cannot read checkpoint weights {path}: {exc}") from exc
    for name, net in nets.items():
        prefix = f"{name}."
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = net.load_state_dict(sub, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {path} does not match network {name!r}: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
    extra = sorted({k.split(".", 1)[0] for k in tensors} - set(nets))
    if extra:
        raise CheckpointError(f"checkpoint {path} holds networks this run does not have: {extra}")
