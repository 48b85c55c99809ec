"""Pieces shared by the fused loss ops (gan_loss, vae_loss, minibatch_std, normalize_2nd_moment).

- Triton device functions for a stable softplus and sigmoid.
- `scale_saved_grad`: the backward of a loss whose forward already stored dloss/dinput, i.e.
  `dinput = dout * saved / divisor`, with `dout` a scalar read from device memory (no sync) or a
  tensor of the saved gradient's shape.
- `split_float`: passes a Python float to a kernel without losing fp64 precision (Triton types
  float arguments as fp32).
- `reference_double_backward`: the backward of a backward op, computed as a vjp of the op's plain
  PyTorch reference; it stays differentiable, so third and higher derivatives work too.
- `register_one_input_autograd`: that wiring in full for an op of one tensor and constant arguments.
"""
import torch

from ._triton import compute_dtype, LAUNCH_OPTIONS, tl, triton
from ._validate import is_channels_last

ELEMENTWISE_BLOCK = 1024


@triton.jit
def log1p_accurate(u):
    """log(1 + u) for u >= 0, accurate also for tiny u (Goldberg's trick; tl has no log1p)."""
    w = 1.0 + u
    exact = w == 1.0  # u below half an ulp of 1: log1p(u) == u to working precision
    return tl.where(exact, u, tl.log(w) * (u / tl.where(exact, 1.0, w - 1.0)))


@triton.jit
def softplus_and_sigmoid(z):
    """(softplus(z), sigmoid(z)) without overflow for any |z|: both only exponentiate -|z|."""
    e = tl.exp(-tl.abs(z))
    softplus = tl.maximum(z, 0.0) + log1p_accurate(e)
    inv = 1.0 / (1.0 + e)
    sigmoid = tl.where(z >= 0, inv, e * inv)
    return softplus, sigmoid


def split_float(value: float):
    """`value` as (hi, lo) fp32 numbers whose sum carries ~48 bits: kernels add them in their compute dtype."""
    hi = float(torch.tensor(value, dtype=torch.float32))
    lo = float(torch.tensor(value - hi, dtype=torch.float32))
    return hi, lo


def dense_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` with the same strides as the dense tensor `like`, so both can be walked as one flat buffer."""
    if t.stride() == like.stride():
        return t
    fmt = torch.channels_last if is_channels_last(like) else torch.contiguous_format
    return t.contiguous(memory_format=fmt)


@triton.jit
def _scale_saved_grad_kernel(saved_ptr, dout_ptr, out_ptr, numel, divisor,
                             DOUT_IS_SCALAR: tl.constexpr, BLOCK: tl.constexpr, CDTYPE: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    saved = tl.load(saved_ptr + offs, mask=mask, other=0).to(CDTYPE)
    if DOUT_IS_SCALAR:
        dout = tl.load(dout_ptr).to(CDTYPE)
    else:
        dout = tl.load(dout_ptr + offs, mask=mask, other=0).to(CDTYPE)
    # divisor is an int (N or numel), divided in CDTYPE: no fp32 rounding of 1/divisor under fp64.
    grad = saved * dout / divisor
    tl.store(out_ptr + offs, grad.to(out_ptr.dtype.element_ty), mask=mask)


def scale_saved_grad(saved: torch.Tensor, dout: torch.Tensor, divisor: int = 1) -> torch.Tensor:
    """`saved * dout / divisor` in one pass; `dout` is 0-d or shaped like `saved` (any layout)."""
    scalar = dout.numel() == 1 and dout.dim() == 0
    if not scalar:
        dout = dense_like(dout, saved)
    out = torch.empty_like(saved)
    numel = saved.numel()
    if numel == 0:
        return out
    grid = (triton.cdiv(numel, ELEMENTWISE_BLOCK),)
    _scale_saved_grad_kernel[grid](saved, dout, out, numel, divisor, DOUT_IS_SCALAR=scalar,
                                   BLOCK=ELEMENTWISE_BLOCK, CDTYPE=compute_dtype(saved.dtype), **LAUNCH_OPTIONS)
    return out


def reference_double_backward(reference, dout, inputs, grads_of_grads):
    """Vector-Jacobian product of `(dout, *inputs) -> vjp(reference, *inputs)(dout)` with `grads_of_grads`.

    `reference(*inputs)` is an op's plain-PyTorch forward; `grads_of_grads` holds one incoming
    gradient per input gradient (None counts as zero). Returns (grad for dout, *grads for inputs).
    Built from torch.func transforms over ordinary autograd, so the result is itself differentiable.
    """
    def first_backward(dout_, *inputs_):
        return torch.func.vjp(reference, *inputs_)[1](dout_)

    outputs, vjp_fn = torch.func.vjp(first_backward, dout, *inputs)
    cotangents = tuple(torch.zeros_like(o) if g is None else g for o, g in zip(outputs, grads_of_grads))
    return vjp_fn(cotangents)


def register_one_input_autograd(op, backward_op, reference):
    """Wires the autograd of `op(x, *args) -> y`, an op of one tensor x and constant (non-tensor) args.

    Its gradient is `backward_op(dy, x, *args) -> dx` (another custom op, so the backward runs the
    Triton kernel too), and that op's own gradient is `reference_double_backward` through
    `reference(x, *args)`. minibatch_std and normalize_2nd_moment are exactly this shape; one
    definition keeps their save/return bookkeeping (which tensors, how many Nones) from drifting.
    """
    def setup_context(ctx, inputs, output):
        x, *args = inputs
        ctx.save_for_backward(x)
        ctx.args = tuple(args)

    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return (backward_op(dy, x, *ctx.args), *(None for _ in ctx.args))

    def backward_setup_context(ctx, inputs, output):
        dy, x, *args = inputs
        ctx.save_for_backward(dy, x)
        ctx.args = tuple(args)

    def backward_backward(ctx, grad_dx):
        dy, x = ctx.saved_tensors
        grad_dy, grad_x = reference_double_backward(lambda x_: reference(x_, *ctx.args), dy, (x,), (grad_dx,))
        return (grad_dy, grad_x, *(None for _ in ctx.args))

    op.register_autograd(backward, setup_context=setup_context)
    backward_op.register_autograd(backward_backward, setup_context=backward_setup_context)
