"""Compiles every Triton kernel that fusegan training launches, for a GPU architecture, on a machine WITHOUT a GPU.

    python -m benchmarks.hopper_compile [--arch 90] [--quick] [--out report.json] [--strict]

CI has no GPU, and Triton's CPU interpreter accepts kernels that the real compiler rejects (or compiles into
register-spilling code). This tool closes part of that gap:

1. Capture. The models run one training iteration (G and D steps, R1 and path-length double backwards, the
   pix2pix / CycleGAN / DCGAN / VAE networks and losses) at their real channel counts and resolutions, on CPU
   tensors, with the Triton path forced on. Every `kernel[grid](...)` goes through Triton's own JIT (with a
   stand-in driver for the target), which binds and specializes the arguments as on a GPU (ints equal to 1,
   16-byte divisibility and alignment); its compile request is recorded and nothing runs, so realistic shapes
   cost only the torch glue between kernels.
2. Compile. Each distinct specialization is compiled by Triton's own compiler (`triton.compile`) for
   `cuda:<arch>` down to a cubin (ptxas ships with Triton), and `cuobjdump -res-usage` reports its registers
   and stack frame (Triton inlines every call, so a stack frame = registers spilled to local memory).

Where the launchers choose by device (CPU tensors get the interpreter's bf16 upcast and int64 index math), the
GPU's choices are put back (UPCAST=False, IDX=int32) before compiling. CPU allocations are aligned like CUDA
ones, so the alignment specialization matches too. What fails to compile here fails on the GPU.
Exit status: 1 if any kernel fails to compile (or, with --strict, spills registers).
"""
import argparse
import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

if os.environ.get("TRITON_INTERPRET") == "1" and __name__ == "__main__":  # kernels must be JITFunctions here
    os.environ.pop("TRITON_INTERPRET")
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.hopper_compile", *sys.argv[1:]])

import torch  # noqa: E402

# ------------------------------------------------------------------------------------------------------------
# 1. Capture

class _TargetOnlyDriver:
    """Stands in for Triton's CUDA driver: enough for the JIT to bind and specialize a launch for `target`
    (its own argument specialization: ints equal to 1, 16-byte alignment/divisibility), never enough to run."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


def _gpu_constexpr(name, value):
    """The value a GPU launch passes where the CPU capture picked an interpreter workaround."""
    import triton.language as tl

    if name == "UPCAST":  # the interpreter's bf16 tl.dot workaround
        return False
    if name == "IDX" and value == tl.int64:  # CPU tensors get int64 index math; the GPU int32 below 2**31 elements
        return tl.int32
    return value


@contextlib.contextmanager
def capture_launches(arch=90):
    """Inside: the Triton path runs on CPU tensors, and each `kernel[grid](...)` goes through Triton's JIT up to
    the point of compiling, where the compile request (signature, constexprs, attrs, options, exactly as a GPU
    launch would make it) is recorded instead, and nothing runs. Yields the dict of distinct requests."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    from fusegan.kernels import _dispatch

    specs = {}

    def record(self, key, signature, device, constexprs, options, attrs, warmup):
        names = self.arg_names
        constexprs = {path: _gpu_constexpr(names[path[0]], value) for path, value in constexprs.items()}
        spec = dict(module=self.fn.__module__, name=self.fn.__name__, signature=dict(signature),
                    constexprs=constexprs, attrs=dict(attrs), options=dict(options.__dict__), arch=arch)
        specs.setdefault(repr(sorted((k, repr(v)) for k, v in spec.items())), spec)
        return None  # "no kernel": JITFunction.run returns without launching

    saved = (JITFunction._do_compile, _dispatch.triton_can_run, _dispatch.default_impl)
    JITFunction._do_compile = record
    _dispatch.triton_can_run = lambda device: True
    _dispatch.default_impl = lambda device: "triton"
    driver.set_active(_TargetOnlyDriver(GPUTarget("cuda", arch, 32)))
    try:
        yield specs
    finally:
        JITFunction._do_compile, _dispatch.triton_can_run, _dispatch.default_impl = saved
        driver._active = None  # back to the real driver, created lazily if ever needed


def _stylegan2_iteration(resolution, channel_base, precision, batch=2, fp16_channels_last=False):
    """A StyleGAN2 training iteration's kernels: G step, D step, R1 (D double backward), path length (G).
    The generator's activations are NCHW (its const input is) unless `fp16_channels_last` makes its
    low-precision blocks channels_last, as NVIDIA's option of that name does."""
    from fusegan.kernels import gan_loss, path_length_penalty, r1_penalty
    from fusegan.models.stylegan2 import Discriminator, Generator

    common = dict(channel_base=channel_base, channel_max=512, **precision)
    G = Generator(512, 0, 512, resolution, 3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(common, fp16_channels_last=fp16_channels_last))
    D = Discriminator(0, resolution, 3, mbstd_group_size=2, **common)
    G = G.to(memory_format=torch.channels_last)
    D = D.to(memory_format=torch.channels_last)
    z = torch.randn(batch, 512)
    gan_loss(D(G(z, None), None), "real").backward()                        # G step (and D forward)
    real = torch.randn(batch, 3, resolution, resolution).to(memory_format=torch.channels_last).requires_grad_()
    logits = D(real, None)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    (gan_loss(logits, "fake") + r1_penalty(grad).mean()).backward()         # D step with R1
    ws = G.mapping(z, None)
    img = G.synthesis(ws)
    (grad_ws,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), ws, create_graph=True)
    path_length_penalty(grad_ws, torch.zeros(()))[0].mean().backward()     # path-length regularization


