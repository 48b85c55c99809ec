"""StyleGAN2 models: NVIDIA's parameter counts, the golden weight-compatibility vector, safe pickle loading."""
import io
import json
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from fusegan.models.stylegan2 import Discriminator, Generator, load_nvlabs, set_impl

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "stylegan2_ada_32px.safetensors"
GOLDEN_RTOL = 1e-4  # the golden README's bound for fp32, relative to the output's scale


def count(module):
    return sum(p.numel() for p in module.parameters())


# (name, G kwargs, D kwargs, G params, D params, num_ws) from the table (NVIDIA's own counts).
PARAM_TABLE = [
    ("default-64", dict(img_resolution=64, synthesis_kwargs=dict(channel_base=32768)), dict(img_resolution=64),
     27_032_600, 26_488_833, 10),
    ("paper256", dict(img_resolution=256, synthesis_kwargs=dict(channel_base=16384)),
     dict(img_resolution=256, channel_base=16384), 24_767_458, 24_001_089, 14),
    ("config-f", dict(img_resolution=1024), dict(img_resolution=1024), 30_370_060, 29_012_513, 18),
    ("cifar", dict(img_resolution=32, mapping_kwargs=dict(num_layers=2)), dict(img_resolution=32),
     19_947_539, 21_507_073, 8),
]


@pytest.mark.parametrize("name,g_kwargs,d_kwargs,g_params,d_params,num_ws", PARAM_TABLE, ids=[r[0] for r in PARAM_TABLE])
def test_parameter_counts_match_nvidia(name, g_kwargs, d_kwargs, g_params, d_params, num_ws):
    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_channels=3, **g_kwargs)
    D = Discriminator(c_dim=0, img_channels=3, **d_kwargs)
    assert count(G) == g_params
    assert count(D) == d_params
    assert G.num_ws == num_ws


def golden():
    from safetensors.torch import load_file

    return load_file(str(GOLDEN))


def assert_close_rel(actual, expected, rtol=GOLDEN_RTOL):
    """Max abs error relative to the reference's largest magnitude (images are O(1), logits too)."""
    scale = expected.abs().max().clamp_min(1e-6)
    err = ((actual.double() - expected.double()).abs().max() / scale).item()
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


@pytest.fixture(scope="module")
def golden_nets():
    data = golden()
    return data, load_nvlabs(data, impl="ref")


