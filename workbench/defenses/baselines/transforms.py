"""Test-time input transformations: Blur and ShrinkPad ([BDMAE] App. C / Table 2; [ShrinkPad]).

Both are black-box: they transform the input and ask the classifier for a label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from workbench.core.query import QueryModel
from workbench.core.runtime import image_generators
from workbench.core.validation import WorkbenchError, check_images, check_positive, check_positive_int


@dataclass(frozen=True)
class Blur:
    """Gaussian blur with a 3 x 3 kernel ([BDMAE] App. C: sigma 0.5 weak, 1.0 strong)."""

    classifier: QueryModel
    sigma: float = 0.5
    kernel: int = 3

    def __post_init__(self) -> None:
        check_positive(self.sigma, "Blur sigma")
        if check_positive_int(self.kernel, "Blur kernel") % 2 == 0:
            raise WorkbenchError(f"Blur kernel must be odd, got {self.kernel}")

    def purify(self, x: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        """Blurred images (N, C, H, W); `seed` is unused (deterministic)."""
        check_images(x)
        blurred = gaussian_blur(x, [self.kernel, self.kernel], [self.sigma, self.sigma])
        return blurred.clamp_(0, 1)  # a convex combination of pixels, up to float rounding

    def predict(self, x: torch.Tensor, *, seed: int = 0, first_index: int = 0) -> torch.Tensor:
        """Labels of the blurred images; `seed` and `first_index` are unused (deterministic)."""
        return self.classifier.labels(self.purify(x, seed=seed))


@dataclass(frozen=True)
class ShrinkPad:
    """Shrink the image by `pad` pixels (bilinear) and zero-pad it back at a random offset (ShrinkPad;
    [BDMAE] App. C: pad 4 weak / 8 strong on 32 px images, 28 / 56 on 224 px)."""

    classifier: QueryModel
    pad: int = 4

    def __post_init__(self) -> None:
        check_positive_int(self.pad, "ShrinkPad pad")

    def purify(self, x: torch.Tensor, *, seed: int = 0, first_index: int = 0) -> torch.Tensor:
        """Shrunk-and-padded images; image n's offsets are drawn from (seed, first_index + n), so splitting a test
        set into calls (`first_index`: the global index of x[0]) changes nothing."""
        check_images(x)
        n, _, h, w = x.shape
        if self.pad >= min(h, w):
            raise WorkbenchError(f"ShrinkPad pad {self.pad} leaves nothing of a {h}x{w} image")
        small = F.interpolate(x, size=(h - self.pad, w - self.pad), mode="bilinear", align_corners=False).clamp_(0, 1)
        out = torch.zeros_like(x)
        for i, gen in enumerate(image_generators(seed, first_index, n)):
            top, left = torch.randint(0, self.pad + 1, (2,), generator=gen).tolist()
            out[i, :, top:top + h - self.pad, left:left + w - self.pad] = small[i]
        return out

    def predict(self, x: torch.Tensor, *, seed: int = 0, first_index: int = 0) -> torch.Tensor:
        return self.classifier.labels(self.purify(x, seed=seed, first_index=first_index))
