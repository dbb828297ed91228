"""Test-time input transformations: Blur and ShrinkPad ([BDMAE] App. C / Table 2; [ShrinkPad]).

Both are black-box: they transform the input and ask the classifier for a label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from workbench.core.query import QueryModel
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

    def predict(self, x: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        return self.classifier.labels(self.purify(x, seed=seed))


@dataclass(frozen=True)
class ShrinkPad:
    """Shrink the image by `pad` pixels (bilinear) and zero-pad it back at a random offset (ShrinkPad;
    [BDMAE] App. C: pad 4 weak / 8 strong on 32 px images, 28 / 56 on 224 px)."""

    classifier: QueryModel
    pad: int = 4

    def __post_init__(self) -> None:
        check_positive_int(self.pad, "ShrinkPad pad")

    def purify(self, x: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        """Shrunk-and-padded images; the per-image offsets are drawn from `seed`."""
        check_images(x)
        n, _, h, w = x.shape
        if self.pad >= min(h, w):
            raise WorkbenchError(f"ShrinkPad pad {self.pad} leaves nothing of a {h}x{w} image")
        small = F.interpolate(x, size=(h - self.pad, w - self.pad), mode="bilinear", align_corners=False).clamp_(0, 1)
        gen = torch.Generator().manual_seed(seed)
        tops = torch.randint(0, self.pad + 1, (n,), generator=gen).tolist()
        lefts = torch.randint(0, self.pad + 1, (n,), generator=gen).tolist()
        out = torch.zeros_like(x)
        for i, (top, left) in enumerate(zip(tops, lefts, strict=True)):
            out[i, :, top:top + h - self.pad, left:left + w - self.pad] = small[i]
        return out

    def predict(self, x: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        return self.classifier.labels(self.purify(x, seed=seed))
