"""Pure, batched trigger operations on float images in [0, 1] of shape (N, C, H, W).

These are the equations the attack classes are built from; each returns a new tensor on the input's device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def stamp_patch(x: torch.Tensor, patch: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """Replace the pixels under a patch (BadNets; [REStore] App. A Eq. 6: x' = (1 - M) x + M t, with M the
    patch's rectangle).

    Args:
        x: images (N, C, H, W).
        patch: pattern t of shape (C, h, w) or (1, h, w) (broadcast over channels).
        top, left: position of the patch's top-left pixel (non-negative, inside the image).
    """
    h, w = patch.shape[-2:]
    out = x.clone()
    out[:, :, top:top + h, left:left + w] = patch.to(device=x.device, dtype=x.dtype).expand(x.shape[1], h, w)
    return out


def stamp_patch_at(x: torch.Tensor, patch: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor) -> torch.Tensor:
    """`stamp_patch` with a position per image: image i gets the patch with its top-left pixel at
    (tops[i], lefts[i]) (dynamic BadNets, [REStore] Sec. IV-G2).

    Args:
        x: images (N, C, H, W).
        patch: (C, h, w) or (1, h, w).
        tops, lefts: (N,) integer positions inside the image.
    """
    h, w = patch.shape[-2:]
    n = torch.arange(len(x), device=x.device)[:, None, None]
    rows = tops.to(x.device)[:, None, None] + torch.arange(h, device=x.device)[None, :, None]
    cols = lefts.to(x.device)[:, None, None] + torch.arange(w, device=x.device)[None, None, :]
    out = x.clone()
    values = patch.to(device=x.device, dtype=x.dtype).expand(x.shape[1], h, w).permute(1, 2, 0)
    out.permute(0, 2, 3, 1)[n, rows, cols] = values  # writes through the permuted view
    return out


def blend(x: torch.Tensor, pattern: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Blend a pattern into images ([Blended]): x' = (1 - alpha) x + alpha p.

    `alpha` may be a scalar or a tensor broadcastable to `x` (zero where the image must stay untouched).
    """
    alpha = torch.as_tensor(alpha, device=x.device, dtype=x.dtype)
    return (1 - alpha) * x + alpha * pattern.to(device=x.device, dtype=x.dtype)


def add_clipped(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Additive trigger with clipping ([REStore] Eq. 7; [L-RED] Eq. 1: m(x; v) = [x + v]_c)."""
    return (x + delta.to(device=x.device, dtype=x.dtype)).clamp_(0.0, 1.0)


def sine_wave(height: int, width: int, fx: float, fy: float = 0.0) -> torch.Tensor:
    """SIG's sinusoid t(x, y) = sin(2 pi (F_x x + F_y y)) ([REStore] Eq. 8), x the column, y the row index.

    Returns:
        (1, height, width) pattern in [-1, 1].
    """
    cols = torch.arange(width, dtype=torch.float64).view(1, width)
    rows = torch.arange(height, dtype=torch.float64).view(height, 1)
    return torch.sin(2 * torch.pi * (fx * cols + fy * rows)).float().unsqueeze(0)


def _identity_grid(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The sampling grid (1, H, W, 2) of `grid_sample` (align_corners=True) that leaves an image unchanged."""
    ys = torch.linspace(-1, 1, height, device=device)
    xs = torch.linspace(-1, 1, width, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).unsqueeze(0)


def wanet_grid(height: int, width: int, control_size: int, strength: float,
               generator: torch.Generator) -> torch.Tensor:
    """WaNet's warping grid ([WaNet] Sec. 3.2; [REStore] App. A Eq. 9).

    A k x k field of random offsets in [-1, 1], normalised by its mean absolute value, is upsampled
    bicubically to the image size, scaled by `strength` / height and added to the identity grid, then clipped
    to the image ([-1, 1]). Strength 0 gives the identity grid.

    Returns:
        (1, H, W, 2) grid for `warp`.
    """
    field = torch.rand(1, 2, control_size, control_size, generator=generator) * 2 - 1
    field = field / field.abs().mean()
    field = F.interpolate(field, size=(height, width), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    return (_identity_grid(height, width) + strength * field / height).clamp(-1, 1)


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Warp images with a sampling grid (bilinear, align_corners=True, zero padding as in WaNet; grids from
    `wanet_grid` are clipped to the image so padding is never sampled); grid (1 or N, H, W, 2)."""
    grid = grid.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True).clamp_(0.0, 1.0)
