"""The training loop around a recipe: data, precision, processes, checkpoints, logging, signals, non-finite steps.

    summary = train(TrainConfig(recipe="dcgan", data="digits", steps=1500))

One step = one batch through `recipe.train_step`. Every `snap` steps (and at the end, and on SIGINT/SIGTERM) the
run writes sample grids, optional metrics and an atomic checkpoint (engine/checkpoint.py). Resuming restores the
networks, optimizers, GradScaler, every RNG (each rank its own), the data position and the recipe's extra state,
so on CPU a resumed run is bit-for-bit the uninterrupted one.
"""
import argparse
import dataclasses
import json
import math
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .config import RUNTIME_FIELDS, TrainConfig
from .data import make_loader, open_dataset, random_xflip, to_float
from .distributed import any_rank, broadcast_parameters, init_from_env, shutdown
from .grids import save_grid
from .precision import Precision
from .recipes import get_recipe
from .recipes.base import DataInfo, Recipe, TrainContext
from .stats import StatsWriter

REFERENCE_BATCH = 16  # real items handed to the recipe for input/output grids
INTERPOLATION_SEEDS = (0, 1, 2, 3, 4)


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (too many non-finite steps); the message says why and what to try."""


def recipe_options(recipe_cls, overrides: dict) -> argparse.Namespace:
    """The recipe's options: its argparse defaults, updated with `overrides` (names as attributes, e.g. 'ngf')."""
    parser = argparse.ArgumentParser(add_help=False)
    recipe_cls.add_arguments(parser)
    options = parser.parse_args([])
    unknown = sorted(set(overrides) - set(vars(options)))
    if unknown:
        raise ValueError(f"recipe {recipe_cls.name!r} has no option(s) {unknown}")
    for key, value in overrides.items():
        setattr(options, key, value)
    return options


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def next_run_dir(out: str, recipe: str, data: str) -> Path:
    """`<out>/<NNNNN>-<recipe>-<data>`, numbered after the runs already there (as StyleGAN2-ADA does)."""
    root = Path(out)
    numbers = [int(p.name.split("-", 1)[0]) for p in root.glob("[0-9]" * 5 + "-*")] if root.is_dir() else []
    tag = Path(data).stem if data not in ("digits", "faces") else data
    return root / f"{max(numbers, default=-1) + 1:05d}-{recipe}-{tag}"


