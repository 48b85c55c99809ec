"""Shared by the model tests (imported as a plain module: pytest puts tests/ on sys.path)."""
import torch
from torch import nn


def randomize_norms(model):
    """Non-trivial affine parameters and running statistics on every BatchNorm/InstanceNorm that has them, so
    that eval mode, which uses them, is really tested (fresh ones are the identity: weight 1, bias 0, mean 0,
    var 1). Returns the model."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                if m.affine:
                    m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
                if m.track_running_stats:
                    m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 2.0)
    return model
