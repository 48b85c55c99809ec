"""Reads NVIDIA StyleGAN2-ADA network pickles without running any of the code inside them.

Their .pkl files pickle "persistent classes": each network is rebuilt by calling
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` carries the module's
Python source and its `__dict__` (parameters, buffers, submodules, constructor kwargs). Importing
that source would execute arbitrary code, so this unpickler resolves only an allow-list of globals:
tensor and storage rebuilding, plain containers and numpy scalars. The persistent-object hook
becomes `PersistentRecord`, a plain record of the class name and state; the embedded source is
kept as text and never executed. Any other global (`os.system`, `builtins.eval`, ...) is refused.

The allowed callables are wrappers that check their arguments before touching torch or numpy: a
pickle is attacker-controlled data, and torch's `set_` does not bounds-check a tensor view against
its storage (an out-of-bounds read), nor does numpy survive every `dtype.__setstate__` (a crash).
"""
import collections
import dataclasses
import io
import pickle

import numpy as np
import torch


class NetworkPickleError(pickle.UnpicklingError, ValueError):
    """A network pickle that is refused (foreign global) or malformed. Also a ValueError, so that
    callers which report bad input files (`fusegan convert`) report this one too."""


@dataclasses.dataclass
class PersistentRecord:
    """What a persistent-class object of NVIDIA's pickle holds, without its code."""

    class_name: str
    state: dict
    module_src: str = ""

    def __setstate__(self, state):
        # A pickle's BUILD opcode on a record would add attributes that shadow its methods (state_dict, ...).
        # Real pickles never BUILD one: its state arrives inside the persistent-object meta.
        raise NetworkPickleError("a network pickle may not set the state of a persistent-class record")

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs", {}) or {})

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args", ()) or ())

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
        if not isinstance(state, dict):
            raise NetworkPickleError("a torch.nn module's pickled state must be a dict")
        self.__dict__.update(state)


class _EasyDict(dict):
    """`dnnlib.util.EasyDict` (the constructor kwargs): pickled as NEWOBJ + SETITEMS, so it must be a class."""


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise NetworkPickleError("unexpected persistent-object record in the pickle")
    state = meta.get("state") or {}
    if not isinstance(state, dict):
        raise NetworkPickleError("a persistent-object record's state must be a dict")
    # module_src is kept as text only: it is never compiled, imported or executed.
    return PersistentRecord(class_name=str(meta.get("class_name")), state=dict(state),
                            module_src=str(meta.get("module_src", "")))


def _require(ok, what):
    if not ok:
        raise NetworkPickleError(f"malformed network pickle: {what}")


def _is_int_tuple(value):
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _check_hooks(hooks, fn):
    # Real pickles carry an empty OrderedDict; anything else would attach callables to the tensor.
    _require(isinstance(hooks, dict) and not hooks, f"{fn}: backward_hooks must be empty")


def _load_storage_from_bytes(data):
    # torch pickles a bare storage as a small legacy torch.save archive; torch.load(weights_only=True)
    # reads it with torch's own restricted unpickler and checks the byte count against the data.
    _require(isinstance(data, (bytes, bytearray)), "torch.storage._load_from_bytes needs bytes")
    try:
        storage = torch.load(io.BytesIO(bytes(data)), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the nested archive is a bad pickle
        raise NetworkPickleError(f"torch.storage._load_from_bytes: {str(exc).splitlines()[0]}") from exc
    _require(isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)),
             f"torch.storage._load_from_bytes returned a {type(storage).__name__}, not a storage")
    return storage


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    fn = "torch._utils._rebuild_tensor_v2"
    _require(isinstance(storage, torch.TypedStorage), f"{fn}: the storage argument is a {type(storage).__name__}")
    _require(isinstance(storage_offset, int) and storage_offset >= 0, f"{fn}: bad storage offset {storage_offset!r}")
    _require(_is_int_tuple(size) and _is_int_tuple(stride) and len(size) == len(stride),
             f"{fn}: size and stride must be tuples of ints of the same length")
    _require(all(s >= 0 for s in size) and all(s >= 0 for s in stride), f"{fn}: negative size or stride")
    _require(isinstance(requires_grad, bool), f"{fn}: requires_grad must be a bool")
    _check_hooks(backward_hooks, fn)
    _require(metadata is None or (isinstance(metadata, dict) and all(isinstance(v, bool) for v in metadata.values())),
             f"{fn}: unexpected tensor metadata")
    # torch's set_ does not check that the view lies inside the storage: an oversized view reads
    # (and leaks) whatever memory follows it. Check the last element's index ourselves.
    if all(size):
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        numel = storage._untyped_storage.nbytes() // torch._utils._element_size(storage.dtype)
        _require(last < numel, f"{fn}: a tensor of size {tuple(size)}, stride {tuple(stride)} and offset "
                 f"{storage_offset} reaches element {last} of a storage of {numel}")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), requires_grad,
                                           collections.OrderedDict(), metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    fn = "torch._utils._rebuild_parameter"
    _require(isinstance(data, torch.Tensor), f"{fn}: data is a {type(data).__name__}, not a tensor")
    _require(isinstance(requires_grad, bool), f"{fn}: requires_grad must be a bool")
    _check_hooks(backward_hooks, fn)
    return torch.nn.Parameter(data, requires_grad)


