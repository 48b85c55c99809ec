"""Reads NVIDIA StyleGAN2-ADA network pickles without running any of the code inside them.

Their .pkl files pickle "persistent classes": each network is rebuilt by calling
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` carries the module's
Python source and its `__dict__` (parameters, buffers, submodules, constructor kwargs). Importing
that source would execute arbitrary code, so this unpickler resolves only an allow-list of globals:
tensor and storage rebuilding, plain containers and numpy scalars. The persistent-object hook
becomes `PersistentRecord`, a plain record of the class name and state; the embedded source is
kept as text and never executed. Any other global (`os.system`, `builtins.eval`, ...) is refused.
"""
import collections
import dataclasses
import io
import pickle

import numpy as np
import torch


@dataclasses.dataclass
class PersistentRecord:
    """What a persistent-class object of NVIDIA's pickle holds, without its code."""

    class_name: str
    state: dict
    module_src: str = ""

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs", {}) or {})

    def state_dict(self) -> dict:
        """Parameters and buffers of this module tree under PyTorch's dotted names."""
        out = {}
        _collect_tensors(self, "", out)
        return out


def _collect_tensors(node, prefix, out):
    state = node.state if isinstance(node, PersistentRecord) else getattr(node, "__dict__", {})
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if tensor is not None:
                out[prefix + name] = tensor.detach() if isinstance(tensor, torch.Tensor) else tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect_tensors(child, f"{prefix}{name}.", out)


class _PlainModuleState:
    """Stands in for a torch.nn container (e.g. ModuleList) that NVIDIA's pickle stores by class."""

    def __setstate__(self, state):
        self.__dict__.update(state)


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("unexpected persistent-object record in the pickle")
    return PersistentRecord(class_name=str(meta.get("class_name")), state=dict(meta.get("state") or {}),
                            module_src=str(meta.get("module_src", "")))


def _load_storage_from_bytes(data):
    # torch pickles a bare storage as torch.load of a small archive; load it without unpickling objects.
    return torch.load(io.BytesIO(data), weights_only=True)


def _numpy_scalar(dtype, data=None):
    # numpy's own reconstructor for scalars such as np.float64(0.5) in the constructor kwargs.
    return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


def _easydict(*args, **kwargs):
    return dict(*args, **kwargs)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch", "Size"): torch.Size,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _easydict,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): np.dtype,
}
for _dtype in ("float32", "float16", "float64", "bfloat16", "int64", "int32", "uint8", "bool"):
    _ALLOWED[("torch", _dtype)] = getattr(torch, _dtype)
for _storage in ("FloatStorage", "HalfStorage", "DoubleStorage", "LongStorage", "IntStorage", "ByteStorage",
                 "BoolStorage", "BFloat16Storage"):
    _ALLOWED[("torch", _storage)] = getattr(torch, _storage)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds tensors and plain containers only."""

    def find_class(self, module, name):
        target = _ALLOWED.get((module, name))
        if target is not None:
            return target
        if module.startswith("torch.nn.modules."):
            return _PlainModuleState  # containers such as ModuleList: state only, no code
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: an NVIDIA network pickle needs only tensors, "
            "plain containers and persistent-class records")


def load_pickle(file) -> dict:
    """Unpickles an NVIDIA StyleGAN2-ADA network pickle (path or binary file) into plain records."""
    if isinstance(file, (str, bytes)) or hasattr(file, "__fspath__"):
        with open(file, "rb") as f:
            return RestrictedUnpickler(f).load()
    return RestrictedUnpickler(file).load()
