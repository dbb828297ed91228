"""WaNet: an imperceptible, fixed image warp as the trigger (Nguyen & Tran 2021; REStore App. A Eq. 9)."""

from __future__ import annotations

import dataclasses

import torch

from workbench.core.attacks import functional as Fn
from workbench.core.attacks.base import Attack, seeded_generator
from workbench.core.validation import WorkbenchError


@dataclasses.dataclass(frozen=True)
class WaNet(Attack):
    """Warp the image with a fixed smooth random field M: x' = W(x, M) (REStore Eq. 9).

    Args:
        strength: warping strength s (WaNet's default 0.5 on 32 px images); 0 is the identity.
        control_size: side k of the random control grid upsampled to the image (WaNet's default 4).
        seed: seed of the control grid.

    Noise mode (used only when building a poisoned training set, see `noise_ratio` in
    `PoisonConfig`): images are warped with M plus an independent random offset per image and keep
    their true label, so the network learns that only the exact field M is the trigger. We follow the
    original WaNet implementation: offsets uniform in [-1, 1] / H added to the sampling grid (REStore's
    text describes the perturbation as Gaussian; the magnitude is the same order, one pixel).
    """

    family = "wanet"
    has_noise_mode = True
    strength: float = 0.5
    control_size: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) or self.strength < 0:
            raise WorkbenchError(f"WaNet strength must be >= 0, got {self.strength!r}")
        if isinstance(self.control_size, bool) or not isinstance(self.control_size, int) or self.control_size < 2:
            raise WorkbenchError(f"WaNet control_size must be an integer >= 2, got {self.control_size!r}")

    def _build_pattern(self, channels: int, height: int, width: int) -> torch.Tensor:
        return Fn.wanet_grid(height, width, self.control_size, float(self.strength), seeded_generator(self.seed))

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return Fn.warp(x, self.pattern_for(*x.shape[1:]))

    def apply_noise_mode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Warp with M plus per-image random grid offsets in [-1, 1] / H (WaNet's noise mode)."""
        n, _, height, width = x.shape
        grid = self.pattern_for(*x.shape[1:])
        offsets = (torch.rand(n, height, width, 2, generator=generator) * 2 - 1) / height
        return Fn.warp(x, (grid + offsets).clamp(-1, 1))
