"""Additive triggers: x' = clip(x + v) ([L-RED] Eq. 1; [REStore] Eq. 7) for a fixed perturbation v.

Covers L-RED's imperceptible patterns (App. A.4, A.7, A.8), Trojan-style square and watermark patterns and
the l0 / l2 "invisible" patterns of Trap and Replace. The papers took the Trojan and invisible patterns from
files we do not have; here they are generated deterministically (from `seed` where random) and described
in `PATTERN_NOTES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from workbench.core.attacks import functional as Fn
from workbench.core.attacks.base import Attack, resolve_position
from workbench.core.runtime import make_generator
from workbench.core.validation import WorkbenchError, check_fraction, check_positive_int


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What a pattern builder is given: image shape and the attack's (defaulted) parameters."""

    channels: int
    height: int
    width: int
    amplitude: float
    size: int
    row: int | None
    col: int | None
    channel: int | None
    gen: torch.Generator

    def place(self, extent_h: int, extent_w: int) -> tuple[int, int]:
        """Top-left of an extent_h x extent_w shape: given row/col, else uniformly random from the seed."""
        row = (torch.randint(0, self.height - extent_h + 1, (1,), generator=self.gen).item()
               if self.row is None else resolve_position(self.row, self.height, extent_h, "row"))
        col = (torch.randint(0, self.width - extent_w + 1, (1,), generator=self.gen).item()
               if self.col is None else resolve_position(self.col, self.width, extent_w, "col"))
        return int(row), int(col)

    def channels_mask(self) -> torch.Tensor:
        """(C, 1, 1) selector: the given channel only, else all channels."""
        sel = torch.ones(self.channels, 1, 1)
        if self.channel is not None:
            if not 0 <= self.channel < self.channels:
                raise WorkbenchError(f"channel {self.channel} does not exist in {self.channels}-channel images")
            sel.zero_()[self.channel] = 1
        return sel

    def blank(self) -> torch.Tensor:
        return torch.zeros(self.channels, self.height, self.width)


def _lred_global(s: _Shape) -> torch.Tensor:
    # every 2x2 window, wherever placed, contains exactly one perturbed pixel: the (even, even) lattice
    v = s.blank()
    v[:, 0::2, 0::2] = s.amplitude
    return v


def _chessboard(s: _Shape) -> torch.Tensor:
    rows = torch.arange(s.height).view(-1, 1)
    cols = torch.arange(s.width).view(1, -1)
    return ((rows + cols) % 2 == 0).float().expand(s.channels, -1, -1) * s.amplitude


def _local_square(s: _Shape) -> torch.Tensor:
    # L-RED A.4.1: a random size x size square in ONE random channel (unless `channel` is given)
    s.channels_mask()  # validates a given channel
    channel = s.channel if s.channel is not None else int(torch.randint(0, s.channels, (1,), generator=s.gen))
    row, col = s.place(s.size, s.size)
    v = s.blank()
    v[channel, row:row + s.size, col:col + s.size] = s.amplitude
    return v


def _stroke(s: _Shape, offsets: list[tuple[int, int]], extent: tuple[int, int]) -> torch.Tensor:
    row, col = s.place(*extent)
    v = s.blank()
    for dr, dc in offsets:
        v[:, row + dr, col + dc] = s.amplitude
    return v * s.channels_mask()


def _cross(s: _Shape) -> torch.Tensor:
    return _stroke(s, [(0, 1), (1, 0), (1, 1), (1, 2), (2, 1)], (3, 3))  # five pixels, a "+"


def _l_shape(s: _Shape) -> torch.Tensor:
    return _stroke(s, [(0, 0), (1, 0), (2, 0), (2, 1)], (3, 2))  # a 3-pixel stem and a 1-pixel foot


def _pixel(s: _Shape) -> torch.Tensor:
    row = resolve_position(-1 if s.row is None else s.row, s.height, 1, "row")
    col = resolve_position(-1 if s.col is None else s.col, s.width, 1, "col")
    v = s.blank()
    v[:, row, col] = s.amplitude
    return v * s.channels_mask()


