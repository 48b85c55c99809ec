"""StyleGAN2 models: NVIDIA's parameter counts, the golden weight-compatibility vector, safe pickle loading."""
import copy
import io
import json
import math
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from fusegan.models.stylegan2 import (Conv2dLayer, Discriminator, Generator, SynthesisLayer, ToRGBLayer, load_nvlabs,
                                      set_impl)

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


# ----------------------------------------------------------------------------------------------
# Mixed precision (num_fp16_res, mp_dtype, conv_clamp) and memory format
# ----------------------------------------------------------------------------------------------
BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2**-7
# A tiny network with its top blocks in bf16 against the same weights in fp32, relative to the
# output's largest value: twice the worst of six seeds (0.017), for a few bf16-rounded layers per block.
MIXED_PRECISION_RTOL = 4 * BF16_EPS


def tiny_g(**synthesis_kwargs):
    return Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
                     synthesis_kwargs=dict(channel_base=128, channel_max=16, **synthesis_kwargs), impl="ref").eval()


def tiny_d(**kwargs):
    return Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=128, channel_max=16,
                         mbstd_group_size=2, impl="ref", **kwargs)


def record_features(net, prefix):
    """{block name: the features tensor it returned}, filled by forward hooks."""
    seen = {}
    for name, block in net.named_children():
        if name.startswith(prefix):
            block.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(
                name, out[0] if isinstance(out, tuple) else out))
    return seen


@pytest.mark.parametrize("synthesis_kwargs,lowp_blocks", [
    (dict(num_fp16_res=2, mp_dtype=torch.bfloat16), {"b8", "b16"}),  # NVIDIA's rule: the top 2, never below 8
    (dict(num_fp16_res="all", mp_dtype=torch.bfloat16), {"b4", "b8", "b16"}),
    (dict(num_fp16_res=2, mp_dtype=torch.bfloat16, conv_clamp=256), {"b8", "b16"}),  # NVIDIA's fp16 setup
], ids=["num_fp16_res=2", "all", "conv_clamp=256"])
def test_generator_in_bf16_matches_fp32(synthesis_kwargs, lowp_blocks):
    G32, G16 = tiny_g(), tiny_g(**synthesis_kwargs)
    G16.load_state_dict(G32.state_dict())
    features = record_features(G16.synthesis, "b")
    z = torch.randn(4, 8)
    img = G16(z, None, noise_mode="const")
    assert {name: f.dtype for name, f in features.items()} == {
        name: torch.bfloat16 if name in lowp_blocks else torch.float32 for name in ("b4", "b8", "b16")}
    assert img.dtype == torch.float32  # ToRGB outputs are accumulated in fp32
    assert_close_rel(img, G32(z, None, noise_mode="const"), rtol=MIXED_PRECISION_RTOL)
    img.square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in G16.parameters())


@pytest.mark.parametrize("num_fp16_res", [1, "all"])
def test_discriminator_in_bf16_matches_fp32(num_fp16_res):
    D32, D16 = tiny_d(), tiny_d(num_fp16_res=num_fp16_res, mp_dtype=torch.bfloat16)
    D16.load_state_dict(D32.state_dict())
    features = record_features(D16, "b")
    img = torch.randn(4, 3, 16, 16)
    logits = D16(img, None)
    assert features["b16"].dtype == torch.bfloat16
    assert features["b8"].dtype == (torch.bfloat16 if num_fp16_res == "all" else torch.float32)
    assert logits.dtype == torch.float32  # the epilogue always runs in fp32
    assert_close_rel(logits, D32(img, None), rtol=MIXED_PRECISION_RTOL)


def _without_clamp(layer):
    unclamped = copy.deepcopy(layer)
    unclamped.conv_clamp = None
    return unclamped


