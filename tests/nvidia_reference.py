"""NVIDIA StyleGAN2-ADA's upfirdn2d reference (torch_utils/ops/upfirdn2d.py, `_upfirdn2d_ref`), rewritten in plain
torch from its published semantics, as the oracle of the tests that hold fusegan to NVIDIA's results (imported as
a plain module: pytest puts tests/ on sys.path). Never imports fusegan."""
import torch
import torch.nn.functional as F


def nv_parse_scaling(s):
    return (s, s) if isinstance(s, int) else tuple(s)


def nv_parse_padding(p):
    if isinstance(p, int):
        p = [p, p]
    return (p[0], p[0], p[1], p[1]) if len(p) == 2 else tuple(p)


def nv_upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Zero insertion by reshape + pad, pad then crop, depthwise conv2d with the flipped filter
    (gain**(ndim/2) per pass), then [::down]."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    n, c, h, w = x.shape
    upx, upy = nv_parse_scaling(up)
    downx, downy = nv_parse_scaling(down)
    px0, px1, py0, py1 = nv_parse_padding(padding)
    x = x.reshape([n, c, h, 1, w, 1])
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1]).reshape([n, c, h * upy, w * upx])
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f[None, None].repeat([c, 1] + [1] * f.ndim)
    if f.ndim == 4:
        x = F.conv2d(x, f, groups=c)
    else:
        x = F.conv2d(x, f.unsqueeze(2), groups=c)
        x = F.conv2d(x, f.unsqueeze(3), groups=c)
    return x[:, :, ::downy, ::downx]
