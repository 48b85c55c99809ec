"""fusegan.engine: training (recipes, losses, data, checkpoints, metrics), the CLI, and tools that fuse other models."""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("fusegan")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from .fuse import FuseReport, fuse  # noqa: E402

__all__ = ["FuseReport", "__version__", "fuse"]