def _pix2pix_cyclegan_dcgan_iteration(dtype, quick):
    from fusegan.kernels import gan_loss, vae_loss
    from fusegan.models import autoencoder, dcgan, pix2pix

    res = 64 if quick else 256
    nets = [(dcgan.Generator(), torch.randn(2, 100, 1, 1)), (dcgan.Discriminator(), torch.randn(2, 3, 64, 64)),
            (pix2pix.NLayerDiscriminator(6, norm="batch"), torch.randn(2, 6, res, res)),
            (pix2pix.ResnetGenerator(3, 3, n_blocks=1 if quick else 9, norm="instance"), torch.randn(1, 3, res, res))]
    if not quick:
        nets.append((pix2pix.UnetGenerator(3, 3, 8, norm="batch"), torch.randn(2, 3, 256, 256)))
    for net, x in nets:
        net = net.to(dtype=dtype, memory_format=torch.channels_last)
        x = x.to(dtype=dtype, memory_format=torch.channels_last)
        out = net(x)
        gan_loss(out.float(), "real", kind="lsgan").backward()
    vae = autoencoder.ConvVAE(in_ch=3, resolution=64).to(dtype=dtype)
    recon, mu, logvar = vae(torch.randn(2, 3, 64, 64, dtype=dtype))
    vae_loss(recon, torch.rand_like(recon), mu, logvar).backward()


def _every_activation(dtypes, fused_layers):
    """bias_act with every activation, forward, backward and double backward, in each of `dtypes`; with
    `fused_layers` also the epilogues that reuse its activation code (modulated_conv2d, conv2d_norm_act) in bf16.
    No training recipe uses selu or softplus, which once compiled only in the interpreter."""
    from fusegan.kernels import bias_act, modulated_conv2d
    from fusegan.kernels.bias_act import activation_funcs
    from fusegan.kernels.conv_norm_act import ACTS as NORM_ACTS, conv2d_norm_act

    def double_backward(y, x):
        (g,) = torch.autograd.grad((y.float() * torch.randn_like(y.float())).sum(), x, create_graph=True)
        g.float().square().sum().backward()

    for act in activation_funcs:
        for dtype in dtypes:
            x = torch.randn(4, 64, 8, 8, dtype=dtype, requires_grad=True)
            double_backward(bias_act(x, torch.randn(64, dtype=dtype), act=act, clamp=256), x)
        if fused_layers:
            x = torch.randn(2, 64, 16, 16, dtype=torch.bfloat16, requires_grad=True)
            w, s = torch.randn(64, 64, 3, 3, dtype=torch.bfloat16), torch.randn(2, 64, dtype=torch.bfloat16)
            double_backward(modulated_conv2d(x, w, s, padding=1, bias=torch.randn(64), act=act, clamp=256), x)
            if act in NORM_ACTS:
                x = torch.randn(2, 64, 16, 16, dtype=torch.bfloat16, requires_grad=True)
                conv2d_norm_act(x, w, padding=1, norm="instance", act=act).float().square().sum().backward()


@contextlib.contextmanager
def _conv_tf32(enabled):
    """fp32 convs with or without TF32, as the engine's `--precision tf32` / every other mode sets them."""
    saved = torch.backends.cudnn.conv.fp32_precision
    torch.backends.cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"
    try:
        yield
    finally:
        torch.backends.cudnn.conv.fp32_precision = saved


def capture_training_kernels(quick=False, arch=90):
    """Runs the capture workloads; returns the list of distinct compile requests. TF32 is off as the engine sets
    it for --precision fp32/bf16/fp16 (the fp32 layers of mixed precision included); the fp32 workloads run once
    more with it on (--precision tf32), since the fused convs then compile to other kernels. Every activation of
    bias_act is captured too (in the fused layers' epilogues without --quick), used by training or not."""
    torch.manual_seed(0)
    fp32_sg2 = dict(num_fp16_res=0, conv_clamp=None)
    with capture_launches(arch) as specs:
        with _conv_tf32(False):
            for precision in ([dict(num_fp16_res=4, conv_clamp=256, mp_dtype=torch.float16)] if quick else [
                    fp32_sg2,
                    dict(num_fp16_res=4, conv_clamp=256, mp_dtype=torch.float16),
                    dict(num_fp16_res="all", conv_clamp=256, mp_dtype=torch.bfloat16)]):
                _stylegan2_iteration(64 if quick else 256, 16384, precision)
            if not quick:  # the generator's channels_last specializations too (bf16 everywhere: every block)
                _stylegan2_iteration(256, 16384, dict(num_fp16_res="all", conv_clamp=256, mp_dtype=torch.bfloat16),
                                     fp16_channels_last=True)
            for dtype in ([torch.bfloat16] if quick else [torch.float32, torch.bfloat16]):
                _pix2pix_cyclegan_dcgan_iteration(dtype, quick)
            _every_activation([torch.float32, torch.bfloat16, torch.float16], fused_layers=not quick)
        if not quick:
            with _conv_tf32(True):
                _stylegan2_iteration(256, 16384, fp32_sg2)
                _pix2pix_cyclegan_dcgan_iteration(torch.float32, quick)
    return list(specs.values())