CLAMPED_LAYERS = [
    ("conv2d-layer", lambda: Conv2dLayer(4, 6, 3, activation="lrelu", conv_clamp=0.5),
     lambda: (torch.randn(2, 4, 8, 8),), dict(gain=math.sqrt(0.5))),
    ("synthesis-layer-up", lambda: SynthesisLayer(4, 6, w_dim=8, resolution=8, up=2, conv_clamp=0.5),
     lambda: (torch.randn(2, 4, 4, 4), torch.randn(2, 8)), dict(noise_mode="const", gain=math.sqrt(0.5))),
    ("torgb", lambda: ToRGBLayer(6, 3, w_dim=8, conv_clamp=0.05), lambda: (torch.randn(2, 6, 4, 4), torch.randn(2, 8)),
     {}),
]


@pytest.mark.parametrize("make,make_inputs,kwargs", [c[1:] for c in CLAMPED_LAYERS], ids=[c[0] for c in CLAMPED_LAYERS])
@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_conv_clamp_clamps_the_layer_output(device, make, make_inputs, kwargs, impl):
    layer = set_impl(make(), impl).to(device)
    inputs = [t.to(device) for t in make_inputs()]
    if isinstance(layer, SynthesisLayer):
        with torch.no_grad():
            layer.noise_strength.fill_(0.3)
    out = layer(*inputs, **kwargs)
    unclamped = _without_clamp(layer)(*inputs, **kwargs)
    limit = layer.conv_clamp * kwargs.get("gain", 1)  # NVIDIA scales the clamp with the gain (not ToRGB's)
    assert out.abs().max() <= limit * (1 + 1e-6)
    assert (unclamped.abs() > limit).float().mean() > 0.1  # the clamp really cuts: a test that can fail
    torch.testing.assert_close(out, unclamped.clamp(-limit, limit), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mp_dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 2 * BF16_EPS)])
def test_generator_channels_last_equals_nchw(mp_dtype, rtol):
    # fp16_channels_last applies to the low-precision blocks, as in NVIDIA; num_fp16_res='all' with
    # mp_dtype=float32 isolates the memory format from the rounding.
    kwargs = dict(num_fp16_res="all", mp_dtype=mp_dtype)
    G_nchw, G_cl = tiny_g(**kwargs), tiny_g(fp16_channels_last=True, **kwargs)
    G_cl.load_state_dict(G_nchw.state_dict())
    assert G_cl.synthesis.b8.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    features = record_features(G_cl.synthesis, "b")
    z = torch.randn(3, 8)
    img_cl = G_cl(z, None, noise_mode="const")
    assert all(f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous()
               for f in features.values())
    assert img_cl.is_contiguous()
    assert_close_rel(img_cl, G_nchw(z, None, noise_mode="const"), rtol=rtol)


def test_discriminator_channels_last_blocks_equal_nchw():
    kwargs = dict(num_fp16_res="all", mp_dtype=torch.float32)
    D_nchw, D_cl = tiny_d(**kwargs), tiny_d(block_kwargs=dict(fp16_channels_last=True), **kwargs)
    D_cl.load_state_dict(D_nchw.state_dict())
    features = record_features(D_cl, "b")
    img = torch.randn(4, 3, 16, 16)
    logits = D_cl(img, None)
    assert features["b16"].is_contiguous(memory_format=torch.channels_last) and not features["b16"].is_contiguous()
    assert_close_rel(logits, D_nchw(img, None), rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("num_fp16_res", [0, 2])
def test_torch_compile_matches_eager_on_gpu(num_fp16_res):
    G = Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=32, img_channels=3,
                  synthesis_kwargs=dict(channel_base=1024, channel_max=64, num_fp16_res=num_fp16_res,
                                        conv_clamp=256 if num_fp16_res else None)).cuda().eval()
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=1024, channel_max=64,
                      num_fp16_res=num_fp16_res, conv_clamp=256 if num_fp16_res else None).cuda()
    z = torch.randn(4, 64, device="cuda")
    eager_img = G(z, None, noise_mode="const")
    img = torch.compile(G, fullgraph=True, backend="inductor")(z, None, noise_mode="const")
    rtol = 1e-4 if num_fp16_res == 0 else 4 * torch.finfo(torch.float16).eps  # fp16 blocks: a few roundings apart
    assert_close_rel(img, eager_img, rtol=rtol)
    assert_close_rel(torch.compile(D, fullgraph=True, backend="inductor")(eager_img, None), D(eager_img, None),
                     rtol=rtol)
