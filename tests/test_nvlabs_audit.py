"""Adversarial tests of NVIDIA StyleGAN2-ADA weight loading: the restricted unpickler, architecture
inference from state dicts, and the safetensors conversion round trip.

Malicious pickles are written opcode by opcode (or through __reduce__) so that, were any of them
executed, they would create a marker file: every refusal test asserts that the file does not exist.
"""
import collections
import contextlib
import io
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
import textwrap
import types

import numpy as np
import pytest
import torch

from fusegan.models.stylegan2 import Discriminator, Generator, infer_discriminator_kwargs, infer_generator_kwargs
from fusegan.models.stylegan2.nvlabs import load_nvlabs, save_nvlabs_safetensors
from fusegan.models.stylegan2.nvlabs_pickle import NetworkPickleError, PersistentRecord, load_pickle

TINY = dict(channel_base=64, channel_max=8)  # channels 8 at every resolution up to 8x8


# --------------------------------------------------------------------------------------------------
# Hand-made pickle opcodes
# --------------------------------------------------------------------------------------------------

def _str(s):  # SHORT_BINUNICODE
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def _stack_global(module, name):  # protocol 4 STACK_GLOBAL
    return _str(module) + _str(name) + b"\x93"


def _global(module, name):  # protocol 0-3 GLOBAL
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _proto4_call(module, name, *str_args):
    """PROTO 4: module.name(*str_args) through STACK_GLOBAL + REDUCE."""
    args = b"(" + b"".join(_str(a) for a in str_args) + b"t"
    return b"\x80\x04" + _stack_global(module, name) + args + b"R."