# ------------------------------------------------------------------------------------------------------------
# 2. Compile

def _cuobjdump():
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_spec(spec):
    """Compiles one captured request for its target; returns a result dict (status, registers, spills, ...)."""
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(spec["module"]), spec["name"])
    names = fn.arg_names
    result = dict(kernel=spec["name"], module=spec["module"], num_warps=spec["options"].get("num_warps"),
                  num_stages=spec["options"].get("num_stages"),
                  constexprs={names[path[0]]: str(v) for path, v in spec["constexprs"].items()},
                  dtypes=sorted({t for t in spec["signature"].values() if t.startswith("*")}))
    start = time.perf_counter()
    try:
        src = ASTSource(fn, spec["signature"], spec["constexprs"], spec["attrs"])
        compiled = triton.compile(src, target=GPUTarget("cuda", spec["arch"], 32), options=spec["options"])
    except Exception as exc:  # the compiler's message is the point of this tool
        result.update(status="error", error=f"{type(exc).__name__}: {exc}"[:4000])
        return result
    result["compile_s"] = round(time.perf_counter() - start, 2)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(REG|SHARED|LOCAL|STACK):(\d+)", usage))
    ptx = compiled.asm["ptx"]
    # Triton inlines every call, so a stack frame means registers spilled to local memory.
    result.update(status="ok", registers=int(fields.get("REG", -1)), spill_bytes=int(fields.get("STACK", -1)),
                  shared_bytes=int(compiled.metadata.shared),
                  tensor_cores="wgmma" if "wgmma" in ptx else ("mma" if "mma.sync" in ptx else None))
    return result


def compile_all(specs, workers=None):
    workers = workers or max(1, min(len(specs), os.cpu_count() or 1))
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(compile_spec, specs))


# ------------------------------------------------------------------------------------------------------------
# 3. Report

def format_table(results):
    rows = ["| kernel | dtypes | warps | registers | shared (B) | spilled (stack B) | status |",
            "|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["kernel"], r["dtypes"])):
        if r["status"] == "ok":
            rows.append(f"| {r['kernel']} | {' '.join(r['dtypes'])} | {r['num_warps']} | "
                        f"{r['registers']} | {r['shared_bytes']} | {r['spill_bytes']} | ok |")
        else:
            rows.append(f"| {r['kernel']} | {' '.join(r['dtypes'])} | {r['num_warps']} | | | | "
                        f"**{r['error'].splitlines()[0][:120]}** |")
    return "\n".join(rows)


def format_summary(results):
    """One row per kernel (both `_conv_fwd_kernel`s told apart by module): specializations, the most registers,
    how many spill and by how much, and the tensor-core instructions used."""
    by_kernel = {}
    for r in results:
        if r["status"] == "ok":
            by_kernel.setdefault(f"{r['module'].rsplit('.', 1)[-1]}.{r['kernel']}", []).append(r)
    rows = ["| kernel | specializations | max registers | spilling | spilled in total (B) | most spilled (B) | "
            "tensor cores |", "|---|---|---|---|---|---|---|"]
    for name, rs in sorted(by_kernel.items()):
        spills = [r["spill_bytes"] for r in rs if r["spill_bytes"] > 0]
        cores = sorted({r["tensor_cores"] for r in rs if r["tensor_cores"]})
        rows.append(f"| {name} | {len(rs)} | {max(r['registers'] for r in rs)} | {len(spills)} | {sum(spills)} | "
                    f"{max(spills, default=0)} | {', '.join(cores) or '-'} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hopper_compile", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90 = H100/H200)")
    parser.add_argument("--quick", action="store_true", help="smaller workload (one precision, small nets)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--strict", action="store_true", help="also fail on register spills")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    specs = capture_training_kernels(quick=args.quick, arch=args.arch)
    captured = time.perf_counter() - start
    results = compile_all(specs)
    failed = [r for r in results if r["status"] != "ok"]
    spilled = [r for r in results if r["status"] == "ok" and r["spill_bytes"] > 0]
    print(format_table(results))
    print("\n" + format_summary(results))
    print(f"\n{len(results)} kernel specializations for sm_{args.arch}: {len(results) - len(failed)} compiled, "
          f"{len(failed)} failed, {len(spilled)} spill registers (capture {captured:.0f} s, "
          f"total {time.perf_counter() - start:.0f} s)")
    for r in failed:
        print(f"\nFAILED {r['kernel']} {r['constexprs']}:\n{r['error']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(arch=args.arch, quick=args.quick, results=results), f, indent=1)
    return 1 if failed or (args.strict and spilled) else 0


if __name__ == "__main__":
    sys.exit(main())