def find_resume_dir(cfg: TrainConfig):
    """The run folder to continue: `--resume DIR`, or for 'auto' the newest run in --out of the same recipe and
    data that has a checkpoint (None: start afresh)."""
    if cfg.resume is None:
        return None
    if cfg.resume != "auto":
        folder = Path(cfg.resume)
        if folder.name == ckpt.CHECKPOINT_DIR:
            folder = folder.parent
        if ckpt.find_latest(folder) is None:
            raise ValueError(f"--resume {cfg.resume}: no checkpoint found there")
        return folder
    root = Path(cfg.out)
    candidates = sorted(root.glob("[0-9]" * 5 + "-*"), reverse=True) if root.is_dir() else []
    for folder in candidates:
        saved = folder / "config.json"
        if ckpt.find_latest(folder) and saved.is_file():
            old = json.loads(saved.read_text())
            if old.get("recipe") == cfg.recipe and old.get("data") == cfg.data:
                return folder
    return None


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to finish the current step, write a snapshot and return."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, _frame):
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.dist = init_from_env("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
        self.device = pick_device(cfg.device, self.dist.local_rank)
        # An explicit --resume DIR needs nothing from the command line to find its run; 'auto' matches runs by the
        # (defaulted) recipe and data.
        self.resume_dir = find_resume_dir(cfg) if cfg.resume not in (None, "auto") else None
        if self.resume_dir is None:
            self.recipe_cls = get_recipe(cfg.recipe)
            self._apply_defaults()
            self.resume_dir = find_resume_dir(cfg) if cfg.resume == "auto" else None
        resumed_state = None
        if self.resume_dir is not None:
            weights, state_path = ckpt.find_latest(self.resume_dir)
            resumed_state = ckpt.load_state(state_path)
            self._adopt_saved_config(resumed_state["config"])  # replaces self.cfg
            self.recipe_cls = get_recipe(self.cfg.recipe)
            self._apply_defaults()  # its checks, against this invocation's process count
            self.run_dir = self.resume_dir
        cfg = self.cfg
        _check_run_lengths(cfg)
        if self.resume_dir is None:
            self.run_dir = Path(cfg.run_dir) if cfg.run_dir else next_run_dir(cfg.out, cfg.recipe, cfg.data)
        self._seed()
        self.precision = Precision(cfg.precision, self.device)
        self.dataset = open_dataset(cfg.data, cfg.res, kind=self.recipe_cls.data_kind, labels=cfg.cond,
                                    direction=cfg.direction, max_bad_fraction=cfg.max_bad_fraction,
                                    seed=cfg.seed)
        self.ctx = TrainContext(device=self.device, precision=self.precision, batch_size=cfg.batch, seed=cfg.seed,
                                channels_last=cfg.channels_last, compile=cfg.compile, impl=cfg.impl, dist=self.dist)
        self.data_info = data_info = DataInfo(resolution=cfg.res, channels=self.dataset.channels,
                             num_classes=self.dataset.num_classes if cfg.cond else 0,
                             label_counts=self.dataset.label_counts() if cfg.cond else None,
                             kind=self.recipe_cls.data_kind,
                             channels_b=getattr(self.dataset, "channels_b", None))
        self.options = recipe_options(self.recipe_cls, cfg.recipe_options)
        self.recipe = self.recipe_cls(self.ctx, self.options, data_info)
        if self.dist.world_size > 1:
            for net in self.recipe.nets.values():
                broadcast_parameters(net)
        self.step, self.nonfinite_total = 0, 0
        self._norm_buffers = _norm_running_stats(self.recipe.nets.values())
        if resumed_state is not None:
            self._restore(weights, resumed_state)
        self.total_steps = self._total_steps()

    # ---- set-up --------------------------------------------------------------------------------------------
    def _apply_defaults(self):
        cfg, rc = self.cfg, self.recipe_cls
        if cfg.data is None:
            if not rc.default_data:
                raise ValueError(f"recipe {rc.name!r} has no built-in dataset: give --data PATH")
            cfg.data = rc.default_data
        cfg.res = cfg.res or rc.default_resolution
        options = recipe_options(rc, cfg.recipe_options)
        cfg.batch = cfg.batch or rc.recommended_batch(options, cfg.res, self.dist.world_size)
        if cfg.batch % self.dist.world_size:
            raise ValueError(f"--batch {cfg.batch} must be divisible by the number of processes "
                             f"({self.dist.world_size})")
        if cfg.metrics and rc.sample is Recipe.sample:
            raise ValueError(f"--metrics needs a recipe that generates images from noise; {rc.name!r} does not")
        if cfg.metrics and self.dist.world_size > 1:
            raise ValueError("--metrics is evaluated in single-process runs only")

    def _adopt_saved_config(self, saved: dict):
        """On resume, what is trained comes from the checkpoint and how this invocation runs from the command
        line (config.RUNTIME_FIELDS)."""
        current = self.cfg.to_dict()
        runtime = [k for k in RUNTIME_FIELDS
                   # Neither --steps nor --kimg given: the run goes on to the length it was started with.
                   if not (k in ("steps", "kimg") and current["steps"] is None and current["kimg"] is None)]
        merged = dict(saved, **{k: current[k] for k in runtime})
        self.cfg = TrainConfig.from_dict(merged)

    def _seed(self, base=None):
        """Seeds this process's RNGs from `base` (default: the configured seed). Both schemes are injective in the
        rank, so no two ranks draw the same stream."""
        base = self.cfg.seed if base is None else base
        seed = base * self.dist.world_size + self.dist.rank  # StyleGAN2-ADA's per-process seed
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        # Its own generator: x-flips never consume the global stream the recipe draws its latents and noise from.
        self.aug_generator = torch.Generator().manual_seed(base * 7919 + self.dist.rank)

    def _total_steps(self) -> int:
        cfg = self.cfg
        if cfg.steps is not None:
            return cfg.steps
        if cfg.kimg is not None:
            return math.ceil(cfg.kimg * 1000 / cfg.batch)
        return self.recipe_cls.default_steps

    def _restore(self, weights, state):
        ckpt.load_weights(weights, self.recipe.nets)
        for name, opt in self.recipe.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.precision.scaler.load_state_dict(state["scaler"])
        self.recipe.load_extra_state(state["recipe"])
        self.step, self.nonfinite_total = state["step"], state["nonfinite_total"]
        self._restore_rng(ckpt.rank_rng_states(state))

    def _restore_rng(self, saved: list):
        """Each rank resumes its own streams: entry `rank` of the checkpoint's per-rank RNG states. A run resumed
        on more processes than wrote the checkpoint has no entry for the extra ranks; they seed afresh from
        (seed, step, rank), deterministically and (the scheme being injective in the rank) apart from each other.
        On fewer processes, the entries beyond the world size are dropped. Either way the data shards change with
        the world size too, so such a run is a faithful continuation, not the uninterrupted run."""
        if self.dist.rank < len(saved):
            ckpt.set_rng_state(saved[self.dist.rank], self.device, aug=self.aug_generator)
        else:
            # The step in the base: each later resume on more processes draws new numbers, not the same again.
            self._seed(base=self.cfg.seed * 1_000_003 + self.step)

    def _local_rng_state(self) -> dict:
        return ckpt.rng_state(self.device, aug=self.aug_generator)

    def _gather_rng_states(self):
        """Every rank's RNG state in rank order on the main process, None on the others. A collective: every rank
        must call it at the same point, which `snapshot` does."""
        local = self._local_rng_state()
        if self.dist.world_size == 1:
            return [local]
        states = [None] * self.dist.world_size if self.dist.is_main else None
        # Object collectives pickle the (CPU) state tensors, so this works on gloo and on NCCL (which sends them
        # through the current CUDA device, set per rank by pick_device).
        torch.distributed.gather_object(local, states, dst=0)
        return states

    def state_dict(self, rng_states=None) -> dict:
        """Everything but the weights. `rng_states`: every rank's RNG state in rank order (default: this process's
        alone, right for a single-process run)."""
        return {
            "config": self.cfg.to_dict(),
            "data_info": dataclasses.asdict(self.data_info),
            "optimizers": {name: opt.state_dict() for name, opt in self.recipe.optimizers.items()},
            "scaler": self.precision.scaler.state_dict(),
            "rng": rng_states if rng_states is not None else [self._local_rng_state()],
            "recipe": self.recipe.extra_state(),
            "nonfinite_total": self.nonfinite_total,
            "images_seen": self.step * self.cfg.batch,
        }

    # ---- batches -------------------------------------------------------------------------------------------
    def _prepare(self, batch):
        """A training batch as the recipe takes it (see _inputs)."""
        return self._inputs(batch, augment=True)

    def _inputs(self, batch, augment):
        """uint8 images -> float in [-1, 1] on the device, x-flip (when augmenting: one flip per sample shared by
        paired A and B, independent flips of unpaired A and B), memory format; labels and other tensors pass
        through."""
        out = [t.to(self.device, non_blocking=True) for t in batch]
        images = [i for i, t in enumerate(out) if t.dtype == torch.uint8]
        for i in images:
            out[i] = to_float(out[i])
        if augment and self.cfg.xflip and images:
            group = [out[i] for i in images]
            if self.data_info.kind == "unpaired":
                # CycleGAN's UnalignedDataset flips A and B on their own (a RandomHorizontalFlip each): a draw
                # per tensor, A's first, all from the checkpointed x-flip generator.
                flipped = [random_xflip(t, generator=self.aug_generator) for t in group]
            else:
                # pix2pix's AlignedDataset gives A and B the same flip, so they stay aligned.
                flipped = random_xflip(group, generator=self.aug_generator)
            for i, t in zip(images, flipped):
                out[i] = t
        for i in images:
            out[i] = out[i].contiguous(memory_format=self.ctx.memory_format)
        return tuple(out)

    def _reference_batch(self):
        """The dataset's first items as one batch, prepared like training batches but never flipped."""
        n = min(REFERENCE_BATCH, len(self.dataset))
        batch = torch.utils.data.default_collate([self.dataset[i] for i in range(n)])
        return self._inputs(batch, augment=False)

    # ---- outputs -------------------------------------------------------------------------------------------
    def snapshot(self, stats):
        """Grids, metrics and a checkpoint for the current step (main process only writes). Called by every rank:
        the checkpoint holds every rank's RNG state, gathered here."""
        rng_states = self._gather_rng_states()
        if not self.dist.is_main:
            return None
        tag = f"{self.step:08d}"
        # The checkpoint holds the RNG states from before the grids and metrics, so whatever they draw (a DataLoader
        # iterator's base seed, a network's init, a recipe's sampling) must not reach the training stream either:
        # else the run resumed from this snapshot and the uninterrupted one part ways here.
        saved_rng = self._local_rng_state()
        try:
            for name, (images, nrow) in self.recipe.snapshot_grid().items():
                save_grid(images, self.run_dir / "grids" / f"{name}-{tag}.png", nrow=nrow)
            try:
                strip = self.recipe.interpolate(INTERPOLATION_SEEDS, steps=8)
                save_grid(strip, self.run_dir / "grids" / f"interpolation-{tag}.png", nrow=len(strip))
            except NotImplementedError:
                pass
            if self.cfg.metrics:
                values = self._metrics()
                stats.write_metrics(self.step, values)
        finally:
            ckpt.set_rng_state(saved_rng, self.device, aug=self.aug_generator)
        return ckpt.save_snapshot(self.run_dir, self.step, self.recipe.nets, self.state_dict(rng_states),
                                  keep=self.cfg.keep)

    def _metrics(self) -> dict:
        from . import metrics
        net = self._feature_net()
        gen = torch.Generator(self.device).manual_seed(123)  # the same fakes' noise at every snapshot
        # In order; uint8 (images, labels). Its own generator: an iterator otherwise draws a seed from the global RNG.
        # All real images are read once (their features are cached), so with the training run's decode workers.
        reals = torch.utils.data.DataLoader(self.dataset, batch_size=64, num_workers=self.cfg.workers,
                                            generator=torch.Generator().manual_seed(0))
        # Generated images are measured as StyleGAN2-ADA measures them: quantized to uint8, out-of-range clipped.
        return metrics.compute_metrics(lambda n: metrics.quantize_images(self.recipe.metric_samples(n, gen)), reals,
                                       self.cfg.metrics,
                                       num_images=self.cfg.metrics_images, feature_net=net, device=self.device,
                                       dataset_name=f"{self.cfg.data}@{self.cfg.res}")

    def _feature_net(self):
        if not hasattr(self, "_inception"):
            from .inception import load_inception
            self._inception = load_inception(self.cfg.inception).to(self.device)
        return self._inception

    def _save_config(self):
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")

    # ---- the loop ------------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, recipe, is_main = self.cfg, self.recipe, self.dist.is_main
        if cfg.metrics:
            self._feature_net()  # fail now, not after the first snapshot interval, when the weights are missing
        self._save_config()
        recipe.set_reference_batch(self._reference_batch())
        if is_main and self.step == 0:
            save_grid(recipe.reference_batch[0].float(), self.run_dir / "grids" / "reals.png", nrow=4)
        loader = make_loader(self.dataset, self.ctx.batch_gpu, seed=cfg.seed, rank=self.dist.rank,
                             world_size=self.dist.world_size, start_index=self.step * self.ctx.batch_gpu,
                             workers=cfg.workers, device=self.device)
        stats = StatsWriter(self.run_dir, total_steps=self.total_steps, start_step=self.step, batch=cfg.batch,
                            loss_names=recipe.loss_names, enabled=is_main, progress=cfg.progress and is_main,
                            tensorboard=cfg.tensorboard)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        consecutive, last_snapshot, stopped_by = 0, None, None
        start_time, start_step = time.perf_counter(), self.step
        try:
            with _StopFlag() as stop:
                while self.step < self.total_steps:
                    batch = self._prepare(next(loader))
                    recipe.nonfinite.clear()
                    norm_stats = [b.clone() for b in self._norm_buffers]
                    losses = recipe.train_step(batch, self.step)
                    self.step += 1
                    if recipe.nonfinite:
                        _restore_nonfinite(self._norm_buffers, norm_stats)
                        consecutive += 1
                        self.nonfinite_total += 1
                        stats.warn(f"step {self.step}: non-finite loss in {', '.join(recipe.nonfinite)} "
                                   f"({_format(losses)}); optimizer step skipped ({consecutive} in a row, "
                                   f"{self.nonfinite_total} in total)")
                        if consecutive >= cfg.max_nonfinite:
                            raise TrainingStopped(
                                f"stopped at step {self.step}: {consecutive} steps in a row had a non-finite loss "
                                f"in {', '.join(recipe.nonfinite)}; the weights were not updated by them. Last "
                                f"snapshot: {last_snapshot or 'none'}. Try a lower learning rate, --precision fp32, "
                                f"or check the data; --max-nonfinite sets this limit.")
                    else:
                        consecutive = 0
                        stats.accumulate(losses)
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        stats.log(self.step, nonfinite_total=self.nonfinite_total, device=self.device)
                    stopped_by = stop.signal
                    if self.dist.world_size > 1 and any_rank(stopped_by is not None, self.device):
                        stopped_by = stopped_by or "signal on another rank"  # every rank stops at this step
                    if self.step % cfg.snap == 0 or self.step == self.total_steps or stopped_by:
                        last_snapshot = self.snapshot(stats) or last_snapshot
                    if stopped_by:
                        stats.warn(f"{stopped_by}: wrote a snapshot at step {self.step} and stopped")
                        break
        finally:
            stats.close()
            _close(loader)
        summary = {
            "run_dir": str(self.run_dir),
            "steps": self.step,
            "images_seen": self.step * cfg.batch,
            "wall_time_s": time.perf_counter() - start_time,
            "nonfinite_steps": self.nonfinite_total,
            "stopped_by": stopped_by,
        }
        trained = (self.step - start_step) * cfg.batch
        summary["mean_img_per_s"] = trained / max(summary["wall_time_s"], 1e-9)
        summary["peak_memory_gb"] = _peak_memory_gb(self.device)
        if is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def _check_run_lengths(cfg: TrainConfig):
    """The counts and intervals the loop divides by or compares with, checked before any work (a zero --snap
    would otherwise stop the run with a ZeroDivisionError after its first step)."""
    minimum = {"batch": 1, "steps": 0, "snap": 1, "log_every": 1, "max_nonfinite": 1, "keep": 0, "workers": 0,
               "metrics_images": 2}
    for name, low in minimum.items():
        value = getattr(cfg, name)
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if cfg.kimg is not None and not cfg.kimg > 0:
        raise ValueError(f"--kimg must be > 0, got {cfg.kimg}")


def _norm_running_stats(nets):
    """The running mean/var buffers of every normalization layer: a skipped (non-finite) step must not leave
    NaNs in them, since the eval-mode grids and samples read them."""
    from torch.nn.modules.batchnorm import _NormBase
    return [b for net in nets for m in net.modules() if isinstance(m, _NormBase)
            for b in (m.running_mean, m.running_var) if b is not None]


def _restore_nonfinite(buffers, saved):
    for buf, old in zip(buffers, saved):
        if not torch.isfinite(buf).all():
            buf.copy_(old)


def _close(loader):
    close = getattr(loader, "close", None)
    if close is not None:
        close()


def _format(losses: dict) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())


def _peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource  # CPU: the process's peak resident set (kilobytes on Linux)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def train(cfg: TrainConfig) -> dict:
    """Runs (or resumes) one training run to the end and returns its summary."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        shutdown()


__all__ = ["Trainer", "TrainingStopped", "recipe_options", "train"]
