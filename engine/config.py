"""The settings of a training run, as one plain dataclass that round-trips through JSON (checkpoints store it)."""
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

# Fields that describe how this invocation runs rather than what is trained: on --resume they come from the
# new command line, everything else from the checkpoint.
RUNTIME_FIELDS = ("steps", "kimg", "workers", "snap", "keep", "log_every", "max_nonfinite", "metrics",
                  "inception", "metrics_images", "progress", "device", "resume", "tensorboard")


@dataclass
class TrainConfig:
    recipe: str = "dcgan"
    data: Optional[str] = None            # None: the recipe's built-in default ('digits' for dcgan)
    res: Optional[int] = None             # None: the recipe's default resolution
    batch: Optional[int] = None           # global batch over all processes; None: the recipe's default
    steps: Optional[int] = None           # optimizer steps (one batch each); None: from kimg or recipe default
    kimg: Optional[float] = None          # alternative length: thousands of real images shown
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    impl: Optional[str] = None            # 'ref' | 'triton' | None (per-device default)
    device: str = "auto"                  # 'auto' | 'cpu' | 'cuda'
    workers: int = 2
    xflip: bool = False
    cond: bool = False                    # use dataset labels for conditional training
    direction: str = "AtoB"               # pix2pix paired data
    max_bad_fraction: float = 0.05
    snap: int = 500                       # steps between snapshots (grids, metrics, checkpoint)
    keep: int = 3                         # snapshots kept on disk
    log_every: int = 50
    max_nonfinite: int = 10               # consecutive non-finite steps before the run stops
    metrics: tuple = ()
    inception: Optional[str] = None
    metrics_images: int = 5000
    out: str = "runs"
    run_dir: Optional[str] = None
    resume: Optional[str] = None          # a run folder, or 'auto'
    progress: bool = True
    tensorboard: bool = True              # when tensorboard is installed
    recipe_options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["metrics"] = list(self.metrics)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in names})
        cfg.metrics = tuple(cfg.metrics)
        return cfg