def test_load_nvlabs_infers_the_golden_architecture(golden_nets):
    data, nets = golden_nets
    kwargs = json.loads((DATA / "stylegan2_ada_32px.json").read_text())["kwargs"]
    G, D = nets["G_ema"], nets["D"]
    assert set(nets) == {"G", "D", "G_ema"}
    assert (G.z_dim, G.c_dim, G.w_dim, G.img_resolution) == (kwargs["G"]["z_dim"], 0, kwargs["G"]["w_dim"], 32)
    assert G.mapping.num_layers == kwargs["G"]["mapping_kwargs"]["num_layers"]
    for prefix, net in (("G.", nets["G"]), ("G_ema.", G), ("D.", D)):
        sd = net.state_dict()
        for key, value in sd.items():
            torch.testing.assert_close(value, data[prefix + key], rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_golden_images_and_logits(golden_nets, impl):
    data, nets = golden_nets
    z, c = data["z"], data["c"]
    for net in nets.values():
        set_impl(net, impl)
    try:
        with torch.no_grad():
            assert_close_rel(nets["G_ema"].mapping(z, c, truncation_psi=1.0), data["ws"])
            for psi in ("1.0", "0.7"):
                img = nets["G_ema"](z, c, truncation_psi=float(psi), noise_mode="const")
                assert_close_rel(img, data[f"img_ema_psi{psi}"])
                assert_close_rel(nets["D"](data[f"img_ema_psi{psi}"], c), data[f"logits_psi{psi}"])
            assert_close_rel(nets["G"](z, c, truncation_psi=1.0, noise_mode="const"), data["img_G_psi1.0"])
    finally:
        for net in nets.values():
            set_impl(net, "ref")


def test_load_nvlabs_from_safetensors_path(tmp_path):
    nets = load_nvlabs(str(GOLDEN))
    assert set(nets) == {"G", "D", "G_ema"}


def test_load_nvlabs_rejects_a_dict_without_networks():
    with pytest.raises(ValueError, match="no StyleGAN2 network"):
        load_nvlabs({"foo.weight": torch.zeros(1)})


# --- NVIDIA-style pickles -------------------------------------------------------------------------
# NVIDIA's pickles rebuild each network through torch_utils.persistence._reconstruct_persistent_obj(meta).
# The test makes such a pickle with a stand-in `torch_utils.persistence` module, from a fusegan network.

class _PersistentStandIn:
    """Pickles like an NVIDIA persistent-class object: a meta record with source, class name and state."""

    def __init__(self, class_name, module, init_kwargs):
        self.class_name, self.module, self.init_kwargs = class_name, module, init_kwargs

    def __reduce__(self):
        state = {"_init_kwargs": self.init_kwargs, "_parameters": dict(self.module._parameters),
                 "_buffers": dict(self.module._buffers),
                 "_modules": {n: _PersistentStandIn(type(m).__name__, m, {}) for n, m in self.module._modules.items()}}
        meta = dict(type="class", version=4, module_src="raise SystemExit('embedded source must never run')",
                    class_name=self.class_name, state=state)
        return (_fake_persistence().reconstruct, (meta,))


def _fake_persistence():
    mod = sys.modules.get("torch_utils.persistence")
    if mod is None:
        pkg = types.ModuleType("torch_utils")
        mod = types.ModuleType("torch_utils.persistence")

        def _reconstruct_persistent_obj(meta):  # noqa: ARG001 - only its name matters for pickling
            raise AssertionError("never called in the test")

        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
        mod.reconstruct = _reconstruct_persistent_obj
        pkg.persistence = mod
        sys.modules["torch_utils"], sys.modules["torch_utils.persistence"] = pkg, mod
    return mod


def _cleanup_fake_persistence():
    sys.modules.pop("torch_utils.persistence", None)
    sys.modules.pop("torch_utils", None)


def test_load_nvlabs_from_a_network_pickle(tmp_path):
    g_kwargs = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs=dict(num_layers=2),
                    synthesis_kwargs=dict(channel_base=64, channel_max=8))
    d_kwargs = dict(c_dim=0, img_resolution=8, img_channels=3, channel_base=64, channel_max=8)
    G, D = Generator(**g_kwargs), Discriminator(**d_kwargs)
    try:
        payload = {"G_ema": _PersistentStandIn("Generator", G, g_kwargs),
                   "D": _PersistentStandIn("Discriminator", D, d_kwargs),
                   "training_set_kwargs": {"resolution": 8}}
        path = tmp_path / "network-snapshot.pkl"
        path.write_bytes(pickle.dumps(payload))
    finally:
        _cleanup_fake_persistence()
    assert "torch_utils" not in sys.modules
    nets = load_nvlabs(str(path), impl="ref")
    assert set(nets) == {"G_ema", "D"}
    z = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(nets["G_ema"](z, None, noise_mode="const"),
                                   G.eval()(z, None, noise_mode="const"))
        img = torch.randn(2, 3, 8, 8)
        torch.testing.assert_close(nets["D"](img, None), D.eval()(img, None))


def test_pickle_with_a_foreign_global_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global .*system"):
        load_nvlabs(str(path))


def test_channels_last_input_gives_the_same_logits():
    D = Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=64, channel_max=8, impl="ref")
    img = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(D(img.to(memory_format=torch.channels_last), None), D(img, None))


def test_conditional_generator_and_discriminator_run():
    G = Generator(z_dim=8, c_dim=5, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=64, channel_max=8), impl="ref")
    D = Discriminator(c_dim=5, img_resolution=8, img_channels=3, channel_base=64, channel_max=8, impl="ref")
    z, c = torch.randn(2, 8), torch.nn.functional.one_hot(torch.tensor([1, 3]), 5).float()
    img = G(z, c)
    assert img.shape == (2, 3, 8, 8)
    assert D(img, c).shape == (2, 1)
    with pytest.raises(ValueError, match=r"c must have shape \[N, 5\]"):
        G(z, c[:, :4])


def test_restricted_unpickler_reads_plain_containers():
    # The restricted unpickler still reads ordinary containers.
    from fusegan.models.stylegan2.nvlabs_pickle import load_pickle

    assert load_pickle(io.BytesIO(pickle.dumps({"a": [1, 2.0, "x"]}))) == {"a": [1, 2.0, "x"]}


def test_cli_convert_writes_safetensors_that_load_back(tmp_path):
    from safetensors.torch import load_file

    from fusegan.engine.cli import main

    out = tmp_path / "converted.safetensors"
    assert main(["convert", str(GOLDEN), "--out", str(out)]) == 0
    converted, original = load_file(str(out)), golden()
    network_keys = [k for k in original if k.split(".")[0] in ("G", "D", "G_ema")]
    assert sorted(converted) == sorted(network_keys)
    for key in network_keys:
        torch.testing.assert_close(converted[key], original[key], rtol=0, atol=0)


def test_cli_convert_missing_file_is_one_clear_line(tmp_path, capsys):
    from fusegan.engine.cli import main

    assert main(["convert", str(tmp_path / "missing.pkl"), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.pkl" in err[0]
