"""Pure, batched trigger operations on float images in [0, 1] of shape (N, C, H, W).

These are the equations the attack classes are built from; each returns a new tensor on the input's device.
The public functions check their inputs; the attack classes (whose `apply` has checked the images, and which
build their patterns themselves) call the unchecked bodies (`_stamp_patch`, ...), so a batch pays nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.core.attacks.base import _check_finite
from workbench.core.validation import (
    WorkbenchError,
    check_fraction,
    check_images,
    check_non_negative,
    check_positive_int,
    check_tensor,
)


def _check_pattern(pattern: torch.Tensor, name: str, x: torch.Tensor, *, same_size: bool) -> None:
    """A (C, h, w) or (1, h, w) float pattern in [0, 1] for the images `x` (already checked); `same_size`: h, w
    are the images' height and width."""
    if not isinstance(pattern, torch.Tensor) or pattern.ndim != 3:
        raise WorkbenchError(f"{name} must be a tensor of shape (C, h, w) or (1, h, w), got "
                             f"{tuple(pattern.shape) if isinstance(pattern, torch.Tensor) else type(pattern).__name__}")
    check_images(pattern.unsqueeze(0), name=name)
    channels, height, width = x.shape[1:]
    if pattern.shape[0] not in (1, channels) or not pattern.numel():
        raise WorkbenchError(f"{name} must have 1 channel or the images' {channels}, and pixels; got shape "
                             f"{tuple(pattern.shape)}")
    if same_size and tuple(pattern.shape[1:]) != (height, width):
        raise WorkbenchError(f"{name} must be {height}x{width} pixels like the images, got "
                             f"{pattern.shape[1]}x{pattern.shape[2]}")


def _check_positions(positions: torch.Tensor, name: str, count: int, limit: int) -> None:
    """(count,) integer positions in [0, limit]."""
    check_tensor(positions, f"{name} (one position per image of x)", shape=(count,), kind="integer")
    if count and (int(positions.min()) < 0 or int(positions.max()) > limit):
        raise WorkbenchError(f"{name} must lie in [0, {limit}] so that the patch stays inside the images, got "
                             f"[{int(positions.min())}, {int(positions.max())}]")


def stamp_patch(x: torch.Tensor, patch: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """Replace the pixels under a patch (BadNets; [REStore] App. A Eq. 6: x' = (1 - M) x + M t, with M the
    patch's rectangle).

    Args:
        x: images (N, C, H, W).
        patch: pattern t of shape (C, h, w) or (1, h, w) (broadcast over channels).
        top, left: position of the patch's top-left pixel (non-negative, inside the image).
    """
    check_images(x)
    _check_pattern(patch, "patch", x, same_size=False)
    h, w = patch.shape[-2:]
    for name, value, room in (("top", top, x.shape[2] - h), ("left", left, x.shape[3] - w)):
        if check_non_negative(value, name, integer=True) > room:
            raise WorkbenchError(f"{name}={value} puts the {h}x{w} patch outside the {x.shape[2]}x{x.shape[3]} "
                                 f"images; use 0..{room}")
    return _stamp_patch(x, patch, top, left)


def _stamp_patch(x: torch.Tensor, patch: torch.Tensor, top: int, left: int) -> torch.Tensor:
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
    check_images(x)
    _check_pattern(patch, "patch", x, same_size=False)
    h, w = patch.shape[-2:]
    _check_positions(tops, "tops", len(x), x.shape[2] - h)
    _check_positions(lefts, "lefts", len(x), x.shape[3] - w)
    return _stamp_patch_at(x, patch, tops, lefts)


def _stamp_patch_at(x: torch.Tensor, patch: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor) -> torch.Tensor:
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

    Args:
        x: images (N, C, H, W).
        pattern: (C, H, W) or (1, H, W) in [0, 1].
        alpha: the pattern's weight in [0, 1]: a number, or a tensor broadcastable to `x` (zero where the image
            must stay untouched).
    """
    check_images(x)
    _check_pattern(pattern, "pattern", x, same_size=True)
    if isinstance(alpha, torch.Tensor):
        if (not alpha.is_floating_point() or torch.broadcast_shapes(alpha.shape, x.shape) != x.shape
                or not bool(((alpha >= 0) & (alpha <= 1)).all())):
            raise WorkbenchError(f"alpha must be a number in [0, 1] or a float tensor of such weights that "
                                 f"broadcasts to the images' shape {tuple(x.shape)}, got {alpha.dtype} of shape "
                                 f"{tuple(alpha.shape)}")
    else:
        check_fraction(alpha, "alpha", allow_zero=True)
    return _blend(x, pattern, alpha)


def _blend(x: torch.Tensor, pattern: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    alpha = torch.as_tensor(alpha, device=x.device, dtype=x.dtype)
    return (1 - alpha) * x + alpha * pattern.to(device=x.device, dtype=x.dtype)


def add_clipped(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Additive trigger with clipping ([REStore] Eq. 7; [L-RED] Eq. 1: m(x; v) = [x + v]_c).

    Args:
        x: images (N, C, H, W).
        delta: the perturbation v, finite, of any shape that broadcasts to the images' (e.g. (C, H, W)).
    """
    check_images(x)
    check_tensor(delta, "delta")
    if _broadcast(delta.shape, x.shape) != x.shape:
        raise WorkbenchError(f"delta must broadcast to the images' shape {tuple(x.shape)} (e.g. (C, H, W)), got "
                             f"shape {tuple(delta.shape)}")
    return _add_clipped(x, delta)


def _broadcast(*shapes: torch.Size) -> torch.Size | None:
    """The broadcast shape, or None where the shapes do not broadcast."""
    try:
        return torch.broadcast_shapes(*shapes)
    except RuntimeError:
        return None


def _add_clipped(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return (x + delta.to(device=x.device, dtype=x.dtype)).clamp_(0.0, 1.0)


def sine_wave(height: int, width: int, fx: float, fy: float = 0.0) -> torch.Tensor:
    """SIG's sinusoid t(x, y) = sin(2 pi (F_x x + F_y y)) ([REStore] Eq. 8), x the column, y the row index.

    Returns:
        (1, height, width) pattern in [-1, 1].
    """
    check_positive_int(height, "height")
    check_positive_int(width, "width")
    _check_finite(fx, "fx")
    _check_finite(fy, "fy")
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
    check_positive_int(height, "height")
    check_positive_int(width, "width")
    check_positive_int(control_size, "control_size")
    check_non_negative(strength, "strength", meaning_of_zero="0 gives the identity grid")
    if not isinstance(generator, torch.Generator):
        raise WorkbenchError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    field = torch.rand(1, 2, control_size, control_size, generator=generator) * 2 - 1
    field = field / field.abs().mean()
    field = F.interpolate(field, size=(height, width), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    return (_identity_grid(height, width) + strength * field / height).clamp(-1, 1)


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Warp images with a sampling grid (bilinear, align_corners=True, zero padding as in WaNet; grids from
    `wanet_grid` are clipped to the image so padding is never sampled); grid (1 or N, H, W, 2), finite, of the
    images' height and width."""
    check_images(x)
    n, _, height, width = x.shape
    check_tensor(grid, f"grid (one per image of x, {height} x {width} sampling points)", shape=(None, height, width, 2))
    if grid.shape[0] not in (1, n):
        raise WorkbenchError(f"grid must hold one sampling grid, or one per image ({n}), got {grid.shape[0]}")
    return _warp(x, grid)


def _warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    grid = grid.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True).clamp_(0.0, 1.0)