def _local_chessboard(s: _Shape) -> torch.Tensor:
    row = resolve_position(-s.size if s.row is None else s.row, s.height, s.size, "row")
    col = resolve_position(-s.size if s.col is None else s.col, s.width, s.size, "col")
    v = s.blank()
    v[:, row:row + s.size, col:col + s.size] = _chessboard(dataclasses.replace(s, height=s.size, width=s.size))
    return v * s.channels_mask()


def _trojan_square(s: _Shape) -> torch.Tensor:
    row = resolve_position(-s.size - 1 if s.row is None else s.row, s.height, s.size, "row")
    col = resolve_position(-s.size - 1 if s.col is None else s.col, s.width, s.size, "col")
    v = s.blank()
    v[:, row:row + s.size, col:col + s.size] = torch.rand(s.channels, s.size, s.size, generator=s.gen)
    return v * s.amplitude


def _trojan_watermark(s: _Shape) -> torch.Tensor:
    # a logo-like outline over the whole image: a centred ring of radius ~H/3 crossed by both diagonals
    rows = torch.arange(s.height).view(-1, 1).float() - (s.height - 1) / 2
    cols = torch.arange(s.width).view(1, -1).float() - (s.width - 1) / 2
    ring = ((rows**2 + cols**2).sqrt() - s.height / 3).abs() < 0.75
    diagonals = ((rows - cols).abs() < 0.75) | ((rows + cols).abs() < 0.75)
    return (ring | diagonals).float().expand(s.channels, -1, -1) * s.amplitude


def _l0_invisible(s: _Shape) -> torch.Tensor:
    row = resolve_position(-1 if s.row is None else s.row, s.height, 1, "row")
    cols = torch.randperm(s.width, generator=s.gen)[: s.size]
    v = s.blank()
    v[:, row, cols] = s.amplitude
    return v


def _l2_invisible(s: _Shape) -> torch.Tensor:
    return torch.randn(s.channels, s.height, s.width, generator=s.gen) * s.amplitude


# name -> (builder, default amplitude, default size, note)
ADDITIVE_PATTERNS: dict[str, tuple[Callable[[_Shape], torch.Tensor], float, int, str]] = {
    "lred_global": (_lred_global, 2 / 255, 2,
                    "L-RED A.4.1 global pattern: one pixel per 2x2 window (the even-row/even-column lattice), "
                    "all channels, +2/255"),
    "chessboard": (_chessboard, 2 / 255, 1,
                   "L-RED A.7 group A: one of any two adjacent pixels ((row + col) even), all channels, +2/255"),
    "local_square": (_local_square, 50 / 255, 2,
                     "L-RED A.4.1 local pattern: a random 2x2 square in one random channel, +50/255"),
    "cross": (_cross, 60 / 255, 3, "L-RED A.7 group B: a 5-pixel cross at a random place, all channels, +60/255"),
    "l_shape": (_l_shape, 65 / 255, 3,
                "L-RED A.7 group C: an L of 4 pixels at a random place, all channels, +65/255 (pixel count "
                "not published: our choice)"),
    "pixel": (_pixel, 50 / 255, 1, "L-RED A.8 Fashion-MNIST: one pixel at the bottom right, +50/255"),
    "local_chessboard": (_local_chessboard, 25 / 255, 6,
                         "L-RED A.8 MNIST: a 6x6 chessboard patch at the bottom-right corner, +25/255"),
    "trojan_square": (_trojan_square, 1.0, 6,
                      "Trojan-SQ equivalent (pattern file unavailable): a seeded random-colour 6x6 square added "
                      "one pixel from the bottom-right corner"),
    "trojan_watermark": (_trojan_watermark, 0.3, 1,
                         "Trojan-WM equivalent (pattern file unavailable): a ring with both diagonals over the "
                         "whole image, +0.3"),
    "l0_invisible": (_l0_invisible, 1.0, 5,
                     "l0-invisible equivalent (pattern file unavailable): 5 seeded pixels of the last row "
                     "saturated"),
    "l2_invisible": (_l2_invisible, 0.03, 1,
                     "l2-invisible equivalent (pattern file unavailable): dense seeded Gaussian noise, "
                     "per-pixel std 0.03 (about 8/255)"),
}