_SCALAR_KINDS = "biufc"  # bool, int, uint, float, complex: all a constructor kwarg can be


class _NumpyDtypeSpec:
    """What `numpy.dtype(...)` + BUILD records in a pickle, kept as data.

    The real `np.dtype.__setstate__` accepts sub-array and field layouts that crash numpy later, so
    the dtype is only made (by `_numpy_scalar`) from a plain type code and byte order.
    """

    def __init__(self, code, align=False, copy=True):  # noqa: ARG002 - numpy's pickled signature
        _require(isinstance(code, str), "numpy.dtype needs a type code")
        self.code, self.byteorder = code, "="

    def __setstate__(self, state):
        _require(isinstance(state, tuple) and len(state) >= 5 and all(v is None for v in state[2:5])
                 and state[1] in ("<", ">", "=", "|"), "only plain numeric numpy dtypes may be pickled")
        self.byteorder = state[1]


def _numpy_scalar(dtype, data=None):
    # numpy's own reconstructor for scalars such as np.float64(0.5) in the constructor kwargs.
    _require(isinstance(dtype, _NumpyDtypeSpec), "numpy scalar without a dtype")
    try:
        real = np.dtype(dtype.code)
    except TypeError as exc:
        raise NetworkPickleError(f"unknown numpy type code {dtype.code!r}") from exc
    _require(real.kind in _SCALAR_KINDS and not real.fields and not real.subdtype,
             f"numpy scalar of dtype {real} is not a plain number")
    real = real.newbyteorder(dtype.byteorder) if dtype.byteorder in "<>" else real
    if data is None:
        return real.type()
    _require(isinstance(data, bytes) and len(data) == real.itemsize, f"numpy {real} scalar needs {real.itemsize} bytes")
    return np.frombuffer(data, dtype=real)[0]


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,  # protocol <= 3 pickles nn.Module's _non_persistent_buffers_set as set([])
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch", "Size"): torch.Size,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _NumpyDtypeSpec,
}
for _dtype in ("float32", "float16", "float64", "bfloat16", "int64", "int32", "uint8", "bool"):
    _ALLOWED[("torch", _dtype)] = getattr(torch, _dtype)  # values, not callables


def _is_torch_nn_module_class(module, name):
    cls = getattr(torch.nn, name, None)
    return isinstance(cls, type) and issubclass(cls, torch.nn.Module) and cls.__module__ == module


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds tensors and plain containers only."""

    def find_class(self, module, name):
        target = _ALLOWED.get((module, name))
        if target is not None:
            return target
        if module.startswith("torch.nn.modules.") and _is_torch_nn_module_class(module, name):
            return _PlainModuleState  # containers such as ModuleList: state only, no code
        raise NetworkPickleError(
            f"refusing to load global {module}.{name}: an NVIDIA network pickle needs only tensors, "
            "plain containers and persistent-class records")

    def persistent_load(self, pid):
        raise NetworkPickleError(f"refusing persistent id {str(pid)[:80]!r}: a network pickle has none")


def load_pickle(file) -> dict:
    """Unpickles an NVIDIA StyleGAN2-ADA network pickle (path or binary file) into plain records.

    Raises NetworkPickleError (a pickle.UnpicklingError and a ValueError) for a refused global or a
    malformed pickle.
    """
    if isinstance(file, (str, bytes)) or hasattr(file, "__fspath__"):
        with open(file, "rb") as f:
            return _load(f)
    return _load(file)


def _load(f):
    try:
        return RestrictedUnpickler(f).load()
    except NetworkPickleError:
        raise
    except (pickle.UnpicklingError, TypeError, AttributeError, ValueError, KeyError, IndexError, RuntimeError,
            EOFError, OverflowError, MemoryError) as exc:
        # The payload is data: any error rebuilding it means a malformed (or hostile) file.
        raise NetworkPickleError(f"malformed network pickle: {type(exc).__name__}: {exc}") from exc
