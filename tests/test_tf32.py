"""fp32 fused convs use TF32 exactly when torch's own convs would (cuDNN's conv precision), in both conv kernel
families: the implicit GEMM under modulated_conv2d / conv2d_resample and the conv of conv2d_norm_act. Checked by
recording the ALLOW_TF32 constexpr of real launches (the Triton path runs in the CPU interpreter here)."""
import pytest
import torch

from fusegan.kernels import _conv_norm_act_triton, _implicit_gemm, conv2d_norm_act, modulated_conv2d
from fusegan.kernels._triton import conv_allows_tf32

BACKENDS = torch.backends


@pytest.fixture
def restore_precisions():
    """The new-API precisions as they were (conftest restores only the legacy flags, through a getter that raises
    when conv and RNN precisions differ)."""
    saved = [(m, m.fp32_precision) for m in (BACKENDS.cudnn.conv, BACKENDS.cudnn.rnn, BACKENDS.cudnn, BACKENDS)]
    yield
    for module, value in reversed(saved):
        module.fp32_precision = value


@pytest.fixture
def launches(monkeypatch):
    """The ALLOW_TF32 of every forward conv launch, per kernel family."""
    seen = []

    def spy(module, family):
        kernel = module._conv_fwd_kernel

        class Spy:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    seen.append((family, kwargs["ALLOW_TF32"]))
                    return kernel[grid](*args, **kwargs)
                return launch
        monkeypatch.setattr(module, "_conv_fwd_kernel", Spy())

    spy(_implicit_gemm, "implicit_gemm")
    spy(_conv_norm_act_triton, "conv_norm_act")
    return seen


def _run_both_families(dtype=torch.float32):
    x = torch.randn(1, 3, 5, 5, dtype=dtype)
    modulated_conv2d(x, torch.randn(4, 3, 3, 3, dtype=dtype), torch.randn(1, 3, dtype=dtype), padding=1,
                     impl="triton")
    conv2d_norm_act(x, torch.randn(4, 3, 3, 3, dtype=dtype), padding=1, norm="batch", act="relu", impl="triton")


@pytest.mark.parametrize("allow", [True, False])
def test_fused_convs_follow_cudnns_tf32_flag(allow, launches, restore_precisions):
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=allow):
        assert conv_allows_tf32(torch.float32) is allow
        _run_both_families()
    assert sorted(launches) == [("conv_norm_act", allow), ("implicit_gemm", allow)]


def test_matmul_flag_does_not_switch_convs(launches, monkeypatch, restore_precisions):
    # torch's convs ignore the matmul flag (cudnn's is the one that counts); so do ours.
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    _run_both_families()
    assert sorted(launches) == [("conv_norm_act", False), ("implicit_gemm", False)]


def test_new_api_conv_precision_is_read_without_raising(launches, restore_precisions):
    # Conv TF32 with RNN IEEE: torch's legacy `cudnn.allow_tf32` getter raises in this state.
    BACKENDS.cudnn.conv.fp32_precision = "tf32"
    BACKENDS.cudnn.rnn.fp32_precision = "ieee"
    with pytest.raises(RuntimeError):
        torch.backends.cudnn.allow_tf32
    _run_both_families()
    assert sorted(launches) == [("conv_norm_act", True), ("implicit_gemm", True)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_tf32_is_for_fp32_only(dtype, restore_precisions):
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
        assert conv_allows_tf32(dtype) is False


@pytest.mark.parametrize("allow", [True, False])
def test_gpu_tiles_follow_the_flag_in_both_families(allow, monkeypatch, restore_precisions):
    # fp32 without TF32 runs tl.dot as FMAs with both operand tiles in registers: K tiles of 16, which compiled
    # for sm_90 without the large spills of 32 (benchmarks/results/compile-sm90); with TF32 the tensor-core tiles.
    monkeypatch.setattr(_conv_norm_act_triton, "interpreter_active", lambda: False)  # the GPU's tiles
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=allow):
        assert _conv_norm_act_triton._gemm_blocks(4096, 256, 512, torch.float32) == (64, 128, 32 if allow else 16)
        assert _implicit_gemm._gemm_blocks(4096, 256, 512, torch.float32) == (128 if allow else 64, 128,
                                                                               32 if allow else 16)
        assert _conv_norm_act_triton._gemm_blocks(4096, 256, 512, torch.bfloat16) == (64, 128, 32)


def test_older_torch_without_the_new_api_reads_the_legacy_switch(monkeypatch):
    # torch 2.6 to 2.8 (setup.py allows them) have no torch.backends.cudnn.conv.
    monkeypatch.setattr(torch.backends.cudnn, "conv", None)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert conv_allows_tf32(torch.float32) is True
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert conv_allows_tf32(torch.float32) is False