class _Reduce:
    """Pickles as fn(*args): for REDUCE payloads on (real) callables with attacker-chosen args."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a pickle payload was executed"


def _evil_payloads(marker, tmp_path):
    touch = f"touch {marker}"
    write = f"open({str(marker)!r}, 'w').write('x')"
    evil_npy = tmp_path / "evil.npy"
    np.save(evil_npy, np.array([_Reduce(os.system, touch)], dtype=object), allow_pickle=True)
    evil_torch = io.BytesIO()
    torch.save(_Reduce(os.system, touch), evil_torch, _use_new_zipfile_serialization=False)
    return {
        "proto2 GLOBAL os.system": (b"\x80\x02" + _global("os", "system") + b"X" + len(touch).to_bytes(4, "little")
                                    + touch.encode() + b"\x85R.", r"os\.system"),
        "proto4 STACK_GLOBAL posix.system": (_proto4_call("posix", "system", touch), r"posix\.system"),
        "builtins.eval": (_proto4_call("builtins", "eval", write), r"builtins\.eval"),
        "builtins.exec": (_proto4_call("builtins", "exec", write), r"builtins\.exec"),
        "builtins.getattr": (_proto4_call("builtins", "getattr", "os", "system"), r"builtins\.getattr"),
        "functools.partial": (_proto4_call("functools", "partial", "x"), r"functools\.partial"),
        "torch.load": (_proto4_call("torch", "load", str(evil_npy)), r"torch\.load"),
        # numpy.load(path, None, True) would unpickle the object array inside evil.npy, running os.system.
        "numpy.load allow_pickle": (b"\x80\x04" + _stack_global("numpy", "load") + b"(" + _str(str(evil_npy))
                                    + b"N\x88tR.", r"numpy\.load"),
        "INST os.system": (b"(S'" + touch.encode() + b"'\nios\nsystem\n.", r"os\.system"),
        "OBJ os.system": (b"(" + _global("os", "system") + b"S'" + touch.encode() + b"'\no.", r"os\.system"),
        "NEWOBJ subprocess.Popen": (b"\x80\x04" + _stack_global("subprocess", "Popen") + b"(" + _str("touch")
                                    + _str(str(marker)) + b"l\x85\x81.", r"subprocess\.Popen"),
        "NEWOBJ_EX subprocess.Popen": (b"\x80\x04" + _stack_global("subprocess", "Popen") + b"(" + _str("touch")
                                       + _str(str(marker)) + b"l\x85}\x92.", r"subprocess\.Popen"),
        "torch.nn.modules prefix with a foreign name": (_proto4_call("torch.nn.modules.evil", "system", touch),
                                                        r"torch\.nn\.modules\.evil\.system"),
        "persistent id": (b"\x80\x02X\x04\x00\x00\x00evilQ.", r"persistent id"),
        "nested pickle in a storage": (pickle.dumps(_Reduce(torch.storage._load_from_bytes, evil_torch.getvalue()),
                                                    protocol=4), r"_load_from_bytes"),
    }


def _payload_ids():
    with tempfile.TemporaryDirectory() as d:
        return list(_evil_payloads(os.path.join(d, "marker"), pathlib.Path(d)))


@pytest.mark.parametrize("name", _payload_ids())
def test_a_pickle_with_a_foreign_global_is_refused_and_never_runs(name, marker, tmp_path):
    data, offending = _evil_payloads(marker, tmp_path)[name]
    with pytest.raises(NetworkPickleError, match=offending):
        load_pickle(io.BytesIO(data))
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=offending):  # NetworkPickleError is a ValueError too
        load_nvlabs(str(path))
    assert not marker.exists()


@contextlib.contextmanager
def _registered_extension(module, name, code):
    import copyreg
    copyreg.add_extension(module, name, code)
    try:
        yield
    finally:
        copyreg.remove_extension(module, name, code)


def test_extension_registry_opcodes_go_through_the_allow_list(marker):
    # EXT2 names a global by a number registered in copyreg; the unpickler must still refuse it.
    data = pickle.dumps(_Reduce(os.system, f"touch {marker}"), protocol=2)
    with _registered_extension(os.system.__module__, "system", 0x1F00):
        ext = pickle.dumps(_Reduce(os.system, f"touch {marker}"), protocol=2)
        assert ext != data and b"\x83" in ext  # really an EXT2 opcode
        with pytest.raises(NetworkPickleError, match=r"\.system"):
            load_pickle(io.BytesIO(ext))
    with pytest.raises(NetworkPickleError, match="extension"):  # unregistered code: a clear error, no lookup
        load_pickle(io.BytesIO(ext))


def _tensor_pickle(*args):
    return pickle.dumps(_Reduce(torch._utils._rebuild_tensor_v2, *args), protocol=4)


def _storage():
    return torch.arange(4.0).storage()


@pytest.mark.filterwarnings("ignore::UserWarning")  # TypedStorage deprecation
@pytest.mark.parametrize("label, data, message", [
    # torch's set_ does not bounds-check: without our check this reads (and returns) memory past the storage.
    ("view past the storage end", lambda: _tensor_pickle(_storage(), 0, (100,), (1,), False,
                                                         collections.OrderedDict()), "reaches element 99"),
    ("offset past the end", lambda: _tensor_pickle(_storage(), 3, (2,), (1,), False, collections.OrderedDict()),
     "reaches element 4"),
    ("2-d view past the end", lambda: _tensor_pickle(_storage(), 0, (2, 2), (3, 1), False, collections.OrderedDict()),
     "reaches element 4"),
    ("negative offset", lambda: _tensor_pickle(_storage(), -2, (4,), (1,), False, collections.OrderedDict()),
     "storage offset"),
    ("negative stride", lambda: _tensor_pickle(_storage(), 3, (4,), (-1,), False, collections.OrderedDict()),
     "negative"),
    ("storage is an int", lambda: _tensor_pickle(5, 0, (4,), (1,), False, collections.OrderedDict()), "storage"),
    ("size is a string", lambda: _tensor_pickle(_storage(), 0, "abc", (1,), False, collections.OrderedDict()),
     "tuples of ints"),
    ("backward hooks carried in", lambda: _tensor_pickle(_storage(), 0, (4,), (1,), False,
                                                         collections.OrderedDict(a=collections.OrderedDict)),
     "backward_hooks"),
    ("parameter of a string", lambda: pickle.dumps(_Reduce(torch._utils._rebuild_parameter, "x", False,
                                                           collections.OrderedDict()), protocol=4), "not a tensor"),
    ("storage bytes holding a tensor", lambda: pickle.dumps(
        _Reduce(torch.storage._load_from_bytes, _torch_save_legacy(torch.zeros(2))), protocol=4), "not a storage"),
    # torch.FloatStorage(n) allocates n floats chosen by the file: real pickles never call storage classes.
    ("storage class allocation", lambda: b"\x80\x04" + _stack_global("torch", "FloatStorage")
     + b"J\x00\x00\x00\x01\x85R.", r"torch\.FloatStorage"),
    ("numpy object scalar", lambda: _numpy_scalar_pickle("O", b"\0" * 8), "not a plain number"),
    ("numpy scalar with short data", lambda: _numpy_scalar_pickle("f8", b"\0" * 3), "needs 8 bytes"),
    ("BUILD onto a persistent record", lambda: _record_then_build(), "may not set the state"),
])
def test_allowed_callables_refuse_hostile_arguments(label, data, message):
    with pytest.raises(NetworkPickleError, match=message):
        load_pickle(io.BytesIO(data()))


def _torch_save_legacy(obj):
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _numpy_scalar_pickle(code, data):
    dtype = _stack_global("numpy", "dtype") + _str(code) + b"\x89\x88\x87R"
    state = b"(K\x03" + _str("|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    data_op = b"C" + bytes([len(data)]) + data
    return b"\x80\x04" + _stack_global("numpy._core.multiarray", "scalar") + dtype + state + data_op + b"\x86R."


def _record_then_build():
    # A persistent record followed by BUILD with slot state: would shadow PersistentRecord.state_dict.
    meta = b"}(" + _str("type") + _str("class") + _str("class_name") + _str("Generator") + b"u"
    slotstate = b"N}" + _str("state_dict") + _stack_global("collections", "OrderedDict") + b"s\x86"
    return (b"\x80\x04" + _stack_global("torch_utils.persistence", "_reconstruct_persistent_obj") + meta + b"\x85R"
            + slotstate + b"b.")


def _subarray_dtype_scalar_pickle():
    # np.dtype.__setstate__ accepts a sub-array layout of 10**12 float64 in an 8-byte item: reading it crashes.
    f8 = _stack_global("numpy", "dtype") + _str("f8") + b"\x89\x88\x87R"
    state = (b"(K\x03" + _str("<") + f8 + b"\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85\x86"
             + b"NNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    return (b"\x80\x04" + _stack_global("numpy._core.multiarray", "scalar") + f8 + state + b"C\x08" + b"\0" * 8
            + b"\x86R.")


@pytest.mark.parametrize("make", [
    _subarray_dtype_scalar_pickle,
    # An object-dtype scalar read from the file's bytes is a PyObject pointer chosen by the file.
    lambda: _numpy_scalar_pickle("O", b"\x41" * 8),
], ids=["sub-array dtype state", "object scalar from raw bytes"])
def test_numpy_payloads_cannot_crash_the_process(make, tmp_path):
    # Run in a child process, so that a crash (SIGSEGV) is a test failure and not the end of pytest.
    path = tmp_path / "numpy.pkl"
    path.write_bytes(make())
    code = textwrap.dedent(f"""
        from fusegan.models.stylegan2.nvlabs_pickle import NetworkPickleError, load_pickle
        try:
            load_pickle({str(path)!r})
        except NetworkPickleError as exc:
            print("refused:", exc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the unpickler crashed the process (rc {done.returncode}): {done.stderr[-500:]}"
    assert "refused: malformed network pickle" in done.stdout


def test_plain_numpy_scalars_and_sets_still_load():
    data = {"f": np.float64(0.5), "i": np.int64(-3), "b": np.bool_(True), "u": np.uint8(7), "s": {1, 2}}
    for protocol in (3, 4, 5):
        out = load_pickle(io.BytesIO(pickle.dumps(data, protocol=protocol)))
        assert out == data and type(out["f"]) is np.float64 and type(out["i"]) is np.int64


# --------------------------------------------------------------------------------------------------
# NVIDIA-format network pickles: torch_utils.persistence records, dnnlib.EasyDict kwargs, protocol 3 and 4
# --------------------------------------------------------------------------------------------------

class EasyDict(dict):
    """dnnlib.util.EasyDict as NVIDIA defines it: a dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


EMBEDDED_SOURCE = "open({marker!r}, 'w').write('the embedded source ran')"
_MODULE_STATE_KEYS = set(torch.nn.Module().__dict__)  # what nn.Module.__dict__ holds: params, buffers, hooks, ...


def _reconstruct_persistent_obj(meta):  # stand-in: only its name is pickled
    raise AssertionError("never called")


class _Persistent:
    """Pickles like an object of NVIDIA's torch_utils.persistence: (_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, module, marker, init_kwargs=None, init_args=(), class_name=None, extra_state=None):
        self.module, self.marker = module, marker
        self.init_kwargs, self.init_args = init_kwargs or {}, init_args
        self.class_name = class_name or type(module).__name__
        self.extra_state = extra_state or {}

    def __reduce__(self):
        state = {k: v for k, v in self.module.__dict__.items() if k in _MODULE_STATE_KEYS}
        state["_modules"] = collections.OrderedDict(
            (n, _Persistent(m, self.marker)) for n, m in self.module._modules.items() if m is not None)
        state.update(_init_args=tuple(self.init_args), _init_kwargs=EasyDict(self.init_kwargs), **self.extra_state)
        meta = dict(type="class", version=4, module_src=EMBEDDED_SOURCE.format(marker=str(self.marker)),
                    class_name=self.class_name, state=state)
        return (_reconstruct_persistent_obj, (meta,))


@contextlib.contextmanager
def _nvidia_module_names():
    """Lets pickle name the stand-ins as torch_utils.persistence._reconstruct_persistent_obj and dnnlib.util.EasyDict."""
    names = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")
    saved = {n: sys.modules.get(n) for n in names}
    persistence, util = types.ModuleType("torch_utils.persistence"), types.ModuleType("dnnlib.util")
    persistence._reconstruct_persistent_obj, util.EasyDict = _reconstruct_persistent_obj, EasyDict
    fn_names, cls_names = (_reconstruct_persistent_obj.__module__, _reconstruct_persistent_obj.__qualname__), \
        (EasyDict.__module__, EasyDict.__qualname__)
    _reconstruct_persistent_obj.__module__, EasyDict.__module__ = "torch_utils.persistence", "dnnlib.util"
    _reconstruct_persistent_obj.__qualname__, EasyDict.__qualname__ = "_reconstruct_persistent_obj", "EasyDict"
    sys.modules.update({"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
                        "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util})
    try:
        yield
    finally:
        (_reconstruct_persistent_obj.__module__, _reconstruct_persistent_obj.__qualname__), \
            (EasyDict.__module__, EasyDict.__qualname__) = fn_names, cls_names
        for n, mod in saved.items():
            if mod is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = mod


def _perturbed(net, seed):
    """Every parameter and buffer moved off its init (as the golden vector does), so every term is tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.add_(0.1 * torch.randn(t.shape, generator=gen))
    return net.eval()


# NVIDIA's train.py builds G and D from EasyDicts like these; conv_clamp and the mbstd group size are small
# here so that they change the outputs (no tensor records them: a conversion must keep them).
def _nvidia_g_kwargs():
    return dict(z_dim=8, w_dim=8, c_dim=0, img_resolution=8, img_channels=3,
                mapping_kwargs=EasyDict(num_layers=2, lr_multiplier=0.1),
                synthesis_kwargs=EasyDict(num_fp16_res=0, conv_clamp=0.5, **TINY))


def _nvidia_d_kwargs():
    return dict(c_dim=0, img_resolution=8, img_channels=3, block_kwargs=EasyDict(), mapping_kwargs=EasyDict(),
                epilogue_kwargs=EasyDict(mbstd_group_size=2), num_fp16_res=0, conv_clamp=0.5, **TINY)


@pytest.fixture(scope="module")
def nvidia_nets():
    g_kwargs, d_kwargs = _nvidia_g_kwargs(), _nvidia_d_kwargs()
    G = _perturbed(Generator(**g_kwargs, impl="ref"), 1)
    D = _perturbed(Discriminator(**d_kwargs, impl="ref"), 2)
    return G, D, g_kwargs, d_kwargs


def _nvidia_pickle(nvidia_nets, marker, protocol, g_init_args=None, **extra):
    G, D, g_kwargs, d_kwargs = nvidia_nets
    g_args = ()
    if g_init_args:  # NVIDIA's persistence records positional constructor args apart from the kwargs
        g_args = tuple(g_kwargs[k] for k in g_init_args)
        g_kwargs = {k: v for k, v in g_kwargs.items() if k not in g_init_args}
    aug = torch.nn.Module()
    aug.register_buffer("p", torch.zeros([]))
    snapshot = {"G": _Persistent(G, marker, g_kwargs, g_args), "D": _Persistent(D, marker, d_kwargs),
                "G_ema": _Persistent(G, marker, g_kwargs, g_args),
                "augment_pipe": _Persistent(aug, marker, EasyDict(xflip=1.0), class_name="AugmentPipe"),
                "training_set_kwargs": dict(class_name="training.dataset.ImageFolderDataset", path="x.zip",
                                            use_labels=False, max_size=None, xflip=False, resolution=8)}
    snapshot.update(extra)
    with _nvidia_module_names():
        return pickle.dumps(snapshot, protocol=protocol)


def _outputs(nets, G, D):
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = {name: net(z, None, truncation_psi=0.7, noise_mode="const") for name, net in nets.items()
               if name != "D"}
        want = G(z, None, truncation_psi=0.7, noise_mode="const")
        img = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
        return got, want, nets["D"](img, None), D(img, None)


@pytest.mark.parametrize("protocol", [3, 4])  # NVIDIA's Python 3.7 wrote protocol 3 (sets as builtins.set)
def test_nvidia_format_pickle_loads_with_its_recorded_kwargs(nvidia_nets, marker, tmp_path, protocol):
    G, D, _, _ = nvidia_nets
    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(_nvidia_pickle(nvidia_nets, marker, protocol))
    assert b"dnnlib.util" in path.read_bytes() and b"EasyDict" in path.read_bytes()
    nets = load_nvlabs(str(path), impl="ref")
    assert set(nets) == {"G", "D", "G_ema"}
    assert nets["D"].b4.mbstd.group_size == 2 and nets["G"].synthesis.b8.conv1.conv_clamp == 0.5
    got, want, logits, want_logits = _outputs(nets, G, D)
    for img in got.values():
        torch.testing.assert_close(img, want, rtol=0, atol=0)
    torch.testing.assert_close(logits, want_logits, rtol=0, atol=0)


def test_embedded_source_and_nested_pickles_are_kept_as_data(nvidia_nets, marker):
    nested = pickle.dumps(_Reduce(os.system, f"touch {marker}"))
    G, D, g_kwargs, _ = nvidia_nets
    with _nvidia_module_names():
        data = pickle.dumps({"G": _Persistent(G, marker, g_kwargs, extra_state={"_blob": nested})}, protocol=4)
    record = load_pickle(io.BytesIO(data))["G"]
    assert isinstance(record, PersistentRecord) and record.class_name == "Generator"
    assert record.module_src == EMBEDDED_SOURCE.format(marker=str(marker))
    assert record.state["_blob"] == nested  # bytes, never unpickled
    assert isinstance(record.state["_modules"]["mapping"], PersistentRecord)


def test_positional_init_args_of_a_persistent_class_are_used(nvidia_nets, marker, tmp_path):
    path = tmp_path / "positional.pkl"
    path.write_bytes(_nvidia_pickle(nvidia_nets, marker, 4, g_init_args=("z_dim", "c_dim", "w_dim")))
    nets = load_nvlabs(str(path), impl="ref")
    got, want, _, _ = _outputs(nets, *nvidia_nets[:2])
    torch.testing.assert_close(got["G_ema"], want, rtol=0, atol=0)
    assert nets["G"].init_kwargs["z_dim"] == 8  # recorded as a kwarg, so a conversion keeps it


def test_pickle_suffix_is_case_insensitive(nvidia_nets, marker, tmp_path):
    path = tmp_path / "NETWORK.PKL"
    path.write_bytes(_nvidia_pickle(nvidia_nets, marker, 4))
    assert set(load_nvlabs(str(path), impl="ref")) == {"G", "D", "G_ema"}


def test_pickle_with_wrong_recorded_kwargs_is_a_clear_error(nvidia_nets, marker, tmp_path):
    G, D, g_kwargs, _ = nvidia_nets
    with _nvidia_module_names():
        unknown = pickle.dumps({"G": _Persistent(G, marker, dict(g_kwargs, no_such_kwarg=1))}, protocol=4)
        wrong_res = pickle.dumps({"G": _Persistent(G, marker, dict(g_kwargs, img_resolution=16))}, protocol=4)
    with pytest.raises(ValueError, match="G: cannot build a Generator.*no_such_kwarg"):
        load_nvlabs(load_pickle(io.BytesIO(unknown)))
    with pytest.raises(ValueError, match="G: state dict does not match.*missing.*b16"):
        load_nvlabs(load_pickle(io.BytesIO(wrong_res)))


# --------------------------------------------------------------------------------------------------
# Conversion to safetensors
# --------------------------------------------------------------------------------------------------

def _assert_same_nets(a, b, G, D):
    assert set(a) == set(b)
    for name in a:
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            torch.testing.assert_close(sb[key], sa[key], rtol=0, atol=0)
    got_a, want, logits_a, want_logits = _outputs(a, G, D)
    got_b, _, logits_b, _ = _outputs(b, G, D)
    for name in got_a:
        torch.testing.assert_close(got_b[name], got_a[name], rtol=0, atol=0)
        torch.testing.assert_close(got_b[name], want, rtol=0, atol=0)
    torch.testing.assert_close(logits_b, logits_a, rtol=0, atol=0)
    torch.testing.assert_close(logits_b, want_logits, rtol=0, atol=0)


def test_safetensors_round_trip_keeps_the_pickle_kwargs(nvidia_nets, marker, tmp_path):
    # conv_clamp, the mbstd group size and the mapping lr multiplier are in no tensor: without them in the
    # file's metadata the converted networks would give other images and logits than the pickle's.
    pkl = tmp_path / "net.pkl"
    pkl.write_bytes(_nvidia_pickle(nvidia_nets, marker, 4))
    from_pickle = load_nvlabs(str(pkl), impl="ref")
    out = tmp_path / "net.safetensors"
    assert save_nvlabs_safetensors(from_pickle, out) == sum(len(n.state_dict()) for n in from_pickle.values())
    _assert_same_nets(from_pickle, load_nvlabs(str(out), impl="ref"), *nvidia_nets[:2])


def test_safetensors_round_trip_of_an_inferred_state_dict(nvidia_nets, tmp_path):
    G, D, _, _ = nvidia_nets
    sd = {f"G.{k}": v for k, v in G.state_dict().items()} | {f"D.{k}": v for k, v in D.state_dict().items()}
    nets = load_nvlabs(sd, mbstd_group_size=2, conv_clamp=0.5, mapping_lr_multiplier=0.1, impl="ref")
    out = tmp_path / "sd.safetensors"
    save_nvlabs_safetensors(nets, out)
    _assert_same_nets(nets, load_nvlabs(str(out), impl="ref"), G, D)


def test_malformed_safetensors_metadata_is_a_clear_error(nvidia_nets, tmp_path):
    from safetensors.torch import save_file

    G = nvidia_nets[0]
    path = tmp_path / "bad.safetensors"
    save_file({f"G.{k}": v.contiguous() for k, v in G.state_dict().items()}, str(path),
              metadata={"fusegan.nvlabs_kwargs": '{"G": {"class": "os.system", "kwargs": {}}}'})
    with pytest.raises(ValueError, match="malformed fusegan.nvlabs_kwargs"):
        load_nvlabs(str(path))


def test_cli_convert_refuses_a_malicious_pickle_in_one_line(marker, tmp_path, capsys):
    from fusegan.engine.cli import main

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Reduce(os.system, f"touch {marker}")}))
    assert main(["convert", str(path), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing to load global" in err[0] and "system" in err[0]
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_convert_of_a_pickle_loads_back_the_same_networks(nvidia_nets, marker, tmp_path):
    from fusegan.engine.cli import main

    pkl, out = tmp_path / "net.pkl", tmp_path / "net.safetensors"
    pkl.write_bytes(_nvidia_pickle(nvidia_nets, marker, 4))
    assert main(["convert", str(pkl), "--out", str(out)]) == 0
    _assert_same_nets(load_nvlabs(str(pkl), impl="ref"), load_nvlabs(str(out), impl="ref"), *nvidia_nets[:2])


# --------------------------------------------------------------------------------------------------
# Architecture inference from state dicts
# --------------------------------------------------------------------------------------------------

G_CONFIGS = {
    "skip": dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                 mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(TINY)),
    "resnet, conditional": dict(z_dim=6, c_dim=3, w_dim=8, img_resolution=8, img_channels=3,
                                mapping_kwargs=dict(num_layers=3, embed_features=5, layer_features=7),
                                synthesis_kwargs=dict(architecture="resnet", **TINY)),
    "orig, 1 channel, 1 layer": dict(z_dim=8, c_dim=0, w_dim=4, img_resolution=16, img_channels=1,
                                     mapping_kwargs=dict(num_layers=1),
                                     synthesis_kwargs=dict(architecture="orig", **TINY)),
    # base 200, max 32: channels {4: 32, 8: 25, 16: 12}; the smallest base reproducing them is 200.
    "channel_base not a power of two": dict(z_dim=4, c_dim=0, w_dim=4, img_resolution=16, img_channels=3,
                                            mapping_kwargs=dict(num_layers=1),
                                            synthesis_kwargs=dict(channel_base=200, channel_max=32)),
}
D_CONFIGS = {
    "resnet": dict(c_dim=0, img_resolution=8, img_channels=3, **TINY),
    "skip, conditional": dict(c_dim=3, img_resolution=8, img_channels=3, architecture="skip", cmap_dim=6,
                              mapping_kwargs=dict(num_layers=2), **TINY),
    "orig, 2 mbstd channels": dict(c_dim=0, img_resolution=16, img_channels=1, architecture="orig",
                                   mbstd_num_channels=2, **TINY),
    "channel_base not a power of two": dict(c_dim=0, img_resolution=16, img_channels=3, channel_base=200,
                                            channel_max=32),
}


NVIDIA_DEFAULTS = dict(mbstd_group_size=4, mapping_lr_multiplier=0.01, conv_clamp=None, num_fp16_res=0)


@pytest.mark.parametrize("config", G_CONFIGS)
def test_generator_architecture_is_inferred_from_its_state_dict(config):
    kwargs = G_CONFIGS[config]
    G = _perturbed(Generator(**kwargs, impl="ref"), 5)
    loaded = load_nvlabs({f"G_ema.{k}": v for k, v in G.state_dict().items()}, impl="ref")["G_ema"]
    inferred = infer_generator_kwargs(G.state_dict(), NVIDIA_DEFAULTS)
    for key in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"):
        assert inferred[key] == kwargs[key], key
    assert inferred["mapping_kwargs"]["num_layers"] == kwargs["mapping_kwargs"]["num_layers"]
    assert inferred["synthesis_kwargs"]["architecture"] == kwargs["synthesis_kwargs"].get("architecture", "skip")
    z = torch.randn(3, kwargs["z_dim"], generator=torch.Generator().manual_seed(6))
    c = torch.eye(max(kwargs["c_dim"], 1))[:3, :kwargs["c_dim"]] if kwargs["c_dim"] else None
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, c, truncation_psi=0.7, noise_mode="const"),
                                   G(z, c, truncation_psi=0.7, noise_mode="const"), rtol=0, atol=0)


@pytest.mark.parametrize("config", D_CONFIGS)
def test_discriminator_architecture_is_inferred_from_its_state_dict(config):
    kwargs = D_CONFIGS[config]
    D = _perturbed(Discriminator(**kwargs, impl="ref"), 7)
    loaded = load_nvlabs({f"D.{k}": v for k, v in D.state_dict().items()}, impl="ref")["D"]
    inferred = infer_discriminator_kwargs(D.state_dict(), NVIDIA_DEFAULTS)
    for key in ("c_dim", "img_resolution", "img_channels"):
        assert inferred[key] == kwargs[key], key
    assert inferred["architecture"] == kwargs.get("architecture", "resnet")
    assert inferred["mbstd_num_channels"] == kwargs.get("mbstd_num_channels", 1)
    res, ch = kwargs["img_resolution"], kwargs["img_channels"]
    img = torch.randn(4, ch, res, res, generator=torch.Generator().manual_seed(8))
    c = torch.eye(3)[[0, 1, 2, 0]] if kwargs["c_dim"] else None
    with torch.no_grad():
        torch.testing.assert_close(loaded(img, c), D(img, c), rtol=0, atol=0)


def test_keyword_overrides_default_to_nvidias_and_reach_the_networks():
    import inspect
    defaults = {k: p.default for k, p in inspect.signature(load_nvlabs).parameters.items()}
    assert {k: defaults[k] for k in NVIDIA_DEFAULTS} == NVIDIA_DEFAULTS
    G = Generator(**G_CONFIGS["skip"])
    D = Discriminator(**D_CONFIGS["skip, conditional"])
    overrides = dict(mbstd_group_size=2, mapping_lr_multiplier=0.5, conv_clamp=64, num_fp16_res=1)
    g, d = infer_generator_kwargs(G.state_dict(), overrides), infer_discriminator_kwargs(D.state_dict(), overrides)
    assert g["mapping_kwargs"]["lr_multiplier"] == 0.5 and d["mapping_kwargs"]["lr_multiplier"] == 0.5
    assert g["synthesis_kwargs"]["conv_clamp"] == 64 and d["conv_clamp"] == 64
    assert g["synthesis_kwargs"]["num_fp16_res"] == 1 and d["num_fp16_res"] == 1
    assert d["mbstd_group_size"] == 2


def _g_state_dict():
    return {f"G.{k}": v for k, v in Generator(**G_CONFIGS["skip"]).state_dict().items()}


def _d_state_dict():
    return {f"D.{k}": v for k, v in Discriminator(**D_CONFIGS["resnet"]).state_dict().items()}


def _without(sd, key):
    return {k: v for k, v in sd.items() if k != key}


@pytest.mark.parametrize("label, make, message", [
    ("missing conv weight", lambda: _without(_g_state_dict(), "G.synthesis.b8.conv0.weight"),
     r"missing \['synthesis\.b8\.conv0\.weight'\]"),
    ("extra key", lambda: _g_state_dict() | {"G.synthesis.b8.extra": torch.zeros(1)}, r"unexpected.*b8\.extra"),
    ("bias only, weight missing", lambda: _without(_g_state_dict(), "G.mapping.fc1.weight"), "mapping.fc1"),
    ("wrong shape", lambda: _g_state_dict() | {"G.synthesis.b8.conv0.bias": torch.zeros(5)},
     r"b8\.conv0\.bias: shape \(5,\)"),
    ("top ToRGB missing", lambda: _without(_g_state_dict(), "G.synthesis.b8.torgb.weight"),
     r"no 'synthesis\.b8\.torgb\.weight'"),
    ("first mapping layer missing", lambda: _without(_g_state_dict(), "G.mapping.fc0.weight"), r"mapping"),
    ("only the mapping network", lambda: {k: v for k, v in _g_state_dict().items() if ".mapping." in k},
     r"no synthesis blocks"),
    ("conv weight of the wrong rank", lambda: _g_state_dict() | {"G.synthesis.b4.conv1.weight": torch.zeros(())},
     r"synthesis\.b4\.conv1\.weight' has shape"),
    ("epilogue conv missing", lambda: _without(_d_state_dict(), "D.b4.conv.weight"), r"no 'b4\.conv\.weight'"),
    ("top fromrgb missing", lambda: _without(_d_state_dict(), "D.b8.fromrgb.weight"), r"no 'b8\.fromrgb\.weight'"),
    ("a value that is not a tensor", lambda: _d_state_dict() | {"D.b4.fc.bias": [0.0] * 8}, "not a tensor"),
])
def test_a_truncated_or_mismatched_state_dict_is_a_clear_error(label, make, message):
    with pytest.raises(ValueError, match=message):
        load_nvlabs(make())
