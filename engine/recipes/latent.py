"""Latents that do not depend on the training RNG: per-seed draws for grids, and paths between them."""
import torch


def latents_for_seeds(seeds, dim, device, base_seed=0):
    """One N(0, I) latent per seed, each from its own generator: the grid's latents never consume (or depend
    on) the training RNG, so taking a snapshot does not change the run."""
    rows = [torch.randn(dim, generator=torch.Generator().manual_seed(base_seed * 1_000_003 + int(s)))
            for s in seeds]
    return torch.stack(rows).to(device)


def interpolate_latents(z, steps, spherical=True):
    """`steps` points from each latent to the next (the last endpoint included): [(len(z)-1)*steps+1, dim].
    Spherical interpolation keeps Gaussian latents at a typical norm; linear is used for w-space."""
    if z.shape[0] < 2:
        raise ValueError("interpolation needs at least two latents (seeds)")
    t = torch.linspace(0, 1, steps + 1, device=z.device, dtype=z.dtype)[:-1, None]
    points = []
    for a, b in zip(z[:-1], z[1:]):
        if spherical:
            omega = torch.arccos(torch.clamp((a / a.norm()) @ (b / b.norm()), -1.0, 1.0))
            if omega.abs() < 1e-6:
                points.append(torch.lerp(a, b, t))
                continue
            so = torch.sin(omega)
            points.append((torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b)
        else:
            points.append(torch.lerp(a, b, t))
    points.append(z[-1:])
    return torch.cat(points)
