"""benchmarks/profile.py: kernel classification, the event summary, and a CPU smoke run of the command.

The GPU path (device kernels from CUDA traces) is exercised with stand-in events here; only a GPU run shows real
kernel names, so the classifier is checked against the names those traces use."""
import json
import types

import pytest
import torch

from benchmarks import profile as bench_profile
from bench_helpers import one_cpu_thread  # noqa: F401 (an autouse fixture: single-threaded CPU ops here)

CUDA = torch.autograd.DeviceType.CUDA
CPU = torch.autograd.DeviceType.CPU


def test_fusegan_kernel_names_are_the_triton_kernels_of_every_op_module():
    names = bench_profile.fusegan_kernel_names()
    for expected in ("_bias_act_fwd_kernel", "_upfirdn2d_fwd_kernel", "_conv_fwd_kernel", "_conv_wgrad_kernel",
                     "_norm_act_fwd_kernel", "_gan_loss_fwd_kernel", "_minibatch_std_fwd_kernel"):
        assert expected in names


@pytest.mark.parametrize("name, kind", [
    ("_bias_act_fwd_kernel", "fusegan triton"),
    ("triton_poi_fused_add_mul_0", "inductor triton"),
    ("triton_red_fused_sum_1", "inductor triton"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", "gemm/conv (vendor)"),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn_align8>(...)",
     "gemm/conv (vendor)"),
    ("void cudnn::cnn::conv2d_grouped_direct_kernel<float>(...)", "gemm/conv (vendor)"),
    ("Memcpy DtoD (Device -> Device)", "memcpy/memset"),
    ("Memset (Device)", "memcpy/memset"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, ...>(...)", "other kernels"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, ...> >(...)", "other kernels"),
])
def test_kernel_kind(name, kind):
    fusegan_names = frozenset({"_bias_act_fwd_kernel"})
    assert bench_profile.kernel_kind(name, fusegan_names) == kind


def _event(key, device_type, self_device=0.0, self_cpu=0.0, count=1):
    return types.SimpleNamespace(key=key, device_type=device_type, self_device_time_total=self_device,
                                 self_cpu_time_total=self_cpu, count=count)


def test_summary_on_device_counts_kernels_only_once():
    events = [
        _event("aten::mm", CPU, self_device=300.0, self_cpu=20.0),  # an operator: its device time is its kernel's
        _event("sm90_xmma_gemm_bf16", CUDA, self_device=300.0, count=2),
        _event("_bias_act_fwd_kernel", CUDA, self_device=100.0, count=2),
        _event("Memset (Device)", CUDA, self_device=0.0, count=2),  # no time: left out
    ]
    rows = bench_profile.summarize_events(events, on_device=True, fusegan_names=frozenset({"_bias_act_fwd_kernel"}))
    assert [r.name for r in rows] == ["sm90_xmma_gemm_bf16", "_bias_act_fwd_kernel"]
    kinds = bench_profile.by_kind(rows, reps=2)
    assert list(kinds) == ["gemm/conv (vendor)", "fusegan triton"]
    assert kinds["gemm/conv (vendor)"] == pytest.approx((150.0, 0.75))
    assert kinds["fusegan triton"] == pytest.approx((50.0, 0.25))


def test_summary_without_device_uses_cpu_self_time():
    events = [_event("aten::mm", CPU, self_cpu=30.0), _event("aten::add", CPU, self_cpu=10.0, count=4)]
    rows = bench_profile.summarize_events(events, on_device=False, fusegan_names=frozenset())
    assert [(r.name, r.calls, r.self_us) for r in rows] == [("aten::mm", 1, 30.0), ("aten::add", 4, 10.0)]
    assert bench_profile.by_kind(rows, reps=1) == {"cpu operator": pytest.approx((40.0, 1.0))}


def test_find_case_wants_exactly_one_match():
    assert bench_profile.find_case("train.dcgan").name == "train.dcgan.64px_b128"
    with pytest.raises(SystemExit, match="matches"):
        bench_profile.find_case("modulated_conv2d")  # several cases
    with pytest.raises(SystemExit, match="matches 0 cases"):
        bench_profile.find_case("no-such-case")


@pytest.mark.parametrize("case, extra", [
    ("bias_act.lrelu_bias_clamp.contiguous", ["--mode", "fwdbwd"]),
    ("train.dcgan.64px_b128", []),
])
def test_smoke_run_writes_the_profile(tmp_path, case, extra):
    reps = 2
    code = bench_profile.main([case, "--smoke", "--reps", str(reps), "--warmup", "1", "--out", str(tmp_path),
                               "--trace", *extra])
    assert code == 0
    data = json.loads((tmp_path / "profile.json").read_text())
    assert data["meta"]["case"] == case and data["meta"]["reps"] == reps and data["meta"]["on_device"] is False
    kernels = {k["name"]: k for k in data["kernels"]}
    # The marker around each profiled step ran once per repetition: the warm-up was not profiled.
    assert kernels["fusegan.profiled_step"]["calls"] == reps
    assert sum(share["share"] for share in data["by_kind"].values()) == pytest.approx(1.0)
    markdown = (tmp_path / "profile.md").read_text()
    assert f"# Profile: {case}, fusegan" in markdown and "torch.profiler's table" in markdown
    assert json.loads((tmp_path / "trace.json").read_text())["traceEvents"]


def test_without_a_gpu_it_says_so_and_exits_zero(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the no-GPU message does not apply")
    assert bench_profile.main(["train.dcgan"]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out


@pytest.mark.gpu
def test_gpu_profile_attributes_the_fused_op_to_fusegan_kernels(tmp_path):
    """On a GPU the device kernels of the fused bias_act are fusegan's own Triton kernels, and the eager
    variant has none of them."""
    for variant in ("fusegan", "eager"):
        out = tmp_path / variant
        assert bench_profile.main(["bias_act.lrelu_bias_clamp.contiguous", "--variant", variant, "--reps", "3",
                                   "--out", str(out)]) == 0
        data = json.loads((out / "profile.json").read_text())
        assert data["meta"]["on_device"] is True
        share = data["by_kind"].get("fusegan triton", {"share": 0.0})["share"]
        if variant == "fusegan":
            assert share > 0.5
        else:
            assert share == 0.0
