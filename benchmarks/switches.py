"""torch's TF32 switches, saved and restored (the IEEE-fp32 block for accuracy references is the engine's
`fusegan.engine.precision.strict_fp32`).

torch >= 2.9 has per-backend `fp32_precision` switches; its legacy `cudnn.allow_tf32` getter raises once the conv
and RNN precisions were set apart, so the new API is read where it exists and the legacy one otherwise.
"""
import torch


def _tf32_switches():
    if getattr(torch.backends.cudnn, "conv", None) is None:  # torch < 2.9: the legacy switches only
        return None
    return (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)


def backend_flags():
    """The TF32 switches as they are now (a value for `restore_backend_flags`)."""
    switches = _tf32_switches()
    if switches is None:
        return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    return tuple(switch.fp32_precision for switch in switches)


def restore_backend_flags(flags):
    switches = _tf32_switches()
    if switches is None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        return
    for switch, value in zip(switches, flags):
        switch.fp32_precision = value
