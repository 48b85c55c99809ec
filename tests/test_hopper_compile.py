"""Every Triton kernel that a training iteration launches compiles for Hopper (sm_90), checked on this CPU machine.

The CPU interpreter runs kernels that the real compiler may reject; `benchmarks/hopper_compile.py` captures the
exact compile requests a GPU launch would make (Triton's own JIT specialization, with a stand-in driver) from
StyleGAN2 / DCGAN / pix2pix / CycleGAN / VAE training iterations and compiles each one to a cubin with the
ptxas that ships with Triton. Register spills are reported, not failed on (see docs/ARCHITECTURE.md).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
NVIDIA_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
ROOT = Path(__file__).resolve().parents[1]

# The kernels a StyleGAN2 iteration (with R1 and path length) and a conv-norm-act network must launch.
EXPECTED = {"_conv_fwd_kernel", "_conv_wgrad_kernel", "_conv_epilogue_grad_kernel", "_upfirdn2d_fwd_kernel",
            "_bias_act_fwd_kernel", "_bias_act_bwd_kernel", "_norm_act_fwd_kernel", "_norm_act_bwd_reduce_kernel",
            "_norm_act_bwd_apply_kernel", "_minibatch_std_fwd_kernel", "_minibatch_std_bwd_kernel",
            "_normalize_fwd_kernel", "_gan_loss_fwd_kernel", "_row_dot_kernel", "_vae_loss_fwd_kernel"}


@pytest.mark.skipif(not (NVIDIA_BIN / "ptxas").exists() or not (NVIDIA_BIN / "cuobjdump").exists(),
                    reason="this triton install has no CUDA toolchain (ptxas/cuobjdump) to compile with")
def test_training_kernels_compile_for_sm90(tmp_path):
    out = tmp_path / "hopper.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_DEFAULT_FP_FUSION")}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.hopper_compile", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())["results"]
    assert all(r["status"] == "ok" for r in results)
    assert EXPECTED <= {r["kernel"] for r in results}
    assert all(r["registers"] > 0 and r["spill_bytes"] >= 0 for r in results)  # cuobjdump's report was parsed
    # Every activation code, forward and backward (selu and softplus once compiled only in the interpreter).
    from fusegan.kernels.bias_act import ACT_CODES
    for kernel in ("_bias_act_fwd_kernel", "_bias_act_bwd_kernel"):
        assert {r["constexprs"]["ACT"] for r in results if r["kernel"] == kernel} == {str(c) for c in ACT_CODES.values()}
    # Every launch asks for FMA contraction itself (LAUNCH_OPTIONS): Triton warns when one leaves it to its default,
    # which changes with the Triton version.
    assert "TRITON_DEFAULT_FP_FUSION" not in proc.stderr
    # The bf16 GEMMs are tensor-core kernels with shared-memory pipelines on Hopper; from 64-row tiles up they
    # use the warpgroup MMA (wgmma) of sm_90, below that mma.sync.
    gemm = [r for r in results if r["kernel"] == "_conv_fwd_kernel" and "*bf16" in r["dtypes"]]
    assert gemm and all(r["shared_bytes"] > 0 and r["tensor_cores"] in ("wgmma", "mma") for r in gemm)
    big = [r for r in gemm if int(r["constexprs"]["BLOCK_M"]) >= 64]
    assert big and all(r["tensor_cores"] == "wgmma" for r in big)
