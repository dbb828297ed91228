"""WaNet: an imperceptible, fixed image warp as the trigger ([WaNet]; [REStore] App. A Eq. 9)."""

from __future__ import annotations

import dataclasses

import torch

from workbench.core.attacks import functional as Fn
from workbench.core.attacks.base import Attack
from workbench.core.runtime import make_generator
from workbench.core.validation import WorkbenchError, check_non_negative, check_positive_int


@dataclasses.dataclass(frozen=True)
class WaNet(Attack):
    """Warp the image with a fixed smooth random field M: x' = W(x, M) ([REStore] Eq. 9).

    Args:
        strength: warping strength s (WaNet's default 0.5 on 32 px images); 0 is the identity.
        control_size: side k of the random control grid upsampled to the image (WaNet's default 4).
        seed: seed of the control grid.

        noise: distribution of the noise-mode offsets: "uniform" (the original WaNet implementation, which
            REStore says it used: uniform in [-1, 1] / H) or "gaussian" ([REStore] App. A's description,
            M + N(0, 1), read here as N(0, 1) / H so that both perturb by about one pixel).

    Noise mode (used only when building a poisoned training set, see `noise_ratio` in `PoisonConfig`):
    images are warped with M plus an independent random offset per pixel and image, and keep their true
    label, so the network learns that only the exact field M is the trigger.
    """

    family = "wanet"
    has_noise_mode = True
    strength: float = 0.5
    control_size: int = 4
    seed: int = 0
    noise: str = "uniform"

    def __post_init__(self) -> None:
        check_non_negative(self.strength, "WaNet strength",
                           meaning_of_zero="0 is the identity")
        if check_positive_int(self.control_size, "WaNet control_size") < 2:
            raise WorkbenchError(f"WaNet control_size must be >= 2, got {self.control_size}")
        if self.noise not in ("uniform", "gaussian"):
            raise WorkbenchError(f"WaNet noise must be 'uniform' or 'gaussian', got {self.noise!r}")

    def _build_pattern(self, channels: int, height: int, width: int) -> torch.Tensor:
        return Fn.wanet_grid(height, width, self.control_size, float(self.strength), make_generator(self.seed))

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return Fn._warp(x, self.pattern_for(*x.shape[1:]))

    def apply_noise_mode(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Warp with M plus per-image random grid offsets of about one pixel (WaNet's noise mode)."""
        n, _, height, width = x.shape
        grid = self.pattern_for(*x.shape[1:])
        if self.noise == "uniform":
            offsets = (torch.rand(n, height, width, 2, generator=generator) * 2 - 1) / height
        else:
            offsets = torch.randn(n, height, width, 2, generator=generator) / height
        return Fn._warp(x, (grid + offsets).clamp(-1, 1))
