"""Global and regional signal triggers: Blended ([Blended]) and SIG ([SIG])."""

from __future__ import annotations

import dataclasses

import torch

from workbench.core.attacks import functional as Fn
from workbench.core.attacks.base import Attack, resolve_position
from workbench.core.runtime import make_generator
from workbench.core.validation import WorkbenchError, check_fraction, check_positive, check_positive_int


@dataclasses.dataclass(frozen=True)
class Blended(Attack):
    """Blend a fixed random pattern into the image: x' = (1 - alpha) x + alpha p.

    The papers blend a cartoon or photo (Hello Kitty) we do not have; the pattern here is uniform random
    noise drawn from `seed`, which BDMAE also uses ("15x15 random pixels" in the lower-right corner).

    Args:
        alpha: blending ratio in (0, 1] (BDMAE: 0.2 for training, 0.1 at test time; T&R: 0.2).
        size: side of a square blended region; None blends the whole image.
        row, col: top-left pixel of that region (negative = from the bottom/right edge); None = the
            bottom-right corner.
        seed: seed of the noise pattern.
    """

    family = "blended"
    alpha: float = 0.2
    size: int | None = None
    row: int | None = None
    col: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_fraction(self.alpha, "Blended alpha")
        check_positive_int(self.size, "Blended size", optional=True)

    def _build_pattern(self, channels: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        pattern = torch.rand(channels, height, width, generator=make_generator(self.seed))
        weight = torch.full((1, height, width), float(self.alpha))
        if self.size is not None:
            r = resolve_position(-self.size if self.row is None else self.row, height, self.size, "row")
            c = resolve_position(-self.size if self.col is None else self.col, width, self.size, "col")
            weight.zero_()
            weight[:, r:r + self.size, c:c + self.size] = self.alpha
        return pattern, weight

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        pattern, weight = self.pattern_for(*x.shape[1:])
        return Fn._blend(x, pattern, weight.to(x.device))


@dataclasses.dataclass(frozen=True)
class SIG(Attack):
    """Sinusoidal signal trigger (SIG; [REStore] App. A Eqs. 7-8).

    t(x, y) = sin(2 pi (F_x x + F_y y)) with F_x = `cycles` / width, F_y = 0 (vertical stripes varying along
    the columns).

    Args:
        alpha: "additive" mode: amplitude alpha_atk in x' = clip(x + alpha_atk t) (Eq. 7; REStore uses
            60/255 on MNIST, 40/255 on CIFAR-10). "blend" mode: x' = (1 - alpha) x + alpha (1 + t) / 2, the
            form Trap and Replace uses (0.8 img + 0.2 pattern); the pattern is rescaled to [0, 1] there (our
            reading: the pattern image it blends is an 8-bit image).
        cycles: number of periods across the image width (REStore: 6, i.e. F_x = 6/28 or 6/32).
        mode: "additive" or "blend".
    """

    family = "sig"
    alpha: float = 40 / 255
    cycles: float = 6.0
    mode: str = "additive"

    def __post_init__(self) -> None:
        check_fraction(self.alpha, "SIG alpha")
        check_positive(self.cycles, "SIG cycles")
        if self.mode not in ("additive", "blend"):
            raise WorkbenchError(f"SIG mode must be 'additive' or 'blend', got {self.mode!r}")

    def _build_pattern(self, channels: int, height: int, width: int) -> torch.Tensor:
        return Fn.sine_wave(height, width, fx=self.cycles / width, fy=0.0)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        wave = self.pattern_for(*x.shape[1:])
        if self.mode == "additive":
            return Fn._add_clipped(x, self.alpha * wave)
        return Fn._blend(x, (1 + wave) / 2, self.alpha)