@dataclasses.dataclass(frozen=True)
class Additive(Attack):
    """Add a fixed perturbation v and clip to [0, 1] ([L-RED] Eq. 1).

    Args:
        pattern: one of `ADDITIVE_PATTERNS` (see `PATTERN_NOTES` for what each is and where it comes from).
        amplitude: perturbation size (per-pixel value; for "l2_invisible" the noise standard deviation);
            None = the pattern's paper default.
        size: pattern-specific extent (square side, pixel count for "l0_invisible"); None = default.
        row, col: placement (negative = from the bottom/right edge); None = the pattern's default, which is
            random from `seed` for "local_square", "cross" and "l_shape".
        channel: perturb only this channel; None = all channels (one random channel for "local_square").
        seed: seed of the random parts of the pattern.
    """

    family = "additive"
    pattern: str = "lred_global"
    amplitude: float | None = None
    size: int | None = None
    row: int | None = None
    col: int | None = None
    channel: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pattern not in ADDITIVE_PATTERNS:
            raise WorkbenchError(f"unknown additive pattern {self.pattern!r}; choose one of: "
                                 f"{', '.join(ADDITIVE_PATTERNS)}")
        if self.amplitude is not None:
            check_fraction(self.amplitude, "additive amplitude")
        check_positive_int(self.size, "additive size", optional=True)
        if self.channel is not None and (isinstance(self.channel, bool) or not isinstance(self.channel, int)
                                         or self.channel < 0):
            raise WorkbenchError(f"additive channel must be a non-negative integer or None, got {self.channel!r}")

    def _build_pattern(self, channels: int, height: int, width: int) -> torch.Tensor:
        builder, amplitude, size, _ = ADDITIVE_PATTERNS[self.pattern]
        shape = _Shape(channels, height, width, amplitude if self.amplitude is None else float(self.amplitude),
                       size if self.size is None else self.size, self.row, self.col, self.channel,
                       make_generator(self.seed))
        return builder(shape)

    def perturbation(self, channels: int, height: int, width: int) -> torch.Tensor:
        """The additive pattern v of shape (C, H, W) for images of that shape."""
        return self.pattern_for(channels, height, width).clone()

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return Fn._add_clipped(x, self.pattern_for(*x.shape[1:]))


PATTERN_NOTES = {name: note for name, (_, _, _, note) in ADDITIVE_PATTERNS.items()}


@dataclasses.dataclass(frozen=True)
class Smooth(Attack):
    """Smooth trigger ([Smooth], as used by I-BAU and Trap and Replace): add a low-frequency pattern v,
    then rescale each image to [0, 1] by its own min and max: x' = (x + v - min) / (max - min).

    The papers use a trigger file found by a frequency-domain search that we do not have; the equivalent here is
    a seeded Gaussian `grid` x `grid` field per channel, upsampled bicubically to the image size (so it holds only
    low frequencies) and scaled to a largest magnitude of `amplitude` (0.25 by default: our choice, the file's
    scale is unpublished).

    Args:
        amplitude: largest |v| over the image, in (0, 1].
        grid: side of the random field before upsampling (lower = smoother), >= 2.
        seed: seed of the field.
    """

    family = "smooth"
    amplitude: float = 0.25
    grid: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check_fraction(self.amplitude, "Smooth amplitude")
        if check_positive_int(self.grid, "Smooth grid") < 2:
            raise WorkbenchError(f"Smooth grid must be at least 2 (a 1x1 field is a constant), got {self.grid}")

    def _build_pattern(self, channels: int, height: int, width: int) -> torch.Tensor:
        field = torch.randn(1, channels, self.grid, self.grid, generator=make_generator(self.seed))
        smooth = torch.nn.functional.interpolate(field, size=(height, width), mode="bicubic", align_corners=True)[0]
        return smooth * (self.amplitude / smooth.abs().max())

    def perturbation(self, channels: int, height: int, width: int) -> torch.Tensor:
        """The low-frequency pattern v (C, H, W), before the per-image rescale."""
        return self.pattern_for(channels, height, width).clone()

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        shifted = x + self.pattern_for(*x.shape[1:]).to(x.device)
        low = shifted.amin(dim=(1, 2, 3), keepdim=True)
        high = shifted.amax(dim=(1, 2, 3), keepdim=True)
        return (shifted - low) / (high - low).clamp_min(1e-8)
