"""Where image files come from: a folder (searched recursively) or a zip (the StyleGAN2-ADA dataset_tool
layout: images anywhere inside, an optional `dataset.json` at the root). Both name files by their path
relative to the root with forward slashes, which is how `dataset.json` names them too."""
import io
import json
import os
import zipfile
from pathlib import Path

from .images import DataError


class FolderSource:
    """Files under a folder, recursively (symlinked folders followed once; loops pruned)."""

    def __init__(self, root):
        self.root = Path(root)
        self.label, self.name = str(self.root), self.root.resolve().name

    def list_files(self, prefix: str = "") -> list:
        base = self.root / prefix if prefix else self.root
        seen, names = set(), []
        for folder, dirnames, filenames in os.walk(base, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                dirnames[:] = []
                continue
            seen.add(real)
            rel = Path(folder).relative_to(self.root).as_posix()
            names += [name if rel == "." else f"{rel}/{name}" for name in filenames]
        return sorted(names)

    def open(self, name: str):
        return open(self.root / name, "rb")

    open_header = open  # a file reads lazily already

    def read_json(self, name: str):
        path = self.root / name
        if not path.is_file():
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def describe(self, name: str) -> str:
        return str(self.root / name)


class ZipSource:
    """Members of a zip. The ZipFile is opened lazily in each process (DataLoader workers must not share one
    file offset with their parent after a fork) and never pickled."""

    def __init__(self, path):
        self.path = Path(path)
        self.label, self.name = str(self.path), self.path.stem
        self._zip, self._pid = None, None
        try:
            self._names = sorted(info.filename for info in self._zipfile().infolist() if not info.is_dir())
        except (OSError, zipfile.BadZipFile) as error:
            raise DataError(f"cannot read zip {self.path}: {error}") from error

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip

    def __getstate__(self):
        return {**self.__dict__, "_zip": None, "_pid": None}

    def list_files(self, prefix: str = "") -> list:
        return [name for name in self._names if name.startswith(prefix)]

    def open(self, name: str):
        # Read whole: Pillow seeks, which is slow on a compressed zip member.
        return io.BytesIO(self._zipfile().read(name))

    def open_header(self, name: str):
        # Decompresses only as far as the reader reads: a header check must not inflate the whole image.
        return self._zipfile().open(name)

    def read_json(self, name: str):
        if name not in self._names:
            return None
        return json.loads(self._zipfile().read(name).decode("utf-8"))

    def describe(self, name: str) -> str:
        return f"{name} in {self.path}"


def open_source(path):
    """A FolderSource or ZipSource for `path`; DataError naming it when it is neither."""
    path = Path(path)
    if path.is_dir():
        return FolderSource(path)
    if path.is_file() and path.suffix.lower() == ".zip":
        return ZipSource(path)
    if not path.exists():
        raise DataError(f"dataset path does not exist: {path}")
    raise DataError(f"dataset path is neither a folder nor a .zip file: {path}")
